"""What every server shares: a grpc.aio server with the edge and auth
interceptors, standard health checking and reflection, and a SIGTERM-graceful run.

Health: the "" entry is the process's liveness (SERVING until it drains); the
service's own entry (such as rewards.v1.XpService) is its readiness, NOT_SERVING
also while the process cannot reach DynamoDB (DynamoDBHealthMonitor), so that a
balancer checking it sends the calls elsewhere. READINESS_METHOD says the same
by its status code, for balancers that cannot name a service (an ALB)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, cast

import grpc
from botocore.exceptions import ClientError, CredentialRetrievalError, HTTPClientError, WaiterError
from botocore.exceptions import ConnectionError as BotocoreConnectionError
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import Tracer

from common.caller_auth import AuthNotConfigured, CallerAuthInterceptor, TokenAuthority
from common.channels import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES
from common.cloudwatch_metrics import start_cloudwatch_metrics
from common.config import Settings
from common.dynamodb import (
    LEVEL_TABLE_VERSION_KEY,
    LEVELS,
    RETRYABLE_ERROR_CODES,
    DynamoDBClient,
    attr,
    create_dynamodb_client,
    ensure_tables,
    error_code,
)
from common.metrics import DYNAMODB_HEALTH_PROBES, DYNAMODB_REACHABLE, serve_metrics
from common.rpc_interceptors import RpcEdgeInterceptor
from common.rpc_logging import configure_logging
from common.tracing import tracer_of, tracer_provider
from common.transport_security import server_credentials

log = logging.getLogger("rewards.server")


class _MethodAwarePool:
    """The default descriptor pool, except that a method's name resolves to its
    service's file: python protobuf cannot find method symbols, which breaks
    `grpcurl describe pkg.Service.Method` (grpc/grpc#34743)."""

    def __init__(self) -> None:
        self._pool = descriptor_pool.Default()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str) -> Any:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                service = None
            if service is not None and method in service.methods_by_name:
                return service.file
            raise


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Not in any proto: a balancer sends it an empty request and judges the status code alone.
READINESS_METHOD = "/rewards.Readiness/Check"


class HealthServicer(health.aio.HealthServicer):
    """grpc's health servicer, remembering the entries it reports and whether
    the server is draining: what readiness and the DynamoDB monitor read."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, int] = {"": SERVING}
        self._draining = False

    async def set(self, service: str, status: int) -> None:
        if not self._draining:  # as grpc's: a draining server stays NOT_SERVING
            self._statuses[service] = status
        await super().set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        self._draining = True
        self._statuses = dict.fromkeys(self._statuses, NOT_SERVING)
        await super().enter_graceful_shutdown()

    @property
    def services(self) -> list[str]:
        """The service entries (every name but "")."""
        return [name for name in self._statuses if name]

    def not_serving(self) -> list[str]:
        """The entries that are not SERVING ("" for the whole server)."""
        return [name for name, status in self._statuses.items() if status != SERVING]


class ReadinessInterceptor(grpc.aio.ServerInterceptor):
    """Answers READINESS_METHOD: OK (an empty message) while every health
    entry is SERVING, UNAVAILABLE otherwise (DynamoDB unreachable, or
    draining). For balancers that judge a health check by its gRPC code and
    send an empty request, so cannot ask for a service entry: an ALB's
    `/grpc.health.v1.Health/Check` gets the "" entry, which stays liveness.
    First in the chain: like health checking it takes no token, and it is
    neither logged nor counted."""

    def __init__(self, health_servicer: HealthServicer) -> None:
        self._health = health_servicer
        self._handler: grpc.RpcMethodHandler = grpc.unary_unary_rpc_method_handler(self._check)

    async def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        if handler_call_details.method == READINESS_METHOD:
            return self._handler
        return await continuation(handler_call_details)

    async def _check(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        not_serving = self._health.not_serving()
        if not_serving:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "NOT_SERVING: " + ", ".join(repr(n) for n in not_serving))
        return b""


class DynamoDBHealthMonitor:
    """Keeps the service entries of `health_servicer` SERVING while this
    process reaches DynamoDB and NOT_SERVING while it does not; "" is left
    alone. Every `interval_s`: when one of the process's own calls got an
    answer since the last check (and none went unanswered after it), that is
    the answer, at no cost; otherwise one GetItem of the level table's version
    item (an eventually consistent read: half a read unit, and every service
    may read that item), not retried, within `probe_timeout_s`. Any answer,
    even an error, counts as reachable: throttling or a 5xx is DynamoDB's
    state, shared by every replica, and taking all of them out would not help.
    No answer (refused, reset, nothing within the timeout, no credentials)
    counts as unreachable."""

    def __init__(
        self,
        dynamodb: DynamoDBClient,
        health_servicer: HealthServicer,
        table_prefix: str,
        interval_s: float,
        probe_timeout_s: float,
    ) -> None:
        self._dynamodb = dynamodb
        self._health = health_servicer
        self._interval_s = interval_s
        self._probe_timeout_s = probe_timeout_s
        self._probe = {"TableName": table_prefix + LEVELS.name, "Key": {"level": attr(LEVEL_TABLE_VERSION_KEY)}}
        self._reachable = True  # the tables were ready a moment ago (wait_for_tables)
        self._checked_at = time.monotonic()
        DYNAMODB_REACHABLE.set(1)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check()
            except Exception:  # a bug here must not freeze the health entries for good
                log.exception("DynamoDB health check failed")

    async def check(self) -> bool:
        """Checks once, updates the health entries when reachability changed, and returns it."""
        if self._dynamodb.reachability.answered_since(self._checked_at):
            reachable = True
        else:
            reachable = await self._dynamodb.probe("GetItem", self._probe, self._probe_timeout_s)
            DYNAMODB_HEALTH_PROBES.labels("answered" if reachable else "unanswered").inc()
        # From the end of this check: the probe's own answer is no news for the next one.
        self._checked_at = time.monotonic()
        if reachable != self._reachable:
            self._reachable = reachable
            DYNAMODB_REACHABLE.set(1 if reachable else 0)
            status = SERVING if reachable else NOT_SERVING
            for service in self._health.services:
                await self._health.set(service, status)
            fields = {
                "services": self._health.services,
                "status": health_pb2.HealthCheckResponse.ServingStatus.Name(status),
            }
            if reachable:
                log.info("DynamoDB answers again", extra={"fields": fields})
            else:
                log.warning("DynamoDB unreachable", extra={"fields": fields})
        return reachable


async def build_grpc_server(
    address: str,
    settings: Settings,
    service: ServiceDescriptor,
    servicer: Any,
    add_to_server: Callable[[Any, grpc.aio.Server], None],
    health_servicer: HealthServicer | None = None,
    *,
    tracer: Tracer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """One service's grpc.aio server, bound to `address` (port 0 picks a free
    port) with health checking and reflection; returns (server, port), not
    started. With `tracer`, a span per RPC (common.tracing). Raises
    AuthNotConfigured without a token key (unless auth is explicitly off)."""
    authority = TokenAuthority.from_settings(settings)
    health_servicer = health_servicer or HealthServicer()
    interceptors: list[grpc.aio.ServerInterceptor] = [ReadinessInterceptor(health_servicer), RpcEdgeInterceptor(tracer)]
    if authority is None:
        log.warning("authentication is OFF (REWARDS_INSECURE_NO_AUTH): every caller may call every method")
    else:
        interceptors.append(CallerAuthInterceptor(authority))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
            # Every valid request is a few KB; larger ones are RESOURCE_EXHAUSTED before any work.
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            # Several processes of one service on one port (REWARDS_WORKERS): the kernel spreads connections.
            ("grpc.so_reuseport", 1),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
    )
    add_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (service.full_name, ""):
        await health_servicer.set(name, SERVING)
    reflection.enable_server_reflection(
        (service.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME),
        server,
        pool=cast(descriptor_pool.DescriptorPool, _MethodAwarePool()),
    )
    credentials = server_credentials(settings)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    return server, port


async def serve_until_terminated(
    server: grpc.aio.Server,
    health_servicer: HealthServicer,
    *,
    grace_s: float,
    on_ready: Callable[[], Any] = lambda: None,
) -> None:
    """Runs until SIGTERM or SIGINT, then reports NOT_SERVING (so load balancers
    stop sending), lets in-flight calls finish within `grace_s`, and returns."""
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop(signum: int) -> None:
        log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
        stop_requested.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop, signum)
    await server.start()
    on_ready()
    await stop_requested.wait()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_s)
    log.info("stopped")


ServerFactory = Callable[..., Awaitable[tuple[grpc.aio.Server, int]]]


def run_service(service: str, listen: str, metrics_port: int, settings: Settings, create_server: ServerFactory) -> None:
    """The entry point every service shares: logging, tables, then
    REWARDS_WORKERS processes that serve on one port (SO_REUSEPORT, as in
    grpc's multiprocessing example) until SIGTERM. Worker i serves its metrics
    on metrics_port + i."""
    configure_logging(service, settings.log_level)
    try:
        TokenAuthority.from_settings(settings)
    except AuthNotConfigured as refused:
        log.error("refusing to start: %s", refused)
        raise SystemExit(2) from refused
    wait_for_tables(settings)
    workers = max(1, settings.workers)
    if workers == 1:
        _serve_worker(service, 0, listen, metrics_port, settings, create_server)
        return
    # Spawned, not forked: each worker starts its own gRPC core and event loop.
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_serve_worker,
            args=(service, index, listen, metrics_port, settings, create_server),
            name=f"{service}-worker-{index}",
        )
        for index in range(workers)
    ]
    for process in processes:
        process.start()

    def stop_workers(signum: int, _frame: Any) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, stop_workers)
    signal.signal(signal.SIGINT, stop_workers)
    for process in processes:
        process.join()
    failed = [p.exitcode for p in processes if p.exitcode]
    if failed:
        raise SystemExit(failed[0])


# Errors of a DynamoDB that is not there yet (not started, restarting, unreachable for now): worth waiting for.
_NOT_YET = (BotocoreConnectionError, HTTPClientError, WaiterError, CredentialRetrievalError)


def _worth_waiting_for(error: Exception) -> bool:
    if isinstance(error, _NOT_YET):
        return True
    if isinstance(error, ClientError):
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return status >= 500 or error_code(error) in RETRYABLE_ERROR_CODES
    return False


def wait_for_tables(settings: Settings) -> None:
    """Checks the tables (ensure_tables: created when missing, then waited
    for until active), retrying with jittered backoff while DynamoDB does not
    answer, for up to settings.dynamodb_startup_wait_s, with one log line per
    failed attempt. Then, or at once for an error that waiting cannot mend
    (no credentials, access denied), logs one line with the reason and exits 1."""
    # One attempt per request (botocore's max_attempts counts the retries): this loop retries, and logs it.
    client = create_dynamodb_client(replace(settings, dynamodb_max_attempts=0))
    endpoint = settings.dynamodb_endpoint or f"AWS ({settings.aws_region})"
    started = time.monotonic()
    delay_s = 0.25
    for attempt in itertools.count(1):
        try:
            ensure_tables(client, settings.table_prefix)
        except Exception as error:
            reason = f"{error.__class__.__name__}: {error}".replace("\n", " ")
            waited_s = time.monotonic() - started
            fields = {"endpoint": endpoint, "attempt": attempt, "waited_s": round(waited_s, 2), "error": reason}
            if not _worth_waiting_for(error):
                log.error("refusing to start: the table check failed", extra={"fields": fields})
                raise SystemExit(1) from None
            left_s = settings.dynamodb_startup_wait_s - waited_s
            if left_s <= 0:
                log.error(
                    "giving up: DynamoDB did not answer within REWARDS_DYNAMODB_STARTUP_WAIT_S "
                    f"({settings.dynamodb_startup_wait_s:g} s)",
                    extra={"fields": fields},
                )
                raise SystemExit(1) from None
            pause_s = min(left_s, random.uniform(delay_s / 2, delay_s))
            log.warning("waiting for DynamoDB", extra={"fields": {**fields, "retry_in_s": round(pause_s, 2)}})
            time.sleep(pause_s)
            delay_s = min(delay_s * 2, 5.0)
            continue
        if attempt > 1:
            log.info(
                "DynamoDB answered",
                extra={"fields": {"endpoint": endpoint, "waited_s": round(time.monotonic() - started, 2)}},
            )
        return


def _serve_worker(
    service: str, index: int, listen: str, metrics_port: int, settings: Settings, create_server: ServerFactory
) -> None:
    configure_logging(service, settings.log_level)  # a spawned worker starts without it
    serve_metrics(metrics_port + index if metrics_port else 0)
    # Each worker writes its own changes (CloudWatch sums the workers'); the last ones after the drain.
    cloudwatch_metrics = start_cloudwatch_metrics(service, settings)
    try:
        with asyncio.Runner(loop_factory=_loop_factory(settings)) as runner:
            runner.run(_serve(service, listen, metrics_port + index if metrics_port else 0, settings, create_server))
    finally:
        if cloudwatch_metrics is not None:
            cloudwatch_metrics.stop()


def _loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if settings.event_loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


async def _serve(
    service: str, listen: str, metrics_port: int, settings: Settings, create_server: ServerFactory
) -> None:
    dynamodb = DynamoDBClient(settings)
    health_servicer = HealthServicer()
    monitoring: asyncio.Task[None] | None = None
    # Per process (a spawned worker has its own): OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set, else None.
    traces = tracer_provider(settings, service)
    try:
        server, port = await create_server(listen, settings, dynamodb, health_servicer, tracer=tracer_of(traces))
        if settings.dynamodb_health_interval_s > 0:
            monitor = DynamoDBHealthMonitor(
                dynamodb,
                health_servicer,
                settings.table_prefix,
                interval_s=settings.dynamodb_health_interval_s,
                # Shorter than the interval, so that checks do not pile up behind a frozen DynamoDB.
                probe_timeout_s=min(settings.dynamodb_read_timeout_s, settings.dynamodb_health_interval_s),
            )
            monitoring = asyncio.create_task(monitor.run())
        await serve_until_terminated(
            server,
            health_servicer,
            grace_s=settings.shutdown_grace_s,
            on_ready=lambda: log.info(
                "listening", extra={"fields": {"port": port, "address": listen, "metrics_port": metrics_port}}
            ),
        )
    finally:
        if monitoring is not None:
            monitoring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitoring
        await dynamodb.close()
        if traces is not None:
            # The spans still batched go out before the process exits (off the loop: it blocks).
            await asyncio.to_thread(traces.shutdown)
