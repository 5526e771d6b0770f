"""Podman as the container engine that runs docker-compose.yml on machines with
no Docker engine and no Docker Hub (`make compose-test`).

- Base images: local stand-ins of the two the compose file and the Dockerfile
  name (python:3.11-slim, amazon/dynamodb-local), built from Debian packages
  only (containers/*.Containerfile) on a `debootstrap --variant=minbase
  bookworm` root file system, and stored under those names so that nothing is
  pulled and neither file changes.
- The project's image from the real Dockerfile, under the name the compose
  file gives it.
- Podman's Docker API socket (`podman system service`), which Debian's
  docker-compose 1.29 drives as it would drive Docker.
- Health checks: podman runs them from systemd timers, and these machines have
  no systemd, so HealthCheckDriver runs each container's own check
  (`podman healthcheck run`) at its interval, as the timer would.

The engine settings these machines need (runc, cgroupfs, explicit ulimits)
are in containers/containers.conf, passed as CONTAINERS_CONF.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from devcluster.dynamodb_local import REPO_ROOT

CONTAINERS_DIR = REPO_ROOT / "containers"
CONTAINERS_CONF = CONTAINERS_DIR / "containers.conf"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DYNAMODB_LOCAL_DIR = REPO_ROOT / ".local" / "dynamodb"
# The host's CA bundle, for pip inside image builds (PyPI may be reached through a proxy of the machine's own).
HOST_CA_BUNDLE = Path(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"))

DEBIAN_SUITE = "bookworm"
# The minbase root file system every stand-in starts FROM (containers/*.Containerfile).
DEBIAN_BASE_IMAGE = "localhost/rewards-stand-in/debian:bookworm-minbase"
# The names the Dockerfile's FROM and the compose file's `image:` use, fully qualified as
# podman stores them (a short name such as python:3.11-slim means docker.io/library/...).
PYTHON_IMAGE = "docker.io/library/python:3.11-slim"
DYNAMODB_LOCAL_IMAGE = "docker.io/amazon/dynamodb-local:2.6.1"
# podman stores an image built as rewards:local as localhost/rewards:local, and finds it there by that name.
PROJECT_IMAGE = "localhost/rewards:local"


@dataclass(frozen=True)
class StandIn:
    image: str
    containerfile: Path


STAND_INS = (
    StandIn(PYTHON_IMAGE, CONTAINERS_DIR / "python-3.11-slim.Containerfile"),
    StandIn(DYNAMODB_LOCAL_IMAGE, CONTAINERS_DIR / "dynamodb-local.Containerfile"),
)


def engine_environment() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], env=engine_environment(), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(
            f"podman {' '.join(args)}: exit {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
        )
    return done


def image_exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def image_size_bytes(image: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


def ensure_debian_base_image() -> bool:
    """Imports a minbase bookworm root file system as DEBIAN_BASE_IMAGE unless
    it is there already. Returns whether it had to."""
    if image_exists(DEBIAN_BASE_IMAGE):
        return False
    with tempfile.TemporaryDirectory(prefix="rewards-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            # debootstrap's default mirror: Debian's own.
            ["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs)],
            check=True,
            capture_output=True,
            timeout=900,
        )
        # The downloaded packages and lists are not part of an image (as in Docker's debian images).
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["podman", "import", "--quiet", "-", DEBIAN_BASE_IMAGE],
            stdin=tar.stdout,
            env=engine_environment(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise RuntimeError(f"podman import of the {DEBIAN_SUITE} root file system failed: {imported.stderr}")
    return True


def dynamodb_local_version() -> str:
    """The version of the npm-fetched DynamoDB Local (`-version` prints it)."""
    done = subprocess.run(
        ["java", "-jar", "DynamoDBLocal.jar", "-version"],
        cwd=DYNAMODB_LOCAL_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def build_stand_ins() -> None:
    """The stand-in base images, from Debian packages only; podman's layer
    cache makes a rebuild with unchanged inputs take a few seconds."""
    for stand_in in STAND_INS:
        with tempfile.TemporaryDirectory(prefix="rewards-stand-in-") as context:
            build_args: list[str] = []
            if stand_in.image == PYTHON_IMAGE:
                shutil.copyfile(HOST_CA_BUNDLE, Path(context) / "build-host-ca.crt")
            else:
                shutil.copytree(
                    DYNAMODB_LOCAL_DIR,
                    Path(context) / "dynamodb",
                    ignore=shutil.ignore_patterns("*.db", "*.log"),
                )
                build_args = ["--build-arg", f"DYNAMODB_LOCAL_VERSION={dynamodb_local_version()}"]
            podman("build", "--quiet", *build_args, "-f", str(stand_in.containerfile), "-t", stand_in.image, context)


def build_project_image(*, no_cache: bool = False) -> float:
    """`podman build` of the real Dockerfile as PROJECT_IMAGE; returns the seconds it took."""
    started = time.monotonic()
    podman("build", "--quiet", *(["--no-cache"] if no_cache else []), "-t", PROJECT_IMAGE, str(REPO_ROOT))
    return time.monotonic() - started


@contextmanager
def docker_api_socket(directory: Path) -> Iterator[str]:
    """Podman's Docker-compatible API on a unix socket of its own, for
    docker-compose; yields the DOCKER_HOST value."""
    directory.mkdir(parents=True, exist_ok=True)
    socket_path = directory / "podman.sock"
    socket_path.unlink(missing_ok=True)
    with open(directory / "podman-service.log", "ab") as log:
        service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{socket_path}"],
            env=engine_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(200):
            if socket_path.exists():
                break
            if service.poll() is not None:
                raise RuntimeError(f"podman system service exited {service.returncode}; see {directory}")
            time.sleep(0.05)
        else:
            raise RuntimeError("podman system service did not open its socket in 10 s")
        yield f"unix://{socket_path}"
    finally:
        service.terminate()
        try:
            service.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


@dataclass
class ContainerState:
    name: str
    service: str
    status: str  # running, exited, ...
    health: str  # starting, healthy, unhealthy, or "" without a check
    pid: int
    restarts: int
    started_at: str
    image: str  # the name it was created from
    healthcheck: list[str]  # the check's test as the engine keeps it, such as ["CMD", "python", ...]


class ComposeProject:
    """docker-compose (Debian's 1.29) on podman's Docker API, for one project name."""

    def __init__(self, name: str, docker_host: str, compose_file: Path = COMPOSE_FILE) -> None:
        self.name = name
        self.compose_file = compose_file
        self.env = {**engine_environment(), "DOCKER_HOST": docker_host}

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["docker-compose", "--ansi", "never", "-p", self.name, "-f", str(self.compose_file), *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"docker-compose {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def label_filter(self) -> str:
        return f"label=com.docker.compose.project={self.name}"

    def container_ids(self, *, all_states: bool = False) -> list[str]:
        listed = podman("ps", *(["-a"] if all_states else []), "-q", "--filter", self.label_filter())
        return listed.stdout.split()

    def containers(self) -> dict[str, ContainerState]:
        """Every container of the project, by compose service name (one-off `run` containers left out)."""
        ids = self.container_ids(all_states=True)
        if not ids:
            return {}
        states = {}
        for info in json.loads(podman("inspect", *ids).stdout):
            labels = info["Config"]["Labels"] or {}
            if labels.get("com.docker.compose.oneoff") == "True":
                continue
            state = info["State"]
            states[labels["com.docker.compose.service"]] = ContainerState(
                name=info["Name"],
                service=labels["com.docker.compose.service"],
                status=state["Status"],
                health=(state.get("Health") or state.get("Healthcheck") or {}).get("Status", ""),
                pid=state["Pid"],
                restarts=info.get("RestartCount", 0),
                started_at=state["StartedAt"],
                image=info.get("ImageName", ""),
                healthcheck=((info["Config"].get("Healthcheck") or {}).get("Test") or []),
            )
        return states

    def networks(self) -> list[str]:
        names = podman("network", "ls", "--format", "{{.Name}}").stdout.split()
        return [n for n in names if n.startswith(f"{self.name}_")]

    def volumes(self) -> list[str]:
        return podman("volume", "ls", "-q", "--filter", self.label_filter()).stdout.split()


@dataclass
class HealthCheckDriver:
    """Runs the health check of each running container of a project at the
    container's own interval, first one interval after it started, as podman's
    systemd timer would (`podman healthcheck run` records the result, counts
    retries and honours the start period). A thread; stop() ends it."""

    project: ComposeProject
    runs: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _due: dict[str, float] = field(default_factory=dict)  # container id + start -> monotonic time
    _intervals: dict[str, float] = field(default_factory=dict)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health-check-driver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _interval_s(self, container_id: str) -> float:
        if container_id not in self._intervals:
            inspected = json.loads(podman("inspect", container_id, check=False).stdout or "[{}]")[0]
            check = (inspected.get("Config") or {}).get("Healthcheck") or {}
            nanoseconds = check.get("Interval") or 0
            self._intervals[container_id] = nanoseconds / 1e9 if check.get("Test") else 0.0
        return self._intervals[container_id]

    def _run(self) -> None:
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="health-check") as pool:
            while not self._stop.wait(0.25):
                listed = podman(
                    "ps", "--format", "{{.ID}} {{.StartedAt}}", "--filter", self.project.label_filter(), check=False
                )
                now = time.monotonic()
                for line in listed.stdout.splitlines():
                    container_id, _, started = line.partition(" ")
                    interval = self._interval_s(container_id)
                    if not interval:
                        continue
                    key = f"{container_id} {started}"  # a restarted container starts its timer again
                    due = self._due.setdefault(key, now + interval)
                    if now >= due:
                        self._due[key] = now + interval
                        self.runs += 1
                        pool.submit(podman, "healthcheck", "run", container_id, timeout=60, check=False)


def resident_memory_kib(pid: int) -> int:
    """VmRSS of a container's main process, read from the host."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_until(condition_name: str, check: Callable[[], bool], timeout_s: float, pause_s: float = 0.5) -> float:
    """Calls `check()` until it returns true; returns the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{condition_name}: not within {timeout_s:.0f} s")
        time.sleep(pause_s)
    return time.monotonic() - started
