"""One reader of the source streams per process, fanned out to every watch.

The hub follows the streams from its start on, turns each round's records
into events, orders them (each shard's records in order, merged by when they
happened) and hands every subscriber the whole round. A subscriber that lets
MAX_QUEUED_ROUNDS pile up is cut off and goes on from its own position with
a reader of its own (events_service.watch)."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from common.dynamodb.streams import Positions, Round, StreamFollower, apply_round_shape
from events_service.domain import Event, event_from_record

log = logging.getLogger("rewards.events")

MAX_QUEUED_ROUNDS = 1000


@dataclass(frozen=True)
class StreamItem:
    """A record of a shard, and the event it is (None: it is none)."""

    shard: str
    sequence: str
    event: Event | None


@dataclass(frozen=True)
class Batch:
    items: tuple[StreamItem, ...]
    finished: tuple[str, ...]
    started: tuple[tuple[str, str], ...]


def batch_of(round_: Round) -> Batch:
    """A round as events: each shard's records in their order, merged across
    shards by when they happened, so that a user's XP change comes before
    the level-up it caused when both are in one round."""
    by_shard: dict[str, list[tuple[str, int, StreamItem]]] = {}
    for index, record in enumerate(round_.records):
        event = event_from_record(record)
        when = event.occurred_at if event else ""
        by_shard.setdefault(record.shard, []).append((when, index, StreamItem(record.shard, record.sequence, event)))
    # heapq.merge keeps each shard's own order whatever the times say.
    merged = heapq.merge(*by_shard.values(), key=lambda entry: (entry[0], entry[1]))
    return Batch(tuple(entry[2] for entry in merged), tuple(round_.finished), tuple(sorted(round_.started.items())))


def apply_batch_shape(positions: Positions, batch: Batch) -> None:
    apply_round_shape(positions, Round(finished=list(batch.finished), started=dict(batch.started)))


@dataclass(eq=False)  # hashed by identity: the hub keeps a set of them
class Subscription:
    queue: asyncio.Queue[Batch] = field(default_factory=asyncio.Queue)
    # Where the hub stood when it subscribed: every later record comes through the queue.
    positions: Positions = field(default_factory=dict)
    cut_off: bool = False


FollowerFactory = Callable[[], StreamFollower]


class EventHub:
    """Reads the streams from now on (run()), once per process."""

    def __init__(self, new_follower: FollowerFactory, poll_s: float) -> None:
        self._new_follower = new_follower
        self._poll_s = poll_s
        self._positions: Positions = {}
        self._subscribers: set[Subscription] = set()
        self._live = asyncio.Event()

    async def wait_live(self) -> None:
        await self._live.wait()

    def subscribe(self) -> Subscription:
        """Every round the hub reads from now on. Call after wait_live()."""
        subscription = Subscription(positions=dict(self._positions))
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    async def run(self, on_failure: Callable[[Exception], Awaitable[None]] | None = None) -> None:
        """Follows the streams until cancelled; starts again from now after a failure."""
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # DynamoDB gone for a while: subscribers go on from their own positions
                log.warning("the event hub's reader failed; starting again", extra={"fields": {"error": repr(error)}})
                self._live.clear()
                for subscription in list(self._subscribers):
                    self._cut(subscription)
                if on_failure is not None:
                    await on_failure(error)
                await asyncio.sleep(1.0)

    async def _follow(self) -> None:
        follower = self._new_follower()
        self._positions = await follower.start(None)
        self._live.set()
        log.info("event hub live", extra={"fields": {"shards": len(self._positions)}})
        while True:
            started = time.monotonic()
            round_ = await follower.read_round()
            if round_.records or round_.finished or round_.started:
                batch = batch_of(round_)
                for item in batch.items:
                    self._positions[item.shard] = item.sequence
                apply_batch_shape(self._positions, batch)
                for subscription in list(self._subscribers):
                    if subscription.queue.qsize() >= MAX_QUEUED_ROUNDS:
                        self._cut(subscription)
                    else:
                        subscription.queue.put_nowait(batch)
            if not round_.records:
                await asyncio.sleep(max(0.0, self._poll_s - (time.monotonic() - started)))

    def _cut(self, subscription: Subscription) -> None:
        subscription.cut_off = True
        self._subscribers.discard(subscription)
        subscription.queue.put_nowait(Batch((), (), ()))  # wakes it
