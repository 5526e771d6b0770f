"""XP rules, pure: no gRPC, no DynamoDB. The repository and the level checker
the use cases depend on are Protocols declared here, with the errors their
implementations raise."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

from common.errors import NotFound, PreconditionFailed
from common.models import LevelUpOutcome, ProgressRecord, Reward

ACTIVITY = "activity"
GRANT = "grant"
ACHIEVEMENT = "achievement"  # a grant that pays an achievement's xp_reward


@dataclass(frozen=True)
class Activity:
    activity_id: str
    name: str
    description: str
    category: str
    xp: int


@dataclass(frozen=True)
class LedgerEntry:
    """One award or grant: the user's XP history and the idempotency record in one.

    Entries named by the caller's request_id are deduplicated; entries without
    one get a fresh id, so every award stays in the ledger."""

    user_id: str
    entry_id: str
    request_id: str
    kind: str  # ACTIVITY, GRANT or ACHIEVEMENT
    xp: int
    activity_id: str = ""
    reason: str = ""
    achievement_id: str = ""
    recorded_at: str = ""
    # Tells our own write, retried by the DynamoDB client after a lost response, from a caller's repeat.
    attempt_id: str = ""
    # Set when the award's level check could not be done (Levels unreachable or late): its
    # repeats may then grant the level-up it caused; otherwise they only replay.
    level_check_deferred: bool = False

    @property
    def level_check_name(self) -> str:
        """The name of this entry's level check: its id, which a repeat of the
        request reuses; none for an entry without a request id (it cannot be repeated)."""
        return "" if self.entry_id.startswith("auto#") else self.entry_id

    def describe(self) -> str:
        if self.kind == ACTIVITY:
            return f"activity {self.activity_id!r}"
        if self.kind == ACHIEVEMENT:
            return f"the reward of achievement {self.achievement_id!r} ({self.xp} XP)"
        return f"a grant of {self.xp} XP"


def entry_id_for(request_id: str, achievement_id: str = "") -> str:
    """Separate prefixes keep the three key spaces apart: a caller's request_id
    can never match an achievement's reward or a generated id."""
    if achievement_id:
        return f"ach#{achievement_id}"
    return f"req#{request_id}" if request_id else f"auto#{uuid.uuid4().hex}"


def new_entry(
    user_id: str,
    request_id: str,
    kind: str,
    xp: int,
    *,
    activity_id: str = "",
    reason: str = "",
    achievement_id: str = "",
    recorded_at: str,
) -> LedgerEntry:
    return LedgerEntry(
        user_id=user_id,
        entry_id=entry_id_for(request_id, achievement_id),
        request_id=request_id,
        kind=kind,
        xp=xp,
        activity_id=activity_id,
        reason=reason,
        achievement_id=achievement_id,
        recorded_at=recorded_at,
        attempt_id=uuid.uuid4().hex,
    )


class ActivityNotFound(NotFound):
    def __init__(self, activity_id: str) -> None:
        super().__init__(f"activity {activity_id!r} is not in the catalog")


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
    return original.xp == attempted.xp


# --- what the use cases depend on -------------------------------------------------


class DuplicateRequest(Exception):
    """The ledger already holds an entry with this id (nothing was written)."""

    def __init__(self, existing: LedgerEntry) -> None:
        super().__init__(existing.entry_id)
        self.existing = existing


class ActivityChanged(Exception):
    """The cached activity's XP changed, or it left the catalog, before the
    award was written (nothing was written); read it again."""


class XpRepository(Protocol):
    async def put_activity(self, activity: Activity) -> None: ...

    async def get_activity(self, activity_id: str) -> Activity:
        """Raises ActivityNotFound."""

    async def cached_activity(self, activity_id: str) -> Activity:
        """The activity as last read by this process, read now when unknown; raises ActivityNotFound."""

    async def list_activities(self, category: str, page_size: int, page_token: str) -> tuple[list[Activity], str]: ...

    async def delete_activity(self, activity_id: str) -> None:
        """Raises ActivityNotFound."""

    async def record_xp(self, entry: LedgerEntry, activity: Activity | None = None) -> None:
        """Adds the entry to the ledger and its XP to the user's total, at most
        once per entry id, and with `activity` only while the catalog still
        gives it that XP. Raises DuplicateRequest or ActivityChanged (nothing written)."""

    async def get_entry(self, user_id: str, entry_id: str) -> LedgerEntry | None: ...

    async def get_progress(self, user_id: str) -> ProgressRecord: ...

    async def mark_level_check_deferred(self, user_id: str, entry_id: str) -> None:
        """Notes, on the ledger entry and on the user's progress, that this
        entry's level check was deferred."""

    async def rewards_granted(self, user_id: str) -> tuple[Reward, ...]:
        """Every reward of every level the user passed, in level order."""

    async def start_level(self) -> int:
        """The level of a user with no stored level."""

    async def level_table_version(self) -> int:
        """The version of the level table this process holds."""


class LevelChecker(Protocol):
    async def check_level_up(self, user_id: str, request_id: str, replay_only: bool = False) -> LevelUpOutcome | None:
        """The Levels service's result, or None when it could not answer in time."""
