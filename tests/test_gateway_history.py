"""The gateway's routes for a player's XP history and an operator's
corrections, over real HTTP in front of real servers and DynamoDB Local:
GET /users/{user_id}/xp/history, POST /xp/adjust and POST /xp/revoke.

A revoke takes no Idempotency-Key: its request_id names the entry it
reverses, not the call, and a second revoke of an entry is a duplicate."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster import Cluster, unique
from tests.gateway_server import GatewayServer
from tests.test_gateway import ADMIN, GAME, call, error, field_violations, ok, put_activity, rpc_count

REVOKE_RPC = "/rewards.v1.XpService/RevokeAward"


@pytest.fixture(scope="module")
def gateway(cluster: Cluster) -> Iterator[GatewayServer]:
    """In front of the shared cluster: these tests only write their own users' XP."""
    server = GatewayServer.for_cluster(cluster).start()
    yield server
    server.stop()


def history(gateway: GatewayServer, user_id: str, page_size: int = 0, token: str = GAME) -> list[dict[str, Any]]:
    """Every entry of the user's history, page after page, as the gateway gives them."""
    entries: list[dict[str, Any]] = []
    query = f"page_size={page_size}" if page_size else ""
    for _ in range(100):
        page = ok(call(gateway, "GET", f"/users/{user_id}/xp/history?{query}", token=token))
        assert set(page) == {"entries", "next_page_token"}
        assert page_size == 0 or len(page["entries"]) <= page_size
        entries += page["entries"]
        if not page["next_page_token"]:
            return entries
        query = f"page_size={page_size}&page_token={page['next_page_token']}"
    raise AssertionError("the history does not end")


def grant(gateway: GatewayServer, user_id: str, amount: int, key: str) -> Any:
    body = {"user_id": user_id, "amount": str(amount), "reason": "setup"}
    return ok(call(gateway, "POST", "/xp/grant", body, token=ADMIN, headers={"Idempotency-Key": key}))


def adjust(gateway: GatewayServer, user_id: str, delta: int, key: str, **kwargs: Any) -> Any:
    body = {"user_id": user_id, "delta": str(delta), "reason": f"correction {key}"}
    return call(gateway, "POST", "/xp/adjust", body, headers={"Idempotency-Key": key}, **{"token": ADMIN, **kwargs})


def revoke(gateway: GatewayServer, user_id: str, **target: str) -> Any:
    return call(gateway, "POST", "/xp/revoke", {"user_id": user_id, "reason": "cheated", **target}, token=ADMIN)


def total_xp(gateway: GatewayServer, user_id: str) -> str:
    return str(ok(call(gateway, "GET", f"/users/{user_id}/progress"))["total_xp"])


def test_history_pages_newest_first(gateway: GatewayServer, user_id: str) -> None:
    activity_id = put_activity(gateway, xp=10)
    keys = [f"match-{n}" for n in range(7)]
    for key in keys:
        ok(
            call(
                gateway,
                "POST",
                "/xp/award",
                {"user_id": user_id, "activity_id": activity_id},
                headers={"Idempotency-Key": key},
            )
        )
    grant(gateway, user_id, 5, "bonus-1")

    entries = history(gateway, user_id, page_size=3)
    assert [e["request_id"] for e in entries] == ["bonus-1", *reversed(keys)]
    assert len({e["entry_id"] for e in entries}) == len(entries)  # no gaps, no repeats
    recorded = [e["recorded_at"] for e in entries]
    assert recorded == sorted(recorded, reverse=True) and all(t.endswith("Z") for t in recorded)
    # The proto3 JSON mapping: the enum's prefixed names, int64 as strings, every field.
    newest, oldest = entries[0], entries[-1]
    assert newest == {
        "entry_id": newest["entry_id"],
        "request_id": "bonus-1",
        "kind": "KIND_GRANT",
        "xp": "5",
        "activity_id": "",
        "achievement_id": "",
        "reason": "setup",
        "recorded_at": newest["recorded_at"],
        "capped": False,
        "reverses_entry_id": "",
    }
    assert (oldest["kind"], oldest["xp"], oldest["activity_id"], oldest["request_id"]) == (
        "KIND_ACTIVITY",
        "10",
        activity_id,
        "match-0",
    )
    # One page of the default size holds them all; an admin may read it too.
    assert history(gateway, user_id, token=ADMIN) == entries
    # A user with nothing has an empty history, not an error.
    assert ok(call(gateway, "GET", f"/users/{unique('nobody')}/xp/history")) == {"entries": [], "next_page_token": ""}

    bad_size = error(call(gateway, "GET", f"/users/{user_id}/xp/history?page_size=101"), 400, "INVALID_ARGUMENT")
    assert field_violations(bad_size)[0]["field"] == "page_size"
    error(call(gateway, "GET", f"/users/{user_id}/xp/history?page_token=not-a-token"), 400, "INVALID_ARGUMENT")
    error(call(gateway, "GET", f"/users/{user_id}/xp/history", token=None), 401, "UNAUTHENTICATED")


def test_adjust_up_and_down_counts_once_per_idempotency_key(gateway: GatewayServer, user_id: str) -> None:
    assert grant(gateway, user_id, 350, "setup-1")["level"] == 3

    up = ok(adjust(gateway, user_id, 50, "adjust-1"))
    assert (up["xp_awarded"], up["total_xp"], up["duplicate"]) == ("50", "400", False)
    again = ok(adjust(gateway, user_id, 50, "adjust-1"))
    assert (again["xp_awarded"], again["total_xp"], again["duplicate"]) == ("50", "400", True)

    # Taking XP away: the total goes down, the level reached stays.
    down = ok(adjust(gateway, user_id, -200, "adjust-2"))
    assert (down["xp_awarded"], down["total_xp"], down["level"], down["duplicate"]) == ("-200", "200", 3, False)
    again = ok(adjust(gateway, user_id, -200, "adjust-2"))
    assert (again["total_xp"], again["level"], again["duplicate"]) == ("200", 3, True)
    assert total_xp(gateway, user_id) == "200"
    assert ok(call(gateway, "GET", f"/users/{user_id}/progress"))["level"] == 3

    # The key of another correction: not a retry of this one.
    reused = error(adjust(gateway, user_id, -10, "adjust-2"), 409, "FAILED_PRECONDITION")
    assert "already used" in reused["message"]
    assert total_xp(gateway, user_id) == "200"

    adjustments = [e for e in history(gateway, user_id) if e["kind"] == "KIND_ADJUSTMENT"]
    assert [(e["request_id"], e["xp"], e["reason"]) for e in adjustments] == [
        ("adjust-2", "-200", "correction adjust-2"),
        ("adjust-1", "50", "correction adjust-1"),
    ]

    # 0 and a missing reason are refused, by field.
    zero = error(adjust(gateway, user_id, 0, "adjust-3"), 400, "INVALID_ARGUMENT")
    assert field_violations(zero)[0]["field"] == "delta"
    no_reason = {"user_id": user_id, "delta": "5"}
    refused = error(call(gateway, "POST", "/xp/adjust", no_reason, token=ADMIN), 400, "INVALID_ARGUMENT")
    assert field_violations(refused)[0]["field"] == "reason"


def test_a_negative_adjust_larger_than_the_total_is_409(gateway: GatewayServer, user_id: str) -> None:
    """FAILED_PRECONDITION is 409 in this gateway (gateway.status): the request is
    valid, the user's total forbids it. Nothing is written."""
    grant(gateway, user_id, 10, "setup-1")
    refused = error(adjust(gateway, user_id, -11, "too-much"), 409, "FAILED_PRECONDITION")
    assert refused["details"][0]["@type"] == "type.googleapis.com/google.rpc.PreconditionFailure"
    assert total_xp(gateway, user_id) == "10"
    assert [e["kind"] for e in history(gateway, user_id)] == ["KIND_GRANT"]
    # Down to zero exactly is allowed.
    assert ok(adjust(gateway, user_id, -10, "all-of-it"))["total_xp"] == "0"


def test_revoke_by_request_id_then_by_entry_id(gateway: GatewayServer, user_id: str) -> None:
    activity_id = put_activity(gateway, xp=150)
    award = {"user_id": user_id, "activity_id": activity_id}
    ok(call(gateway, "POST", "/xp/award", award, headers={"Idempotency-Key": "match-1"}))
    # Without a key: an entry without a request_id, which only its entry_id names.
    assert ok(call(gateway, "POST", "/xp/award", award))["total_xp"] == "300"

    first = ok(revoke(gateway, user_id, request_id="match-1"))
    assert (first["xp_awarded"], first["total_xp"], first["level"], first["duplicate"]) == ("-150", "150", 3, False)
    second = ok(revoke(gateway, user_id, request_id="match-1"))
    assert (second["total_xp"], second["level"], second["duplicate"]) == ("150", 3, True)

    unkeyed = next(e for e in history(gateway, user_id) if e["kind"] == "KIND_ACTIVITY" and not e["request_id"])
    by_entry = ok(revoke(gateway, user_id, entry_id=unkeyed["entry_id"]))
    assert (by_entry["total_xp"], by_entry["level"], by_entry["duplicate"]) == ("0", 3, False)
    assert ok(revoke(gateway, user_id, entry_id=unkeyed["entry_id"]))["duplicate"] is True
    assert total_xp(gateway, user_id) == "0"

    entries = history(gateway, user_id)
    revokes = [e for e in entries if e["kind"] == "KIND_REVOKE"]
    keyed = next(e for e in entries if e["request_id"] == "match-1")
    assert [(e["xp"], e["reverses_entry_id"], e["reason"]) for e in revokes] == [
        ("-150", unkeyed["entry_id"], "cheated"),
        ("-150", keyed["entry_id"], "cheated"),
    ]
    assert entries[:2] == revokes  # newest first

    # A revoke of a revoke: nothing to revoke.
    error(revoke(gateway, user_id, entry_id=revokes[0]["entry_id"]), 409, "FAILED_PRECONDITION")
    error(revoke(gateway, user_id, request_id="no-such-match"), 404, "NOT_FOUND")
    # Exactly one of request_id and entry_id.
    before = rpc_count(REVOKE_RPC)
    both = error(revoke(gateway, user_id, request_id="match-1", entry_id=unkeyed["entry_id"]), 400, "INVALID_ARGUMENT")
    neither = error(revoke(gateway, user_id), 400, "INVALID_ARGUMENT")
    assert field_violations(both)[0]["field"] == field_violations(neither)[0]["field"] == "request_id"
    assert rpc_count(REVOKE_RPC) == before + 2  # the service judged them: the gateway binds, no more


def test_a_revoke_takes_no_idempotency_key(gateway: GatewayServer, user_id: str) -> None:
    """Its request_id names the entry to revoke: the header does not fill it (it is
    ignored), so a key does not turn a revoke by entry_id into a request with both."""
    activity_id = put_activity(gateway, xp=40)
    ok(call(gateway, "POST", "/xp/award", {"user_id": user_id, "activity_id": activity_id}))
    entry_id = history(gateway, user_id)[0]["entry_id"]
    body = {"user_id": user_id, "entry_id": entry_id, "reason": "cheated"}
    revoked = ok(call(gateway, "POST", "/xp/revoke", body, token=ADMIN, headers={"Idempotency-Key": "revoke-1"}))
    assert (revoked["total_xp"], revoked["duplicate"]) == ("0", False)
    assert [e["request_id"] for e in history(gateway, user_id)] == ["", ""]


def test_corrections_take_an_admin(gateway: GatewayServer, user_id: str) -> None:
    grant(gateway, user_id, 100, "setup-1")
    refused = error(adjust(gateway, user_id, -50, "by-a-game", token=GAME), 403, "PERMISSION_DENIED")
    assert "may not call rewards.v1.XpService/AdjustXp" in refused["message"]
    refused = error(
        call(
            gateway,
            "POST",
            "/xp/revoke",
            {"user_id": user_id, "request_id": "setup-1", "reason": "mine"},
            token=GAME,
        ),
        403,
        "PERMISSION_DENIED",
    )
    assert "may not call rewards.v1.XpService/RevokeAward" in refused["message"]
    assert total_xp(gateway, user_id) == "100"
    # The history is the game's to read.
    assert [e["request_id"] for e in history(gateway, user_id, token=GAME)] == ["setup-1"]
