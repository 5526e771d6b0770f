"""The README's "HTTP/JSON for web clients" block stays true: its curl commands
run, in order, through the real curl and bash against the real entry points
(`python -m xp_service` ... and `python -m gateway`) with tables of their own
and the sample catalog `make up` loads, and each prints what the README says.
The route and status tables next to it are checked against the gateway's own
(gateway.routes, gateway.status)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from common.caller_auth import Role
from devcluster.dynamodb_local import REPO_ROOT
from gateway.routes import ROUTES
from gateway.status import HTTP_STATUS
from tests.cluster import mint_test_token
from tests.process_cluster import ProcessCluster, start_process_cluster

README = REPO_ROOT / "README.md"
SECTION = "## HTTP/JSON for web clients"
# The address `make up` gives the gateway, which the block uses; the test's gateway has another.
DEFAULT_ADDRESS = "localhost:8080"
# The block's setup: the dev tokens `make up` writes. The test never sources the
# real file: it sets the variables itself (token_environment).
DEV_AUTH_SETUP = [".", ".local/dev-auth.env"]
TOKEN_VARIABLES = {Role.GAME: "REWARDS_GAME_TOKEN", Role.ADMIN: "REWARDS_ADMIN_TOKEN"}
# The original design's three example calls, exactly as the README must show them.
DESIGN_CALLS = [
    'curl -s -X POST localhost:8080/xp/award -H "Authorization: Bearer $REWARDS_GAME_TOKEN" '
    '-H "Content-Type: application/json" -d \'{"user_id": "user123", "activity_id": "activity456"}\'',
    'curl -s -X POST localhost:8080/achievements/unlock -H "Authorization: Bearer $REWARDS_GAME_TOKEN" '
    '-H "Content-Type: application/json" -d \'{"user_id": "user123", "achievement_id": "achievement789"}\'',
    'curl -s -X POST localhost:8080/levels/check-level-up -H "Authorization: Bearer $REWARDS_GAME_TOKEN" '
    '-H "Content-Type: application/json" -d \'{"user_id": "user123"}\'',
]
# What `make up` loads into an empty catalog, and so what the block's outputs assume.
SAMPLE_CATALOG = "catalog/sample-game.yaml"
# A comment line right under a command shows (part of) what it prints.
SHOWN_PREFIX = "#   "
# In a shown excerpt: a "key":value pair as the gateway prints it (compact JSON).
JSON_PAIR = re.compile(r'"\w+":(?:"[^"]*"|true|false|-?\d+|\[[^\]]*\])')
# In the Idempotency-Key command's comment: what the first call prints, then what a repeat prints.
REPEAT_MARK = "; again:"
FENCED_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Command:
    text: str  # continuation lines joined, as bash would read it
    shown: tuple[str, ...]  # the comment lines under it, without SHOWN_PREFIX

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)

    def option_values(self, *flags: str) -> list[str]:
        argv = self.argv
        return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in flags]

    @property
    def headers(self) -> dict[str, str]:
        headers = {}
        for header in self.option_values("-H", "--header"):
            name, _, value = header.partition(":")
            headers[name.strip()] = value.strip()
        return headers

    @property
    def method(self) -> str:
        methods = self.option_values("-X", "--request")
        return methods[0] if methods else "GET"

    @property
    def path(self) -> str:
        url = next(arg for arg in self.argv if arg.startswith(DEFAULT_ADDRESS))
        return url.removeprefix(DEFAULT_ADDRESS)

    @property
    def body(self) -> Any:
        bodies = self.option_values("-d", "--data")
        return json.loads(bodies[0]) if bodies else None


def section_text() -> str:
    text = README.read_text()
    assert text.count(SECTION) == 1, f"README.md has no section {SECTION!r}"
    return text.split(SECTION, 1)[1].split("\n## ", 1)[0]


def blocks() -> list[tuple[str, str]]:
    return [(match.group(1), match.group(2)) for match in FENCED_BLOCK.finditer(section_text())]


def parse_block(block: str) -> list[Command]:
    """The block's commands, continuation lines joined, each with the comment
    lines (SHOWN_PREFIX) right under it; other comments and blank lines end that."""
    commands: list[Command] = []
    current = ""
    under_command = False
    for line in block.splitlines():
        stripped = line.strip()
        if current:
            current += " " + stripped.removesuffix("\\").strip()
            if not stripped.endswith("\\"):
                commands.append(Command(current, ()))
                current, under_command = "", True
        elif stripped.startswith(SHOWN_PREFIX) and under_command:
            last = commands[-1]
            commands[-1] = Command(last.text, (*last.shown, stripped.removeprefix(SHOWN_PREFIX).strip()))
        elif stripped and not stripped.startswith("#"):
            code = line.split("  #", 1)[0].strip()
            if code.endswith("\\"):
                current, under_command = code.removesuffix("\\").strip(), False
            else:
                commands.append(Command(code, ()))
                under_command = True
        else:
            under_command = False
    assert not current, f"a continuation line ends the block: {current}"
    return commands


@pytest.fixture(scope="module")
def readme() -> tuple[list[Command], Any]:
    return readme_block()


def readme_block() -> tuple[list[Command], Any]:
    """The section's ```sh block, parsed, and the ```json block after it (the award in full)."""
    found = blocks()
    assert found and found[0][0] == "sh", f"the section's first block should be ```sh, not {found[:1]}"
    json_blocks = [body for language, body in found if language == "json"]
    assert json_blocks, "no ```json block showing an answer in full"
    return parse_block(found[0][1]), json.loads(json_blocks[0])


def curl_commands(commands: list[Command]) -> list[Command]:
    return [command for command in commands if command.argv[0] == "curl"]


def route_of(command: Command) -> tuple[str, str]:
    """The route template a command's method and path match, such as ("PUT", "/activities/{activity_id}")."""
    path = command.path.split("?", 1)[0]
    for route in ROUTES:
        pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(route.path))
        if route.http_method == command.method and re.fullmatch(pattern, path):
            return route.http_method, route.path
    raise AssertionError(f"no gateway route for {command.method} {path}: {command.text}")


# ---- the block as written (no cluster) ----------------------------------------------------------


def test_the_block_loads_the_dev_tokens_then_runs_only_curl(readme: tuple[list[Command], Any]) -> None:
    commands, _ = readme
    assert commands[0].argv == DEV_AUTH_SETUP
    assert all(command.argv[0] == "curl" for command in commands[1:]), [c.text for c in commands]
    for command in commands[1:]:
        assert command.argv[1] == "-s", f"curl without -s prints a progress meter: {command.text}"
        assert any(arg.startswith(DEFAULT_ADDRESS + "/") for arg in command.argv), command.text


def test_the_block_makes_the_designs_three_calls_exactly_as_written(readme: tuple[list[Command], Any]) -> None:
    commands, _ = readme
    texts = [command.text for command in commands]
    for call in DESIGN_CALLS:
        assert call in texts, f"the README's block does not make this call as written:\n{call}"
    # In the design's order, after the catalog entries they name are made.
    positions = [texts.index(call) for call in DESIGN_CALLS]
    assert positions == sorted(positions)
    puts = [i for i, command in enumerate(commands) if command.argv[0] == "curl" and command.method == "PUT"]
    assert [route_of(commands[i]) for i in puts] == [
        ("PUT", "/activities/{activity_id}"),
        ("PUT", "/achievements/{achievement_id}"),
    ]
    assert [commands[i].path for i in puts] == ["/activities/activity456", "/achievements/achievement789"]
    assert max(puts) < positions[0]
    # The achievement the unlock names has no requirements, so the unlock succeeds for a new user.
    assert "requirements" not in (commands[puts[1]].body or {})


def test_each_call_sends_the_least_role_and_the_refused_one_none(readme: tuple[list[Command], Any]) -> None:
    commands = curl_commands(readme[0])
    unauthenticated = [command for command in commands if "Authorization" not in command.headers]
    assert len(unauthenticated) == 1 and unauthenticated[0] is commands[-1], (
        "one call, the last, shows the refusal without a token"
    )
    for command in commands[:-1]:
        role = Role.ADMIN if command.method in ("PUT", "DELETE") or command.path == "/xp/grant" else Role.GAME
        assert command.headers["Authorization"] == f"Bearer ${TOKEN_VARIABLES[role]}", command.text
        if command.body is not None:
            assert command.headers.get("Content-Type") == "application/json", command.text
        route_of(command)
    # One call shows the Idempotency-Key, on a route that takes it.
    keyed = [command for command in commands if "Idempotency-Key" in command.headers]
    assert len(keyed) == 1 and route_of(keyed[0]) == ("POST", "/xp/award")
    assert keyed[0].body == {"user_id": "user123", "activity_id": "activity456"}


def test_the_route_table_is_the_gateways(readme: tuple[list[Command], Any]) -> None:
    """Each row: the HTTP methods and path, then the RPCs (`Service/Method`, or
    the method alone after the first of a service)."""
    table = table_rows(section_text(), "| route | RPC |")
    documented: set[tuple[str, str, str]] = set()
    for route_cell, rpc_cell in table:
        methods = re.findall(r"\b(GET|PUT|POST|DELETE)\b", route_cell)
        path = re.search(r"(/[\w/{}-]*)", route_cell.split("(")[0])
        assert methods and path, route_cell
        rpcs, service = [], ""
        for name in re.findall(r"`([\w/]+)`", rpc_cell):
            service, _, method = name.rpartition("/") if "/" in name else (service, "/", name)
            rpcs.append(f"{service}/{method}")
        assert len(rpcs) == len(methods), f"one RPC per method: {route_cell} | {rpc_cell}"
        documented |= {(method, path.group(1), rpc) for method, rpc in zip(methods, rpcs)}
    assert documented == {
        (route.http_method, route.path, f"{route.rpc.containing_service.name}/{route.rpc.name}") for route in ROUTES
    }


def test_the_status_table_is_the_gateways() -> None:
    documented = {}
    for codes, status in table_rows(section_text(), "| gRPC code | HTTP status |"):
        for code in re.findall(r"`(\w+)`", codes):
            documented[code] = int(status)
    assert documented == {code.name: status for code, status in HTTP_STATUS.items()}


def test_the_section_names_the_openapi_document_and_the_health_check() -> None:
    text = section_text()
    assert "`GET /openapi.json`" in text and "`GET /healthz`" in text


def table_rows(text: str, header: str) -> list[list[str]]:
    assert header in text, f"no table {header!r} in the section"
    lines = text.split(header, 1)[1].strip().splitlines()[1:]  # after the --- row
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


# ---- the block, run ------------------------------------------------------------------------------


def token_environment() -> dict[str, str]:
    """What `. .local/dev-auth.env` sets, with tokens of the test cluster's key."""
    return {
        variable: mint_test_token(role, subject=f"readme-curl-{role.value}")
        for role, variable in TOKEN_VARIABLES.items()
    }


@pytest.fixture(scope="module")
def cluster(dynamodb_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    """What `make up` runs, on free ports with tables of their own: the four
    services, the gateway, and the sample catalog loaded (`catalog apply --if-empty`)."""
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed: apt-get install -y curl")
    started = start_process_cluster(
        dynamodb_endpoint,
        tmp_path_factory.mktemp("readme-curl-logs"),
        metrics=False,
        gateway=True,
        # The README shows awards whose level check answered in time; generous
        # deadlines keep a loaded machine from turning them into deferred ones.
        extra_env={"REWARDS_LEVEL_CHECK_TIMEOUT_S": "10"},
    )
    try:
        applied = subprocess.run(
            [sys.executable, "-m", "rewardsctl", "catalog", "apply", "--if-empty", SAMPLE_CATALOG],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **os.environ,
                "REWARDS_TOKEN": mint_test_token(Role.ADMIN),
                **{f"REWARDS_{name.upper()}_TARGET": f"localhost:{port}" for name, port in started.ports.items()},
            },
        )
        assert applied.returncode == 0, applied.stdout + applied.stderr
        yield started
    finally:
        started.stop()


def run(command: Command, cluster: ProcessCluster) -> subprocess.CompletedProcess[str]:
    """As a reader runs it: in bash, from the repository root, with the tokens
    `. .local/dev-auth.env` would set (the real file is not read), against the
    test's gateway."""
    assert cluster.gateway_port is not None
    script = command.text.replace(DEFAULT_ADDRESS, f"127.0.0.1:{cluster.gateway_port}")
    return subprocess.run(
        ["bash", "-c", script],
        cwd=REPO_ROOT,
        env={**os.environ, **token_environment()},
        capture_output=True,
        text=True,
        timeout=30,
    )


def shows(printed: str, excerpt: str) -> list[str]:
    """The "key":value pairs of a shown excerpt that the printed JSON lacks."""
    pairs = JSON_PAIR.findall(excerpt)
    assert pairs, f'no "key":value in the README\'s comment {excerpt!r}'
    return [pair for pair in pairs if pair not in printed]


def test_the_block_prints_what_the_readme_says(readme: tuple[list[Command], Any], cluster: ProcessCluster) -> None:
    check_the_block_prints_what_the_readme_says(readme, lambda command: run(command, cluster))


def check_the_block_prints_what_the_readme_says(
    readme: tuple[list[Command], Any], run: Callable[[Command], subprocess.CompletedProcess[str]]
) -> None:
    """Runs the block's curl commands in order with `run` (on a stage with the
    sample catalog and no user123 yet), and checks what each printed. Also used
    by the compose cluster's test (tests/compose_cluster)."""
    commands = curl_commands(readme[0])
    award_in_full = readme[1]
    results = [run(command) for command in commands]
    for command, result in zip(commands, results):
        assert result.returncode == 0, f"{command.text}\nexit {result.returncode}: {result.stderr}"
    printed = {command.text: result.stdout for command, result in zip(commands, results)}
    put_activity, put_achievement, award, unlock, check, progress, keyed, refused = commands

    # The catalog entries, as made.
    activity = json.loads(printed[put_activity.text])
    assert (activity["activity_id"], activity["xp"]) == ("activity456", "100")
    achievement = json.loads(printed[put_achievement.text])
    assert (achievement["achievement_id"], achievement["requirements"]["required_achievements"]) == (
        "achievement789",
        [],
    )

    # The design's three calls, for a new user, on the sample levels (2 at 100 XP with 50 gold, 3 at 300).
    awarded = json.loads(printed[award.text])
    assert (awarded["xp_awarded"], awarded["total_xp"], awarded["level"], awarded["duplicate"]) == (
        "100",
        "100",
        2,
        False,
    )
    assert awarded["level_up"]["leveled_up"] and awarded["level_up"]["rewards"] == [
        {"reward_id": "gold", "quantity": "50"}
    ]
    assert awarded == award_in_full, "the README's award in full differs from what the award printed"
    unlocked = json.loads(printed[unlock.text])
    assert (unlocked["xp_awarded"], unlocked["total_xp"], unlocked["already_unlocked"]) == ("50", "150", False)
    assert unlocked["achievement"]["achievement_id"] == "achievement789"
    checked = json.loads(printed[check.text])
    assert (checked["leveled_up"], checked["current_level"], checked["total_xp"], checked["next_level_xp"]) == (
        False,
        2,
        "150",
        "300",
    )
    shown_progress = json.loads(printed[progress.text])
    assert (
        shown_progress["total_xp"],
        shown_progress["level"],
        shown_progress["unlocked_achievements"],
        shown_progress["rewards"],
    ) == ("150", 2, ["achievement789"], [{"reward_id": "gold", "quantity": "50"}])

    # The Idempotency-Key is the request id: a repeat counts once.
    first = json.loads(printed[keyed.text])
    assert (first["xp_awarded"], first["total_xp"], first["duplicate"]) == ("100", "250", False)
    repeat = run(keyed)
    assert repeat.returncode == 0, repeat.stderr
    again = json.loads(repeat.stdout)
    assert (again["xp_awarded"], again["total_xp"], again["duplicate"]) == ("100", "250", True)

    # No token: the body, then the status curl's -w prints.
    body, status = printed[refused.text].rstrip("\n").rsplit("\n", 1)
    assert status == "401"
    error = json.loads(body)
    assert error["code"] == "UNAUTHENTICATED" and error["details"] == [] and error["message"]

    # And each comment under a command shows what it printed.
    for command in commands[2:]:
        assert command.shown, f"no output shown under {command.text}"
    for command in (award, unlock, check, progress):
        missing = shows(printed[command.text], " ".join(command.shown))
        assert not missing, f"{command.text} printed {printed[command.text]}, without {missing}"
    first_shown, _, again_shown = " ".join(keyed.shown).partition(REPEAT_MARK)
    assert again_shown, f"the Idempotency-Key comment should show a repeat after {REPEAT_MARK!r}"
    assert not shows(printed[keyed.text], first_shown) and not shows(repeat.stdout, again_shown)
    assert list(refused.shown) == printed[refused.text].rstrip("\n").split("\n")
