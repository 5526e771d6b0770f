"""Composition root and entry point of the Levels server."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health

from common.config import Settings
from common.server_runtime import build_grpc_server, run_service
from levels_service.service import Levels
from levels_service.servicer import LevelsServicer
from levels_service.storage import LevelsRepository
from rewards.v1 import levels_pb2, levels_pb2_grpc

SERVICE = levels_pb2.DESCRIPTOR.services_by_name["LevelsService"]


def create_server(
    address: str,
    settings: Settings,
    dynamodb: Any,
    health_servicer: health.HealthServicer | None = None,
) -> tuple[grpc.Server, int]:
    servicer = LevelsServicer(Levels(LevelsRepository(dynamodb, settings.table_prefix), settings.level_table_cache_s))
    return build_grpc_server(
        address, settings, SERVICE, servicer, levels_pb2_grpc.add_LevelsServiceServicer_to_server, health_servicer
    )


def serve(settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env()
    run_service("levels", settings.levels_listen, settings.levels_metrics_port, settings, create_server)
