"""docs/grpcurl.md stays true: its commands run, in order, through the real
grpcurl binary against a cluster of the real entry points (`python -m
xp_service` ...) with tables of its own, and each prints what the doc shows.
A WatchEvents stream never ends by itself: the doc's watches end at grpcurl's
-max-time, which grpcurl reports as DeadlineExceeded."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from common.caller_auth import METHOD_ROLES, Role
from devcluster.dynamodb_local import REPO_ROOT
from rewards.v1 import achievements_pb2, events_pb2, levels_pb2, xp_pb2
from tests.cluster import mint_test_token
from tests.process_cluster import start_process_cluster

DOC = REPO_ROOT / "docs" / "grpcurl.md"
# The ports `make up` listens on, which the doc uses; the test's cluster has others.
DEFAULT_PORTS = {"xp": 50051, "achievements": 50052, "levels": 50053, "events": 50054}
SERVICE_SERVERS = {
    "rewards.v1.XpService": "xp",
    "rewards.v1.AchievementsService": "achievements",
    "rewards.v1.LevelsService": "levels",
    "rewards.v1.EventsService": "events",
}
CONTRACT_METHODS = {
    f"{service.full_name}/{method.name}"
    for module in (xp_pb2, achievements_pb2, levels_pb2, events_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
}
# A server stream that runs until the client ends it: grpcurl's -max-time
# does, and reports it as this status (exit status 64 + 4).
WATCH_EVENTS = "rewards.v1.EventsService/WatchEvents"
ENDED_BY_DEADLINE = "DeadlineExceeded"
# Its message says whose deadline fired first: grpcurl's own, or the server's (grpcurl
# sends the deadline along, as grpc-timeout, and the server ends the call at it). The
# two race, so either may come (the server's about one run in twenty).
DEADLINE_MESSAGES = ("Message: context deadline exceeded", "Message: Deadline Exceeded")
# grpcurl exits with this plus the gRPC status code when a call fails.
GRPCURL_STATUS_EXIT_OFFSET = 64
# ... and with this when it fails before the call, such as when reflection refuses it.
GRPCURL_FAILURE_EXIT = 1
# The doc's setup: the dev tokens `make up` writes, and grpcurl on PATH. The test
# never sources the real file: it sets the variables itself (token_environment).
DEV_AUTH_SETUP = [".", ".local/dev-auth.env"]
PATH_SETUP = ["export", "PATH=$PWD/.venv/bin:$PATH"]
# The tokens the doc's commands send, by role, as the shell variables dev-auth.env sets.
TOKEN_VARIABLES = {Role.GAME: "REWARDS_GAME_TOKEN", Role.ADMIN: "REWARDS_ADMIN_TOKEN"}
HEADER_FLAGS = ("-H", "-rpc-header", "-reflect-header")
HEALTH_CHECK = "grpc.health.v1.Health/Check"
# google.protobuf.Timestamp in JSON; the time of a run is not the doc's.
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
FENCED_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class DocumentedCommand:
    command: str  # as in the doc, continuation lines and all
    output_kind: str  # the output block's language: "json" or "text"
    output: str

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.command, comments=True)

    @property
    def address(self) -> str:
        return next(arg for arg in self.argv if re.fullmatch(r"localhost:\d+", arg))

    @property
    def target(self) -> str:
        """What follows the address: `list`, `describe NAME`, or the method called."""
        argv = self.argv
        return " ".join(argv[argv.index(self.address) + 1 :])

    @property
    def request_json(self) -> str | None:
        argv = self.argv
        return argv[argv.index("-d") + 1] if "-d" in argv else None

    @property
    def is_call(self) -> bool:
        return self.request_json is not None

    @property
    def headers(self) -> dict[str, list[str]]:
        """The values of each metadata flag, as written (`$REWARDS_..._TOKEN` unexpanded)."""
        argv = self.argv
        return {flag: [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag] for flag in HEADER_FLAGS}

    @property
    def documented_error(self) -> bool:
        """A failed call as grpcurl prints it: `ERROR:` and the status when the
        server refused the call, or `Error invoking method` when it failed before
        (reflection refused to describe the method)."""
        return self.output_kind == "text" and self.output.startswith(("ERROR:", "Error invoking method "))

    @property
    def documented_status(self) -> str:
        """The status the doc shows for a failed call, such as `InvalidArgument`."""
        found = re.search(r"^\s*Code: (\w+)$|rpc error: code = (\w+) desc", self.output, re.MULTILINE)
        assert found, f"no status in:\n{self.output}"
        return found.group(1) or found.group(2)

    @property
    def documented_exit_status(self) -> int:
        if self.output.startswith("ERROR:"):
            return status_exit_code(self.documented_status)
        return GRPCURL_FAILURE_EXIT


def bearer(role: Role) -> str:
    return f"authorization: Bearer ${TOKEN_VARIABLES[role]}"


def least_role(target: str) -> Role | None:
    """The least role that may run `target` (list, describe, or a method): None
    for a health check, game for reflection and whatever a game may call, else
    admin (the doc has no `service` token, which services mint for themselves)."""
    if target == HEALTH_CHECK:
        return None
    if target.split()[0] in ("list", "describe"):
        return Role.GAME
    return Role.GAME if Role.GAME in METHOD_ROLES[f"/{target}"] else Role.ADMIN


def expected_headers(target: str) -> dict[str, list[str]]:
    """-H with the least role's token; for a health check, no token on the call,
    and a game token for the reflection grpcurl needs to find the method."""
    role = least_role(target)
    if role is None:
        return {"-H": [], "-rpc-header": [], "-reflect-header": [bearer(Role.GAME)]}
    return {"-H": [bearer(role)], "-rpc-header": [], "-reflect-header": []}


def token_environment() -> dict[str, str]:
    """What `. .local/dev-auth.env` sets, with tokens of the test cluster's key."""
    return {
        variable: mint_test_token(role, subject=f"grpcurl-doc-{role.value}")
        for role, variable in TOKEN_VARIABLES.items()
    }


@dataclass(frozen=True)
class Session:
    setup: list[str]  # shell lines that run before every command, such as PATH
    commands: list[DocumentedCommand]
    text: str


def logical_lines(script: str) -> list[str]:
    """Shell lines with their backslash continuations joined; no blank or comment lines."""
    joined = re.sub(r"\\\n", " ", script)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def parse_session(text: str) -> Session:
    """Each grpcurl command has a ```sh block of its own, right after which comes
    its output: ```json for a call's response, ```text for anything else (list,
    describe, or a failed call's status as grpcurl prints it on stderr)."""
    blocks = [(match.group(1), match.group(2)) for match in FENCED_BLOCK.finditer(text)]
    setup: list[str] = []
    commands: list[DocumentedCommand] = []
    index = 0
    while index < len(blocks):
        language, body = blocks[index]
        assert language == "sh", f"a ```{language} block that follows no command:\n{body}"
        lines = logical_lines(body)
        grpcurl_lines = [line for line in lines if line.startswith("grpcurl ")]
        if not grpcurl_lines:
            setup += lines
            index += 1
            continue
        assert lines == grpcurl_lines and len(lines) == 1, f"one grpcurl command per ```sh block:\n{body}"
        assert index + 1 < len(blocks) and blocks[index + 1][0] in ("json", "text"), (
            f"no ```json or ```text output block after:\n{body}"
        )
        commands.append(DocumentedCommand(body.strip(), blocks[index + 1][0], blocks[index + 1][1]))
        index += 2
    return Session(setup, commands, text)


@pytest.fixture(scope="module")
def session() -> Session:
    return parse_session(DOC.read_text())


def test_the_doc_shows_every_rpc_with_json_discovery_health_one_bad_call_and_two_refusals(session: Session) -> None:
    # Besides grpcurl, the doc runs only what loads the dev tokens and puts grpcurl on PATH.
    assert [shlex.split(line, comments=True) for line in session.setup] == [DEV_AUTH_SETUP, PATH_SETUP]
    refused = [
        documented
        for documented in session.commands
        if documented.documented_error and documented.documented_status in ("Unauthenticated", "PermissionDenied")
    ]
    for documented in session.commands:
        assert documented.argv[:2] == ["grpcurl", "-plaintext"], documented.command
        assert documented.address in {f"localhost:{port}" for port in DEFAULT_PORTS.values()}, documented.command
        if documented.is_call:
            json.loads(documented.request_json or "")  # a typo in -d shows here, without a cluster
        if documented not in refused:
            # Each command sends the token of the least role that may run it.
            assert documented.headers == expected_headers(documented.target), documented.command
    # The refusals: a call without any token, and a game token calling what only admin may.
    assert [(documented.target, documented.documented_status) for documented in refused] == [
        ("rewards.v1.XpService/GetProgress", "Unauthenticated"),
        ("rewards.v1.XpService/GrantXp", "PermissionDenied"),
    ]
    unauthenticated, denied = refused
    assert unauthenticated.headers == {flag: [] for flag in HEADER_FLAGS}, unauthenticated.command
    assert denied.headers == {"-H": [bearer(Role.GAME)], "-rpc-header": [], "-reflect-header": []}, denied.command
    assert Role.GAME not in METHOD_ROLES[f"/{denied.target}"]

    calls = [documented for documented in session.commands if documented.is_call]
    called = [documented.target for documented in calls if documented not in refused]
    assert set(called) - {HEALTH_CHECK} == CONTRACT_METHODS
    for documented in calls:
        service = documented.target.split("/")[0]
        if service in SERVICE_SERVERS:
            assert documented.address == f"localhost:{DEFAULT_PORTS[SERVICE_SERVERS[service]]}", documented.command

    targets = [(documented.address, documented.target) for documented in session.commands]
    for service, server in SERVICE_SERVERS.items():
        address = f"localhost:{DEFAULT_PORTS[server]}"
        assert (address, "list") in targets
        assert (address, f"describe {service}") in targets
        health = next(d for d in calls if d.target == HEALTH_CHECK and d.address == address)
        assert json.loads(health.request_json or "") == {"service": service}
        assert json.loads(health.output) == {"status": "SERVING"}
    assert ("localhost:50051", "describe rewards.v1.XpService.AwardXp") in targets

    # Each watch ends at its -max-time, which grpcurl reports as DeadlineExceeded; no other command does.
    watches = [documented for documented in calls if documented.target == WATCH_EVENTS]
    ended_by_deadline = [
        documented
        for documented in session.commands
        if documented.documented_error and documented.documented_status == ENDED_BY_DEADLINE
    ]
    assert watches and ended_by_deadline == watches, [documented.command for documented in ended_by_deadline]
    assert all("-max-time" in documented.argv for documented in watches), [w.command for w in watches]
    bad_calls = [
        documented
        for documented in session.commands
        if documented.documented_error and documented not in refused and documented not in ended_by_deadline
    ]
    assert [(bad.target, bad.documented_status) for bad in bad_calls] == [
        ("rewards.v1.XpService/AwardXp", "InvalidArgument")
    ]
    assert all(documented.output_kind == "json" for documented in calls if not documented.documented_error)
    # The order a game follows: catalogs, then play, then progress.
    assert (
        called.index("rewards.v1.LevelsService/PutLevel")
        < called.index("rewards.v1.XpService/PutActivity")
        < called.index("rewards.v1.AchievementsService/PutAchievement")
        < called.index("rewards.v1.XpService/AwardXp")
        < called.index("rewards.v1.AchievementsService/UnlockAchievement")
        < called.index("rewards.v1.XpService/GetProgress")
    )
    # Events: a webhook put, listed, looked after, and deleted; a watch after the play.
    assert (
        called.index("rewards.v1.EventsService/PutWebhook")
        < called.index("rewards.v1.EventsService/ListWebhooks")
        < called.index("rewards.v1.EventsService/ListFailedDeliveries")
        < called.index("rewards.v1.EventsService/RedeliverEvents")
        < called.index("rewards.v1.EventsService/DeleteWebhook")
    )
    assert called.index("rewards.v1.XpService/AwardXp") < called.index(WATCH_EVENTS)


@pytest.fixture(scope="module")
def cluster_ports(dynamodb_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """The four entry points as processes on free ports, with tables of their
    own, so the session starts from the empty cluster the doc shows."""
    cluster = start_process_cluster(
        dynamodb_endpoint,
        tmp_path_factory.mktemp("grpcurl-doc-logs"),
        metrics=False,
        # The doc shows awards whose level check answered in time; generous
        # deadlines keep a loaded machine from turning them into deferred ones.
        extra_env={"REWARDS_LEVEL_CHECK_TIMEOUT_S": "10"},
    )
    try:
        yield cluster.ports
    finally:
        cluster.stop()


def without_timestamps(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: without_timestamps(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_timestamps(item) for item in value]
    if isinstance(value, str) and TIMESTAMP.match(value):
        return "<timestamp>"
    return value


def text_lines(text: str) -> list[str]:
    """Lines with runs of white space made one space: the doc shows grpcurl's tabs as spaces."""
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def deadline_lines(text: str) -> list[str]:
    """text_lines, either deadline message as the first (grpcurl's)."""
    return [DEADLINE_MESSAGES[0] if line in DEADLINE_MESSAGES else line for line in text_lines(text)]


def status_exit_code(camel: str) -> int:
    """`InvalidArgument` -> 64 + 3, the exit status grpcurl gives that status."""
    code = grpc.StatusCode[re.sub(r"(?<!^)(?=[A-Z])", "_", camel).upper()]
    return GRPCURL_STATUS_EXIT_OFFSET + code.value[0]


def run_documented(
    session: Session, documented: DocumentedCommand, ports: dict[str, int]
) -> subprocess.CompletedProcess[str]:
    command = documented.command
    for server, default_port in DEFAULT_PORTS.items():
        command = command.replace(f"localhost:{default_port}", f"localhost:{ports[server]}")
    # As a reader runs it: the doc's setup lines, then the command, in bash
    # from the repository root, so that `$REWARDS_..._TOKEN` expands. The
    # environment stands in for .local/dev-auth.env (tokens of the test
    # cluster's key; the real file is not read), and the running Python's bin
    # directory for .venv/bin when the suite runs from another virtualenv.
    setup = [line for line in session.setup if shlex.split(line, comments=True) != DEV_AUTH_SETUP]
    script = "\n".join([*setup, command])
    env = {
        **os.environ,
        **token_environment(),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30)


def mismatch(session: Session, documented: DocumentedCommand, ran: subprocess.CompletedProcess[str]) -> str | None:
    """Why what the command printed is not what the doc shows; None when it is."""
    shown = f"{documented.command}\n  exit status {ran.returncode}\n  stdout: {ran.stdout}\n  stderr: {ran.stderr}"
    if documented.documented_error:
        expected_exit = documented.documented_exit_status
        if ran.returncode != expected_exit:
            return f"expected exit status {expected_exit}: {shown}"
        if not re.search(rf"exits with status {expected_exit}\b", session.text):
            return f"the doc does not say the exit status is {expected_exit}: {shown}"
        same = deadline_lines if documented.documented_status == ENDED_BY_DEADLINE else text_lines
        if same(ran.stderr) != same(documented.output):
            return f"a status other than the doc's:\n{documented.output}\n{shown}"
        # Nothing before the status either: a watch that printed an event the doc does not show fails here.
        if ran.stdout.strip():
            return f"printed more than the doc's status:\n{documented.output}\n{shown}"
        return None
    if ran.returncode != 0:
        return f"failed: {shown}"
    if documented.output_kind == "json":
        try:
            printed = json.loads(ran.stdout)
        except json.JSONDecodeError:
            return f"printed no JSON: {shown}"
        if without_timestamps(printed) != without_timestamps(json.loads(documented.output)):
            return f"printed other JSON than the doc's:\n{documented.output}\n{shown}"
        return None
    if text_lines(ran.stdout) != text_lines(documented.output):
        return f"printed other text than the doc's:\n{documented.output}\n{shown}"
    return None


def test_every_documented_command_prints_what_the_doc_shows(session: Session, cluster_ports: dict[str, int]) -> None:
    # Every command runs, even after a mismatch, so that one run lists every
    # place the doc needs fixing.
    mismatches = [
        found
        for documented in session.commands
        if (found := mismatch(session, documented, run_documented(session, documented, cluster_ports)))
    ]
    assert not mismatches, "\n\n".join(mismatches)


README = REPO_ROOT / "README.md"


def readme_grpcurl_block() -> list[str]:
    """The command lines of the README's grpcurl block, continuation lines joined."""
    section = README.read_text().split("## Try it with grpcurl", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands, current = [], ""
    for line in block.splitlines():
        line = line.split("  #", 1)[0].rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        current += line.strip().removesuffix("\\").rstrip() + " "
        if not line.endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


def readme_grpcurl_commands() -> list[str]:
    return [c for c in readme_grpcurl_block() if c.startswith("grpcurl ")]


def test_the_readme_grpcurl_block_loads_the_tokens_and_sends_the_least_role() -> None:
    # The block starts by loading the dev tokens and putting grpcurl on PATH, and runs nothing else.
    block = readme_grpcurl_block()
    assert [shlex.split(line) for line in block[:2]] == [DEV_AUTH_SETUP, PATH_SETUP]
    assert all(line.startswith("grpcurl ") for line in block[2:]), block
    for command in block[2:]:
        documented = DocumentedCommand(command, "json", "")
        assert documented.headers == expected_headers(documented.target), command


def test_the_readme_grpcurl_block_calls_every_rpc_and_works(dynamodb_endpoint: str, tmp_path: Path) -> None:
    commands = readme_grpcurl_commands()
    called = {c.split()[-1] for c in commands if "/" in c.split()[-1]}
    assert CONTRACT_METHODS <= called, CONTRACT_METHODS - called
    # A watch runs until grpcurl's -max-time ends it.
    assert all("-max-time" in shlex.split(c) for c in commands if c.split()[-1] == WATCH_EVENTS)
    cluster = start_process_cluster(
        dynamodb_endpoint,
        tmp_path,
        metrics=False,
        extra_env={"REWARDS_LEVEL_CHECK_TIMEOUT_S": "10"},
    )
    try:
        # The tokens . .local/dev-auth.env would set, of the test cluster's key.
        env = {
            **os.environ,
            **token_environment(),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        results = []
        for command in commands:
            for name, default in DEFAULT_PORTS.items():
                command = command.replace(f"localhost:{default}", f"localhost:{cluster.ports[name]}")
            results.append(subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=30))
    finally:
        cluster.stop()
    check_the_readme_grpcurl_block_results(results)


def check_the_readme_grpcurl_block_results(
    results: list[subprocess.CompletedProcess[str]], *, sample_catalog: bool = False
) -> None:
    """What the README's grpcurl commands (readme_grpcurl_commands, run in order
    on a new stage, empty or with the sample catalog loaded) printed. Also used
    by the compose cluster's test (tests/compose_cluster)."""
    *rest, bad = results
    watches = [r for r in rest if r.args[-1].endswith(WATCH_EVENTS)]
    good = [r for r in rest if r not in watches]
    assert [r.args[-1] for r in good if r.returncode != 0] == []
    # Nothing happens during a watch in one sequential shell: no event, then the deadline.
    for watch in watches:
        assert watch.returncode == status_exit_code(ENDED_BY_DEADLINE), watch
        assert (watch.stdout, deadline_lines(watch.stderr)) == (
            "",
            ["ERROR:", f"Code: {ENDED_BY_DEADLINE}", DEADLINE_MESSAGES[0]],
        ), watch
    award, retry = [json.loads(r.stdout) for r in good if "XpService/AwardXp" in r.args[-1]]
    assert (award["xp_awarded"], award["level"], award["level_up"]["rewards"]) == (
        "150",
        2,
        [{"reward_id": "gold", "quantity": "50"}],
    )
    # On the sample catalog (as after `make up`), carol's first win also unlocks wins-1 by itself, which pays 25.
    auto_unlocked, auto_xp = (["wins-1"], 25) if sample_catalog else ([], 0)
    assert (retry["duplicate"], retry["total_xp"]) == (True, str(150 + auto_xp))
    progress = json.loads(next(r.stdout for r in good if "XpService/GetProgress" in r.args[-1]))
    assert (progress["total_xp"], progress["level"], sorted(progress["unlocked_achievements"])) == (
        str(225 + auto_xp),
        2,
        sorted(["first-win", *auto_unlocked]),
    )
    # The webhook: listed without its secret, and no failed delivery to list or redeliver.
    webhooks = json.loads(next(r.stdout for r in good if "EventsService/ListWebhooks" in r.args[-1]))
    assert [sorted(webhook) for webhook in webhooks["webhooks"]] == [["types", "url", "webhook_id"]]
    assert json.loads(next(r.stdout for r in good if "EventsService/ListFailedDeliveries" in r.args[-1])) == {}
    assert json.loads(next(r.stdout for r in good if "EventsService/RedeliverEvents" in r.args[-1])) == {}
    assert bad.returncode == 64 + grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "Code: InvalidArgument" in bad.stderr and "Message: user_id is required" in bad.stderr
