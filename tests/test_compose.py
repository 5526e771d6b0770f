"""docker-compose.yml, the Dockerfile and .dockerignore, checked without a
container engine (`make compose-test` runs them for real, under podman:
tests/compose_cluster): compose itself validates the file, and its services, ports,
variables, commands and health checks agree with the code's configuration and
entry points. Caller auth is on in every container, and the dev-tokens
service's command is run here with the file's environment: it prints tokens
the servers accept. The health probe those checks run is tested against a real
Levels server, the gateway's check against a real gateway process, and
DynamoDB's check against a real DynamoDB Local."""

from __future__ import annotations

import ast
import fnmatch
import importlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from common.caller_auth import METHOD_ROLES, Role, RoleRefused, TokenAuthority, authorize
from common.config import ENVIRONMENT_VARIABLES, Settings
from common.dynamodb import DynamoDBClient, create_dynamodb_client, ensure_tables
from common.health_probe import DEFAULT_DEADLINE_S
from common.server_runtime import HealthServicer
from devcluster import container_engine
from devcluster.dynamodb_local import LOCAL_CREDENTIALS, REPO_ROOT, free_port
from devcluster.readiness import wait_http_healthy
from gateway.routes import SERVICES as GATEWAY_SERVICES
from levels_service import server as levels_server
from rewardsctl.__main__ import build_parser, token_dev_env
from tests.cluster import ServerLoop

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

# Compose service name (the name the configuration gives it: REWARDS_<NAME>_*)
# -> the module `python -m` runs.
MODULES = {
    "xp": "xp_service",
    "achievements": "achievements_service",
    "levels": "levels_service",
    "events": "events_service",
}
# The HTTP/JSON gateway (REWARDS_GATEWAY_*), in front of the services it routes to (gateway/routes.py).
GATEWAY = "gateway"
GATEWAY_PEERS = set(GATEWAY_SERVICES)
# Every server compose runs: the four gRPC services and the gateway.
SERVERS = {**MODULES, GATEWAY: "gateway"}
# The one-shot service that prints the dev key and tokens, from the same image.
DEV_TOKENS = "dev-tokens"
# Every container built from the Dockerfile: the servers and dev-tokens.
IMAGE_SERVICES = (*SERVERS, DEV_TOKENS)
# The containers that hold the key: the services verify tokens and mint their
# own, dev-tokens mints the dev ones. The gateway passes callers' tokens through.
KEY_HOLDERS = (*MODULES, DEV_TOKENS)
AUTH_KEY_VARIABLE = ENVIRONMENT_VARIABLES["auth_jwt_secret"]
INSECURE_VARIABLE = ENVIRONMENT_VARIABLES["insecure_no_auth"]
# Who calls whom: XP asks Levels when an award may raise the level, Achievements pays through XP,
# the gateway calls XP, Achievements and Levels; Events reads DynamoDB's streams and calls no service.
DEPENDENCIES = {
    "levels": {"dynamodb"},
    "xp": {"dynamodb", "levels"},
    "achievements": {"dynamodb", "xp"},
    "events": {"dynamodb"},
    GATEWAY: GATEWAY_PEERS,
}
# The ports clients and the README rely on, by service: gRPC, then Prometheus metrics.
PROMISED_PORTS = {
    "xp": (50051, 9451),
    "achievements": (50052, 9452),
    "levels": (50053, 9453),
    "events": (50054, 9454),
}
# ... and the gateway's HTTP port.
GATEWAY_PORT = 8080
# Read by boto3 rather than by common/config.py; DynamoDB Local wants them present.
CREDENTIAL_VARIABLES = set(LOCAL_CREDENTIALS)
DYNAMODB_PORT = 8000
INSTALL_HINT = "apt-get install -y --no-install-recommends docker-compose (scripts/install.sh does it)"


# ---- reading the files --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict) and isinstance(loaded.get("services"), dict), "docker-compose.yml has no services"
    return loaded


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, whichever of compose's two forms it uses."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {key: str(value) for key, value in raw.items()}


def published_ports(service: dict[str, Any]) -> set[tuple[str, int, int]]:
    """(host ip or "", published, container port) for each short-form port."""
    mapped = set()
    for spec in service.get("ports", []):
        parts = str(spec).split("/")[0].split(":")
        assert len(parts) in (2, 3), f"port {spec!r}: publish it as [IP:]HOST:CONTAINER"
        host_ip = parts[0] if len(parts) == 3 else ""
        mapped.add((host_ip, int(parts[-2]), int(parts[-1])))
    return mapped


def seconds(duration: str) -> float:
    """A compose duration such as 15s, 1m30s or 500ms."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", str(duration))
    assert parts and "".join(n + u for n, u in parts) == str(duration), f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def host_and_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def container_settings(service: dict[str, Any]) -> Settings:
    """What common/config.py makes of the service's environment inside its container."""
    return Settings.from_env(environment(service))


def grpc_port(name: str) -> int:
    """Where the code listens by default; the compose file keeps the same ports."""
    return host_and_port(getattr(Settings(), f"{name}_listen"))[1]


def unescaped(command: list[str]) -> list[str]:
    """A health check's command as the container gets it: `$$` is compose's escape for `$`."""
    return [part.replace("$$", "$") for part in command]


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.fail(f"neither docker-compose nor the docker compose plugin is installed: {INSTALL_HINT}")


def run_compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*compose_command(), "--project-directory", str(REPO_ROOT), "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )


# ---- compose validates the file -----------------------------------------------------------------


def test_compose_validates_the_file() -> None:
    checked = run_compose("config", "-q")
    assert checked.returncode == 0, f"docker-compose config -q rejects docker-compose.yml:\n{checked.stderr}"
    assert "WARN" not in checked.stderr.upper(), checked.stderr


def test_compose_resolves_shared_settings_as_pyyaml_does(compose: dict[str, Any]) -> None:
    """The file shares settings through YAML anchors and merge keys: the checks
    below read it with PyYAML, so compose must read the same thing."""
    resolved = run_compose("config")
    assert resolved.returncode == 0, resolved.stderr
    # A bare `$name` in the file is compose interpolating a host variable; `$$` is a literal `$`.
    assert "is not set" not in resolved.stderr, resolved.stderr
    as_compose_reads = yaml.safe_load(resolved.stdout)["services"]
    assert set(as_compose_reads) == set(services(compose))
    for name, service in services(compose).items():
        theirs = as_compose_reads[name]
        assert environment(theirs) == environment(service), name
        assert theirs.get("command") == service.get("command"), name
        assert theirs.get("restart") == service.get("restart"), name
        assert ("healthcheck" in theirs) == ("healthcheck" in service), name
        if "healthcheck" in service:
            assert unescaped(theirs["healthcheck"]["test"]) == unescaped(service["healthcheck"]["test"]), name
        assert {dep: spec["condition"] for dep, spec in (theirs.get("depends_on") or {}).items()} == {
            dep: spec["condition"] for dep, spec in (service.get("depends_on") or {}).items()
        }, name


# ---- services and entry points ------------------------------------------------------------------


def test_services_are_dynamodb_local_the_four_servers_the_gateway_and_dev_tokens(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == {"dynamodb", *MODULES, GATEWAY, DEV_TOKENS}


def entry_point(module: str) -> tuple[str, str]:
    """What `python -m module` runs: the function its __main__ calls (serve or
    main) and the module that defines it. __main__ starts the server when
    imported, so it is read, not imported."""
    main = importlib.util.find_spec(f"{module}.__main__")
    assert main is not None and main.origin, f"{module} cannot run with python -m"
    tree = ast.parse(Path(main.origin).read_text())
    calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    called = sorted(calls & {"serve", "main"})
    assert called, f"{main.origin} calls neither serve() nor main()"
    imported = {
        alias.asname or alias.name: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }
    return called[0], imported.get(called[0], f"{module}.__main__")


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_each_service_runs_its_entry_point_module(compose: dict[str, Any], name: str) -> None:
    module = SERVERS[name]
    assert services(compose)[name]["command"] == ["python", "-m", module]
    function, defined_in = entry_point(module)
    assert defined_in.split(".")[0] == module, f"{module}.__main__ runs {defined_in}.{function}"
    if defined_in != f"{module}.__main__":
        assert callable(getattr(importlib.import_module(defined_in), function))
    if name in MODULES:
        assert function == "serve" and callable(importlib.import_module(f"{module}.server").serve)


def canonical(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def installed_with(requirements: list[str]) -> set[str]:
    """The distributions `pip install` of these requirements brings (their
    dependencies too, extras aside), by canonical name, as installed here."""
    seen: set[str] = set()
    pending = [re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0] for requirement in requirements]
    while pending:
        name = canonical(pending.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        pending += [re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0] for r in requires if "extra ==" not in r]
    return seen


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_the_image_installs_every_module_compose_runs_and_what_it_imports(name: str) -> None:
    """The Dockerfile installs the project (`pip install .`, its dependencies
    without the dev extras) and runs outside the source tree, so a module runs
    in the container only if pyproject.toml includes its package, and each
    library it imports is a dependency (or comes with one)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    included = project["tool"]["setuptools"]["packages"]["find"]["include"]
    module = SERVERS[name]
    assert any(fnmatch.fnmatch(module, pattern) for pattern in included), (
        f"pyproject.toml's [tool.setuptools.packages.find] include does not install {module}"
    )
    installed = installed_with(project["project"]["dependencies"])
    providers = importlib.metadata.packages_distributions()
    imported: set[str] = set()
    for path in (REPO_ROOT / module).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    missing = {
        top: providers[top]
        for top in imported
        if top in providers
        and not any(fnmatch.fnmatch(top, pattern) for pattern in included)
        and not {canonical(d) for d in providers[top]} & installed
    }
    assert not missing, f"{module} imports what pyproject.toml's dependencies do not install: {missing}"


def test_every_service_container_is_built_from_the_one_dockerfile(compose: dict[str, Any]) -> None:
    images = set()
    for name in IMAGE_SERVICES:
        service = services(compose)[name]
        build = service["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (REPO_ROOT / context).resolve() == REPO_ROOT, f"{name} builds from {context}"
        if not isinstance(build, str):
            assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
        images.add(service.get("image"))
    assert len(images) == 1, f"the services, the gateway and dev-tokens should share one image, not {images}"


# ---- ports, variables, targets ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROMISED_PORTS))
def test_grpc_and_metrics_ports_are_published_where_the_service_listens(compose: dict[str, Any], name: str) -> None:
    grpc_promised, metrics_promised = PROMISED_PORTS[name]
    assert grpc_port(name) == grpc_promised, "the code's default port moved: update the compose file and README"
    assert getattr(Settings(), f"{name}_metrics_port") == metrics_promised
    service = services(compose)[name]
    settings = container_settings(service)
    listen_host, listen_port = host_and_port(getattr(settings, f"{name}_listen"))
    # Docker forwards published ports to the container's own address, not its loopback.
    assert listen_host in ("0.0.0.0", "[::]"), f"{name} listens on {listen_host}, unreachable from outside"
    assert listen_port == grpc_promised
    assert getattr(settings, f"{name}_metrics_port") == metrics_promised
    # On the host's loopback only: the file's dev key is public, so the ports must not face a network.
    assert published_ports(service) == {
        ("127.0.0.1", grpc_promised, grpc_promised),
        ("127.0.0.1", metrics_promised, metrics_promised),
    }


def test_the_gateway_port_is_published_where_the_gateway_listens(compose: dict[str, Any]) -> None:
    assert Settings().gateway_port == GATEWAY_PORT, (
        "the gateway's default port moved: update the compose file and README"
    )
    service = services(compose)[GATEWAY]
    settings = container_settings(service)
    assert settings.gateway_host in ("0.0.0.0", "::", "[::]"), f"the gateway listens on {settings.gateway_host}"
    assert settings.gateway_port == GATEWAY_PORT
    # On the host's loopback only, like the services' ports.
    assert published_ports(service) == {("127.0.0.1", GATEWAY_PORT, GATEWAY_PORT)}


@pytest.mark.parametrize("name", sorted(PROMISED_PORTS))
def test_every_variable_a_service_sets_is_one_the_code_reads(compose: dict[str, Any], name: str) -> None:
    variables = set(environment(services(compose)[name]))
    unknown = variables - set(ENVIRONMENT_VARIABLES.values()) - CREDENTIAL_VARIABLES
    assert not unknown, f"{name} sets variables that nothing reads: {sorted(unknown)}"
    assert CREDENTIAL_VARIABLES <= variables, "DynamoDB Local needs credentials to be present"
    assert {"AWS_REGION", "REWARDS_DYNAMODB_ENDPOINT"} <= variables


def test_the_gateway_sets_only_what_it_reads_the_targets_and_no_key(compose: dict[str, Any]) -> None:
    service = services(compose)[GATEWAY]
    variables = set(environment(service))
    unknown = variables - set(ENVIRONMENT_VARIABLES.values())
    assert not unknown, f"the gateway sets variables that nothing reads: {sorted(unknown)}"
    # The environment the container gets is one the configuration takes.
    settings = Settings.from_env(environment(service))
    assert GATEWAY_PEERS <= set(MODULES)
    for peer in GATEWAY_PEERS:
        assert ENVIRONMENT_VARIABLES[f"{peer}_target"] in variables, f"the gateway does not say where {peer} is"
        assert getattr(settings, f"{peer}_target") == f"{peer}:{grpc_port(peer)}"
    # It passes callers' tokens through and never touches DynamoDB: no key, no credentials.
    assert AUTH_KEY_VARIABLE not in variables and not settings.auth_jwt_secret
    assert not variables & (CREDENTIAL_VARIABLES | {"REWARDS_DYNAMODB_ENDPOINT"})


@pytest.mark.parametrize("name", sorted(PROMISED_PORTS))
def test_targets_and_endpoint_name_compose_services_and_their_ports(compose: dict[str, Any], name: str) -> None:
    service = services(compose)[name]
    settings = container_settings(service)
    set_here = set(environment(service))
    for peer in MODULES:
        variable = ENVIRONMENT_VARIABLES[f"{peer}_target"]
        if peer in DEPENDENCIES[name]:
            # The default (localhost) is the container itself.
            assert variable in set_here, f"{name} calls {peer} but does not set {variable}"
        if variable in set_here:
            assert getattr(settings, f"{peer}_target") == f"{peer}:{grpc_port(peer)}"
            assert peer in services(compose)
    endpoint = urlsplit(settings.dynamodb_endpoint or "")
    assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("http", "dynamodb", DYNAMODB_PORT)


# ---- health checks and start order --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROMISED_PORTS))
def test_healthchecks_ask_the_grpc_health_protocol(compose: dict[str, Any], name: str) -> None:
    check = services(compose)[name]["healthcheck"]
    full_name = importlib.import_module(f"{MODULES[name]}.server").SERVICE.full_name
    assert check["test"] == ["CMD", "python", "-m", "common.health_probe", f"127.0.0.1:{grpc_port(name)}", full_name]
    # The probe gives up first, so it reports why instead of being killed.
    assert seconds(check["timeout"]) > DEFAULT_DEADLINE_S


def gateway_check_argv(compose: dict[str, Any], port: int = GATEWAY_PORT) -> list[str]:
    """The gateway's check (the services' probe, given the /healthz URL), pointed at `port`."""
    test = services(compose)[GATEWAY]["healthcheck"]["test"]
    url = f"http://127.0.0.1:{GATEWAY_PORT}/healthz"
    assert test == ["CMD", "python", "-m", "common.health_probe", url], test
    return [sys.executable, "-m", "common.health_probe", url.replace(str(GATEWAY_PORT), str(port))]


def test_the_gateway_healthcheck_gets_healthz_within_the_check_timeout(compose: dict[str, Any]) -> None:
    gateway_check_argv(compose)
    # The request gives up first, so the check reports why instead of being killed.
    assert DEFAULT_DEADLINE_S < seconds(services(compose)[GATEWAY]["healthcheck"]["timeout"])


def test_no_exec_form_check_has_an_argument_with_whitespace(compose: dict[str, Any]) -> None:
    """podman's Docker API (as docker-compose drives it) joins a CMD check's
    arguments with spaces and splits them again at whitespace (podman#26519):
    `bash -c "a b"` would run `bash -c a` there, a check that always passes. A
    shell line goes in CMD-SHELL, which both engines pass whole to /bin/sh -c."""
    for name, service in services(compose).items():
        test = service.get("healthcheck", {}).get("test")
        if not test:
            continue
        assert test[0] in ("CMD", "CMD-SHELL"), (name, test)
        if test[0] == "CMD":
            assert not [arg for arg in test[1:] if re.search(r"\s", arg)], (name, test)
        else:
            assert len(test) == 2, (name, test)


def test_dynamodb_local_is_pinned_shared_and_checked(compose: dict[str, Any]) -> None:
    dynamodb = services(compose)["dynamodb"]
    image, _, tag = dynamodb["image"].partition(":")
    assert image == "amazon/dynamodb-local" and tag and tag != "latest", dynamodb["image"]
    command = dynamodb["command"]
    assert "-sharedDb" in command, "without -sharedDb each credential/region pair sees its own tables"
    assert "-port" not in command or command[command.index("-port") + 1] == str(DYNAMODB_PORT)
    test = dynamodb["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and test[1].startswith("bash -c '"), test
    assert f"/dev/tcp/127.0.0.1/{DYNAMODB_PORT}" in test[1]


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_services_start_after_healthy_dependencies(compose: dict[str, Any], name: str) -> None:
    depends_on = services(compose)[name]["depends_on"]
    assert depends_on == {dependency: {"condition": "service_healthy"} for dependency in DEPENDENCIES[name]}
    for dependency in depends_on:
        assert "test" in services(compose)[dependency].get("healthcheck", {}), f"{dependency} has no health check"


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_docker_waits_for_the_drain_on_sigterm(compose: dict[str, Any], name: str) -> None:
    service = services(compose)[name]
    grace = container_settings(service).shutdown_grace_s
    assert seconds(service.get("stop_grace_period", "10s")) > grace, (
        f"Docker kills {name} before its {grace} s drain of in-flight calls ends"
    )


# ---- caller auth --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KEY_HOLDERS)
def test_every_rewards_container_has_the_auth_key(compose: dict[str, Any], name: str) -> None:
    service = services(compose)[name]
    unknown = set(environment(service)) - set(ENVIRONMENT_VARIABLES.values()) - CREDENTIAL_VARIABLES
    assert not unknown, f"{name} sets variables that nothing reads: {sorted(unknown)}"
    settings = container_settings(service)
    assert settings.auth_jwt_secret, f"{name} has no {AUTH_KEY_VARIABLE}: the servers refuse to start without it"
    # What the servers build at start-up: a key long enough, and auth not off.
    assert TokenAuthority.from_settings(settings) is not None


@pytest.mark.parametrize("name", sorted(["dynamodb", *IMAGE_SERVICES]))
def test_no_service_turns_auth_off(compose: dict[str, Any], name: str) -> None:
    env = environment(services(compose)[name])
    assert INSECURE_VARIABLE not in env, f"{name} sets {INSECURE_VARIABLE}: compose runs with auth on"
    assert not Settings.from_env(env).insecure_no_auth


def test_one_dev_only_key_written_once(compose: dict[str, Any]) -> None:
    keys = {container_settings(services(compose)[name]).auth_jwt_secret for name in KEY_HOLDERS}
    # One key: the services verify each other's service tokens and dev-tokens' tokens with it.
    assert len(keys) == 1, "the containers disagree on the key"
    (key,) = keys
    assert key.startswith("dev-only"), "the compose key is public: its value should say it is for development only"
    text = COMPOSE_FILE.read_text()
    # Written once (an extension field the environments merge), and commented as dev-only where it is.
    assert text.count(key) == 1 and text.count(f"{AUTH_KEY_VARIABLE}:") == 1
    before = text[: text.index(f"{AUTH_KEY_VARIABLE}:")].splitlines()
    comment = [line for line in before[-8:] if line.lstrip().startswith("#")]
    assert any("DEV ONLY" in line.upper() for line in comment), "mark the key as dev-only in a comment above it"


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_a_crashed_server_is_restarted(compose: dict[str, Any], name: str) -> None:
    # `make compose-test` SIGKILLs one under load and sees compose restart it. DynamoDB Local is not
    # restarted: it holds the data in memory, and an empty one would look like lost progress.
    assert services(compose)[name]["restart"] == "unless-stopped"
    assert "restart" not in services(compose)["dynamodb"]


def test_dev_tokens_is_a_one_shot_needing_nothing(compose: dict[str, Any]) -> None:
    service = services(compose)[DEV_TOKENS]
    assert service["restart"] == "no"
    # `docker compose run dev-tokens` starts nothing else, and nothing waits for it.
    assert not service.get("depends_on")
    assert not service.get("ports") and "healthcheck" not in service
    for name, other in services(compose).items():
        assert DEV_TOKENS not in (other.get("depends_on") or {}), f"{name} waits for the one-shot dev-tokens"


def test_dev_tokens_runs_a_rewardsctl_subcommand(compose: dict[str, Any]) -> None:
    command = services(compose)[DEV_TOKENS]["command"]
    assert command[:3] == ["python", "-m", "rewardsctl"]
    main = importlib.util.find_spec("rewardsctl.__main__")
    assert main is not None and main.origin, "rewardsctl cannot run with python -m"
    args = build_parser().parse_args(command[3:])  # exits (SystemExit) on an unknown subcommand
    assert args.run is token_dev_env


def exported(output: str) -> dict[str, str]:
    """The `export NAME=VALUE` lines of a shell snippet."""
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"export [A-Z_]+=\S+", line) for line in lines), output
    return dict(line.removeprefix("export ").split("=", 1) for line in lines)


def test_dev_tokens_prints_tokens_the_servers_accept(compose: dict[str, Any]) -> None:
    service = services(compose)[DEV_TOKENS]
    command = service["command"]
    # As the container runs it: its environment only (no REWARDS_* of this host), this Python for its `python`.
    printed = subprocess.run(
        [sys.executable, *command[1:]],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", ""), **environment(service)},
    )
    assert printed.returncode == 0, printed.stderr
    exports = exported(printed.stdout)
    assert set(exports) == {AUTH_KEY_VARIABLE, "REWARDS_GAME_TOKEN", "REWARDS_ADMIN_TOKEN", "REWARDS_TOKEN"}
    assert exports[AUTH_KEY_VARIABLE] == environment(service)[AUTH_KEY_VARIABLE]
    # rewardsctl sends REWARDS_TOKEN: the admin one, which can load a catalog.
    assert exports["REWARDS_TOKEN"] == exports["REWARDS_ADMIN_TOKEN"]
    for name in MODULES:
        # What each server verifies with, built from its own environment as it does at start-up.
        authority = TokenAuthority.from_settings(container_settings(services(compose)[name]))
        assert authority is not None
        assert authority.verify(exports["REWARDS_GAME_TOKEN"]).role is Role.GAME
        assert authority.verify(exports["REWARDS_ADMIN_TOKEN"]).role is Role.ADMIN
    secret = environment(service)[AUTH_KEY_VARIABLE]
    authority = TokenAuthority(secret)
    assert authority.verify(exports["REWARDS_GAME_TOKEN"]).role is Role.GAME
    assert authority.verify(exports["REWARDS_ADMIN_TOKEN"]).role is Role.ADMIN

    # And the roles do what they are for: a game server awards, only admin writes the catalog.
    def bearer(token: str) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {token}")]

    award, put = "/rewards.v1.XpService/AwardXp", "/rewards.v1.XpService/PutActivity"
    assert {award, put} <= set(METHOD_ROLES)
    authorize(authority, award, bearer(exports["REWARDS_GAME_TOKEN"]))
    authorize(authority, put, bearer(exports["REWARDS_ADMIN_TOKEN"]))
    with pytest.raises(RoleRefused):
        authorize(authority, put, bearer(exports["REWARDS_GAME_TOKEN"]))


# ---- Dockerfile and .dockerignore ---------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_make_compose_test_runs_the_images_this_file_and_the_dockerfile_name(compose: dict[str, Any]) -> None:
    """`make compose-test` stores its stand-in base images and the project's
    image under the names the file and the Dockerfile use (as podman fully
    qualifies them), so that what ran there is this file, unchanged."""
    from_images = [arg for op, arg in dockerfile_instructions() if op == "FROM"]
    assert [f"docker.io/library/{image}" for image in from_images] == [container_engine.PYTHON_IMAGE]
    assert f"docker.io/{services(compose)['dynamodb']['image']}" == container_engine.DYNAMODB_LOCAL_IMAGE
    assert {services(compose)[name]["image"] for name in IMAGE_SERVICES} == {
        container_engine.PROJECT_IMAGE.removeprefix("localhost/")
    }
    # Each stand-in is built from Debian packages on the debootstrapped base, never pulled.
    for stand_in in container_engine.STAND_INS:
        froms = [
            line.split()[1] for line in stand_in.containerfile.read_text().splitlines() if line.startswith("FROM ")
        ]
        assert froms == [container_engine.DEBIAN_BASE_IMAGE], stand_in


def test_dockerfile_builds_a_slim_non_root_image_of_the_project(compose: dict[str, Any]) -> None:
    instructions = dockerfile_instructions()
    python = re.search(
        r">=(\d+\.\d+)", tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    )
    assert python is not None
    assert [arg for op, arg in instructions if op == "FROM"] == [f"python:{python.group(1)}-slim"]
    installs = [arg for op, arg in instructions if op == "RUN" and "pip install" in arg]
    assert any(re.search(r"pip install (--no-deps )?\.(\s|$)", run) for run in installs), (
        "the project itself is not installed"
    )
    assert not any("[dev]" in run or "requirements-dev" in run for run in installs), "dev dependencies in the image"
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image runs as root"
    exposed = {int(port.split("/")[0]) for op, arg in instructions if op == "EXPOSE" for port in arg.split()}
    published = {target for name in SERVERS for _, _, target in published_ports(services(compose)[name])}
    assert exposed == published
    cmd = [arg for op, arg in instructions if op == "CMD"]
    assert cmd and yaml.safe_load(cmd[-1])[:2] == ["python", "-m"] and yaml.safe_load(cmd[-1])[2] in MODULES.values()


def test_dockerignore_keeps_local_state_out_of_the_build() -> None:
    ignored = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".git", ".venv", ".local", ".pytest_cache", ".mypy_cache", "**/__pycache__"} <= ignored


# ---- the probes, against real servers -----------------------------------------------------------


def run_probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.health_probe", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
    )


@pytest.fixture(scope="module")
def levels_settings(dynamodb_endpoint: str, compose: dict[str, Any]) -> Settings:
    # Auth on with the compose file's key, as in the container: health checks need no token.
    key = container_settings(services(compose)["levels"]).auth_jwt_secret
    settings = replace(
        Settings(),
        dynamodb_endpoint=dynamodb_endpoint,
        table_prefix=f"probe-{uuid.uuid4().hex[:8]}-",
        auth_jwt_secret=key,
    )
    ensure_tables(create_dynamodb_client(settings), settings.table_prefix)
    return settings


@pytest.fixture
def levels(levels_settings: Settings) -> Iterator[tuple[int, HealthServicer]]:
    """A real Levels server, as tests/cluster.py starts one, with its health servicer at hand."""
    loop = ServerLoop.shared()
    health_servicer = HealthServicer()
    dynamodb = DynamoDBClient(levels_settings)
    server, port = loop.run(levels_server.create_server("127.0.0.1:0", levels_settings, dynamodb, health_servicer))
    loop.run(server.start())
    try:
        yield port, health_servicer
    finally:
        loop.run(server.stop(grace=None))
        loop.run(dynamodb.close())


def test_health_probe_passes_a_serving_server(levels: tuple[int, HealthServicer], compose: dict[str, Any]) -> None:
    port, _ = levels
    for service in ([], ["rewards.v1.LevelsService"]):
        probed = run_probe(f"127.0.0.1:{port}", *service)
        assert probed.returncode == 0, probed.stderr
        assert "SERVING" in probed.stdout
    # The compose file's own check, pointed at this server's port.
    argv = services(compose)["levels"]["healthcheck"]["test"][1:]
    assert argv[0] == "python" and argv[3] == f"127.0.0.1:{grpc_port('levels')}"
    checked = subprocess.run(
        [sys.executable, *argv[1:3], f"127.0.0.1:{port}", *argv[4:]],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr


def test_health_probe_fails_an_unknown_service_and_a_draining_server(levels: tuple[int, HealthServicer]) -> None:
    port, health_servicer = levels
    unknown = run_probe(f"127.0.0.1:{port}", "rewards.v1.NoSuchService")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    # What SIGTERM does first: the server still answers, but NOT_SERVING.
    ServerLoop.shared().run(health_servicer.enter_graceful_shutdown())
    for service in ([], ["rewards.v1.LevelsService"]):
        draining = run_probe(f"127.0.0.1:{port}", *service)
        assert draining.returncode == 1 and "NOT_SERVING" in draining.stderr, draining.stderr


def test_health_probe_fails_a_closed_port() -> None:
    probed = run_probe(f"127.0.0.1:{free_port()}")
    assert probed.returncode == 1 and "UNAVAILABLE" in probed.stderr, probed.stderr


def test_health_probe_gives_up_at_its_deadline_on_a_silent_peer() -> None:
    with socket.socket() as silent:  # accepts connections, never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        probed = run_probe(f"127.0.0.1:{silent.getsockname()[1]}", "--deadline", "0.5")
        elapsed = time.monotonic() - started
    assert probed.returncode == 1 and "DEADLINE_EXCEEDED" in probed.stderr, probed.stderr
    assert elapsed < 10


@pytest.fixture(scope="module")
def gateway_port(compose: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real gateway process, started with the compose file's environment for
    it and nothing of this host's (no key, no DynamoDB), on a free port."""
    port = free_port()
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    env = {
        "PATH": os.environ.get("PATH", ""),
        **environment(services(compose)[GATEWAY]),
        ENVIRONMENT_VARIABLES["gateway_host"]: "127.0.0.1",
        ENVIRONMENT_VARIABLES["gateway_port"]: str(port),
    }
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", SERVERS[GATEWAY]], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        assert wait_http_healthy(f"http://127.0.0.1:{port}", process), f"the gateway did not start:\n{log.read_text()}"
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_gateway_healthcheck_passes_a_serving_gateway_and_fails_a_closed_port(
    compose: dict[str, Any], gateway_port: int
) -> None:
    for port, passes in ((gateway_port, True), (free_port(), False)):
        checked = subprocess.run(
            gateway_check_argv(compose, port), cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
        )
        assert (checked.returncode == 0) is passes, f"port {port}: {checked.stderr}"


def dynamodb_check_script(compose: dict[str, Any], port: int) -> str:
    """The CMD-SHELL line, for `sh -c` as the container runs it, pointed at `port`."""
    script = unescaped(services(compose)["dynamodb"]["healthcheck"]["test"])[1]
    return script.replace(f"/dev/tcp/127.0.0.1/{DYNAMODB_PORT}", f"/dev/tcp/127.0.0.1/{port}")


def test_dynamodb_healthcheck_passes_a_serving_dynamodb_local(compose: dict[str, Any], dynamodb_endpoint: str) -> None:
    port = urlsplit(dynamodb_endpoint).port
    assert port is not None
    checked = subprocess.run(
        ["sh", "-c", dynamodb_check_script(compose, port)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr
    closed = subprocess.run(
        ["sh", "-c", dynamodb_check_script(compose, free_port())], capture_output=True, text=True, timeout=30
    )
    assert closed.returncode != 0
