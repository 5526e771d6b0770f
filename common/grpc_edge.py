"""The gRPC edge: named domain errors become status codes with rich details
(google.rpc.Status through grpcio-status), any other error INTERNAL with an
error id, and shared message conversions."""

from __future__ import annotations

import logging
import uuid
from typing import Any, NamedTuple

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from common.dynamodb import storage_error_as_domain_error
from common.errors import DomainError, InvalidField, PreconditionFailed
from common.models import LevelUpOutcome, Reward
from common.periods import DAY, WEEK
from common.streaks import Streak
from rewards.v1 import levels_pb2, xp_pb2

log = logging.getLogger("rewards.edge")
# Hex digits of an unexpected error's id: short enough to read out, unique enough to find in the logs.
ERROR_ID_LENGTH = 12


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_for(error: DomainError) -> status_pb2.Status:
    """The google.rpc.Status of a domain error: its family's code, its message,
    and the details that name the field or rule."""
    status = status_pb2.Status(code=error.grpc_code.value[0], message=str(error))
    if isinstance(error, InvalidField):
        details: Any = error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.rule)]
        )
        status.details.append(_pack(details))
    elif isinstance(error, PreconditionFailed):
        details = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(type="REQUIREMENT", subject=s, description=d)
                for s, d in error.violations
            ]
        )
        status.details.append(_pack(details))
    return status


class FailureStatus(NamedTuple):
    """How a failed RPC ends: its status and, for an unexpected error (a bug),
    the id that names it both in the status message and on the RPC's log line."""

    status: status_pb2.Status
    error_id: str = ""


def status_of_failure(error: Exception) -> FailureStatus:
    """The status every failed RPC ends with: a domain error's; UNAVAILABLE
    for a storage error the caller can retry; INTERNAL with a new error id for
    anything else. Never UNKNOWN, and a bug's own message (which may quote
    stored data or internals) stays in the log."""
    if isinstance(error, DomainError):
        return FailureStatus(status_for(error))
    translated = storage_error_as_domain_error(error)
    if translated is not None:
        log.warning("storage unavailable", extra={"fields": {"error": repr(error)}})
        return FailureStatus(status_for(translated))
    error_id = uuid.uuid4().hex[:ERROR_ID_LENGTH]
    message = f"internal error (error id {error_id}); the service logged the details under this id"
    return FailureStatus(status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message=message), error_id)


def level_up_to_message(outcome: LevelUpOutcome) -> levels_pb2.LevelUpResult:
    return levels_pb2.LevelUpResult(
        user_id=outcome.user_id,
        leveled_up=outcome.leveled_up,
        previous_level=outcome.previous_level,
        current_level=outcome.current_level,
        total_xp=outcome.total_xp,
        rewards=[levels_pb2.Reward(reward_id=r.reward_id, quantity=r.quantity) for r in outcome.rewards],
        next_level_xp=outcome.next_level_xp,
    )


def level_up_from_message(message: levels_pb2.LevelUpResult) -> LevelUpOutcome:
    return LevelUpOutcome(
        user_id=message.user_id,
        leveled_up=message.leveled_up,
        previous_level=message.previous_level,
        current_level=message.current_level,
        total_xp=message.total_xp,
        rewards=tuple(Reward(r.reward_id, r.quantity) for r in message.rewards),
        next_level_xp=message.next_level_xp,
    )


_PERIODS = {xp_pb2.PERIOD_DAY: DAY, xp_pb2.PERIOD_WEEK: WEEK}
_PERIOD_VALUES = {period: value for value, period in _PERIODS.items()}


def period_from_message(period: xp_pb2.Period.ValueType) -> str:
    """common.periods' DAY or WEEK; "" for PERIOD_UNSPECIFIED or a value this version does not know."""
    return _PERIODS.get(period, "")


def period_to_message(period: str) -> xp_pb2.Period.ValueType:
    return _PERIOD_VALUES.get(period, xp_pb2.PERIOD_UNSPECIFIED)


def streak_to_message(streak: Streak) -> xp_pb2.Streak:
    return xp_pb2.Streak(
        streak_id=streak.streak_id,
        name=streak.name,
        activity_id=streak.activity_id,
        category=streak.category,
        period=period_to_message(streak.period),
    )
