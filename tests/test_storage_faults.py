"""Faults that real DynamoDB produces and DynamoDB Local never does, injected
into the servers' own DynamoDB client with a before_send hook: the calls still
reach real servers and the emulator, except the ones the hook answers."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import grpc
from prometheus_client import REGISTRY

from common.channels import CLIENT_CHANNEL_OPTIONS
from common.dynamodb import DynamoDBClient, TransactionCancelled
from rewards.v1 import xp_pb2, xp_pb2_grpc
from tests.cluster import STANDARD_LEVELS, Cluster, authorized_channel, rpc_error

Factory = Callable[..., Cluster]


def dynamodb_counts() -> dict[tuple[str, str, str], float]:
    """This process's DynamoDB call outcomes and errors (the test clusters' servers run in it):
    (metric, operation, outcome or code) -> count."""
    counts: dict[tuple[str, str, str], float] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name in ("rewards_dynamodb_calls_total", "rewards_dynamodb_errors_total"):
                label = sample.labels.get("outcome") or sample.labels["code"]
                counts[(sample.name, sample.labels["operation"], label)] = sample.value
    return counts


def counted_since(before: dict[tuple[str, str, str], float]) -> dict[tuple[str, str, str], float]:
    """What was counted since `before`, without the zeros."""
    after = dynamodb_counts()
    return {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}


class CancelTransactions:
    """Answers some TransactWriteItems calls with TransactionCanceledException,
    as real DynamoDB does under contention, before they reach the emulator:
    every `every`-th new transaction is cancelled on its first `attempts`
    attempts (all of them when None). Per transaction, so that which retry
    lands where in a race cannot make a test flaky."""

    def __init__(self, reason: str, every: int, attempts: int | None = None) -> None:
        self.reason, self.every, self.attempts = reason, every, attempts
        self.calls = self.injected = 0
        self._cancelled: dict[str, int] = {}  # transaction (its items) -> attempts cancelled
        self._lock = threading.Lock()

    def __call__(self, action: str, payload: Mapping[str, Any]) -> None:
        if action != "TransactWriteItems":
            return
        items = payload["TransactItems"]
        # The items identify a transaction across its retries (each call has a new ClientRequestToken).
        transaction = json.dumps(items, sort_keys=True)
        with self._lock:
            self.calls += 1
            cancelled = self._cancelled.get(transaction)
            if cancelled is None and self.calls % self.every:
                return
            if cancelled is not None and self.attempts is not None and cancelled >= self.attempts:
                return
            self._cancelled[transaction] = (cancelled or 0) + 1
            self.injected += 1
        reasons = [{"Code": self.reason}] + [{"Code": "None"}] * (len(items) - 1)
        # What the client raises for DynamoDB's 400 answer, in its place.
        raise TransactionCancelled(
            "TransactionCanceledException",
            f"Transaction cancelled [{self.reason}]",
            {"CancellationReasons": reasons},
        )


def test_transaction_conflicts_are_retried_and_every_award_counts_once(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster()
    c.put_levels(STANDARD_LEVELS)
    # Every other transaction, awards and level-ups alike, conflicts twice before it goes through.
    conflicts = CancelTransactions("TransactionConflict", every=2, attempts=2)
    c.lean.before_send.append(conflicts)

    def grant(request_id: str) -> xp_pb2.AwardXpResponse:
        return c.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=25, reason="t", request_id=request_id))

    with ThreadPoolExecutor(max_workers=16) as pool:
        distinct = list(pool.map(grant, [f"d-{i}" for i in range(40)]))
        copies = list(pool.map(grant, ["same"] * 16))
    assert conflicts.injected >= 20
    assert not any(r.duplicate for r in distinct)
    assert sum(not r.duplicate for r in copies) == 1
    progress = c.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id))
    assert progress.total_xp == 41 * 25
    assert progress.level == 5
    assert sorted((r.reward_id, r.quantity) for r in progress.rewards) == sorted(
        [("coins", 100), ("coins", 200), ("chest", 1), ("coins", 300), ("title-veteran", 1)]
    )


def test_failed_conditions_are_counted_as_outcomes_not_errors(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster()
    grant = xp_pb2.GrantXpRequest(user_id=user_id, amount=5, reason="t", request_id="once")
    assert not c.xp.GrantXp(grant).duplicate
    before = dynamodb_counts()
    for _ in range(10):
        assert c.xp.GrantXp(grant).duplicate
    counted = counted_since(before)
    # Ten duplicates: ten transactions whose "not yet recorded" condition was false, and no error.
    assert counted[("rewards_dynamodb_calls_total", "TransactWriteItems", "condition_failed")] == 10
    assert not {key: n for key, n in counted.items() if key[0] == "rewards_dynamodb_errors_total"}
    assert not {key: n for key, n in counted.items() if key[2] in ("error", "deadline_exceeded")}


def test_throttled_transactions_are_unavailable_and_write_nothing(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster()
    throttled = CancelTransactions("ThrottlingError", every=1)
    c.lean.before_send.append(throttled)
    before = dynamodb_counts()
    error = rpc_error(
        lambda: c.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=5, reason="t", request_id="r"))
    )
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "throttling" in error.details()
    assert throttled.injected >= 1
    # A throttled transaction is an error, counted under its reason.
    counted = counted_since(before)
    assert counted[("rewards_dynamodb_errors_total", "TransactWriteItems", "ThrottlingError")] == throttled.injected
    assert counted[("rewards_dynamodb_calls_total", "TransactWriteItems", "error")] == throttled.injected
    assert ("rewards_dynamodb_errors_total", "TransactWriteItems", "TransactionCanceledException") not in counted
    assert c.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id)).total_xp == 0


def test_dynamodb_unreachable_is_unavailable(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster()
    dead = DynamoDBClient(replace(c.settings, dynamodb_endpoint="http://127.0.0.1:9"))
    c.stop("xp")
    c.start("xp", dynamodb=dead)  # XP restarts with a client of a closed port
    try:
        xp = c.xp.__class__(c.channel("xp"))
        before = dynamodb_counts()
        error = rpc_error(lambda: xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id), timeout=30))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "DynamoDB could not be reached" in error.details()
        # One call failed, after its three attempts (REWARDS_DYNAMODB_MAX_ATTEMPTS), each without a connection.
        counted = counted_since(before)
        assert [(key[1], n) for key, n in counted.items() if key[2] == "error"] == [("GetItem", 1)]
        assert [(key[1], n) for key, n in counted.items() if key[2] == "ConnectionError"] == [("GetItem", 3)]
    finally:
        c.loop.run(dead.close())


def test_a_throttled_answer_is_retried_by_the_callers_grpc_channel(new_cluster: Factory, user_id: str) -> None:
    """The service answers UNAVAILABLE with no headers before it, so a client
    with the recommended channel options (CLIENT_CHANNEL_OPTIONS) has gRPC
    retry it: the caller sees one success, and the XP counts once."""
    c = new_cluster()
    # The first transaction of the test is throttled on every attempt the service makes (its own
    # retries included); a retried gRPC call is a new award attempt, with items of its own, and goes through.
    throttled = CancelTransactions("ThrottlingError", every=10**9)
    throttled.calls = -1  # so that the first call counts as the every-th
    c.lean.before_send.append(throttled)
    with authorized_channel(f"localhost:{c.ports['xp']}", options=CLIENT_CHANNEL_OPTIONS) as channel:
        answer, call = xp_pb2_grpc.XpServiceStub(channel).GrantXp.with_call(
            xp_pb2.GrantXpRequest(user_id=user_id, amount=7, reason="t", request_id="once"), timeout=10
        )
    assert throttled.injected == 1
    assert (answer.xp_awarded, answer.total_xp, answer.duplicate) == (7, 7, False)
    assert any(key == "trace-id" for key, _ in call.initial_metadata())
