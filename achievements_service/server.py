"""Composition root and entry point of the Achievements server."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health

from achievements_service.service import Achievements
from achievements_service.servicer import AchievementsServicer
from achievements_service.storage import AchievementsRepository
from achievements_service.xp_granter import GrpcXpGranter
from common.channels import peer_channel
from common.config import Settings
from common.server_runtime import build_grpc_server, run_service
from rewards.v1 import achievements_pb2, achievements_pb2_grpc

SERVICE = achievements_pb2.DESCRIPTOR.services_by_name["AchievementsService"]


def create_server(
    address: str,
    settings: Settings,
    dynamodb: Any,
    health_servicer: health.HealthServicer | None = None,
) -> tuple[grpc.Server, int]:
    achievements = Achievements(
        AchievementsRepository(dynamodb, settings.table_prefix),
        GrpcXpGranter(peer_channel(settings.xp_target, settings, "achievements"), settings.xp_grant_timeout_s),
    )
    servicer = AchievementsServicer(achievements)
    return build_grpc_server(
        address,
        settings,
        SERVICE,
        servicer,
        achievements_pb2_grpc.add_AchievementsServiceServicer_to_server,
        health_servicer,
    )


def serve(settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env()
    run_service(
        "achievements", settings.achievements_listen, settings.achievements_metrics_port, settings, create_server
    )
