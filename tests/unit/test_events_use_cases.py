"""The events service's use cases on in-memory fakes (tests/unit/events_fakes.py):
Watch with a real EventHub over a fake of the streams (from now, from a
cursor, cut off by the hub, the hub restarting), and WebhookAdmin and
WebhookDispatcher over fakes of their Protocols (sending, retries, failure,
deliveries made once per event and webhook, a replay after the reader's lease
changed hands)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import types
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from common.dynamodb.streams import Positions, StreamRecord, decode_cursor
from common.errors import InvalidField
from events_service import hub as hub_module
from events_service import watch as watch_module
from events_service import webhooks as webhooks_module
from events_service.domain import (
    Delivery,
    Event,
    EventFilter,
    EventType,
    Webhook,
    event_from_record,
)
from events_service.hub import EventHub
from events_service.messages import event_body
from events_service.watch import Watch
from events_service.webhooks import DispatchTiming, WebhookAdmin, WebhookDispatcher
from tests.unit.events_fakes import (
    PROGRESS,
    T0_MS,
    UNLOCKS,
    FakeDeliveryStore,
    FakeLease,
    FakePoster,
    FakeStream,
    FakeWebhooks,
    FollowerFactory,
    settle,
    unlock_record,
    wait_until,
    xp_record,
)

OPEN_MS = T0_MS + 60_000  # when a watch from now opens


def at(seconds: float) -> int:
    """A moment `seconds` after the watch opened (before it when negative)."""
    return OPEN_MS + int(seconds * 1000)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


# --- Watch -------------------------------------------------------------------------------------


class Cluster:
    """A stream of two shards (progress, unlocks), a hub reading it with a
    gated follower (tick() lets it read one round), and watches on that hub."""

    def __init__(self) -> None:
        self.stream = FakeStream([PROGRESS, UNLOCKS], now_ms=T0_MS)
        self.hub_followers = FollowerFactory(self.stream, gated=True)
        self.hub = EventHub(self.hub_followers, poll_s=0.0)
        self.tasks: list[asyncio.Task[Any]] = []

    async def start(self, on_failure: Callable[[Exception], Awaitable[None]] | None = None) -> None:
        self.tasks.append(asyncio.create_task(self.hub.run(on_failure)))
        await asyncio.wait_for(self.hub.wait_live(), 1.0)

    async def tick(self) -> None:
        """The hub reads one round (what the stream holds now), and every task reacts."""
        self.hub_followers.made[-1].tick()
        await settle()

    def watch(self, event_filter: EventFilter, cursor: Positions | None, *, per_shard: int = 1000) -> Watch:
        self.watch_followers = FollowerFactory(self.stream, per_shard=per_shard)
        return Watch(self.hub, self.watch_followers, event_filter, cursor, poll_s=0.0)

    def collect(self, watch: Watch) -> Collector:
        collector = Collector(watch)
        self.tasks.append(collector.task)
        return collector

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Collector:
    """Consumes a watch's events: (event id, the positions its cursor holds).
    pause() makes it stop after the next event it takes (it is then slow)."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.got: list[tuple[str, Positions]] = []
        self.running = asyncio.Event()
        self.running.set()
        self.task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        try:
            async for event, cursor in self.watch.events():
                self.got.append((event.event_id, decode_cursor(cursor)))
                await self.running.wait()
        finally:
            self.watch.close()

    def ids(self) -> list[str]:
        return [event_id for event_id, _ in self.got]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch module's clock stands at OPEN_MS."""
    monkeypatch.setattr(watch_module, "time", types.SimpleNamespace(time=lambda: OPEN_MS / 1000))


def expected_cursors(start: Positions, taken: list[tuple[str, str, str]]) -> list[tuple[str, Positions]]:
    """(event id, positions after it) for records taken in order, (event id, shard, sequence) each."""
    positions, out = dict(start), []
    for event_id, shard, sequence in taken:
        positions[shard] = sequence
        out.append((event_id, dict(positions)))
    return out


@pytest.mark.usefixtures("clock")
def test_a_watch_from_now_gets_the_events_the_hub_reads_after_it_opened() -> None:
    async def test() -> None:
        cluster = Cluster()
        await cluster.start()
        assert cluster.hub_followers.made[0].started_from == [None]
        cluster.stream.append(xp_record("100", at_ms=at(-30)))
        await cluster.tick()  # read before the watch: not its own

        watch = cluster.watch(EventFilter(user_id="u1"), None)
        await watch.open()
        assert decode_cursor(watch.cursor) == {PROGRESS: "100", UNLOCKS: f"@{OPEN_MS}"}
        collector = cluster.collect(watch)
        cluster.stream.append(
            xp_record("101", at_ms=at(-2)),  # happened a moment before the watch, read after: not its own
            xp_record("102", at_ms=at(1)),
            unlock_record("7", at_ms=at(2)),
            xp_record("103", at_ms=at(3), user_id="u2"),  # another user's
        )
        await cluster.tick()

        assert collector.got == [
            ("req#102", {PROGRESS: "102", UNLOCKS: f"@{OPEN_MS}"}),
            ("unlock#first-win", {PROGRESS: "102", UNLOCKS: "7"}),
        ]
        # Records it skips still move it: a reconnect with its cursor starts after them.
        assert decode_cursor(watch.cursor) == {PROGRESS: "103", UNLOCKS: "7"}
        assert cluster.watch_followers.made == []  # the hub's rounds only
        await cluster.stop()

    run(test)


@pytest.mark.usefixtures("clock")
def test_a_watch_from_now_takes_the_types_it_asked_for() -> None:
    async def test() -> None:
        cluster = Cluster()
        await cluster.start()
        watch = cluster.watch(EventFilter(types=frozenset({EventType.ACHIEVEMENT_UNLOCKED})), None)
        await watch.open()
        collector = cluster.collect(watch)
        cluster.stream.append(
            xp_record("1", at_ms=at(1)),
            unlock_record("2", at_ms=at(2), user_id="u2", achievement_id="wins-1"),
            unlock_record("3", at_ms=at(3), user_id="u1", achievement_id="first-win"),
        )
        await cluster.tick()

        assert collector.got == [
            ("unlock#wins-1", {PROGRESS: "1", UNLOCKS: "2"}),
            ("unlock#first-win", {PROGRESS: "1", UNLOCKS: "3"}),
        ]
        await cluster.stop()

    run(test)


@pytest.mark.parametrize(
    ("per_shard", "order", "rounds"),
    [
        # The hub stood at 11 and unlock 5 when the watch subscribed. The watch's own follower reads
        # at most `per_shard` records of a shard a round, joins the hub once it has read that far,
        # and then takes from the hub's round [12, unlock 6, 13] only what it did not read yet.
        pytest.param(1, ["10", "a5", "11", "a6", "12", "13", "14"], 2, id="one record a round"),
        pytest.param(2, ["10", "a5", "11", "a6", "12", "13", "14"], 1, id="two records a round"),
        pytest.param(3, ["10", "a5", "11", "12", "a6", "13", "14"], 1, id="overlapping the hub's round"),
        pytest.param(1000, ["10", "a5", "11", "12", "a6", "13", "14"], 1, id="overlapping the hub's whole round"),
    ],
)
def test_a_watch_from_a_cursor_catches_up_then_joins_the_hub_missing_and_repeating_nothing(
    per_shard: int, order: list[str], rounds: int
) -> None:
    async def test() -> None:
        cluster = Cluster()
        cluster.stream.append(xp_record("8", at_ms=T0_MS - 2000), xp_record("9", at_ms=T0_MS - 1000))
        await cluster.start()  # from now: after 9
        cluster.stream.append(
            xp_record("10", at_ms=T0_MS + 10_000),
            unlock_record("5", at_ms=T0_MS + 10_500, achievement_id="a5"),
            xp_record("11", at_ms=T0_MS + 11_000),
        )
        await cluster.tick()  # the hub stands at 11 and 5

        cursor = {PROGRESS: "9", UNLOCKS: ""}
        watch = cluster.watch(EventFilter(), cursor, per_shard=per_shard)
        await watch.open()
        [own] = cluster.watch_followers.made
        assert own.started_from == [cursor]
        cluster.stream.append(
            xp_record("12", at_ms=T0_MS + 12_000),
            unlock_record("6", at_ms=T0_MS + 12_500, achievement_id="a6"),
            xp_record("13", at_ms=T0_MS + 13_000),
        )
        await cluster.tick()  # queued for the watch, which has not read anything yet
        collector = cluster.collect(watch)
        await settle()
        cluster.stream.append(xp_record("14", at_ms=T0_MS + 14_000))
        await cluster.tick()

        records = {s: (f"req#{s}", PROGRESS, s) for s in ("10", "11", "12", "13", "14")}
        records |= {"a5": ("unlock#a5", UNLOCKS, "5"), "a6": ("unlock#a6", UNLOCKS, "6")}
        assert collector.got == expected_cursors(cursor, [records[r] for r in order])
        # It read alone only until it stood where the hub stood when it subscribed.
        assert own.rounds_read == rounds
        assert cluster.watch_followers.made == [own]
        await cluster.stop()

    run(test)


def test_a_watch_from_a_cursor_past_the_hub_joins_it_at_once() -> None:
    async def test() -> None:
        cluster = Cluster()
        await cluster.start()
        cluster.stream.append(xp_record("1", at_ms=T0_MS + 1000), xp_record("2", at_ms=T0_MS + 2000))
        await cluster.tick()

        watch = cluster.watch(EventFilter(), {PROGRESS: "2", UNLOCKS: ""})
        await watch.open()
        collector = cluster.collect(watch)
        await settle()
        cluster.stream.append(xp_record("3", at_ms=T0_MS + 3000))
        await cluster.tick()

        assert collector.got == [("req#3", {PROGRESS: "3", UNLOCKS: ""})]
        assert cluster.watch_followers.made[0].rounds_read == 1
        await cluster.stop()

    run(test)


@pytest.mark.usefixtures("clock")
def test_a_watch_the_hub_cuts_off_goes_on_from_its_own_position_and_misses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_module, "MAX_QUEUED_ROUNDS", 2)

    async def test() -> None:
        cluster = Cluster()
        await cluster.start()
        watch = cluster.watch(EventFilter(), None)
        await watch.open()
        collector = cluster.collect(watch)
        collector.running.clear()  # slow: stops after its next event
        cluster.stream.append(xp_record("101", at_ms=at(1)))
        await cluster.tick()
        assert collector.ids() == ["req#101"]
        for sequence in ("102", "103", "104", "105"):  # rounds 102 and 103 queue up; 104 cuts it off
            cluster.stream.append(xp_record(sequence, at_ms=at(int(sequence) - 100)))
            await cluster.tick()
        assert collector.ids() == ["req#101"]

        collector.running.set()
        await settle()
        cluster.stream.append(xp_record("106", at_ms=at(6)))
        await cluster.tick()

        assert collector.got == expected_cursors(
            {PROGRESS: f"@{OPEN_MS}", UNLOCKS: f"@{OPEN_MS}"},
            [(f"req#{s}", PROGRESS, s) for s in ("101", "102", "103", "104", "105", "106")],
        )
        # It read 102 to 105 alone, from where it stood, then joined the hub again.
        [own] = cluster.watch_followers.made
        assert own.started_from == [{PROGRESS: "101", UNLOCKS: f"@{OPEN_MS}"}]
        assert own.rounds_read == 1
        await cluster.stop()

    run(test)


@pytest.mark.usefixtures("clock")
def test_a_watch_cut_off_before_it_took_anything_goes_on_from_its_opening(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "MAX_QUEUED_ROUNDS", 1)

    async def test() -> None:
        cluster = Cluster()
        await cluster.start()
        watch = cluster.watch(EventFilter(), None)
        await watch.open()
        cluster.stream.append(xp_record("1", at_ms=at(-1)), xp_record("2", at_ms=at(1)))
        await cluster.tick()
        cluster.stream.append(xp_record("3", at_ms=at(2)))
        await cluster.tick()  # cut off
        collector = cluster.collect(watch)
        await settle()

        # The record from before the watch opened stays out, read alone or from the hub.
        assert collector.ids() == ["req#2", "req#3"]
        assert cluster.watch_followers.made[0].started_from == [{PROGRESS: f"@{OPEN_MS}", UNLOCKS: f"@{OPEN_MS}"}]
        await cluster.stop()

    run(test)


@pytest.mark.usefixtures("clock")
def test_a_watch_misses_nothing_when_the_hubs_reader_fails_and_starts_again() -> None:
    async def test() -> None:
        cluster = Cluster()

        async def while_the_hub_is_down(error: Exception) -> None:
            await settle()  # the watch has gone on alone from where it stood
            cluster.stream.append(xp_record("102", at_ms=at(2)))

        await cluster.start(while_the_hub_is_down)
        watch = cluster.watch(EventFilter(), None)
        await watch.open()
        collector = cluster.collect(watch)
        cluster.stream.append(xp_record("101", at_ms=at(1)))
        await cluster.tick()
        cluster.hub_followers.made[0].fail_next = True
        await cluster.tick()
        await wait_until(lambda: len(cluster.hub_followers.made) == 2)  # the hub waits 1 s, then reads from now
        await asyncio.wait_for(cluster.hub.wait_live(), 1.0)
        await settle()
        cluster.stream.append(xp_record("103", at_ms=at(3)))
        await cluster.tick()

        try:
            assert collector.ids() == ["req#101", "req#102", "req#103"]
        finally:
            await cluster.stop()

    run(test)


# --- WebhookAdmin --------------------------------------------------------------------------------

NOW_MS = T0_MS + 3_600_000
SECRET = "whsec-0123456789abcdef"


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The webhooks module's clocks: now_ms() is NOW_MS, time.time() a moment within its second."""
    monkeypatch.setattr(webhooks_module, "now_ms", lambda: NOW_MS)
    monkeypatch.setattr(
        webhooks_module, "time", types.SimpleNamespace(time=lambda: NOW_MS / 1000 + 0.75, monotonic=lambda: 0.0)
    )


def hook(webhook_id: str = "wh-1", types_: frozenset[EventType] = frozenset(), created_at_ms: int = 0) -> Webhook:
    return Webhook(webhook_id, f"https://hooks.example.com/{webhook_id}", types_, SECRET, created_at_ms)


@pytest.mark.usefixtures("frozen")
def test_a_new_webhook_is_stored_with_its_creation_time() -> None:
    repository = FakeWebhooks()
    admin = WebhookAdmin(repository, allow_http=False)

    stored = asyncio.run(admin.put(hook(created_at_ms=5)))

    assert stored == hook(created_at_ms=NOW_MS)
    assert repository.webhooks == {"wh-1": hook(created_at_ms=NOW_MS)}


@pytest.mark.usefixtures("frozen")
def test_a_webhook_breaking_a_rule_is_refused_and_not_stored() -> None:
    repository = FakeWebhooks()
    admin = WebhookAdmin(repository, allow_http=False)

    with pytest.raises(InvalidField) as refused:
        asyncio.run(admin.put(Webhook("wh-1", "http://localhost/x", frozenset(), SECRET)))

    assert refused.value.field == "webhook.url"
    assert repository.webhooks == {}
    assert (
        asyncio.run(
            WebhookAdmin(repository, allow_http=True).put(Webhook("wh-1", "http://localhost/x", frozenset(), SECRET))
        ).url
        == "http://localhost/x"
    )


# --- WebhookDispatcher: sending ------------------------------------------------------------------

TIMING = DispatchTiming(poll_s=0.001, lease_s=15.0, timeout_s=7.0, first_retry_s=5.0, retry_window_s=3600.0)
_EVENT = event_from_record(xp_record("1", at_ms=NOW_MS - 500, entry_id="req#r1", request_id="r1"))
assert _EVENT is not None
EVENT: Event = _EVENT


def dispatcher(
    webhooks: FakeWebhooks,
    deliveries: FakeDeliveryStore,
    poster: FakePoster,
    *,
    lease: FakeLease | None = None,
    followers: FollowerFactory | None = None,
    timing: DispatchTiming = TIMING,
) -> WebhookDispatcher:
    return WebhookDispatcher(
        webhooks,
        deliveries,
        lease or FakeLease(),
        poster,
        followers or FollowerFactory(FakeStream([PROGRESS, UNLOCKS])),
        event_body,
        timing,
    )


def claimed(
    sender: WebhookDispatcher, deliveries: FakeDeliveryStore, *, attempts: int, first_attempt_ms: int
) -> Delivery:
    """A delivery of EVENT to wh-1 that `sender` holds, on its `attempts`-th attempt."""
    delivery = Delivery("wh-1", EVENT.key, event_body(EVENT), attempts, first_attempt_ms)
    deliveries.seed(delivery, due_ms=NOW_MS, owner=sender._owner, lease_until_ms=NOW_MS + 15_000)
    return delivery


@pytest.mark.usefixtures("frozen")
def test_a_2xx_answer_marks_the_delivery_delivered_and_the_post_is_signed() -> None:
    deliveries, poster = FakeDeliveryStore(), FakePoster(answers=[""])
    sender = dispatcher(FakeWebhooks(hook()), deliveries, poster)
    delivery = claimed(sender, deliveries, attempts=1, first_attempt_ms=NOW_MS)

    asyncio.run(sender._send(delivery, hook()))

    body = event_body(EVENT)
    t = NOW_MS // 1000
    signature = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert poster.posts == [
        (
            "https://hooks.example.com/wh-1",
            body,
            {
                "Content-Type": "application/json",
                "Rewards-Signature": f"t={t},v1={signature}",
                "Rewards-Webhook-Id": "wh-1",
                "Rewards-Delivery-Id": "u1/req#r1",
            },
            7.0,
        )
    ]
    stored = deliveries.get("wh-1", "u1/req#r1")
    assert (stored.pending, stored.delivered_at_ms, stored.lease_until_ms, stored.failed_at_ms) == (False, NOW_MS, 0, 0)
    assert deliveries.finished == [("delivered", "wh-1", "u1/req#r1")]


@pytest.mark.parametrize(
    ("attempts", "low_s", "high_s"), [(1, 2.5, 5.0), (2, 5.0, 10.0), (4, 20.0, 40.0), (12, 1800.0, 3600.0)]
)
@pytest.mark.usefixtures("frozen")
def test_an_error_answer_within_the_window_is_retried_later_after_a_backoff(
    attempts: int, low_s: float, high_s: float
) -> None:
    timing = DispatchTiming(first_retry_s=5.0, retry_window_s=24 * 3600.0)
    for _ in range(20):  # the delay is drawn each time
        deliveries, poster = FakeDeliveryStore(), FakePoster(answers=["HTTP 503"])
        sender = dispatcher(FakeWebhooks(hook()), deliveries, poster, timing=timing)
        delivery = claimed(sender, deliveries, attempts=attempts, first_attempt_ms=NOW_MS - 60_000)

        asyncio.run(sender._send(delivery, hook()))

        stored = deliveries.get("wh-1", "u1/req#r1")
        assert NOW_MS + low_s * 1000 <= stored.due_ms <= NOW_MS + high_s * 1000
        assert (stored.pending, stored.last_error, stored.lease_until_ms, stored.failed_at_ms) == (
            True,
            "HTTP 503",
            0,
            0,
        )
        assert deliveries.finished == [("retry_later", "wh-1", "u1/req#r1")]


@pytest.mark.parametrize(
    ("delay_end", "first_attempt_ms", "outcome"),
    [
        # retry_window_s is an hour; the first retry comes 2.5 to 5 s later.
        pytest.param("high", NOW_MS - 3_595_000, "retry_later", id="the longest delay ends right at the window"),
        pytest.param("high", NOW_MS - 3_595_001, "failed", id="the longest delay ends 1 ms past the window"),
        pytest.param("low", NOW_MS - 3_597_500, "retry_later", id="the shortest delay ends right at the window"),
        pytest.param("low", NOW_MS - 3_597_501, "failed", id="the shortest delay ends 1 ms past the window"),
    ],
)
@pytest.mark.usefixtures("frozen")
def test_an_error_whose_next_attempt_would_come_past_the_retry_window_fails_the_delivery(
    monkeypatch: pytest.MonkeyPatch, delay_end: str, first_attempt_ms: int, outcome: str
) -> None:
    from events_service import domain

    monkeypatch.setattr(
        domain, "random", types.SimpleNamespace(uniform=lambda low, high: low if delay_end == "low" else high)
    )
    deliveries, poster = FakeDeliveryStore(), FakePoster(answers=["timeout (7 s)"])
    sender = dispatcher(FakeWebhooks(hook()), deliveries, poster)
    delivery = claimed(sender, deliveries, attempts=1, first_attempt_ms=first_attempt_ms)

    asyncio.run(sender._send(delivery, hook()))

    stored = deliveries.get("wh-1", "u1/req#r1")
    assert deliveries.finished == [(outcome, "wh-1", "u1/req#r1")]
    if outcome == "failed":
        assert (stored.pending, stored.failed_at_ms, stored.last_error, stored.due_ms) == (
            False,
            NOW_MS,
            "timeout (7 s)",
            NOW_MS,
        )
    else:
        delay_ms = 5000 if delay_end == "high" else 2500
        assert (stored.pending, stored.due_ms, stored.last_error) == (True, NOW_MS + delay_ms, "timeout (7 s)")


@pytest.mark.usefixtures("frozen")
def test_a_sender_whose_lease_ran_out_changes_nothing() -> None:
    deliveries, poster = FakeDeliveryStore(), FakePoster(answers=[""])
    sender = dispatcher(FakeWebhooks(hook()), deliveries, poster)
    delivery = claimed(sender, deliveries, attempts=1, first_attempt_ms=NOW_MS)
    deliveries.get("wh-1", "u1/req#r1").owner = "another replica"

    asyncio.run(sender._send(delivery, hook()))

    assert len(poster.posts) == 1
    assert deliveries.finished == []
    assert deliveries.get("wh-1", "u1/req#r1").pending is True


def test_due_deliveries_are_sent_and_a_deleted_webhooks_fail_without_a_post() -> None:
    async def test() -> None:
        deliveries, poster = FakeDeliveryStore(), FakePoster(answers=[""])
        sender = dispatcher(FakeWebhooks(hook("wh-1")), deliveries, poster, timing=TIMING)
        now = webhooks_module.now_ms()
        kept = Delivery("wh-1", "u1/req#r1", b'{"a":1}', attempts=1, first_attempt_ms=now - 10_000)
        gone = Delivery("wh-gone", "u1/req#r1", b'{"a":1}', attempts=1, first_attempt_ms=now - 10_000)
        later = Delivery("wh-1", "u1/req#r2", b'{"a":2}', attempts=1, first_attempt_ms=now - 10_000)
        deliveries.seed(kept, due_ms=now - 1)
        deliveries.seed(gone, due_ms=now - 1)
        deliveries.seed(later, due_ms=now + 3_600_000)  # not due yet
        task = asyncio.create_task(sender._send_due())
        await wait_until(lambda: len(deliveries.finished) == 2)
        await settle()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

        assert sorted(deliveries.finished) == [("delivered", "wh-1", "u1/req#r1"), ("failed", "wh-gone", "u1/req#r1")]
        stored = deliveries.get("wh-gone", "u1/req#r1")
        assert (stored.pending, stored.last_error, stored.delivery.attempts) == (False, "the webhook was deleted", 2)
        assert [(url, body) for url, body, _, _ in poster.posts] == [("https://hooks.example.com/wh-1", b'{"a":1}')]
        assert deliveries.get("wh-1", "u1/req#r1").delivery.attempts == 2  # the claim counted this attempt
        assert deliveries.get("wh-1", "u1/req#r2").pending is True

    run(test)


# --- WebhookDispatcher: making deliveries ----------------------------------------------------------


def events_around(created_ms: int) -> list[Event]:
    records: list[StreamRecord] = [
        xp_record("1", at_ms=created_ms - 1000, entry_id="req#early"),  # before wh-new existed
        unlock_record("2", at_ms=created_ms, achievement_id="first-win"),
        xp_record("3", at_ms=created_ms + 1000, entry_id="req#late", user_id="u2"),
        unlock_record("4", at_ms=created_ms + 2000, achievement_id="wins-1", user_id="u2"),
    ]
    return [e for e in map(event_from_record, records) if e is not None]


WEBHOOKS = (
    hook("wh-xp", frozenset({EventType.XP_AWARDED})),
    hook("wh-new", created_at_ms=NOW_MS - 10_000),
    hook("wh-levels", frozenset({EventType.LEVEL_UP})),
)
EXPECTED = [
    ("wh-xp", "u1/req#early"),
    ("wh-new", "u1/unlock#first-win"),
    ("wh-new", "u2/req#late"),  # webhooks in id order
    ("wh-xp", "u2/req#late"),
    ("wh-new", "u2/unlock#wins-1"),
]


@pytest.mark.usefixtures("frozen")
def test_the_reader_makes_one_delivery_per_event_and_webhook_that_wants_it_and_sends_it() -> None:
    async def test() -> None:
        deliveries, poster = FakeDeliveryStore(), FakePoster()
        reader = dispatcher(FakeWebhooks(*WEBHOOKS), deliveries, poster)
        events = events_around(NOW_MS - 10_000)

        await reader._make_deliveries(events, 15_000)
        await asyncio.gather(*reader._sending)

        assert [(w, k) for _, w, k, _ in deliveries.created] == EXPECTED
        bodies = {e.key: event_body(e) for e in events}
        assert [
            (url.rsplit("/", 1)[1], headers["Rewards-Delivery-Id"], body) for url, body, headers, _ in poster.posts
        ] == [(w, k, bodies[k]) for w, k in EXPECTED]
        assert {
            key: (s.delivery.attempts, s.delivery.first_attempt_ms, s.owner, s.delivered_at_ms)
            for key, s in deliveries.items.items()
        } == {key: (1, NOW_MS, reader._owner, NOW_MS) for key in EXPECTED}

    run(test)


@pytest.mark.usefixtures("frozen")
def test_a_replay_of_the_same_events_by_the_next_reader_makes_no_delivery_twice() -> None:
    async def test() -> None:
        deliveries, poster = FakeDeliveryStore(), FakePoster(default="HTTP 500")
        webhooks = FakeWebhooks(*WEBHOOKS)
        events = events_around(NOW_MS - 10_000)
        first = dispatcher(webhooks, deliveries, poster)
        await first._make_deliveries(events, 15_000)
        await asyncio.gather(*first._sending)
        before = {key: (s.owner, s.delivery, s.due_ms, s.last_error) for key, s in deliveries.items.items()}

        second = dispatcher(webhooks, deliveries, poster)
        await second._make_deliveries(events, 15_000)
        await asyncio.gather(*second._sending)

        assert [(o, w, k, made) for o, w, k, made in deliveries.created if o == second._owner] == [
            (second._owner, w, k, False) for w, k in EXPECTED
        ]
        assert len(poster.posts) == len(EXPECTED)
        assert {key: (s.owner, s.delivery, s.due_ms, s.last_error) for key, s in deliveries.items.items()} == before

    run(test)


def test_no_webhook_no_delivery() -> None:
    deliveries, poster = FakeDeliveryStore(), FakePoster()
    reader = dispatcher(FakeWebhooks(), deliveries, poster)

    asyncio.run(reader._make_deliveries(events_around(T0_MS), 15_000))

    assert (deliveries.created, poster.posts) == ([], [])


def test_the_reader_saves_its_position_after_its_deliveries_and_the_next_holder_replays_none_twice() -> None:
    async def test() -> None:
        stream = FakeStream([PROGRESS, UNLOCKS])
        start = {PROGRESS: "", UNLOCKS: ""}
        lease = FakeLease(positions=dict(start))
        deliveries, poster = FakeDeliveryStore(), FakePoster()
        webhooks = FakeWebhooks(hook("wh-1"))
        moment = webhooks_module.now_ms()
        stream.append(
            xp_record("1", at_ms=moment, entry_id="req#a"),
            unlock_record("2", at_ms=moment + 1, achievement_id="first-win"),
        )
        first = dispatcher(webhooks, deliveries, poster, lease=lease, followers=FollowerFactory(stream))
        reading = asyncio.create_task(first._read())
        await wait_until(lambda: lease.positions == {PROGRESS: "1", UNLOCKS: "2"} and len(poster.posts) == 2)
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        assert lease.saves[0] == (first._owner, start)
        assert lease.saves[1] == (first._owner, {PROGRESS: "1", UNLOCKS: "2"})
        assert sorted(k for _, k in deliveries.items) == ["u1/req#a", "u1/unlock#first-win"]

        # The first reader dies before its save lands: the next holder replays from the older position.
        lease.positions, lease.lease_until_ms = dict(start), 0
        followers = FollowerFactory(stream)
        second = dispatcher(webhooks, deliveries, poster, lease=lease, followers=followers)
        reading = asyncio.create_task(second._read())
        await wait_until(lambda: lease.holder == second._owner and lease.positions == {PROGRESS: "1", UNLOCKS: "2"})
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading

        assert followers.made[0].started_from == [start]
        assert [(o == second._owner, k, made) for o, _, k, made in deliveries.created] == [
            (False, "u1/req#a", True),
            (False, "u1/unlock#first-win", True),
            (True, "u1/req#a", False),
            (True, "u1/unlock#first-win", False),
        ]
        assert len(poster.posts) == 2

    run(test)


def test_a_reader_that_does_not_hold_the_lease_reads_nothing() -> None:
    async def test() -> None:
        stream = FakeStream([PROGRESS, UNLOCKS])
        stream.append(xp_record("1", at_ms=T0_MS))
        lease = FakeLease(holder="another replica", lease_until_ms=webhooks_module.now_ms() + 60_000, positions={})
        followers = FollowerFactory(stream)
        reader = dispatcher(FakeWebhooks(hook()), FakeDeliveryStore(), FakePoster(), lease=lease, followers=followers)
        reading = asyncio.create_task(reader._read())
        await asyncio.sleep(0.05)
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading

        assert (followers.made, lease.holder, lease.saves) == ([], "another replica", [])

    run(test)


def test_the_first_reader_of_a_stage_delivers_what_came_before_it_started_to_a_webhook_put_before() -> None:
    async def test() -> None:
        stream = FakeStream([PROGRESS, UNLOCKS])
        moment = webhooks_module.now_ms()
        webhooks = FakeWebhooks(hook("wh-1", created_at_ms=moment - 5_000))
        stream.append(
            xp_record("1", at_ms=moment - 10_000, entry_id="req#before-the-webhook"),
            xp_record("2", at_ms=moment - 1_000, entry_id="req#before-the-reader"),
        )
        lease = FakeLease()  # no saved position: a new stage
        deliveries, poster = FakeDeliveryStore(), FakePoster()
        followers = FollowerFactory(stream)
        reader = dispatcher(webhooks, deliveries, poster, lease=lease, followers=followers)
        reading = asyncio.create_task(reader._read())
        await wait_until(lambda: len(poster.posts) == 1 and lease.positions == {PROGRESS: "2", UNLOCKS: ""})
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading

        assert followers.made[0].started_from == [{}]  # every record the streams hold
        assert [k for _, k in deliveries.items] == ["u1/req#before-the-reader"]

    run(test)
