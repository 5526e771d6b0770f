"""LevelsService over gRPC: validate, convert, call, map errors."""
from __future__ import annotations

import grpc

from common import field_rules
from common.errors import InvalidField
from common.grpc_edge import level_up_to_message, maps_domain_errors
from common.models import Reward
from levels_service.domain import Level
from levels_service.service import Levels
from rewards.v1 import levels_pb2, levels_pb2_grpc

MAX_REWARDS_PER_LEVEL = 50
MAX_LEVEL = 1_000_000
MAX_QUANTITY = 1_000_000_000


def level_from_message(message: levels_pb2.Level) -> Level:
    if message.level < 1:
        raise InvalidField("level.level", f"must be 1 or more (got {message.level})")
    if message.level > MAX_LEVEL:
        raise InvalidField("level.level", f"must be at most {MAX_LEVEL} (got {message.level})")
    field_rules.xp_amount("level.xp_required", message.xp_required)
    if len(message.rewards) > MAX_REWARDS_PER_LEVEL:
        raise InvalidField("level.rewards", f"must hold at most {MAX_REWARDS_PER_LEVEL} rewards")
    rewards = []
    for i, reward in enumerate(message.rewards):
        field_rules.require_id(f"level.rewards[{i}].reward_id", reward.reward_id)
        if not 1 <= reward.quantity <= MAX_QUANTITY:
            raise InvalidField(f"level.rewards[{i}].quantity", f"must be between 1 and {MAX_QUANTITY} (got {reward.quantity})")
        rewards.append(Reward(reward.reward_id, reward.quantity))
    return Level(message.level, message.xp_required, tuple(rewards))


def level_to_message(level: Level) -> levels_pb2.Level:
    return levels_pb2.Level(
        level=level.level,
        xp_required=level.xp_required,
        rewards=[levels_pb2.Reward(reward_id=r.reward_id, quantity=r.quantity) for r in level.rewards],
    )


class LevelsServicer(levels_pb2_grpc.LevelsServiceServicer):
    def __init__(self, levels: Levels) -> None:
        self._levels = levels

    @maps_domain_errors
    def PutLevel(self, request: levels_pb2.PutLevelRequest, context: grpc.ServicerContext) -> levels_pb2.Level:
        field_rules.present("level", request.HasField("level"))
        return level_to_message(self._levels.put_level(level_from_message(request.level)))

    @maps_domain_errors
    def ListLevels(self, request: levels_pb2.ListLevelsRequest, context: grpc.ServicerContext) -> levels_pb2.ListLevelsResponse:
        return levels_pb2.ListLevelsResponse(levels=[level_to_message(l) for l in self._levels.list_levels().levels])

    @maps_domain_errors
    def DeleteLevel(self, request: levels_pb2.DeleteLevelRequest, context: grpc.ServicerContext) -> levels_pb2.DeleteLevelResponse:
        if request.level < 1:
            raise InvalidField("level", f"must be 1 or more (got {request.level})")
        self._levels.delete_level(request.level)
        return levels_pb2.DeleteLevelResponse()

    @maps_domain_errors
    def CheckLevelUp(self, request: levels_pb2.CheckLevelUpRequest, context: grpc.ServicerContext) -> levels_pb2.LevelUpResult:
        user_id = field_rules.require_id("user_id", request.user_id)
        return level_up_to_message(self._levels.check_level_up(user_id))
