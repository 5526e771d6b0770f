"""The HTTP/JSON gateway over real HTTP, in front of real servers: every
route with real tokens, the error mapping, the OpenAPI document (and
schemathesis against it), and `python -m gateway` as a process."""

from __future__ import annotations

import contextlib
import http.client
import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from common.caller_auth import Role
from common.metrics import RPCS
from devcluster.dynamodb_local import LOCAL_CREDENTIALS, REPO_ROOT, free_port
from gateway.limits import (
    MAX_AUTHORIZATION_BYTES,
    MAX_BODY_BYTES,
    MAX_HEADER_FIELD_BYTES,
    MAX_HEADER_SECTION_BYTES,
    MAX_REQUEST_MESSAGE_BYTES,
)
from gateway.openapi import TRACE_ID_PATTERN, build_document
from gateway.routes import ALL_SERVICES, ROUTES, SERVICES, UNROUTED_RPCS, UNROUTED_SERVICES
from gateway.status import http_status
from rewards import v1 as rewards_v1
from rewards.v1 import xp_pb2
from tests.cluster import STANDARD_LEVELS, Cluster, mint_test_token, unique
from tests.gateway_server import GatewayServer, HttpResponse, http_call

ADMIN = mint_test_token(Role.ADMIN, "gateway-admin")
GAME = mint_test_token(Role.GAME, "gateway-game")

# What the issue asks for, written out (the route table must serve at least these).
EXPECTED_OPERATIONS = {
    ("POST", "/xp/award"),
    ("POST", "/xp/grant"),
    ("POST", "/achievements/unlock"),
    ("POST", "/levels/check-level-up"),
    ("GET", "/users/{user_id}/progress"),
    ("GET", "/users/{user_id}/achievements"),
    ("GET", "/users/{user_id}/achievements/progress"),
    ("GET", "/users/{user_id}/levels"),
    ("GET", "/users/{user_id}/xp/history"),
    ("POST", "/xp/adjust"),
    ("POST", "/xp/revoke"),
    ("GET", "/activities"),
    ("GET", "/activities/{activity_id}"),
    ("PUT", "/activities/{activity_id}"),
    ("DELETE", "/activities/{activity_id}"),
    ("GET", "/streaks"),
    ("GET", "/streaks/{streak_id}"),
    ("PUT", "/streaks/{streak_id}"),
    ("DELETE", "/streaks/{streak_id}"),
    ("GET", "/achievements"),
    ("GET", "/achievements/{achievement_id}"),
    ("GET", "/achievements/{achievement_id}/stats"),
    ("PUT", "/achievements/{achievement_id}"),
    ("DELETE", "/achievements/{achievement_id}"),
    ("GET", "/levels"),
    ("PUT", "/levels/{level}"),
    ("DELETE", "/levels/{level}"),
    ("GET", "/openapi.json"),
    ("GET", "/healthz"),
}


@pytest.fixture(scope="module")
def gateway_cluster(dynamodb_endpoint: str) -> Iterator[Cluster]:
    """A cluster of its own: these tests write the level table."""
    cluster = Cluster(dynamodb_endpoint)
    cluster.put_levels(STANDARD_LEVELS)
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def gateway(gateway_cluster: Cluster) -> Iterator[GatewayServer]:
    server = GatewayServer.for_cluster(gateway_cluster).start()
    yield server
    server.stop()


def call(
    gateway: GatewayServer, method: str, path: str, body: Any = None, *, token: str | None = GAME, **kwargs: Any
) -> HttpResponse:
    return http_call(gateway, method, path, body, token=token, **kwargs)


def ok(response: HttpResponse) -> Any:
    assert response.status == 200, (response.status, response.body)
    assert response.headers["content-type"] == "application/json"
    return response.json


def error(response: HttpResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, (response.status, response.body)
    assert response.headers["content-type"] == "application/json"
    body = response.json
    assert body["code"] == code, body
    assert set(body) == {"code", "message", "details"} and isinstance(body["message"], str)
    return body


def field_violations(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        v
        for d in body["details"]
        if d["@type"] == "type.googleapis.com/google.rpc.BadRequest"
        for v in d["field_violations"]
    ]


def rpc_count(method: str) -> float:
    """RPCs the in-process servers have served for `method`, every code."""
    return sum(
        sample.value
        for metric in RPCS.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("method") == method
    )


def put_activity(gateway: GatewayServer, xp: int = 150, category: str = "pvp") -> str:
    activity_id = unique("act")
    ok(
        call(
            gateway,
            "PUT",
            f"/activities/{activity_id}",
            {"name": "Win a match", "category": category, "xp": str(xp)},
            token=ADMIN,
        )
    )
    return activity_id


# --- the document -------------------------------------------------------------------------


def test_openapi_document_matches_the_routes(gateway: GatewayServer) -> None:
    document = ok(call(gateway, "GET", "/openapi.json", token=None))
    assert document["openapi"] == "3.1.0"
    served = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert served == {(r.http_method, r.path) for r in ROUTES} | {("GET", "/openapi.json"), ("GET", "/healthz")}
    assert served == EXPECTED_OPERATIONS

    schemas = document["components"]["schemas"]
    # The proto3 JSON mapping: int64 as a string, int32 as an integer, repeated as arrays,
    # messages as $refs, Timestamp as RFC 3339; proto field names; no other fields.
    award = schemas["AwardXpResponse"]
    assert (
        award["properties"]["xp_awarded"]["type"] == "string" and award["properties"]["xp_awarded"]["format"] == "int64"
    )
    assert award["properties"]["level"]["type"] == "integer"
    assert award["properties"]["level_up"] == {"$ref": "#/components/schemas/LevelUpResult"}
    assert award["additionalProperties"] is False
    assert schemas["ListActivitiesResponse"]["properties"]["activities"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Activity"},
    }
    assert schemas["UserProgress"]["properties"]["updated_at"] == {"type": "string", "format": "date-time"}
    # Fields added to the protos show in both forms, from the descriptors.
    assert award["properties"]["unlocked_achievements"] == {"type": "array", "items": {"type": "string"}}
    assert schemas["UnlockAchievementResponse"]["properties"]["also_unlocked"] == {
        "type": "array",
        "items": {"type": "string"},
    }
    assert schemas["Achievement"]["properties"]["auto_unlock"] == {"type": "boolean"}
    assert schemas["Requirements"]["properties"]["activity_counts"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/ActivityCount"},
    }
    assert set(schemas["ActivityCountInput"]["properties"]) == {"activity_id", "category", "count"}
    assert schemas["ActivityCountInput"]["required"] == ["count"]
    assert schemas["StreakLengthInput"]["required"] == ["streak_id", "length"]
    assert schemas["RequirementsInput"]["properties"]["streak_lengths"]["maxItems"] == 10
    # A streak's period: the two values the service takes, by name, not PERIOD_UNSPECIFIED.
    assert schemas["StreakInput"]["required"] == ["name", "period"]
    assert schemas["StreakInput"]["properties"]["period"]["enum"] == ["PERIOD_DAY", "PERIOD_WEEK"]
    assert set(schemas["StreakState"]["properties"]) == {"streak_id", "current", "best", "last_period_start"}
    assert {"auto_unlock", "requirements"} <= set(schemas["AchievementInput"]["properties"])
    assert set(schemas["AchievementProgress"]["properties"]) == {
        "achievement",
        "unlocked",
        "unlocked_at",
        "percent",
        "criteria",
        "unlock_rate",
    }
    assert set(schemas["AchievementStats"]["properties"]) == {
        "achievement_id",
        "unlocked_count",
        "players",
        "unlock_rate",
    }
    assert set(schemas["Activity"]["properties"]) == {"activity_id", "name", "description", "category", "xp", "cap"}
    # A nested enum: its values' prefixed names, which are their JSON names.
    assert schemas["LedgerEntry"]["properties"]["kind"] == {
        "type": "string",
        "enum": [
            "KIND_UNSPECIFIED",
            "KIND_ACTIVITY",
            "KIND_GRANT",
            "KIND_ACHIEVEMENT",
            "KIND_ADJUSTMENT",
            "KIND_REVOKE",
        ],
    }
    assert schemas["LedgerEntry"]["properties"]["xp"]["format"] == "int64"
    assert set(schemas["Error"]["required"]) == {"code", "message", "details"}

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in set(refs(document)):  # every $ref resolves
        target: Any = document
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]

    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        **document["components"]["securitySchemes"]["bearerAuth"],
        "type": "http",
        "scheme": "bearer",
    }
    # Every POST takes an Idempotency-Key but a revoke: its request_id names the entry it
    # reverses, not the call, and a second revoke of an entry is a duplicate anyway.
    without_key = {("POST", "/xp/revoke")}
    for route in ROUTES:
        operation = document["paths"][route.path][route.http_method.lower()]
        has_key = any(p.get("name") == "Idempotency-Key" and p["in"] == "header" for p in operation["parameters"])
        assert has_key == (route.http_method == "POST" and (route.http_method, route.path) not in without_key)
        assert has_key == (route.idempotency_field is not None), route.path
        assert {"200", "400", "401", "403", "404", "409", "503"} <= set(operation["responses"])
    assert document["paths"]["/healthz"]["get"]["security"] == []


def test_every_rpc_is_routed_or_said_not_to_be() -> None:
    routed = {f"{route.rpc.containing_service.name}/{route.rpc_name}" for route in ROUTES}
    every_rpc = {f"{service.name}/{method.name}" for service in ALL_SERVICES.values() for method in service.methods}
    assert routed | set(UNROUTED_RPCS) == every_rpc and not routed & set(UNROUTED_RPCS)
    assert "AchievementsService/UnlockDueAchievements" in UNROUTED_RPCS  # the service role's, not a web client's
    # Every service of the contract (each generated module of rewards/v1 that has one) is here.
    contract = {
        service.full_name
        for path in Path(rewards_v1.__file__).parent.glob("*_pb2.py")
        for service in importlib.import_module(f"rewards.v1.{path.stem}").DESCRIPTOR.services_by_name.values()
    }
    assert {s.full_name for s in ALL_SERVICES.values()} == contract
    # The Events service has no route (streaming, and admin webhooks: gRPC only for now), and the
    # gateway opens no channel to it.
    assert {f"EventsService/{m.name}" for m in UNROUTED_SERVICES["events"].methods} <= set(UNROUTED_RPCS)
    assert not {route.service for route in ROUTES} & set(UNROUTED_SERVICES)
    assert not set(SERVICES) & set(UNROUTED_SERVICES)


def test_healthz(gateway: GatewayServer) -> None:
    assert ok(call(gateway, "GET", "/healthz", token=None)) == {"status": "SERVING"}


# --- play ---------------------------------------------------------------------------------


def test_award_counts_once_per_idempotency_key(gateway: GatewayServer, gateway_cluster: Cluster, user_id: str) -> None:
    activity_id = put_activity(gateway, xp=150)
    first = call(
        gateway,
        "POST",
        "/xp/award",
        {"user_id": user_id, "activity_id": activity_id},
        headers={"Idempotency-Key": "match-1"},
    )
    award = ok(first)
    assert re.fullmatch(TRACE_ID_PATTERN, first.headers["trace-id"])
    assert award["user_id"] == user_id
    assert award["xp_awarded"] == "150" and award["total_xp"] == "150" and award["level"] == 2
    assert award["duplicate"] is False and award["level_check_deferred"] is False
    assert award["level_up"]["leveled_up"] is True and award["level_up"]["current_level"] == 2
    assert award["level_up"]["rewards"] == [{"reward_id": "coins", "quantity": "100"}]

    # A retry with the same key: counted once. The key may be repeated in the body.
    again = ok(
        call(
            gateway,
            "POST",
            "/xp/award",
            {"user_id": user_id, "activity_id": activity_id, "request_id": "match-1"},
            headers={"Idempotency-Key": "match-1"},
        )
    )
    assert again["duplicate"] is True and again["xp_awarded"] == "150" and again["total_xp"] == "150"
    # Another key counts again; so does a body's own request_id without the header.
    assert (
        ok(
            call(
                gateway,
                "POST",
                "/xp/award",
                {"user_id": user_id, "activity_id": activity_id},
                headers={"Idempotency-Key": "match-2"},
            )
        )["total_xp"]
        == "300"
    )
    assert (
        ok(
            call(
                gateway, "POST", "/xp/award", {"user_id": user_id, "activity_id": activity_id, "request_id": "match-3"}
            )
        )["total_xp"]
        == "450"
    )
    # The services saw the same thing.
    progress = gateway_cluster.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id))
    assert progress.total_xp == 450 and progress.level == 3

    # A body whose request_id is not the header's: refused before any call.
    before = rpc_count("/rewards.v1.XpService/AwardXp")
    conflict = error(
        call(
            gateway,
            "POST",
            "/xp/award",
            {"user_id": user_id, "activity_id": activity_id, "request_id": "match-9"},
            headers={"Idempotency-Key": "match-4"},
        ),
        400,
        "INVALID_ARGUMENT",
    )
    assert field_violations(conflict)[0]["field"] == "request_id"
    error(
        call(
            gateway,
            "POST",
            "/xp/award",
            {"user_id": user_id, "activity_id": activity_id},
            headers={"Idempotency-Key": ""},
        ),
        400,
        "INVALID_ARGUMENT",
    )
    assert rpc_count("/rewards.v1.XpService/AwardXp") == before


def test_progress_and_level_check(gateway: GatewayServer, user_id: str) -> None:
    empty = ok(call(gateway, "GET", f"/users/{user_id}/progress"))
    # Fields with no presence are always there; a message field that is unset (updated_at) is not.
    assert empty == {
        "user_id": user_id,
        "total_xp": "0",
        "level": 1,
        "unlocked_achievements": [],
        "rewards": [],
        "more_unlocked_achievements": False,
        "more_rewards": False,
        "streaks": [],
    }
    activity_id = put_activity(gateway, xp=320)
    ok(call(gateway, "POST", "/xp/award", {"user_id": user_id, "activity_id": activity_id}))
    progress = ok(call(gateway, "GET", f"/users/{user_id}/progress"))
    assert progress["total_xp"] == "320" and progress["level"] == 3
    assert progress["rewards"] == [{"reward_id": "coins", "quantity": "100"}, {"reward_id": "coins", "quantity": "200"}]
    assert progress["updated_at"].endswith("Z")

    check = ok(
        call(gateway, "POST", "/levels/check-level-up", {"user_id": user_id}, headers={"Idempotency-Key": "check-1"})
    )
    assert check == {
        "user_id": user_id,
        "leveled_up": False,
        "previous_level": 3,
        "current_level": 3,
        "total_xp": "320",
        "rewards": [],
        "next_level_xp": "600",
    }


def test_grant_takes_an_admin(gateway: GatewayServer, user_id: str) -> None:
    grant = {"user_id": user_id, "amount": "25", "reason": "tournament bonus"}
    granted = ok(call(gateway, "POST", "/xp/grant", grant, token=ADMIN, headers={"Idempotency-Key": "bonus-1"}))
    assert granted["xp_awarded"] == "25" and granted["total_xp"] == "25" and granted["duplicate"] is False
    assert (
        ok(call(gateway, "POST", "/xp/grant", grant, token=ADMIN, headers={"Idempotency-Key": "bonus-1"}))["duplicate"]
        is True
    )
    refused = error(call(gateway, "POST", "/xp/grant", grant, token=GAME), 403, "PERMISSION_DENIED")
    assert "may not call rewards.v1.XpService/GrantXp" in refused["message"]


def test_unlock_with_requirements(gateway: GatewayServer, user_id: str) -> None:
    achievement_id = unique("veteran")
    put = ok(
        call(
            gateway,
            "PUT",
            f"/achievements/{achievement_id}",
            {"name": "Veteran", "xp_reward": "50", "requirements": {"min_level": 3}},
            token=ADMIN,
        )
    )
    assert put["achievement_id"] == achievement_id and put["requirements"]["min_level"] == 3

    unmet = error(
        call(gateway, "POST", "/achievements/unlock", {"user_id": user_id, "achievement_id": achievement_id}),
        409,
        "FAILED_PRECONDITION",
    )
    assert unmet["details"][0]["@type"] == "type.googleapis.com/google.rpc.PreconditionFailure"
    assert unmet["details"][0]["violations"][0]["type"] == "REQUIREMENT"

    ok(call(gateway, "POST", "/xp/grant", {"user_id": user_id, "amount": "300", "reason": "setup"}, token=ADMIN))
    unlocked = ok(
        call(
            gateway,
            "POST",
            "/achievements/unlock",
            {"user_id": user_id, "achievement_id": achievement_id},
            headers={"Idempotency-Key": "unlock-1"},
        )
    )
    assert unlocked["already_unlocked"] is False and unlocked["xp_awarded"] == "50" and unlocked["total_xp"] == "350"
    assert unlocked["achievement"]["achievement_id"] == achievement_id
    repeat = ok(call(gateway, "POST", "/achievements/unlock", {"user_id": user_id, "achievement_id": achievement_id}))
    assert repeat["already_unlocked"] is True and repeat["xp_awarded"] == "0"

    mine = ok(call(gateway, "GET", f"/users/{user_id}/achievements"))
    assert mine["user_id"] == user_id
    assert [(a["achievement_id"], a["xp_reward"]) for a in mine["achievements"]] == [(achievement_id, "50")]
    assert mine["achievements"][0]["unlocked_at"].endswith("Z")
    assert ok(call(gateway, "GET", f"/users/{user_id}/progress"))["unlocked_achievements"] == [achievement_id]

    error(
        call(gateway, "POST", "/achievements/unlock", {"user_id": user_id, "achievement_id": unique("nope")}),
        404,
        "NOT_FOUND",
    )


# --- the catalog --------------------------------------------------------------------------


def test_activity_catalog_round_trip(gateway: GatewayServer) -> None:
    activity_id, category = unique("act"), unique("cat")
    stored = ok(
        call(
            gateway,
            "PUT",
            f"/activities/{activity_id}",
            {"name": "Capture the flag", "description": "3 flags", "category": category, "xp": 90},
            token=ADMIN,
        )
    )
    assert stored == {
        "activity_id": activity_id,
        "name": "Capture the flag",
        "description": "3 flags",
        "category": category,
        "xp": "90",
    }
    assert ok(call(gateway, "GET", f"/activities/{activity_id}")) == stored
    # The body may name the id too, if it is the path's.
    second = unique("act")
    ok(
        call(
            gateway,
            "PUT",
            f"/activities/{second}",
            {"activity_id": second, "name": "Second", "category": category},
            token=ADMIN,
        )
    )
    mismatch = error(
        call(gateway, "PUT", f"/activities/{second}", {"activity_id": "other", "name": "x"}, token=ADMIN),
        400,
        "INVALID_ARGUMENT",
    )
    assert field_violations(mismatch)[0]["field"] == "activity.activity_id"

    page = ok(call(gateway, "GET", f"/activities?category={category}&page_size=1"))
    assert len(page["activities"]) == 1 and page["next_page_token"]
    token = urllib.parse.quote(page["next_page_token"])
    rest = ok(call(gateway, "GET", f"/activities?category={category}&page_size=1&page_token={token}"))
    assert {a["activity_id"] for a in page["activities"] + rest["activities"]} == {activity_id, second}
    whole = ok(call(gateway, "GET", f"/activities?category={category}"))
    assert whole["next_page_token"] == ""
    assert sorted(whole["activities"], key=lambda a: a["activity_id"] != activity_id) == [
        stored,
        {"activity_id": second, "name": "Second", "description": "", "category": category, "xp": "0"},
    ]

    changed = ok(
        call(
            gateway, "PUT", f"/activities/{activity_id}", {"name": "CTF", "category": category, "xp": "95"}, token=ADMIN
        )
    )
    assert changed["xp"] == "95" and changed["description"] == ""
    assert ok(call(gateway, "DELETE", f"/activities/{activity_id}", token=ADMIN)) == {}
    error(call(gateway, "GET", f"/activities/{activity_id}"), 404, "NOT_FOUND")
    error(call(gateway, "DELETE", f"/activities/{activity_id}", token=ADMIN), 404, "NOT_FOUND")

    # An id with a slash, sent percent-encoded, is one path parameter.
    slashed = f"{unique('season')}/final"
    ok(call(gateway, "PUT", f"/activities/{urllib.parse.quote(slashed, safe='')}", {"name": "Final"}, token=ADMIN))
    assert ok(call(gateway, "GET", f"/activities/{urllib.parse.quote(slashed, safe='')}"))["activity_id"] == slashed
    ok(call(gateway, "DELETE", f"/activities/{urllib.parse.quote(slashed, safe='')}", token=ADMIN))
    # Sent as it is, the slash separates segments: no route has that path.
    error(call(gateway, "GET", f"/activities/{slashed}"), 404, "NOT_FOUND")


def test_streak_catalog_round_trip(gateway: GatewayServer, user_id: str) -> None:
    activity_id = put_activity(gateway, xp=10)
    streak_id, weekly = unique("streak"), unique("streak")
    stored = ok(
        call(
            gateway,
            "PUT",
            f"/streaks/{streak_id}",
            {"name": "A match a day", "activity_id": activity_id, "period": "PERIOD_DAY"},
            token=ADMIN,
        )
    )
    assert stored == {
        "streak_id": streak_id,
        "name": "A match a day",
        "activity_id": activity_id,
        "category": "",
        "period": "PERIOD_DAY",
    }
    assert ok(call(gateway, "GET", f"/streaks/{streak_id}")) == stored
    # The body may name the id too, if it is the path's.
    ok(
        call(
            gateway,
            "PUT",
            f"/streaks/{weekly}",
            {"streak_id": weekly, "name": "A pvp match a week", "category": "pvp", "period": "PERIOD_WEEK"},
            token=ADMIN,
        )
    )
    mismatch = error(
        call(
            gateway,
            "PUT",
            f"/streaks/{weekly}",
            {"streak_id": "other", "name": "x", "category": "pvp", "period": "PERIOD_WEEK"},
            token=ADMIN,
        ),
        400,
        "INVALID_ARGUMENT",
    )
    assert field_violations(mismatch)[0]["field"] == "streak.streak_id"

    listed: list[str] = []
    path = "/streaks?page_size=1"
    for _ in range(200):
        page = ok(call(gateway, "GET", path))
        assert len(page["streaks"]) <= 1
        listed += [s["streak_id"] for s in page["streaks"]]
        if not page["next_page_token"]:
            break
        path = f"/streaks?page_size=1&page_token={urllib.parse.quote(page['next_page_token'])}"
    assert {streak_id, weekly} <= set(listed)

    # A player's run shows in their progress.
    ok(call(gateway, "POST", "/xp/award", {"user_id": user_id, "activity_id": activity_id}))
    runs = {run["streak_id"]: run for run in ok(call(gateway, "GET", f"/users/{user_id}/progress"))["streaks"]}
    assert (runs[streak_id]["current"], runs[streak_id]["best"]) == ("1", "1")
    assert runs[streak_id]["last_period_start"].endswith("Z")
    assert (runs[weekly]["current"], runs[weekly]["best"]) == ("1", "1")  # put_activity's category is pvp

    # Exactly one of activity_id and category; a period, by name, of the two a streak takes.
    for body, field in (
        ({"name": "x", "period": "PERIOD_DAY"}, "streak.activity_id"),
        ({"name": "x", "activity_id": activity_id, "category": "pvp", "period": "PERIOD_DAY"}, "streak.activity_id"),
        ({"name": "x", "activity_id": activity_id}, "streak.period"),
        ({"name": "x", "activity_id": activity_id, "period": "PERIOD_UNSPECIFIED"}, "streak.period"),
        ({"name": "x", "activity_id": activity_id, "period": 1}, "period"),  # refused by the gateway
        ({"activity_id": activity_id, "period": "PERIOD_DAY"}, "streak.name"),
    ):
        refused = error(call(gateway, "PUT", f"/streaks/{unique('bad')}", body, token=ADMIN), 400, "INVALID_ARGUMENT")
        assert field_violations(refused)[0]["field"] == field, body
    # A streak keeps its period, even deleted.
    other_period = {"name": "A match a day", "activity_id": activity_id, "period": "PERIOD_WEEK"}
    error(call(gateway, "PUT", f"/streaks/{streak_id}", other_period, token=ADMIN), 409, "FAILED_PRECONDITION")
    refused = error(call(gateway, "DELETE", f"/streaks/{streak_id}", token=GAME), 403, "PERMISSION_DENIED")
    assert "may not call rewards.v1.XpService/DeleteStreak" in refused["message"]
    assert ok(call(gateway, "DELETE", f"/streaks/{streak_id}", token=ADMIN)) == {}
    error(call(gateway, "GET", f"/streaks/{streak_id}"), 404, "NOT_FOUND")
    error(call(gateway, "DELETE", f"/streaks/{streak_id}", token=ADMIN), 404, "NOT_FOUND")
    error(call(gateway, "PUT", f"/streaks/{streak_id}", other_period, token=ADMIN), 409, "FAILED_PRECONDITION")
    assert streak_id not in {
        run["streak_id"] for run in ok(call(gateway, "GET", f"/users/{user_id}/progress"))["streaks"]
    }
    ok(call(gateway, "DELETE", f"/streaks/{weekly}", token=ADMIN))


def test_an_encoded_slash_never_makes_a_path_another_routes(gateway: GatewayServer) -> None:
    """Routes are matched on the path as sent: /achievements/x%2Fstats is the achievement
    "x/stats", /achievements/x/stats the stats of "x"; /users/u%2Fachievements/progress is
    the progress of "u/achievements", /users/u/achievements/progress u's achievement progress."""
    base = unique("ach")
    for achievement_id in (base, f"{base}/stats"):
        ok(
            call(
                gateway,
                "PUT",
                f"/achievements/{urllib.parse.quote(achievement_id, safe='')}",
                {"name": "x"},
                token=ADMIN,
            )
        )
    got = ok(call(gateway, "GET", f"/achievements/{base}%2Fstats"))
    assert got["achievement_id"] == f"{base}/stats" and "name" in got
    stats = ok(call(gateway, "GET", f"/achievements/{base}/stats"))
    assert stats["achievement_id"] == base and set(stats) == {
        "achievement_id",
        "unlocked_count",
        "players",
        "unlock_rate",
    }
    assert ok(call(gateway, "GET", f"/achievements/{base}%2Fstats/stats"))["achievement_id"] == f"{base}/stats"
    # Lower-case escapes and percent-encoded unreserved characters mean the same.
    assert ok(call(gateway, "GET", f"/achievements/{base}%2fstats"))["achievement_id"] == f"{base}/stats"
    assert ok(call(gateway, "GET", f"/achievements/{base}/st%61ts"))["achievement_id"] == base

    user = unique("user")
    progress = ok(call(gateway, "GET", f"/users/{user}%2Fachievements/progress"))
    assert progress["user_id"] == f"{user}/achievements" and "total_xp" in progress
    listing = ok(call(gateway, "GET", f"/users/{user}/achievements/progress?page_size=1"))
    assert listing["user_id"] == user and "next_page_token" in listing
    mine = ok(call(gateway, "GET", f"/users/{user}%2Fprogress/achievements"))
    assert mine["user_id"] == f"{user}/progress" and mine["achievements"] == []
    for achievement_id in (base, f"{base}/stats"):
        ok(call(gateway, "DELETE", f"/achievements/{urllib.parse.quote(achievement_id, safe='')}", token=ADMIN))


def test_achievement_catalog_round_trip(gateway: GatewayServer) -> None:
    first, second = unique("ach"), unique("ach")
    stored = ok(
        call(
            gateway, "PUT", f"/achievements/{first}", {"name": "First", "xp_reward": "10", "hidden": True}, token=ADMIN
        )
    )
    assert stored == {
        "achievement_id": first,
        "name": "First",
        "description": "",
        "xp_reward": "10",
        "hidden": True,
        "requirements": {
            "required_achievements": [],
            "min_total_xp": "0",
            "min_level": 0,
            "activity_counts": [],
            "streak_lengths": [],
        },
        "auto_unlock": False,
    }
    ok(
        call(
            gateway,
            "PUT",
            f"/achievements/{second}",
            {
                "name": "Second",
                "requirements": {
                    "required_achievements": [first],
                    "min_total_xp": "100",
                    "streak_lengths": [
                        {"streak_id": "daily-play", "length": 3},
                        {"streak_id": "daily-play", "length": "5"},
                    ],
                },
            },
            token=ADMIN,
        )
    )
    got = ok(call(gateway, "GET", f"/achievements/{second}"))
    # Of two runs of one streak, the longer is kept.
    assert got["requirements"] == {
        "required_achievements": [first],
        "min_total_xp": "100",
        "min_level": 0,
        "activity_counts": [],
        "streak_lengths": [{"streak_id": "daily-play", "length": "5"}],
    }

    listed: list[str] = []
    path = "/achievements?page_size=1"
    for _ in range(100):
        page = ok(call(gateway, "GET", path))
        assert len(page["achievements"]) <= 1
        listed += [a["achievement_id"] for a in page["achievements"]]
        if not page["next_page_token"]:
            break
        path = f"/achievements?page_size=1&page_token={urllib.parse.quote(page['next_page_token'])}"
    assert {first, second} <= set(listed)

    assert ok(call(gateway, "DELETE", f"/achievements/{second}", token=ADMIN)) == {}
    error(call(gateway, "GET", f"/achievements/{second}"), 404, "NOT_FOUND")
    ok(call(gateway, "DELETE", f"/achievements/{first}", token=ADMIN))


def test_level_table_round_trip(gateway: GatewayServer) -> None:
    stored = ok(
        call(
            gateway,
            "PUT",
            "/levels/999",
            {"xp_required": "999999999", "rewards": [{"reward_id": "crown", "quantity": "1"}]},
            token=ADMIN,
        )
    )
    assert stored == {"level": 999, "xp_required": "999999999", "rewards": [{"reward_id": "crown", "quantity": "1"}]}
    levels = ok(call(gateway, "GET", "/levels"))["levels"]
    assert [level["level"] for level in levels] == [1, 2, 3, 4, 5, 999]
    assert levels[1] == {"level": 2, "xp_required": "100", "rewards": [{"reward_id": "coins", "quantity": "100"}]}
    error(call(gateway, "PUT", "/levels/999", {"level": 998, "xp_required": "1"}, token=ADMIN), 400, "INVALID_ARGUMENT")
    assert ok(call(gateway, "DELETE", "/levels/999", token=ADMIN)) == {}
    error(call(gateway, "DELETE", "/levels/999", token=ADMIN), 404, "NOT_FOUND")
    assert [level["level"] for level in ok(call(gateway, "GET", "/levels"))["levels"]] == [1, 2, 3, 4, 5]


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "headers", "field"),
    [
        (b'{"user_id": "u", "activity_id":', {}, "body"),  # malformed JSON
        (b'{"user_id": "u", "activity_id": "a", "points": 5}', {}, "body"),  # unknown field
        (b'{"user_id": 5, "activity_id": "a"}', {}, "body"),  # wrong type
        (b'{"user_id": "u", "user_id": "v"}', {}, "body"),  # duplicate key
        (b'["u", "a"]', {}, "body"),  # not an object
        (b"", {}, "body"),  # no body
        (b'{"user_id": "\xff"}', {}, "body"),  # not UTF-8
        (b'{"user_id": "u", "activity_id": "a"}', {"Authorization": "Bearer t\xe9"}, "Authorization"),
    ],
    ids=["malformed", "unknown-field", "wrong-type", "duplicate-key", "array", "empty", "not-utf8", "non-ascii-token"],
)
def test_bad_bodies_are_refused_by_the_gateway(
    gateway: GatewayServer, raw: bytes, headers: dict[str, str], field: str
) -> None:
    before = rpc_count("/rewards.v1.XpService/AwardXp")
    refused = error(
        call(
            gateway,
            "POST",
            "/xp/award",
            raw_body=raw,
            token=None if "Authorization" in headers else GAME,
            headers=headers,
        ),
        400,
        "INVALID_ARGUMENT",
    )
    assert field_violations(refused)[0]["field"] == field
    assert rpc_count("/rewards.v1.XpService/AwardXp") == before  # nothing reached the service


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/activities?page_size=abc", "page_size"),
        ("/activities?page_size=99999999999", "page_size"),
        ("/activities?limit=5", "limit"),
        ("/activities?page_size=1&page_size=2", "page_size"),
        ("/activities?category=caf%E9", "query"),  # Latin-1, not UTF-8: refused, not replaced
    ],
)
def test_bad_query_parameters_are_refused_by_the_gateway(gateway: GatewayServer, path: str, field: str) -> None:
    before = rpc_count("/rewards.v1.XpService/ListActivities")
    assert field_violations(error(call(gateway, "GET", path), 400, "INVALID_ARGUMENT"))[0]["field"] == field
    assert rpc_count("/rewards.v1.XpService/ListActivities") == before


def test_the_json_mapping_is_applied_strictly(gateway: GatewayServer) -> None:
    before = rpc_count("/rewards.v1.AchievementsService/PutAchievement")
    # json_format alone would read [] as an empty message.
    refused = error(
        call(gateway, "PUT", f"/achievements/{unique('a')}", {"name": "x", "requirements": []}, token=ADMIN),
        400,
        "INVALID_ARGUMENT",
    )
    assert "requirements must be a JSON object" in refused["message"]
    error(call(gateway, "PUT", "/levels/7", {"rewards": ["coins"]}, token=ADMIN), 400, "INVALID_ARGUMENT")
    error(call(gateway, "PUT", "/levels/7", {"xp_required": 1.5}, token=ADMIN), 400, "INVALID_ARGUMENT")
    assert rpc_count("/rewards.v1.AchievementsService/PutAchievement") == before
    # lowerCamelCase names are the JSON mapping's too, and are read.
    camel = ok(call(gateway, "PUT", f"/achievements/{unique('a')}", {"name": "x", "xpReward": "5"}, token=ADMIN))
    assert camel["xp_reward"] == "5"
    # A path that is not UTF-8 once percent-decoded is refused, not passed on with replacement characters.
    before = rpc_count("/rewards.v1.XpService/GetProgress")
    assert (
        field_violations(error(call(gateway, "GET", "/users/caf%E9/progress"), 400, "INVALID_ARGUMENT"))[0]["field"]
        == "path"
    )
    assert rpc_count("/rewards.v1.XpService/GetProgress") == before


def test_service_validation_comes_back_with_its_details(gateway: GatewayServer) -> None:
    before = rpc_count("/rewards.v1.XpService/AwardXp")
    refused = error(
        call(gateway, "POST", "/xp/award", {"user_id": "", "activity_id": "win-match"}), 400, "INVALID_ARGUMENT"
    )
    assert refused["message"] == "user_id is required"
    assert field_violations(refused) == [{"field": "user_id", "description": "is required", "reason": ""}]
    assert rpc_count("/rewards.v1.XpService/AwardXp") == before + 1
    too_long = error(
        call(gateway, "PUT", f"/activities/{unique('a')}", {"name": "x" * 201}, token=ADMIN), 400, "INVALID_ARGUMENT"
    )
    assert field_violations(too_long)[0]["field"] == "activity.name"


def test_tokens_pass_through(gateway: GatewayServer, user_id: str) -> None:
    missing = call(gateway, "GET", f"/users/{user_id}/progress", token=None)
    body = error(missing, 401, "UNAUTHENTICATED")
    assert "no authorization metadata" in body["message"]
    assert missing.headers["www-authenticate"] == "Bearer"
    # The header goes as it is: the service judges it (and says why).
    basic = error(
        call(gateway, "GET", f"/users/{user_id}/progress", token=None, headers={"Authorization": "Basic dXNlcjpwYXNz"}),
        401,
        "UNAUTHENTICATED",
    )
    assert "must be `Bearer <token>`" in basic["message"]
    error(call(gateway, "GET", f"/users/{user_id}/progress", token="not-a-jwt"), 401, "UNAUTHENTICATED")
    # A game token may not write the catalog or grant XP.
    refused = error(call(gateway, "PUT", "/activities/x", {"name": "X"}, token=GAME), 403, "PERMISSION_DENIED")
    assert "may not call rewards.v1.XpService/PutActivity" in refused["message"]
    error(
        call(gateway, "POST", "/xp/grant", {"user_id": user_id, "amount": "1", "reason": "r"}, token=GAME),
        403,
        "PERMISSION_DENIED",
    )


def test_not_found(gateway: GatewayServer, user_id: str) -> None:
    missing = error(call(gateway, "GET", f"/activities/{unique('missing')}"), 404, "NOT_FOUND")
    assert "not in the catalog" in missing["message"]
    error(call(gateway, "POST", "/xp/award", {"user_id": user_id, "activity_id": unique("missing")}), 404, "NOT_FOUND")


def test_unknown_routes_and_methods(gateway: GatewayServer) -> None:
    error(call(gateway, "GET", "/nowhere"), 404, "NOT_FOUND")
    error(call(gateway, "GET", "/xp/award/"), 404, "NOT_FOUND")
    wrong = call(gateway, "PATCH", "/activities/x", {"name": "x"})
    error(wrong, 405, "UNIMPLEMENTED")
    assert {m.strip() for m in wrong.headers["allow"].split(",")} >= {"GET", "PUT", "DELETE"}
    error(call(gateway, "GET", "/xp/award"), 405, "UNIMPLEMENTED")


def test_body_too_large(gateway: GatewayServer) -> None:
    big = json.dumps({"user_id": "u", "activity_id": "x" * MAX_BODY_BYTES}).encode()
    error(call(gateway, "POST", "/xp/award", raw_body=big), 413, "RESOURCE_EXHAUSTED")


def post_without_content_type(gateway: GatewayServer, path: str, body: bytes) -> HttpResponse:
    """A POST whose body has no Content-Type (http_call always sends one)."""
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Authorization", f"Bearer {GAME}")
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return HttpResponse(response.status, response.headers, response.read())
    finally:
        connection.close()


def test_a_body_that_is_not_application_json_is_415(gateway: GatewayServer, user_id: str) -> None:
    activity_id = put_activity(gateway, xp=10)
    award = json.dumps({"user_id": user_id, "activity_id": activity_id}).encode()
    form = urllib.parse.urlencode({"user_id": user_id, "activity_id": activity_id}).encode()
    before = rpc_count("/rewards.v1.XpService/AwardXp")
    refusals = [
        call(gateway, "POST", "/xp/award", raw_body=award, headers={"Content-Type": "text/plain"}),
        call(
            gateway, "POST", "/xp/award", raw_body=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
        ),
        call(
            gateway, "POST", "/xp/award", raw_body=award, headers={"Content-Type": "application/json; charset=latin-1"}
        ),
        call(gateway, "POST", "/xp/award", raw_body=award, headers={"Content-Type": ""}),
        post_without_content_type(gateway, "/xp/award", award),
    ]
    for refusal in refusals:
        refused = error(refusal, 415, "INVALID_ARGUMENT")
        assert "application/json" in refused["message"], refused
        assert [v["field"] for v in field_violations(refused)] == ["Content-Type"]
    assert "'text/plain' is not supported; send application/json" in refusals[0].json["message"]
    assert refusals[4].json["message"] == "Content-Type is missing; a body must be application/json"
    assert rpc_count("/rewards.v1.XpService/AwardXp") == before  # nothing reached the service
    assert ok(call(gateway, "GET", f"/users/{user_id}/progress"))["total_xp"] == "0"
    # A PUT's body too: nothing is written.
    activity = json.dumps({"name": "Plain"}).encode()
    error(
        call(
            gateway,
            "PUT",
            f"/activities/{activity_id}",
            raw_body=activity,
            token=ADMIN,
            headers={"Content-Type": "text/plain"},
        ),
        415,
        "INVALID_ARGUMENT",
    )
    assert ok(call(gateway, "GET", f"/activities/{activity_id}"))["xp"] == "10"

    # application/json in UTF-8, however written, is taken; so is a request without a body.
    for content_type in ("application/json; charset=utf-8", "Application/JSON", 'application/json;charset="UTF-8"'):
        ok(call(gateway, "POST", "/xp/award", raw_body=award, headers={"Content-Type": content_type}))
    assert ok(call(gateway, "GET", f"/users/{user_id}/progress"))["total_xp"] == "30"
    ok(call(gateway, "GET", "/levels", headers={"Content-Type": "text/plain"}))
    # No body and no Content-Type: the body is missing, not of another type.
    assert (
        field_violations(error(post_without_content_type(gateway, "/xp/award", b""), 400, "INVALID_ARGUMENT"))[0][
            "field"
        ]
        == "body"
    )


def test_a_request_message_over_the_services_limit_is_413(gateway: GatewayServer, user_id: str) -> None:
    """The issue's 1.5 MB body: under the body limit, over the gRPC message limit the services keep."""
    before = rpc_count("/rewards.v1.XpService/AwardXp")
    body = json.dumps({"user_id": user_id, "activity_id": "x" * 1_500_000}).encode()
    assert MAX_REQUEST_MESSAGE_BYTES < len(body) < MAX_BODY_BYTES
    refused = error(call(gateway, "POST", "/xp/award", raw_body=body), 413, "RESOURCE_EXHAUSTED")
    assert f"the services take at most {MAX_REQUEST_MESSAGE_BYTES} bytes" in refused["message"]
    assert rpc_count("/rewards.v1.XpService/AwardXp") == before
    # Over the body limit: the body is not even read to its end.
    big = json.dumps({"user_id": user_id, "activity_id": "x" * MAX_BODY_BYTES}).encode()
    refused = error(call(gateway, "POST", "/xp/award", raw_body=big), 413, "RESOURCE_EXHAUSTED")
    assert refused["message"] == f"the body is larger than {MAX_BODY_BYTES} bytes"


def test_oversized_header_fields_are_431(gateway: GatewayServer, user_id: str) -> None:
    # Over the Authorization limit, under the one of any field: the services would refuse it at random.
    token = "x" * (MAX_AUTHORIZATION_BYTES + 1)
    too_long = call(gateway, "GET", f"/users/{user_id}/progress", token=token)
    refused = error(too_long, 431, "RESOURCE_EXHAUSTED")
    assert refused["message"] == (
        f"the Authorization header field is {len('authorization') + len('Bearer ') + len(token)} bytes (name and "
        f"value); the gateway takes at most {MAX_AUTHORIZATION_BYTES} bytes, as it passes it on to the services "
        "as gRPC metadata"
    )
    assert re.fullmatch(TRACE_ID_PATTERN, too_long.headers["trace-id"])
    # Any other field over its limit, whatever the route (or none).
    padding = {"X-Padding": "p" * MAX_HEADER_FIELD_BYTES}
    for method, path in (("GET", "/levels"), ("GET", "/healthz"), ("GET", "/nowhere")):
        refused = error(call(gateway, method, path, headers=padding), 431, "RESOURCE_EXHAUSTED")
        assert refused["message"] == (
            f"the x-padding header field is {len('x-padding') + MAX_HEADER_FIELD_BYTES} bytes (name and value); "
            f"the gateway takes at most {MAX_HEADER_FIELD_BYTES} bytes a field"
        )
    # At the limits: served.
    ok(call(gateway, "GET", "/levels", headers={"X-Padding": "p" * (MAX_HEADER_FIELD_BYTES - len("x-padding"))}))


class SizeLimitedXpService:
    """An XpService stand-in with small gRPC limits (messages, metadata, concurrent calls): what
    the gateway answers when a service refuses with RESOURCE_EXHAUSTED."""

    MAX_MESSAGE_BYTES = 256
    MAX_METADATA_BYTES = 2048

    def __init__(self) -> None:
        self.holding = threading.Event()
        self.release = threading.Event()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            options=[
                ("grpc.max_receive_message_length", self.MAX_MESSAGE_BYTES),
                ("grpc.max_metadata_size", self.MAX_METADATA_BYTES),
                ("grpc.absolute_max_metadata_size", self.MAX_METADATA_BYTES),
            ],
            maximum_concurrent_rpcs=1,
        )
        handlers = {
            "AwardXp": grpc.unary_unary_rpc_method_handler(
                self.award_xp,
                request_deserializer=xp_pb2.AwardXpRequest.FromString,
                response_serializer=xp_pb2.AwardXpResponse.SerializeToString,
            ),
        }
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("rewards.v1.XpService", handlers)])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def award_xp(self, request: xp_pb2.AwardXpRequest, _context: grpc.ServicerContext) -> xp_pb2.AwardXpResponse:
        if request.activity_id == "hold":
            self.holding.set()
            self.release.wait(timeout=30)
        return xp_pb2.AwardXpResponse(user_id=request.user_id, xp_awarded=1, total_xp=1)


def test_resource_exhausted_from_a_size_limit_is_not_429(gateway_cluster: Cluster, user_id: str) -> None:
    service = SizeLimitedXpService()
    gateway = GatewayServer.for_cluster(gateway_cluster, xp_target=f"127.0.0.1:{service.port}").start()
    try:
        # Under the gateway's limits, over the service's: gRPC's refusals, not a rate limit.
        large = error(
            call(gateway, "POST", "/xp/award", {"user_id": user_id, "activity_id": "x" * 400}),
            413,
            "RESOURCE_EXHAUSTED",
        )
        assert "Received message larger than max" in large["message"]
        headers = error(
            call(gateway, "POST", "/xp/award", {"user_id": user_id, "activity_id": "a"}, token="x" * 3000),
            431,
            "RESOURCE_EXHAUSTED",
        )
        assert "metadata size exceeds" in headers["message"]

        # A concurrency limit stays 429: worth retrying.
        with futures.ThreadPoolExecutor(max_workers=1) as pool:
            held = pool.submit(call, gateway, "POST", "/xp/award", {"user_id": user_id, "activity_id": "hold"})
            assert service.holding.wait(timeout=30)
            busy = error(
                call(gateway, "POST", "/xp/award", {"user_id": user_id, "activity_id": "a"}), 429, "RESOURCE_EXHAUSTED"
            )
            assert busy["message"] == "Concurrent RPC limit exceeded!"
            service.release.set()
            assert ok(held.result(timeout=30))["xp_awarded"] == "1"
    finally:
        service.release.set()
        gateway.stop()
        service.server.stop(grace=None)
    # An answer over the gateway's own limit (64 MiB) is the service's fault, not the request's.
    answer_too_large = "Stream removed (CLIENT: Received message larger than max (67108865 vs. 67108864))"
    assert http_status(grpc.StatusCode.RESOURCE_EXHAUSTED, answer_too_large) == 500


def test_trace_id(gateway: GatewayServer) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    assert call(gateway, "GET", "/levels", headers={"traceparent": traceparent}).headers["trace-id"] == trace_id
    # Any other value is ignored, as the document says: a new trace is made.
    pattern = re.compile(TRACE_ID_PATTERN)
    made_ids = set()
    invalid = ("not ok!", "café", f"00-{'0' * 32}-00f067aa0ba902b7-01", f"00-{trace_id.upper()}-00f067aa0ba902b7-01")
    for other in invalid:
        answer = call(gateway, "GET", "/levels", headers={"traceparent": other})
        assert answer.status == 200, answer.body
        made = answer.headers["trace-id"]
        assert made != trace_id and pattern.fullmatch(made)
        made_ids.add(made)
    assert len(made_ids) == len(invalid)


def test_idempotency_key_must_be_printable_ascii(gateway: GatewayServer, user_id: str) -> None:
    """As the document's pattern says: a key in other bytes would be read as UTF-8 here and as
    Latin-1 by many clients, so that one key would have two spellings."""
    before = rpc_count("/rewards.v1.XpService/AwardXp")
    for key in ("caf\u00e9".encode().decode("latin-1"), "tab\there"):
        refused = error(
            call(
                gateway, "POST", "/xp/award", {"user_id": user_id, "activity_id": "a"}, headers={"Idempotency-Key": key}
            ),
            400,
            "INVALID_ARGUMENT",
        )
        assert field_violations(refused)[0]["field"] == "Idempotency-Key"
    assert rpc_count("/rewards.v1.XpService/AwardXp") == before


def test_unavailable_service_is_503(gateway_cluster: Cluster, user_id: str) -> None:
    down = GatewayServer.for_cluster(gateway_cluster, xp_target=f"127.0.0.1:{free_port()}").start()
    try:
        unavailable = error(
            call(down, "POST", "/xp/award", {"user_id": user_id, "activity_id": "a"}), 503, "UNAVAILABLE"
        )
        assert unavailable["message"]
        error(call(down, "GET", f"/users/{user_id}/progress"), 503, "UNAVAILABLE")
        # The other services are still served.
        assert [level["level"] for level in ok(call(down, "GET", "/levels"))["levels"]] == [1, 2, 3, 4, 5]
    finally:
        down.stop()


# --- the process --------------------------------------------------------------------------


@contextlib.contextmanager
def gateway_process(cluster: Cluster, log_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m gateway` in front of `cluster`, serving: its URL and process."""
    port = free_port()
    env = {
        **os.environ,
        **LOCAL_CREDENTIALS,
        "REWARDS_GATEWAY_HOST": "127.0.0.1",
        "REWARDS_GATEWAY_PORT": str(port),
        **{
            f"REWARDS_{name.upper()}_TARGET": f"localhost:{cluster.ports[name]}"
            for name in ("xp", "achievements", "levels")
        },
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway"], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if http_call(url, "GET", "/healthz", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


PROCESS_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def test_python_m_gateway_serves_and_stops_on_sigterm(gateway_cluster: Cluster, tmp_path: Any, user_id: str) -> None:
    log_path = tmp_path / "gateway.log"
    with gateway_process(gateway_cluster, log_path) as (url, process):
        traceparent = f"00-{PROCESS_TRACE_ID}-00f067aa0ba902b7-01"
        progress = http_call(url, "GET", f"/users/{user_id}/progress", token=GAME, headers={"traceparent": traceparent})
        assert progress.status == 200 and progress.json["total_xp"] == "0"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert lines and all(line["service"] == "gateway" for line in lines)
    request = next(line for line in lines if line.get("trace_id") == PROCESS_TRACE_ID)
    assert request["status"] == 200 and request["rpc"] == "/rewards.v1.XpService/GetProgress"
    assert request["route"] == "GET /users/{user_id}/progress" and request["code"] == "OK"


def test_python_m_gateway_answers_oversized_heads_with_431(gateway_cluster: Cluster, tmp_path: Any) -> None:
    """The issue's 20 KB Authorization header, and more header fields than the gateway takes in all,
    through uvicorn as `python -m gateway` configures it: h11's buffer for a head still arriving is above
    the gateway's limits, so a head that arrives in pieces gets the JSON 431 too, not h11's plain 400."""
    with gateway_process(gateway_cluster, tmp_path / "gateway.log") as (url, _process):
        refused = error(http_call(url, "GET", "/levels", token="x" * 20_000), 431, "RESOURCE_EXHAUSTED")
        assert f"at most {MAX_HEADER_FIELD_BYTES} bytes" in refused["message"]
        padding = {f"X-Padding-{i}": "p" * 6000 for i in range(3)}  # each under the field limit, over it in all
        refused = error(http_call(url, "GET", "/levels", token=GAME, headers=padding), 431, "RESOURCE_EXHAUSTED")
        assert f"at most {MAX_HEADER_SECTION_BYTES} bytes" in refused["message"]

        head = (
            "GET /levels HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
            + "".join(f"X-Padding-{i}: {'p' * 6000}\r\n" for i in range(5))
            + "\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30) as connection:
            connection.sendall(head[:20_000])  # more than h11's default buffer (16 KiB), and no end of head yet
            time.sleep(0.2)
            connection.sendall(head[20_000:])
            response = http.client.HTTPResponse(connection)
            response.begin()
            body = json.loads(response.read())
        assert response.status == 431 and response.getheader("content-type") == "application/json"
        assert body["code"] == "RESOURCE_EXHAUSTED" and str(MAX_HEADER_SECTION_BYTES) in body["message"]


# --- schemathesis -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed_gateway(dynamodb_endpoint: str) -> Iterator[GatewayServer]:
    """A cluster and gateway of their own: the generated calls write the catalog.
    The document schemathesis reads is the one this gateway serves."""
    cluster = Cluster(dynamodb_endpoint)
    cluster.put_levels(STANDARD_LEVELS)
    server = GatewayServer.for_cluster(cluster).start()
    served = http_call(server, "GET", "/openapi.json")
    assert served.status == 200 and served.json == json.loads(json.dumps(DOCUMENT))
    yield server
    server.stop()
    cluster.close()


# schemathesis reads the document at collection, before the gateway runs: the same
# document, built from the route table (the fixture checks that the gateway serves it).
# (schemathesis.pytest.from_fixture, which would read it from the running gateway,
# does not work with pytest 9: it sets Function._nodeid, which pytest 9 no longer has.)
DOCUMENT = build_document()
schema = schemathesis.openapi.from_dict(DOCUMENT)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,
    unsupported_method,
]


@schema.parametrize()
@settings(max_examples=8, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_schemathesis(case: Any, fuzzed_gateway: GatewayServer) -> None:
    case.call_and_validate(
        base_url=fuzzed_gateway.url, headers={"Authorization": f"Bearer {ADMIN}"}, checks=CHECKS, timeout=30
    )


@pytest.mark.parametrize("amount", ["1e3", "1_0", " 7", "0x10", "7.0"])
def test_an_integer_string_that_is_not_a_plain_decimal_is_refused(gateway: GatewayServer, amount: str) -> None:
    """json_format would read "1e3" as 1000 and "1_0" as 10: the gateway takes plain decimals only."""
    user_id = unique("gw-int")
    grant = {"user_id": user_id, "amount": amount, "reason": "support"}
    refused = error(call(gateway, "POST", "/xp/grant", grant, token=ADMIN), 400, "INVALID_ARGUMENT")
    assert field_violations(refused)[0]["field"] == "amount"
    assert ok(call(gateway, "GET", f"/users/{user_id}/progress"))["total_xp"] == "0"
