"""Composition root and entry point of the XP server."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import grpc
from opentelemetry.trace import Tracer

from common.achievements_client import GrpcAutoUnlocker
from common.channels import peer_channel
from common.config import Settings
from common.dynamodb import DynamoDBClient, LevelTableCache
from common.dynamodb.auto_rules import AutoRulesCache
from common.dynamodb.streak_catalog import StreakCatalogSnapshot
from common.levels_client import GrpcLevelChecker
from common.server_runtime import HealthServicer, build_grpc_server, run_service
from rewards.v1 import xp_pb2, xp_pb2_grpc
from xp_service.servicer import XpServicer
from xp_service.storage import DynamoDBXpRepository
from xp_service.use_cases import XpLedger

SERVICE = xp_pb2.DESCRIPTOR.services_by_name["XpService"]


async def create_server(
    address: str,
    settings: Settings,
    dynamodb: DynamoDBClient,
    health_servicer: HealthServicer | None = None,
    *,
    clock: Callable[[], datetime] | None = None,
    tracer: Tracer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """The XP server on `address` (port 0: a free port), not started; call
    inside the event loop that will serve it. `clock` (tests: days and weeks
    of caps and streaks without waiting for them) defaults to the system's."""
    level_table = LevelTableCache(dynamodb, settings.table_prefix, settings.level_table_cache_s)
    auto_rules = AutoRulesCache(dynamodb, settings.table_prefix, settings.auto_rules_cache_s)
    streaks = StreakCatalogSnapshot(dynamodb, settings.table_prefix, settings.streak_catalog_cache_s)
    ledger = XpLedger(
        DynamoDBXpRepository(dynamodb, settings.table_prefix, level_table, auto_rules, streaks),
        GrpcLevelChecker(peer_channel(settings.levels_target, settings, "xp"), settings.level_check_timeout_s),
        GrpcAutoUnlocker(peer_channel(settings.achievements_target, settings, "xp"), settings.auto_unlock_timeout_s),
        zone=ZoneInfo(settings.time_zone),
        **({"clock": clock} if clock is not None else {}),
    )
    return await build_grpc_server(
        address,
        settings,
        SERVICE,
        XpServicer(ledger),
        xp_pb2_grpc.add_XpServiceServicer_to_server,
        health_servicer,
        tracer=tracer,
    )


def serve(settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env()
    run_service("xp", settings.xp_listen, settings.xp_metrics_port, settings, create_server)
