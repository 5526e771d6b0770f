"""Who may call what: bearer tokens and roles, against real servers.

A missing or bad token is UNAUTHENTICATED, a role that may not call the method
is PERMISSION_DENIED, and neither writes anything. Health checks need no
token; calls between services carry each service's own token."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common.caller_auth import (
    METHOD_ROLES,
    AuthNotConfigured,
    Role,
    TokenAuthority,
    TokenRefused,
    bearer_token,
)
from devcluster.dynamodb_local import REPO_ROOT, free_port
from rewards.v1 import achievements_pb2, events_pb2, events_pb2_grpc, levels_pb2, xp_pb2, xp_pb2_grpc
from tests.cluster import STANDARD_LEVELS, TEST_AUTH_SECRET, Cluster, mint_test_token, unique

Factory = Callable[..., Cluster]
OTHER_SECRET = "another-deployment-" + "fedcba9876543210" * 2
SERVICES = {"xp": xp_pb2, "achievements": achievements_pb2, "levels": levels_pb2}


def with_token(token: str | None) -> list[tuple[str, str]]:
    return [] if token is None else [("authorization", f"Bearer {token}")]


def forged(**claims: Any) -> str:
    now = int(time.time())
    body = {"iss": "rewards", "sub": "forger", "role": "admin", "iat": now, "exp": now + 600, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, TEST_AUTH_SECRET, algorithm="HS256")


# --- tokens, pure ------------------------------------------------------------------------


def test_a_minted_token_verifies_to_its_subject_and_role() -> None:
    authority = TokenAuthority(TEST_AUTH_SECRET)
    caller = authority.verify(authority.mint(Role.GAME, "studio-eu-1", 60))
    assert (caller.subject, caller.role) == ("studio-eu-1", Role.GAME)


@pytest.mark.parametrize(
    "token, reason",
    [
        (forged(exp=int(time.time()) - 120), "token has expired; mint a new one"),
        (forged(exp=None), "token lacks the 'exp' claim"),
        (forged(iat=None), "token lacks the 'iat' claim"),
        (forged(role=None), "token lacks the 'role' claim"),
        (forged(role="root"), "token role 'root' is none of game, admin, service"),
        (forged(iss="someone-else"), "token was not issued by 'rewards'"),
        (
            TokenAuthority(OTHER_SECRET).mint(Role.ADMIN, "x", 60),
            "token signature does not match this deployment's key",
        ),
        ("not-a-jwt", "token is not a valid JWT (DecodeError)"),
        # The "none" algorithm must never be accepted.
        (
            jwt.encode(
                {"iss": "rewards", "sub": "x", "role": "admin", "exp": int(time.time()) + 60}, None, algorithm="none"
            ),
            "token is not a valid JWT (InvalidAlgorithmError)",
        ),
    ],
)
def test_bad_tokens_are_refused_with_the_reason(token: str, reason: str) -> None:
    with pytest.raises(TokenRefused) as refused:
        TokenAuthority(TEST_AUTH_SECRET).verify(token)
    assert str(refused.value) == reason


def test_during_a_rotation_both_keys_verify_and_the_new_one_signs() -> None:
    old, new = TokenAuthority(OTHER_SECRET), TokenAuthority(TEST_AUTH_SECRET, previous_secrets=[OTHER_SECRET])
    assert new.verify(old.mint(Role.GAME, "old", 60)).subject == "old"
    assert TokenAuthority(TEST_AUTH_SECRET).verify(new.mint(Role.GAME, "new", 60)).subject == "new"


def test_short_keys_are_refused() -> None:
    with pytest.raises(AuthNotConfigured, match="at least 32 characters"):
        TokenAuthority("too-short")


@pytest.mark.parametrize(
    "metadata, reason",
    [
        ([], "no authorization metadata; send `authorization: Bearer <token>`"),
        ([("authorization", "Basic dXNlcjpwYXNz")], "authorization metadata must be `Bearer <token>`"),
        ([("authorization", "Bearer ")], "authorization metadata must be `Bearer <token>`"),
        ([("authorization", "Bearer a"), ("authorization", "Bearer b")], "more than one authorization metadata entry"),
    ],
)
def test_the_header_must_be_one_bearer_token(metadata: list[tuple[str, str]], reason: str) -> None:
    with pytest.raises(TokenRefused) as refused:
        bearer_token(metadata)
    assert str(refused.value) == reason


def test_every_contract_method_has_roles_and_admin_may_call_it() -> None:
    served = {
        f"/{service.full_name}/{method.name}"
        for module in (*SERVICES.values(), events_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert served <= set(METHOD_ROLES)
    assert all(Role.ADMIN in METHOD_ROLES[m] for m in served)
    # What a game server may not do: change the catalog, grant XP or unlock for other reasons than its own calls.
    assert {m.rsplit("/", 1)[1] for m in served if Role.GAME not in METHOD_ROLES[m]} == {
        "PutActivity",
        "DeleteActivity",
        "GrantXp",
        "AdjustXp",
        "RevokeAward",
        "PutStreak",
        "DeleteStreak",
        "UnlockDueAchievements",
        "PutAchievement",
        "DeleteAchievement",
        "PutLevel",
        "DeleteLevel",
        "PutWebhook",
        "ListWebhooks",
        "DeleteWebhook",
        "ListFailedDeliveries",
        "RedeliverEvents",
    }
    assert {m.rsplit("/", 1)[1] for m in served if Role.SERVICE in METHOD_ROLES[m]} == {
        "GrantXp",
        "CheckLevelUp",
        "UnlockDueAchievements",
        "WatchEvents",  # every user's events: a backend's
    }


# --- against the servers -----------------------------------------------------------------


def stub_of(cluster: Cluster, service: str) -> Any:
    module = SERVICES[service]
    grpc_module = __import__(f"rewards.v1.{service}_pb2_grpc", fromlist=["_"])
    (service_descriptor,) = module.DESCRIPTOR.services_by_name.values()
    return getattr(grpc_module, f"{service_descriptor.name}Stub")(cluster.channel(service, role=None))


@pytest.mark.parametrize(
    "token, message",
    [
        (None, "authorization: no authorization metadata; send `authorization: Bearer <token>`"),
        ("garbage", "authorization: token is not a valid JWT (DecodeError)"),
        (
            TokenAuthority(OTHER_SECRET).mint(Role.ADMIN, "x", 60),
            "authorization: token signature does not match this deployment's key",
        ),
        (forged(exp=int(time.time()) - 120), "authorization: token has expired; mint a new one"),
        (
            forged(exp=int(time.time()) + 36500 * 86400),
            "authorization: token lifetime (exp - iat) of 36500d exceeds the 90d maximum for role 'admin' "
            "(REWARDS_AUTH_ADMIN_TOKEN_MAX_LIFETIME_S); mint a shorter one",
        ),
        # 4 KB: within gRPC's own metadata limit (8 KB), which answers RESOURCE_EXHAUSTED past it.
        (forged(sub="x" * 4096), "authorization: token 'sub' claim is 4096 characters long; at most 128"),
    ],
)
def test_an_award_without_a_good_token_is_unauthenticated_and_writes_nothing(
    cluster: Cluster, user_id: str, token: str | None, message: str
) -> None:
    xp = stub_of(cluster, "xp")
    request = xp_pb2.AwardXpRequest(user_id=user_id, activity_id="missing-is-fine", request_id="r1")
    with pytest.raises(grpc.RpcError) as refused:
        xp.GrantXp(
            xp_pb2.GrantXpRequest(user_id=user_id, amount=50, reason="t", request_id="r1"),
            metadata=with_token(token),
            timeout=10,
        )
    assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, message)
    with pytest.raises(grpc.RpcError) as refused:
        xp.AwardXp(request, metadata=with_token(token), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Nothing was written: the same request id counts in full afterwards.
    granted = cluster.xp.GrantXp(
        xp_pb2.GrantXpRequest(user_id=user_id, amount=50, reason="t", request_id="r1"), timeout=10
    )
    assert (granted.duplicate, granted.xp_awarded, granted.total_xp) == (False, 50, 50)


def test_a_game_token_awards_and_reads_but_may_not_grant_or_change_the_catalog(cluster: Cluster, user_id: str) -> None:
    xp = stub_of(cluster, "xp")
    game = with_token(mint_test_token(Role.GAME, subject="game-server-1"))
    activity_id = unique("auth-activity")
    cluster.xp.PutActivity(
        xp_pb2.PutActivityRequest(activity=xp_pb2.Activity(activity_id=activity_id, name="A", xp=30))
    )
    awarded = xp.AwardXp(
        xp_pb2.AwardXpRequest(user_id=user_id, activity_id=activity_id, request_id="m1"), metadata=game, timeout=10
    )
    assert (awarded.xp_awarded, awarded.total_xp) == (30, 30)

    with pytest.raises(grpc.RpcError) as refused:
        xp.GrantXp(
            xp_pb2.GrantXpRequest(user_id=user_id, amount=1000, reason="cheat", request_id="g1"),
            metadata=game,
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == "role 'game' may not call rewards.v1.XpService/GrantXp; it takes admin or service"
    new_id = unique("auth-new")
    with pytest.raises(grpc.RpcError) as refused:
        xp.PutActivity(
            xp_pb2.PutActivityRequest(activity=xp_pb2.Activity(activity_id=new_id, name="N", xp=5)),
            metadata=game,
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Neither refusal wrote anything.
    assert cluster.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id)).total_xp == 30
    with pytest.raises(grpc.RpcError) as missing:
        cluster.xp.GetActivity(xp_pb2.GetActivityRequest(activity_id=new_id))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def assert_roles_as_the_table_says(stub: Any, module: Any, descriptor: Any) -> None:
    """Empty requests (one user's watch for a stream): a served call is then INVALID_ARGUMENT (or OK for a
    list, DEADLINE_EXCEEDED for a watch that saw no event), never an auth refusal; a refused call never
    reaches validation."""
    for method in descriptor.methods:
        request = getattr(module, method.input_type.name)()
        if method.server_streaming:
            request.user_id = "a-player"  # one user's events: what a game token may watch
        for role in Role:
            try:
                timeout = 2 if method.server_streaming else 10
                answer = getattr(stub, method.name)(
                    request, metadata=with_token(mint_test_token(role)), timeout=timeout
                )
                if method.server_streaming:
                    next(iter(answer))
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
            if role in METHOD_ROLES[f"/{descriptor.full_name}/{method.name}"]:
                assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), (
                    method.full_name,
                    role,
                    code,
                )
            else:
                assert code == grpc.StatusCode.PERMISSION_DENIED, (method.full_name, role, code)


def test_every_method_is_refused_or_served_for_each_role_as_the_table_says(cluster: Cluster) -> None:
    for service, module in SERVICES.items():
        (descriptor,) = module.DESCRIPTOR.services_by_name.values()
        assert_roles_as_the_table_says(stub_of(cluster, service), module, descriptor)


def test_every_events_method_is_refused_or_served_for_each_role_as_the_table_says(new_cluster: Factory) -> None:
    cluster = new_cluster(events=True)
    (descriptor,) = events_pb2.DESCRIPTOR.services_by_name.values()
    stub = events_pb2_grpc.EventsServiceStub(cluster.channel("events", role=None))
    assert_roles_as_the_table_says(stub, events_pb2, descriptor)


def test_health_needs_no_token_and_reflection_needs_one(cluster: Cluster) -> None:
    channel = cluster.channel("xp", role=None)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)  # type: ignore[attr-defined]
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    with pytest.raises(grpc.RpcError) as refused:
        list(reflection.ServerReflectionInfo(iter([ask]), timeout=10))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    answers = list(
        reflection.ServerReflectionInfo(iter([ask]), metadata=with_token(mint_test_token(Role.GAME)), timeout=10)
    )
    assert "rewards.v1.XpService" in {s.name for s in answers[0].list_services_response.service}


def test_calls_between_services_carry_their_own_token(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster()
    c.put_levels(STANDARD_LEVELS)
    crossed = c.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=150, reason="t", request_id="a"), timeout=10)
    # XP's own service token was accepted by Levels: the check ran.
    assert (crossed.level_check_deferred, crossed.level) == (False, 2)
    # Levels now verifies with another key: XP's calls are refused, so its check is deferred.
    c.stop("levels")
    c.settings = replace(c.settings, auth_jwt_secret=OTHER_SECRET)
    c.start("levels")
    refused = c.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=200, reason="t", request_id="b"), timeout=10)
    assert (refused.level_check_deferred, refused.total_xp) == (True, 350)


def test_with_the_insecure_flag_every_caller_is_served(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster(auth_jwt_secret="", insecure_no_auth=True)
    xp = xp_pb2_grpc.XpServiceStub(c.channel("xp", role=None))
    granted = xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=5, reason="t", request_id="a"), timeout=10)
    assert granted.total_xp == 5


# --- the entry points ----------------------------------------------------------------------


def run_module(module: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize(
    "secret, reason",
    [
        ("", "no REWARDS_AUTH_JWT_SECRET: the services do not start without a key"),
        ("short", "REWARDS_AUTH_JWT_SECRET (and REWARDS_AUTH_JWT_PREVIOUS_SECRET) must be at least 32 characters"),
    ],
)
def test_a_service_refuses_to_start_without_a_usable_key(secret: str, reason: str) -> None:
    # DynamoDB points at a closed port: the refusal comes before any other work.
    run = run_module(
        "xp_service",
        {
            "REWARDS_AUTH_JWT_SECRET": secret,
            "REWARDS_INSECURE_NO_AUTH": "",
            "REWARDS_DYNAMODB_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "REWARDS_XP_LISTEN": f"127.0.0.1:{free_port()}",
            "REWARDS_XP_METRICS_PORT": "0",
        },
    )
    assert run.returncode == 2, run.stderr
    assert "refusing to start" in run.stderr and reason in run.stderr


def test_rewardsctl_mints_tokens_the_services_accept(cluster: Cluster, user_id: str) -> None:
    run = run_module(
        "rewardsctl",
        {"REWARDS_AUTH_JWT_SECRET": TEST_AUTH_SECRET},
        "token",
        "mint",
        "--role",
        "game",
        "--subject",
        "studio",
        "--ttl",
        "15m",
    )
    assert run.returncode == 0, run.stderr
    token = run.stdout.strip()
    claims = jwt.decode(token, TEST_AUTH_SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["role"], claims["exp"] - claims["iat"]) == ("studio", "game", 900)
    progress = stub_of(cluster, "xp").GetProgress(
        xp_pb2.GetProgressRequest(user_id=user_id), metadata=with_token(token), timeout=10
    )
    assert progress.user_id == user_id
    without_key = run_module("rewardsctl", {"REWARDS_AUTH_JWT_SECRET": ""}, "token", "mint", "--role", "game")
    assert without_key.returncode == 2
    assert "REWARDS_AUTH_JWT_SECRET" in without_key.stderr
