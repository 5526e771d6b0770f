"""The WatchEvents use case: the events of a filter, from now or from a cursor.

A watch from now subscribes to the process's hub. A watch from a cursor reads
the streams itself from there (catch-up) while subscribed to the hub, until
it has read at least as far as the hub had when it subscribed; then it goes
on with the hub's rounds, dropping records it read already (per shard, by
sequence number). Its cursor after each event is where it stands in every
shard, so a reconnect with it misses nothing and repeats nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from common.dynamodb.streams import Positions, StreamFollower, encode_cursor, is_after
from events_service.domain import Event, EventFilter, iso_to_ms
from events_service.hub import Batch, EventHub, Subscription, apply_batch_shape, batch_of


class Watch:
    def __init__(
        self,
        hub: EventHub,
        new_follower: Callable[[], StreamFollower],
        event_filter: EventFilter,
        cursor_positions: Positions | None,
        poll_s: float,
    ) -> None:
        self._hub = hub
        self._new_follower = new_follower
        self._filter = event_filter
        self._positions: Positions = dict(cursor_positions or {})
        self._from_cursor = cursor_positions is not None
        self._poll_s = poll_s
        self._done: set[str] = set()  # shards this watch read to their end
        self._subscription: Subscription | None = None
        self._follower: StreamFollower | None = None
        self._idle_since_subscribed: set[str] = set()
        # A watch from now: events that happened before it was live are not its own, even when
        # the hub reads them after (their record came a moment before the watch).
        self._not_before_ms = 0

    async def open(self) -> None:
        """Returns once the watch is live: every event from then on (or after
        the cursor) comes. CursorExpired when the cursor is past retention."""
        await self._hub.wait_live()
        if self._from_cursor:
            await self._catch_up_from(self._positions)
        else:
            self._subscription = self._hub.subscribe()
            now_ms = int(time.time() * 1000)
            self._not_before_ms = now_ms
            # Shards the hub saw nothing of yet: from now (a reconnect skips what came before the watch).
            self._positions = {
                shard: position if position.isdigit() or not position else f"@{now_ms}"
                for shard, position in self._subscription.positions.items()
            }

    def close(self) -> None:
        if self._subscription is not None:
            self._hub.unsubscribe(self._subscription)

    @property
    def cursor(self) -> str:
        return encode_cursor(self._positions)

    async def events(self) -> AsyncIterator[tuple[Event, str]]:
        """(event, cursor after it), until cancelled."""
        while True:
            if self._follower is not None:
                round_ = await self._follower.read_round()
                batch = batch_of(round_)
                for event, cursor in self._take(batch):
                    yield event, cursor
                self._idle_since_subscribed.update(round_.idle)
                if self._caught_up():
                    self._follower = None  # the hub's rounds from here on
                elif not round_.records:
                    await asyncio.sleep(self._poll_s)
                continue
            assert self._subscription is not None
            batch = await self._subscription.queue.get()
            if self._subscription.cut_off:  # fell behind the hub: read on alone from where it stands
                await self._catch_up_from(dict(self._positions))
                continue
            for event, cursor in self._take(batch):
                yield event, cursor

    async def _catch_up_from(self, positions: Positions) -> None:
        self.close()
        # A hub whose reader failed starts again from now: subscribed before that, the catch-up's
        # target would be the old reader's position, and what came between would reach no one.
        await self._hub.wait_live()
        self._subscription = self._hub.subscribe()
        self._idle_since_subscribed = set()
        follower = self._new_follower()
        self._positions = await follower.start(positions)
        self._follower = follower

    def _caught_up(self) -> bool:
        assert self._subscription is not None
        target = self._subscription.positions
        for shard in set(target) | set(self._positions):
            if shard in self._done or shard in self._idle_since_subscribed:
                continue
            wanted, have = target.get(shard, ""), self._positions.get(shard, "")
            if wanted.isdigit() and have.isdigit() and not is_after(wanted, have):
                continue
            return False
        return True

    def _take(self, batch: Batch) -> list[tuple[Event, str]]:
        """The batch's events for this watch, each with the cursor right after
        it, skipping records it has read; moves its position."""
        taken = []
        for item in batch.items:
            if item.shard in self._done:
                continue
            position = self._positions.get(item.shard, "")
            if position.isdigit() and not is_after(item.sequence, position):
                continue
            self._positions[item.shard] = item.sequence
            if (
                item.event is not None
                and self._filter.matches(item.event)
                and (not self._not_before_ms or iso_to_ms(item.event.occurred_at) >= self._not_before_ms)
            ):
                taken.append((item.event, self.cursor))
        self._done.update(batch.finished)
        apply_batch_shape(self._positions, batch)
        return taken
