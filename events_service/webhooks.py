"""Webhook use cases: the admin's (put, list, delete, failed, redeliver) and
the dispatcher's, which every replica runs.

The dispatcher's reader follows the streams for all replicas (the first one
of a stage from the oldest record they hold): whoever holds
the reader lease (a conditional write) reads, makes one delivery per event
and matching webhook (a conditional put: a replay after the lease changed
hands makes none twice), starts sending it, and then saves its position. A
replica killed anywhere in that loses nothing: the next holder replays from
the saved position, and deliveries it was sending are due again once their
own lease ends. Every replica sends due deliveries (retries, and the ones a
killed replica left), each claimed by one sender at a time."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from common.dynamodb.streams import CursorExpired, Positions, StreamFollower
from events_service.domain import (
    SIGNATURE_HEADER,
    Delivery,
    DeliveryNotStorable,
    DeliveryStore,
    Event,
    EventPoster,
    Page,
    ReaderLease,
    Webhook,
    WebhookRepository,
    check_webhook,
    iso_to_ms,
    retry_delay_s,
    signature_header,
)
from events_service.hub import apply_batch_shape, batch_of

log = logging.getLogger("rewards.webhooks")


def now_ms() -> int:
    return int(time.time() * 1000)


class WebhookAdmin:
    def __init__(self, repository: WebhookRepository, *, allow_http: bool) -> None:
        self._repository = repository
        self._allow_http = allow_http

    async def put(self, webhook: Webhook) -> Webhook:
        check_webhook(webhook, allow_http=self._allow_http)
        return await self._repository.put_webhook(replace(webhook, created_at_ms=now_ms()))

    async def list(self, page_size: int, page_token: str) -> Page:
        return await self._repository.list_webhooks(page_size, page_token)

    async def delete(self, webhook_id: str) -> None:
        await self._repository.delete_webhook(webhook_id)

    async def list_failed(self, webhook_id: str, page_size: int, page_token: str) -> Page:
        return await self._repository.list_failed(webhook_id, page_size, page_token)

    async def redeliver(self, webhook_id: str, delivery_ids: tuple[str, ...]) -> int:
        return await self._repository.redeliver(webhook_id, delivery_ids, now_ms())


@dataclass(frozen=True)
class DispatchTiming:
    poll_s: float = 0.25  # between reads of the streams with nothing new
    lease_s: float = 15.0  # the reader's lease, and a delivery's while it is sent
    timeout_s: float = 10.0  # one POST
    first_retry_s: float = 5.0  # doubling from here
    retry_window_s: float = 24 * 3600.0  # then failed
    due_poll_s: float = 1.0  # between looks for due deliveries


class WebhookDispatcher:
    def __init__(
        self,
        webhooks: WebhookRepository,
        deliveries: DeliveryStore,
        lease: ReaderLease,
        poster: EventPoster,
        new_follower: Callable[[], StreamFollower],
        encode_event: Callable[[Event], bytes],
        timing: DispatchTiming,
        max_in_flight: int = 64,
    ) -> None:
        self._webhooks = webhooks
        self._deliveries = deliveries
        self._lease = lease
        self._poster = poster
        self._new_follower = new_follower
        self._encode = encode_event
        self._timing = timing
        self._owner = uuid.uuid4().hex
        self._sending: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_in_flight)

    async def run(self) -> None:
        """The reader and the due-delivery sender, until cancelled."""
        try:
            await asyncio.gather(self._keep_running(self._read), self._keep_running(self._send_due))
        finally:
            for task in self._sending:
                task.cancel()

    async def _keep_running(self, loop: Callable[[], object]) -> None:
        while True:
            try:
                await loop()  # type: ignore[misc]
            except asyncio.CancelledError:
                raise
            except Exception as error:  # DynamoDB away for a while: try again
                log.warning("webhook dispatch failed; trying again", extra={"fields": {"error": repr(error)}})
                await asyncio.sleep(1.0)

    # --- reading the streams, for all replicas ------------------------------------------

    async def _read(self) -> None:
        lease_ms = int(self._timing.lease_s * 1000)
        follower: StreamFollower | None = None
        positions: Positions = {}
        while True:
            held, saved = await self._lease.acquire(self._owner, now_ms(), lease_ms)
            if not held:
                follower = None
                await asyncio.sleep(self._timing.lease_s / 3)
                continue
            if follower is None:
                follower = self._new_follower()
                try:
                    # The first reader of a stage reads all the streams hold: a webhook gets every event
                    # from when it was put (Webhook.wants), however soon after the service started.
                    positions = await follower.start(saved if saved is not None else {})
                except CursorExpired as expired:  # stopped for longer than the streams keep
                    log.error(
                        "webhook reader restarts from the oldest records the streams hold; events before are lost",
                        extra={"fields": {"reason": str(expired)}},
                    )
                    follower = self._new_follower()
                    positions = await follower.start({})
                if not await self._lease.save(self._owner, positions, now_ms(), lease_ms):
                    follower = None
                    continue
                log.info("reading the streams for webhooks", extra={"fields": {"owner": self._owner}})
            renew_at = time.monotonic() + self._timing.lease_s / 3
            while time.monotonic() < renew_at:
                started = time.monotonic()
                round_ = await follower.read_round()
                batch = batch_of(round_)
                events = [item.event for item in batch.items if item.event is not None]
                if events:
                    await self._make_deliveries(events, lease_ms)
                for item in batch.items:
                    positions[item.shard] = item.sequence
                apply_batch_shape(positions, batch)
                if (batch.items or batch.finished or batch.started) and not await self._lease.save(
                    self._owner, positions, now_ms(), lease_ms
                ):
                    follower = None  # another replica reads now
                    break
                if not round_.records:
                    await asyncio.sleep(max(0.0, self._timing.poll_s - (time.monotonic() - started)))

    async def _make_deliveries(self, events: list[Event], lease_ms: int) -> None:
        webhooks = await self._webhooks.all_webhooks()
        if not webhooks:
            return
        by_id = {w.webhook_id: w for w in webhooks}
        for event in events:
            occurred_ms = iso_to_ms(event.occurred_at)
            wanting = [w for w in webhooks if w.wants(event, occurred_ms)]
            if not wanting:
                continue
            body = self._encode(event)
            moment = now_ms()
            for webhook in wanting:
                delivery = Delivery(webhook.webhook_id, event.key, body, attempts=1, first_attempt_ms=moment)
                try:
                    made = await self._deliveries.create_claimed(delivery, self._owner, moment, lease_ms)
                except DeliveryNotStorable as refused:
                    log.error("webhook delivery skipped", extra={"fields": {"reason": str(refused)}})
                    continue
                if made:
                    await self._start_sending(delivery, by_id[webhook.webhook_id])

    # --- sending -------------------------------------------------------------------

    async def _send_due(self) -> None:
        lease_ms = int(self._timing.lease_s * 1000)
        while True:
            due = await self._deliveries.due(now_ms(), 25)
            if due:
                webhooks = {w.webhook_id: w for w in await self._webhooks.all_webhooks()}
                for webhook_id, event_key in due:
                    delivery = await self._deliveries.claim(webhook_id, event_key, self._owner, now_ms(), lease_ms)
                    if delivery is None:
                        continue
                    webhook = webhooks.get(webhook_id)
                    if webhook is None:
                        await self._deliveries.failed(delivery, self._owner, now_ms(), "the webhook was deleted")
                        continue
                    await self._start_sending(delivery, webhook)
            await asyncio.sleep(self._timing.due_poll_s)

    async def _start_sending(self, delivery: Delivery, webhook: Webhook) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._send(delivery, webhook))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, delivery: Delivery, webhook: Webhook) -> None:
        try:
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: signature_header(webhook.secret, int(time.time()), delivery.body),
                "Rewards-Webhook-Id": webhook.webhook_id,
                "Rewards-Delivery-Id": delivery.event_key,
            }
            error = await self._poster.post(webhook.url, delivery.body, headers, self._timing.timeout_s)
            moment = now_ms()
            if not error:
                await self._deliveries.delivered(delivery, self._owner, moment)
                return
            delay_s = retry_delay_s(delivery.attempts, self._timing.first_retry_s)
            fields = {"webhook_id": webhook.webhook_id, "delivery": delivery.event_key, "error": error}
            if moment + delay_s * 1000 - delivery.first_attempt_ms > self._timing.retry_window_s * 1000:
                log.warning("webhook delivery failed for good", extra={"fields": fields})
                await self._deliveries.failed(delivery, self._owner, moment, error)
            else:
                await self._deliveries.retry_later(delivery, self._owner, moment + int(delay_s * 1000), error)
        except Exception:  # the delivery's lease ends and another attempt comes
            log.exception("webhook delivery attempt failed", extra={"fields": {"delivery": delivery.event_key}})
        finally:
            self._slots.release()
