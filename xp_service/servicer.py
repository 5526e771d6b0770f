"""XpService over gRPC: validate, convert, call, map errors."""

from __future__ import annotations

from typing import Any

import grpc

from common import field_rules
from common.errors import InvalidField
from common.grpc_edge import level_up_to_message, period_from_message, period_to_message, streak_to_message
from common.models import ACHIEVEMENT, ACTIVITY, ADJUSTMENT, GRANT, REVOKE, LedgerEntry
from common.streaks import Streak
from rewards.v1 import levels_pb2, xp_pb2, xp_pb2_grpc
from xp_service.domain import Activity
from xp_service.use_cases import AwardOutcome, StreakStanding, XpLedger

MAX_REASON_LENGTH = 256
MAX_ADJUSTMENT = 1_000_000_000
# Entry ids carry a prefix before a caller's id (req#..., rev#req#...).
MAX_ENTRY_ID_LENGTH = field_rules.MAX_ID_LENGTH + 16

_KINDS = {
    ACTIVITY: xp_pb2.LedgerEntry.KIND_ACTIVITY,
    GRANT: xp_pb2.LedgerEntry.KIND_GRANT,
    ACHIEVEMENT: xp_pb2.LedgerEntry.KIND_ACHIEVEMENT,
    ADJUSTMENT: xp_pb2.LedgerEntry.KIND_ADJUSTMENT,
    REVOKE: xp_pb2.LedgerEntry.KIND_REVOKE,
}


def ledger_entry_to_message(entry: LedgerEntry) -> xp_pb2.LedgerEntry:
    message = xp_pb2.LedgerEntry(
        entry_id=entry.entry_id,
        request_id=entry.request_id,
        kind=_KINDS.get(entry.kind, xp_pb2.LedgerEntry.KIND_UNSPECIFIED),
        xp=entry.xp,
        activity_id=entry.activity_id,
        achievement_id=entry.achievement_id,
        reason=entry.reason,
        capped=entry.capped,
        reverses_entry_id=entry.reverses_entry_id,
    )
    if entry.recorded_at:
        message.recorded_at.FromJsonString(entry.recorded_at)
    return message


def activity_from_message(message: xp_pb2.Activity) -> Activity:
    return Activity(
        activity_id=field_rules.require_id("activity.activity_id", message.activity_id),
        name=field_rules.text("activity.name", message.name, max_length=field_rules.MAX_NAME_LENGTH, required=True),
        description=field_rules.text(
            "activity.description", message.description, max_length=field_rules.MAX_DESCRIPTION_LENGTH
        ),
        category=field_rules.optional_id("activity.category", message.category),
        xp=field_rules.xp_amount("activity.xp", message.xp),
        **_cap_from_message(message.cap),
    )


MAX_CAP = 1_000_000


def _cap_from_message(cap: xp_pb2.Cap) -> dict[str, Any]:
    if not 0 <= cap.max_awards <= MAX_CAP:
        raise InvalidField("activity.cap.max_awards", f"must be between 0 and {MAX_CAP} (got {cap.max_awards})")
    if not cap.max_awards:
        return {}
    return {"cap_max_awards": cap.max_awards, "cap_period": _period_from_message("activity.cap.period", cap.period)}


def activity_to_message(activity: Activity) -> xp_pb2.Activity:
    return xp_pb2.Activity(
        activity_id=activity.activity_id,
        name=activity.name,
        description=activity.description,
        category=activity.category,
        xp=activity.xp,
        cap=xp_pb2.Cap(
            max_awards=activity.cap_max_awards,
            period=period_to_message(activity.cap_period),
        )
        if activity.cap_max_awards
        else None,
    )


def _period_from_message(field: str, period: xp_pb2.Period.ValueType) -> str:
    name = period_from_message(period)
    if not name:
        raise InvalidField(field, "must be PERIOD_DAY or PERIOD_WEEK")
    return name


def streak_from_message(message: xp_pb2.Streak) -> Streak:
    activity_id = field_rules.optional_id("streak.activity_id", message.activity_id)
    category = field_rules.optional_id("streak.category", message.category)
    if bool(activity_id) == bool(category):
        raise InvalidField("streak.activity_id", "set exactly one of activity_id and category: what the streak counts")
    return Streak(
        streak_id=field_rules.require_id("streak.streak_id", message.streak_id),
        name=field_rules.text("streak.name", message.name, max_length=field_rules.MAX_NAME_LENGTH, required=True),
        period=_period_from_message("streak.period", message.period),
        activity_id=activity_id,
        category=category,
    )


def streak_state_to_message(standing: StreakStanding) -> xp_pb2.StreakState:
    message = xp_pb2.StreakState(streak_id=standing.streak_id, current=standing.current, best=standing.best)
    if standing.last_period_start is not None:
        message.last_period_start.FromDatetime(standing.last_period_start)
    return message


def award_to_message(outcome: AwardOutcome) -> xp_pb2.AwardXpResponse:
    response = xp_pb2.AwardXpResponse(
        user_id=outcome.user_id,
        xp_awarded=outcome.xp_awarded,
        total_xp=outcome.total_xp,
        level=outcome.level,
        duplicate=outcome.duplicate,
        level_check_deferred=outcome.level_check_deferred,
        unlocked_achievements=list(outcome.unlocked_achievements),
        unlocks_deferred=outcome.unlocks_deferred,
        capped=outcome.capped,
    )
    if outcome.level_up is not None:
        response.level_up.CopyFrom(level_up_to_message(outcome.level_up))
    return response


class XpServicer(xp_pb2_grpc.XpServiceServicer):
    def __init__(self, ledger: XpLedger) -> None:
        self._ledger = ledger

    async def PutActivity(
        self, request: xp_pb2.PutActivityRequest, context: grpc.aio.ServicerContext
    ) -> xp_pb2.Activity:
        field_rules.present("activity", request.HasField("activity"))
        return activity_to_message(await self._ledger.put_activity(activity_from_message(request.activity)))

    async def GetActivity(
        self, request: xp_pb2.GetActivityRequest, context: grpc.aio.ServicerContext
    ) -> xp_pb2.Activity:
        activity_id = field_rules.require_id("activity_id", request.activity_id)
        return activity_to_message(await self._ledger.get_activity(activity_id))

    async def ListActivities(
        self, request: xp_pb2.ListActivitiesRequest, context: grpc.aio.ServicerContext
    ) -> xp_pb2.ListActivitiesResponse:
        category = field_rules.optional_id("category", request.category)
        page_size = field_rules.page_size(request.page_size)
        activities, token = await self._ledger.list_activities(category, page_size, request.page_token)
        return xp_pb2.ListActivitiesResponse(
            activities=[activity_to_message(a) for a in activities], next_page_token=token
        )

    async def DeleteActivity(
        self, request: xp_pb2.DeleteActivityRequest, context: grpc.aio.ServicerContext
    ) -> xp_pb2.DeleteActivityResponse:
        await self._ledger.delete_activity(field_rules.require_id("activity_id", request.activity_id))
        return xp_pb2.DeleteActivityResponse()

    async def AwardXp(
        self, request: xp_pb2.AwardXpRequest, context: grpc.aio.ServicerContext
    ) -> xp_pb2.AwardXpResponse:
        user_id = field_rules.require_id("user_id", request.user_id)
        activity_id = field_rules.require_id("activity_id", request.activity_id)
        request_id = field_rules.request_id(request.request_id)
        return award_to_message(await self._ledger.award_xp(user_id, activity_id, request_id))

    async def GrantXp(
        self, request: xp_pb2.GrantXpRequest, context: grpc.aio.ServicerContext
    ) -> xp_pb2.AwardXpResponse:
        user_id = field_rules.require_id("user_id", request.user_id)
        amount = field_rules.xp_amount("amount", request.amount)
        reason = field_rules.text("reason", request.reason, max_length=MAX_REASON_LENGTH, required=True)
        request_id = field_rules.request_id(request.request_id)
        achievement_id = field_rules.optional_id("achievement_id", request.achievement_id)
        if achievement_id and request_id:
            raise InvalidField("request_id", "must be empty when achievement_id is set: the achievement keys the grant")
        return award_to_message(await self._ledger.grant_xp(user_id, amount, reason, request_id, achievement_id))

    async def GetProgress(
        self, request: xp_pb2.GetProgressRequest, context: grpc.aio.ServicerContext
    ) -> xp_pb2.UserProgress:
        user_id = field_rules.require_id("user_id", request.user_id)
        progress = await self._ledger.get_progress(user_id)
        record = progress.record
        message = xp_pb2.UserProgress(
            user_id=user_id,
            total_xp=record.total_xp,
            level=progress.level,
            unlocked_achievements=progress.unlocked_achievements,
            more_unlocked_achievements=progress.more_unlocked_achievements,
            more_rewards=progress.more_rewards,
            rewards=[levels_pb2.Reward(reward_id=r.reward_id, quantity=r.quantity) for r in progress.rewards],
            streaks=[streak_state_to_message(s) for s in progress.streaks],
        )
        if record.updated_at:
            message.updated_at.FromJsonString(record.updated_at)
        return message

    async def ListXpHistory(
        self, request: xp_pb2.ListXpHistoryRequest, context: grpc.aio.ServicerContext
    ) -> xp_pb2.ListXpHistoryResponse:
        user_id = field_rules.require_id("user_id", request.user_id)
        page_size = field_rules.page_size(request.page_size)
        entries, token = await self._ledger.history(user_id, page_size, request.page_token)
        return xp_pb2.ListXpHistoryResponse(
            entries=[ledger_entry_to_message(e) for e in entries], next_page_token=token
        )

    async def AdjustXp(
        self, request: xp_pb2.AdjustXpRequest, context: grpc.aio.ServicerContext
    ) -> xp_pb2.AwardXpResponse:
        user_id = field_rules.require_id("user_id", request.user_id)
        if not request.delta or abs(request.delta) > MAX_ADJUSTMENT:
            raise InvalidField(
                "delta", f"must be between -{MAX_ADJUSTMENT} and {MAX_ADJUSTMENT}, not 0 (got {request.delta})"
            )
        reason = field_rules.text("reason", request.reason, max_length=MAX_REASON_LENGTH, required=True)
        request_id = field_rules.request_id(request.request_id)
        return award_to_message(await self._ledger.adjust_xp(user_id, request.delta, reason, request_id))

    async def RevokeAward(
        self, request: xp_pb2.RevokeAwardRequest, context: grpc.aio.ServicerContext
    ) -> xp_pb2.AwardXpResponse:
        user_id = field_rules.require_id("user_id", request.user_id)
        request_id = field_rules.request_id(request.request_id)
        entry_id = field_rules.optional_id("entry_id", request.entry_id, max_length=MAX_ENTRY_ID_LENGTH)
        if bool(request_id) == bool(entry_id):
            raise InvalidField("request_id", "set exactly one of request_id and entry_id: the entry to revoke")
        reason = field_rules.text("reason", request.reason, max_length=MAX_REASON_LENGTH, required=True)
        return award_to_message(await self._ledger.revoke_award(user_id, request_id, entry_id, reason))

    async def PutStreak(self, request: xp_pb2.PutStreakRequest, context: grpc.aio.ServicerContext) -> xp_pb2.Streak:
        field_rules.present("streak", request.HasField("streak"))
        return streak_to_message(await self._ledger.put_streak(streak_from_message(request.streak)))

    async def GetStreak(self, request: xp_pb2.GetStreakRequest, context: grpc.aio.ServicerContext) -> xp_pb2.Streak:
        return streak_to_message(await self._ledger.get_streak(field_rules.require_id("streak_id", request.streak_id)))

    async def ListStreaks(
        self, request: xp_pb2.ListStreaksRequest, context: grpc.aio.ServicerContext
    ) -> xp_pb2.ListStreaksResponse:
        page_size = field_rules.page_size(request.page_size)
        streaks, token = await self._ledger.list_streaks(page_size, request.page_token)
        return xp_pb2.ListStreaksResponse(streaks=[streak_to_message(s) for s in streaks], next_page_token=token)

    async def DeleteStreak(
        self, request: xp_pb2.DeleteStreakRequest, context: grpc.aio.ServicerContext
    ) -> xp_pb2.DeleteStreakResponse:
        await self._ledger.delete_streak(field_rules.require_id("streak_id", request.streak_id))
        return xp_pb2.DeleteStreakResponse()
