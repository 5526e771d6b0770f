"""The compose cluster, as a user runs it: images built (stand-in bases from
Debian packages, the project's from the real Dockerfile), `docker-compose up`
of docker-compose.yml on podman, every health check healthy, the dev tokens
from the dev-tokens service and the sample catalog loaded; `down` at the end.
Only `make compose-test` collects this folder (REWARDS_COMPOSE_TEST=1); the
figures of a run go to .local/compose-test/figures.json."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import container_engine as engine
from devcluster.dynamodb_local import LOCAL_CREDENTIALS, REPO_ROOT

PROJECT_NAME = "rewards-compose-test"
WORK_DIR = REPO_ROOT / ".local" / "compose-test"
FIGURES_FILE = WORK_DIR / "figures.json"
# The file under test: docker-compose.yml, or another one (a broken copy, to see the run fail).
COMPOSE_FILE = Path(os.environ.get("REWARDS_COMPOSE_FILE", engine.COMPOSE_FILE))
SAMPLE_CATALOG = "catalog/sample-game.yaml"
# Every service's health checks pass within this time of `up` (DynamoDB Local's JVM starts first).
HEALTHY_TIMEOUT_S = 180


@dataclass
class ComposeCluster:
    project: engine.ComposeProject
    config: dict[str, Any]  # the compose file, as `docker-compose config` resolves it
    tokens: dict[str, str]  # what `docker-compose run --rm -T dev-tokens` prints as export lines
    driver: engine.HealthCheckDriver
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def servers(self) -> list[str]:
        """The long-running services: all but the one-shot dev-tokens."""
        return [name for name, spec in self.config["services"].items() if spec.get("restart") != "no"]

    def published_port(self, service: str, container_port: int) -> int:
        for published, target in port_mappings(self.config["services"][service]):
            if target == container_port:
                return published
        raise AssertionError(f"{service} publishes no port for {container_port}")

    def shell_env(self) -> dict[str, str]:
        """A user's shell after `eval "$(docker compose run --rm -T dev-tokens)"`, with .venv/bin on PATH."""
        return {**os.environ, **self.tokens, "PATH": f"{REPO_ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}

    def all_healthy(self) -> bool:
        states = self.project.containers()
        return all(
            name in states and states[name].status == "running" and states[name].health in ("healthy", "")
            for name in self.servers
        )


def port_mappings(service: dict[str, Any]) -> list[tuple[int, int]]:
    """(published, container) ports of `docker-compose config`'s "127.0.0.1:8000:8000/tcp"."""
    mappings = []
    for mapping in service.get("ports", []):
        published, target = mapping.split("/", 1)[0].split(":")[-2:]
        mappings.append((int(published), int(target)))
    return mappings


def published_ports(config: dict[str, Any]) -> list[int]:
    return [published for spec in config["services"].values() for published, _ in port_mappings(spec)]


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def dev_tokens(project: engine.ComposeProject) -> dict[str, str]:
    printed = project.compose("run", "--rm", "-T", "dev-tokens", timeout=120).stdout
    tokens = {}
    for line in printed.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            tokens[name] = shlex.split(value)[0]
    assert {"REWARDS_GAME_TOKEN", "REWARDS_ADMIN_TOKEN", "REWARDS_TOKEN"} <= set(tokens), printed
    return tokens


@pytest.fixture(scope="session")
def compose_cluster() -> Iterator[ComposeCluster]:
    for tool in ("podman", "docker-compose", "debootstrap"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: `make compose-test` installs it (scripts/compose_test.sh)")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    # rewardsctl verify reads DynamoDB Local at its published port, which takes any credentials.
    for key, value in LOCAL_CREDENTIALS.items():
        os.environ.setdefault(key, value)
    figures: dict[str, Any] = {"compose_file": str(COMPOSE_FILE)}

    started = time.monotonic()
    figures["debian_base_imported"] = engine.ensure_debian_base_image()
    engine.build_stand_ins()
    figures["stand_ins_s"] = round(time.monotonic() - started, 1)
    figures["project_image_build_s"] = round(engine.build_project_image(), 1)
    figures["image_sizes_mb"] = {
        image: round(engine.image_size_bytes(image) / 1e6)
        for image in (engine.PROJECT_IMAGE, engine.PYTHON_IMAGE, engine.DYNAMODB_LOCAL_IMAGE)
    }

    with engine.docker_api_socket(WORK_DIR) as docker_host:
        project = engine.ComposeProject(PROJECT_NAME, docker_host, COMPOSE_FILE)
        config = yaml.safe_load(project.compose("config").stdout)
        project.compose("down", "--volumes", "--remove-orphans", timeout=120)  # what a killed run left
        busy = [port for port in published_ports(config) if port_in_use(port)]
        if busy:
            pytest.fail(f"ports {busy} are taken (`make down` stops the process cluster, which uses the same ones)")
        driver = engine.HealthCheckDriver(project)
        driver.start()
        cluster = ComposeCluster(project, config, {}, driver, figures)
        try:
            up_at = time.monotonic()
            up = project.compose("up", "--detach", "--no-build", timeout=HEALTHY_TIMEOUT_S + 60, check=False)
            if up.returncode != 0:
                raise AssertionError(f"docker-compose up: exit {up.returncode}\n{up.stderr}\n{logs_of(project)}")
            try:
                engine.wait_until("every service healthy", cluster.all_healthy, HEALTHY_TIMEOUT_S)
            except TimeoutError as error:
                raise AssertionError(f"{error}: {project.containers()}\n{logs_of(project)}") from error
            figures["up_to_healthy_s"] = round(time.monotonic() - up_at, 1)
            cluster.tokens = dev_tokens(project)
            applied = subprocess.run(
                [str(REPO_ROOT / ".venv" / "bin" / "rewardsctl"), "catalog", "apply", "--if-empty", SAMPLE_CATALOG],
                cwd=REPO_ROOT,
                env=cluster.shell_env(),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert applied.returncode == 0, applied.stdout + applied.stderr
            yield cluster
        finally:
            driver.stop()
            project.compose("down", "--volumes", "--remove-orphans", timeout=120, check=False)
            FIGURES_FILE.write_text(json.dumps(figures, indent=2) + "\n")


def logs_of(project: engine.ComposeProject) -> str:
    return project.compose("logs", "--no-color", "--tail", "40", check=False).stdout[-8000:]
