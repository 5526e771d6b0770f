"""The events service's DynamoDB storage: webhooks, their deliveries (made
once by a conditional put, then claimed with leases by conditional updates)
and the webhook reader's lease and position."""

from __future__ import annotations

from typing import Any

from common.dynamodb import ConditionalCheckFailed, DynamoDBClient, DynamoDBError, attr, from_item, to_item
from common.dynamodb.streams import Positions, decode_cursor, encode_cursor
from common.dynamodb.tables import EVENT_READERS, WEBHOOK_DELIVERIES, WEBHOOKS
from events_service.domain import Delivery, DeliveryNotStorable, EventType, Page, Webhook, WebhookNotFound

PENDING = "p"
# A delivered event's record stays this long (TTL `expires_at`): any replay of the streams after a
# reader changed hands comes within minutes, and finds it there, so it is not sent again.
DELIVERED_KEPT_S = 7 * 24 * 3600
_READER = "webhooks"


def due_key(moment_ms: int) -> str:
    """due_at, which the `due` index sorts as text."""
    return f"{moment_ms:015d}"


def webhook_from(values: dict[str, Any]) -> Webhook:
    return Webhook(
        webhook_id=values["webhook_id"],
        url=values["url"],
        types=frozenset(EventType[name] for name in values.get("types", ())),
        secret=values.get("secret", ""),
        created_at_ms=int(values.get("created_at_ms", 0)),
    )


def delivery_from(values: dict[str, Any]) -> Delivery:
    return Delivery(
        webhook_id=values["webhook_id"],
        event_key=values["event_key"],
        body=str(values["body"]).encode(),
        attempts=int(values.get("attempts", 0)),
        first_attempt_ms=int(values.get("first_attempt_ms", 0)),
        last_error=values.get("last_error", ""),
        failed_at_ms=int(values.get("failed_at", 0)),
    )


class DynamoDBWebhooks:
    """WebhookRepository, DeliveryStore and ReaderLease over DynamoDB."""

    def __init__(self, client: DynamoDBClient, table_prefix: str) -> None:
        self._client = client
        self._webhooks = table_prefix + WEBHOOKS.name
        self._deliveries = table_prefix + WEBHOOK_DELIVERIES.name
        self._readers = table_prefix + EVENT_READERS.name

    # --- webhooks -------------------------------------------------------------------

    async def put_webhook(self, webhook: Webhook) -> Webhook:
        answer = await self._client.call(
            "UpdateItem",
            {
                "TableName": self._webhooks,
                "Key": {"webhook_id": attr(webhook.webhook_id)},
                "UpdateExpression": "SET #url = :u, types = :t, secret = :s,"
                " created_at_ms = if_not_exists(created_at_ms, :now)",
                "ExpressionAttributeNames": {"#url": "url"},
                "ExpressionAttributeValues": to_item(
                    {
                        ":u": webhook.url,
                        ":t": sorted(t.name for t in webhook.types),
                        ":s": webhook.secret,
                        ":now": webhook.created_at_ms,
                    }
                ),
                "ReturnValues": "ALL_NEW",
            },
        )
        return webhook_from(from_item(answer["Attributes"]))

    async def all_webhooks(self) -> tuple[Webhook, ...]:
        items: list[dict[str, Any]] = []
        payload: dict[str, Any] = {"TableName": self._webhooks, "ConsistentRead": True}
        while True:
            answer = await self._client.call("Scan", payload)
            items.extend(answer.get("Items", []))
            if "LastEvaluatedKey" not in answer:
                break
            payload = {**payload, "ExclusiveStartKey": answer["LastEvaluatedKey"]}
        return tuple(sorted((webhook_from(from_item(i)) for i in items), key=lambda w: w.webhook_id))

    async def list_webhooks(self, page_size: int, page_token: str) -> Page:
        # A handful of webhooks: read all, in id order; the token is the last id of the page before.
        webhooks = [w for w in await self.all_webhooks() if w.webhook_id > page_token]
        page = webhooks[:page_size]
        return Page(tuple(page), page[-1].webhook_id if len(webhooks) > page_size else "")

    async def delete_webhook(self, webhook_id: str) -> None:
        try:
            await self._client.call(
                "DeleteItem",
                {
                    "TableName": self._webhooks,
                    "Key": {"webhook_id": attr(webhook_id)},
                    "ConditionExpression": "attribute_exists(webhook_id)",
                },
            )
        except ConditionalCheckFailed:
            raise WebhookNotFound(webhook_id) from None

    async def list_failed(self, webhook_id: str, page_size: int, page_token: str) -> Page:
        payload: dict[str, Any] = {
            "TableName": self._deliveries,
            "KeyConditionExpression": "webhook_id = :w",
            "FilterExpression": "attribute_exists(failed_at)",
            "ExpressionAttributeValues": {":w": attr(webhook_id)},
            "Limit": 100,
        }
        if page_token:  # the last delivery_id of the page before
            payload["ExclusiveStartKey"] = {"webhook_id": attr(webhook_id), "event_key": attr(page_token)}
        found: list[Delivery] = []
        while True:
            answer = await self._client.call("Query", payload)
            found.extend(delivery_from(from_item(i)) for i in answer.get("Items", []))
            last = answer.get("LastEvaluatedKey")
            if len(found) >= page_size or not last:
                break
            payload = {**payload, "ExclusiveStartKey": last}
        if len(found) > page_size:
            found = found[:page_size]
            return Page(tuple(found), found[-1].event_key)
        return Page(tuple(found), found[-1].event_key if last and found else "")

    async def redeliver(self, webhook_id: str, event_keys: tuple[str, ...], now_ms: int) -> int:
        if not event_keys:
            keys: list[str] = []
            token = ""
            while True:
                page = await self.list_failed(webhook_id, 100, token)
                keys.extend(d.event_key for d in page.items)
                token = page.next_token
                if not token:
                    break
            event_keys = tuple(keys)
        count = 0
        for key in event_keys:
            try:
                await self._client.call(
                    "UpdateItem",
                    {
                        "TableName": self._deliveries,
                        "Key": {"webhook_id": attr(webhook_id), "event_key": attr(key)},
                        "UpdateExpression": "SET pending = :p, due_at = :due, first_attempt_ms = :now, attempts = :zero"
                        " REMOVE failed_at, lease_until, #owner",
                        "ConditionExpression": "attribute_exists(failed_at)",
                        "ExpressionAttributeNames": {"#owner": "owner"},
                        "ExpressionAttributeValues": to_item(
                            {":p": PENDING, ":due": due_key(now_ms), ":now": now_ms, ":zero": 0}
                        ),
                    },
                )
                count += 1
            except ConditionalCheckFailed:
                continue  # not failed (pending, delivered, or no such delivery)
        return count

    # --- deliveries -----------------------------------------------------------------

    async def create_claimed(self, delivery: Delivery, owner: str, now_ms: int, lease_ms: int) -> bool:
        try:
            await self._client.call(
                "PutItem",
                {
                    "TableName": self._deliveries,
                    "Item": to_item(
                        {
                            "webhook_id": delivery.webhook_id,
                            "event_key": delivery.event_key,
                            "body": delivery.body.decode(),
                            "attempts": delivery.attempts,
                            "first_attempt_ms": delivery.first_attempt_ms,
                            "pending": PENDING,
                            "due_at": due_key(now_ms),
                            "owner": owner,
                            "lease_until": now_ms + lease_ms,
                        }
                    ),
                    "ConditionExpression": "attribute_not_exists(event_key)",
                },
            )
        except ConditionalCheckFailed:
            return False  # made already (a replay after a reader changed hands)
        except DynamoDBError as error:
            if error.code == "ValidationException":  # an item DynamoDB will never take: not worth a retry
                raise DeliveryNotStorable(delivery.webhook_id, delivery.event_key, error.message) from error
            raise
        return True

    async def due(self, now_ms: int, limit: int) -> tuple[tuple[str, str], ...]:
        answer = await self._client.call(
            "Query",
            {
                "TableName": self._deliveries,
                "IndexName": "due",
                "KeyConditionExpression": "pending = :p AND due_at <= :now",
                "ExpressionAttributeValues": to_item({":p": PENDING, ":now": due_key(now_ms)}),
                "ProjectionExpression": "webhook_id, event_key",
                "Limit": limit,
            },
        )
        return tuple((i["webhook_id"]["S"], i["event_key"]["S"]) for i in answer.get("Items", []))

    async def claim(self, webhook_id: str, event_key: str, owner: str, now_ms: int, lease_ms: int) -> Delivery | None:
        try:
            answer = await self._client.call(
                "UpdateItem",
                {
                    "TableName": self._deliveries,
                    "Key": {"webhook_id": attr(webhook_id), "event_key": attr(event_key)},
                    "UpdateExpression": "SET #owner = :o, lease_until = :until ADD attempts :one",
                    "ConditionExpression": "pending = :p AND due_at <= :due"
                    " AND (attribute_not_exists(lease_until) OR lease_until < :now)",
                    "ExpressionAttributeNames": {"#owner": "owner"},
                    "ExpressionAttributeValues": to_item(
                        {
                            ":o": owner,
                            ":until": now_ms + lease_ms,
                            ":one": 1,
                            ":p": PENDING,
                            ":due": due_key(now_ms),
                            ":now": now_ms,
                        }
                    ),
                    "ReturnValues": "ALL_NEW",
                },
            )
        except ConditionalCheckFailed:
            return None  # another sender has it, or it is done
        return delivery_from(from_item(answer["Attributes"]))

    async def delivered(self, delivery: Delivery, owner: str, now_ms: int) -> None:
        await self._finish(
            delivery,
            owner,
            "SET delivered_at = :now, expires_at = :expires REMOVE pending, due_at, lease_until",
            {":now": now_ms, ":expires": now_ms // 1000 + DELIVERED_KEPT_S},
        )

    async def retry_later(self, delivery: Delivery, owner: str, due_ms: int, error: str) -> None:
        await self._finish(
            delivery,
            owner,
            "SET due_at = :due, last_error = :e REMOVE lease_until",
            {":due": due_key(due_ms), ":e": error},
        )

    async def failed(self, delivery: Delivery, owner: str, now_ms: int, error: str) -> None:
        await self._finish(
            delivery,
            owner,
            "SET failed_at = :now, last_error = :e REMOVE pending, due_at, lease_until",
            {":now": now_ms, ":e": error},
        )

    async def _finish(self, delivery: Delivery, owner: str, update: str, values: dict[str, Any]) -> None:
        """Only for the attempt it is: a sender whose lease ran out changes nothing."""
        try:
            await self._client.call(
                "UpdateItem",
                {
                    "TableName": self._deliveries,
                    "Key": {"webhook_id": attr(delivery.webhook_id), "event_key": attr(delivery.event_key)},
                    "UpdateExpression": update,
                    "ConditionExpression": "#owner = :o AND attempts = :a",
                    "ExpressionAttributeNames": {"#owner": "owner"},
                    "ExpressionAttributeValues": to_item({**values, ":o": owner, ":a": delivery.attempts}),
                },
            )
        except ConditionalCheckFailed:
            pass

    # --- the reader's lease ---------------------------------------------------------

    async def acquire(self, owner: str, now_ms: int, lease_ms: int) -> tuple[bool, Positions | None]:
        try:
            answer = await self._client.call(
                "UpdateItem",
                {
                    "TableName": self._readers,
                    "Key": {"reader": attr(_READER)},
                    "UpdateExpression": "SET #owner = :o, lease_until = :until",
                    "ConditionExpression": "attribute_not_exists(reader) OR #owner = :o OR lease_until < :now",
                    "ExpressionAttributeNames": {"#owner": "owner"},
                    "ExpressionAttributeValues": to_item({":o": owner, ":until": now_ms + lease_ms, ":now": now_ms}),
                    "ReturnValues": "ALL_NEW",
                },
            )
        except ConditionalCheckFailed:
            return False, None
        cursor = answer["Attributes"].get("cursor", {}).get("S", "")
        return True, decode_cursor(cursor) if cursor else None

    async def save(self, owner: str, positions: Positions, now_ms: int, lease_ms: int) -> bool:
        try:
            await self._client.call(
                "UpdateItem",
                {
                    "TableName": self._readers,
                    "Key": {"reader": attr(_READER)},
                    "UpdateExpression": "SET #cursor = :c, lease_until = :until",
                    "ConditionExpression": "#owner = :o",
                    "ExpressionAttributeNames": {"#owner": "owner", "#cursor": "cursor"},
                    "ExpressionAttributeValues": to_item(
                        {":c": encode_cursor(positions), ":o": owner, ":until": now_ms + lease_ms}
                    ),
                },
            )
        except ConditionalCheckFailed:
            return False
        return True
