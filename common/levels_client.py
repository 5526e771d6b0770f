"""The Levels service as XP and Achievements see it: a grpc.aio client with a
deadline that turns an unreachable or slow Levels service into a deferred check."""

from __future__ import annotations

import logging

import grpc

from common.grpc_edge import level_up_from_message
from common.models import LevelUpOutcome
from rewards.v1 import levels_pb2, levels_pb2_grpc

log = logging.getLogger("rewards.levels_client")


class GrpcLevelChecker:
    """common.level_check.LevelChecker over gRPC."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self._stub = levels_pb2_grpc.LevelsServiceStub(channel)
        self._timeout_s = timeout_s

    async def check_level_up(self, user_id: str, request_id: str, replay_only: bool = False) -> LevelUpOutcome | None:
        request = levels_pb2.CheckLevelUpRequest(user_id=user_id, request_id=request_id, replay_only=replay_only)
        try:
            result = await self._stub.CheckLevelUp(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            # The XP is recorded either way; the next check grants any level-up.
            log.warning(
                "level check deferred", extra={"fields": {"code": error.code().name, "details": error.details()}}
            )
            return None
        return level_up_from_message(result)
