"""rewardsctl against real servers and DynamoDB Local: the catalog as a file
(apply, dry run, idempotency, export), the player commands, a backup of a
stage with a few hundred players restored into an empty one, and `verify`'s
summary, limit and reading one user at a time."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from common.config import Settings
from common.dynamodb import DynamoDBClient, create_dynamodb_client, ensure_tables, to_item
from common.models import Level as LevelEntry
from common.models import LevelTable
from common.streaks import StreakLength
from devcluster.dynamodb_local import REPO_ROOT
from rewards.v1 import achievements_pb2, levels_pb2, xp_pb2
from rewardsctl.__main__ import main
from rewardsctl.backup import BackupError, write_batch
from rewardsctl.catalog import (
    Achievement,
    Activity,
    ActivityCount,
    Catalog,
    CatalogFileError,
    Level,
    Reward,
    catalog_warnings,
    format_catalog,
    parse_catalog,
)
from rewardsctl.catalog_plan import Backfill, backfills, plan_catalog
from rewardsctl.service_clients import ServiceClients, ServiceTargets
from rewardsctl.verify import VIOLATION, StageContents, read_users, verify_contents
from tests.cluster import Cluster, mint_test_token

SAMPLE_CATALOG = REPO_ROOT / "catalog" / "sample-game.yaml"


def cli_env(cluster: Cluster) -> dict[str, str]:
    return {
        **os.environ,
        "REWARDS_XP_TARGET": f"localhost:{cluster.ports['xp']}",
        "REWARDS_ACHIEVEMENTS_TARGET": f"localhost:{cluster.ports['achievements']}",
        "REWARDS_LEVELS_TARGET": f"localhost:{cluster.ports['levels']}",
        "REWARDS_DYNAMODB_ENDPOINT": str(cluster.settings.dynamodb_endpoint),
        "REWARDS_TABLE_PREFIX": cluster.settings.table_prefix,
        "REWARDS_TOKEN": mint_test_token(),
    }


def run_command(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command, `python -m rewardsctl`, configured by environment variables."""
    return subprocess.run(
        [sys.executable, "-m", "rewardsctl", *args],
        cwd=REPO_ROOT,
        env=cli_env(cluster),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The checkpoints of catalog apply's backfills go under $XDG_STATE_HOME: the test's own directory."""
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


def run_main(cluster: Cluster, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """main() in this process (faster), configured by flags."""
    if args[:2] == ("catalog", "apply"):  # its backfill scans the stage's players
        args = (
            *args,
            "--dynamodb-endpoint",
            str(cluster.settings.dynamodb_endpoint),
            "--table-prefix",
            cluster.settings.table_prefix,
        )
    targets = [
        "--xp-target",
        f"localhost:{cluster.ports['xp']}",
        "--achievements-target",
        f"localhost:{cluster.ports['achievements']}",
        "--levels-target",
        f"localhost:{cluster.ports['levels']}",
        "--token",
        mint_test_token(),
    ]
    capsys.readouterr()
    status = main([*args, *targets])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def change_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line[:2] in ("+ ", "~ ", "- ", "= ")]


def catalog_of(cluster: Cluster) -> Catalog:
    targets = ServiceTargets(*(f"localhost:{cluster.ports[n]}" for n in ("xp", "achievements", "levels")))
    with ServiceClients(targets, timeout_s=10, token=mint_test_token()) as clients:
        return clients.read_catalog()


def without_streaks(catalog: Catalog) -> Catalog:
    """A file's catalog as the services hold it when it has no streaks section (they hold none)."""
    return replace(catalog, streaks=catalog.streaks or ())


# --- the catalog file, pure --------------------------------------------------------------


def test_sample_catalog_reads_as_a_small_game() -> None:
    catalog = parse_catalog(SAMPLE_CATALOG.read_text())
    assert catalog.activities is not None and catalog.achievements is not None and catalog.levels is not None
    assert {a.category for a in catalog.activities} == {"pvp", "quests", "daily", "daily-quest"}
    assert len(catalog.activities) == 9 and len(catalog.achievements) == 11 and len(catalog.levels) == 10
    assert [s.streak_id for s in catalog.streaks or ()] == ["login-days", "pvp-weeks"]
    # What the README's grpcurl walk-through relies on.
    assert Activity("win-match", "Win a match", category="pvp", xp=150) in catalog.activities
    assert Achievement("first-win", "First win", xp_reward=50) in catalog.achievements
    assert catalog.levels[:2] == (Level(1, 0), Level(2, 100, (Reward("gold", 50),)))
    boss_slayer = next(a for a in catalog.achievements if a.achievement_id == "boss-slayer")
    assert boss_slayer.required_achievements == ("quest-starter",) and boss_slayer.min_level == 3
    # Tiers of wins and a week of daily quests unlock themselves.
    auto = {a.achievement_id: a.activity_counts for a in catalog.achievements if a.auto_unlock}
    assert auto == {
        "daily-quests-7": (ActivityCount(category="daily-quest", count=7),),
        "wins-1": (ActivityCount("win-match", count=1),),
        "wins-10": (ActivityCount("win-match", count=10),),
        "wins-50": (ActivityCount("win-match", count=50),),
        "login-week": (),
    }
    login_week = next(a for a in catalog.achievements if a.achievement_id == "login-week")
    assert login_week.streak_lengths == (StreakLength("login-days", 7),)
    assert [a.activity_id for a in catalog.activities if a.category == "daily-quest"] == [
        "daily-quest-arena",
        "daily-quest-dungeon",
    ]
    assert catalog_warnings(catalog) == []
    # Written back, it reads the same.
    assert parse_catalog(format_catalog(catalog)) == catalog


def test_catalog_file_problems_are_all_listed_with_their_place() -> None:
    text = """
activities:
  - {activity_id: no, name: X, xp: 1.5, colour: red}
  - {activity_id: a, name: A}
  - {activity_id: a, name: A again}
achievements:
  - {achievement_id: x, name: X, requirements: {required_achievements: [y, ghost]}}
  - {achievement_id: y, name: Y, requirements: {required_achievements: [x, x]}}
levels:
  - {level: 2, rewards: [{reward_id: gold}]}
"""
    with pytest.raises(CatalogFileError) as caught:
        parse_catalog(text)
    assert caught.value.problems == [
        "activities[0].colour: is not a known key (known: activity_id, name, description, category, xp, cap)",
        "activities[0].activity_id: must be a string (got boolean False); quote it",
        "activities[0].xp: must be a whole number (got number 1.5)",
        "activities[2].activity_id: 'a' is defined twice",
        "achievements[1].requirements.required_achievements[1]: 'x' is listed twice",
        "achievements[0].requirements.required_achievements[1]: 'ghost' is not an achievement of this file",
        "achievements: requirements form a cycle, so none of them can be unlocked: x -> y -> x",
        "levels[0].rewards[0].quantity: is required",
    ]


def test_plan_creates_changes_deletes_or_keeps_in_a_stable_order() -> None:
    current = Catalog.of(
        [Activity("b", "B", xp=10), Activity("old", "Old", xp=1), Activity("same", "Same", xp=5)],
        [Achievement("gone", "Gone")],
        [Level(1, 0), Level(2, 100, (Reward("gold", 50),))],
    )
    desired = parse_catalog("""
activities:
  - {activity_id: same, name: Same, xp: 5}
  - {activity_id: b, name: B, xp: 20, category: pvp}
  - {activity_id: a, name: A, xp: 1}
levels:
  - {level: 1, xp_required: 0}
  - {level: 2, xp_required: 100, rewards: [{reward_id: gold, quantity: 75}]}
""")
    plan = plan_catalog(desired, current)
    assert [(c.action, c.kind, c.key) for c in plan.changes] == [
        ("create", "activity", "a"),
        ("change", "activity", "b"),
        ("delete", "activity", "old"),
        ("change", "level", 2),
    ]
    assert [(f.field, f.old, f.new) for f in plan.changes[1].field_changes] == [("category", "", "pvp"), ("xp", 10, 20)]
    summaries = {s.section: s for s in plan.summaries}
    assert (
        summaries["activities"].create,
        summaries["activities"].change,
        summaries["activities"].delete,
        summaries["activities"].unchanged,
    ) == (1, 1, 1, 1)
    # The file has no achievements section: they are not managed, so "gone" stays.
    assert not summaries["achievements"].managed and summaries["achievements"].unchanged == 1
    kept = plan_catalog(desired, current, delete_missing=False)
    assert [(c.action, c.key) for c in kept.changes if c.section == "activities"] == [
        ("create", "a"),
        ("change", "b"),
        ("keep", "old"),
    ]
    assert len(kept.writes) == 3
    assert (
        plan_catalog(desired, Catalog.of(list(desired.activities or ()), [], list(desired.levels or ()))).writes == ()
    )


def test_auto_unlock_and_activity_counts_read_and_write_back() -> None:
    text = """
activities:
  - {activity_id: win, name: Win, category: pvp, xp: 10}
achievements:
  - achievement_id: veteran
    name: Veteran
    xp_reward: 100
    auto_unlock: true
    requirements:
      min_level: 2
      activity_counts:
        - {activity_id: win, count: 10}
        - {category: pvp, count: 25}
"""
    catalog = parse_catalog(text)
    assert catalog.achievements == (
        Achievement(
            "veteran",
            "Veteran",
            xp_reward=100,
            min_level=2,
            activity_counts=(ActivityCount("win", count=10), ActivityCount(category="pvp", count=25)),
            auto_unlock=True,
        ),
    )
    written = format_catalog(catalog)
    assert "    auto_unlock: true\n" in written
    assert (
        "      activity_counts:\n        - {activity_id: win, count: 10}\n        - {category: pvp, count: 25}\n"
        in (written)
    )
    assert parse_catalog(written) == catalog


def test_activity_count_problems_are_listed_with_their_place() -> None:
    text = """
activities:
  - {activity_id: win, name: Win, category: pvp}
achievements:
  - achievement_id: a
    name: A
    auto_unlock: yes please
    requirements:
      activity_counts:
        - {activity_id: win, category: pvp, count: 1}
        - {count: 2}
        - {activity_id: ghost, count: 1}
        - {category: pvp, count: many}
        - {category: pvp, count: 3}
        - {activity_id: win, count: 1, colour: red}
        - {activity_id: "", count: 1}
  - achievement_id: b
    name: B
    requirements: {activity_counts: {activity_id: win}}
"""
    with pytest.raises(CatalogFileError) as caught:
        parse_catalog(text)
    counts = "achievements[0].requirements.activity_counts"
    assert caught.value.problems == [
        f"{counts}[0]: set exactly one of activity_id and category",
        f"{counts}[1]: set exactly one of activity_id and category",
        f"{counts}[2].activity_id: 'ghost' is not an activity of this file",
        f"{counts}[3].count: must be a whole number (got string 'many')",
        f"{counts}[4].category: 'pvp' is counted twice",
        f"{counts}[5].colour: is not a known key (known: count, activity_id, category)",
        f"{counts}[6].activity_id: must not be empty",
        "achievements[0].auto_unlock: must be true or false (got string 'yes please')",
        "achievements[1].requirements.activity_counts: must be a list (got mapping)",
    ]
    # Without an activities section the file does not define the activities: any id may be counted.
    assert parse_catalog(
        "achievements:\n  - {achievement_id: a, name: A, requirements: {activity_counts: [{activity_id: x, count: 1}]}}\n"
    ).achievements == (Achievement("a", "A", activity_counts=(ActivityCount("x", count=1),)),)


def test_warnings_name_auto_unlock_achievements_anyone_gets_and_categories_no_activity_has() -> None:
    catalog = parse_catalog("""
activities:
  - {activity_id: win, name: Win, category: pvp}
achievements:
  - {achievement_id: free, name: Free, auto_unlock: true}
  - achievement_id: quests
    name: Quests
    auto_unlock: true
    requirements: {activity_counts: [{category: quest, count: 3}]}
""")
    assert catalog_warnings(catalog) == [
        "achievement free is auto_unlock with no requirements: every player is given it (at their next award, "
        "or by a backfill)",
        "achievement quests counts awards of category 'quest', which no activity of the file has",
    ]


def test_backfills_are_the_auto_unlock_achievements_added_or_made_easier() -> None:
    def auto(achievement_id: str, **fields: Any) -> Achievement:
        return Achievement(achievement_id, achievement_id.title(), auto_unlock=True, **fields)

    current = Catalog.of(
        [],
        [
            auto(
                "easier",
                min_total_xp=500,
                min_level=5,
                activity_counts=(ActivityCount("win", count=10), ActivityCount(category="pvp", count=3)),
                required_achievements=("x", "y"),
            ),
            auto("harder", activity_counts=(ActivityCount("win", count=1),), min_level=1),
            auto("renamed"),
            Achievement("switched", "Switched", min_total_xp=10),
            Achievement("manual-eased", "Manual", min_total_xp=500),
            Achievement("x", "X"),
            Achievement("y", "Y"),
        ],
        [],
    )
    desired = Catalog.of(
        [],
        [
            auto(
                "easier",
                min_total_xp=400,
                min_level=3,
                activity_counts=(ActivityCount("win", count=5), ActivityCount("mvp", count=1)),
                required_achievements=("x",),
            ),
            auto("harder", activity_counts=(ActivityCount("win", count=2),), min_level=1),
            Achievement("renamed", "New name", auto_unlock=True),
            auto("switched", min_total_xp=20),
            Achievement("manual-eased", "Manual", min_total_xp=100),
            Achievement("added-manual", "Added manual"),
            auto("added"),
            Achievement("x", "X"),
            Achievement("y", "Y"),
        ],
        [],
    )
    assert backfills(plan_catalog(desired, current)) == (
        Backfill("added", ("added",)),
        Backfill(
            "easier",
            (
                "min_total_xp lowered 500 -> 400",
                "min_level lowered 5 -> 3",
                "count of win lowered 10 -> 5",
                "count of category pvp removed (was 3)",
                "required achievement y removed",
            ),
        ),
        Backfill("switched", ("auto_unlock switched on",)),
    )
    # Applied, nothing is left to backfill.
    assert backfills(plan_catalog(desired, desired)) == ()


# --- catalog apply and export, through the real command -------------------------------------


def test_apply_sample_dry_run_then_apply_then_nothing_to_do(new_cluster: Callable[..., Cluster]) -> None:
    cluster = new_cluster()

    dry_run = run_command(cluster, "catalog", "apply", "--dry-run", str(SAMPLE_CATALOG))
    assert dry_run.returncode == 0, dry_run.stderr
    planned = change_lines(dry_run.stdout)
    assert len(planned) == 32 and all(line.startswith("+ create ") for line in planned)
    assert "+ create activity win-match ('Win a match', 150 XP, category pvp)" in planned
    assert "+ create level 2 (at 100 XP, rewards 50 gold)" in planned
    assert "+ create achievement wins-10 ('Winner II', 250 XP, counts 10 x win-match, auto_unlock)" in planned
    assert "dry run: 32 changes planned, nothing was changed" in dry_run.stdout
    assert "will backfill wins-1: added" in dry_run.stdout
    assert catalog_of(cluster).is_empty()

    applied = run_command(cluster, "catalog", "apply", str(SAMPLE_CATALOG))
    assert applied.returncode == 0, applied.stderr
    assert change_lines(applied.stdout) == [line.replace("+ create ", "+ created ") for line in planned]
    assert "activities: 9 created, 0 changed, 0 deleted, 0 unchanged" in applied.stdout
    # The auto_unlock achievements it added are backfilled: the stage has no players yet.
    assert [line for line in applied.stdout.splitlines() if line.startswith("backfill ") and " done " not in line] == [
        "backfill daily-quests-7: added",
        "backfill login-week: added",
        "backfill wins-1: added",
        "backfill wins-10: added",
        "backfill wins-50: added",
    ]
    assert re.search(r"^users evaluated +0$", applied.stdout, re.MULTILINE)
    assert catalog_of(cluster) == without_streaks(parse_catalog(SAMPLE_CATALOG.read_text()))

    again = run_command(cluster, "catalog", "apply", str(SAMPLE_CATALOG))
    assert again.returncode == 0, again.stderr
    assert change_lines(again.stdout) == []
    assert "levels: 0 created, 0 changed, 0 deleted, 10 unchanged" in again.stdout
    assert again.stdout.rstrip().endswith("no changes: the catalog already matches the file")

    exported = run_command(cluster, "catalog", "export")
    assert exported.returncode == 0, exported.stderr
    assert parse_catalog(exported.stdout) == without_streaks(parse_catalog(SAMPLE_CATALOG.read_text()))

    # A new user can play at once: the README's first award, whose first win unlocks wins-1 (+25 XP).
    awarded = run_command(cluster, "award", "alice", "win-match", "--request-id", "match-1")
    assert awarded.returncode == 0, awarded.stderr
    assert awarded.stdout.splitlines()[:3] == [
        "alice: +150 XP for win-match; total 175 XP, level 2",
        "level up: 1 -> 2; rewards: 50 gold",
        "unlocked (auto_unlock): wins-1",
    ]
    # The README's unlock of first-win still works: it is not auto_unlock.
    unlocked = run_command(cluster, "unlock", "alice", "first-win")
    assert unlocked.returncode == 0, unlocked.stderr
    assert unlocked.stdout.strip() == "alice: unlocked first-win ('First win'): +50 XP; total 225 XP"


def test_apply_changes_and_deletes_what_the_file_says(
    new_cluster: Callable[..., Cluster], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = new_cluster()
    assert run_main(cluster, capsys, "catalog", "apply", str(SAMPLE_CATALOG))[0] == 0
    edited = (
        SAMPLE_CATALOG.read_text()
        .replace("    xp: 150\n", "    xp: 175\n")
        .replace(
            "      - {reward_id: gold, quantity: 50}\n",
            "      - {reward_id: gold, quantity: 60}\n      - {reward_id: gem, quantity: 1}\n",
        )
    )
    start = edited.index("  - achievement_id: dedicated")
    edited = edited[:start] + edited[edited.index("  - achievement_id: arena-legend") :]
    edited += "  - level: 11\n    xp_required: 5500\n"
    path = tmp_path / "edited.yaml"
    path.write_text(edited)

    status, out, _ = run_main(cluster, capsys, "catalog", "apply", "--dry-run", str(path))
    assert status == 0
    assert change_lines(out) == [
        "~ change activity win-match: xp 150 -> 175",
        "- delete achievement dedicated (not in the file)",
        "~ change level 2: rewards [50 gold] -> [60 gold, 1 gem]",
        "+ create level 11 (at 5,500 XP)",
    ]

    status, out, _ = run_main(cluster, capsys, "catalog", "apply", "--no-delete", str(path))
    assert status == 0
    assert "= kept achievement dedicated (not in the file; --no-delete)" in change_lines(out)
    assert "achievements: 0 created, 0 changed, 0 deleted, 1 kept (--no-delete), 10 unchanged" in out
    assert len(catalog_of(cluster).achievements or ()) == 11

    status, out, _ = run_main(cluster, capsys, "catalog", "apply", str(path))
    assert status == 0
    assert change_lines(out) == ["- deleted achievement dedicated (not in the file)"]
    assert catalog_of(cluster) == without_streaks(parse_catalog(edited))
    win_match = cluster.xp.GetActivity(xp_pb2.GetActivityRequest(activity_id="win-match"))
    assert win_match.xp == 175

    # A section the file leaves out is not touched; an empty one is emptied.
    only_levels = tmp_path / "only-levels.yaml"
    only_levels.write_text("levels: []\n")
    status, out, _ = run_main(cluster, capsys, "catalog", "apply", str(only_levels))
    assert status == 0
    assert "activities: not in the file, 9 left as they are" in out
    assert "levels: 0 created, 0 changed, 11 deleted, 0 unchanged" in out
    after = catalog_of(cluster)
    assert after.levels == () and len(after.activities or ()) == 9


def test_apply_if_empty_loads_only_into_an_empty_catalog(
    new_cluster: Callable[..., Cluster], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = new_cluster()
    status, out, _ = run_main(cluster, capsys, "catalog", "apply", "--if-empty", str(SAMPLE_CATALOG))
    assert status == 0 and "applied 32 changes" in out
    # A first load into an empty catalog: no players to evaluate, no DynamoDB access.
    assert (
        "not backfilled (--if-empty loads a new stage's first catalog): daily-quests-7, login-week, wins-1, wins-10, "
        "wins-50; `rewardsctl achievements backfill daily-quests-7 login-week wins-1 wins-10 wins-50` evaluates every "
        "player for them"
    ) in out
    cluster.xp.PutActivity(xp_pb2.PutActivityRequest(activity=xp_pb2.Activity(activity_id="own", name="Own", xp=1)))
    status, out, _ = run_main(cluster, capsys, "catalog", "apply", "--if-empty", str(SAMPLE_CATALOG))
    assert status == 0
    assert (
        out.strip()
        == "the catalog is not empty (10 activities, 2 streaks, 11 achievements, 10 levels): left as it is (--if-empty)"
    )
    assert cluster.xp.GetActivity(xp_pb2.GetActivityRequest(activity_id="own")).xp == 1


def test_bad_files_and_refused_entries_exit_non_zero(
    new_cluster: Callable[..., Cluster], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = new_cluster()
    broken = tmp_path / "broken.yaml"
    broken.write_text("activities:\n  - {activity_id: a, name: A, xp: lots}\n")
    status, out, err = run_main(cluster, capsys, "catalog", "apply", str(broken))
    assert status == 2 and out == ""
    assert err == (
        f"rewardsctl: {broken} is not a valid catalog, nothing was changed:\n"
        "  activities[0].xp: must be a whole number (got string 'lots')\n"
    )

    # The services judge limits: INVALID_ARGUMENT names the field, and the command says how far it got.
    too_much = tmp_path / "too-much.yaml"
    too_much.write_text(
        "activities:\n  - {activity_id: a, name: A, xp: 5}\n  - {activity_id: b, name: B, xp: 2000000000}\n"
    )
    status, out, err = run_main(cluster, capsys, "catalog", "apply", str(too_much))
    assert status == 1
    assert out == "+ created activity a ('A', 5 XP)\n"
    assert err.splitlines() == [
        "rewardsctl: could not create activity b: INVALID_ARGUMENT: activity.xp must be at most 1000000000 (got 2000000000)",
        f"1 of 2 changes were made before this one; fix {too_much} and apply it again (apply is idempotent: what is "
        "done already is left as it is)",
    ]
    status, _, err = run_main(cluster, capsys, "catalog", "apply", str(tmp_path / "missing.yaml"))
    assert status == 2 and "cannot read" in err


# --- player commands ------------------------------------------------------------------------------


def test_award_unlock_and_progress_print_what_happened(
    new_cluster: Callable[..., Cluster], capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = new_cluster()
    assert run_main(cluster, capsys, "catalog", "apply", str(SAMPLE_CATALOG))[0] == 0

    status, out, _ = run_main(cluster, capsys, "award", "bob", "defeat-boss", "--request-id", "boss-1")
    assert status == 0
    assert out.splitlines() == [
        "bob: +300 XP for defeat-boss; total 300 XP, level 3",
        "level up: 1 -> 3; rewards: 150 gold",
        "request_id boss-1 (repeat it with --request-id to retry safely)",
    ]
    status, out, _ = run_main(cluster, capsys, "award", "bob", "defeat-boss", "--request-id", "boss-1")
    assert status == 0
    assert out.splitlines()[0] == (
        "bob: request boss-1 was already recorded, nothing changed (it awarded 300 XP for "
        "defeat-boss); total 300 XP, level 3"
    )
    # Without --request-id the command makes one, so that the award can be repeated safely.
    status, out, _ = run_main(cluster, capsys, "award", "bob", "daily-login")
    assert status == 0 and "total 320 XP" in out and "request_id rewardsctl-" in out

    status, _, err = run_main(cluster, capsys, "unlock", "bob", "boss-slayer")
    assert status == 1
    assert err.splitlines()[0] == (
        "rewardsctl: unlock failed: FAILED_PRECONDITION: requirements of achievement "
        "'boss-slayer' are not met: achievement 'quest-starter' must be unlocked first"
    )
    status, out, _ = run_main(cluster, capsys, "unlock", "bob", "quest-starter")
    assert status == 0 and out.strip() == "bob: unlocked quest-starter ('Quest starter'): +50 XP; total 370 XP"
    status, out, _ = run_main(cluster, capsys, "unlock", "bob", "boss-slayer", "--json")
    assert status == 0
    answer = json.loads(out)
    assert (answer["xp_awarded"], answer["total_xp"], answer["already_unlocked"]) == (200, 570, False)
    status, out, _ = run_main(cluster, capsys, "unlock", "bob", "boss-slayer")
    assert status == 0 and out.strip() == "bob: boss-slayer was already unlocked, nothing paid; total 570 XP"

    status, out, _ = run_main(cluster, capsys, "progress", "bob")
    assert status == 0
    assert out.splitlines()[:5] == [
        "user          bob",
        "total XP      570",
        "level         3",
        "achievements  boss-slayer, quest-starter",
        "rewards       150 gold (2 grants)",
    ]
    status, out, _ = run_main(cluster, capsys, "progress", "bob", "--json")
    progress = json.loads(out)
    assert progress["total_xp"] == 570 and progress["rewards"] == [
        {"reward_id": "gold", "quantity": 50},
        {"reward_id": "gold", "quantity": 100},
    ]

    status, _, err = run_main(cluster, capsys, "award", "bob", "no-such-activity")
    assert status == 1 and err.startswith(
        "rewardsctl: award failed: NOT_FOUND: activity 'no-such-activity' is not in the catalog"
    )
    status, _, err = run_main(cluster, capsys, "award", " bob", "win-match")
    assert status == 1 and "INVALID_ARGUMENT: user_id must not start or end with white space" in err
    status = main(["progress", "bob", "--xp-target", "localhost:1", "--timeout", "2"])
    err = capsys.readouterr().err
    assert status == 1 and "UNAVAILABLE" in err and "check that the service runs at localhost:1" in err


# --- backups --------------------------------------------------------------------------------------

PLAYERS = 300
ACTIVITY_XP = {"win-match": 150, "defeat-boss": 300}


def player_id(index: int) -> str:
    return f"player-{index:04d}"


UNLOCKS = (("first-win", 4), ("quest-starter", 6), ("boss-slayer", 12))  # (achievement, every how many players)
# Every player wins a match, which unlocks the sample's wins-1 (auto_unlock) and its 25 XP.
WINS_1_XP = 25


def play(cluster: Cluster, index: int) -> None:
    """Awards, a grant, unlocks and level-ups, different for each player.
    Awards whose level check was deferred (a busy machine) are repeated, as the
    README says, so that every player's level is settled."""
    user = player_id(index)
    activities = ["win-match"] + ["defeat-boss"] * (index % 3 == 0)
    for n, activity_id in enumerate(activities):
        request = xp_pb2.AwardXpRequest(user_id=user, activity_id=activity_id, request_id=f"{user}-{n}")
        while cluster.xp.AwardXp(request).level_check_deferred:
            pass
    if index % 5 == 0:
        grant = xp_pb2.GrantXpRequest(
            user_id=user, amount=1000 + index, reason="tournament prize", request_id=f"{user}-prize"
        )
        while cluster.xp.GrantXp(grant).level_check_deferred:
            pass
    unlocked = [a for a, every in UNLOCKS if index % every == 0]
    for achievement_id in unlocked:
        cluster.achievements.UnlockAchievement(
            achievements_pb2.UnlockAchievementRequest(user_id=user, achievement_id=achievement_id)
        )
    if unlocked:  # grants any level an unlock's reward made due, had its check been deferred
        cluster.levels.CheckLevelUp(levels_pb2.CheckLevelUpRequest(user_id=user, request_id=f"{user}-check"))


def expected_total_xp(index: int) -> int:
    return (
        ACTIVITY_XP["win-match"]
        + WINS_1_XP
        + ACTIVITY_XP["defeat-boss"] * (index % 3 == 0)
        + (1000 + index) * (index % 5 == 0)
        + 50 * (index % 4 == 0)
        + 50 * (index % 6 == 0)
        + 200 * (index % 12 == 0)
    )


def scan_table(cluster: Cluster, name: str) -> list[str]:
    """Every item of a table, low-level (numbers as their digits), in a stable order."""
    items: list[str] = []
    for page in cluster.dynamodb.get_paginator("scan").paginate(TableName=cluster.table(name), ConsistentRead=True):
        items.extend(json.dumps(item, sort_keys=True, default=repr) for item in page["Items"])
    return sorted(items)


def ledger_of(cluster: Cluster, user: str) -> list[dict[str, Any]]:
    return cluster.dynamodb.query(
        TableName=cluster.table("xp_ledger"),
        KeyConditionExpression="user_id = :u",
        ExpressionAttributeValues={":u": {"S": user}},
        ConsistentRead=True,
    )["Items"]


def player_view(
    cluster: Cluster, user: str
) -> tuple[xp_pb2.UserProgress, achievements_pb2.ListUserAchievementsResponse, list[dict[str, Any]]]:
    return (
        cluster.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user)),
        cluster.achievements.ListUserAchievements(achievements_pb2.ListUserAchievementsRequest(user_id=user)),
        ledger_of(cluster, user),
    )


TABLES = (
    "activities",
    "achievements",
    "levels",
    "user_progress",
    "xp_ledger",
    "user_achievements",
    "level_rewards",
    "level_checks",
    "activity_counts",
    "achievement_stats",
    "streaks",
)
# Numbers beyond a float's precision, binary, sets and nesting: what a backup
# must carry exactly, whatever the services write today.
PRECISION_PROBE = {
    "user_id": {"S": "precision-probe"},
    "entry_id": {"S": "probe"},
    "xp": {"N": "123456789012345678901234567890.12345678"},
    "blob": {"B": bytes(range(256))},
    "tags": {"SS": ["a", "b"]},
    "figures": {"NS": ["0.1", "99999999999999999999"]},
    "nested": {"M": {"list": {"L": [{"N": "-1e-100"}, {"BOOL": True}, {"NULL": True}, {"BS": [b"\x00\xff"]}]}}},
}


def test_backup_restores_every_player_into_an_empty_stage(own_dynamodb_endpoint: str, tmp_path: Path) -> None:
    stages: list[Cluster] = []

    def new_cluster() -> Cluster:
        stages.append(Cluster(own_dynamodb_endpoint))
        return stages[-1]

    try:
        backup_round_trip(new_cluster, tmp_path)
    finally:
        for stage in stages:
            stage.close()


def backup_round_trip(new_cluster: Callable[[], Cluster], tmp_path: Path) -> None:
    source = new_cluster()
    applied = run_command(source, "catalog", "apply", str(SAMPLE_CATALOG))
    assert applied.returncode == 0, applied.stderr
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda i: play(source, i), range(PLAYERS)))
    # An award whose auto unlock the Achievements service could not answer in time (a busy
    # machine) leaves it to the player's next award: a backfill settles every player now.
    settled = run_command(source, "achievements", "backfill", "wins-1")
    assert settled.returncode == 0, settled.stderr
    source.dynamodb.put_item(TableName=source.table("xp_ledger"), Item=PRECISION_PROBE)
    before = {name: scan_table(source, name) for name in TABLES}
    assert len(before["user_progress"]) == PLAYERS
    first = source.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=player_id(0)))
    assert (first.total_xp, first.level) == (1775, 6)
    assert list(first.unlocked_achievements) == ["boss-slayer", "first-win", "quest-starter", "wins-1"]

    backup_dir = tmp_path / "backup"
    exported = run_command(source, "backup", "export", str(backup_dir))
    assert exported.returncode == 0, exported.stderr
    manifest = json.loads((backup_dir / "manifest.json").read_text())
    assert {t["table"]: t["items"] for t in manifest["tables"]} == {name: len(items) for name, items in before.items()}
    assert manifest["source_table_prefix"] == source.settings.table_prefix and manifest["format_version"] == 1
    assert "export  xp_ledger" in exported.stderr and "done in" in exported.stderr

    target = new_cluster()
    imported = run_command(target, "backup", "import", str(backup_dir))
    assert imported.returncode == 0, imported.stderr
    assert "counts verified" in imported.stdout
    assert re.search(
        rf"^import  user_progress +{PLAYERS} items of {PLAYERS} \(100%\), done in [0-9.]+ s$",
        imported.stderr,
        re.MULTILINE,
    ), imported.stderr

    # Every table holds the same items, to the digit and the byte.
    assert {name: scan_table(target, name) for name in TABLES} == before
    probe_key = {"user_id": PRECISION_PROBE["user_id"], "entry_id": PRECISION_PROBE["entry_id"]}
    restored_probe = target.dynamodb.get_item(TableName=target.table("xp_ledger"), Key=probe_key, ConsistentRead=True)[
        "Item"
    ]
    assert restored_probe["xp"] == {"N": "123456789012345678901234567890.12345678"}
    assert restored_probe["blob"] == {"B": bytes(range(256))}
    assert (
        restored_probe
        == source.dynamodb.get_item(TableName=source.table("xp_ledger"), Key=probe_key, ConsistentRead=True)["Item"]
    )

    # And the services of the new stage tell every player the same story.
    with ThreadPoolExecutor(max_workers=16) as pool:
        old_views = list(pool.map(lambda i: player_view(source, player_id(i)), range(PLAYERS)))
        new_views = list(pool.map(lambda i: player_view(target, player_id(i)), range(PLAYERS)))
    for index, (old, new) in enumerate(zip(old_views, new_views)):
        assert new == old, player_id(index)
        progress, unlocks, ledger = new
        assert progress.total_xp == expected_total_xp(index) == sum(int(entry["xp"]["N"]) for entry in ledger)
        assert len(unlocks.achievements) == len(progress.unlocked_achievements)
    assert sum(len(v[1].achievements) for v in new_views) == PLAYERS + sum(
        len(range(0, PLAYERS, every)) for _, every in UNLOCKS
    )
    assert all(
        v[0].level >= 2 and v[0].rewards[0] == levels_pb2.Reward(reward_id="gold", quantity=50) for v in new_views
    )

    # The restored stage goes on from where the old one was: a repeat is still a duplicate.
    repeat = target.xp.AwardXp(
        xp_pb2.AwardXpRequest(user_id=player_id(1), activity_id="win-match", request_id=f"{player_id(1)}-0")
    )
    assert repeat.duplicate and repeat.total_xp == expected_total_xp(1)

    # A stage that holds anything is refused, and left as it was.
    again = run_command(target, "backup", "import", str(backup_dir))
    assert again.returncode == 1
    assert "is not empty" in again.stderr and target.table("user_progress") in again.stderr
    assert len(scan_table(target, "xp_ledger")) == len(before["xp_ledger"])


def test_backups_are_checked_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # An endpoint nothing listens on: each refusal comes before DynamoDB is asked.
    nowhere = ["--dynamodb-endpoint", "http://127.0.0.1:1", "--table-prefix", "never-"]
    status = main(["backup", "import", str(tmp_path), *nowhere])
    assert status == 1 and "manifest.json is missing" in capsys.readouterr().err

    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {
                "format": "rewards-backup",
                "format_version": 1,
                "created_at": "2026-01-01T00:00:00Z",
                "source_table_prefix": "rewards-",
                "duration_s": 0.1,
                "tables": [{"table": "levels", "file": "levels.jsonl", "items": 1, "sha256": "0" * 64}],
            }
        )
    )
    (tmp_path / "levels.jsonl").write_text('{"Item":{"level":{"N":"1"},"xp_required":{"N":"0"}}}\n')
    status = main(["backup", "import", str(tmp_path), *nowhere])
    assert status == 1 and "levels.jsonl is not the file the export wrote" in capsys.readouterr().err

    status = main(["backup", "export", str(tmp_path), *nowhere])
    assert status == 1 and "is not an empty directory" in capsys.readouterr().err


def test_unprocessed_items_are_sent_again_after_a_pause() -> None:
    class ThrottlingClient:
        def __init__(self) -> None:
            self.calls: list[int] = []

        def batch_write_item(self, RequestItems: dict[str, list[Any]]) -> dict[str, Any]:
            requests = RequestItems["t"]
            self.calls.append(len(requests))
            # DynamoDB takes a few and hands back the rest, until the last call.
            return {"UnprocessedItems": {"t": requests[10:]} if len(requests) > 10 else {}}

    client = ThrottlingClient()
    pauses: list[float] = []
    items = [{"k": {"S": str(i)}} for i in range(25)]
    assert write_batch(client, "t", items, sleep=pauses.append) == 25
    assert client.calls == [25, 15, 5]
    assert len(pauses) == 2 and 0 < pauses[0] <= pauses[1] * 2

    class AlwaysThrottled(ThrottlingClient):
        def batch_write_item(self, RequestItems: dict[str, list[Any]]) -> dict[str, Any]:
            return {"UnprocessedItems": RequestItems}

    with pytest.raises(BackupError, match="left 25 items of t unwritten"):
        write_batch(AlwaysThrottled(), "t", items, sleep=lambda s: None)


# --- a service whose DynamoDB is down ----------------------------------------------------------


def test_when_the_service_cannot_reach_dynamodb_the_hint_names_dynamodb(
    new_cluster: Callable[..., Cluster], capsys: pytest.CaptureFixture[str]
) -> None:
    c = new_cluster()
    dead = DynamoDBClient(replace(c.settings, dynamodb_endpoint="http://127.0.0.1:9"))
    c.stop("xp")
    c.start("xp", dynamodb=dead)  # XP restarts with a client of a closed port
    try:
        status, out, err = run_main(c, capsys, "progress", "player-1")
    finally:
        c.loop.run(dead.close())
    assert (status, out) == (1, "")
    assert err.startswith("rewardsctl: progress failed: UNAVAILABLE: DynamoDB could not be reached (ConnectionError)")
    assert err.endswith(
        "  the service runs, but DynamoDB does not answer it: check that DynamoDB runs at the services' "
        "REWARDS_DYNAMODB_ENDPOINT (`make status` shows DynamoDB Local, `make up` starts it)\n"
        "  safe to retry: run the same command again\n"
    )
    assert "check that the service runs" not in err


# --- verify: summary, limit, one user at a time ----------------------------------------------------

# 30 users whose total is 5 XP above their ledger, one with a ledger and no progress item, one who
# holds 25 unlocks without the progress item saying so, and one settled user: 32 violations.
MISCOUNTED_USERS = [f"u-{n:02d}" for n in range(30)]


@pytest.fixture
def verify_stage(dynamodb_endpoint: str) -> tuple[Any, str]:
    """A stage of its own, written item by item (no services): boto3 client and table prefix."""
    prefix = f"verify-{uuid.uuid4().hex[:8]}-"
    client = create_dynamodb_client(Settings(dynamodb_endpoint=dynamodb_endpoint, table_prefix=prefix))
    ensure_tables(client, prefix)

    def put(table: str, *items: dict[str, Any]) -> None:
        for item in items:
            client.put_item(TableName=prefix + table, Item=to_item(item))

    put(
        "levels",
        {"level": 1, "xp_required": 0},
        {"level": 2, "xp_required": 100, "rewards": [{"reward_id": "gold", "quantity": 50}]},
    )
    for user_id in MISCOUNTED_USERS:
        put("user_progress", {"user_id": user_id, "total_xp": 105, "level": 2})
        put(
            "xp_ledger",
            *(
                {
                    "user_id": user_id,
                    "entry_id": f"req#{r}",
                    "request_id": r,
                    "kind": "activity",
                    "activity_id": "a",
                    "xp": xp,
                    "attempt_id": f"{user_id}-{r}",
                }
                for r, xp in (("a", 40), ("b", 60))
            ),
        )
        put(
            "level_rewards",
            {
                "user_id": user_id,
                "level": 2,
                "from_level": 1,
                "check_id": f"auto:{user_id}",
                "rewards": [{"reward_id": "gold", "quantity": 50}],
            },
        )
    put("xp_ledger", {"user_id": "orphan", "entry_id": "auto#1", "kind": "grant", "xp": 5, "attempt_id": "o"})
    put("user_progress", {"user_id": "collector", "total_xp": 0, "level": 1})
    put(
        "user_achievements",
        *({"user_id": "collector", "achievement_id": f"a-{n:02d}", "xp_reward": 0} for n in range(25)),
    )
    put("user_progress", {"user_id": "settled", "total_xp": 30, "level": 1, "holds_achievements": True})
    put("user_achievements", {"user_id": "settled", "achievement_id": "first", "xp_reward": 30, "xp_granted": True})
    put(
        "xp_ledger",
        {
            "user_id": "settled",
            "entry_id": "ach#first",
            "kind": "achievement",
            "achievement_id": "first",
            "xp": 30,
            "attempt_id": "s",
        },
    )
    return client, prefix


def run_verify(dynamodb_endpoint: str, prefix: str, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    capsys.readouterr()
    status = main(["verify", "--dynamodb-endpoint", dynamodb_endpoint, "--table-prefix", prefix, *flags])
    out, err = capsys.readouterr()
    assert err == ""
    return status, out


def invariant_row(out: str, name: str) -> list[str]:
    """An invariant's line of the summary: name, checked, violations, warnings, notes."""
    return next(line.split()[:5] for line in out.splitlines() if line.strip().startswith(name + " "))


def test_verify_prints_the_summary_first_then_the_first_findings_up_to_the_limit(
    verify_stage: tuple[Any, str], dynamodb_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, prefix = verify_stage
    status, out = run_verify(dynamodb_endpoint, prefix, capsys, "--limit", "5")
    assert status == 1
    lines = out.splitlines()
    assert lines[0] == f"verified prefix {prefix!r} at {dynamodb_endpoint}"
    assert lines[1] == "  users 33 · ledger entries 62 · unlocks 26 · levels checked 30 (level table: 2 levels)"
    assert invariant_row(out, "total-is-ledger-sum") == ["total-is-ledger-sum", "33", "31", "0", "0"]
    assert invariant_row(out, "unlocks-match-progress") == ["unlocks-match-progress", "33", "1", "0", "0"]
    assert invariant_row(out, "level-rewards-once") == ["level-rewards-once", "30", "0", "0", "0"]
    verdict = lines.index("FAILED: 32 violations, 0 warnings, 0 notes")
    assert lines[verdict + 1 :] == [
        "findings: the first 5 of 32, violations first, by user id; --limit N lists more",
        "violation unlocks-match-progress     collector: 25 unlock records "
        "(a-00, a-01, a-02, a-03, a-04, a-05, a-06, a-07, a-08, a-09 and 15 more) but holds_achievements is not set",
        "violation total-is-ledger-sum        orphan: 1 ledger entries (5 XP) but no user_progress item",
        "violation total-is-ledger-sum        u-00: total_xp 105 but the ledger's 2 entries sum to 100 (+5)",
        "violation total-is-ledger-sum        u-01: total_xp 105 but the ledger's 2 entries sum to 100 (+5)",
        "violation total-is-ledger-sum        u-02: total_xp 105 but the ledger's 2 entries sum to 100 (+5)",
    ]

    status, out = run_verify(dynamodb_endpoint, prefix, capsys)  # the default limit, 20
    assert status == 1
    assert [line.split()[2] for line in out.splitlines() if line.startswith("violation ")] == [
        "collector:",
        "orphan:",
        *(f"{u}:" for u in MISCOUNTED_USERS[:18]),
    ]
    assert "findings: the first 20 of 32, violations first, by user id; --limit N lists more" in out


def test_verify_json_counts_every_finding_and_lists_the_limit(
    verify_stage: tuple[Any, str], dynamodb_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, prefix = verify_stage
    status, out = run_verify(dynamodb_endpoint, prefix, capsys, "--json", "--limit", "3")
    assert status == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert report["counts"] == {
        "users": 33,
        "ledger_entries": 62,
        "unlocks": 26,
        "levels_checked": 30,
        "level_table_levels": 2,
        "invariants_checked": report["counts"]["invariants_checked"],
        "violations": 32,
        "warnings": 0,
        "notes": 0,
    }
    assert report["invariants"]["total-is-ledger-sum"] == {
        "description": "total_xp is the sum of the user's ledger",
        "checked": 33,
        "violations": 31,
        "warnings": 0,
        "notes": 0,
    }
    assert report["listed"] == {"limit": 3, "findings": 3, "of": 32}
    assert [(v["user_id"], v["invariant"]) for v in report["violations"]] == [
        ("collector", "unlocks-match-progress"),
        ("orphan", "total-is-ledger-sum"),
        ("u-00", "total-is-ledger-sum"),
    ]
    assert report["warnings"] == [] and report["notes"] == []

    status, out = run_verify(dynamodb_endpoint, prefix, capsys, "--limit", "0")
    assert status == 1 and "FAILED: 32 violations" in out
    assert [line for line in out.splitlines() if line.startswith("violation")] == []


def test_verify_reads_one_user_at_a_time_never_a_user_table_whole(verify_stage: tuple[Any, str]) -> None:
    client, prefix = verify_stage
    calls: list[tuple[str, str, dict[str, Any]]] = []

    class RecordingClient:
        def __getattr__(self, operation: str) -> Callable[..., Any]:
            def call(**params: Any) -> Any:
                table = params.get("TableName") or next(iter(params["RequestItems"]))
                calls.append((operation, table.removeprefix(prefix), params))
                return getattr(client, operation)(**params)

            return call

    users = read_users(RecordingClient(), prefix)
    first = next(users)
    # The first user comes after one page of user_progress (each other user table is only probed)
    # and the Queries of the first few users.
    assert [t for op, t, p in calls if op == "scan" and p.get("Limit") != 1] == ["user_progress"]
    assert {op for op, _, _ in calls} == {"scan", "query"}
    assert first.progress is not None and first.user_id == first.progress["user_id"]
    rest = list(users)
    assert sorted(u.user_id for u in [first, *rest]) == sorted(["collector", "orphan", "settled", *MISCOUNTED_USERS])
    assert [u.user_id for u in rest][-1] == "orphan"  # users without a progress item come last
    # Whole items are read from user_progress alone; the other user tables by Query (one user's
    # items), or scanned for their keys only to find users without a progress item.
    whole_scans = [t for op, t, p in calls if op == "scan" and "ProjectionExpression" not in p and p.get("Limit") != 1]
    assert whole_scans == ["user_progress"]
    queried = [p["ExpressionAttributeValues"][":u"]["S"] for op, _, p in calls if op == "query"]
    user_tables = {"xp_ledger", "user_achievements", "level_rewards", "level_checks", "activity_counts"}
    assert sorted(queried) == sorted(u.user_id for u in [first, *rest] for _ in user_tables)
    assert {t for op, t, p in calls if op == "scan" and p.get("ProjectionExpression") == "user_id"} == user_tables


def test_verify_reads_unlocks_from_their_records_and_holds_achievements() -> None:
    def unlocks_findings(progress: dict[str, Any], unlocked: list[str]) -> list[str]:
        contents = StageContents(
            levels=LevelTable([LevelEntry(1, 0)]),
            progress=[{"user_id": "u", "total_xp": Decimal(0), "level": Decimal(1), **progress}],
            unlocks=[{"user_id": "u", "achievement_id": a, "xp_reward": Decimal(0)} for a in unlocked],
        )
        report = verify_contents(contents)
        assert {f.severity for f in report.findings} <= {VIOLATION}
        return [f.message for f in report.findings if f.invariant == "unlocks-match-progress"]

    # What an unlock writes now: the records are the ids; the progress item only says there are some.
    assert unlocks_findings({"holds_achievements": True}, ["a", "b"]) == []
    assert unlocks_findings({}, []) == []
    assert unlocks_findings({"holds_achievements": True}, []) == [
        "holds_achievements is set but there is no unlock record"
    ]
    assert unlocks_findings({}, ["a", "b"]) == ["2 unlock records (a, b) but holds_achievements is not set"]
    # What an earlier version wrote: the ids in a set, which must be the records.
    assert unlocks_findings({"unlocked_achievements": {"a", "b"}}, ["a", "b"]) == []
    assert unlocks_findings({"unlocked_achievements": {"a"}}, ["a", "b"]) == [
        "unlock records missing from unlocked_achievements: b"
    ]
    assert unlocks_findings({"holds_achievements": True, "unlocked_achievements": {"a", "z"}}, ["a", "b"]) == [
        "unlocked_achievements without an unlock record: z"
    ]
