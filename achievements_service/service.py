"""Achievement use cases: the catalog and exactly-once unlocks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from common.models import LevelUpOutcome, utc_now_iso
from achievements_service.domain import (
    Achievement,
    PlayerStanding,
    RequirementsNotMet,
    Unlock,
    check_requirements,
    unmet_requirements,
)
from achievements_service.storage import AchievementsRepository, AlreadyUnlocked, RequirementsChangedConcurrently


@dataclass(frozen=True)
class GrantResult:
    xp_awarded: int
    total_xp: int
    duplicate: bool
    level_up: LevelUpOutcome | None


class XpGranter(Protocol):
    def grant_xp(self, user_id: str, amount: int, reason: str, request_id: str) -> GrantResult:
        """Raises DependencyUnavailable when the XP service cannot grant now."""


@dataclass(frozen=True)
class UnlockOutcome:
    achievement: Achievement
    already_unlocked: bool
    # XP that this call's grant added: a repeat reports 0, unless it completed
    # a grant that an earlier call could not.
    xp_awarded: int
    total_xp: int
    level_up: LevelUpOutcome | None


@dataclass(frozen=True)
class UserAchievementView:
    unlock: Unlock
    achievement: Achievement | None


class Achievements:
    def __init__(self, repository: AchievementsRepository, xp: XpGranter, start_level: Callable[[], int]) -> None:
        self._repository = repository
        self._xp = xp
        self._start_level = start_level

    # --- catalog ------------------------------------------------------------------

    def put_achievement(self, achievement: Achievement) -> Achievement:
        self._repository.put_achievement(achievement)
        return achievement

    def get_achievement(self, achievement_id: str) -> Achievement:
        return self._repository.get_achievement(achievement_id)

    def list_achievements(self, page_size: int, page_token: str) -> tuple[list[Achievement], str]:
        return self._repository.list_achievements(page_size, page_token)

    def delete_achievement(self, achievement_id: str) -> None:
        self._repository.delete_achievement(achievement_id)

    # --- unlocks ------------------------------------------------------------------

    def unlock_achievement(self, user_id: str, achievement_id: str, request_id: str) -> UnlockOutcome:
        achievement = self._repository.get_achievement(achievement_id)
        existing = self._repository.get_unlock(user_id, achievement_id)
        if existing is not None:
            return self._settle_repeat(achievement, existing)
        progress = self._repository.get_progress(user_id)
        level_is_stored = progress.level is not None
        level = progress.level if progress.level is not None else (
            self._start_level() if achievement.requirements.min_level else 0
        )
        standing = PlayerStanding(progress.unlocked_achievements, progress.total_xp, level)
        check_requirements(achievement, standing)
        unlock = Unlock(user_id, achievement_id, utc_now_iso(), achievement.xp_reward, xp_granted=achievement.xp_reward == 0,
                        request_id=request_id)
        try:
            self._repository.record_unlock_once(unlock, achievement.requirements, level_is_stored)
        except AlreadyUnlocked as race:  # a concurrent call recorded it first
            return self._settle_repeat(achievement, race.unlock)
        except RequirementsChangedConcurrently:
            progress = self._repository.get_progress(user_id)
            standing = PlayerStanding(progress.unlocked_achievements, progress.total_xp,
                                      progress.level if progress.level is not None else self._start_level())
            raise RequirementsNotMet(achievement_id, unmet_requirements(achievement.requirements, standing)
                                     or [("progress", "changed while unlocking; retry")]) from None
        if not unlock.owes_xp:
            return UnlockOutcome(achievement, False, 0, progress.total_xp, None)
        grant = self._grant_owed_xp(unlock)
        return UnlockOutcome(achievement, False, 0 if grant.duplicate else grant.xp_awarded, grant.total_xp, grant.level_up)

    def _settle_repeat(self, achievement: Achievement, unlock: Unlock) -> UnlockOutcome:
        """A repeat pays nothing, but completes a grant that a crash or an
        outage interrupted (the grant's request id makes that safe)."""
        if unlock.owes_xp:
            grant = self._grant_owed_xp(unlock)
            return UnlockOutcome(achievement, True, 0 if grant.duplicate else grant.xp_awarded, grant.total_xp, grant.level_up)
        progress = self._repository.get_progress(unlock.user_id)
        return UnlockOutcome(achievement, True, 0, progress.total_xp, None)

    def _grant_owed_xp(self, unlock: Unlock) -> GrantResult:
        grant = self._xp.grant_xp(unlock.user_id, unlock.xp_reward, unlock.grant_reason, unlock.grant_request_id)
        self._repository.mark_xp_granted(unlock.user_id, unlock.achievement_id)
        return grant

    def list_user_achievements(self, user_id: str) -> list[UserAchievementView]:
        unlocks = self._repository.list_unlocks(user_id)
        catalog = self._repository.get_achievements([u.achievement_id for u in unlocks])
        return [UserAchievementView(u, catalog.get(u.achievement_id)) for u in unlocks]
