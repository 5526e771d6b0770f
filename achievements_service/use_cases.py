"""Achievement use cases: the catalog and exactly-once unlocks."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from achievements_service.domain import (
    Achievement,
    AchievementNotFound,
    AchievementsRepository,
    AlreadyUnlocked,
    GrantRefused,
    PlayerStanding,
    RequirementsChangedConcurrently,
    RequirementsNotMet,
    Unlock,
    XpGranter,
    check_achievement,
    check_requirements,
    unmet_requirements,
)
from common.metrics import UNLOCKS
from common.models import LevelUpOutcome, ProgressRecord, utc_now_iso


@dataclass(frozen=True)
class UnlockOutcome:
    achievement: Achievement
    already_unlocked: bool
    # XP this call paid: the reward for exactly one call per unlock, 0 for the others.
    xp_awarded: int
    total_xp: int
    level_up: LevelUpOutcome | None


@dataclass(frozen=True)
class UserAchievementView:
    unlock: Unlock
    achievement: Achievement | None


class Achievements:
    def __init__(self, repository: AchievementsRepository, xp: XpGranter) -> None:
        self._repository = repository
        self._xp = xp

    # --- catalog ------------------------------------------------------------------

    async def put_achievement(self, achievement: Achievement) -> Achievement:
        checked = check_achievement(achievement)
        await self._repository.put_achievement(checked)
        return checked

    async def get_achievement(self, achievement_id: str) -> Achievement:
        return await self._repository.get_achievement(achievement_id)

    async def list_achievements(self, page_size: int, page_token: str) -> tuple[list[Achievement], str]:
        return await self._repository.list_achievements(page_size, page_token)

    async def delete_achievement(self, achievement_id: str) -> None:
        await self._repository.delete_achievement(achievement_id)

    # --- unlocks ------------------------------------------------------------------

    async def unlock_achievement(self, user_id: str, achievement_id: str, request_id: str) -> UnlockOutcome:
        existing, achievement, progress = await self._repository.read_for_unlock(user_id, achievement_id)
        if existing is not None:
            # Settled from the unlock record, so owed XP is paid even if the achievement has left the catalog.
            entry = achievement or Achievement(existing.achievement_id, name="", xp_reward=existing.xp_reward)
            return await self._settle(entry, existing, already_unlocked=True)
        if achievement is None:
            raise AchievementNotFound(achievement_id)
        check_requirements(achievement, await self._standing(progress, achievement))
        unlock = Unlock(
            user_id,
            achievement_id,
            utc_now_iso(),
            achievement.xp_reward,
            xp_granted=achievement.xp_reward == 0,
            request_id=request_id,
        )
        try:
            await self._repository.record_unlock_once(unlock, achievement.requirements, progress.level is not None)
            UNLOCKS.inc()
        except AlreadyUnlocked as race:  # a concurrent call recorded it first
            return await self._settle(achievement, race.unlock, already_unlocked=True)
        except RequirementsChangedConcurrently:
            progress = await self._repository.get_progress(user_id)
            unmet = unmet_requirements(achievement.requirements, await self._standing(progress, achievement))
            raise RequirementsNotMet(
                achievement_id, unmet or [("progress", "changed while unlocking; retry")]
            ) from None
        if not unlock.owes_xp:
            return UnlockOutcome(achievement, False, 0, progress.total_xp, None)
        return await self._settle(achievement, unlock, already_unlocked=False, updated_before=progress.updated_at)

    async def _standing(self, progress: ProgressRecord, achievement: Achievement) -> PlayerStanding:
        level = progress.level
        if level is None:  # not checked yet: the start level, read only when a requirement needs it
            level = await self._repository.start_level() if achievement.requirements.min_level else 0
        return PlayerStanding(progress.unlocked_achievements, progress.total_xp, level)

    async def _settle(
        self, achievement: Achievement, unlock: Unlock, *, already_unlocked: bool, updated_before: str | None = None
    ) -> UnlockOutcome:
        """Pays XP the unlock still owes (after a crash or an outage the grant
        may be owed, or done but not marked: the grant is idempotent per
        achievement). The one call that marks it paid reports the XP and the
        level-up it caused; the others report neither."""
        if not unlock.owes_xp:
            progress = await self._repository.get_progress(unlock.user_id)
            return UnlockOutcome(achievement, already_unlocked, 0, progress.total_xp, None)
        try:
            grant = await self._xp.grant_achievement_xp(unlock)
        except GrantRefused:
            # A refused unlock writes nothing: take back the unlock its payment cannot follow
            # (and, when this call recorded it, the progress item's time too).
            await self._repository.withdraw_unpaid_unlock(
                unlock, restore_updated_at=None if already_unlocked else updated_before
            )
            raise
        if await self._repository.mark_xp_granted_once(unlock.user_id, unlock.achievement_id, marker=uuid.uuid4().hex):
            return UnlockOutcome(achievement, already_unlocked, unlock.xp_reward, grant.total_xp, grant.level_up)
        return UnlockOutcome(achievement, already_unlocked, 0, grant.total_xp, None)

    async def list_user_achievements(self, user_id: str) -> list[UserAchievementView]:
        unlocks = await self._repository.list_unlocks(user_id)
        catalog = await self._repository.get_achievements([u.achievement_id for u in unlocks])
        return [UserAchievementView(u, catalog.get(u.achievement_id)) for u in unlocks]
