"""The XP service as Achievements sees it: GrantXp over gRPC with a deadline."""
from __future__ import annotations

import grpc

from common.errors import DependencyUnavailable
from common.grpc_edge import level_up_from_message
from achievements_service.service import GrantResult
from rewards.v1 import xp_pb2, xp_pb2_grpc


class GrpcXpGranter:
    def __init__(self, channel: grpc.Channel, timeout_s: float) -> None:
        self._stub = xp_pb2_grpc.XpServiceStub(channel)
        self._timeout_s = timeout_s

    def grant_xp(self, user_id: str, amount: int, reason: str, request_id: str) -> GrantResult:
        request = xp_pb2.GrantXpRequest(user_id=user_id, amount=amount, reason=reason, request_id=request_id)
        try:
            response = self._stub.GrantXp(request, timeout=self._timeout_s)
        except grpc.RpcError as error:
            # The unlock is recorded with its grant owed; repeating the unlock completes it.
            raise DependencyUnavailable(
                f"the achievement is unlocked but its XP grant did not complete "
                f"(XpService.GrantXp: {error.code().name}: {error.details()}); "
                f"repeat UnlockAchievement to complete it"
            ) from error
        return GrantResult(
            xp_awarded=response.xp_awarded,
            total_xp=response.total_xp,
            duplicate=response.duplicate,
            level_up=level_up_from_message(response.level_up) if response.HasField("level_up") else None,
        )
