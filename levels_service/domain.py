"""Level rules, pure: no gRPC, no DynamoDB. The level table itself and the
rule 'level for an XP total' are in common.models, since XP and Achievements
read levels too."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import InvalidField, NotFound
from common.models import Level, LevelTable, Reward

MAX_LEVEL = 1_000_000
MAX_REWARDS_PER_LEVEL = 50
MAX_REWARD_QUANTITY = 1_000_000_000
# A level-up writes the user's progress, the check's record and one item per
# level passed in one transaction, which takes at most 100 items: longer jumps
# go in steps.
MAX_LEVELS_PER_STEP = 98


class LevelNotFound(NotFound):
    def __init__(self, level: int) -> None:
        super().__init__(f"level {level} is not defined")


def check_level(level: Level) -> Level:
    """The catalog rules for one level; field names as in the API."""
    if not 1 <= level.level <= MAX_LEVEL:
        raise InvalidField("level.level", f"must be between 1 and {MAX_LEVEL} (got {level.level})")
    if len(level.rewards) > MAX_REWARDS_PER_LEVEL:
        raise InvalidField(
            "level.rewards", f"must hold at most {MAX_REWARDS_PER_LEVEL} rewards (got {len(level.rewards)})"
        )
    for i, reward in enumerate(level.rewards):
        if not 1 <= reward.quantity <= MAX_REWARD_QUANTITY:
            raise InvalidField(
                f"level.rewards[{i}].quantity", f"must be between 1 and {MAX_REWARD_QUANTITY} (got {reward.quantity})"
            )
    return level


@dataclass(frozen=True)
class LevelCheck:
    """What the CheckLevelUp call with this id granted: repeats report it again."""

    check_id: str
    previous_level: int
    levels: tuple[int, ...]


@dataclass(frozen=True)
class LevelUpPlan:
    previous_level: int
    current_level: int
    passed: tuple[Level, ...]  # the defined levels passed, whose rewards are due

    @property
    def leveled_up(self) -> bool:
        return self.current_level > self.previous_level

    @property
    def rewards(self) -> tuple[Reward, ...]:
        return tuple(r for level in self.passed for r in level.rewards)

    def first_step(self) -> LevelUpPlan:
        """The part of the plan one write can carry."""
        if len(self.passed) <= MAX_LEVELS_PER_STEP:
            return self
        passed = self.passed[:MAX_LEVELS_PER_STEP]
        return LevelUpPlan(self.previous_level, passed[-1].level, passed)


def plan_level_up(table: LevelTable, stored_level: int | None, total_xp: int) -> LevelUpPlan:
    """What a check should do. A user with no stored level is at the start level;
    levels never go down, even when the table changes."""
    previous = table.start_level if stored_level is None else stored_level
    current = max(previous, table.level_for_xp(total_xp))
    return LevelUpPlan(previous, current, table.levels_passed(previous, current) if current > previous else ())
