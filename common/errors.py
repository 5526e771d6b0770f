"""Domain error families. Services raise named subclasses; each family carries
its gRPC status code (as google-api-core's exceptions do), and the one edge
interceptor ends the RPC with it (common.grpc_edge.status_for). Any other
exception is a bug: INTERNAL with an error id (common.grpc_edge.status_of_failure)."""

from __future__ import annotations

import grpc


class DomainError(Exception):
    """Base of every error a caller can cause or must be told about."""

    grpc_code = grpc.StatusCode.INTERNAL


class InvalidField(DomainError):
    """A request field breaks a documented rule. Maps to INVALID_ARGUMENT."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field} {rule}")
        self.field = field
        self.rule = rule


class NotFound(DomainError):
    """Maps to NOT_FOUND."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class PreconditionFailed(DomainError):
    """The request is valid but the state forbids it. Maps to FAILED_PRECONDITION.

    `violations` lists (subject, description) pairs for rich error details.
    """

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, violations: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.violations = violations or []


class PermissionRefused(DomainError):
    """The caller's role may not do this with these arguments. Maps to PERMISSION_DENIED."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class DependencyUnavailable(DomainError):
    """Another service or DynamoDB could not be reached; retrying is safe. Maps to UNAVAILABLE."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class ContentionExhausted(DomainError):
    """Too many concurrent writers on one item; retrying is safe. Maps to ABORTED."""

    grpc_code = grpc.StatusCode.ABORTED


class DeadlineReached(DomainError):
    """The caller's deadline passed before the work was done. Maps to DEADLINE_EXCEEDED."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class OutOfRange(DomainError):
    """A position the request names is past what is kept (a cursor older than
    the streams' retention). Maps to OUT_OF_RANGE."""

    grpc_code = grpc.StatusCode.OUT_OF_RANGE
