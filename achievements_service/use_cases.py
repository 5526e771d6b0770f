"""Achievement use cases: the catalog and exactly-once unlocks."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, replace

from achievements_service.domain import (
    Achievement,
    AchievementChanged,
    AchievementNotFound,
    AchievementsRepository,
    AlreadyUnlocked,
    PlayerStanding,
    RequirementsNotHeld,
    RequirementsNotMet,
    RewardPaidBefore,
    Unlock,
    check_achievement,
    new_unlock,
    unmet_requirements,
)
from common.errors import ContentionExhausted
from common.level_check import LevelChecker, check_level_after_xp
from common.metrics import UNLOCKS, XP_AWARDED
from common.models import ACHIEVEMENT, MAX_TOTAL_XP, LevelUpOutcome, TotalXpLimitReached, utc_now_iso

# Catalog changes racing one unlock: each costs a re-read, and they are rare.
_MAX_CATALOG_REREADS = 5


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
    def __init__(self, repository: AchievementsRepository, levels: LevelChecker) -> None:
        self._repository = repository
        self._levels = levels

    # --- catalog ------------------------------------------------------------------

    async def put_achievement(self, achievement: Achievement) -> Achievement:
        return await self._repository.put_achievement(check_achievement(achievement))

    async def get_achievement(self, achievement_id: str) -> Achievement:
        return await self._repository.get_achievement(achievement_id)

    async def list_achievements(self, page_size: int, page_token: str) -> tuple[list[Achievement], str]:
        return await self._repository.list_achievements(page_size, page_token)

    async def delete_achievement(self, achievement_id: str) -> None:
        await self._repository.delete_achievement(achievement_id)

    # --- unlocks ------------------------------------------------------------------

    async def unlock_achievement(self, user_id: str, achievement_id: str, request_id: str) -> UnlockOutcome:
        """The common path is two DynamoDB calls and no gRPC hop: one
        transaction writes the unlock and pays its reward, against this
        process's copy of the catalog entry (checked in the transaction), then
        the progress read says whether a level-up may be due."""
        paid_before: int | None = None
        for _ in range(_MAX_CATALOG_REREADS):
            try:
                achievement = await self._repository.cached_achievement(achievement_id)
            except AchievementNotFound:
                earlier = await self._repository.get_unlock(user_id, achievement_id)
                if earlier is None:
                    raise
                # Answered from the unlock record, so owed XP is paid even after the achievement left the catalog.
                return await self._repeat(Achievement(achievement_id, name="", xp_reward=earlier.xp_reward), earlier)
            try:
                return await self._record_once(user_id, achievement, request_id, paid_before=paid_before)
            except AchievementChanged:
                continue  # the catalog changed since this process read it: read it again
            except RewardPaidBefore as paid:
                # A GrantXp naming this achievement paid it before any unlock: unlock it without paying twice.
                paid_before = paid.paid_xp
        raise ContentionExhausted(f"achievement {achievement_id!r} kept changing; retry the unlock")

    async def _record_once(
        self, user_id: str, achievement: Achievement, request_id: str, *, paid_before: int | None = None
    ) -> UnlockOutcome:
        """Raises AchievementChanged and RewardPaidBefore for the caller's loop."""
        unlock = new_unlock(user_id, achievement, request_id, utc_now_iso())
        if paid_before is not None:  # the unlock records what was paid, and pays nothing
            unlock = replace(unlock, xp_reward=paid_before)
        payment = unlock.payment() if paid_before is None and unlock.xp_reward else None
        start_level = await self._repository.start_level() if achievement.requirements.min_level else 0
        try:
            await self._repository.record_unlock_once(unlock, achievement, start_level, payment)
        except AlreadyUnlocked as earlier:
            if earlier.unlock.attempt_id != unlock.attempt_id:  # not our own write retried after a lost answer
                return await self._repeat(achievement, earlier.unlock)
        except RequirementsNotHeld:
            required = achievement.requirements.required_achievements
            progress, held = await asyncio.gather(
                self._repository.get_progress(user_id), self._repository.unlocked_among(user_id, required)
            )
            if payment is not None and progress.total_xp + payment.xp > MAX_TOTAL_XP:
                raise TotalXpLimitReached(user_id, payment.xp) from None
            level = progress.level if progress.level is not None else start_level
            standing = PlayerStanding(held, progress.total_xp, level)
            unmet = unmet_requirements(achievement.requirements, standing)
            raise RequirementsNotMet(
                achievement.achievement_id, unmet or [("progress", "changed while unlocking; retry")]
            ) from None
        UNLOCKS.inc()
        if payment is None:
            progress = await self._repository.get_progress(user_id)
            return UnlockOutcome(achievement, False, 0, progress.total_xp, None)
        return await self._after_payment(achievement, unlock, True, already_unlocked=False)

    async def _repeat(self, achievement: Achievement, earlier: Unlock) -> UnlockOutcome:
        """A repeat reports neither XP nor a level-up, except where it pays XP
        that an unlock recorded by an earlier version still owes."""
        if earlier.owes_xp:
            paid = await self._repository.pay_owed_unlock_once(earlier, marker=uuid.uuid4().hex)
            if paid is not None:
                return await self._after_payment(
                    achievement, replace(earlier, xp_reward=paid.xp), paid.by_this_call, True
                )
        progress = await self._repository.get_progress(earlier.user_id)
        return UnlockOutcome(achievement, True, 0, progress.total_xp, None)

    async def _after_payment(
        self, achievement: Achievement, unlock: Unlock, counted: bool, already_unlocked: bool
    ) -> UnlockOutcome:
        if counted:  # not when an earlier version's GrantXp wrote (and counted) the entry
            XP_AWARDED.labels(ACHIEVEMENT).inc(unlock.xp_reward)
        entry_id = unlock.payment().entry_id
        level = await check_level_after_xp(self._repository, self._levels, unlock.user_id, entry_id, entry_id)
        return UnlockOutcome(achievement, already_unlocked, unlock.xp_reward, level.total_xp, level.level_up)

    async def list_user_achievements(
        self, user_id: str, page_size: int, page_token: str
    ) -> tuple[list[UserAchievementView], str]:
        """One page of the user's unlocks, in id order, with their catalog entries (one batch read)."""
        unlocks, token = await self._repository.list_unlocks(user_id, page_size, page_token)
        catalog = await self._repository.get_achievements([u.achievement_id for u in unlocks])
        return [UserAchievementView(u, catalog.get(u.achievement_id)) for u in unlocks], token
