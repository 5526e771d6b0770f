"""LevelsService over gRPC: validate, convert, call, map errors."""

from __future__ import annotations

import grpc

from common import field_rules
from common.errors import InvalidField
from common.grpc_edge import level_up_to_message
from common.models import Level, Reward
from levels_service.use_cases import Levels
from rewards.v1 import levels_pb2, levels_pb2_grpc

MAX_CHECK_REQUEST_ID_LENGTH = 256


def level_from_message(message: levels_pb2.Level) -> Level:
    return Level(
        level=message.level,
        xp_required=field_rules.xp_amount("level.xp_required", message.xp_required),
        rewards=tuple(
            Reward(field_rules.require_id(f"level.rewards[{i}].reward_id", r.reward_id), r.quantity)
            for i, r in enumerate(message.rewards)
        ),
    )


def level_to_message(level: Level) -> levels_pb2.Level:
    return levels_pb2.Level(
        level=level.level,
        xp_required=level.xp_required,
        rewards=[levels_pb2.Reward(reward_id=r.reward_id, quantity=r.quantity) for r in level.rewards],
    )


class LevelsServicer(levels_pb2_grpc.LevelsServiceServicer):
    def __init__(self, levels: Levels) -> None:
        self._levels = levels

    async def PutLevel(
        self, request: levels_pb2.PutLevelRequest, context: grpc.aio.ServicerContext
    ) -> levels_pb2.Level:
        field_rules.present("level", request.HasField("level"))
        return level_to_message(await self._levels.put_level(level_from_message(request.level)))

    async def ListLevels(
        self, request: levels_pb2.ListLevelsRequest, context: grpc.aio.ServicerContext
    ) -> levels_pb2.ListLevelsResponse:
        page_size = field_rules.page_size(request.page_size)
        levels, token = await self._levels.list_levels(page_size, request.page_token)
        return levels_pb2.ListLevelsResponse(levels=[level_to_message(l) for l in levels], next_page_token=token)

    async def DeleteLevel(
        self, request: levels_pb2.DeleteLevelRequest, context: grpc.aio.ServicerContext
    ) -> levels_pb2.DeleteLevelResponse:
        if request.level < 1:
            raise InvalidField("level", f"must be 1 or more (got {request.level})")
        await self._levels.delete_level(request.level)
        return levels_pb2.DeleteLevelResponse()

    async def CheckLevelUp(
        self, request: levels_pb2.CheckLevelUpRequest, context: grpc.aio.ServicerContext
    ) -> levels_pb2.LevelUpResult:
        user_id = field_rules.require_id("user_id", request.user_id)
        request_id = field_rules.request_id(request.request_id, max_length=MAX_CHECK_REQUEST_ID_LENGTH)
        if request.replay_only and not request_id:
            raise InvalidField("replay_only", "needs a request_id: it replays that check")
        return level_up_to_message(await self._levels.check_level_up(user_id, request_id, request.replay_only))

    async def ListLevelsReached(
        self, request: levels_pb2.ListLevelsReachedRequest, context: grpc.aio.ServicerContext
    ) -> levels_pb2.ListLevelsReachedResponse:
        user_id = field_rules.require_id("user_id", request.user_id)
        page_size = field_rules.page_size(request.page_size)
        reached, token = await self._levels.list_levels_reached(user_id, page_size, request.page_token)
        response = levels_pb2.ListLevelsReachedResponse(user_id=user_id, next_page_token=token)
        for level in reached:
            item = response.levels.add(
                level=level.level,
                rewards=[levels_pb2.Reward(reward_id=r.reward_id, quantity=r.quantity) for r in level.rewards],
            )
            if level.granted_at:
                item.granted_at.FromJsonString(level.granted_at)
        return response
