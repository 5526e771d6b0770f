"""The Levels service as XP sees it: a gRPC client with a deadline that turns
an unreachable or slow Levels service into a deferred check."""

from __future__ import annotations

import logging

import grpc

from common.grpc_edge import level_up_from_message
from common.models import LevelUpOutcome
from rewards.v1 import levels_pb2, levels_pb2_grpc

log = logging.getLogger("rewards.xp.levels_client")


class GrpcLevelChecker:
    def __init__(self, channel: grpc.Channel, timeout_s: float) -> None:
        self._stub = levels_pb2_grpc.LevelsServiceStub(channel)
        self._timeout_s = timeout_s

    def check_level_up(self, user_id: str, request_id: str) -> LevelUpOutcome | None:
        request = levels_pb2.CheckLevelUpRequest(user_id=user_id, request_id=request_id)
        try:
            result = self._stub.CheckLevelUp(request, timeout=self._timeout_s)
        except grpc.RpcError as error:
            # The XP is recorded either way; the next check grants any level-up.
            log.warning(
                "level check deferred", extra={"fields": {"code": error.code().name, "details": error.details()}}
            )
            return None
        return level_up_from_message(result)
