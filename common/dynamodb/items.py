"""The item codec (Python values to DynamoDB's typed JSON and back, through
boto3's serializer) and the page tokens listings hand out."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from common.errors import InvalidField

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def to_item(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in values.items()}


def from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def attr(value: Any) -> dict[str, Any]:
    return _serializer.serialize(value)


def encode_page_token(last_evaluated_key: Mapping[str, Any] | None) -> str:
    if not last_evaluated_key:
        return ""
    raw = json.dumps(from_item(last_evaluated_key), default=str, sort_keys=True)
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_page_token(token: str, expected_keys: Mapping[str, str | None]) -> dict[str, Any] | None:
    """The start key in `token`. `expected_keys` names every key attribute the
    token must hold, with the value it must have where that is fixed (a query's
    partition key), so a token from another listing is refused here rather than
    by DynamoDB."""
    if not token:
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(token.encode()))
        if not isinstance(values, dict) or set(values) != set(expected_keys):
            raise ValueError("unexpected keys")
        for name, value in values.items():
            # Key values this service issues are ids (128 characters at most) and entry ids (an id and a prefix).
            if not isinstance(value, str) or not value or len(value) > 160 or expected_keys[name] not in (None, value):
                raise ValueError(f"unexpected {name}")
        return to_item(values)
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError) as error:
        raise InvalidField("page_token", "is not a token this listing issued") from error
