"""XP rules, pure: no gRPC, no DynamoDB."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from common.errors import NotFound, PreconditionFailed

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
    # Tells our own write, retried by the SDK after a lost response, from a caller's repeat.
    attempt_id: str = ""

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
