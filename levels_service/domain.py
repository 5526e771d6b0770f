"""Level rules, pure: no gRPC, no DynamoDB. The level table itself and the
rule 'level for an XP total' are in common.models, since XP and Achievements
read levels too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from common.errors import InvalidField, NotFound, PreconditionFailed
from common.models import Level, LevelReached, LevelTable, ProgressRecord, Reward, VersionedLevelTable

MAX_LEVEL = 1_000_000
MAX_REWARDS_PER_LEVEL = 50
MAX_REWARD_QUANTITY = 1_000_000_000
# Distinct reward ids in the whole table: every answer that lists rewards (a level-up's
# totals per reward id, a page of levels) stays well under gRPC's 4 MB default.
MAX_REWARD_IDS = 1_000
# A level-up writes the user's progress, the check's record, a check of the
# level table's version and one item per level passed in one transaction, which
# takes at most 100 items: longer jumps go in steps.
MAX_LEVELS_PER_STEP = 97


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


class TooManyRewardIds(PreconditionFailed):
    def __init__(self, count: int) -> None:
        super().__init__(
            f"the level table may use at most {MAX_REWARD_IDS} distinct reward ids; with this level it would use "
            f"{count}: reuse reward ids across levels (a level-up reports one line per reward id)",
            [("level.rewards", f"at most {MAX_REWARD_IDS} distinct reward ids in the table")],
        )


def check_reward_ids(table: LevelTable, level: Level) -> None:
    """The table with `level` put into it uses at most MAX_REWARD_IDS reward
    ids, or no more than it did (so a table over the limit, from before it,
    can still be cut down level by level)."""
    before = {r.reward_id for other in table.levels for r in other.rewards}
    after = {r.reward_id for other in table.levels if other.level != level.level for r in other.rewards}
    after.update(r.reward_id for r in level.rewards)
    if len(after) > MAX_REWARD_IDS and len(after) > len(before):
        raise TooManyRewardIds(len(after))


@dataclass(frozen=True)
class LevelCheck:
    """What the CheckLevelUp call with this id granted: repeats report it again."""

    check_id: str
    previous_level: int
    levels: tuple[int, ...]
    # Where the level-up goes, set by its first step: every answer reports it.
    target_level: int = 0


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


# --- what the use cases depend on -------------------------------------------------


class LevelChangedConcurrently(Exception):
    """Another check moved the user's level first; re-read and plan again."""


class LevelTableChanged(Exception):
    """The level table moved past the version the step was planned on (nothing written)."""


class LevelsRepository(Protocol):
    async def put_level(self, level: Level, expected_version: int) -> None:
        """Writes the level only while the table is at `expected_version`; raises LevelTableChanged."""

    async def delete_level(self, level: int) -> None:
        """Raises LevelNotFound."""

    async def level_table(self) -> VersionedLevelTable:
        """The copy this process holds (at most the cache time old)."""

    async def level_table_at_least(self, version: int) -> VersionedLevelTable: ...

    async def get_progress(self, user_id: str) -> ProgressRecord: ...

    async def get_progress_and_check(self, user_id: str, check_id: str) -> tuple[ProgressRecord, LevelCheck | None]:
        """One snapshot of both."""

    async def levels_reached(self, user_id: str, levels: tuple[int, ...]) -> list[LevelReached]: ...

    async def levels_reached_page(
        self, user_id: str, page_size: int, after_level: int
    ) -> tuple[list[LevelReached], bool]:
        """Up to page_size levels the user passed after `after_level`, in level order, and whether there are more."""

    async def grant_level_step(
        self,
        user_id: str,
        step: LevelUpPlan,
        *,
        owner: str,
        target_level: int,
        min_total_xp: int,
        next_level_xp: int,
        version: int,
        continuing: bool,
    ) -> None:
        """Moves the level by one step of the level-up `owner` makes to
        `target_level`, granting each level passed once. Raises
        LevelChangedConcurrently or LevelTableChanged (nothing written)."""

    async def record_nothing_due_once(self, user_id: str, check_id: str, level: int) -> bool:
        """Records that the named check found nothing due; False when the check
        already has a record (a concurrent copy of it granted first)."""

    async def pin_threshold(
        self, user_id: str, expected_level: int | None, level: int, next_level_xp: int, version: int
    ) -> bool:
        """Stores the level (for a user with none) and the next level's
        threshold under `version`; False when the level moved meanwhile."""


def is_recorded_check(check_id: str) -> bool:
    """Checks named by a caller's request id keep a record for their repeats;
    automatic ones (no request id) cannot be repeated."""
    return not check_id.startswith(AUTO_CHECK_PREFIX)


AUTO_CHECK_PREFIX = "auto:"
