"""Composition root and entry point of the Achievements server."""

from __future__ import annotations

import grpc
from opentelemetry.trace import Tracer

from achievements_service.servicer import AchievementsServicer
from achievements_service.storage import DynamoDBAchievementsRepository
from achievements_service.use_cases import Achievements
from common.channels import peer_channel
from common.config import Settings
from common.dynamodb import DynamoDBClient, LevelTableCache
from common.dynamodb.auto_rules import AutoRulesCache
from common.levels_client import GrpcLevelChecker
from common.server_runtime import HealthServicer, build_grpc_server, run_service
from rewards.v1 import achievements_pb2, achievements_pb2_grpc

SERVICE = achievements_pb2.DESCRIPTOR.services_by_name["AchievementsService"]


async def create_server(
    address: str,
    settings: Settings,
    dynamodb: DynamoDBClient,
    health_servicer: HealthServicer | None = None,
    *,
    tracer: Tracer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """The Achievements server on `address` (port 0: a free port), not started;
    call inside the event loop that will serve it."""
    level_table = LevelTableCache(dynamodb, settings.table_prefix, settings.level_table_cache_s)
    achievements = Achievements(
        DynamoDBAchievementsRepository(
            dynamodb,
            settings.table_prefix,
            level_table,
            AutoRulesCache(dynamodb, settings.table_prefix, settings.auto_rules_cache_s),
        ),
        GrpcLevelChecker(
            peer_channel(settings.levels_target, settings, "achievements"), settings.level_check_timeout_s
        ),
    )
    return await build_grpc_server(
        address,
        settings,
        SERVICE,
        AchievementsServicer(achievements),
        achievements_pb2_grpc.add_AchievementsServiceServicer_to_server,
        health_servicer,
        tracer=tracer,
    )


def serve(settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env()
    run_service(
        "achievements", settings.achievements_listen, settings.achievements_metrics_port, settings, create_server
    )
