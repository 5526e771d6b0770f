"""EventsService over gRPC: validate, convert, call one use case."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc

from common import field_rules
from common.caller_auth import current_caller
from common.dynamodb.streams import decode_cursor
from common.errors import InvalidField
from events_service.domain import (
    MAX_DELIVERY_ID_BYTES,
    EventFilter,
    EventType,
    Webhook,
    require_watch_allowed,
)
from events_service.messages import (
    event_from_body,
    event_to_message,
    event_type_from_message,
    webhook_to_message,
)
from events_service.watch import Watch
from events_service.webhooks import WebhookAdmin
from rewards.v1 import events_pb2, events_pb2_grpc

MAX_DELIVERY_IDS = 100


def _delivery_id(field: str, value: str, *, required: bool = True) -> str:
    """A delivery_id as ListFailedDeliveries gives it: "<user_id>/<event_id>" (an event id is up to 136
    characters) or "sha256:<hex>"; at most MAX_DELIVERY_ID_BYTES bytes, the key's limit."""
    if not value and not required:
        return value
    checked = field_rules.require_id(field, value, max_length=field_rules.MAX_ID_LENGTH + 1 + 136)
    if len(checked.encode()) > MAX_DELIVERY_ID_BYTES:
        raise InvalidField(field, f"must be at most {MAX_DELIVERY_ID_BYTES} bytes of UTF-8")
    return checked


WatchFactory = Callable[[EventFilter, dict[str, str] | None], Watch]


def _types(field: str, values: list[int]) -> frozenset[EventType]:
    return frozenset(event_type_from_message(f"{field}[{i}]", v) for i, v in enumerate(values))


class EventsServicer(events_pb2_grpc.EventsServiceServicer):
    def __init__(self, new_watch: WatchFactory, admin: WebhookAdmin) -> None:
        self._new_watch = new_watch
        self._admin = admin

    async def WatchEvents(
        self, request: events_pb2.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[events_pb2.WatchEventsResponse]:
        event_filter = EventFilter(
            field_rules.optional_id("user_id", request.user_id), _types("types", list(request.types))
        )
        caller = current_caller()
        require_watch_allowed(event_filter, caller.role if caller is not None else None)
        positions = decode_cursor(request.cursor) if request.cursor else None
        watch = self._new_watch(event_filter, positions)
        try:
            await watch.open()
            # Live: what happens from now on comes. The client sees it as the response headers.
            await context.send_initial_metadata((("x-watch-cursor", watch.cursor),))
            async for event, cursor in watch.events():
                yield events_pb2.WatchEventsResponse(event=event_to_message(event), cursor=cursor)
        finally:
            watch.close()

    async def PutWebhook(
        self, request: events_pb2.PutWebhookRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.Webhook:
        field_rules.present("webhook", request.HasField("webhook"))
        message = request.webhook
        webhook = Webhook(
            webhook_id=field_rules.require_id("webhook.webhook_id", message.webhook_id),
            url=message.url,
            types=_types("webhook.types", list(message.types)),
            secret=message.secret,
        )
        return webhook_to_message(await self._admin.put(webhook))

    async def ListWebhooks(
        self, request: events_pb2.ListWebhooksRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.ListWebhooksResponse:
        page_size = field_rules.page_size(request.page_size)
        token = field_rules.optional_id("page_token", request.page_token)
        page = await self._admin.list(page_size, token)
        return events_pb2.ListWebhooksResponse(
            webhooks=[webhook_to_message(w) for w in page.items], next_page_token=page.next_token
        )

    async def DeleteWebhook(
        self, request: events_pb2.DeleteWebhookRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.DeleteWebhookResponse:
        await self._admin.delete(field_rules.require_id("webhook_id", request.webhook_id))
        return events_pb2.DeleteWebhookResponse()

    async def ListFailedDeliveries(
        self, request: events_pb2.ListFailedDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.ListFailedDeliveriesResponse:
        webhook_id = field_rules.require_id("webhook_id", request.webhook_id)
        page_size = field_rules.page_size(request.page_size)
        token = _delivery_id("page_token", request.page_token, required=False)
        page = await self._admin.list_failed(webhook_id, page_size, token)
        response = events_pb2.ListFailedDeliveriesResponse(next_page_token=page.next_token)
        for delivery in page.items:
            item = response.deliveries.add(
                delivery_id=delivery.event_key,
                event=event_from_body(delivery.body),
                attempts=delivery.attempts,
                last_error=delivery.last_error,
            )
            if delivery.failed_at_ms:
                item.failed_at.FromMilliseconds(delivery.failed_at_ms)
        return response

    async def RedeliverEvents(
        self, request: events_pb2.RedeliverEventsRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.RedeliverEventsResponse:
        webhook_id = field_rules.require_id("webhook_id", request.webhook_id)
        if len(request.delivery_ids) > MAX_DELIVERY_IDS:
            raise InvalidField("delivery_ids", f"must hold at most {MAX_DELIVERY_IDS} ids")
        ids = tuple(_delivery_id(f"delivery_ids[{i}]", d) for i, d in enumerate(request.delivery_ids))
        return events_pb2.RedeliverEventsResponse(redelivered=await self._admin.redeliver(webhook_id, ids))
