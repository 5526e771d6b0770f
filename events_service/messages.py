"""Events and webhooks as rewards.v1 messages, and an event's webhook body
(the protobuf JSON mapping of Event)."""

from __future__ import annotations

import json
from datetime import datetime

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from events_service.domain import AchievementUnlocked, Event, EventType, LevelUp, Webhook, XpChanged
from rewards.v1 import events_pb2, levels_pb2


def event_type_to_message(event_type: EventType) -> events_pb2.EventType.ValueType:
    return events_pb2.EventType.Value(f"EVENT_TYPE_{event_type.name}")


def event_type_from_message(field: str, value: int) -> EventType:
    from common.errors import InvalidField

    try:
        return EventType(value)
    except ValueError:
        raise InvalidField(field, f"must be a known EventType, not EVENT_TYPE_UNSPECIFIED (got {value})") from None


def event_to_message(event: Event) -> events_pb2.Event:
    message = events_pb2.Event(event_id=event.event_id, user_id=event.user_id, type=event_type_to_message(event.type))
    if event.occurred_at:
        occurred = Timestamp()
        occurred.FromDatetime(datetime.fromisoformat(event.occurred_at))
        message.occurred_at.CopyFrom(occurred)
    detail = event.detail
    if isinstance(detail, XpChanged):
        message.xp.CopyFrom(
            events_pb2.XpChanged(
                entry_id=detail.entry_id,
                request_id=detail.request_id,
                xp=detail.xp,
                total_xp=detail.total_xp,
                activity_id=detail.activity_id,
                achievement_id=detail.achievement_id,
                reason=detail.reason,
            )
        )
    elif isinstance(detail, LevelUp):
        message.level_up.CopyFrom(
            events_pb2.LevelUp(
                previous_level=detail.previous_level,
                current_level=detail.current_level,
                rewards=[levels_pb2.Reward(reward_id=r.reward_id, quantity=r.quantity) for r in detail.rewards],
            )
        )
    elif isinstance(detail, AchievementUnlocked):
        message.achievement.CopyFrom(
            events_pb2.AchievementUnlocked(achievement_id=detail.achievement_id, xp_reward=detail.xp_reward)
        )
    return message


def event_body(event: Event) -> bytes:
    """A webhook's body: the JSON mapping of the Event message, compact."""
    return json.dumps(json_format.MessageToDict(event_to_message(event)), separators=(",", ":")).encode()


def event_from_body(body: bytes) -> events_pb2.Event:
    return json_format.Parse(body, events_pb2.Event())


def webhook_to_message(webhook: Webhook) -> events_pb2.Webhook:
    """Without the secret: it is write-only."""
    return events_pb2.Webhook(
        webhook_id=webhook.webhook_id,
        url=webhook.url,
        types=sorted(event_type_to_message(t) for t in webhook.types),
    )
