"""From an HTTP request's parts to the RPC's request message, as the route
says: the JSON body (the protobuf JSON mapping, unknown fields refused), path
and query parameters, and the Idempotency-Key header. Nothing is judged here
beyond what the JSON mapping and the route define: the services validate."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.routes import IDEMPOTENCY_HEADER, WHOLE_REQUEST, Route, resolve_field

INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED64,
    }
)
_DECIMAL = re.compile(r"-?[0-9]+", re.ASCII)
# An integer given as a JSON string in a body, as the OpenAPI document's patterns allow it.
_DECIMAL_TEXT = re.compile(r"[+-]?[0-9]+", re.ASCII)
# What a failed parse can raise besides ParseError (json_format and the runtime's setters).
_PARSE_ERRORS = (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError)


class BadRequest(Exception):
    """The HTTP request cannot be made into the RPC's request (INVALID_ARGUMENT);
    `field` names the part at fault (a field path, "body", a header)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field} {description}")
        self.field = field
        self.description = description


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse_error(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text.split(" Available Fields(except extensions):")[0]


def _check_objects(value: Any, message: Descriptor, path: str) -> None:
    """What json_format lets through: a message field given something other
    than a JSON object (`"requirements": []` would parse as an empty message),
    an integer written as a string that is not a plain decimal (`"1e3"`,
    `"1_0"`, which it would read as 1000 and 10), and an enum given anything but its name. Well-known types have JSON
    forms of their own and are left to it."""
    if not isinstance(value, dict):
        return
    for name, item in value.items():
        field = message.fields_by_name.get(name) or _by_json_name(message).get(name)
        if field is not None and field.type in INTEGER_TYPES:
            texts = item if field.is_repeated and isinstance(item, list) else [item]
            if any(isinstance(text, str) and not _DECIMAL_TEXT.fullmatch(text) for text in texts):
                raise BadRequest(f"{path}{field.name}", "must be a decimal integer (or a string of one)")
        if field is not None and field.enum_type is not None:
            # Names only, as the OpenAPI document says: json_format would also read a number, and read
            # true and false as the values 1 and 0.
            values = item if field.is_repeated and isinstance(item, list) else [item]
            if any(v is not None and not isinstance(v, str) for v in values):
                names = ", ".join(v.name for v in field.enum_type.values)
                raise BadRequest(f"{path}{field.name}", f"must be one of {names}")
        if field is None or field.message_type is None or item is None:
            continue
        target = field.message_type
        if target.GetOptions().map_entry:
            value_type = target.fields_by_name["value"].message_type
            if value_type is not None and isinstance(item, dict):
                for key, entry in item.items():
                    _check_message(entry, value_type, f"{path}{field.name}[{key!r}]")
            continue
        items = item if field.is_repeated and isinstance(item, list) else [item]
        for index, element in enumerate(items):
            where = f"{path}{field.name}" + (f"[{index}]" if field.is_repeated else "")
            _check_message(element, target, where)


def _check_message(value: Any, message: Descriptor, where: str) -> None:
    if message.full_name.startswith("google.protobuf."):
        return
    if value is not None and not isinstance(value, dict):
        raise BadRequest(
            "body", f"field {where} must be a JSON object ({message.full_name}), not {type(value).__name__}"
        )
    _check_objects(value, message, f"{where}.")


def _by_json_name(message: Descriptor) -> dict[str, FieldDescriptor]:
    """Fields by their JSON (lowerCamelCase) names, which json_format accepts too."""
    return {field.json_name: field for field in message.fields}


def _get(message: Message, dotted: str) -> Any:
    for name in dotted.split("."):
        message = getattr(message, name)
    return message


def _set(message: Message, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for name in parents:
        message = getattr(message, name)
    setattr(message, leaf, value)


def _nested(dotted: str, value: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    inner = result
    *parents, leaf = dotted.split(".")
    for name in parents:
        inner[name] = {}
        inner = inner[name]
    inner[leaf] = value
    return result


class RequestBinder:
    """Builds the request message of one route."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self._request_class = message_factory.GetMessageClass(route.request_type)
        self._fields = {
            **{
                param: (route.field_path(param), resolve_field(route.request_type, route.field_path(param)))
                for param in route.path_params
            },
        }
        self._query = {name: resolve_field(route.request_type, name) for name in route.query}

    def bind(
        self,
        body: bytes | None,
        path_params: dict[str, str],
        query: Sequence[tuple[str, str]],
        idempotency_keys: Sequence[str],
    ) -> Message:
        route = self.route
        request = self._request_class()
        if route.body is not None:
            self._bind_body(request, body or b"")
        for param, raw in path_params.items():
            dotted, field = self._fields[param]
            self._bind_param(request, dotted, field, raw, "the path")
        seen: set[str] = set()
        for name, raw in query:
            query_field = self._query.get(name)
            if query_field is None:
                allowed = f"it takes {', '.join(route.query)}" if route.query else "it takes none"
                raise BadRequest(name, f"is not a query parameter of this route ({allowed})")
            if name in seen:
                raise BadRequest(name, "is given more than once")
            seen.add(name)
            self._bind_param(request, name, query_field, raw, "the query")
        if route.idempotency_field and idempotency_keys:
            self._bind_idempotency_key(request, route.idempotency_field, idempotency_keys)
        return request

    def _bind_body(self, request: Message, body: bytes) -> None:
        route = self.route
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadRequest("body", f"is not UTF-8 ({error.reason} at byte {error.start})") from None
        if not text.strip():
            raise BadRequest("body", "is empty; send a JSON object")
        try:
            value = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except (ValueError, RecursionError) as error:
            raise BadRequest("body", f"is not valid JSON ({_parse_error(error)})") from None
        if not isinstance(value, dict):
            raise BadRequest("body", f"must be a JSON object, not {type(value).__name__}")
        target = request
        if route.body != WHOLE_REQUEST:
            target = getattr(request, route.body or "")
            target.SetInParent()
        body_type = route.body_type
        assert body_type is not None
        _check_objects(value, body_type, "")
        try:
            json_format.ParseDict(value, target, ignore_unknown_fields=False)
        except _PARSE_ERRORS as error:
            raise BadRequest("body", f"is not a {target.DESCRIPTOR.full_name} ({_parse_error(error)})") from None

    def _bind_param(self, request: Message, dotted: str, field: FieldDescriptor, raw: str, what: str) -> None:
        value: Any = raw
        if field.type in INTEGER_TYPES and not _DECIMAL.fullmatch(raw):
            raise BadRequest(dotted, f"must be a decimal integer (in {what})")
        if field.type == FieldDescriptor.TYPE_BOOL:
            if raw not in ("true", "false"):
                raise BadRequest(dotted, f"must be true or false (in {what})")
            value = raw == "true"
        parsed = self._request_class()
        try:
            json_format.ParseDict(_nested(dotted, value), parsed, ignore_unknown_fields=False)
        except _PARSE_ERRORS as error:
            raise BadRequest(dotted, f"is not valid (in {what}: {_parse_error(error)})") from None
        self._merge(request, dotted, _get(parsed, dotted), what)

    def _bind_idempotency_key(self, request: Message, dotted: str, keys: Sequence[str]) -> None:
        if len(keys) > 1:
            raise BadRequest(IDEMPOTENCY_HEADER, "is given more than once")
        if not keys[0]:
            raise BadRequest(IDEMPOTENCY_HEADER, "is empty")
        self._merge(request, dotted, keys[0], f"the {IDEMPOTENCY_HEADER} header")

    @staticmethod
    def _merge(request: Message, dotted: str, value: Any, what: str) -> None:
        """Sets a field from the path, query or a header; the body may hold the
        same value, or leave it out, but not another."""
        current = _get(request, dotted)
        if current and current != value:
            raise BadRequest(dotted, f"is {current!r} in the body but {value!r} in {what}")
        _set(request, dotted, value)


def query_items(query_string: bytes) -> list[tuple[str, str]]:
    """The query string's parameters, percent-decoded as UTF-8 (refused when
    they are not: no silent replacement characters)."""
    try:
        return urllib.parse.parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("query", "is not UTF-8 once percent-decoded") from None


def check_path_encoding(raw_path: bytes | None) -> None:
    """The server percent-decodes the path before routing, replacing what is
    not UTF-8; such a path is refused instead of reaching a service altered."""
    if raw_path and b"%" in raw_path:
        try:
            urllib.parse.unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("path", "is not UTF-8 once percent-decoded") from None


def header_values(raw_headers: Iterable[tuple[bytes, bytes]], name: str) -> list[str]:
    """Every value of the header `name` (as documented, e.g. "Idempotency-Key"),
    decoded as UTF-8; a value that is not UTF-8 is refused."""
    key = name.lower().encode()
    values = []
    for header, value in raw_headers:
        if header == key:
            try:
                values.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                raise BadRequest(name, "is not UTF-8") from None
    return values
