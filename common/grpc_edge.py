"""The gRPC edge: named domain errors become status codes with rich details
(google.rpc.Status through grpcio-status), and shared message conversions."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from common.dynamodb import storage_error_as_domain_error
from common.errors import (
    ContentionExhausted,
    DeadlineReached,
    DependencyUnavailable,
    DomainError,
    InvalidField,
    NotFound,
    PreconditionFailed,
)
from common.models import LevelUpOutcome, Reward
from rewards.v1 import levels_pb2

log = logging.getLogger("rewards.edge")


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_for(error: DomainError) -> status_pb2.Status:
    message = str(error)
    if isinstance(error, InvalidField):
        details = error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.rule)]
        )
        return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[_pack(details)])
    if isinstance(error, NotFound):
        return status_pb2.Status(code=code_pb2.NOT_FOUND, message=message)
    if isinstance(error, PreconditionFailed):
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(type="REQUIREMENT", subject=s, description=d)
                for s, d in error.violations
            ]
        )
        return status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=message, details=[_pack(failure)])
    if isinstance(error, DependencyUnavailable):
        return status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message)
    if isinstance(error, ContentionExhausted):
        return status_pb2.Status(code=code_pb2.ABORTED, message=message)
    if isinstance(error, DeadlineReached):
        return status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED, message=message)
    return status_pb2.Status(code=code_pb2.INTERNAL, message=message)


Method = TypeVar("Method", bound=Callable[..., Any])


def maps_domain_errors(method: Method) -> Method:
    """Wraps a servicer method: domain errors, and storage errors the caller
    can retry, end the RPC with their status. Anything else is a bug and is
    left to gRPC, which answers UNKNOWN (logged by the interceptor)."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except DomainError as error:
            context.abort_with_status(rpc_status.to_status(status_for(error)))
        except Exception as error:
            translated = storage_error_as_domain_error(error)
            if translated is None:
                raise
            log.warning("storage unavailable", extra={"fields": {"error": repr(error)}})
            context.abort_with_status(rpc_status.to_status(status_for(translated)))

    return wrapper  # type: ignore[return-value]


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
