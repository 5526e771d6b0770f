"""The Achievements service as XP sees it: a grpc.aio client with a deadline
that turns an unreachable or slow Achievements service into unlocks left for
the user's next award (or the award's retry)."""

from __future__ import annotations

import logging

import grpc

from common.auto_unlock import DueUnlocks
from common.grpc_edge import level_up_from_message
from rewards.v1 import achievements_pb2, achievements_pb2_grpc

log = logging.getLogger("rewards.achievements_client")


class GrpcAutoUnlocker:
    """common.auto_unlock.AutoUnlocker over gRPC."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self._stub = achievements_pb2_grpc.AchievementsServiceStub(channel)
        self._timeout_s = timeout_s

    async def unlock_due(self, user_id: str, trigger_id: str, replay_only: bool = False) -> DueUnlocks | None:
        request = achievements_pb2.UnlockDueAchievementsRequest(
            user_id=user_id, trigger_id=trigger_id, replay_only=replay_only
        )
        try:
            result = await self._stub.UnlockDueAchievements(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            # The award is recorded either way; the user's watches still say "due".
            log.warning(
                "auto-unlock deferred", extra={"fields": {"code": error.code().name, "details": error.details()}}
            )
            return None
        level_up = level_up_from_message(result.level_up) if result.HasField("level_up") else None
        return DueUnlocks(tuple(result.unlocked), result.total_xp, result.level, tuple(result.due), level_up)
