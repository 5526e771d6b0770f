"""What every server shares: a thread-pool gRPC server with the logging
interceptor, standard health checking and reflection, and a SIGTERM-graceful run."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any, cast

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.caller_auth import AuthNotConfigured, CallerAuthInterceptor, TokenAuthority
from common.channels import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES
from common.config import Settings
from common.dynamodb import create_dynamodb_client, ensure_tables
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


def build_grpc_server(
    address: str,
    settings: Settings,
    service: ServiceDescriptor,
    servicer: Any,
    add_to_server: Callable[[Any, grpc.Server], None],
    health_servicer: health.HealthServicer | None = None,
) -> tuple[grpc.Server, int]:
    """One service's server, bound to `address` (port 0 picks a free port) with
    health checking and reflection; returns (server, port), not started.
    Raises AuthNotConfigured without a token key (unless auth is explicitly off)."""
    authority = TokenAuthority.from_settings(settings)
    interceptors: list[grpc.ServerInterceptor] = [RpcEdgeInterceptor()]
    if authority is None:
        log.warning("authentication is OFF (REWARDS_INSECURE_NO_AUTH): every caller may call every method")
    else:
        interceptors.append(CallerAuthInterceptor(authority))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="rpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
            # Every valid request is a few KB; larger ones are RESOURCE_EXHAUSTED before any work.
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
        ],
    )
    add_to_server(servicer, server)
    health_servicer = health_servicer or health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (service.full_name, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
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


def serve_until_terminated(
    server: grpc.Server,
    health_servicer: health.HealthServicer,
    *,
    grace_s: float,
    on_ready: Callable[[], Any] = lambda: None,
) -> None:
    """Runs until SIGTERM or SIGINT, then reports NOT_SERVING (so load balancers
    stop sending), lets in-flight calls finish within `grace_s`, and returns."""
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    on_ready()
    stop_requested.wait()
    health_servicer.enter_graceful_shutdown()
    server.stop(grace_s).wait()
    log.info("stopped")


def run_service(
    service: str,
    listen: str,
    metrics_port: int,
    settings: Settings,
    create_server: Callable[..., tuple[grpc.Server, int]],
) -> None:
    """The entry point every service shares: logging, metrics, the one DynamoDB
    client, tables, then serve until SIGTERM."""
    configure_logging(service, settings.log_level)
    try:
        TokenAuthority.from_settings(settings)
    except AuthNotConfigured as refused:
        log.error("refusing to start: %s", refused)
        raise SystemExit(2) from refused
    serve_metrics(metrics_port)
    dynamodb = create_dynamodb_client(settings)
    ensure_tables(dynamodb, settings.table_prefix)
    health_servicer = health.HealthServicer()
    server, port = create_server(listen, settings, dynamodb, health_servicer)
    serve_until_terminated(
        server,
        health_servicer,
        grace_s=settings.shutdown_grace_s,
        on_ready=lambda: log.info(
            "listening", extra={"fields": {"port": port, "address": listen, "metrics_port": metrics_port}}
        ),
    )
