"""The gateway's routes for achievements that unlock themselves, over real
HTTP in front of real servers and DynamoDB Local: GET
/users/{user_id}/achievements/progress and GET /achievements/{achievement_id}/stats,
and the auto-unlock fields through the PUT achievement, award and unlock routes.

Each test has a cluster of its own (`new_cluster`), and a gateway in front of
it: auto-unlock rules apply to every award, and the stats count every player."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from common.field_rules import MAX_PAGE_SIZE
from tests.cluster import STANDARD_LEVELS, Cluster, unique
from tests.gateway_server import GatewayServer
from tests.test_gateway import ADMIN, GAME, call, error, field_violations, ok, put_activity, rpc_count

PROGRESS_RPC = "/rewards.v1.AchievementsService/GetAchievementProgress"


@pytest.fixture
def gateway(new_cluster: Callable[..., Cluster]) -> Iterator[GatewayServer]:
    cluster = new_cluster()
    cluster.put_levels(STANDARD_LEVELS)
    server = GatewayServer.for_cluster(cluster).start()
    yield server
    server.stop()


def violated_fields(body: dict[str, Any]) -> list[str]:
    return [v["field"] for v in field_violations(body)]


def put_achievement(gateway: GatewayServer, achievement_id: str, **fields: Any) -> Any:
    body = {"name": f"Name of {achievement_id}", **fields}
    return ok(call(gateway, "PUT", f"/achievements/{urllib.parse.quote(achievement_id, safe='')}", body, token=ADMIN))


def award(gateway: GatewayServer, user_id: str, activity_id: str, key: str) -> Any:
    return ok(
        call(
            gateway,
            "POST",
            "/xp/award",
            {"user_id": user_id, "activity_id": activity_id},
            headers={"Idempotency-Key": key},
        )
    )


def progress_pages(gateway: GatewayServer, user_id: str, token: str, page_size: int) -> list[dict[str, Any]]:
    """Every page of the user's achievement progress, in order."""
    pages: list[dict[str, Any]] = []
    query = f"page_size={page_size}"
    for _ in range(20):
        page = ok(call(gateway, "GET", f"/users/{user_id}/achievements/progress?{query}", token=token))
        assert page["user_id"] == user_id
        pages.append(page)
        if not page["next_page_token"]:
            return pages
        query = f"page_size={page_size}&page_token={urllib.parse.quote(page['next_page_token'], safe='')}"
    raise AssertionError("more pages than the catalog holds")


def test_the_auto_unlock_fields_go_through_put_and_award(gateway: GatewayServer) -> None:
    activity = put_activity(gateway, xp=10)
    stored = put_achievement(
        gateway,
        "first-match",
        xp_reward="5",
        auto_unlock=True,
        requirements={"activity_counts": [{"activity_id": activity, "count": 1}, {"category": "pvp", "count": "3"}]},
    )
    assert stored["auto_unlock"] is True
    assert stored["requirements"]["activity_counts"] == [
        {"activity_id": activity, "category": "", "count": "1"},
        {"activity_id": "", "category": "pvp", "count": "3"},
    ]
    assert ok(call(gateway, "GET", "/achievements/first-match")) == stored
    # lowerCamelCase, as the JSON mapping reads it, too.
    camel = put_achievement(
        gateway, "camel", autoUnlock=True, requirements={"activityCounts": [{"activityId": activity, "count": 9}]}
    )
    assert camel["auto_unlock"] is True and camel["requirements"]["activity_counts"][0]["count"] == "9"

    user = unique("user")
    first = award(gateway, user, activity, "m1")
    assert first["unlocked_achievements"] == [] and first["total_xp"] == "10"
    award(gateway, user, activity, "m2")
    third = award(gateway, user, activity, "m3")
    assert third["unlocked_achievements"] == ["first-match"] and third["total_xp"] == "35"
    # A retry through the gateway lists what its original unlocked.
    retry = award(gateway, user, activity, "m3")
    assert retry["duplicate"] is True and retry["unlocked_achievements"] == ["first-match"]
    mine = ok(call(gateway, "GET", f"/users/{user}/achievements"))
    assert [a["achievement_id"] for a in mine["achievements"]] == ["first-match"]


@pytest.mark.parametrize(
    ("count", "field"),
    [
        ({"count": 1}, "achievement.requirements.activity_counts[0]"),
        ({"activity_id": "a", "category": "c", "count": 1}, "achievement.requirements.activity_counts[0]"),
        ({"activity_id": "a", "count": 0}, "achievement.requirements.activity_counts[0].count"),
        ({"activity_id": "a\u200b", "count": 1}, "achievement.requirements.activity_counts[0].activity_id"),
    ],
    ids=["neither", "both", "zero", "format-character"],
)
def test_bad_activity_counts_are_400_naming_the_field(
    gateway: GatewayServer, count: dict[str, Any], field: str
) -> None:
    achievement_id = unique("bad")
    body = {"name": "Bad", "auto_unlock": True, "requirements": {"activity_counts": [count]}}
    refused = error(call(gateway, "PUT", f"/achievements/{achievement_id}", body, token=ADMIN), 400, "INVALID_ARGUMENT")
    assert violated_fields(refused) == [field]
    error(call(gateway, "GET", f"/achievements/{achievement_id}"), 404, "NOT_FOUND")


def test_progress_pages_the_catalog_and_withholds_hidden_names_from_a_game_token(gateway: GatewayServer) -> None:
    activity = put_activity(gateway, xp=10)
    put_achievement(
        gateway,
        "a-seen",
        auto_unlock=True,
        requirements={"activity_counts": [{"activity_id": activity, "count": 4}], "min_total_xp": 100},
    )
    put_achievement(
        gateway,
        "b-secret",
        description="secret",
        hidden=True,
        auto_unlock=True,
        requirements={"activity_counts": [{"category": "pvp", "count": 10}]},
    )
    put_achievement(
        gateway,
        "c-first",
        description="won once",
        hidden=True,
        xp_reward=5,
        auto_unlock=True,
        requirements={"activity_counts": [{"activity_id": activity, "count": 1}]},
    )
    user = unique("user")
    assert award(gateway, user, activity, "r1")["unlocked_achievements"] == ["c-first"]
    assert award(gateway, user, activity, "r2")["unlocked_achievements"] == []

    pages = progress_pages(gateway, user, GAME, page_size=2)
    assert [[p["achievement"]["achievement_id"] for p in page["achievements"]] for page in pages] == [
        ["a-seen", "b-secret"],
        ["c-first"],
    ]
    seen, secret, first = [p for page in pages for p in page["achievements"]]
    # 2 of 4 awards and 25 of 100 XP (two awards and c-first's reward): (50% + 25%) / 2.
    assert (seen["unlocked"], seen["percent"], seen["unlock_rate"]) == (False, 37.5, 0.0)
    assert seen["criteria"] == [
        {"description": f"4 awards of activity {activity!r}", "current": "2", "target": "4"},
        {"description": "total XP", "current": "25", "target": "100"},
    ]
    assert "unlocked_at" not in seen and seen["achievement"]["name"] == "Name of a-seen"
    # Hidden and not unlocked: the id and the progress, not the name or description.
    assert (secret["achievement"]["name"], secret["achievement"]["description"]) == ("", "")
    assert secret["achievement"]["hidden"] is True and secret["percent"] == 20.0
    # What it asks would give it away too: the numbers stay, the words go.
    assert secret["criteria"] == [{"description": "hidden", "current": "2", "target": "10"}]
    assert secret["achievement"]["requirements"] == {
        "required_achievements": [],
        "min_total_xp": "0",
        "min_level": 0,
        "activity_counts": [],
        "streak_lengths": [],
    }
    # Hidden but unlocked: shown.
    assert (first["unlocked"], first["percent"], first["unlock_rate"]) == (True, 100.0, 1.0)
    assert (first["achievement"]["name"], first["achievement"]["description"]) == ("Name of c-first", "won once")
    assert first["unlocked_at"].endswith("Z")

    # The gateway passes the caller's token on: an admin sees every name.
    as_admin = [p for page in progress_pages(gateway, user, ADMIN, page_size=50) for p in page["achievements"]]
    assert len(as_admin) == 3 and len(progress_pages(gateway, user, ADMIN, page_size=50)) == 1
    assert (as_admin[1]["achievement"]["name"], as_admin[1]["achievement"]["description"]) == (
        "Name of b-secret",
        "secret",
    )
    assert [p["percent"] for p in as_admin] == [37.5, 20.0, 100.0]

    # A user who never played: every criterion at 0, nothing unlocked.
    newcomer = [p for page in progress_pages(gateway, unique("new"), GAME, page_size=0) for p in page["achievements"]]
    assert [(p["unlocked"], p["percent"]) for p in newcomer] == [(False, 0.0), (False, 0.0), (False, 0.0)]
    assert newcomer[2]["achievement"]["name"] == ""  # c-first is hidden from one who has not unlocked it

    error(call(gateway, "GET", f"/users/{user}/achievements/progress", token=None), 401, "UNAUTHENTICATED")


@pytest.mark.parametrize(
    ("query", "field", "reaches_the_service"),
    [
        ("page_size=abc", "page_size", False),
        ("page_size=1.5", "page_size", False),
        ("page_size=1&page_size=2", "page_size", False),
        ("limit=5", "limit", False),
        (f"page_size={MAX_PAGE_SIZE + 1}", "page_size", True),
        ("page_size=-1", "page_size", True),
        ("page_token=not-a-token", "page_token", True),
    ],
)
def test_bad_progress_queries_are_400_naming_the_field(
    gateway: GatewayServer, query: str, field: str, reaches_the_service: bool
) -> None:
    before = rpc_count(PROGRESS_RPC)
    refused = error(
        call(gateway, "GET", f"/users/{unique('user')}/achievements/progress?{query}"), 400, "INVALID_ARGUMENT"
    )
    assert violated_fields(refused) == [field]
    assert field in refused["message"]
    assert rpc_count(PROGRESS_RPC) == before + (1 if reaches_the_service else 0)


def test_stats_count_unlocks_among_players(gateway: GatewayServer) -> None:
    activity = put_activity(gateway, xp=5)
    put_achievement(
        gateway, "twice", auto_unlock=True, requirements={"activity_counts": [{"activity_id": activity, "count": 2}]}
    )
    put_achievement(gateway, "manual")
    put_achievement(gateway, "season/one", auto_unlock=True, requirements={"min_total_xp": 10})
    assert ok(call(gateway, "GET", "/achievements/twice/stats")) == {
        "achievement_id": "twice",
        "unlocked_count": "0",
        "players": "0",
        "unlock_rate": 0.0,
    }

    users = [unique("user") for _ in range(3)]
    for round_ in range(2):
        award(gateway, users[0], activity, f"r{round_}")
    award(gateway, users[1], activity, "r0")
    award(gateway, users[2], activity, "r0")

    twice = ok(call(gateway, "GET", "/achievements/twice/stats"))
    assert (twice["achievement_id"], twice["unlocked_count"], twice["players"]) == ("twice", "1", "3")
    assert twice["unlock_rate"] == pytest.approx(1 / 3)
    manual = ok(call(gateway, "GET", "/achievements/manual/stats"))
    assert (manual["unlocked_count"], manual["players"], manual["unlock_rate"]) == ("0", "3", 0.0)
    # An id with a slash, percent-encoded, is one path parameter; users[0] has 10 XP.
    slashed = ok(call(gateway, "GET", "/achievements/season%2Fone/stats"))
    assert (slashed["achievement_id"], slashed["unlocked_count"], slashed["players"]) == ("season/one", "1", "3")
    # The progress listing shows the same rate.
    rates = {
        p["achievement"]["achievement_id"]: p["unlock_rate"]
        for page in progress_pages(gateway, users[1], GAME, page_size=10)
        for p in page["achievements"]
    }
    assert rates == {"manual": 0.0, "season/one": pytest.approx(1 / 3), "twice": pytest.approx(1 / 3)}

    missing = error(call(gateway, "GET", f"/achievements/{unique('missing')}/stats"), 404, "NOT_FOUND")
    assert "not in the catalog" in missing["message"]
    error(call(gateway, "GET", "/achievements/twice/stats", token=None), 401, "UNAUTHENTICATED")
    error(call(gateway, "GET", "/achievements/%20twice/stats"), 400, "INVALID_ARGUMENT")
    error(call(gateway, "POST", "/achievements/twice/stats", {}), 405, "UNIMPLEMENTED")


def test_an_unlock_lists_the_auto_unlocks_it_completed(gateway: GatewayServer) -> None:
    activity = put_activity(gateway, xp=10)
    put_achievement(
        gateway, "manual", xp_reward=20, requirements={"activity_counts": [{"activity_id": activity, "count": 1}]}
    )
    put_achievement(
        gateway, "after-manual", xp_reward=30, auto_unlock=True, requirements={"required_achievements": ["manual"]}
    )
    user = unique("user")
    assert award(gateway, user, activity, "r1")["unlocked_achievements"] == []

    def unlock(key: str) -> Any:
        return ok(
            call(
                gateway,
                "POST",
                "/achievements/unlock",
                {"user_id": user, "achievement_id": "manual"},
                headers={"Idempotency-Key": key},
            )
        )

    first = unlock("u1")
    assert (first["xp_awarded"], first["also_unlocked"], first["total_xp"]) == ("20", ["after-manual"], "60")
    again = unlock("u2")
    assert again["already_unlocked"] is True and again["also_unlocked"] == ["after-manual"]
    stats = ok(call(gateway, "GET", "/achievements/after-manual/stats"))
    assert (stats["unlocked_count"], stats["players"], stats["unlock_rate"]) == ("1", "1", 1.0)
