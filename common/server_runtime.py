"""What every server shares: a grpc.aio server with the edge and auth
interceptors, standard health checking and reflection, and a SIGTERM-graceful run."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.caller_auth import AuthNotConfigured, CallerAuthInterceptor, TokenAuthority
from common.channels import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES
from common.config import Settings
from common.dynamodb import DynamoDBClient, create_dynamodb_client, ensure_tables
from common.metrics import serve_metrics
from common.rpc_interceptors import RpcEdgeInterceptor
from common.rpc_logging import configure_logging
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


HealthServicer = health.aio.HealthServicer


async def build_grpc_server(
    address: str,
    settings: Settings,
    service: ServiceDescriptor,
    servicer: Any,
    add_to_server: Callable[[Any, grpc.aio.Server], None],
    health_servicer: HealthServicer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """One service's grpc.aio server, bound to `address` (port 0 picks a free
    port) with health checking and reflection; returns (server, port), not
    started. Raises AuthNotConfigured without a token key (unless auth is
    explicitly off)."""
    authority = TokenAuthority.from_settings(settings)
    interceptors: list[grpc.aio.ServerInterceptor] = [RpcEdgeInterceptor()]
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
    health_servicer = health_servicer or HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (service.full_name, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
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
    ensure_tables(create_dynamodb_client(settings), settings.table_prefix)
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


def _serve_worker(
    service: str, index: int, listen: str, metrics_port: int, settings: Settings, create_server: ServerFactory
) -> None:
    configure_logging(service, settings.log_level)  # a spawned worker starts without it
    serve_metrics(metrics_port + index if metrics_port else 0)
    with asyncio.Runner(loop_factory=_loop_factory(settings)) as runner:
        runner.run(_serve(listen, metrics_port + index if metrics_port else 0, settings, create_server))


def _loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if settings.event_loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


async def _serve(listen: str, metrics_port: int, settings: Settings, create_server: ServerFactory) -> None:
    dynamodb = DynamoDBClient(settings)
    health_servicer = HealthServicer()
    try:
        server, port = await create_server(listen, settings, dynamodb, health_servicer)
        await serve_until_terminated(
            server,
            health_servicer,
            grace_s=settings.shutdown_grace_s,
            on_ready=lambda: log.info(
                "listening", extra={"fields": {"port": port, "address": listen, "metrics_port": metrics_port}}
            ),
        )
    finally:
        await dynamodb.close()
