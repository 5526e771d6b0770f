"""Achievement rules, pure: no gRPC, no DynamoDB."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from common.auto_unlock import (
    ActivityCount,
    AutoRules,
    Counter,
    Requirements,
    Standing,
    Watches,
    shown_id,
    unmet_requirements,
)
from common.errors import InvalidField, NotFound, PreconditionFailed
from common.level_check import LevelCheckStore
from common.models import ACHIEVEMENT, LedgerEntry, ProgressRecord, new_entry
from common.streaks import StreakLength

__all__ = ["ActivityCount", "Requirements", "Standing", "StreakLength", "unmet_requirements"]

MAX_REQUIRED_ACHIEVEMENTS = 50
MAX_MIN_TOTAL_XP = 10**12
MAX_MIN_LEVEL = 1_000_000
# An unlock's transaction checks each count: with the required achievements it stays under 100 items.
MAX_ACTIVITY_COUNTS = 10
MAX_COUNT = 10**9
MAX_STREAK_LENGTHS = 10
MAX_STREAK_LENGTH = 100_000


@dataclass(frozen=True)
class Achievement:
    achievement_id: str
    name: str
    description: str = ""
    xp_reward: int = 0
    hidden: bool = False
    requirements: Requirements = field(default_factory=Requirements)
    # The catalog entry's version, new on every put (cosmicpython's version_number): an unlock
    # decided on a copy of the entry is written only while the catalog still holds that copy.
    revision: str = ""
    # Unlocked by the service as soon as every requirement holds (common.auto_unlock).
    auto_unlock: bool = False


def check_achievement(achievement: Achievement) -> Achievement:
    """The catalog rules for one achievement, field names as in the API; the
    achievement with each required id once."""
    requirements = achievement.requirements
    required = requirements.required_achievements
    if achievement.achievement_id in required:  # indexed as in the request, before duplicates go
        raise InvalidField(
            f"achievement.requirements.required_achievements[{required.index(achievement.achievement_id)}]",
            "an achievement cannot require itself",
        )
    required = tuple(dict.fromkeys(required))
    if len(required) > MAX_REQUIRED_ACHIEVEMENTS:
        raise InvalidField(
            "achievement.requirements.required_achievements",
            f"must list at most {MAX_REQUIRED_ACHIEVEMENTS} achievements (got {len(required)})",
        )
    if not 0 <= requirements.min_total_xp <= MAX_MIN_TOTAL_XP:
        raise InvalidField(
            "achievement.requirements.min_total_xp",
            f"must be between 0 and {MAX_MIN_TOTAL_XP} (got {requirements.min_total_xp})",
        )
    if not 0 <= requirements.min_level <= MAX_MIN_LEVEL:
        raise InvalidField(
            "achievement.requirements.min_level",
            f"must be between 0 and {MAX_MIN_LEVEL} (got {requirements.min_level})",
        )
    counts = requirements.activity_counts
    if len(counts) > MAX_ACTIVITY_COUNTS:
        raise InvalidField(
            "achievement.requirements.activity_counts",
            f"must list at most {MAX_ACTIVITY_COUNTS} counts (got {len(counts)})",
        )
    for i, count in enumerate(counts):
        field_name = f"achievement.requirements.activity_counts[{i}]"
        if bool(count.activity_id) == bool(count.category):
            raise InvalidField(field_name, "set exactly one of activity_id and category")
        if not 1 <= count.count <= MAX_COUNT:
            raise InvalidField(f"{field_name}.count", f"must be between 1 and {MAX_COUNT} (got {count.count})")
    runs = requirements.streak_lengths
    if len(runs) > MAX_STREAK_LENGTHS:
        raise InvalidField(
            "achievement.requirements.streak_lengths",
            f"must list at most {MAX_STREAK_LENGTHS} streaks (got {len(runs)})",
        )
    for i, run in enumerate(runs):
        if not 1 <= run.length <= MAX_STREAK_LENGTH:
            raise InvalidField(
                f"achievement.requirements.streak_lengths[{i}].length",
                f"must be between 1 and {MAX_STREAK_LENGTH} (got {run.length})",
            )
    longest: dict[str, StreakLength] = {}
    for run in runs:
        if run.streak_id not in longest or run.length > longest[run.streak_id].length:
            longest[run.streak_id] = run
    # One check per counter in the unlock's transaction: the highest count asked of it is the one that matters.
    highest: dict[str, ActivityCount] = {}
    for count in counts:
        if count.counter not in highest or count.count > highest[count.counter].count:
            highest[count.counter] = count
    return replace(
        achievement,
        requirements=replace(
            requirements,
            required_achievements=required,
            activity_counts=tuple(highest.values()),
            streak_lengths=tuple(longest.values()),
        ),
    )


@dataclass(frozen=True)
class Unlock:
    """A user's unlock of one achievement, with the reward it pays."""

    user_id: str
    achievement_id: str
    unlocked_at: str
    xp_reward: int
    # Paid in the unlock's own transaction since this version; False only on an unlock an
    # earlier version recorded before its separate grant completed (a repeat pays it).
    xp_granted: bool
    request_id: str = ""
    # For an auto unlock: what asked for it (UnlockDueAchievements' trigger_id).
    trigger: str = ""
    # Tells this call's own write, retried by the DynamoDB client after a lost answer, from another call's.
    attempt_id: str = ""

    @property
    def owes_xp(self) -> bool:
        return self.xp_reward > 0 and not self.xp_granted

    def payment(self) -> LedgerEntry:
        """The ledger entry that pays the reward: keyed by the achievement, so at most once per user."""
        return replace(
            new_entry(
                self.user_id,
                "",
                ACHIEVEMENT,
                self.xp_reward,
                reason=f"achievement:{self.achievement_id}",
                achievement_id=self.achievement_id,
                recorded_at=self.unlocked_at,
            ),
            attempt_id=self.attempt_id,
        )


def new_unlock(user_id: str, achievement: Achievement, request_id: str, unlocked_at: str, trigger: str = "") -> Unlock:
    return Unlock(
        user_id,
        achievement.achievement_id,
        unlocked_at,
        achievement.xp_reward,
        xp_granted=True,
        request_id=request_id,
        trigger=trigger,
        attempt_id=uuid.uuid4().hex,
    )


class AchievementNotFound(NotFound):
    def __init__(self, achievement_id: str) -> None:
        super().__init__(f"achievement {achievement_id!r} is not in the catalog")


# An error travels in gRPC trailers, which clients cap at 8 KB by default
# (non-ASCII is sent percent-encoded, three times larger): name the first few.
_MESSAGE_NAMES = 3
_DETAIL_NAMES = 5


class RequirementsNotMet(PreconditionFailed):
    def __init__(self, achievement_id: str, unmet: list[tuple[str, str]]) -> None:
        shown = [(shown_id(subject), description) for subject, description in unmet]
        more = f"; and {len(unmet) - _MESSAGE_NAMES} more" if len(unmet) > _MESSAGE_NAMES else ""
        super().__init__(
            f"requirements of achievement {shown_id(achievement_id)!r} are not met: "
            + "; ".join(d for _, d in shown[:_MESSAGE_NAMES])
            + more,
            shown[:_DETAIL_NAMES],
        )


def check_requirements(achievement: Achievement, standing: Standing) -> None:
    unmet = unmet_requirements(achievement.requirements, standing)
    if unmet:
        raise RequirementsNotMet(achievement.achievement_id, unmet)


# --- what the use cases depend on -------------------------------------------------


class AlreadyUnlocked(Exception):
    def __init__(self, unlock: Unlock) -> None:
        super().__init__(unlock.achievement_id)
        self.unlock = unlock


class RequirementsNotHeld(Exception):
    """The user's progress did not meet the requirements when the unlock was written (nothing was written)."""


class AchievementChanged(Exception):
    """The catalog entry changed, or left, since this process read it (nothing was written); read it again."""


class RewardPaidBefore(Exception):
    """The ledger already pays this achievement to the user (a direct GrantXp
    with its achievement_id), `paid_xp` XP: nothing was written."""

    def __init__(self, achievement_id: str, paid_xp: int) -> None:
        super().__init__(achievement_id)
        self.paid_xp = paid_xp


@dataclass(frozen=True)
class OwedPaid:
    xp: int  # what the ledger entry pays
    by_this_call: bool  # False: an earlier version's grant wrote the entry, this call only marked it


class AchievementsRepository(LevelCheckStore, Protocol):
    async def put_achievement(self, achievement: Achievement) -> Achievement:
        """The achievement as stored, with its new revision."""

    async def get_achievement(self, achievement_id: str) -> Achievement:
        """Raises AchievementNotFound."""

    async def cached_achievement(self, achievement_id: str) -> Achievement:
        """The entry as last read by this process, read now when unknown; raises AchievementNotFound."""

    async def get_achievements(self, achievement_ids: list[str]) -> dict[str, Achievement]: ...

    async def list_achievements(self, page_size: int, page_token: str) -> tuple[list[Achievement], str]: ...

    async def delete_achievement(self, achievement_id: str) -> None:
        """Raises AchievementNotFound."""

    async def get_unlock(self, user_id: str, achievement_id: str) -> Unlock | None: ...

    async def unlocked_among(self, user_id: str, achievement_ids: tuple[str, ...]) -> frozenset[str]:
        """Which of these achievements the user holds (at most 50: the catalog's limit of required ones)."""

    async def counts_of(self, user_id: str, counters: tuple[str, ...]) -> dict[str, int]:
        """These counters of the user (0 for those never counted)."""

    async def auto_rules(self, fresh: bool = False) -> AutoRules:
        """The catalog's auto-unlock rules, as this process last read them (`fresh`: read now)."""

    async def auto_standing(
        self, user_id: str, achievement_ids: tuple[str, ...]
    ) -> tuple[ProgressRecord, dict[str, Counter], dict[str, Unlock]]:
        """The user's progress, every counter, and the unlocks among these achievements."""

    async def write_watches(
        self,
        user_id: str,
        watches: Watches,
        unwatched: tuple[str, ...],
        start_level: int,
        streak_marks: Mapping[str, tuple[int, str]] | None = None,
    ) -> bool:
        """Leaves the watches on the user (common.dynamodb.counters.watch_writes; a watch on a
        streak's run holds while the run's item is as read, its Counter.streak_mark); False when they
        do not fit one transaction. Raises WatchOutdated when a watched requirement was met meanwhile."""

    async def forget_auto_watches(self, user_id: str) -> None:
        """Makes the user's next award, of any activity, ask for an evaluation."""

    async def count_player_once(self, user_id: str) -> None:
        """Counts a user with XP among the players of the achievement stats, once."""

    async def unlock_counts(self, achievement_ids: tuple[str, ...]) -> dict[str, int]:
        """Users who unlocked each achievement (the sharded stats)."""

    async def player_count(self) -> int:
        """Users with any XP (the sharded stats)."""

    async def list_unlocks(self, user_id: str, page_size: int, page_token: str) -> tuple[list[Unlock], str]:
        """One page of the user's unlocks in id order, and the next page's token ("" on the last)."""

    async def record_unlock_once(
        self, unlock: Unlock, achievement: Achievement, start_level: int, payment: LedgerEntry | None
    ) -> None:
        """One transaction: the unlock, only if new; its place in the progress,
        only while the requirements hold (a user with no stored level is at
        `start_level`) and the user's counts; with `payment`, the ledger entry,
        only if new, and its XP added to the total; a check that the catalog
        still holds this revision of the achievement; one more on its unlock stats. Raises, nothing written, AlreadyUnlocked
        (with the unlock held), AchievementChanged, RewardPaidBefore or RequirementsNotHeld."""

    async def pay_owed_unlock_once(self, unlock: Unlock, marker: str) -> OwedPaid | None:
        """Pays an unlock that owes its XP (recorded by an earlier version) and
        marks it paid, in one transaction; if its ledger entry was written but
        the unlock not marked, marks it only. None for every call but the one
        that marked it (the caller's marker, written with the mark, makes the
        client's own retry of that write still the one). Raises
        TotalXpLimitReached when the reward would take the total past MAX_TOTAL_XP."""
