"""Composition root and entry point of the Events server."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
from opentelemetry.trace import Tracer

from common.config import Settings
from common.dynamodb import DynamoDBClient
from common.dynamodb.streams import DynamoDBStreamsClient, Positions, StreamFollower
from common.server_runtime import HealthServicer, build_grpc_server, run_service
from events_service.domain import SOURCE_TABLES, EventFilter, record_moment_ms
from events_service.http_delivery import AiohttpEventPoster
from events_service.hub import EventHub
from events_service.messages import event_body
from events_service.servicer import EventsServicer
from events_service.storage import DynamoDBWebhooks
from events_service.watch import Watch
from events_service.webhooks import DispatchTiming, WebhookAdmin, WebhookDispatcher
from rewards.v1 import events_pb2, events_pb2_grpc

SERVICE = events_pb2.DESCRIPTOR.services_by_name["EventsService"]


async def create_server(
    address: str,
    settings: Settings,
    dynamodb: DynamoDBClient,
    health_servicer: HealthServicer | None = None,
    *,
    tracer: Tracer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """The Events server on `address` (port 0: a free port), not started; call
    inside the event loop that will serve it. Its readers of the streams (the
    watches' hub, the webhook dispatcher) run from now until the server stops."""
    streams = DynamoDBStreamsClient(settings)
    tables = {name: settings.table_prefix + name for name in SOURCE_TABLES}

    def new_follower() -> StreamFollower:
        return StreamFollower(dynamodb, streams, tables, moment_of=record_moment_ms)

    hub = EventHub(new_follower, settings.events_poll_s)

    def new_watch(event_filter: EventFilter, positions: Positions | None) -> Watch:
        return Watch(hub, new_follower, event_filter, positions, settings.events_poll_s)

    webhooks = DynamoDBWebhooks(dynamodb, settings.table_prefix)
    poster = AiohttpEventPoster()
    dispatcher = WebhookDispatcher(
        webhooks,
        webhooks,
        webhooks,
        poster,
        new_follower,
        event_body,
        DispatchTiming(
            poll_s=settings.events_poll_s,
            lease_s=settings.webhook_lease_s,
            timeout_s=settings.webhook_timeout_s,
            first_retry_s=settings.webhook_first_retry_s,
            retry_window_s=settings.webhook_retry_window_s,
            due_poll_s=min(1.0, settings.webhook_first_retry_s),
        ),
    )
    servicer = EventsServicer(new_watch, WebhookAdmin(webhooks, allow_http=settings.webhooks_allow_http))
    server, port = await build_grpc_server(
        address,
        settings,
        SERVICE,
        servicer,
        events_pb2_grpc.add_EventsServiceServicer_to_server,
        health_servicer,
        tracer=tracer,
    )
    background = [asyncio.create_task(hub.run()), asyncio.create_task(dispatcher.run())]
    stop = server.stop

    async def stop_with_readers(grace: float | None) -> Any:
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await poster.close()
        await streams.close()
        return await stop(grace)

    server.stop = stop_with_readers  # type: ignore[method-assign]
    return server, port


def serve(settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env()
    run_service("events", settings.events_listen, settings.events_metrics_port, settings, create_server)
