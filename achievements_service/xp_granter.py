"""The XP service as Achievements sees it: GrantXp over gRPC with a deadline,
keyed by the achievement so that it pays at most once per user."""

from __future__ import annotations

import grpc

from achievements_service.domain import GrantRefused, GrantResult, Unlock
from common.errors import DependencyUnavailable
from common.grpc_edge import level_up_from_message
from rewards.v1 import xp_pb2, xp_pb2_grpc

# Answers that a retry cannot change; anything else (outage, deadline, a bug
# on the XP side) leaves the unlock recorded with its XP owed, for a repeat to pay.
_REFUSALS = {
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}


class GrpcXpGranter:
    """achievements_service.domain.XpGranter over gRPC."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self._stub = xp_pb2_grpc.XpServiceStub(channel)
        self._timeout_s = timeout_s

    async def grant_achievement_xp(self, unlock: Unlock) -> GrantResult:
        request = xp_pb2.GrantXpRequest(
            user_id=unlock.user_id,
            amount=unlock.xp_reward,
            reason=unlock.grant_reason,
            achievement_id=unlock.achievement_id,
        )
        try:
            response = await self._stub.GrantXp(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            code, details = error.code(), error.details()
            if code in _REFUSALS:
                raise GrantRefused(f"XpService refused the achievement's XP grant ({code.name}: {details})") from error
            raise DependencyUnavailable(
                f"the achievement is unlocked but its XP grant did not complete "
                f"(XpService.GrantXp: {code.name}: {details}); repeat UnlockAchievement to complete it"
            ) from error
        level_up = level_up_from_message(response.level_up) if response.HasField("level_up") else None
        return GrantResult(total_xp=response.total_xp, level_up=level_up)
