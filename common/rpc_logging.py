"""Logs as one JSON object a line, each carrying the fields of the RPC being
served: method, user id, request id and trace id."""

from __future__ import annotations

import contextvars
import logging
import sys
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

_rpc_fields: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar(
    # Never written: add_rpc_field writes only a dict bound by bind_rpc_fields.
    "rpc_fields",
    default={},  # noqa: B039
)


class _RpcFieldsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _rpc_fields.get().items():
            setattr(record, key, value)
        for key, value in getattr(record, "fields", {}).items():
            setattr(record, key, value)
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    root = logging.getLogger()
    root.handlers[:] = [json_log_handler(service, sys.stderr)]
    root.setLevel(level)


def json_log_handler(service: str, stream: TextIO) -> logging.Handler:
    """The handler configure_logging installs: one JSON object a line on
    `stream`, with the fields of the RPC being served."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            timestamp="ts",
            rename_fields={"levelname": "level", "name": "logger"},
            static_fields={"service": service},
            reserved_attrs=[*JsonFormatter().reserved_attrs, "fields"],
        )
    )
    handler.addFilter(_RpcFieldsFilter())
    return handler


def bind_rpc_fields(fields: dict[str, str]) -> contextvars.Token[dict[str, str]]:
    """Fields (method, user_id, request_id, trace_id) that every log line of this RPC carries."""
    return _rpc_fields.set(fields)


def unbind_rpc_fields(token: contextvars.Token[dict[str, str]]) -> None:
    _rpc_fields.reset(token)


def add_rpc_field(name: str, value: str) -> None:
    """Adds a field to the log lines of the RPC being served (from here on,
    and its final `rpc` line)."""
    fields = _rpc_fields.get()
    if fields:  # only inside an RPC: never write to the shared default
        fields[name] = value
