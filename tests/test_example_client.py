"""The typed game-server example, run as a program against real servers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from common.caller_auth import Role
from devcluster.dynamodb_local import REPO_ROOT
from rewards.v1 import achievements_pb2, xp_pb2
from tests.cluster import STANDARD_LEVELS, Cluster, mint_test_token

Factory = Callable[..., Cluster]


def test_example_game_server_awards_unlocks_and_shows_progress(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster()
    c.put_levels(STANDARD_LEVELS)
    c.xp.PutActivity(xp_pb2.PutActivityRequest(activity=xp_pb2.Activity(activity_id="win", name="Win", xp=60)))
    c.achievements.PutAchievement(
        achievements_pb2.PutAchievementRequest(
            achievement=achievements_pb2.Achievement(
                achievement_id="veteran",
                name="Veteran",
                xp_reward=40,
                requirements=achievements_pb2.Requirements(min_total_xp=150),
            )
        )
    )
    run = subprocess.run(
        [
            sys.executable,
            "examples/game_server.py",
            "--xp",
            f"localhost:{c.ports['xp']}",
            "--achievements",
            f"localhost:{c.ports['achievements']}",
            "--user",
            user_id,
            "--activity",
            "win",
            "--achievement",
            "veteran",
            "--token",
            mint_test_token(Role.GAME),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "match: +60 XP, total 60, level 1 (next at 100 XP)",
        "match: +60 XP, total 120, LEVEL UP 1 -> 2: 100 x coins",
        "match: +60 XP, total 180, level 2 (next at 300 XP)",
        "achievement 'Veteran' unlocked: +40 XP, total 220",
        "progress: 220 XP, level 2, achievements ['veteran'], rewards [('coins', 100)]",
    ]
