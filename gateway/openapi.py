"""The OpenAPI 3.1 document, generated from the route table and the protobuf
descriptors: message schemas follow the proto3 JSON mapping (64-bit integers
as decimal strings, enums as their names, repeated fields as arrays, nested
messages as $refs into components.schemas, well-known types as their JSON
forms), with the proto field names the gateway reads and writes."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.routes import IDEMPOTENCY_HEADER, ROUTES, Route, resolve_field
from gateway.status import BODY_TOO_LARGE, HTTP_STATUS, error_statuses

JsonSchema = dict[str, Any]

TRACE_ID_HEADER = "X-Trace-Id"
TRACE_ID_PATTERN = r"^[0-9A-Za-z._-]{1,64}$"
HEALTH_PATH = "/healthz"
ERROR_SCHEMA = "Error"
OPENAPI_PATH = "/openapi.json"

_INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1}
_INT64 = {"type": "string", "format": "int64", "pattern": r"^-?[0-9]+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": r"^[0-9]+$"}
_FLOAT = {"oneOf": [{"type": "number"}, {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}]}

_SCALARS: dict[int, JsonSchema] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
    FieldDescriptor.TYPE_FLOAT: _FLOAT,
    FieldDescriptor.TYPE_DOUBLE: _FLOAT,
}

# Well-known types with a JSON form of their own (the proto3 JSON mapping).
_WELL_KNOWN: dict[str, JsonSchema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}, "required": ["@type"]},
}
_WRAPPERS = {
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
}


class SchemaBuilder:
    """JSON Schemas of messages, each defined once in `components` and
    referred to by $ref."""

    def __init__(self) -> None:
        self.components: dict[str, JsonSchema] = {}
        self._names: dict[str, str] = {}  # message full name -> component name

    def message(self, message: Descriptor) -> JsonSchema:
        """A $ref to the message's schema (its JSON form, for a well-known type)."""
        if message.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[message.full_name])
        if message.full_name in _WRAPPERS:
            return self.field(message.fields_by_name["value"])
        name = self._names.get(message.full_name)
        if name is None:
            name = message.name if message.name not in self.components else message.full_name.replace(".", "_")
            self._names[message.full_name] = name
            self.components[name] = {}  # reserved first: recursive messages refer to it
            self.components[name] = self._define(message)
        return {"$ref": f"#/components/schemas/{name}"}

    def _define(self, message: Descriptor) -> JsonSchema:
        if any(len(oneof.fields) > 1 for oneof in message.oneofs):
            # The members of a oneof exclude each other: not expressed here (no RPC has one yet).
            raise NotImplementedError(f"{message.full_name}: oneof fields are not mapped to JSON Schema")
        return {
            "type": "object",
            "title": message.full_name,
            "properties": {f.name: self.field(f) for f in message.fields},
            "additionalProperties": False,
        }

    def field(self, field: FieldDescriptor) -> JsonSchema:
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            return {"type": "object", "additionalProperties": self.field(message.fields_by_name["value"])}
        single = self._single(field)
        return {"type": "array", "items": single} if field.is_repeated else single

    def _single(self, field: FieldDescriptor) -> JsonSchema:
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return {"type": "string", "enum": [value.name for value in field.enum_type.values]}
        return dict(_SCALARS[field.type])


def _version() -> str:
    try:
        return metadata.version("rewards")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _error_responses() -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, codes in error_statuses().items():
        responses[f"Error{status}"] = {
            "description": f"gRPC {' or '.join(codes)}",
            "headers": {TRACE_ID_HEADER: {"$ref": "#/components/headers/TraceId"}},
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}},
        }
    status, code = BODY_TOO_LARGE
    responses[f"Error{status}"] = {
        "description": f"{code.name}: the body is larger than the gateway accepts",
        "headers": {TRACE_ID_HEADER: {"$ref": "#/components/headers/TraceId"}},
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}},
    }
    return responses


def _error_schema() -> JsonSchema:
    return {
        "type": "object",
        "title": "Error",
        "description": "A failed call: the gRPC status code's name, its message, and the google.rpc status details "
        '(such as google.rpc.BadRequest), each with its "@type".',
        "properties": {
            "code": {"type": "string", "enum": [code.name for code in HTTP_STATUS if code.name != "OK"]},
            "message": {"type": "string"},
            "details": {
                "type": "array",
                "items": {"type": "object", "properties": {"@type": {"type": "string"}}, "required": ["@type"]},
            },
        },
        "required": ["code", "message", "details"],
        "additionalProperties": False,
    }


def _operation(route: Route, schemas: SchemaBuilder) -> dict[str, Any]:
    request = route.request_type
    parameters: list[dict[str, Any]] = []
    for param in route.path_params:
        parameters.append(
            {
                "name": param,
                "in": "path",
                "required": True,
                "schema": schemas.field(resolve_field(request, route.field_path(param))),
            }
        )
    for name in route.query:
        parameters.append(
            {"name": name, "in": "query", "required": False, "schema": schemas.field(resolve_field(request, name))}
        )
    if route.idempotency_field:
        parameters.append({"$ref": "#/components/parameters/IdempotencyKey"})
    parameters.append({"$ref": "#/components/parameters/TraceId"})
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "description": f"gRPC {route.grpc_method.lstrip('/')}.",
        "tags": [route.rpc.containing_service.name],
        "parameters": parameters,
    }
    body_type = route.body_type
    if body_type is not None:
        where = "the request" if route.body == "*" else f"the request's `{route.body}`"
        bound = [route.field_path(p) for p in route.path_params]
        note = (
            f" Fields the path sets ({', '.join(bound)}) may be left out; if given they must equal the path's."
            if bound
            else ""
        )
        operation["requestBody"] = {
            "required": True,
            "description": f"{body_type.full_name}: {where}.{note}",
            "content": {"application/json": {"schema": schemas.message(body_type)}},
        }
    responses: dict[str, Any] = {
        "200": {
            "description": route.response_type.full_name,
            "headers": {TRACE_ID_HEADER: {"$ref": "#/components/headers/TraceId"}},
            "content": {"application/json": {"schema": schemas.message(route.response_type)}},
        }
    }
    statuses = sorted([*error_statuses(), *([BODY_TOO_LARGE[0]] if body_type is not None else [])])
    for status in statuses:
        responses[str(status)] = {"$ref": f"#/components/responses/Error{status}"}
    operation["responses"] = responses
    return operation


def build_document(routes: tuple[Route, ...] = ROUTES) -> dict[str, Any]:
    schemas = SchemaBuilder()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.http_method.lower()] = _operation(route, schemas)
    idempotency_field = next(resolve_field(r.request_type, r.idempotency_field) for r in routes if r.idempotency_field)
    paths[HEALTH_PATH] = {
        "get": {
            "operationId": "Healthz",
            "summary": "The gateway is up",
            "tags": ["gateway"],
            "security": [],
            "responses": {
                "200": {
                    "description": "Serving",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"status": {"const": "SERVING"}},
                                "required": ["status"],
                                "additionalProperties": False,
                            }
                        }
                    },
                }
            },
        }
    }
    paths[OPENAPI_PATH] = {
        "get": {
            "operationId": "OpenApi",
            "summary": "This document",
            "tags": ["gateway"],
            "security": [],
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1",
                    "content": {"application/json": {"schema": {"type": "object", "required": ["openapi", "paths"]}}},
                }
            },
        }
    }
    if ERROR_SCHEMA in schemas.components:
        raise ValueError(f"a message is named {ERROR_SCHEMA!r}, like the error schema")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rewards gateway",
            "version": _version(),
            "description": "HTTP/JSON in front of the rewards gRPC services (XpService, AchievementsService, "
            "LevelsService), with the protobuf JSON mapping: proto field names, 64-bit integers "
            "as strings, fields at their default values included in responses. Errors carry the "
            "gRPC status code's name; HTTP statuses follow Google's mapping, with "
            "FAILED_PRECONDITION as 409.",
        },
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The token the services verify (role game or admin); passed on as gRPC "
                    "`authorization` metadata.",
                }
            },
            "parameters": {
                "IdempotencyKey": {
                    "name": IDEMPOTENCY_HEADER,
                    "in": "header",
                    "required": False,
                    "description": "Becomes the request's request_id: a repeat with the same key counts once. "
                    "A request_id in the body must then be absent or the same.",
                    "schema": {**schemas.field(idempotency_field), "minLength": 1},
                },
                "TraceId": {
                    "name": TRACE_ID_HEADER,
                    "in": "header",
                    "required": False,
                    "description": "Passed to the services as x-trace-id (their logs carry it); a new one is "
                    "made when absent or not of this form.",
                    "schema": {"type": "string", "pattern": TRACE_ID_PATTERN},
                },
            },
            "headers": {
                "TraceId": {
                    "description": "The trace id of the request, as the services logged it.",
                    "schema": {"type": "string", "pattern": TRACE_ID_PATTERN},
                }
            },
            "responses": _error_responses(),
            "schemas": {**schemas.components, ERROR_SCHEMA: _error_schema()},
        },
    }
