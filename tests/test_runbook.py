"""docs/deploy.md's commands, run as written: every ```sh block of the runbook,
in order, in one shell. No AWS account is reachable here, so `aws` and
`docker` are stand-ins (tests/runbook_aws.py) that check each call against
the AWS API's model and the stage's stack, and answer from a state of their
own; everything else runs for real: make cfn, cfn-lint, rewardsctl (tokens
from the stack's key, the catalog through a stand-in of the load balancer,
backups and verify on DynamoDB Local, where a point-in-time restore copies the
tables). Then the test checks what the runbook did."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.caller_auth import Role, TokenAuthority
from devcluster.dynamodb_local import LOCAL_CREDENTIALS
from rewards.v1 import xp_pb2
from rewardsctl.backup import BACKUP_TABLES
from tests.cluster import TEST_AUTH_SECRET, Cluster
from tests.conftest import running_dynamodb_local

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = REPO_ROOT / "docs" / "deploy.md"
# The stack's key, as the Secrets Manager stand-in holds it: the cluster's, so that its test channels work.
SECRET = TEST_AUTH_SECRET
PLAYERS = {"runbook-player-1": 3, "runbook-player-2": 5}


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def stand_ins(bin_dir: Path, cluster: Cluster) -> None:
    bin_dir.mkdir()
    for tool in ("aws", "docker"):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tests.runbook_aws {tool} "$@"\n')
        script.chmod(0o755)
    # The load balancer's stand-in: TLS ends there and each gRPC service's calls reach its tasks (the
    # cluster's servers, in plaintext).
    rewardsctl = bin_dir / "rewardsctl"
    rewardsctl.write_text(
        "#!/bin/sh\n"
        'case "$REWARDS_XP_TARGET" in internal-*.elb.amazonaws.com:443)\n'
        f"  export REWARDS_XP_TARGET=localhost:{cluster.ports['xp']}"
        f" REWARDS_ACHIEVEMENTS_TARGET=localhost:{cluster.ports['achievements']}"
        f" REWARDS_LEVELS_TARGET=localhost:{cluster.ports['levels']}\n"
        "  unset REWARDS_TLS_CA_FILE;;\n"
        "esac\n"
        f'exec "{Path(sys.executable).parent / "rewardsctl"}" "$@"\n'
    )
    rewardsctl.chmod(0o755)


def workdir(path: Path) -> Path:
    """The repository as the operator has it, where the runbook's files (tokens, backups) land. Not the
    virtualenv or .local: a pip install through this copy would write its path into the venv's scripts."""
    path.mkdir()
    for entry in REPO_ROOT.iterdir():
        if entry.name not in (".venv", ".local"):
            (path / entry.name).symlink_to(entry)
    return path


@pytest.fixture(scope="module")
def runbook_dynamodb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DynamoDB Local of the runbook's own: its stage is named as in the docs (rewards-prod-)."""
    yield from running_dynamodb_local(tmp_path_factory)


@pytest.fixture(scope="module")
def ran(runbook_dynamodb: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs the runbook once against a stage whose players have XP: the state its stand-ins were left in."""
    own_dynamodb_endpoint = runbook_dynamodb
    tmp_path = tmp_path_factory.mktemp("runbook")
    cluster = Cluster(own_dynamodb_endpoint, table_prefix="rewards-prod-", auth_jwt_secret=SECRET)
    try:
        admin = TokenAuthority(SECRET).mint(Role.ADMIN, "runbook-test", 600)
        env = {
            **os.environ,
            **LOCAL_CREDENTIALS,
            "PATH": f"{tmp_path / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}",
            "PYTHONPATH": str(REPO_ROOT),
            "RUNBOOK_STATE": str(tmp_path / "state.json"),
            "RUNBOOK_SECRET": SECRET,
            "REWARDS_DYNAMODB_ENDPOINT": own_dynamodb_endpoint,
        }
        for name in ("REWARDS_TABLE_PREFIX", "REWARDS_TOKEN", "REWARDS_AUTH_JWT_SECRET", "REWARDS_TLS_CA_FILE"):
            env.pop(name, None)
        stand_ins(tmp_path / "bin", cluster)
        # The players' history the restore must bring back: the catalog, then awards.
        seeded = subprocess.run(
            ["rewardsctl", "catalog", "apply", "catalog/sample-game.yaml"],
            cwd=REPO_ROOT,
            env={
                **env,
                "REWARDS_TOKEN": admin,
                "REWARDS_TABLE_PREFIX": "rewards-prod-",
                "REWARDS_XP_TARGET": f"localhost:{cluster.ports['xp']}",
                "REWARDS_ACHIEVEMENTS_TARGET": f"localhost:{cluster.ports['achievements']}",
                "REWARDS_LEVELS_TARGET": f"localhost:{cluster.ports['levels']}",
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert seeded.returncode == 0, seeded.stderr
        for player, wins in PLAYERS.items():
            for n in range(wins):
                cluster.xp.AwardXp(
                    xp_pb2.AwardXpRequest(user_id=player, activity_id="win-match", request_id=f"{player}-{n}")
                )
        # XP asks Achievements for the auto-unlocks an award made due after answering it: wait until the
        # stage is at rest (verify passes), as it was at the moment a point-in-time restore names.
        deadline = time.monotonic() + 60
        while True:
            verified = subprocess.run(
                ["rewardsctl", "verify"],
                env={**env, "REWARDS_TABLE_PREFIX": "rewards-prod-"},
                capture_output=True,
                text=True,
                timeout=120,
            )
            if verified.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert verified.returncode == 0, verified.stdout
        generate, *operate = sh_blocks(RUNBOOK.read_text())
        # The stacks' block (make cfn, its check, cfn-lint) runs in the repository itself: make may
        # install first; the operator's blocks run in one shell in a copy, where their files land.
        assert "make cfn" in generate
        generated = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + generate],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert generated.returncode == 0, generated.stdout[-3000:] + "\n" + generated.stderr[-1500:]
        result = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + "\n".join(operate)],
            cwd=workdir(tmp_path / "repo"),
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-3000:] + "\n" + result.stderr[-1500:]
        state: dict[str, Any] = json.loads((tmp_path / "state.json").read_text())
        state["stdout"] = result.stdout
        state["workdir"] = str(tmp_path / "repo")
        state["progress"] = {
            prefix: {
                player: cluster.dynamodb.get_item(
                    TableName=f"{prefix}user_progress", Key={"user_id": {"S": player}}, ConsistentRead=True
                )["Item"]["total_xp"]["N"]
                for player in PLAYERS
            }
            for prefix in ("rewards-prod-", "rewards-prod-2-")
        }
        return state
    finally:
        cluster.close()


def test_every_block_runs_and_does_what_the_runbook_says(ran: dict[str, Any]) -> None:
    stacks = ran["stacks"]
    # Deploy: the stage's stack with every parameter it needs, from the image built and pushed.
    prod = stacks["rewards-prod"]
    assert prod["template"] == "deploy/stacks/prod.yaml"
    (image,) = set(ran["images"]["pushed"])
    assert image == ran["images"]["built"][0]
    assert re.fullmatch(r"123456789012\.dkr\.ecr\.eu-west-1\.amazonaws\.com/rewards:[0-9a-f]{7,}", image)
    assert prod["deployments"][0]["ImageUri"] == image
    # A release, the scaling bounds, then the key's rotation: each a deployment of the same stack.
    assert prod["deployments"][1] == {"ImageUri": image}
    assert prod["deployments"][2] == {"MinTasks": "4", "MaxTasks": "40", "TaskCpu": "2048"}
    rotation = [(d.get("AuthKeyVersionId"), d.get("PreviousAuthKeyVersionId")) for d in prod["deployments"][3:]]
    assert rotation == [("v-1", "v-2"), ("v-2", "v-1"), ("", "")]
    assert prod["parameters"]["MinTasks"] == "4" and prod["parameters"]["ImageUri"] == image
    # After the rotation, minting reads the new key.
    assert ran["secret"]["stages"] == {"AWSCURRENT": "v-2", "AWSPREVIOUS": "v-1"}
    # The restore: every table a backup holds, restored, exported, imported into a new stage, verified.
    assert sorted(source for source, _ in ran["restored"]) == sorted(f"rewards-prod-{t.name}" for t in BACKUP_TABLES)
    assert stacks["rewards-prod-2"]["parameters"]["TablePrefix"] == "rewards-prod-2-"
    assert ran["progress"]["rewards-prod-2-"] == ran["progress"]["rewards-prod-"]
    # 150 XP a win, and the sample catalog's wins-1 (unlocked by the first win) pays 25.
    assert ran["progress"]["rewards-prod-"] == {player: str(150 * wins + 25) for player, wins in PLAYERS.items()}


def test_the_tokens_are_minted_from_the_stacks_key(ran: dict[str, Any]) -> None:
    token = (Path(ran["workdir"]) / "studio-acme.token").read_text().strip()
    claims = TokenAuthority(SECRET).verify(token)  # the key the stand-in handed out
    assert (claims.role, claims.subject) == (Role.GAME, "studio-acme")


def test_the_operator_commands_name_the_stacks_services_and_log_groups(ran: dict[str, Any]) -> None:
    calls = [call for call in ran["calls"] if call[0] == "aws"]
    described = [c[3] for c in calls if c[1:3] == ["ecs", "describe-services"]]
    assert {"xp", "achievements", "levels", "events", "gateway"} <= {s for c in described for s in c["services"]}
    (tail,) = [c[3] for c in calls if c[1:3] == ["logs", "tail"]]
    assert tail["log-group-name"] == ["/ecs/rewards-prod/xp"]
