"""The contract's buf checks (buf.yaml, scripts/buf_check.sh): protos/ passes
`buf lint` and `buf breaking` against the previous commit, and the breaking
check does catch a wire-breaking change. The failing cases run the script in a
throwaway git repository holding a copy of the contract, set up the way CI
sees main: the change committed on top of the commit it is checked against."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from devcluster.dynamodb_local import REPO_ROOT

BUF_CHECK = Path("scripts") / "buf_check.sh"
XP_PROTO = Path("protos") / "rewards" / "v1" / "xp.proto"
# Activity's category field, with its comment: Streak has a `string category = 4;` too.
ACTIVITY_CATEGORY = "ListActivities can filter on it.\n  string category = 4;"
# The buf.yaml exceptions: the rules of buf's STANDARD set that the fixed contract breaks.
EXCEPTED_LINT_RULES = ["RPC_RESPONSE_STANDARD_NAME", "RPC_REQUEST_RESPONSE_UNIQUE"]
# Without GIT_DIR and the like from a surrounding git hook, git works on the
# repository its working directory is in.
CLEAN_ENV = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}


def buf_binary() -> str:
    """Where scripts/buf_check.sh looks: .local/buf/ (scripts/install.sh), then PATH."""
    installed = REPO_ROOT / ".local" / "buf" / "node_modules" / ".bin" / "buf"
    found = str(installed) if installed.exists() else shutil.which("buf")
    if not found:
        pytest.fail("buf is not installed: run scripts/install.sh (npm package pinned in pyproject.toml)")
    return found


def run_buf_check(repo: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(repo / BUF_CHECK)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
        env={**CLEAN_ENV, "BUF": buf_binary(), **env},
    )


def git(repo: Path, *args: str) -> str:
    completed = subprocess.run(
        [
            "git",
            "-c",
            "user.name=buf check",
            "-c",
            "user.email=buf-check@example.invalid",
            "-c",
            "commit.gpgsign=false",
            *args,
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=30,
        env=CLEAN_ENV,
        check=True,
    )
    return completed.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def copy_contract(repo: Path) -> None:
    """The files the check reads: protos/, buf.yaml and the script itself."""
    shutil.copytree(REPO_ROOT / "protos", repo / "protos")
    shutil.copy(REPO_ROOT / "buf.yaml", repo / "buf.yaml")
    (repo / "scripts").mkdir()
    shutil.copy(REPO_ROOT / BUF_CHECK, repo / BUF_CHECK)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not once in {path}"
    path.write_text(text.replace(old, new))


@pytest.fixture
def contract_repo(tmp_path: Path) -> Path:
    """A git repository whose one commit holds a copy of the contract."""
    repo = tmp_path / "contract"
    repo.mkdir()
    git(repo, "init", "-q")
    copy_contract(repo)
    commit_all(repo, "the contract")
    return repo


def test_the_contract_passes_lint_and_the_breaking_check_against_the_previous_commit() -> None:
    checked = run_buf_check(REPO_ROOT)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert lines[0] == "buf-check: lint passed"
    previous = subprocess.run(
        ["git", "rev-parse", "-q", "--verify", "HEAD~1^{commit}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
    ).stdout.strip()
    has_protos = (
        bool(previous)
        and subprocess.run(["git", "cat-file", "-e", f"{previous}:protos"], cwd=REPO_ROOT, env=CLEAN_ENV).returncode
        == 0
    )
    if has_protos:
        assert lines[1:] == [f"buf-check: no breaking change against HEAD~1 ({previous})"]
    else:  # a clone without history, or the commit that added protos/
        assert lines[1].startswith("buf-check: breaking check skipped: ")


def test_buf_yaml_uses_standard_lint_with_only_the_documented_exceptions_and_file_breaking() -> None:
    config = yaml.safe_load((REPO_ROOT / "buf.yaml").read_text())
    assert config["version"] == "v2"
    assert config["modules"] == [{"path": "protos"}]
    assert config["lint"] == {"use": ["STANDARD"], "except": EXCEPTED_LINT_RULES}
    assert config["breaking"] == {"use": ["FILE"]}


@pytest.mark.parametrize("rule", EXCEPTED_LINT_RULES)
def test_each_lint_exception_is_needed_by_the_contract(contract_repo: Path, rule: str) -> None:
    # An exception the contract no longer needs would silently turn a rule off
    # for new RPCs; without it, lint must fail on that rule and on no other.
    edit(contract_repo / "buf.yaml", f"    - {rule}\n", "")
    linted = subprocess.run(
        [buf_binary(), "lint", "--error-format=json"],
        cwd=contract_repo,
        capture_output=True,
        text=True,
        timeout=60,
        env=CLEAN_ENV,
    )
    assert linted.returncode != 0
    reported = {json.loads(line)["type"] for line in linted.stdout.splitlines()}
    assert reported == {rule}


def test_lint_reports_a_message_that_breaks_the_standard_rules(contract_repo: Path) -> None:
    with (contract_repo / XP_PROTO).open("a") as proto:
        proto.write("\nmessage player_stats {\n  int64 Wins = 1;\n}\n")
    checked = run_buf_check(contract_repo)
    assert checked.returncode != 0
    assert 'Message name "player_stats" should be PascalCase, such as "PlayerStats".' in checked.stdout
    assert 'Field name "Wins" should be lower_snake_case, such as "wins".' in checked.stdout
    assert "buf-check: lint passed" not in checked.stdout


@pytest.mark.parametrize(
    ("change", "old", "new", "reported"),
    [
        (
            "field number",
            ACTIVITY_CATEGORY,
            ACTIVITY_CATEGORY.replace("category = 4", "category = 9"),
            'Previously present field "4" with name "category" on message "Activity" was deleted.',
        ),
        (
            "field type",
            "int64 xp = 5;",
            "int32 xp = 5;",
            'Field "5" with name "xp" on message "Activity" changed type from "int64" to "int32".',
        ),
        # Same number and type, so binary clients would not notice; grpcurl's JSON
        # users would, which is why the check is stricter than WIRE.
        (
            "field name",
            ACTIVITY_CATEGORY,
            ACTIVITY_CATEGORY.replace("category = 4", "genre = 4"),
            'Field "4" on message "Activity" changed name from "category" to "genre".',
        ),
    ],
)
def test_the_breaking_check_reports_a_committed_wire_breaking_change(
    contract_repo: Path, change: str, old: str, new: str, reported: str
) -> None:
    edit(contract_repo / XP_PROTO, old, new)
    commit_all(contract_repo, f"change a {change}")
    checked = run_buf_check(contract_repo)
    assert checked.returncode != 0, f"{change}: {checked.stdout}"
    assert checked.stdout.startswith("buf-check: lint passed\n")
    assert reported in checked.stdout
    assert "no breaking change" not in checked.stdout


def test_the_breaking_check_accepts_a_new_field(contract_repo: Path) -> None:
    previous = git(contract_repo, "rev-parse", "HEAD")
    edit(
        contract_repo / XP_PROTO,
        "  Cap cap = 6;\n}",
        "  Cap cap = 6;\n  // Shown in the game's menus.\n  string icon_url = 7;\n}",
    )
    commit_all(contract_repo, "a new field")
    checked = run_buf_check(contract_repo)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines() == [
        "buf-check: lint passed",
        f"buf-check: no breaking change against HEAD~1 ({previous})",
    ]


def test_the_breaking_check_compares_with_a_named_revision(contract_repo: Path) -> None:
    # BUF_AGAINST, for a pull request checked against main rather than its own parent.
    base = git(contract_repo, "rev-parse", "HEAD")
    git(contract_repo, "tag", "base")
    edit(contract_repo / XP_PROTO, "int64 xp = 5;", "int32 xp = 5;")
    commit_all(contract_repo, "change a type")
    (contract_repo / "notes.txt").write_text("an unrelated commit on top\n")
    commit_all(contract_repo, "notes")
    against_parent = run_buf_check(contract_repo)
    assert against_parent.returncode == 0 and "no breaking change against HEAD~1" in against_parent.stdout
    against_base = run_buf_check(contract_repo, BUF_AGAINST="base")
    assert against_base.returncode != 0
    assert 'changed type from "int64" to "int32"' in against_base.stdout
    assert f"no breaking change against base ({base})" not in against_base.stdout


def test_the_breaking_check_is_skipped_for_a_first_commit(contract_repo: Path) -> None:
    checked = run_buf_check(contract_repo)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines() == [
        "buf-check: lint passed",
        "buf-check: breaking check skipped: no commit HEAD~1 to compare with (a first commit?)",
    ]


def test_the_breaking_check_is_skipped_when_the_previous_commit_has_no_protos(tmp_path: Path) -> None:
    repo = tmp_path / "contract"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "README.md").write_text("before the contract\n")
    previous = commit_all(repo, "before the contract")
    copy_contract(repo)
    commit_all(repo, "the contract")
    checked = run_buf_check(repo)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines() == [
        "buf-check: lint passed",
        f"buf-check: breaking check skipped: no protos/ in HEAD~1 ({previous})",
    ]


def test_the_breaking_check_is_skipped_in_a_shallow_clone(contract_repo: Path, tmp_path: Path) -> None:
    edit(contract_repo / XP_PROTO, "int64 xp = 5;", "int32 xp = 5;")
    commit_all(contract_repo, "change a type")
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{contract_repo}", str(shallow))
    checked = run_buf_check(shallow)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines() == [
        "buf-check: lint passed",
        "buf-check: breaking check skipped: HEAD~1 is not in this shallow clone; "
        "fetch it (git fetch --deepen=1) to compare",
    ]
