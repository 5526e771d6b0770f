"""What the gateway takes from a request, checked before any call: the media
type of a body (415), its size and the size of the message it becomes (413),
and the size of the header fields (431). What it passes on (the message, the
Authorization header as metadata) stays within what the services' gRPC
servers take, so that they have no size to refuse with RESOURCE_EXHAUSTED."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from common.channels import MAX_REQUEST_BYTES

JSON_MEDIA_TYPE = "application/json"

# The services refuse a request message over MAX_REQUEST_BYTES (gRPC's receive limit).
MAX_REQUEST_MESSAGE_BYTES = MAX_REQUEST_BYTES
# The largest body read: the JSON form of a message is larger than the message.
MAX_BODY_BYTES = 2 * MAX_REQUEST_BYTES

# Header fields, each counted as its name and value: 8 KiB a field (nginx's
# large_client_header_buffers, Apache's LimitRequestFieldSize) and 16 KiB in all
# (Node.js's max-http-header-size, h11's buffer for a request head).
MAX_HEADER_FIELD_BYTES = 8 * 1024
MAX_HEADER_SECTION_BYTES = 16 * 1024
# Authorization is passed on as gRPC metadata, which a gRPC server takes up to
# 8 KiB in all by default (and refuses at random up to 16 KiB): half of it
# leaves room for gRPC's own headers. A token here is a few hundred bytes.
MAX_AUTHORIZATION_BYTES = 4 * 1024
# uvicorn's (h11's) own limit on a request head still arriving, above the ones
# here, so that a head over them gets the gateway's JSON 431 rather than h11's
# plain-text 400; it bounds the memory a slow client can hold per connection.
MAX_INCOMPLETE_HEAD_BYTES = 4 * MAX_HEADER_SECTION_BYTES


def oversized_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why the header fields are too large (431), or None when they are not."""
    total = authorization = 0
    for name, value in raw_headers:
        size = len(name) + len(value)
        if size > MAX_HEADER_FIELD_BYTES:
            return (
                f"the {name.decode('latin-1')} header field is {size} bytes (name and value); "
                f"the gateway takes at most {MAX_HEADER_FIELD_BYTES} bytes a field"
            )
        total += size
        if name == b"authorization":
            authorization += size
    if authorization > MAX_AUTHORIZATION_BYTES:
        return (
            f"the Authorization header field is {authorization} bytes (name and value); the gateway takes at most "
            f"{MAX_AUTHORIZATION_BYTES} bytes, as it passes it on to the services as gRPC metadata"
        )
    if total > MAX_HEADER_SECTION_BYTES:
        return (
            f"the header fields are {total} bytes in all (names and values); "
            f"the gateway takes at most {MAX_HEADER_SECTION_BYTES} bytes"
        )
    return None


def unsupported_media_type(content_types: Sequence[str], body: bytes) -> str | None:
    """Why a request's Content-Type (every value given) is refused (415),
    said of the header, or None when it is application/json in UTF-8 (the only
    charset JSON has, RFC 8259), or absent with no body."""
    if not content_types:
        return None if not body else f"is missing; a body must be {JSON_MEDIA_TYPE}"
    if len(content_types) > 1:
        return f"is given more than once; send one: {JSON_MEDIA_TYPE}"
    content_type = content_types[0]
    media_type, *parameters = content_type.split(";")
    if media_type.strip().lower() != JSON_MEDIA_TYPE:
        return f"{content_type!r} is not supported; send {JSON_MEDIA_TYPE}"
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return f"{content_type!r} is not supported; send {JSON_MEDIA_TYPE} in UTF-8"
    return None
