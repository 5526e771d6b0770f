"""Achievement rules, pure: no gRPC, no DynamoDB."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

from common.errors import InvalidField, NotFound, PreconditionFailed
from common.models import LevelUpOutcome, ProgressRecord

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
    xp_granted: bool
    request_id: str = ""

    @property
    def grant_reason(self) -> str:
        return f"achievement:{self.achievement_id}"

    @property
    def owes_xp(self) -> bool:
        return self.xp_reward > 0 and not self.xp_granted


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


class RequirementsChangedConcurrently(Exception):
    """The user's progress no longer met the requirements when the unlock was written."""


class GrantRefused(PreconditionFailed):
    """XpService answered that it will never pay this grant (not an outage)."""


@dataclass(frozen=True)
class GrantResult:
    total_xp: int
    level_up: LevelUpOutcome | None


class XpGranter(Protocol):
    async def grant_achievement_xp(self, unlock: Unlock) -> GrantResult:
        """Pays the unlock's xp_reward, at most once per (user, achievement).
        Raises DependencyUnavailable when the XP service cannot do it now."""


class AchievementsRepository(Protocol):
    async def put_achievement(self, achievement: Achievement) -> None: ...

    async def get_achievement(self, achievement_id: str) -> Achievement:
        """Raises AchievementNotFound."""

    async def get_achievements(self, achievement_ids: list[str]) -> dict[str, Achievement]: ...

    async def list_achievements(self, page_size: int, page_token: str) -> tuple[list[Achievement], str]: ...

    async def delete_achievement(self, achievement_id: str) -> None:
        """Raises AchievementNotFound."""

    async def get_progress(self, user_id: str) -> ProgressRecord: ...

    async def read_for_unlock(
        self, user_id: str, achievement_id: str
    ) -> tuple[Unlock | None, Achievement | None, ProgressRecord]:
        """The earlier unlock, the catalog entry and the progress, as one snapshot."""

    async def list_unlocks(self, user_id: str) -> list[Unlock]: ...

    async def record_unlock_once(self, unlock: Unlock, requirements: Requirements, level_is_stored: bool) -> None:
        """The unlock and its place in the progress, only while the requirements
        hold. Raises AlreadyUnlocked or RequirementsChangedConcurrently."""

    async def mark_xp_granted_once(self, user_id: str, achievement_id: str, marker: str) -> bool:
        """True only for the one caller that marked the unlock's XP paid."""

    async def withdraw_unpaid_unlock(self, unlock: Unlock, restore_updated_at: str | None = None) -> None: ...

    async def start_level(self) -> int:
        """The level of a user with no stored level."""
