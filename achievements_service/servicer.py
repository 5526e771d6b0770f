"""AchievementsService over gRPC: validate, convert, call, map errors."""

from __future__ import annotations

import grpc

from achievements_service.domain import Achievement, ActivityCount, Requirements
from achievements_service.use_cases import Achievements, UnlockOutcome
from common import field_rules
from common.caller_auth import Role, current_caller
from common.grpc_edge import level_up_to_message
from common.streaks import StreakLength
from rewards.v1 import achievements_pb2, achievements_pb2_grpc


def achievement_from_message(message: achievements_pb2.Achievement) -> Achievement:
    requirements = message.requirements
    return Achievement(
        achievement_id=field_rules.require_id("achievement.achievement_id", message.achievement_id),
        name=field_rules.text("achievement.name", message.name, max_length=field_rules.MAX_NAME_LENGTH, required=True),
        description=field_rules.text(
            "achievement.description", message.description, max_length=field_rules.MAX_DESCRIPTION_LENGTH
        ),
        xp_reward=field_rules.xp_amount("achievement.xp_reward", message.xp_reward),
        hidden=message.hidden,
        requirements=Requirements(
            required_achievements=tuple(
                field_rules.require_id(f"achievement.requirements.required_achievements[{i}]", a)
                for i, a in enumerate(requirements.required_achievements)
            ),
            min_total_xp=requirements.min_total_xp,
            min_level=requirements.min_level,
            activity_counts=tuple(
                ActivityCount(
                    activity_id=field_rules.optional_id(
                        f"achievement.requirements.activity_counts[{i}].activity_id", count.activity_id
                    ),
                    category=field_rules.optional_id(
                        f"achievement.requirements.activity_counts[{i}].category", count.category
                    ),
                    count=count.count,
                )
                for i, count in enumerate(requirements.activity_counts)
            ),
            streak_lengths=tuple(
                StreakLength(
                    field_rules.require_id(f"achievement.requirements.streak_lengths[{i}].streak_id", run.streak_id),
                    run.length,
                )
                for i, run in enumerate(requirements.streak_lengths)
            ),
        ),
        auto_unlock=message.auto_unlock,
    )


def achievement_to_message(achievement: Achievement) -> achievements_pb2.Achievement:
    return achievements_pb2.Achievement(
        achievement_id=achievement.achievement_id,
        name=achievement.name,
        description=achievement.description,
        xp_reward=achievement.xp_reward,
        hidden=achievement.hidden,
        requirements=achievements_pb2.Requirements(
            required_achievements=list(achievement.requirements.required_achievements),
            min_total_xp=achievement.requirements.min_total_xp,
            min_level=achievement.requirements.min_level,
            activity_counts=[
                achievements_pb2.ActivityCount(activity_id=c.activity_id, category=c.category, count=c.count)
                for c in achievement.requirements.activity_counts
            ],
            streak_lengths=[
                achievements_pb2.StreakLength(streak_id=s.streak_id, length=s.length)
                for s in achievement.requirements.streak_lengths
            ],
        ),
        auto_unlock=achievement.auto_unlock,
    )


def unlock_to_message(outcome: UnlockOutcome) -> achievements_pb2.UnlockAchievementResponse:
    response = achievements_pb2.UnlockAchievementResponse(
        achievement=achievement_to_message(outcome.achievement),
        already_unlocked=outcome.already_unlocked,
        xp_awarded=outcome.xp_awarded,
        total_xp=outcome.total_xp,
        also_unlocked=list(outcome.also_unlocked),
        also_unlocked_deferred=outcome.also_unlocked_deferred,
    )
    if outcome.level_up is not None:
        response.level_up.CopyFrom(level_up_to_message(outcome.level_up))
    return response


MAX_TRIGGER_ID_LENGTH = field_rules.MAX_ID_LENGTH + 16


class AchievementsServicer(achievements_pb2_grpc.AchievementsServiceServicer):
    def __init__(self, achievements: Achievements) -> None:
        self._achievements = achievements

    async def PutAchievement(
        self, request: achievements_pb2.PutAchievementRequest, context: grpc.aio.ServicerContext
    ) -> achievements_pb2.Achievement:
        field_rules.present("achievement", request.HasField("achievement"))
        stored = await self._achievements.put_achievement(achievement_from_message(request.achievement))
        return achievement_to_message(stored)

    async def GetAchievement(
        self, request: achievements_pb2.GetAchievementRequest, context: grpc.aio.ServicerContext
    ) -> achievements_pb2.Achievement:
        achievement_id = field_rules.require_id("achievement_id", request.achievement_id)
        return achievement_to_message(await self._achievements.get_achievement(achievement_id))

    async def ListAchievements(
        self, request: achievements_pb2.ListAchievementsRequest, context: grpc.aio.ServicerContext
    ) -> achievements_pb2.ListAchievementsResponse:
        page_size = field_rules.page_size(request.page_size)
        achievements, token = await self._achievements.list_achievements(page_size, request.page_token)
        return achievements_pb2.ListAchievementsResponse(
            achievements=[achievement_to_message(a) for a in achievements], next_page_token=token
        )

    async def DeleteAchievement(
        self, request: achievements_pb2.DeleteAchievementRequest, context: grpc.aio.ServicerContext
    ) -> achievements_pb2.DeleteAchievementResponse:
        await self._achievements.delete_achievement(field_rules.require_id("achievement_id", request.achievement_id))
        return achievements_pb2.DeleteAchievementResponse()

    async def UnlockAchievement(
        self, request: achievements_pb2.UnlockAchievementRequest, context: grpc.aio.ServicerContext
    ) -> achievements_pb2.UnlockAchievementResponse:
        user_id = field_rules.require_id("user_id", request.user_id)
        achievement_id = field_rules.require_id("achievement_id", request.achievement_id)
        request_id = field_rules.request_id(request.request_id)
        return unlock_to_message(await self._achievements.unlock_achievement(user_id, achievement_id, request_id))

    async def ListUserAchievements(
        self, request: achievements_pb2.ListUserAchievementsRequest, context: grpc.aio.ServicerContext
    ) -> achievements_pb2.ListUserAchievementsResponse:
        user_id = field_rules.require_id("user_id", request.user_id)
        page_size = field_rules.page_size(request.page_size)
        views, token = await self._achievements.list_user_achievements(user_id, page_size, request.page_token)
        response = achievements_pb2.ListUserAchievementsResponse(user_id=user_id, next_page_token=token)
        for view in views:
            item = response.achievements.add(achievement_id=view.unlock.achievement_id, xp_reward=view.unlock.xp_reward)
            item.unlocked_at.FromJsonString(view.unlock.unlocked_at)
            if view.achievement is not None:
                item.achievement.CopyFrom(achievement_to_message(view.achievement))
        return response

    async def UnlockDueAchievements(
        self, request: achievements_pb2.UnlockDueAchievementsRequest, context: grpc.aio.ServicerContext
    ) -> achievements_pb2.UnlockDueAchievementsResponse:
        user_id = field_rules.require_id("user_id", request.user_id)
        # Room for a prefix before a caller's id: XP names the evaluation after the award's ledger entry.
        trigger_id = field_rules.require_id("trigger_id", request.trigger_id, max_length=MAX_TRIGGER_ID_LENGTH)
        only = tuple(
            dict.fromkeys(
                field_rules.require_id(f"achievement_ids[{i}]", a) for i, a in enumerate(request.achievement_ids)
            )
        )
        if request.replay_only:
            due = await self._achievements.unlocks_under_trigger(user_id, trigger_id)
        else:
            due = await self._achievements.unlock_due_achievements(user_id, trigger_id, only, request.dry_run)
        response = achievements_pb2.UnlockDueAchievementsResponse(
            unlocked=list(due.unlocked), total_xp=due.total_xp, level=due.level, due=list(due.due)
        )
        if due.level_up is not None:
            response.level_up.CopyFrom(level_up_to_message(due.level_up))
        return response

    async def GetAchievementProgress(
        self, request: achievements_pb2.GetAchievementProgressRequest, context: grpc.aio.ServicerContext
    ) -> achievements_pb2.GetAchievementProgressResponse:
        user_id = field_rules.require_id("user_id", request.user_id)
        page_size = field_rules.page_size(request.page_size)
        caller = current_caller()
        views, token = await self._achievements.achievement_progress(
            user_id, page_size, request.page_token, reveal_hidden=caller is not None and caller.role == Role.ADMIN
        )
        response = achievements_pb2.GetAchievementProgressResponse(user_id=user_id, next_page_token=token)
        for view in views:
            item = response.achievements.add(
                achievement=achievement_to_message(view.achievement),
                unlocked=view.unlock is not None,
                percent=view.percent,
                unlock_rate=view.unlock_rate,
                criteria=[
                    achievements_pb2.CriterionProgress(description=c.description, current=c.current, target=c.target)
                    for c in view.criteria
                ],
            )
            if view.unlock is not None and view.unlock.unlocked_at:
                item.unlocked_at.FromJsonString(view.unlock.unlocked_at)
        return response

    async def GetAchievementStats(
        self, request: achievements_pb2.GetAchievementStatsRequest, context: grpc.aio.ServicerContext
    ) -> achievements_pb2.AchievementStats:
        stats = await self._achievements.achievement_stats(
            field_rules.require_id("achievement_id", request.achievement_id)
        )
        return achievements_pb2.AchievementStats(
            achievement_id=stats.achievement_id,
            unlocked_count=stats.unlocked_count,
            players=stats.players,
            unlock_rate=stats.unlock_rate,
        )
