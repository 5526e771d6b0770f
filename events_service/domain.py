"""Event rules, pure: no gRPC, no DynamoDB, no HTTP. Which stream record is
which event (and which make none), the webhook rules (urls, signatures,
retries), and the Protocols the use cases depend on."""

from __future__ import annotations

import enum
import hashlib
import hmac
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from common.caller_auth import Role
from common.dynamodb.reads import level_reached_from
from common.dynamodb.streams import Positions, StreamRecord
from common.errors import InvalidField, NotFound, PermissionRefused
from common.models import ACHIEVEMENT, ACTIVITY, ADJUSTMENT, GRANT, REVOKE, Reward


class EventType(enum.Enum):
    """As rewards.v1.EventType, without its prefix."""

    XP_AWARDED = 1
    XP_GRANTED = 2
    XP_ADJUSTED = 3
    XP_REVOKED = 4
    LEVEL_UP = 5
    ACHIEVEMENT_UNLOCKED = 6


_XP_TYPES = {
    ACTIVITY: EventType.XP_AWARDED,
    GRANT: EventType.XP_GRANTED,
    ACHIEVEMENT: EventType.XP_GRANTED,
    ADJUSTMENT: EventType.XP_ADJUSTED,
    REVOKE: EventType.XP_REVOKED,
}


@dataclass(frozen=True)
class XpChanged:
    entry_id: str
    request_id: str
    xp: int
    total_xp: int
    activity_id: str = ""
    achievement_id: str = ""
    reason: str = ""


@dataclass(frozen=True)
class LevelUp:
    previous_level: int
    current_level: int
    rewards: tuple[Reward, ...]


@dataclass(frozen=True)
class AchievementUnlocked:
    achievement_id: str
    xp_reward: int


@dataclass(frozen=True)
class Event:
    # Unique per user: every copy of the event has it, so consumers drop repeats by (user_id, event_id).
    event_id: str
    user_id: str
    type: EventType
    occurred_at: str  # ISO 8601, UTC
    detail: XpChanged | LevelUp | AchievementUnlocked

    @property
    def key(self) -> str:
        """Unique among all events: a delivery's key (its delivery_id). "<user_id>/<event_id>" when that
        fits a DynamoDB sort key (1,024 bytes), else "sha256:<hex of it>" (no "/": it cannot be another
        event's plain key). Ids of 128 four-byte characters make such keys."""
        plain = f"{self.user_id}/{self.event_id}"
        if len(plain.encode()) <= MAX_DELIVERY_ID_BYTES:
            return plain
        return "sha256:" + hashlib.sha256(plain.encode()).hexdigest()


# A delivery's key is a DynamoDB sort key: at most this many bytes of UTF-8.
MAX_DELIVERY_ID_BYTES = 1024

# The tables whose streams the events come from (names without the prefix).
SOURCE_TABLES = ("user_progress", "user_achievements", "level_rewards")


def event_from_record(record: StreamRecord) -> Event | None:
    """The event a stream record is, or None: a capped award, an update of
    the progress item that did not move its total (a level-up's, an unlock
    without XP), a later update of an unlock record, a removal."""
    image = record.new_image
    if record.table == "user_progress":
        change = image.get("last_change")
        before = (record.old_image or {}).get("last_change") or {}
        if not change or change.get("capped") or change.get("entry_id") == before.get("entry_id"):
            return None
        kind = str(change.get("kind", ""))
        return Event(
            event_id=str(change["entry_id"]),
            user_id=str(image["user_id"]),
            type=_XP_TYPES.get(kind, EventType.XP_GRANTED),
            occurred_at=str(change.get("recorded_at", "")),
            detail=XpChanged(
                entry_id=str(change["entry_id"]),
                request_id=str(change.get("request_id", "")),
                xp=int(change.get("xp", 0)),
                total_xp=int(image.get("total_xp", 0)),
                activity_id=str(change.get("activity_id", "")),
                achievement_id=str(change.get("achievement_id", "")),
                reason=str(change.get("reason", "")),
            ),
        )
    if record.event_name != "INSERT":
        return None
    if record.table == "user_achievements":
        achievement_id = str(image["achievement_id"])
        return Event(
            event_id=f"unlock#{achievement_id}",
            user_id=str(image["user_id"]),
            type=EventType.ACHIEVEMENT_UNLOCKED,
            occurred_at=str(image.get("unlocked_at", "")),
            detail=AchievementUnlocked(achievement_id, int(image.get("xp_reward", 0))),
        )
    if record.table == "level_rewards":
        reached = level_reached_from(image)
        return Event(
            event_id=f"level#{reached.level}",
            user_id=str(image["user_id"]),
            type=EventType.LEVEL_UP,
            occurred_at=reached.granted_at,
            detail=LevelUp(reached.from_level, reached.level, reached.rewards),
        )
    return None


def record_moment_ms(record: StreamRecord) -> int:
    """When a source record's change happened (unix ms), from the item's own
    time, which is exact where ApproximateCreationDateTime is rounded."""
    image = record.new_image
    change = image.get("last_change") if record.table == "user_progress" else None
    moment = (change or {}).get("recorded_at") or image.get("unlocked_at") or image.get("granted_at")
    return iso_to_ms(str(moment)) if moment else record.approximate_ms


@dataclass(frozen=True)
class EventFilter:
    """What a watch or a webhook takes: one user ("" every user), some types (empty: every type)."""

    user_id: str = ""
    types: frozenset[EventType] = frozenset()

    def matches(self, event: Event) -> bool:
        return (not self.user_id or event.user_id == self.user_id) and (not self.types or event.type in self.types)


class WatchNotAllowed(PermissionRefused):
    """A watch of every user asked with the game role."""


def require_watch_allowed(event_filter: EventFilter, caller_role: Role | None) -> None:
    """A game server watches its players one at a time; a watch of every user
    (an empty user_id) takes the admin or service role. No caller: auth is off."""
    if not event_filter.user_id and caller_role == Role.GAME:
        raise WatchNotAllowed("watching every user (an empty user_id) takes the admin or service role")


# --- webhooks -------------------------------------------------------------------------------

MAX_URL_LENGTH = 2048
SECRET_LENGTHS = (16, 256)
SIGNATURE_HEADER = "Rewards-Signature"
# Retries: doubling from the first delay, at most this apart, for this long after the first attempt.
MAX_RETRY_DELAY_S = 3600.0


@dataclass(frozen=True)
class Webhook:
    webhook_id: str
    url: str
    types: frozenset[EventType]
    secret: str
    created_at_ms: int = 0  # events from then on are delivered to it

    def wants(self, event: Event, occurred_at_ms: int) -> bool:
        return (not self.types or event.type in self.types) and occurred_at_ms >= self.created_at_ms


class WebhookNotFound(NotFound):
    def __init__(self, webhook_id: str) -> None:
        super().__init__(f"webhook {webhook_id!r} does not exist")
        self.webhook_id = webhook_id


class DeliveryNotStorable(Exception):
    """DynamoDB refuses a delivery's item for good (a validation error): its event is skipped for that
    webhook, logged, rather than stopping every webhook's reader on it."""

    def __init__(self, webhook_id: str, event_key: str, reason: str) -> None:
        super().__init__(f"delivery {event_key!r} of webhook {webhook_id!r} cannot be stored: {reason}")


def check_webhook(webhook: Webhook, *, allow_http: bool) -> Webhook:
    """The rules of a webhook, field names as in the API."""
    if not webhook.url:
        raise InvalidField("webhook.url", "is required")
    if len(webhook.url) > MAX_URL_LENGTH:
        raise InvalidField("webhook.url", f"must be at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(webhook.url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:  # its text quotes the URL, which may be long: not copied into the answer
        raise InvalidField("webhook.url", "is not a URL (its port or host is malformed)") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        rule = (
            "must be an https:// URL (http:// only with REWARDS_WEBHOOKS_ALLOW_HTTP=true, for local development)"
            if parts.scheme == "http"
            else "must be an https:// URL"
        )
        raise InvalidField("webhook.url", rule)
    if not parts.hostname:
        raise InvalidField("webhook.url", "must name a host")
    if parts.username or parts.password:
        raise InvalidField("webhook.url", "must not hold credentials (the signature authenticates the sender)")
    low, high = SECRET_LENGTHS
    if not low <= len(webhook.secret) <= high:
        raise InvalidField("webhook.secret", f"must be {low} to {high} characters (got {len(webhook.secret)})")
    return webhook


def iso_to_ms(moment: str) -> int:
    return int(datetime.fromisoformat(moment).timestamp() * 1000) if moment else 0


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, keyed by the webhook's secret."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def retry_delay_s(attempts: int, first_delay_s: float) -> float:
    """The pause after the `attempts`-th failed attempt: doubling, at most an
    hour, with full jitter over its upper half so that retries spread."""
    # The exponent is capped first: attempts keep counting (a lease that ran out counts one), and
    # 2 ** 1024 is past a float.
    ceiling = min(MAX_RETRY_DELAY_S, first_delay_s * 2 ** min(max(0, attempts - 1), 32))
    return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class Delivery:
    """One event for one webhook; event_key is the event's `key`."""

    webhook_id: str
    event_key: str
    body: bytes
    attempts: int
    first_attempt_ms: int
    last_error: str = ""
    failed_at_ms: int = 0


@dataclass(frozen=True)
class Page:
    items: tuple[Any, ...]
    next_token: str


class WebhookRepository(Protocol):
    async def put_webhook(self, webhook: Webhook) -> Webhook:
        """Stores it; keeps created_at_ms of the webhook it replaces."""

    async def list_webhooks(self, page_size: int, page_token: str) -> Page: ...

    async def all_webhooks(self) -> tuple[Webhook, ...]: ...

    async def delete_webhook(self, webhook_id: str) -> None:
        """WebhookNotFound when there is none."""

    async def list_failed(self, webhook_id: str, page_size: int, page_token: str) -> Page: ...

    async def redeliver(self, webhook_id: str, event_keys: tuple[str, ...], now_ms: int) -> int:
        """Makes failed deliveries pending again (all of them when no keys); how many."""


class ReaderLease(Protocol):
    """Where the one reader of the streams for webhooks stands, and who it is."""

    async def acquire(self, owner: str, now_ms: int, lease_ms: int) -> tuple[bool, Positions | None]:
        """Takes or renews the lease; (held, the saved position or None)."""

    async def save(self, owner: str, positions: Positions, now_ms: int, lease_ms: int) -> bool:
        """Saves the position and renews the lease while `owner` holds it; False when it does not."""


class DeliveryStore(Protocol):
    async def create_claimed(self, delivery: Delivery, owner: str, now_ms: int, lease_ms: int) -> bool:
        """Makes the delivery, claimed by `owner`, unless it exists; whether it made it.
        DeliveryNotStorable when it can never be stored."""

    async def due(self, now_ms: int, limit: int) -> tuple[tuple[str, str], ...]:
        """(webhook_id, event_key) of pending deliveries due by now."""

    async def claim(self, webhook_id: str, event_key: str, owner: str, now_ms: int, lease_ms: int) -> Delivery | None:
        """Takes a due, unleased delivery for `owner` (one more attempt); None when another has it."""

    async def delivered(self, delivery: Delivery, owner: str, now_ms: int) -> None: ...

    async def retry_later(self, delivery: Delivery, owner: str, due_ms: int, error: str) -> None: ...

    async def failed(self, delivery: Delivery, owner: str, now_ms: int, error: str) -> None: ...


class EventPoster(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> str:
        """POSTs once: "" for a 2xx answer, else what went wrong ("HTTP 503", "timeout")."""
