"""`rewardsctl achievements backfill` and the backfill of `catalog apply`,
against real servers and DynamoDB Local: players who qualified before an
auto-unlock achievement existed get it, exactly once, paid once; a backfill
killed halfway goes on from its checkpoint under the same trigger id; a dry
run writes nothing; a catalog apply backfills what it adds or eases.

Each test runs on a cluster of its own: auto-unlock rules apply to every award."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devcluster.dynamodb_local import REPO_ROOT
from rewards.v1 import achievements_pb2 as ach
from rewards.v1 import xp_pb2
from rewardsctl.__main__ import main
from rewardsctl.backfill import Checkpoint, CheckpointError, CheckpointFile, TokenBucket, start_or_resume
from tests.cluster import Cluster, mint_test_token, unique

Factory = Callable[..., Cluster]


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Default checkpoints go under $XDG_STATE_HOME: the test's own directory."""
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


def cli_env(c: Cluster) -> dict[str, str]:
    return {
        **os.environ,
        "REWARDS_XP_TARGET": f"localhost:{c.ports['xp']}",
        "REWARDS_ACHIEVEMENTS_TARGET": f"localhost:{c.ports['achievements']}",
        "REWARDS_LEVELS_TARGET": f"localhost:{c.ports['levels']}",
        "REWARDS_DYNAMODB_ENDPOINT": str(c.settings.dynamodb_endpoint),
        "REWARDS_TABLE_PREFIX": c.settings.table_prefix,
        "REWARDS_TOKEN": mint_test_token(),
    }


def rewardsctl(c: Cluster, *args: str) -> subprocess.Popen[str]:
    """The real command, `python -m rewardsctl`, configured by environment variables."""
    return subprocess.Popen(
        [sys.executable, "-m", "rewardsctl", *args],
        cwd=REPO_ROOT,
        env=cli_env(c),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_main(c: Cluster, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """main() in this process, configured by flags."""
    flags = [
        "--xp-target",
        f"localhost:{c.ports['xp']}",
        "--achievements-target",
        f"localhost:{c.ports['achievements']}",
        "--levels-target",
        f"localhost:{c.ports['levels']}",
        "--token",
        mint_test_token(),
        "--dynamodb-endpoint",
        str(c.settings.dynamodb_endpoint),
        "--table-prefix",
        c.settings.table_prefix,
    ]
    capsys.readouterr()
    status = main([*args, *flags])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def put_activity(c: Cluster, activity_id: str, xp: int, category: str) -> None:
    c.xp.PutActivity(
        xp_pb2.PutActivityRequest(
            activity=xp_pb2.Activity(activity_id=activity_id, name=activity_id.title(), category=category, xp=xp)
        )
    )


def put_achievement(
    c: Cluster, achievement_id: str, xp_reward: int, *, auto: bool = True, **requirements: object
) -> None:
    c.achievements.PutAchievement(
        ach.PutAchievementRequest(
            achievement=ach.Achievement(
                achievement_id=achievement_id,
                name=f"Name of {achievement_id}",
                xp_reward=xp_reward,
                auto_unlock=auto,
                requirements=ach.Requirements(**requirements),  # type: ignore[arg-type]
            )
        )
    )


def counts(**counted: int) -> list[ach.ActivityCount]:
    """activity_counts: `win=2` counts an activity; `c_daily=3` a category (c_ prefix, `_` read as `-`)."""
    return [
        ach.ActivityCount(category=name[2:].replace("_", "-"), count=n)
        if name.startswith("c_")
        else ach.ActivityCount(activity_id=name.replace("_", "-"), count=n)
        for name, n in counted.items()
    ]


def award(c: Cluster, user_id: str, activity_id: str, times: int) -> None:
    for i in range(times):
        c.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user_id, activity_id=activity_id, request_id=f"{activity_id}-{i}"))


def unlocks_of(c: Cluster, user_id: str) -> dict[str, int]:
    listing = c.achievements.ListUserAchievements(ach.ListUserAchievementsRequest(user_id=user_id, page_size=100))
    return {a.achievement_id: a.xp_reward for a in listing.achievements}


def total_xp(c: Cluster, user_id: str) -> int:
    return c.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id)).total_xp


def triggers_of(c: Cluster, user_id: str) -> dict[str, str]:
    """Each unlock's trigger, as stored."""
    items = c.dynamodb.query(
        TableName=c.table("user_achievements"),
        KeyConditionExpression="user_id = :u",
        ExpressionAttributeValues={":u": {"S": user_id}},
        ConsistentRead=True,
    )["Items"]
    return {i["achievement_id"]["S"]: i.get("trigger", {}).get("S", "") for i in items}


def summary_count(out: str, label: str) -> str:
    """The value on a summary line: `users evaluated   40 (...)` -> `40 (...)`."""
    match = re.search(rf"^{re.escape(label)}\s+(.+)$", out, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{out}"
    return match.group(1)


# --- killed halfway, then run again ---------------------------------------------------------------

PLAYERS = 40


def test_a_backfill_killed_halfway_goes_on_from_its_checkpoint_and_unlocks_each_player_once(
    new_cluster: Factory, tmp_path: Path
) -> None:
    c = new_cluster()
    put_activity(c, "win", xp=10, category="pvp")
    players = {f"player-{i:02d}-{unique('u')}": i % 4 for i in range(PLAYERS)}  # 0 to 3 wins each

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: award(c, p[0], "win", p[1]), players.items()))
    zero_win_players = [u for u, wins in players.items() if wins == 0]
    for user in zero_win_players:  # a player with no win: XP from a grant only
        c.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user, amount=5, reason="welcome", request_id="welcome"))
    # Only now the achievements: no award evaluated them. "two-wins" completes "after-two" (a chain).
    put_achievement(c, "two-wins", 100, activity_counts=counts(win=2))
    put_achievement(c, "after-two", 7, required_achievements=["two-wins"])
    qualified = {u for u, wins in players.items() if wins >= 2}
    assert all(unlocks_of(c, u) == {} for u in players)

    checkpoint_path = tmp_path / "backfill.json"
    args = ("achievements", "backfill", "--segments", "4", "--page-size", "2", "--checkpoint", str(checkpoint_path))
    first = rewardsctl(c, *args, "--rate", "5")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert first.poll() is None, first.communicate()
            if checkpoint_path.exists():
                progress = json.loads(checkpoint_path.read_text())
                if sum(s["users"] for s in progress["segments"]) >= 8:
                    break
            assert time.monotonic() < deadline, "the checkpoint shows no progress"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    left = Checkpoint.from_json(checkpoint_path.read_text())
    evaluated_before = left.users
    assert 8 <= evaluated_before < PLAYERS and left.segments_done < 4

    second = rewardsctl(c, *args)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert f"resuming backfill run {left.run_id} from the checkpoint {checkpoint_path}" in err
    # It did not start over: the users of the pages done before were not evaluated again.
    assert summary_count(out, "users evaluated") == (
        f"{PLAYERS} ({PLAYERS - evaluated_before} in this run, {evaluated_before} before it, from the checkpoint)"
    )
    # Counted as one uninterrupted run: a page begun before the kill is evaluated again, and the
    # service lists again what it unlocked under the run's trigger id.
    assert summary_count(out, "users with new unlocks") == str(len(qualified))
    assert summary_count(out, "unlocks") == str(2 * len(qualified))
    assert summary_count(out, "  two-wins") == summary_count(out, "  after-two") == str(len(qualified))
    assert f"backfill done (run {left.run_id}, trigger backfill#{left.run_id})" in out
    assert not checkpoint_path.exists()

    expected_xp = {
        u: 10 * wins + (107 if u in qualified else 0) + (5 if wins == 0 else 0) for u, wins in players.items()
    }
    trigger = f"backfill#{left.run_id}"
    for user in players:
        if user in qualified:
            assert unlocks_of(c, user) == {"two-wins": 100, "after-two": 7}, user
            # Both attempts unlocked under the run's one trigger id.
            assert triggers_of(c, user) == {"two-wins": trigger, "after-two": trigger}, user
        else:
            assert unlocks_of(c, user) == {}, user
    assert {u: total_xp(c, u) for u in players} == expected_xp

    # A new run finds nothing left to unlock and pays nothing.
    third = rewardsctl(c, *args)
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    assert "resuming" not in err
    assert summary_count(out, "users evaluated") == str(PLAYERS)
    assert summary_count(out, "users with new unlocks") == "0"
    assert {u: total_xp(c, u) for u in players} == expected_xp


def test_a_backfill_whose_service_goes_down_stops_with_its_checkpoint_and_goes_on_later(
    new_cluster: Factory, tmp_path: Path
) -> None:
    c = new_cluster()
    put_activity(c, "win", xp=10, category="pvp")
    users = [unique("user") for _ in range(12)]
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda u: award(c, u, "win", 1), users))
    put_achievement(c, "first-win", 5, activity_counts=counts(win=1))
    checkpoint_path = tmp_path / "down.json"
    args = ("achievements", "backfill", "--page-size", "1", "--checkpoint", str(checkpoint_path), "--timeout", "2")

    first = rewardsctl(c, *args, "--rate", "4")
    deadline = time.monotonic() + 60
    while not checkpoint_path.exists() or Checkpoint.from_json(checkpoint_path.read_text()).users < 2:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    c.stop("achievements")
    try:
        out, err = first.communicate(timeout=120)
    finally:
        c.start("achievements")
    assert first.returncode == 1, err
    assert re.search(
        r"^rewardsctl: backfill stopped: UnlockDueAchievements for user '[^']+' failed: UNAVAILABLE", err, re.M
    )
    assert f"the checkpoint {checkpoint_path} keeps what was done" in err and "the same command goes on" in err
    left = Checkpoint.from_json(checkpoint_path.read_text())

    second = rewardsctl(c, *args)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert f"resuming backfill run {left.run_id}" in err
    assert summary_count(out, "users evaluated").startswith(
        f"12 ({12 - left.users} in this run, {left.users} before it"
    )
    assert summary_count(out, "  first-win") == "12"
    assert all(unlocks_of(c, u) == {"first-win": 5} and total_xp(c, u) == 15 for u in users)


def test_catalog_apply_says_what_to_run_when_the_backfill_cannot_reach_dynamodb(
    new_cluster: Factory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = new_cluster()
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG_V1)
    capsys.readouterr()
    status = main(
        [
            "catalog",
            "apply",
            str(catalog),
            "--xp-target",
            f"localhost:{c.ports['xp']}",
            "--achievements-target",
            f"localhost:{c.ports['achievements']}",
            "--levels-target",
            f"localhost:{c.ports['levels']}",
            "--token",
            mint_test_token(),
            "--dynamodb-endpoint",
            str(c.settings.dynamodb_endpoint),
            "--table-prefix",
            "elsewhere-",
        ]
    )
    out, err = capsys.readouterr()
    assert status == 1
    assert "applied 5 changes" in out  # the catalog was applied
    assert err.splitlines() == [
        "rewardsctl: the catalog was applied; its backfill stopped: table elsewhere-user_progress does not exist "
        f"at {c.settings.dynamodb_endpoint}: is the table prefix right?",
        "  a backfill reads the stage's players from DynamoDB: --dynamodb-endpoint and --table-prefix (or "
        "REWARDS_DYNAMODB_ENDPOINT and REWARDS_TABLE_PREFIX) name the stage (`make up`: http://localhost:8000); "
        "then run `rewardsctl achievements backfill a-wins c-quests`",
    ]


# --- players who qualified before the achievement existed -----------------------------------------


def test_players_who_qualified_before_the_achievements_existed_get_them(
    new_cluster: Factory, capsys: pytest.CaptureFixture[str], state_home: Path
) -> None:
    c = new_cluster()
    put_activity(c, "win", xp=10, category="pvp")
    put_activity(c, "quest-a", xp=5, category="daily-quest")
    put_activity(c, "quest-b", xp=5, category="daily-quest")
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    award(c, alice, "win", 3)
    award(c, bob, "win", 1)
    award(c, bob, "quest-a", 2)
    award(c, bob, "quest-b", 1)
    award(c, carol, "quest-b", 1)
    put_achievement(c, "three-wins", 30, activity_counts=counts(win=3))
    put_achievement(c, "three-quests", 40, activity_counts=counts(c_daily_quest=3))
    put_achievement(c, "rich", 0, min_total_xp=1000)  # nobody
    put_achievement(c, "manual", 5, auto=False)
    assert [unlocks_of(c, u) for u in (alice, bob, carol)] == [{}, {}, {}]

    status, out, err = run_main(c, capsys, "achievements", "backfill", "three-wins", "three-quests", "rich")
    assert status == 0, err
    assert summary_count(out, "users evaluated") == "3"
    assert summary_count(out, "users with new unlocks") == "2"
    assert summary_count(out, "unlocks") == "2"
    assert [summary_count(out, f"  {a}") for a in ("rich", "three-quests", "three-wins")] == ["0", "1", "1"]
    assert "backfill  user_progress" in err  # the progress line, on stderr
    assert unlocks_of(c, alice) == {"three-wins": 30} and total_xp(c, alice) == 30 + 30
    assert unlocks_of(c, bob) == {"three-quests": 40} and total_xp(c, bob) == 10 + 15 + 40
    assert unlocks_of(c, carol) == {} and total_xp(c, carol) == 5
    # The run's checkpoint was under $XDG_STATE_HOME/rewardsctl, and is gone.
    assert list((state_home / "rewardsctl").iterdir()) == []

    # Unknown and manual achievements are refused before any player is evaluated.
    status, out, err = run_main(c, capsys, "achievements", "backfill", "ghost", "manual", "rich")
    assert (status, out) == (2, "")
    assert err.splitlines() == [
        "rewardsctl: nothing was backfilled:",
        "  achievement 'ghost' is not in the catalog",
        "  achievement 'manual' is not auto_unlock: a backfill unlocks only auto_unlock achievements "
        "(`rewardsctl unlock USER manual` unlocks it for one user)",
    ]
    # A wrong table prefix is named, and nothing is written.
    capsys.readouterr()
    status = main(
        [
            "achievements",
            "backfill",
            "--achievements-target",
            f"localhost:{c.ports['achievements']}",
            "--token",
            mint_test_token(),
            "--dynamodb-endpoint",
            str(c.settings.dynamodb_endpoint),
            "--table-prefix",
            "no-such-stage-",
        ]
    )
    err = capsys.readouterr().err
    assert status == 1 and "table no-such-stage-user_progress does not exist" in err

    # Without ids: every auto_unlock achievement; those held already are not unlocked or counted again.
    put_achievement(c, "one-quest", 2, activity_counts=counts(c_daily_quest=1))
    status, out, err = run_main(c, capsys, "achievements", "backfill")
    assert status == 0, err
    assert summary_count(out, "users with new unlocks") == "2"
    assert [summary_count(out, f"  {a}") for a in ("one-quest", "rich", "three-quests", "three-wins")] == [
        "2",
        "0",
        "0",
        "0",
    ]
    assert unlocks_of(c, bob) == {"three-quests": 40, "one-quest": 2} and total_xp(c, bob) == 10 + 15 + 40 + 2
    assert unlocks_of(c, carol) == {"one-quest": 2} and total_xp(c, carol) == 5 + 2
    assert unlocks_of(c, alice) == {"three-wins": 30}


# --- dry run ----------------------------------------------------------------------------------------


def test_dry_run_prints_what_is_due_and_writes_nothing(
    new_cluster: Factory, tmp_path: Path, capsys: pytest.CaptureFixture[str], state_home: Path
) -> None:
    c = new_cluster()
    put_activity(c, "win", xp=10, category="pvp")
    users = [unique("user") for _ in range(6)]
    for n, user in enumerate(users):
        award(c, user, "win", n)  # 0 to 5 wins: the first has no XP, so is no player
    put_achievement(c, "one-win", 1, activity_counts=counts(win=1))
    put_achievement(c, "four-wins", 4, activity_counts=counts(win=4))
    checkpoint_path = tmp_path / "dry.json"
    before = {u: total_xp(c, u) for u in users}

    status, out, err = run_main(
        c, capsys, "achievements", "backfill", "--dry-run", "--segments", "3", "--checkpoint", str(checkpoint_path)
    )
    assert status == 0, err
    assert out.splitlines() == [
        "dry run: nothing was unlocked and no checkpoint was written; due now for four-wins, one-win:",
        "users evaluated          5",
        "users with unlocks due   5",
        "unlocks due              7",
        "  four-wins              2",
        "  one-win                5",
    ]
    assert not checkpoint_path.exists() and not state_home.exists()
    assert all(unlocks_of(c, u) == {} for u in users)
    assert {u: total_xp(c, u) for u in users} == before

    # Restricted to one achievement.
    status, out, _ = run_main(c, capsys, "achievements", "backfill", "four-wins", "--dry-run")
    assert status == 0
    assert summary_count(out, "unlocks due") == "2" and "one-win" not in out


# --- catalog apply ------------------------------------------------------------------------------------

CATALOG_V1 = """
activities:
  - {activity_id: win, name: Win, category: pvp, xp: 10}
  - {activity_id: quest, name: Quest, category: daily-quest, xp: 5}
achievements:
  - achievement_id: a-wins
    name: Five wins
    xp_reward: 50
    auto_unlock: true
    requirements:
      activity_counts: [{activity_id: win, count: 5}]
  - achievement_id: c-quests
    name: A quest
    xp_reward: 5
    auto_unlock: true
    requirements:
      activity_counts: [{category: daily-quest, count: 1}]
  - achievement_id: d-veteran
    name: Veteran
    xp_reward: 3
    requirements: {min_total_xp: 20}
"""
# v1 and a new auto_unlock achievement.
CATALOG_V2 = (
    CATALOG_V1
    + """  - achievement_id: b-first-win
    name: First win
    xp_reward: 1
    auto_unlock: true
    requirements:
      activity_counts: [{activity_id: win, count: 1}]
"""
)
# v2 with a-wins easier (5 -> 2 wins), c-quests harder (1 -> 2 quests), d-veteran auto.
CATALOG_V3 = (
    CATALOG_V2.replace("[{activity_id: win, count: 5}]", "[{activity_id: win, count: 2}]")
    .replace("[{category: daily-quest, count: 1}]", "[{category: daily-quest, count: 2}]")
    .replace("    xp_reward: 3\n", "    xp_reward: 3\n    auto_unlock: true\n")
)


def test_catalog_apply_backfills_what_it_adds_or_eases(
    new_cluster: Factory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = new_cluster()
    files = {}
    for name, text in (("v1", CATALOG_V1), ("v2", CATALOG_V2), ("v3", CATALOG_V3)):
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(text)

    # Added to a stage without players: the backfill evaluates nobody.
    status, out, err = run_main(c, capsys, "catalog", "apply", str(files["v1"]))
    assert status == 0, err
    assert "backfill a-wins: added" in out and "backfill c-quests: added" in out
    assert summary_count(out, "users evaluated") == "0"
    p1, p2, p3 = unique("p1"), unique("p2"), unique("p3")
    award(c, p1, "win", 3)
    award(c, p2, "win", 1)
    award(c, p3, "quest", 1)  # its award unlocks c-quests
    assert unlocks_of(c, p3) == {"c-quests": 5}

    # --no-backfill: b-first-win is added, nobody is evaluated for it.
    status, out, err = run_main(c, capsys, "catalog", "apply", "--no-backfill", str(files["v2"]))
    assert status == 0, err
    assert "+ created achievement b-first-win ('First win', 1 XP, counts 1 x win, auto_unlock)" in out
    assert out.splitlines()[-1] == (
        "not backfilled (--no-backfill): b-first-win; `rewardsctl achievements backfill b-first-win` "
        "evaluates every player for them"
    )
    assert [unlocks_of(c, u) for u in (p1, p2)] == [{}, {}]

    # Eased: a-wins' count lowered, d-veteran switched to auto; c-quests made harder is not backfilled.
    status, out, err = run_main(c, capsys, "catalog", "apply", "--dry-run", str(files["v3"]))
    assert status == 0, err
    assert [line for line in out.splitlines() if "backfill" in line] == [
        "will backfill a-wins: count of win lowered 5 -> 2",
        "will backfill d-veteran: auto_unlock switched on",
    ]
    assert unlocks_of(c, p1) == {}
    status, out, err = run_main(c, capsys, "catalog", "apply", str(files["v3"]))
    assert status == 0, err
    assert "~ changed achievement a-wins: activity_counts [5 x win] -> [2 x win]" in out
    assert (
        "~ changed achievement c-quests: activity_counts [1 x category daily-quest] -> [2 x category daily-quest]"
    ) in out
    assert [line for line in out.splitlines() if line.startswith("backfill ") and " done " not in line] == [
        "backfill a-wins: count of win lowered 5 -> 2",
        "backfill d-veteran: auto_unlock switched on",
    ]
    assert re.search(r"^backfill done \(run [0-9a-f]{32}\):$", out, re.MULTILINE)
    assert summary_count(out, "users evaluated") == "3"
    assert summary_count(out, "users with new unlocks") == "1"
    assert [summary_count(out, f"  {a}") for a in ("a-wins", "d-veteran")] == ["1", "1"]
    # p1: 3 wins (30 XP) meets both; p2 (10 XP) and p3 (10 XP) neither. b-first-win was not evaluated.
    assert unlocks_of(c, p1) == {"a-wins": 50, "d-veteran": 3} and total_xp(c, p1) == 30 + 50 + 3
    assert unlocks_of(c, p2) == {} and total_xp(c, p2) == 10
    assert unlocks_of(c, p3) == {"c-quests": 5} and total_xp(c, p3) == 10  # a harder catalog takes nothing away

    # What --no-backfill left, the command backfills.
    status, out, err = run_main(c, capsys, "achievements", "backfill", "b-first-win")
    assert status == 0, err
    assert summary_count(out, "  b-first-win") == "2"
    assert unlocks_of(c, p2) == {"b-first-win": 1} and total_xp(c, p2) == 11


# --- pieces -----------------------------------------------------------------------------------------


def test_the_checkpoint_is_replaced_whole_and_a_foreign_one_is_refused(tmp_path: Path) -> None:
    store = CheckpointFile(tmp_path / "deep" / "run.json")
    checkpoint, resumed = start_or_resume(store, "stage-", ["b", "a", "a"], None, restart=False)
    assert not resumed and checkpoint.achievement_ids == ("a", "b") and len(checkpoint.segments) == 4
    checkpoint.segments[1].last_key = {"user_id": {"S": "u-17"}}
    checkpoint.segments[1].unlocks = {"a": 2}
    store.save(checkpoint)
    assert [p.name for p in store.path.parent.iterdir()] == ["run.json"]  # no temporary file left
    again, resumed = start_or_resume(store, "stage-", ["a", "b"], 4, restart=False)
    assert resumed and again == store.load() and again.trigger_id == f"backfill#{checkpoint.run_id}"
    assert again.segments[1].last_key == {"user_id": {"S": "u-17"}}
    with pytest.raises(CheckpointError, match="is of another backfill"):
        start_or_resume(store, "stage-", ["a"], None, restart=False)
    with pytest.raises(CheckpointError, match="was made with --segments 4"):
        start_or_resume(store, "stage-", ["a", "b"], 8, restart=False)
    fresh, resumed = start_or_resume(store, "stage-", ["a"], 2, restart=True)
    assert not resumed and fresh.run_id != checkpoint.run_id and store.load() == fresh
    store.path.write_text("{not json")
    with pytest.raises(CheckpointError, match="is damaged"):
        store.load()


def test_the_token_bucket_paces_every_thread_together() -> None:
    bucket = TokenBucket(rate=40)
    stop = threading.Event()
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: [bucket.take(stop) for _ in range(5)], range(4)))
    # 20 takes at 40 a second, with a burst of at most 4: about half a second.
    assert 0.35 <= time.monotonic() - started < 2.0
    # Once stopped, a wait ends at once.
    stop.set()
    slow = TokenBucket(rate=0.01)
    started = time.monotonic()
    assert not slow.take(stop) and not slow.take(stop) and not TokenBucket(rate=0).take(stop)
    assert time.monotonic() - started < 0.5
