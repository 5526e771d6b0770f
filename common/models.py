"""Values the services share: the level table and its rule, the user-progress
record (one DynamoDB item that all three services write, each its own
attributes), the levels a user reached, a level check's outcome, and the XP
ledger's entries (XP writes awards and grants, Achievements an unlock's reward). Pure."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from common.errors import PreconditionFailed


@dataclass(frozen=True)
class Reward:
    reward_id: str
    quantity: int


@dataclass(frozen=True)
class Level:
    level: int
    xp_required: int
    rewards: tuple[Reward, ...] = ()


class LevelTable:
    """The defined levels. A user's level is the highest defined level whose
    xp_required is at most their total XP, 0 when none fits."""

    def __init__(self, levels: Iterable[Level]) -> None:
        self.levels: tuple[Level, ...] = tuple(sorted(levels, key=lambda l: l.level))

    def level_for_xp(self, total_xp: int) -> int:
        return max((l.level for l in self.levels if l.xp_required <= total_xp), default=0)

    @property
    def start_level(self) -> int:
        """Where a new user starts, without that level's rewards."""
        return self.level_for_xp(0)

    def levels_passed(self, previous: int, current: int) -> tuple[Level, ...]:
        """Every defined level L with previous < L <= current, in order."""
        return tuple(l for l in self.levels if previous < l.level <= current)

    def xp_required(self, level: int) -> int:
        return next((l.xp_required for l in self.levels if l.level == level), 0)

    def next_level_xp(self, current: int) -> int:
        """XP at which the next defined level above `current` starts; 0 at the top."""
        return next((l.xp_required for l in self.levels if l.level > current), 0)


@dataclass(frozen=True)
class VersionedLevelTable:
    """A copy of the level table and the version it is of."""

    version: int
    table: LevelTable
    read_at: float  # time.monotonic() of the version read that confirmed it


@dataclass(frozen=True)
class LevelReached:
    """A level a user passed, with the rewards granted for it, once."""

    level: int
    from_level: int  # the level the user left in the level-up that passed this one
    rewards: tuple[Reward, ...]
    check_id: str  # the CheckLevelUp call that granted it
    granted_at: str


@dataclass(frozen=True)
class ProgressRecord:
    """What user_progress holds for one user. `level` is None until the Levels
    service first checks a user with XP: the user is then at the level 0 XP gives."""

    user_id: str
    total_xp: int = 0
    level: int | None = None
    # Whether the user holds any achievement: the ids themselves are the unlock
    # records (user_achievements), never a set in this item, whose size a
    # player's collection must not bound.
    holds_achievements: bool = False
    updated_at: str | None = None
    # Written by the Levels service with the level: the total at which the next
    # level is due (0 at the top) under the level table's `level_version`, so
    # that an award knows from its own read whether a level-up may be due.
    next_level_xp: int | None = None
    level_version: int | None = None
    # A level-up too long for one transaction, under way: the check that owns
    # it and the level it goes to. Any check completes it first.
    pending_check: str | None = None
    pending_target: int | None = None
    # The ledger entry of the latest award whose level check could not be done
    # (Levels unreachable): the level it made due is its own, for its retry to
    # report, until a level-up clears it.
    deferred_check: str | None = None
    # Written by the Achievements service after it evaluated the user's
    # auto-unlock achievements (common.auto_unlock): the rules' fingerprint and
    # the total XP and level at which one the user lacks may be due.
    auto_version: str = ""
    watch_xp_at: int | None = None
    watch_level_at: int | None = None
    # Whether the user is counted among the players of the achievement stats.
    player_counted: bool = False

    def level_check_due(self, level_table_version: int) -> bool:
        """Whether a level-up may be due: the stored threshold is reached, or
        there is none under this version of the level table, or a level-up is under way."""
        if self.level is None or self.next_level_xp is None or self.level_version != level_table_version:
            return True
        return self.pending_check is not None or (self.next_level_xp > 0 and self.total_xp >= self.next_level_xp)

    @classmethod
    def from_attributes(cls, user_id: str, values: Mapping[str, Any] | None) -> ProgressRecord:
        if not values:
            return cls(user_id=user_id)
        return cls(
            user_id=user_id,
            total_xp=int(values.get("total_xp", 0)),
            level=int(values["level"]) if "level" in values else None,
            # `unlocked_achievements`: the set an earlier version kept here, until the user's next unlock.
            holds_achievements=bool(values.get("holds_achievements") or values.get("unlocked_achievements")),
            updated_at=values.get("updated_at"),
            next_level_xp=int(values["next_level_xp"]) if "next_level_xp" in values else None,
            level_version=int(values["level_version"]) if "level_version" in values else None,
            pending_check=values.get("pending_check"),
            pending_target=int(values["pending_target"]) if "pending_target" in values else None,
            deferred_check=values.get("deferred_check"),
            auto_version=values.get("auto_version", ""),
            watch_xp_at=int(values["watch_xp_at"]) if "watch_xp_at" in values else None,
            watch_level_at=int(values["watch_level_at"]) if "watch_level_at" in values else None,
            player_counted=bool(values.get("player_counted", False)),
        )


def reward_totals(rewards: Iterable[Reward]) -> tuple[Reward, ...]:
    """One line per reward id, its quantities summed, in first-seen order: a
    level-up's answer grows with the reward ids of the table, not with the
    levels passed."""
    totals: dict[str, int] = {}
    for reward in rewards:
        totals[reward.reward_id] = totals.get(reward.reward_id, 0) + reward.quantity
    return tuple(Reward(reward_id, quantity) for reward_id, quantity in totals.items())


@dataclass(frozen=True)
class LevelUpOutcome:
    user_id: str
    leveled_up: bool
    previous_level: int
    current_level: int
    total_xp: int
    rewards: tuple[Reward, ...] = field(default=())
    next_level_xp: int = 0


def level_ups_joined(outcomes: Iterable[LevelUpOutcome | None]) -> LevelUpOutcome | None:
    """Level-ups one after the other (an award's, then its auto unlocks'
    rewards'), as one: from the first previous level to the last current one,
    with every reward totalled; None when none of them leveled up."""
    leveled = sorted((o for o in outcomes if o is not None and o.leveled_up), key=lambda o: o.current_level)
    if not leveled:
        return None
    last = leveled[-1]
    return LevelUpOutcome(
        user_id=last.user_id,
        leveled_up=True,
        previous_level=min(o.previous_level for o in leveled),
        current_level=last.current_level,
        total_xp=max(o.total_xp for o in leveled),
        rewards=reward_totals(r for o in leveled for r in o.rewards),
        next_level_xp=last.next_level_xp,
    )


def iso_utc(moment: datetime) -> str:
    """An instant as the tables keep it: ISO 8601 in UTC to the microsecond, which sorts as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_now_iso() -> str:
    return iso_utc(datetime.now(UTC))


# --- the XP ledger: written by XP (awards, grants) and by Achievements (an unlock's reward) ---

ACTIVITY = "activity"
GRANT = "grant"
ACHIEVEMENT = "achievement"  # a grant that pays an achievement's xp_reward
ADJUSTMENT = "adjustment"  # an operator's correction, signed
REVOKE = "revoke"  # reverses one earlier entry's XP, once: entry id rev#<that entry's id>


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
    # An award's activity's category at the time of the award (what its category counter counted).
    category: str = ""
    recorded_at: str = ""
    # Tells our own write, retried by the DynamoDB client after a lost response, from a caller's repeat.
    attempt_id: str = ""
    # Set when the award's level check could not be done (Levels unreachable or late): its
    # repeats may then grant the level-up it caused; otherwise they only replay.
    level_check_deferred: bool = False
    # Set when the Achievements service could not answer the write's evaluation: its repeats
    # then evaluate; otherwise they list what the first recorded under the entry's id.
    unlocks_deferred: bool = False
    # An activity award: added to its counters (awards an earlier version recorded were not). A
    # revoke: takes one off the counters of the award it reverses, which was counted.
    counted: bool = False
    # A revoke: the entry it reverses.
    reverses_entry_id: str = ""
    # An award beyond its activity's cap: recorded with 0 XP.
    capped: bool = False

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
        if self.kind == ADJUSTMENT:
            return f"an adjustment of {self.xp} XP"
        if self.kind == REVOKE:
            return f"the revoke of entry {self.reverses_entry_id!r}"
        return f"a grant of {self.xp} XP"


def revoke_entry_id(entry_id: str) -> str:
    """A revoke's own id: one per entry it reverses, so a second revoke is a duplicate."""
    return f"rev#{entry_id}"


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
    category: str = "",
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
        category=category,
        reason=reason,
        achievement_id=achievement_id,
        recorded_at=recorded_at,
        attempt_id=uuid.uuid4().hex,
    )


# A user's total XP never passes this: every integer up to it is exact in a JSON
# number (an IEEE double), which is how the gateway and most clients read it.
MAX_TOTAL_XP = 2**53


class TotalXpWouldGoNegative(PreconditionFailed):
    def __init__(self, user_id: str, xp: int) -> None:
        super().__init__(
            f"taking {-xp} XP would take the user's total below zero; nothing was written",
            [("total_xp", "never below zero")],
        )
        self.user_id = user_id


class TotalXpLimitReached(PreconditionFailed):
    def __init__(self, user_id: str, xp: int) -> None:
        super().__init__(
            f"adding {xp} XP would take the user's total past the maximum of {MAX_TOTAL_XP} (2^53); nothing was written",
            [("total_xp", f"at most {MAX_TOTAL_XP}")],
        )
        self.user_id = user_id
