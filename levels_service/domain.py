"""Level rules, pure: no gRPC, no DynamoDB."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from common.errors import NotFound
from common.models import GrantedReward, Reward


@dataclass(frozen=True)
class Level:
    level: int
    xp_required: int
    rewards: tuple[Reward, ...] = ()


class LevelNotFound(NotFound):
    def __init__(self, level: int) -> None:
        super().__init__(f"level {level} is not defined")


class LevelTable:
    """The defined levels. A user's level is the highest defined level whose
    xp_required is at most their total XP, 0 when none fits."""

    def __init__(self, levels: Iterable[Level]) -> None:
        self.levels: tuple[Level, ...] = tuple(sorted(levels, key=lambda l: l.level))

    def level_for_xp(self, total_xp: int) -> int:
        return max((l.level for l in self.levels if l.xp_required <= total_xp), default=0)

    @property
    def start_level(self) -> int:
        """Where every user starts, without that level's rewards."""
        return self.level_for_xp(0)

    def rewards_passed(self, previous: int, current: int) -> tuple[GrantedReward, ...]:
        """The rewards of every level L with previous < L <= current, in level order."""
        return tuple(
            GrantedReward(r.reward_id, r.quantity, l.level)
            for l in self.levels if previous < l.level <= current for r in l.rewards
        )

    def xp_required(self, level: int) -> int:
        return next((l.xp_required for l in self.levels if l.level == level), 0)

    def next_level_xp(self, current: int) -> int:
        """XP at which the next defined level above `current` starts; 0 at the top."""
        return next((l.xp_required for l in self.levels if l.level > current), 0)


@dataclass(frozen=True)
class LevelUpPlan:
    previous_level: int
    current_level: int
    rewards: tuple[GrantedReward, ...]

    @property
    def leveled_up(self) -> bool:
        return self.current_level > self.previous_level


def plan_level_up(table: LevelTable, stored_level: int | None, total_xp: int) -> LevelUpPlan:
    """What a check should do. A user with no stored level is at the start level;
    levels never go down, even when the table changes."""
    previous = table.start_level if stored_level is None else stored_level
    current = max(previous, table.level_for_xp(total_xp))
    return LevelUpPlan(previous, current, table.rewards_passed(previous, current) if current > previous else ())
