"""Composition root and entry point of the Levels server."""

from __future__ import annotations

import grpc
from opentelemetry.trace import Tracer

from common.config import Settings
from common.dynamodb import DynamoDBClient, LevelTableCache
from common.server_runtime import HealthServicer, build_grpc_server, run_service
from levels_service.servicer import LevelsServicer
from levels_service.storage import DynamoDBLevelsRepository
from levels_service.use_cases import Levels
from rewards.v1 import levels_pb2, levels_pb2_grpc

SERVICE = levels_pb2.DESCRIPTOR.services_by_name["LevelsService"]


async def create_server(
    address: str,
    settings: Settings,
    dynamodb: DynamoDBClient,
    health_servicer: HealthServicer | None = None,
    *,
    tracer: Tracer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """The Levels server on `address` (port 0: a free port), not started; call
    inside the event loop that will serve it."""
    level_table = LevelTableCache(dynamodb, settings.table_prefix, settings.level_table_cache_s)
    servicer = LevelsServicer(Levels(DynamoDBLevelsRepository(dynamodb, settings.table_prefix, level_table)))
    return await build_grpc_server(
        address,
        settings,
        SERVICE,
        servicer,
        levels_pb2_grpc.add_LevelsServiceServicer_to_server,
        health_servicer,
        tracer=tracer,
    )


def serve(settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env()
    run_service("levels", settings.levels_listen, settings.levels_metrics_port, settings, create_server)
