"""XP rules, pure: no gRPC, no DynamoDB. The repository the use cases depend
on is a Protocol declared here, with the errors its implementations raise (the
level checker, shared with Achievements, is common.level_check's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from common.auto_unlock import AutoRules, Counter
from common.errors import NotFound, PreconditionFailed
from common.level_check import LevelCheckStore
from common.models import ACHIEVEMENT, ACTIVITY, ADJUSTMENT, REVOKE, LedgerEntry, ProgressRecord, Reward
from common.streaks import Streak, StreakRecord


@dataclass(frozen=True)
class Activity:
    activity_id: str
    name: str
    description: str
    category: str
    xp: int
    # At most cap_max_awards awards a user each cap_period (common.periods: "day" or "week"); 0: no cap.
    cap_max_awards: int = 0
    cap_period: str = ""


class ActivityNotFound(NotFound):
    def __init__(self, activity_id: str) -> None:
        super().__init__(f"activity {activity_id!r} is not in the catalog")


class StreakNotFound(NotFound):
    def __init__(self, streak_id: str) -> None:
        super().__init__(f"streak {streak_id!r} is not in the catalog")


class StreakPeriodFixed(PreconditionFailed):
    """A streak keeps its period once created, even deleted: its players' runs are in periods of that length."""

    def __init__(self, streak_id: str, period: str) -> None:
        super().__init__(
            f"streak {streak_id!r} counts {period}s (its players' runs are in {period}s); "
            f"a streak of another period needs a new streak_id",
            [("streak.period", f"streak {streak_id!r} is fixed to {period}s")],
        )


class TooManyStreaks(PreconditionFailed):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the catalog holds {limit} streaks, its limit; delete one first",
            [("streak.streak_id", f"at most {limit} streaks in the catalog")],
        )


class EntryNotFound(NotFound):
    def __init__(self, field: str, value: str) -> None:
        super().__init__(f"the user has no ledger entry with {field} {value!r}")


class NothingToRevoke(PreconditionFailed):
    """Revokes reverse awards, grants and achievement rewards: not a revoke, an adjustment or 0 XP."""

    def __init__(self, entry: LedgerEntry) -> None:
        why = {REVOKE: "a revoke", ADJUSTMENT: "an adjustment (correct it with another)"}.get(
            entry.kind, "an entry of no XP (a capped award, say)"
        )
        super().__init__(
            f"entry {entry.entry_id!r} is {why}: there is nothing to revoke",
            [("entry_id", f"{entry.kind} entries are not revoked")],
        )


class RequestIdReused(PreconditionFailed):
    def __init__(self, original: LedgerEntry, attempted: LedgerEntry) -> None:
        if original.kind == ACHIEVEMENT:
            super().__init__(
                f"{original.describe()} was already granted to this user; it cannot be granted as {attempted.xp} XP",
                [("achievement_id", f"already granted as {original.xp} XP")],
            )
            return
        super().__init__(
            f"request_id {original.request_id!r} was already used for {original.describe()} for this user; "
            f"a retry must repeat the original request, a new award needs a new request_id",
            [("request_id", f"already used for {original.describe()}, not {attempted.describe()}")],
        )


def is_same_request(original: LedgerEntry, attempted: LedgerEntry) -> bool:
    """A repeat is a retry when it asks for the same thing: the same activity
    (whatever its XP is now), or a grant (or achievement reward) of the same amount."""
    if original.kind != attempted.kind:
        return False
    if original.kind == ACTIVITY:
        return original.activity_id == attempted.activity_id
    if original.kind == REVOKE:
        return original.reverses_entry_id == attempted.reverses_entry_id
    return original.xp == attempted.xp


# --- what the use cases depend on -------------------------------------------------


class DuplicateRequest(Exception):
    """The ledger already holds an entry with this id (nothing was written)."""

    def __init__(self, existing: LedgerEntry) -> None:
        super().__init__(existing.entry_id)
        self.existing = existing


class CapReached(Exception):
    """The user had the activity's cap of awards in this period (nothing was written)."""


class ActivityChanged(Exception):
    """The cached activity's XP changed, or it left the catalog, before the
    award was written (nothing was written); read it again."""


class XpRepository(LevelCheckStore, Protocol):
    async def put_activity(self, activity: Activity) -> None: ...

    async def get_activity(self, activity_id: str) -> Activity:
        """Raises ActivityNotFound."""

    async def cached_activity(self, activity_id: str) -> Activity:
        """The activity as last read by this process, read now when unknown; raises ActivityNotFound."""

    async def list_activities(self, category: str, page_size: int, page_token: str) -> tuple[list[Activity], str]: ...

    async def delete_activity(self, activity_id: str) -> None:
        """Raises ActivityNotFound."""

    async def record_xp(
        self,
        entry: LedgerEntry,
        activity: Activity | None = None,
        cap_period: str = "",
        streak_periods: tuple[tuple[Streak, str], ...] = (),
    ) -> None:
        """Adds the entry to the ledger and its XP to the user's total, at most
        once per entry id, only while the total stays within MAX_TOTAL_XP, and
        with `activity` only while the catalog still gives it that XP and
        category; an activity's entry adds one to the counters of its activity
        and category (common.auto_unlock.award_counters), and each period (its
        first local day, ISO) to the user's run of its streak. Raises
        DuplicateRequest, TotalXpLimitReached, CapReached or ActivityChanged (nothing written)."""

    async def put_streak(self, streak: Streak) -> None:
        """Raises StreakPeriodFixed (the id had another period)."""

    async def get_streak(self, streak_id: str) -> Streak:
        """Raises StreakNotFound."""

    async def list_streaks(self, page_size: int, page_token: str) -> tuple[list[Streak], str]: ...

    async def delete_streak(self, streak_id: str) -> None:
        """Raises StreakNotFound."""

    async def streaks(self, *, fresh: bool = False) -> tuple[Streak, ...]:
        """The streak catalog as this process last read it; `fresh`: as it is now."""

    async def streak_records(self, user_id: str) -> dict[str, StreakRecord]:
        """The user's runs, by streak id."""

    async def auto_rules(self) -> AutoRules:
        """The catalog's auto-unlock rules, as this process last read them."""

    async def get_progress_and_counters(
        self, user_id: str, counters: tuple[str, ...]
    ) -> tuple[ProgressRecord, dict[str, Counter]]:
        """The progress item and these counters (those that exist), in one
        read; a streak's run among them that grew long is folded (storage's
        concern: its item stays small)."""

    async def forget_auto_watches(self, user_id: str) -> None:
        """Makes the user's next award, of any activity, ask Achievements (an
        evaluation left undone: the watch reached may be on another counter)."""

    async def mark_unlocks_deferred(self, user_id: str, entry_id: str) -> None:
        """Notes on the ledger entry that Achievements could not answer its evaluation."""

    async def count_player_once(self, user_id: str) -> None:
        """Counts a user with XP among the players of the achievement stats, once."""

    async def get_entry(self, user_id: str, entry_id: str) -> LedgerEntry | None: ...

    async def history_page(self, user_id: str, page_size: int, page_token: str) -> tuple[list[LedgerEntry], str]:
        """One page of the user's ledger, newest first, and the next page's token ("" on the last)."""

    async def latest_rewards(self, user_id: str, levels: int) -> tuple[tuple[Reward, ...], bool]:
        """The rewards of the latest `levels` levels the user passed, in level
        order, and whether the user passed earlier ones too."""

    async def unlocked_achievement_ids(self, user_id: str, limit: int) -> tuple[tuple[str, ...], bool]:
        """The first `limit` achievement ids the user holds, in id order, and whether there are more."""
