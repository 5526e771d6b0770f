"""rewardsctl's XP history and corrections against real servers and DynamoDB
Local: `history` (newest first, paging through ListXpHistory), `adjust` and
`revoke` (idempotent, refused with the service's reason), and `verify` clean
on the stage they leave."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from common.caller_auth import Role
from devcluster.dynamodb_local import REPO_ROOT
from rewards.v1 import xp_pb2
from rewardsctl.__main__ import main
from tests.cluster import STANDARD_LEVELS, Cluster, mint_test_token

# Levels at 100 and 300 XP (STANDARD_LEVELS).
ACTIVITIES = [
    xp_pb2.Activity(activity_id="win-match", name="Win a match", category="pvp", xp=150),
    xp_pb2.Activity(activity_id="daily-login", name="Log in", category="daily", xp=20),
]
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"
# What follows the time (27 characters) and two spaces on a history line.
AFTER_TIME = 29


def stage(new_cluster: Callable[..., Cluster]) -> Cluster:
    cluster = new_cluster()
    cluster.put_levels(STANDARD_LEVELS)
    for activity in ACTIVITIES:
        cluster.xp.PutActivity(xp_pb2.PutActivityRequest(activity=activity))
    return cluster


def run_main(
    cluster: Cluster, capsys: pytest.CaptureFixture[str], *args: str, role: Role = Role.ADMIN
) -> tuple[int, str, str]:
    """main() in this process, configured by flags, with a token of `role`."""
    capsys.readouterr()
    status = main([*args, "--xp-target", f"localhost:{cluster.ports['xp']}", "--token", mint_test_token(role)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def run_command(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command, `python -m rewardsctl`, configured by environment variables."""
    return subprocess.run(
        [sys.executable, "-m", "rewardsctl", *args],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "REWARDS_XP_TARGET": f"localhost:{cluster.ports['xp']}",
            "REWARDS_TOKEN": mint_test_token(Role.GAME),  # the history is a game's read too
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def without_times(out: str) -> list[str]:
    """The history's lines, each checked to start with its time, without it."""
    lines = out.splitlines()
    for line in lines:
        assert re.match(TIME + "  ", line), line
    return [line[AFTER_TIME:] for line in lines]


def test_adjust_and_revoke_correct_a_player_and_history_shows_every_entry(
    new_cluster: Callable[..., Cluster], capsys: pytest.CaptureFixture[str]
) -> None:
    c = stage(new_cluster)
    assert run_main(c, capsys, "award", "bob", "win-match", "--request-id", "w1")[0] == 0
    login = c.xp.AwardXp(xp_pb2.AwardXpRequest(user_id="bob", activity_id="daily-login"))  # no request id: auto#
    grant = c.xp.GrantXp(xp_pb2.GrantXpRequest(user_id="bob", amount=200, reason="welcome back"))
    assert (login.total_xp, grant.total_xp, grant.level) == (170, 370, 3)

    status, out, _ = run_main(
        c, capsys, "adjust", "bob", "-100", "--reason", "refund, ticket 42", "--request-id", "fix-1"
    )
    assert status == 0
    assert out.splitlines() == [
        "bob: -100 XP adjusted ('refund, ticket 42'); total 270 XP, level 3",
        "level 3 stays: levels reached, their rewards and unlocked achievements are never taken back",
        "request_id fix-1 (repeat it with --request-id to retry safely)",
    ]
    status, out, _ = run_main(
        c, capsys, "adjust", "bob", "-100", "--reason", "refund, ticket 42", "--request-id", "fix-1"
    )
    assert status == 0
    assert out.splitlines()[0] == (
        "bob: request fix-1 was already recorded, nothing changed (it adjusted -100 XP); total 270 XP, level 3"
    )
    status, _, err = run_main(c, capsys, "adjust", "bob", "-1000", "--reason", "typo")
    assert status == 1
    assert err.startswith(
        "rewardsctl: adjust failed: FAILED_PRECONDITION: taking 1000 XP would take the user's total below zero"
    )
    assert "--request-id rewardsctl-" not in err  # refused for good: no retry hint

    status, out, _ = run_main(c, capsys, "revoke", "bob", "--request-id", "w1", "--reason", "match fixing")
    assert status == 0
    assert out.splitlines() == [
        "bob: revoked request w1: -150 XP; total 120 XP, level 3",
        "level 3 stays: levels reached, their rewards and unlocked achievements are never taken back",
    ]
    status, out, _ = run_main(c, capsys, "revoke", "bob", "--request-id", "w1", "--reason", "match fixing")
    assert status == 0
    assert out.splitlines()[0] == (
        "bob: request w1 was already revoked, nothing changed (it took -150 XP); total 120 XP, level 3"
    )

    status, out, err = run_main(c, capsys, "history", "bob")
    assert status == 0 and err == ""
    lines = without_times(out)
    login_id = lines[3].rsplit("entry ", 1)[1]
    assert login_id.startswith("auto#")
    assert lines == [
        "revoke            -150  activity win-match, reason 'match fixing'  entry rev#req#w1  reverses req#w1",
        "adjustment        -100  reason 'refund, ticket 42'  entry req#fix-1",
        "grant             +200  reason 'welcome back'  entry " + lines[2].rsplit("entry ", 1)[1],
        f"activity           +20  activity daily-login  entry {login_id}",
        "activity          +150  activity win-match  entry req#w1",
    ]
    times = [line[:27] for line in out.splitlines()]
    assert times == sorted(times, reverse=True)

    # An entry without a request id, by the id the history shows.
    status, out, _ = run_main(c, capsys, "revoke", "bob", "--entry-id", login_id, "--reason", "bot")
    assert status == 0 and out.splitlines()[0] == f"bob: revoked entry {login_id}: -20 XP; total 100 XP, level 3"
    # What cannot be revoked, and what is not there.
    for target, refusal in [
        (
            ("--entry-id", "rev#req#w1"),
            "FAILED_PRECONDITION: entry 'rev#req#w1' is a revoke: there is nothing to revoke",
        ),
        (("--request-id", "fix-1"), "FAILED_PRECONDITION: entry 'req#fix-1' is an adjustment"),
        (("--request-id", "nope"), "NOT_FOUND: the user has no ledger entry with request_id 'nope'"),
    ]:
        status, _, err = run_main(c, capsys, "revoke", "bob", *target, "--reason", "oops")
        assert status == 1 and err.startswith(f"rewardsctl: revoke failed: {refusal}"), err

    status, out, _ = run_main(c, capsys, "history", "bob", "--limit", "2")
    assert status == 0
    assert without_times("\n".join(out.splitlines()[:2])) == [
        f"revoke             -20  activity daily-login, reason 'bot'  entry rev#{login_id}  reverses {login_id}",
        "revoke            -150  activity win-match, reason 'match fixing'  entry rev#req#w1  reverses req#w1",
    ]
    assert out.splitlines()[2:] == ["the newest 2 entries of bob; --limit N lists more (0 lists all)"]

    status, out, _ = run_main(c, capsys, "history", "bob", "--json")
    assert status == 0
    answer = json.loads(out)
    assert answer["next_page_token"] == ""
    assert [(e["kind"], e["xp"]) for e in answer["entries"]] == [
        ("KIND_REVOKE", -20),
        ("KIND_REVOKE", -150),
        ("KIND_ADJUSTMENT", -100),
        ("KIND_GRANT", 200),
        ("KIND_ACTIVITY", 20),
        ("KIND_ACTIVITY", 150),
    ]
    assert sum(e["xp"] for e in answer["entries"]) == 100

    status, out, _ = run_main(c, capsys, "progress", "bob")
    assert status == 0 and out.splitlines()[1:3] == ["total XP      100", "level         3"]

    # Corrections are an operator's: a game's token reads the history but may not adjust or revoke.
    assert run_main(c, capsys, "history", "bob", "--limit", "1", role=Role.GAME)[0] == 0
    status, _, err = run_main(c, capsys, "adjust", "bob", "5", "--reason", "x", role=Role.GAME)
    assert status == 1 and err.startswith(
        "rewardsctl: adjust failed: PERMISSION_DENIED: role 'game' may not call rewards.v1.XpService/AdjustXp"
    )
    status, _, err = run_main(c, capsys, "revoke", "bob", "--request-id", "w1", "--reason", "x", role=Role.GAME)
    assert status == 1 and "PERMISSION_DENIED" in err

    # The stage the corrections leave is consistent: the counters of the revoked awards went down,
    # the level stayed above what the total gives, nothing is owed.
    capsys.readouterr()
    status = main(
        [
            "verify",
            "--json",
            "--strict",
            "--dynamodb-endpoint",
            str(c.settings.dynamodb_endpoint),
            "--table-prefix",
            c.settings.table_prefix,
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert status == 0, report
    assert report["counts"]["ledger_entries"] == 6 and report["counts"]["notes"] == 0
    assert report["invariants"]["revoke-reverses-entry"]["checked"] == 2


def test_history_lists_hundreds_of_entries_once_each_newest_first(new_cluster: Callable[..., Cluster]) -> None:
    c = stage(new_cluster)
    awards = 230

    def award(i: int) -> None:
        activity = "win-match" if i % 3 == 0 else "daily-login"
        c.xp.AwardXp(xp_pb2.AwardXpRequest(user_id="ann", activity_id=activity, request_id=f"a{i:03d}"))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(award, range(awards)))
    expected = {f"req#a{i:03d}" for i in range(awards)}

    done = run_command(c, "history", "ann", "--limit", "0")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == awards  # three pages of ListXpHistory, no footer
    ids = [line.rsplit("entry ", 1)[1] for line in lines]
    assert len(set(ids)) == awards and set(ids) == expected
    times = [line[:27] for line in lines]
    assert times == sorted(times, reverse=True)

    done = run_command(c, "history", "ann", "--limit", "120")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        *lines[:120],
        "the newest 120 entries of ann; --limit N lists more (0 lists all)",
    ]

    done = run_command(c, "history", "ann", "--limit", "0", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert [e["entry_id"] for e in answer["entries"]] == ids and answer["next_page_token"] == ""
    total = c.xp.GetProgress(xp_pb2.GetProgressRequest(user_id="ann")).total_xp
    assert sum(e["xp"] for e in answer["entries"]) == total == 77 * 150 + 153 * 20
