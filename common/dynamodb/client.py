"""The services' DynamoDB client: one per process, asyncio, lean.

Requests are the DynamoDB JSON API's own payloads (the shapes boto3's low-level
client takes), signed with aiodynamo's SigV4 and sent over one aiohttp
connection pool. boto3 only resolves the credentials, through the standard
chain (environment, profile, ECS task role, web identity). Measured on the
benchmark machine: boto3 costs about 1.2 ms of CPU per call, this about 0.3 ms
(docs/benchmarks.md).

Retries of throttling, 5xx and lost connections happen here, with jittered
backoff, within the served RPC's deadline: each attempt's timeout is cut to
what is left of it, and no attempt starts after it. A TransactWriteItems
carries a ClientRequestToken that its retries keep, so a retry after a lost
response is not applied twice (DynamoDB's idempotency window is 10 minutes).

Each call is counted once by outcome (ok, condition_failed, error,
deadline_exceeded); failed attempts by error code. A failed condition is an
answer the caller asked for (a duplicate, a lost race), not a failure. The
client also notes when DynamoDB last answered and last did not, which the
servers' health entries follow (common.server_runtime.DynamoDBHealthMonitor).
With tracing on, each call made for an RPC is a CLIENT span under the RPC's
(OpenTelemetry's AWS SDK conventions: `DynamoDB.<action>`, its tables), its
retries included."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import boto3
from aiodynamo.credentials import Key
from aiodynamo.sign import signed_dynamo_request
from botocore.credentials import RefreshableCredentials
from yarl import URL

from common.config import Settings
from common.errors import DeadlineReached
from common.metrics import DYNAMODB_CALLS, DYNAMODB_ERRORS, DYNAMODB_SECONDS
from common.rpc_deadline import remaining_s
from common.tracing import current_trace, end_span

# Load and transient faults, not bugs: worth another attempt.
RETRYABLE_ERROR_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionInProgressException",
        "ConnectionError",
        "Timeout",
    }
)
_ANSWER_MARGIN_S = 0.05
# Errors that mean no answer came (unlike an error answer, which shows DynamoDB is there).
_UNANSWERED_CODES = frozenset({"ConnectionError", "Timeout", "NoCredentials"})


class DynamoDBError(Exception):
    """DynamoDB answered an error (or could not be reached: code ConnectionError or Timeout)."""

    def __init__(self, code: str, message: str = "", body: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.body: Mapping[str, Any] = body or {}

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_ERROR_CODES


class ConditionalCheckFailed(DynamoDBError):
    """A single-item write's condition was false; `item` is the item as it was,
    when the request asked for it (ReturnValuesOnConditionCheckFailure=ALL_OLD)."""

    @property
    def item(self) -> dict[str, Any] | None:
        return self.body.get("Item")


@dataclass(frozen=True)
class CancellationReason:
    """Why one item of a cancelled transaction failed ('None' where it was fine),
    with the item as it was when the request asked for it."""

    code: str
    message: str = ""
    item: dict[str, Any] | None = None


class TransactionCancelled(DynamoDBError):
    """A transaction wrote nothing; `reasons` has one entry per item, in order."""

    @property
    def reasons(self) -> tuple[CancellationReason, ...]:
        return tuple(
            CancellationReason(r.get("Code", "None"), r.get("Message", "") or "", r.get("Item"))
            for r in self.body.get("CancellationReasons", ())
        )

    @property
    def codes(self) -> set[str]:
        return {r.code for r in self.reasons}

    @property
    def failure_codes(self) -> set[str]:
        """The reasons that are failures (a conflict, throttling, a bad item):
        neither a fine item ('None') nor a condition that was false."""
        return self.codes - {"None", "ConditionalCheckFailed"}


def _span_attributes(action: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """OpenTelemetry's attributes of a DynamoDB call (AWS SDK and DynamoDB semantic conventions)."""
    tables: set[str] = set()
    if "TableName" in payload:
        tables.add(payload["TableName"])
    tables.update(payload.get("RequestItems", ()))
    for item in payload.get("TransactItems", ()):
        for operation in item.values():
            tables.add(operation.get("TableName", ""))
    tables.discard("")
    return {
        "rpc.system": "aws-api",
        "rpc.service": "DynamoDB",
        "rpc.method": action,
        "db.system": "dynamodb",
        "db.system.name": "aws.dynamodb",
        "db.operation.name": action,
        "aws.dynamodb.table_names": sorted(tables),
    }


CallOutcome = Literal["ok", "condition_failed", "error", "deadline_exceeded"]


def _outcome_of(error: DynamoDBError) -> tuple[CallOutcome, str | None]:
    """A failed attempt's outcome, and the error code it counts under (None: not a failure)."""
    if isinstance(error, ConditionalCheckFailed):
        return "condition_failed", None
    if isinstance(error, TransactionCancelled):
        failures = error.failure_codes
        if not failures:
            return "condition_failed", None
        # The reason names the failure (TransactionConflict, ThrottlingError ...); one label per call.
        return "error", min(failures)
    return "error", error.code


@dataclass
class Reachability:
    """When an attempt last got an HTTP answer from DynamoDB (any status), and
    when one last got none (no connection, or nothing within its full
    timeout), by time.monotonic(). An attempt cut short by the caller's
    deadline says neither."""

    answered_at: float = -math.inf
    unanswered_at: float = -math.inf

    def answered_since(self, moment: float) -> bool:
        """True when DynamoDB answered after `moment` and nothing went unanswered after that answer."""
        return self.answered_at > moment and self.answered_at > self.unanswered_at


def _error_from(status: int, body: bytes) -> DynamoDBError:
    try:
        parsed = json.loads(body)
        code = str(parsed.get("__type", "")).rsplit("#", 1)[-1] or f"HTTP{status}"
        message = str(parsed.get("message") or parsed.get("Message") or "")
    except ValueError:
        parsed, code, message = (
            {},
            ("InternalServerError" if status >= 500 else f"HTTP{status}"),
            body[:200].decode("utf-8", "replace"),
        )
    if code == "ConditionalCheckFailedException":
        return ConditionalCheckFailed(code, message, parsed)
    if code == "TransactionCanceledException":
        return TransactionCancelled(code, message, parsed)
    if status >= 500 and code not in RETRYABLE_ERROR_CODES:
        code = "InternalServerError"
    return DynamoDBError(code, message, parsed)


class Boto3ChainCredentials:
    """The signing key from boto3's standard credential chain, refreshed (off
    the event loop) when temporary credentials near their expiry."""

    def __init__(self, session: boto3.session.Session | None = None) -> None:
        self._credentials = (session or boto3.session.Session()).get_credentials()
        self._key: Key | None = None

    async def key(self) -> Key:
        credentials = self._credentials
        if credentials is None:
            raise DynamoDBError("NoCredentials", "no AWS credentials found in the standard chain")
        if self._key is None or (isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed()):
            frozen = await asyncio.to_thread(credentials.get_frozen_credentials)
            self._key = Key(frozen.access_key, frozen.secret_key, frozen.token)
        return self._key


# Called before each attempt with (action, payload); may raise a DynamoDBError
# in place of DynamoDB's answer. Tests use it to inject faults, and to record calls.
BeforeSend = Callable[[str, Mapping[str, Any]], None]


class DynamoDBClient:
    """`await client.call("GetItem", {...})` returns DynamoDB's parsed answer or raises DynamoDBError."""

    def __init__(self, settings: Settings, credentials: Boto3ChainCredentials | None = None) -> None:
        self._region = settings.aws_region
        self._endpoint = URL(settings.dynamodb_endpoint) if settings.dynamodb_endpoint else None
        self._credentials = credentials or Boto3ChainCredentials()
        self._max_attempts = max(1, settings.dynamodb_max_attempts)
        self._connect_timeout_s = settings.dynamodb_connect_timeout_s
        self._read_timeout_s = settings.dynamodb_read_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self.before_send: list[BeforeSend] = []
        self.reachability = Reachability()

    def _http(self) -> aiohttp.ClientSession:
        # Made on first use, inside the event loop that serves the RPCs.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30, ttl_dns_cache=60),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        if action == "TransactWriteItems" and "ClientRequestToken" not in payload:
            payload = {**payload, "ClientRequestToken": uuid.uuid4().hex}
        started = time.perf_counter()
        outcome: CallOutcome = "error"
        trace = current_trace()
        span = None
        if trace is not None and trace.tracer is not None:
            span = trace.start_child(f"DynamoDB.{action}", _span_attributes(action, payload))
        failure = ""
        try:
            for attempt in range(self._max_attempts):
                try:
                    answer = await self._attempt(action, payload)
                    outcome = "ok"
                    return answer
                except DynamoDBError as error:
                    outcome, failure_code = _outcome_of(error)
                    if failure_code is not None:
                        DYNAMODB_ERRORS.labels(action, failure_code).inc()
                    failure = failure_code or ""
                    if not error.retryable or attempt + 1 == self._max_attempts:
                        raise
                    delay = random.uniform(0, 0.025 * 2**attempt)
                    left = remaining_s()
                    if left is not None and left <= delay + _ANSWER_MARGIN_S:
                        raise  # another attempt would start past the caller's deadline
                    await asyncio.sleep(delay)
                except DeadlineReached:
                    outcome = "deadline_exceeded"
                    raise
            raise AssertionError("unreachable")
        finally:
            DYNAMODB_CALLS.labels(action, outcome).inc()
            DYNAMODB_SECONDS.labels(action).observe(time.perf_counter() - started)
            if span is not None:
                # A failed condition is an answer the caller asked for, not an error of the call.
                span.set_attribute("rewards.dynamodb.outcome", outcome)
                end_span(span, "" if outcome in ("ok", "condition_failed") else failure or outcome)

    async def probe(self, action: str, payload: dict[str, Any], timeout_s: float) -> bool:
        """One attempt of `action`, not retried and counted in no call metric:
        True when DynamoDB answered within `timeout_s`, whatever the answer
        (an error answer is still an answer). For health checking."""
        try:
            await self._attempt(action, payload, timeout_s)
        except DynamoDBError as error:
            return error.code not in _UNANSWERED_CODES
        return True

    async def _attempt(self, action: str, payload: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        timeout = self._read_timeout_s if timeout_s is None else timeout_s
        left = remaining_s()
        cut_by_deadline = False
        if left is not None:
            # Stops a moment before the caller's deadline, so that the RPC can still answer DEADLINE_EXCEEDED.
            left -= _ANSWER_MARGIN_S
            if left <= 0:
                raise DeadlineReached("the caller's deadline passed before DynamoDB answered")
            cut_by_deadline = left < timeout
            timeout = min(timeout, left)
        for hook in self.before_send:
            hook(action, payload)
        try:
            # Refreshing credentials (from the ECS or EC2 metadata endpoint) may hang too.
            async with asyncio.timeout(timeout):
                key = await self._credentials.key()
        except TimeoutError as error:
            raise self._no_answer(cut_by_deadline, timeout, "credentials") from error
        url, headers, body = self._signed(key, action, payload)
        try:
            async with self._http().post(
                url,
                headers=headers,
                data=body,
                timeout=aiohttp.ClientTimeout(total=timeout, connect=min(self._connect_timeout_s, timeout)),
            ) as response:
                body = await response.read()
                status = response.status
        except TimeoutError as error:
            raise self._no_answer(cut_by_deadline, timeout, "DynamoDB") from error
        except aiohttp.ClientError as error:
            self.reachability.unanswered_at = time.monotonic()
            raise DynamoDBError("ConnectionError", f"{error.__class__.__name__}: {error}") from error
        self.reachability.answered_at = time.monotonic()
        if status == 200:
            parsed: dict[str, Any] = json.loads(body)
            return parsed
        raise _error_from(status, body)

    def _signed(self, key: Key, action: str, payload: dict[str, Any]) -> tuple[URL, dict[str, str], bytes]:
        request = signed_dynamo_request(
            key=key, payload=payload, action=action, region=self._region, endpoint=self._endpoint
        )
        return request.url, request.headers, request.body

    def _no_answer(self, cut_by_deadline: bool, timeout: float, what: str) -> Exception:
        if cut_by_deadline:
            # The caller's deadline, not DynamoDB, ended the wait: it says nothing of DynamoDB's health.
            return DeadlineReached(f"the caller's deadline passed before {what} answered")
        self.reachability.unanswered_at = time.monotonic()
        return DynamoDBError("Timeout", f"no answer from {what} within {timeout:.2f} s")
