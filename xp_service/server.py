"""Composition root and entry point of the XP server."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health

from common.channels import peer_channel
from common.config import Settings
from common.server_runtime import build_grpc_server, run_service
from rewards.v1 import xp_pb2, xp_pb2_grpc
from xp_service.level_checker import GrpcLevelChecker
from xp_service.service import XpLedger
from xp_service.servicer import XpServicer
from xp_service.storage import XpRepository

SERVICE = xp_pb2.DESCRIPTOR.services_by_name["XpService"]


def create_server(
    address: str,
    settings: Settings,
    dynamodb: Any,
    health_servicer: health.HealthServicer | None = None,
) -> tuple[grpc.Server, int]:
    ledger = XpLedger(
        XpRepository(dynamodb, settings.table_prefix),
        GrpcLevelChecker(peer_channel(settings.levels_target, settings, "xp"), settings.level_check_timeout_s),
    )
    servicer = XpServicer(ledger)
    return build_grpc_server(
        address, settings, SERVICE, servicer, xp_pb2_grpc.add_XpServiceServicer_to_server, health_servicer
    )


def serve(settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env()
    run_service("xp", settings.xp_listen, settings.xp_metrics_port, settings, create_server)
