"""rewardsctl's catalog file with activity caps, streaks and streak runs asked
by achievements: read, written back, planned; then against real servers and
DynamoDB Local, applied, exported and applied again without a change, a
streak's period change refused before anything is written, and `verify`
counting caps and streaks in the days of the game's time zone on the stage
that a few days of play (on XP's clock, set by the test) leave."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from common.periods import DAY, WEEK
from common.streaks import Streak, StreakLength
from rewards.v1 import xp_pb2
from rewardsctl.__main__ import main
from rewardsctl.catalog import (
    Achievement,
    Activity,
    Cap,
    Catalog,
    CatalogFileError,
    catalog_warnings,
    format_catalog,
    parse_catalog,
)
from rewardsctl.catalog_plan import Backfill, backfills, plan_catalog
from rewardsctl.service_clients import ServiceClients, ServiceTargets
from tests.cluster import Cluster, mint_test_token

GAME_ZONE = "America/New_York"

CATALOG = """\
activities:
  - activity_id: daily-login
    name: Log in
    category: daily
    xp: 20
    cap: {max_awards: 1, period: PERIOD_DAY}
  - activity_id: win-match
    name: Win a match
    category: pvp
    xp: 150
    cap: {max_awards: 10, period: PERIOD_WEEK}
  - activity_id: lose-match
    name: Lose a match
    category: pvp
    xp: 30
streaks:
  - streak_id: login-days
    name: Days logged in
    activity_id: daily-login
    period: PERIOD_DAY
  - streak_id: pvp-weeks
    name: Weeks of PvP
    category: pvp
    period: PERIOD_WEEK
achievements:
  - achievement_id: regular
    name: Regular
    xp_reward: 50
    auto_unlock: true
    requirements:
      streak_lengths:
        - {streak_id: login-days, length: 3}
  - achievement_id: veteran
    name: Veteran
    xp_reward: 500
    requirements:
      activity_counts:
        - {category: pvp, count: 20}
      streak_lengths:
        - {streak_id: pvp-weeks, length: 4}
        - {streak_id: login-days, length: 30}
levels:
  - {level: 1, xp_required: 0}
  - level: 2
    xp_required: 100
    rewards:
      - {reward_id: gold, quantity: 50}
"""

CATALOG_ENTRIES = Catalog(
    activities=(
        Activity("daily-login", "Log in", category="daily", xp=20, cap=Cap(1, DAY)),
        Activity("lose-match", "Lose a match", category="pvp", xp=30),
        Activity("win-match", "Win a match", category="pvp", xp=150, cap=Cap(10, WEEK)),
    ),
    streaks=(
        Streak("login-days", "Days logged in", DAY, activity_id="daily-login"),
        Streak("pvp-weeks", "Weeks of PvP", WEEK, category="pvp"),
    ),
)


# --- the file, pure -------------------------------------------------------------------------------


def test_caps_streaks_and_streak_runs_read_and_write_back_in_the_file_format() -> None:
    catalog = parse_catalog(CATALOG)
    assert catalog.activities == CATALOG_ENTRIES.activities
    assert catalog.streaks == CATALOG_ENTRIES.streaks
    veteran = next(a for a in catalog.achievements or () if a.achievement_id == "veteran")
    # In the file's order, as the service keeps them.
    assert veteran.streak_lengths == (StreakLength("pvp-weeks", 4), StreakLength("login-days", 30))
    assert veteran.has_requirements
    written = format_catalog(catalog)
    # Enums by their proto names, as grpcurl shows them; a cap and each run on one line.
    assert "    cap: {max_awards: 1, period: PERIOD_DAY}\n" in written
    assert "streaks:\n  - streak_id: login-days\n    name: Days logged in\n    activity_id: daily-login\n" in written
    assert "    category: pvp\n    period: PERIOD_WEEK\n" in written
    assert "      streak_lengths:\n        - {streak_id: pvp-weeks, length: 4}\n" in written
    assert written.index("activities:") < written.index("streaks:") < written.index("achievements:")
    assert parse_catalog(written) == catalog
    assert catalog_warnings(catalog) == []
    # A cap of 0 is no cap (what the service keeps), as is none; a file without streaks does not manage them.
    no_cap = parse_catalog("activities:\n  - {activity_id: a, name: A, cap: {max_awards: 0}}\n")
    assert no_cap.activities == (Activity("a", "A"),) and no_cap.streaks is None
    assert "cap" not in format_catalog(no_cap)


def test_cap_and_streak_problems_are_listed_with_their_place() -> None:
    text = """
activities:
  - {activity_id: login, name: Log in, cap: {max_awards: 1, period: day}}
  - {activity_id: win, name: Win, cap: {max_awards: 2}}
  - {activity_id: lose, name: Lose, cap: {max_awards: 1, period: PERIOD_WEEK, per_user: true}}
streaks:
  - {streak_id: s1, name: S1, activity_id: login, category: daily, period: PERIOD_DAY}
  - {streak_id: s2, name: S2, activity_id: ghost, period: PERIOD_DAY}
  - {streak_id: s3, name: S3, category: pvp}
  - {streak_id: s2, name: Again, category: pvp, period: PERIOD_MONTH}
achievements:
  - achievement_id: a
    name: A
    requirements:
      streak_lengths:
        - {streak_id: s1, length: 3}
        - {streak_id: s1, length: 4}
        - {streak_id: nope, length: 1}
        - {streak_id: s3}
        - {streak_id: s2, length: long}
"""
    with pytest.raises(CatalogFileError) as caught:
        parse_catalog(text)
    runs = "achievements[0].requirements.streak_lengths"
    assert caught.value.problems == [
        "activities[0].cap.period: must be PERIOD_DAY or PERIOD_WEEK (got string 'day')",
        "activities[1].cap.period: is required with a max_awards other than 0 (PERIOD_DAY or PERIOD_WEEK)",
        "activities[2].cap.per_user: is not a known key (known: max_awards, period)",
        "streaks[0]: set exactly one of activity_id and category: what the streak counts",
        "streaks[1].activity_id: 'ghost' is not an activity of this file",
        "streaks[2].period: is required",
        "streaks[3].period: must be PERIOD_DAY or PERIOD_WEEK (got string 'PERIOD_MONTH')",
        "streaks[3].streak_id: 's2' is defined twice",
        f"{runs}[1].streak_id: 's1' is listed twice",
        f"{runs}[2].streak_id: 'nope' is not a streak of this file",
        f"{runs}[3].length: is required",
        f"{runs}[4].length: must be a whole number (got string 'long')",
    ]
    # Without a streaks section the file does not define the streaks: a run of any streak may be asked for.
    assert parse_catalog(
        "achievements:\n  - {achievement_id: a, name: A, requirements: {streak_lengths: [{streak_id: x, length: 2}]}}\n"
    ).achievements == (Achievement("a", "A", streak_lengths=(StreakLength("x", 2),)),)
    assert catalog_warnings(
        parse_catalog("activities: []\nstreaks:\n  - {streak_id: s, name: S, category: quests, period: PERIOD_WEEK}\n")
    ) == ["streak s counts awards of category 'quests', which no activity of the file has"]


def test_the_plan_shows_cap_and_streak_changes_and_refuses_a_streak_period_change() -> None:
    current = parse_catalog(CATALOG)
    edited = (
        CATALOG.replace("cap: {max_awards: 1, period: PERIOD_DAY}", "cap: {max_awards: 2, period: PERIOD_DAY}")
        .replace("    cap: {max_awards: 10, period: PERIOD_WEEK}\n", "")
        .replace("    category: pvp\n    period: PERIOD_WEEK\n", "    category: pvp\n    period: PERIOD_DAY\n")
        .replace("{streak_id: login-days, length: 3}", "{streak_id: login-days, length: 2}")
        .replace("name: Days logged in", "name: Logged in, days")
    )
    plan = plan_catalog(parse_catalog(edited), current)
    assert [(c.action, c.kind, c.key, [f.field for f in c.field_changes], bool(c.refused)) for c in plan.changes] == [
        ("change", "activity", "daily-login", ["cap"], False),
        ("change", "activity", "win-match", ["cap"], False),
        ("change", "streak", "login-days", ["name"], False),
        ("change", "streak", "pvp-weeks", ["period"], True),
        ("change", "achievement", "regular", ["streak_lengths"], False),
    ]
    assert plan.refused == (plan.changes[3],)
    assert [(f.old, f.new) for f in plan.changes[1].field_changes] == [(Cap(10, WEEK), None)]
    assert backfills(plan) == (Backfill("regular", ("run of streak login-days lowered 3 -> 2",)),)
    # Deleted from the file, a streak is deleted; created, it is created.
    renamed = plan_catalog(parse_catalog(CATALOG.replace("streak_id: pvp-weeks", "streak_id: pvp-days-2")), current)
    assert [(c.action, c.key) for c in renamed.changes if c.section == "streaks"] == [
        ("create", "pvp-days-2"),
        ("delete", "pvp-weeks"),
    ]
    assert renamed.refused == ()
    removed = plan_catalog(
        parse_catalog(CATALOG.replace("        - {streak_id: login-days, length: 30}\n", "")), current
    )
    assert backfills(removed) == ()  # veteran is not auto_unlock


# --- against the services -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The checkpoints of catalog apply's backfills go under $XDG_STATE_HOME: the test's own directory."""
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


def run_main(cluster: Cluster, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """main() in this process, configured by flags."""
    stage = [
        "--dynamodb-endpoint",
        str(cluster.settings.dynamodb_endpoint),
        "--table-prefix",
        cluster.settings.table_prefix,
    ]
    services = [
        "--xp-target",
        f"localhost:{cluster.ports['xp']}",
        "--achievements-target",
        f"localhost:{cluster.ports['achievements']}",
        "--levels-target",
        f"localhost:{cluster.ports['levels']}",
        "--token",
        mint_test_token(),
    ]
    flags = (stage if args[:2] == ("catalog", "apply") else []) + (services if args[0] == "catalog" else stage)
    capsys.readouterr()
    status = main([*args, *flags])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def catalog_of(cluster: Cluster) -> Catalog:
    targets = ServiceTargets(*(f"localhost:{cluster.ports[n]}" for n in ("xp", "achievements", "levels")))
    with ServiceClients(targets, timeout_s=10, token=mint_test_token()) as clients:
        return clients.read_catalog()


def apply(cluster: Cluster, capsys: pytest.CaptureFixture[str], path: Path, *flags: str) -> tuple[int, str, str]:
    return run_main(cluster, capsys, "catalog", "apply", str(path), "--no-backfill", *flags)


def change_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line[:2] in ("+ ", "~ ", "- ", "= ", "! ")]


def test_apply_export_and_apply_again_keep_caps_and_streaks_whole(
    new_cluster: Callable[..., Cluster], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = new_cluster()
    path = tmp_path / "game.yaml"
    path.write_text(CATALOG)
    status, out, err = apply(cluster, capsys, path, "--dry-run")
    assert status == 0, err
    assert change_lines(out)[:5] == [
        "+ create activity daily-login ('Log in', 20 XP, category daily, at most 1 a day)",
        "+ create activity lose-match ('Lose a match', 30 XP, category pvp)",
        "+ create activity win-match ('Win a match', 150 XP, category pvp, at most 10 a week)",
        "+ create streak login-days ('Days logged in', days in a row of daily-login)",
        "+ create streak pvp-weeks ('Weeks of PvP', weeks in a row of category pvp)",
    ]
    assert "+ create achievement regular ('Regular', 50 XP, runs 3 x streak login-days, auto_unlock)" in out
    assert "streaks: 2 to create, 0 to change, 0 to delete, 0 unchanged" in out
    assert catalog_of(cluster).is_empty()

    status, out, err = apply(cluster, capsys, path)
    assert status == 0, err
    assert "applied 9 changes" in out
    assert catalog_of(cluster) == parse_catalog(CATALOG)
    # The services hold what the file says: the cap and the streak as XpService answers them.
    login = cluster.xp.GetActivity(xp_pb2.GetActivityRequest(activity_id="daily-login"))
    assert (login.cap.max_awards, login.cap.period) == (1, xp_pb2.PERIOD_DAY)
    weeks = cluster.xp.GetStreak(xp_pb2.GetStreakRequest(streak_id="pvp-weeks"))
    assert (weeks.category, weeks.period) == ("pvp", xp_pb2.PERIOD_WEEK)

    exported = tmp_path / "exported.yaml"
    status, out, err = run_main(cluster, capsys, "catalog", "export", "-o", str(exported))
    assert status == 0
    assert err == f"wrote 3 activities, 2 streaks, 2 achievements and 2 levels to {exported}\n"
    assert parse_catalog(exported.read_text()) == parse_catalog(CATALOG)
    status, out, _ = apply(cluster, capsys, exported)
    assert status == 0 and change_lines(out) == []
    assert out.rstrip().endswith("no changes: the catalog already matches the file")

    # A file that leaves streaks out leaves them alone; an empty streaks section deletes them.
    no_streaks = tmp_path / "no-streaks.yaml"
    no_streaks.write_text("activities:\n" + CATALOG.split("activities:\n", 1)[1].split("streaks:\n", 1)[0])
    status, out, _ = apply(cluster, capsys, no_streaks)
    assert status == 0 and "streaks: not in the file, 2 left as they are" in out
    no_streaks.write_text("streaks: []\n")
    status, out, _ = apply(cluster, capsys, no_streaks)
    assert status == 0
    assert change_lines(out) == [
        "- deleted streak login-days (not in the file)",
        "- deleted streak pvp-weeks (not in the file)",
    ]
    assert catalog_of(cluster).streaks == ()
    status, out, _ = run_main(cluster, capsys, "catalog", "export")
    assert status == 0 and "\nstreaks: []\n" in out
    # Put back as they were (same periods), they are the same streaks again.
    status, out, _ = apply(cluster, capsys, path)
    assert status == 0 and catalog_of(cluster) == parse_catalog(CATALOG)


def test_a_streak_period_change_is_refused_and_nothing_is_written(
    new_cluster: Callable[..., Cluster], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = new_cluster()
    path = tmp_path / "game.yaml"
    path.write_text(CATALOG)
    assert apply(cluster, capsys, path)[0] == 0
    edited = CATALOG.replace("xp: 150", "xp: 175").replace(
        "    category: pvp\n    period: PERIOD_WEEK\n", "    category: pvp\n    period: PERIOD_DAY\n"
    )
    path.write_text(edited)
    refused = (
        "! refused change streak pvp-weeks: period 'week' -> 'day': a streak's period is fixed once created (its "
        "players' runs are made of weeks), so XpService refuses PERIOD_DAY with FAILED_PRECONDITION: a streak of "
        "another period needs a new streak_id"
    )
    for flags in (("--dry-run",), ()):
        status, out, err = apply(cluster, capsys, path, *flags)
        assert status == 1
        assert change_lines(out) == ["~ change activity win-match: xp 150 -> 175", refused]
        assert "streaks: 0 to create, 1 to change, 0 to delete, 1 unchanged" in out
        assert err.splitlines() == [
            f"rewardsctl: nothing was changed: the services would refuse 1 of the 2 changes {path} asks for:",
            "  streak pvp-weeks: a streak's period is fixed once created (its players' runs are made of weeks), so "
            "XpService refuses PERIOD_DAY with FAILED_PRECONDITION: a streak of another period needs a new streak_id",
            f"fix {path} and apply it again",
        ]
    assert catalog_of(cluster) == parse_catalog(CATALOG)  # not even the activity's XP

    # A streak deleted before keeps its period too; the plan cannot see it, the service refuses it.
    path.write_text(
        CATALOG.replace("  - streak_id: pvp-weeks\n    name: Weeks of PvP\n    category: pvp\n", "")
        .replace("    period: PERIOD_WEEK\nachievements:", "achievements:")
        .replace("        - {streak_id: pvp-weeks, length: 4}\n", "")
    )
    status, out, err = apply(cluster, capsys, path)
    assert status == 0, err
    assert "- deleted streak pvp-weeks (not in the file)" in change_lines(out)
    path.write_text(
        CATALOG.replace("    category: pvp\n    period: PERIOD_WEEK\n", "    category: pvp\n    period: PERIOD_DAY\n")
    )
    status, out, err = apply(cluster, capsys, path)
    assert status == 1
    lines = err.splitlines()
    assert lines[0].startswith(
        "rewardsctl: could not create streak pvp-weeks: FAILED_PRECONDITION: streak 'pvp-weeks' "
    )
    assert "a streak of another period needs a new streak_id" in lines[0]
    assert any(line.startswith(f"0 of 2 changes were made before this one; fix {path}") for line in lines)


# --- verify, on a stage of a few days of play ------------------------------------------------------


class SetClock:
    """XP's clock: the instant the test last set, as local time of the game's zone."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def set_local(self, year: int, month: int, day: int, hour: int, minute: int) -> None:
        self.now = datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(GAME_ZONE)).astimezone(UTC)


@pytest.fixture
def game(new_cluster: Callable[..., Cluster], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """A cluster whose game's time zone is New York's, on the test's clock, with CATALOG applied."""
    clock = SetClock()
    cluster = new_cluster(clock=clock, time_zone=GAME_ZONE, auto_rules_cache_s=0.0)
    path = tmp_path / "game.yaml"
    path.write_text(CATALOG)
    assert apply(cluster, capsys, path)[0] == 0
    yield cluster, clock


def award_at(cluster: Cluster, clock: SetClock, user: str, activity_id: str, *local: int) -> xp_pb2.AwardXpResponse:
    clock.set_local(*local)
    request_id = "-".join([activity_id, *map(str, local)])
    request = xp_pb2.AwardXpRequest(user_id=user, activity_id=activity_id, request_id=request_id)
    answer = cluster.xp.AwardXp(request)
    while answer.level_check_deferred or answer.unlocks_deferred:  # settled, as the README says
        answer = cluster.xp.AwardXp(request)
    return answer


def verify(cluster: Cluster, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, dict[str, Any]]:
    status, out, err = run_main(cluster, capsys, "verify", "--json", *flags)
    assert err == ""
    return status, json.loads(out)


def test_verify_counts_caps_and_streaks_in_the_days_of_the_game_zone(
    game: tuple[Cluster, SetClock], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, clock = game
    # Three evenings in a row in New York: the first two logins are one UTC day (March 7th, 04:30Z and 05:30Z).
    unlocked = [
        list(award_at(cluster, clock, "alice", "daily-login", *at).unlocked_achievements)
        for at in ((2026, 3, 6, 23, 30), (2026, 3, 7, 0, 30), (2026, 3, 8, 21, 0))
    ]
    assert unlocked == [[], [], ["regular"]]  # three days in a row of login-days
    assert award_at(cluster, clock, "alice", "daily-login", 2026, 3, 8, 22, 0).capped
    award_at(cluster, clock, "alice", "win-match", 2026, 3, 9, 8, 0)  # Monday: the week of pvp-weeks
    award_at(cluster, clock, "alice", "lose-match", 2026, 3, 10, 8, 0)
    cluster.xp.RevokeAward(
        xp_pb2.RevokeAwardRequest(user_id="alice", request_id="win-match-2026-3-9-8-0", reason="cheated")
    )
    progress = cluster.xp.GetProgress(xp_pb2.GetProgressRequest(user_id="alice"))
    assert [(s.streak_id, s.best) for s in progress.streaks] == [("login-days", 3), ("pvp-weeks", 1)]

    # The services' zone, as REWARDS_TIME_ZONE gives it to the command.
    monkeypatch.setenv("REWARDS_TIME_ZONE", GAME_ZONE)
    status, report = verify(cluster, capsys, "--strict")
    assert status == 0, (report["violations"], report["warnings"])
    assert report["time_zone"] == GAME_ZONE
    invariants = report["invariants"]
    # The three days of daily-login and their slots; the week of win-match and its slot.
    assert invariants["cap-respected"]["checked"] == 3 + 3 + 1 + 1
    assert invariants["streak-summary-consistent"]["checked"] == 2
    assert invariants["streak-periods-have-awards"]["checked"] == 3 + 1
    assert all(i["violations"] == 0 and i["checked"] > 0 for i in invariants.values()), invariants

    # Read in UTC days (the 8th at 21:00 in New York is the 9th at 01:00Z), the first two logins are two counted
    # awards of one day, two slots and two days of the run have no award of their day.
    status, report = verify(cluster, capsys, "--time-zone", "UTC")
    assert status == 1
    slot = "cap slot 'cap#daily-login#day:{day}' holds 1 awards, but the ledger has 0 awards of 'daily-login' in day:{day} that were not capped (+1)"
    run = "streak run 's#login-days' holds the day of {day}, but the ledger has no counted award of activity 'daily-login' in it"
    assert [(v["invariant"], v["message"]) for v in report["violations"]] == [
        (
            "cap-respected",
            "activity 'daily-login' is capped at 1 a day, but 2 of its awards in day:2026-03-07 were not capped (+1)",
        ),
        ("cap-respected", slot.format(day="2026-03-06")),
        ("cap-respected", slot.format(day="2026-03-08")),
        ("streak-periods-have-awards", run.format(day="2026-03-06")),
        ("streak-periods-have-awards", run.format(day="2026-03-08")),
    ]
    with pytest.raises(SystemExit) as exited:
        run_main(cluster, capsys, "verify", "--time-zone", "Mars/Olympus")
    assert exited.value.code == 2
    monkeypatch.setenv("REWARDS_TIME_ZONE", "Mars/Olympus")
    status, _, err = run_main(cluster, capsys, "verify")
    assert status == 2 and err.startswith("rewardsctl: REWARDS_TIME_ZONE: not an IANA time zone name")
    monkeypatch.setenv("REWARDS_TIME_ZONE", GAME_ZONE)

    # A day added to a run that no award made: a violation, a note if the streak may have counted something else.
    cluster.dynamodb.update_item(
        TableName=cluster.table("activity_counts"),
        Key={"user_id": {"S": "alice"}, "counter": {"S": "s#login-days"}},
        UpdateExpression="ADD touched :d",
        ExpressionAttributeValues={":d": {"SS": ["2026-03-12"]}},
    )
    status, report = verify(cluster, capsys)
    assert status == 1
    assert [(v["invariant"], v["message"]) for v in report["violations"]] == [
        (
            "streak-periods-have-awards",
            "streak run 's#login-days' holds the day of 2026-03-12, but the ledger has no counted award of activity "
            "'daily-login' in it",
        )
    ]
    status, report = verify(cluster, capsys, "--catalog-changed")
    assert status == 0 and [n["invariant"] for n in report["notes"]] == ["streak-periods-have-awards"]


def test_the_services_catalog_equals_the_file_with_every_field(new_cluster: Callable[..., Cluster]) -> None:
    """What ListActivities and ListStreaks answer, through rewardsctl's clients, is the file's catalog,
    field by field (no cap dropped, no period changed, runs in order)."""
    cluster = new_cluster()
    targets = ServiceTargets(*(f"localhost:{cluster.ports[n]}" for n in ("xp", "achievements", "levels")))
    desired = parse_catalog(CATALOG)
    with ServiceClients(targets, timeout_s=10, token=mint_test_token()) as clients:
        for change in plan_catalog(desired, clients.read_catalog()).changes:
            clients.apply_change(change)
        read = clients.read_catalog()
    assert read == desired
    assert replace(read, achievements=None, levels=None) == replace(CATALOG_ENTRIES, achievements=None, levels=None)
