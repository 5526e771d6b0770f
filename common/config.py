"""All configuration, read from the environment in this one place.

Defaults run the local cluster, except the DynamoDB endpoint: unset means real
AWS, so the local launcher and the tests set REWARDS_DYNAMODB_ENDPOINT.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Settings:
    dynamodb_endpoint: str | None = None
    aws_region: str = "us-east-1"
    table_prefix: str = "rewards-"
    xp_listen: str = "[::]:50051"
    achievements_listen: str = "[::]:50052"
    levels_listen: str = "[::]:50053"
    xp_target: str = "localhost:50051"
    achievements_target: str = "localhost:50052"
    levels_target: str = "localhost:50053"
    # Prometheus metrics over HTTP, one side port per service; 0 turns it off.
    xp_metrics_port: int = 9451
    achievements_metrics_port: int = 9452
    levels_metrics_port: int = 9453
    level_check_timeout_s: float = 2.0
    xp_grant_timeout_s: float = 5.0
    max_workers: int = 32
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        d = cls()

        def text(name: str, default: str) -> str:
            return env.get(name, "").strip() or default

        return cls(
            dynamodb_endpoint=env.get("REWARDS_DYNAMODB_ENDPOINT", "").strip() or None,
            aws_region=text("AWS_REGION", text("AWS_DEFAULT_REGION", d.aws_region)),
            table_prefix=env.get("REWARDS_TABLE_PREFIX", d.table_prefix),
            xp_listen=text("REWARDS_XP_LISTEN", d.xp_listen),
            achievements_listen=text("REWARDS_ACHIEVEMENTS_LISTEN", d.achievements_listen),
            levels_listen=text("REWARDS_LEVELS_LISTEN", d.levels_listen),
            xp_target=text("REWARDS_XP_TARGET", d.xp_target),
            achievements_target=text("REWARDS_ACHIEVEMENTS_TARGET", d.achievements_target),
            levels_target=text("REWARDS_LEVELS_TARGET", d.levels_target),
            xp_metrics_port=int(text("REWARDS_XP_METRICS_PORT", str(d.xp_metrics_port))),
            achievements_metrics_port=int(text("REWARDS_ACHIEVEMENTS_METRICS_PORT", str(d.achievements_metrics_port))),
            levels_metrics_port=int(text("REWARDS_LEVELS_METRICS_PORT", str(d.levels_metrics_port))),
            level_check_timeout_s=float(text("REWARDS_LEVEL_CHECK_TIMEOUT_S", str(d.level_check_timeout_s))),
            xp_grant_timeout_s=float(text("REWARDS_XP_GRANT_TIMEOUT_S", str(d.xp_grant_timeout_s))),
            max_workers=int(text("REWARDS_MAX_WORKERS", str(d.max_workers))),
            shutdown_grace_s=float(text("REWARDS_SHUTDOWN_GRACE_S", str(d.shutdown_grace_s))),
            log_level=text("REWARDS_LOG_LEVEL", d.log_level).upper(),
        )
