"""XP use cases: the activity catalog, awards and grants exactly once, progress."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from common.auto_unlock import AutoUnlocker, auto_unlock_may_be_due, award_counters
from common.errors import ContentionExhausted
from common.level_check import LevelChecker, check_level_after_xp
from common.metrics import XP_AWARDED, XP_TAKEN
from common.models import (
    ACHIEVEMENT,
    ACTIVITY,
    ADJUSTMENT,
    GRANT,
    REVOKE,
    LedgerEntry,
    LevelUpOutcome,
    ProgressRecord,
    Reward,
    entry_id_for,
    iso_utc,
    level_ups_joined,
    new_entry,
    revoke_entry_id,
    utc_now_iso,
)
from common.periods import period_key, period_start_date, start_of_day
from common.streaks import MAX_STREAKS, Streak, streak_counter, streaks_of_award
from xp_service.domain import (
    Activity,
    ActivityChanged,
    ActivityNotFound,
    CapReached,
    DuplicateRequest,
    EntryNotFound,
    NothingToRevoke,
    RequestIdReused,
    TooManyStreaks,
    XpRepository,
    is_same_request,
)

T = TypeVar("T")

_UTC_ZONE = ZoneInfo("UTC")

# Catalog changes racing one award: each costs a re-read, and they are rare.
_MAX_ACTIVITY_REREADS = 5


@dataclass(frozen=True)
class AwardOutcome:
    user_id: str
    xp_awarded: int
    total_xp: int
    level: int
    duplicate: bool
    level_up: LevelUpOutcome | None
    level_check_deferred: bool = False
    # The auto-unlock achievements this award unlocked (total_xp and level include their rewards).
    unlocked_achievements: tuple[str, ...] = ()
    # Achievements could not answer: a retry lists the unlocks.
    unlocks_deferred: bool = False
    # Beyond its activity's cap for the period: recorded with 0 XP, counted toward nothing.
    capped: bool = False


@dataclass(frozen=True)
class StreakStanding:
    """A user's run of one streak as GetProgress shows it (common.streaks.StreakRun)."""

    streak_id: str
    current: int
    best: int
    last_period_start: datetime | None


@dataclass(frozen=True)
class Progress:
    record: ProgressRecord
    level: int
    # The rewards of the latest PROGRESS_LEVELS_SHOWN levels passed; whether there were earlier ones.
    rewards: tuple[Reward, ...]
    more_rewards: bool = False
    # The first PROGRESS_UNLOCKS_SHOWN held achievement ids, in id order; whether there are more.
    unlocked_achievements: tuple[str, ...] = ()
    more_unlocked_achievements: bool = False
    # The user's run of each streak of the catalog the user has one of, in streak id order.
    streaks: tuple[StreakStanding, ...] = ()


# Bound GetProgress's answer and cost whatever a player holds or passed; ListUserAchievements
# and LevelsService.ListLevelsReached page through all.
PROGRESS_UNLOCKS_SHOWN = 100
PROGRESS_LEVELS_SHOWN = 10


class XpLedger:
    def __init__(
        self,
        repository: XpRepository,
        levels: LevelChecker,
        achievements: AutoUnlocker,
        *,
        zone: ZoneInfo = _UTC_ZONE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._repository = repository
        self._levels = levels
        self._achievements = achievements
        # The game's time zone, where a cap's days and weeks start; the clock, injected by tests.
        self._zone = zone
        self._clock = clock

    # --- catalog ------------------------------------------------------------------

    async def put_activity(self, activity: Activity) -> Activity:
        await self._repository.put_activity(activity)
        return activity

    async def get_activity(self, activity_id: str) -> Activity:
        return await self._repository.get_activity(activity_id)

    async def list_activities(self, category: str, page_size: int, page_token: str) -> tuple[list[Activity], str]:
        return await self._repository.list_activities(category, page_size, page_token)

    async def delete_activity(self, activity_id: str) -> None:
        await self._repository.delete_activity(activity_id)

    async def put_streak(self, streak: Streak) -> Streak:
        """At most MAX_STREAKS in the catalog, checked on a read made now: only puts of new ids
        racing each other may pass it, by a few (an award's transaction has room for 94 streaks)."""
        current = await self._repository.streaks(fresh=True)
        if streak.streak_id not in {s.streak_id for s in current} and len(current) >= MAX_STREAKS:
            raise TooManyStreaks(MAX_STREAKS)
        await self._repository.put_streak(streak)
        return streak

    async def get_streak(self, streak_id: str) -> Streak:
        return await self._repository.get_streak(streak_id)

    async def list_streaks(self, page_size: int, page_token: str) -> tuple[list[Streak], str]:
        return await self._repository.list_streaks(page_size, page_token)

    async def delete_streak(self, streak_id: str) -> None:
        await self._repository.delete_streak(streak_id)

    # --- XP -----------------------------------------------------------------------

    async def award_xp(self, user_id: str, activity_id: str, request_id: str) -> AwardOutcome:
        for _ in range(_MAX_ACTIVITY_REREADS):
            try:
                activity = await self._repository.cached_activity(activity_id)
            except ActivityNotFound:
                return await self._retry_of_an_award_whose_activity_left(user_id, activity_id, request_id)
            now = self._clock()
            entry = new_entry(
                user_id,
                request_id,
                ACTIVITY,
                activity.xp,
                activity_id=activity_id,
                category=activity.category,
                recorded_at=iso_utc(now),
            )
            cap_period = period_key(now, activity.cap_period, self._zone) if activity.cap_max_awards else ""
            streak_periods = tuple(
                (streak, period_start_date(now, streak.period, self._zone).isoformat())
                for streak in streaks_of_award(await self._repository.streaks(), activity_id, activity.category)
            )
            try:
                return await self._record_once_and_check_level(entry, activity, cap_period, streak_periods)
            except ActivityChanged:
                continue  # the catalog changed since this process read it: read it again
            except CapReached:
                # Beyond the cap: recorded all the same (a retry answers the same), with no XP and no count.
                return await self._record_once_and_check_level(replace(entry, xp=0, capped=True))
        raise ContentionExhausted(f"activity {activity_id!r} kept changing; retry the award")

    async def _retry_of_an_award_whose_activity_left(
        self, user_id: str, activity_id: str, request_id: str
    ) -> AwardOutcome:
        """A retry of an award recorded before the activity left the catalog is
        still a retry (a duplicate); anything else is ActivityNotFound."""
        original = await self._repository.get_entry(user_id, entry_id_for(request_id)) if request_id else None
        if original is None or original.kind != ACTIVITY or original.activity_id != activity_id:
            raise ActivityNotFound(activity_id)
        return await self._record_once_and_check_level(
            new_entry(user_id, request_id, ACTIVITY, original.xp, activity_id=activity_id, recorded_at=utc_now_iso())
        )

    async def grant_xp(
        self, user_id: str, amount: int, reason: str, request_id: str, achievement_id: str = ""
    ) -> AwardOutcome:
        kind = ACHIEVEMENT if achievement_id else GRANT
        entry = new_entry(
            user_id, request_id, kind, amount, reason=reason, achievement_id=achievement_id, recorded_at=utc_now_iso()
        )
        return await self._record_once_and_check_level(entry)

    async def adjust_xp(self, user_id: str, delta: int, reason: str, request_id: str) -> AwardOutcome:
        """An operator's correction, idempotent on the request id; never below zero."""
        entry = new_entry(user_id, request_id, ADJUSTMENT, delta, reason=reason, recorded_at=utc_now_iso())
        return await self._record_once_and_check_level(entry)

    async def revoke_award(self, user_id: str, request_id: str, entry_id: str, reason: str) -> AwardOutcome:
        """Reverses one earlier entry's XP, once: the revoke's id is derived
        from the entry's, so concurrent or repeated revokes write it once."""
        target_id = entry_id or entry_id_for(request_id)
        target = await self._repository.get_entry(user_id, target_id)
        if target is None:
            raise EntryNotFound("entry_id" if entry_id else "request_id", entry_id or request_id)
        if target.kind in (REVOKE, ADJUSTMENT) or target.xp == 0 or target.capped:
            raise NothingToRevoke(target)
        revoke = replace(
            new_entry(
                user_id,
                "",
                REVOKE,
                -target.xp,
                activity_id=target.activity_id,
                category=target.category,
                achievement_id=target.achievement_id,
                reason=reason,
                recorded_at=utc_now_iso(),
            ),
            entry_id=revoke_entry_id(target.entry_id),
            reverses_entry_id=target.entry_id,
            counted=target.kind == ACTIVITY and target.counted,
        )
        return await self._record_once_and_check_level(revoke)

    async def history(self, user_id: str, page_size: int, page_token: str) -> tuple[list[LedgerEntry], str]:
        return await self._repository.history_page(user_id, page_size, page_token)

    async def get_progress(self, user_id: str) -> Progress:
        """The progress item, then, side by side, the rewards of the levels
        passed (for a user with a level) and the first held achievements (for
        a user who holds any)."""
        record = await self._repository.get_progress(user_id)
        nothing: tuple[tuple[Any, ...], bool] = ((), False)
        (rewards, more_rewards), (unlocked, more) = await asyncio.gather(
            self._repository.latest_rewards(user_id, PROGRESS_LEVELS_SHOWN)
            if record.level is not None
            else _nothing(nothing),
            self._repository.unlocked_achievement_ids(user_id, PROGRESS_UNLOCKS_SHOWN)
            if record.holds_achievements
            else _nothing(nothing),
        )
        # Users with no stored level have not been checked yet: they are at the start level.
        level = record.level if record.level is not None else await self._repository.start_level()
        return Progress(record, level, rewards, more_rewards, unlocked, more, await self._streak_standings(user_id))

    async def _streak_standings(self, user_id: str) -> tuple[StreakStanding, ...]:
        catalog = await self._repository.streaks()
        if not catalog:
            return ()
        records = await self._repository.streak_records(user_id)
        now = self._clock()
        standings = []
        for streak in catalog:
            record = records.get(streak.streak_id)
            if record is None:
                continue
            run = record.run()
            this_period = period_start_date(now, streak.period, self._zone)
            standings.append(
                StreakStanding(
                    streak.streak_id,
                    run.current_at(this_period, streak.period),
                    run.best,
                    start_of_day(run.last, self._zone) if run.last else None,
                )
            )
        return tuple(standings)

    async def _record_once_and_check_level(
        self,
        entry: LedgerEntry,
        activity: Activity | None = None,
        cap_period: str = "",
        streak_periods: tuple[tuple[Streak, str], ...] = (),
    ) -> AwardOutcome:
        """The common path is two DynamoDB calls and no gRPC hop: the
        transaction, then the progress read (with the award's counters when an
        auto-unlock rule counts them), which says whether a level-up or an
        auto-unlock may be due. Only then is the Levels service asked, with the
        check named after the ledger entry, so that a retry of this award gets
        the level-up this award caused; then the Achievements service, with
        the unlocks recorded under the entry's id, so that a retry lists them again."""
        xp_awarded, repeat_of = entry.xp, None
        try:
            await self._repository.record_xp(entry, activity, cap_period, streak_periods)
            if entry.xp >= 0:
                XP_AWARDED.labels(entry.kind).inc(entry.xp)
            else:
                XP_TAKEN.labels(entry.kind).inc(-entry.xp)
        except DuplicateRequest as error:
            original = error.existing
            if original.attempt_id != entry.attempt_id:  # not our own write retried after a lost answer
                if not is_same_request(original, entry):
                    raise RequestIdReused(original, entry) from None
                xp_awarded, repeat_of = original.xp, original
        rules = await self._repository.auto_rules()
        counted = (
            award_counters(entry.activity_id, entry.category) if entry.kind == ACTIVITY and not entry.capped else ()
        )
        # The runs the award touched are read always: the read folds one grown long.
        runs = tuple(streak_counter(streak.streak_id) for streak, _ in streak_periods)
        record, counters = await self._repository.get_progress_and_counters(
            entry.user_id, tuple(c for c in counted if c in rules.counters) + runs
        )
        # A repeat answers as the first did: it may grant only where the first check was deferred.
        level = await check_level_after_xp(
            self._repository,
            self._levels,
            entry.user_id,
            entry.entry_id,
            entry.level_check_name,
            repeat=repeat_of is not None,
            replay_only=repeat_of is not None and not repeat_of.level_check_deferred,
            record=record,
        )
        if record.total_xp > 0 and not record.player_counted:
            await self._repository.count_player_once(entry.user_id)
        total_xp, level_now, level_up = level.total_xp, level.level, level.level_up
        unlocked: tuple[str, ...] = ()
        unlocks_deferred = False
        # A repeat always asks: it lists what its original unlocked. So does an award that raised the
        # level while a rule asks for one: a level watch may have been written after this award's read.
        leveled_up = level.level_up is not None and level.level_up.leveled_up
        if rules.rules and (
            repeat_of is not None
            or auto_unlock_may_be_due(rules, record, level.level, counters)
            or (leveled_up and rules.asks_levels)
        ):
            # A repeat of a write whose evaluation was answered lists what it recorded, and evaluates
            # nothing: an unlock due since then belongs to the write that made it due.
            replay = repeat_of is not None and not repeat_of.unlocks_deferred
            if not replay:
                # First, make any next award ask too (its read shows no evaluation under these rules), so
                # that an evaluation this call cannot finish (a crash, a deadline, Achievements down) is
                # not lost; the evaluation's watches write the fingerprint back.
                await self._repository.forget_auto_watches(entry.user_id)
            due = await self._achievements.unlock_due(entry.user_id, entry.entry_id, replay_only=replay)
            unlocks_deferred = due is None
            if due is None and repeat_of is None:
                await self._repository.mark_unlocks_deferred(entry.user_id, entry.entry_id)
            if due is not None:
                unlocked = due.unlocked
                total_xp, level_now = max(total_xp, due.total_xp), max(level_now, due.level)
                if level_up is not None:  # a deferred check stays deferred: its retry reports it all
                    level_up = level_ups_joined([level_up, due.level_up]) or level_up
        return AwardOutcome(
            entry.user_id,
            xp_awarded,
            total_xp,
            level_now,
            repeat_of is not None,
            level_up,
            level.deferred,
            unlocked,
            unlocks_deferred,
            (repeat_of or entry).capped,
        )


async def _nothing(value: T) -> T:
    return value
