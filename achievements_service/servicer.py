"""AchievementsService over gRPC: validate, convert, call, map errors."""

from __future__ import annotations

import grpc

from achievements_service.domain import Achievement, Requirements
from achievements_service.use_cases import Achievements, UnlockOutcome
from common import field_rules
from common.grpc_edge import level_up_to_message
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
        ),
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
        ),
    )


def unlock_to_message(outcome: UnlockOutcome) -> achievements_pb2.UnlockAchievementResponse:
    response = achievements_pb2.UnlockAchievementResponse(
        achievement=achievement_to_message(outcome.achievement),
        already_unlocked=outcome.already_unlocked,
        xp_awarded=outcome.xp_awarded,
        total_xp=outcome.total_xp,
    )
    if outcome.level_up is not None:
        response.level_up.CopyFrom(level_up_to_message(outcome.level_up))
    return response


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
