"""The deadline of the RPC being served, so that work done on its behalf
(calls to other services, DynamoDB requests and their retries) stops when
the caller has stopped waiting."""

from __future__ import annotations

import contextvars
import time

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("rpc_deadline", default=None)


def bind_deadline(time_remaining_s: float | None) -> contextvars.Token[float | None]:
    return _deadline.set(None if time_remaining_s is None else time.monotonic() + time_remaining_s)


def unbind_deadline(token: contextvars.Token[float | None]) -> None:
    _deadline.reset(token)


def remaining_s() -> float | None:
    """Seconds left before the served RPC's deadline; None when it has none
    (or when no RPC is being served)."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()
