"""Domain error families. Services raise named subclasses; the gRPC edge maps
each family to one status code (common.grpc_edge)."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a caller can cause or must be told about."""


class InvalidField(DomainError):
    """A request field breaks a documented rule. Maps to INVALID_ARGUMENT."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field} {rule}")
        self.field = field
        self.rule = rule


class NotFound(DomainError):
    """Maps to NOT_FOUND."""


class PreconditionFailed(DomainError):
    """The request is valid but the state forbids it. Maps to FAILED_PRECONDITION.

    `violations` lists (subject, description) pairs for rich error details.
    """

    def __init__(self, message: str, violations: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.violations = violations or []


class DependencyUnavailable(DomainError):
    """Another service or DynamoDB could not be reached; retrying is safe. Maps to UNAVAILABLE."""


class ContentionExhausted(DomainError):
    """Too many concurrent writers on one item; retrying is safe. Maps to ABORTED."""


class DeadlineReached(DomainError):
    """The caller's deadline passed before the work was done. Maps to DEADLINE_EXCEEDED."""
