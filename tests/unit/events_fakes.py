"""In-memory fakes for the events service's unit tests: stream records built
by hand (images as boto3's TypeDeserializer gives them: Decimal numbers), a
fake of the streams that StreamFollower reads (FakeStream, FakeFollower), and
the webhook Protocols (WebhookRepository, DeliveryStore, ReaderLease,
EventPoster) kept to the contracts of events_service/storage.py and
events_service/http_delivery.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from common.dynamodb.streams import Positions, Round, StreamFollower, StreamRecord
from common.models import ACTIVITY, iso_utc
from events_service.domain import Delivery, Page, Webhook, WebhookNotFound, record_moment_ms

T0_MS = 1_714_564_800_000  # 2024-05-01T12:00:00Z
PROGRESS = "user_progress/shard-p"
UNLOCKS = "user_achievements/shard-a"
LEVELS = "level_rewards/shard-l"


def iso(moment_ms: int) -> str:
    """An instant as the tables keep it (common.models.iso_utc)."""
    return iso_utc(datetime.fromtimestamp(moment_ms / 1000, UTC))


def xp_record(
    sequence: str,
    *,
    at_ms: int,
    user_id: str = "u1",
    entry_id: str = "",
    kind: str = ACTIVITY,
    xp: int = 10,
    total_xp: int = 100,
    previous_entry_id: str | None = "req#before",
    shard: str = PROGRESS,
    event_name: str = "MODIFY",
    **change: Any,
) -> StreamRecord:
    """A user_progress record whose last_change is a new entry (`entry_id`,
    by default "req#<sequence>"); the old image's last_change is
    `previous_entry_id` (None: no old image, as an INSERT)."""
    last_change: dict[str, Any] = {
        "entry_id": entry_id or f"req#{sequence}",
        "kind": kind,
        "xp": Decimal(xp),
        "recorded_at": iso(at_ms),
        **change,
    }
    new_image = {"user_id": user_id, "total_xp": Decimal(total_xp), "level": Decimal(1), "last_change": last_change}
    old_image = None
    if previous_entry_id is not None:
        old_image = {
            "user_id": user_id,
            "total_xp": Decimal(total_xp - xp),
            "level": Decimal(1),
            "last_change": {"entry_id": previous_entry_id, "kind": ACTIVITY, "xp": Decimal(5)},
        }
    return StreamRecord(
        "user_progress", shard, sequence, event_name, new_image, old_image, approximate_ms=at_ms // 1000 * 1000
    )


def unlock_record(
    sequence: str,
    *,
    at_ms: int,
    user_id: str = "u1",
    achievement_id: str = "first-win",
    xp_reward: int = 25,
    shard: str = UNLOCKS,
    event_name: str = "INSERT",
) -> StreamRecord:
    image = {
        "user_id": user_id,
        "achievement_id": achievement_id,
        "xp_reward": Decimal(xp_reward),
        "unlocked_at": iso(at_ms),
    }
    old = None if event_name == "INSERT" else dict(image)
    return StreamRecord("user_achievements", shard, sequence, event_name, image, old, at_ms // 1000 * 1000)


def level_record(
    sequence: str,
    *,
    at_ms: int,
    user_id: str = "u1",
    level: int = 3,
    from_level: int = 1,
    rewards: Iterable[tuple[str, int]] = (("coins", 10),),
    shard: str = LEVELS,
    event_name: str = "INSERT",
) -> StreamRecord:
    image = {
        "user_id": user_id,
        "level": Decimal(level),
        "from_level": Decimal(from_level),
        "rewards": [{"reward_id": r, "quantity": Decimal(q)} for r, q in rewards],
        "check_id": "req#r1",
        "granted_at": iso(at_ms),
    }
    if event_name == "REMOVE":
        return StreamRecord("level_rewards", shard, sequence, event_name, {}, image, at_ms // 1000 * 1000)
    return StreamRecord("level_rewards", shard, sequence, event_name, image, None, at_ms // 1000 * 1000)


# --- the streams ----------------------------------------------------------------------------


class FakeStream:
    """The source tables' streams: per shard, its records in order (sequence
    numbers as digits, increasing). `now_ms` is where a follower from now starts."""

    def __init__(self, shards: Iterable[str], now_ms: int = T0_MS) -> None:
        self.records: dict[str, list[StreamRecord]] = {shard: [] for shard in shards}
        self.now_ms = now_ms

    def append(self, *records: StreamRecord) -> None:
        for record in records:
            self.records[record.shard].append(record)


class FakeFollower:
    """StreamFollower's contract over a FakeStream, without shard splits:
    start(None) reads from now (records appended later), start(positions)
    after each shard's position ("digits": after that record, "": from the
    first, "@ms": from the first whose record_moment_ms is from then on, as
    the server's followers). read_round() gives each shard's next records
    (at most `per_shard` of each) and, as idle, the shards with nothing new.
    A gated follower waits for a tick before each round; `fail_next` makes
    the next round raise."""

    def __init__(self, stream: FakeStream, *, gated: bool = False, per_shard: int = 1000) -> None:
        self._stream = stream
        self._per_shard = per_shard
        self._next: dict[str, int] = {}
        self._since: dict[str, int] = {}
        self.gate: asyncio.Queue[None] | None = asyncio.Queue() if gated else None
        self.started_from: list[Positions | None] = []
        self.rounds_read = 0
        self.fail_next = False

    async def start(self, positions: Positions | None) -> Positions:
        self.started_from.append(None if positions is None else dict(positions))
        start: Positions = {}
        for shard, records in self._stream.records.items():
            if positions is None:
                self._next[shard] = len(records)
                start[shard] = f"@{self._stream.now_ms}"
                continue
            position = positions.get(shard, "")
            if position.isdigit():
                self._next[shard] = sum(1 for r in records if int(r.sequence) <= int(position))
            else:
                self._next[shard] = 0
                if position.startswith("@"):
                    self._since[shard] = int(position[1:])
            start[shard] = position
        return start

    async def read_round(self) -> Round:
        if self.gate is not None:
            await self.gate.get()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the streams are away")
        self.rounds_read += 1
        round_ = Round()
        for shard, records in self._stream.records.items():
            new = records[self._next[shard] : self._next[shard] + self._per_shard]
            self._next[shard] += len(new)
            if not new:
                round_.idle.append(shard)
            since = self._since.get(shard, 0)
            round_.records.extend(r for r in new if record_moment_ms(r) >= since)
        return round_

    def tick(self) -> None:
        assert self.gate is not None
        self.gate.put_nowait(None)


class FollowerFactory:
    """new_follower for a hub, a watch or a dispatcher: makes FakeFollowers
    of one stream and keeps them, in order."""

    def __init__(self, stream: FakeStream, *, gated: bool = False, per_shard: int = 1000) -> None:
        self._stream = stream
        self._gated = gated
        self._per_shard = per_shard
        self.made: list[FakeFollower] = []

    def __call__(self) -> StreamFollower:
        follower = FakeFollower(self._stream, gated=self._gated, per_shard=self._per_shard)
        self.made.append(follower)
        return cast(StreamFollower, follower)


async def settle(turns: int = 50) -> None:
    """Lets every ready task run until all wait (none here waits on a clock)."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    """Polls `condition` (state the fakes keep, which no asyncio.Event tells) every millisecond."""
    for _ in range(int(timeout_s * 1000)):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise TimeoutError(f"still false after {timeout_s} s")


# --- webhooks -------------------------------------------------------------------------------


class FakeWebhooks:
    """WebhookRepository: webhooks by id (put keeps created_at_ms of the one it replaces)."""

    def __init__(self, *webhooks: Webhook) -> None:
        self.webhooks: dict[str, Webhook] = {w.webhook_id: w for w in webhooks}

    async def put_webhook(self, webhook: Webhook) -> Webhook:
        before = self.webhooks.get(webhook.webhook_id)
        if before is not None:
            webhook = replace(webhook, created_at_ms=before.created_at_ms)
        self.webhooks[webhook.webhook_id] = webhook
        return webhook

    async def list_webhooks(self, page_size: int, page_token: str) -> Page:
        webhooks = [self.webhooks[k] for k in sorted(self.webhooks) if k > page_token]
        page = webhooks[:page_size]
        return Page(tuple(page), page[-1].webhook_id if len(webhooks) > page_size else "")

    async def all_webhooks(self) -> tuple[Webhook, ...]:
        return tuple(self.webhooks[k] for k in sorted(self.webhooks))

    async def delete_webhook(self, webhook_id: str) -> None:
        if self.webhooks.pop(webhook_id, None) is None:
            raise WebhookNotFound(webhook_id)

    async def list_failed(self, webhook_id: str, page_size: int, page_token: str) -> Page:
        raise NotImplementedError

    async def redeliver(self, webhook_id: str, event_keys: tuple[str, ...], now_ms: int) -> int:
        raise NotImplementedError


@dataclass
class StoredDelivery:
    delivery: Delivery
    pending: bool = True
    due_ms: int = 0
    owner: str = ""
    lease_until_ms: int = 0  # 0: no lease
    delivered_at_ms: int = 0
    failed_at_ms: int = 0
    last_error: str = ""


@dataclass
class FakeDeliveryStore:
    """DeliveryStore as DynamoDBWebhooks keeps it: made once (a conditional
    put), claimed when due and unleased (attempts + 1), finished only by the
    owner of that attempt."""

    items: dict[tuple[str, str], StoredDelivery] = field(default_factory=dict)
    created: list[tuple[str, str, str, bool]] = field(default_factory=list)  # (owner, webhook_id, event_key, made)
    finished: list[tuple[str, str, str]] = field(default_factory=list)  # (how, webhook_id, event_key)

    def seed(self, delivery: Delivery, *, due_ms: int, owner: str = "", lease_until_ms: int = 0) -> None:
        self.items[(delivery.webhook_id, delivery.event_key)] = StoredDelivery(
            delivery, due_ms=due_ms, owner=owner, lease_until_ms=lease_until_ms
        )

    def get(self, webhook_id: str, event_key: str) -> StoredDelivery:
        return self.items[(webhook_id, event_key)]

    async def create_claimed(self, delivery: Delivery, owner: str, now_ms: int, lease_ms: int) -> bool:
        key = (delivery.webhook_id, delivery.event_key)
        made = key not in self.items
        self.created.append((owner, *key, made))
        if made:
            self.items[key] = StoredDelivery(delivery, due_ms=now_ms, owner=owner, lease_until_ms=now_ms + lease_ms)
        return made

    async def due(self, now_ms: int, limit: int) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(k for k, item in self.items.items() if item.pending and item.due_ms <= now_ms))[:limit]

    async def claim(self, webhook_id: str, event_key: str, owner: str, now_ms: int, lease_ms: int) -> Delivery | None:
        item = self.items.get((webhook_id, event_key))
        if item is None or not item.pending or item.due_ms > now_ms:
            return None
        if item.lease_until_ms and item.lease_until_ms >= now_ms:
            return None
        item.delivery = replace(item.delivery, attempts=item.delivery.attempts + 1)
        item.owner, item.lease_until_ms = owner, now_ms + lease_ms
        return item.delivery

    def _mine(self, delivery: Delivery, owner: str) -> StoredDelivery | None:
        item = self.items.get((delivery.webhook_id, delivery.event_key))
        if item is None or item.owner != owner or item.delivery.attempts != delivery.attempts:
            return None
        return item

    async def delivered(self, delivery: Delivery, owner: str, now_ms: int) -> None:
        item = self._mine(delivery, owner)
        if item is not None:
            item.pending, item.delivered_at_ms, item.lease_until_ms = False, now_ms, 0
            self.finished.append(("delivered", delivery.webhook_id, delivery.event_key))

    async def retry_later(self, delivery: Delivery, owner: str, due_ms: int, error: str) -> None:
        item = self._mine(delivery, owner)
        if item is not None:
            item.due_ms, item.last_error, item.lease_until_ms = due_ms, error, 0
            self.finished.append(("retry_later", delivery.webhook_id, delivery.event_key))

    async def failed(self, delivery: Delivery, owner: str, now_ms: int, error: str) -> None:
        item = self._mine(delivery, owner)
        if item is not None:
            item.pending, item.failed_at_ms, item.last_error, item.lease_until_ms = False, now_ms, error, 0
            self.finished.append(("failed", delivery.webhook_id, delivery.event_key))


@dataclass
class FakeLease:
    """ReaderLease: one holder at a time until its lease ends; the saved position."""

    holder: str = ""
    lease_until_ms: int = 0
    positions: Positions | None = None
    saves: list[tuple[str, Positions]] = field(default_factory=list)

    async def acquire(self, owner: str, now_ms: int, lease_ms: int) -> tuple[bool, Positions | None]:
        if self.holder not in ("", owner) and self.lease_until_ms >= now_ms:
            return False, None
        self.holder, self.lease_until_ms = owner, now_ms + lease_ms
        return True, None if self.positions is None else dict(self.positions)

    async def save(self, owner: str, positions: Positions, now_ms: int, lease_ms: int) -> bool:
        if self.holder != owner:
            return False
        self.positions, self.lease_until_ms = dict(positions), now_ms + lease_ms
        self.saves.append((owner, dict(positions)))
        return True


@dataclass
class FakePoster:
    """EventPoster: answers in order ("" a 2xx, else the error), then `default`."""

    answers: list[str] = field(default_factory=list)
    default: str = ""
    posts: list[tuple[str, bytes, dict[str, str], float]] = field(default_factory=list)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> str:
        self.posts.append((url, body, dict(headers), timeout_s))
        return self.answers.pop(0) if self.answers else self.default
