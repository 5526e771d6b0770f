"""`python -m gateway`: the HTTP/JSON gateway on REWARDS_GATEWAY_HOST:REWARDS_GATEWAY_PORT
(default 0.0.0.0:8080), calling the services at REWARDS_XP_TARGET,
REWARDS_ACHIEVEMENTS_TARGET and REWARDS_LEVELS_TARGET. JSON logs on stderr;
SIGTERM or SIGINT stops it after in-flight requests finish (uvicorn's
graceful shutdown, bounded by REWARDS_SHUTDOWN_GRACE_S), with exit status 0."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn

from common.config import Settings
from common.rpc_logging import configure_logging
from common.tracing import tracer_provider
from gateway.app import create_app
from gateway.limits import MAX_INCOMPLETE_HEAD_BYTES

log = logging.getLogger("rewards.gateway")


def _exit(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    settings = Settings.from_env()
    configure_logging("gateway", settings.log_level)
    config = uvicorn.Config(
        create_app(settings, tracer_provider(settings, "gateway")),
        host=settings.gateway_host,
        port=settings.gateway_port,
        lifespan="on",
        log_config=None,  # uvicorn's own loggers go to the JSON handler configured above
        access_log=False,  # the app logs one line a request (gateway.app.TraceAndLog)
        server_header=False,
        # h11, whose limit on a request head still arriving can be set (httptools' cannot).
        http="h11",
        h11_max_incomplete_event_size=MAX_INCOMPLETE_HEAD_BYTES,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
    )
    # uvicorn handles SIGTERM and SIGINT while it serves (a graceful stop), then
    # raises the signal again to whatever handled it before: these, so that a
    # graceful stop exits 0 (as the services do), and a signal during startup exits too.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit)
    try:
        uvicorn.Server(config).run()
    finally:
        log.info("stopped")


if __name__ == "__main__":
    main()
