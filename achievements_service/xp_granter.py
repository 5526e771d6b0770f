"""The XP service as Achievements sees it: GrantXp over gRPC with a deadline,
keyed by the achievement so that it pays at most once per user."""
from __future__ import annotations

import grpc

from achievements_service.domain import Unlock
from achievements_service.service import GrantResult
from common.errors import DependencyUnavailable, PreconditionFailed
from common.grpc_edge import level_up_from_message
from rewards.v1 import xp_pb2, xp_pb2_grpc

# Codes that mean "not now": the unlock stays recorded with its XP owed.
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}


class GrpcXpGranter:
    def __init__(self, channel: grpc.Channel, timeout_s: float) -> None:
        self._stub = xp_pb2_grpc.XpServiceStub(channel)
        self._timeout_s = timeout_s

    def grant_achievement_xp(self, unlock: Unlock) -> GrantResult:
        request = xp_pb2.GrantXpRequest(
            user_id=unlock.user_id, amount=unlock.xp_reward, reason=unlock.grant_reason, achievement_id=unlock.achievement_id
        )
        try:
            response = self._stub.GrantXp(request, timeout=self._timeout_s)
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
            if code in _TRANSIENT:
                raise DependencyUnavailable(
                    f"the achievement is unlocked but its XP grant did not complete "
                    f"(XpService.GrantXp: {code.name}: {details}); repeat UnlockAchievement to complete it"
                ) from error
            raise PreconditionFailed(f"XpService refused the achievement's XP grant ({code.name}: {details})") from error
        level_up = level_up_from_message(response.level_up) if response.HasField("level_up") else None
        return GrantResult(total_xp=response.total_xp, level_up=level_up)
