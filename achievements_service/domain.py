"""Achievement rules, pure: no gRPC, no DynamoDB."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Protocol

from common.errors import InvalidField, NotFound, PreconditionFailed
from common.level_check import LevelCheckStore
from common.models import ACHIEVEMENT, LedgerEntry, new_entry

MAX_REQUIRED_ACHIEVEMENTS = 50
MAX_MIN_TOTAL_XP = 10**12
MAX_MIN_LEVEL = 1_000_000


@dataclass(frozen=True)
class Requirements:
    required_achievements: tuple[str, ...] = ()
    min_total_xp: int = 0
    min_level: int = 0


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
    return replace(achievement, requirements=replace(requirements, required_achievements=required))


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


def new_unlock(user_id: str, achievement: Achievement, request_id: str, unlocked_at: str) -> Unlock:
    return Unlock(
        user_id,
        achievement.achievement_id,
        unlocked_at,
        achievement.xp_reward,
        xp_granted=True,
        request_id=request_id,
        attempt_id=uuid.uuid4().hex,
    )


@dataclass(frozen=True)
class PlayerStanding:
    """What requirements are checked against."""

    unlocked: frozenset[str]
    total_xp: int
    level: int


def unmet_requirements(requirements: Requirements, standing: PlayerStanding) -> list[tuple[str, str]]:
    """(subject, description) for each requirement the player does not meet."""
    unmet = [
        (f"required_achievements/{a}", f"achievement {_shown(a)!r} must be unlocked first")
        for a in requirements.required_achievements
        if a not in standing.unlocked
    ]
    if standing.total_xp < requirements.min_total_xp:
        unmet.append(("min_total_xp", f"needs {requirements.min_total_xp} total XP, has {standing.total_xp}"))
    if standing.level < requirements.min_level:
        unmet.append(("min_level", f"needs level {requirements.min_level}, is level {standing.level}"))
    return unmet


class AchievementNotFound(NotFound):
    def __init__(self, achievement_id: str) -> None:
        super().__init__(f"achievement {achievement_id!r} is not in the catalog")


# An error travels in gRPC trailers, which clients cap at 8 KB by default
# (non-ASCII is sent percent-encoded, three times larger): name the first few.
_MESSAGE_NAMES = 3
_DETAIL_NAMES = 5
_ID_SHOWN = 32


def _shown(text: str) -> str:
    return text if len(text) <= _ID_SHOWN else text[:_ID_SHOWN] + "…"


class RequirementsNotMet(PreconditionFailed):
    def __init__(self, achievement_id: str, unmet: list[tuple[str, str]]) -> None:
        shown = [(_shown(subject), description) for subject, description in unmet]
        more = f"; and {len(unmet) - _MESSAGE_NAMES} more" if len(unmet) > _MESSAGE_NAMES else ""
        super().__init__(
            f"requirements of achievement {_shown(achievement_id)!r} are not met: "
            + "; ".join(d for _, d in shown[:_MESSAGE_NAMES])
            + more,
            shown[:_DETAIL_NAMES],
        )


def check_requirements(achievement: Achievement, standing: PlayerStanding) -> None:
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

    async def list_unlocks(self, user_id: str, page_size: int, page_token: str) -> tuple[list[Unlock], str]:
        """One page of the user's unlocks in id order, and the next page's token ("" on the last)."""

    async def record_unlock_once(
        self, unlock: Unlock, achievement: Achievement, start_level: int, payment: LedgerEntry | None
    ) -> None:
        """One transaction: the unlock, only if new; its place in the progress,
        only while the requirements hold (a user with no stored level is at
        `start_level`); with `payment`, the ledger entry, only if new, and its
        XP added to the total; and a check that the catalog still holds this
        revision of the achievement. Raises, nothing written, AlreadyUnlocked
        (with the unlock held), AchievementChanged, RewardPaidBefore or RequirementsNotHeld."""

    async def pay_owed_unlock_once(self, unlock: Unlock, marker: str) -> OwedPaid | None:
        """Pays an unlock that owes its XP (recorded by an earlier version) and
        marks it paid, in one transaction; if its ledger entry was written but
        the unlock not marked, marks it only. None for every call but the one
        that marked it (the caller's marker, written with the mark, makes the
        client's own retry of that write still the one). Raises
        TotalXpLimitReached when the reward would take the total past MAX_TOTAL_XP."""
