"""`python -m devcluster up|observe|down|status`: the local cluster as background processes.

DynamoDB Local, the four services, then the HTTP/JSON gateway in front of the
three it calls (the events service is reached directly, over gRPC).
DynamoDB Local keeps its data in .local/dynamodb-data; logs go to .local/logs/,
rotated by `up` (devcluster.log_files). Each process's pid file in .local/run
records its start time and command line too (devcluster.pid_files): a pid that
now names another process is never signalled.
Auth is on: the key and dev tokens (game, admin) are in .local/dev-auth.env.
`observe` adds a local Prometheus (devcluster.prometheus) scraping the four
services' metrics ports with the alert rules loaded; its data is in
.local/prometheus/, and `down` stops it first.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from common.caller_auth import TokenAuthority
from common.config import Settings
from devcluster.dynamodb_local import (
    LOCAL_CREDENTIALS,
    REPO_ROOT,
    dynamodb_local_command,
    port_open,
    start_dynamodb_local,
)
from devcluster.log_files import LOG_BACKUPS, LOG_MAX_BYTES, open_log, rotate_log
from devcluster.pid_files import ProcessIdentity, read_pid_file, still_running, write_pid_file
from devcluster.prometheus import (
    ALERTS_FILE,
    awards_per_second,
    graph_url,
    metrics_targets,
    prometheus_command,
    prometheus_config,
    start_prometheus,
    wait_prometheus_ready,
)
from devcluster.readiness import wait_grpc_serving, wait_http_healthy
from rewardsctl.tokens import dev_tokens_env, new_secret

RUN_DIR = REPO_ROOT / ".local" / "run"
LOG_DIR = REPO_ROOT / ".local" / "logs"
DEV_AUTH_FILE = REPO_ROOT / ".local" / "dev-auth.env"
DYNAMODB_PORT = int(os.environ.get("REWARDS_DYNAMODB_LOCAL_PORT", "8000"))
DYNAMODB_DATA = REPO_ROOT / ".local" / "dynamodb-data"
# (process name, module), in start order: each service's dependencies first. The events service
# calls no other: it reads the tables' streams, so it comes last.
SERVICES = [
    ("levels", "levels_service"),
    ("xp", "xp_service"),
    ("achievements", "achievements_service"),
    ("events", "events_service"),
]
# What one service gets on top of the cluster's environment, for local development (unless the
# environment sets it): the events service reads the streams more often than its default (0.25 s),
# and takes http:// webhooks (a receiver on this machine, with no certificate).
SERVICE_ENV: dict[str, dict[str, str]] = {
    "events": {"REWARDS_EVENTS_POLL_S": "0.1", "REWARDS_WEBHOOKS_ALLOW_HTTP": "true"},
}
# The HTTP/JSON gateway (python -m gateway): started after the services it calls, stopped first.
GATEWAY = "gateway"
# The local Prometheus of `observe`: optional, so `status` does not fail while it is stopped.
PROMETHEUS = "prometheus"
PROMETHEUS_PORT = int(os.environ.get("REWARDS_PROMETHEUS_PORT", "9090"))
PROMETHEUS_DIR = REPO_ROOT / ".local" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
PROMETHEUS_DATA = PROMETHEUS_DIR / "data"
# How long `down` waits for a process to exit after SIGTERM (a service drains in-flight calls first).
STOP_TIMEOUT_S = 10.0


def _ports(name: str) -> tuple[int, int]:
    """The gRPC and metrics ports the service will use, from the configuration."""
    settings = Settings.from_env(cluster_env())
    listen: str = getattr(settings, f"{name}_listen")
    return int(listen.rsplit(":", 1)[1]), int(getattr(settings, f"{name}_metrics_port"))


def _gateway_port() -> int:
    return Settings.from_env(cluster_env()).gateway_port


def _command(name: str) -> list[str]:
    """The command line devcluster starts `name` with."""
    if name == "dynamodb":
        return dynamodb_local_command(DYNAMODB_PORT, DYNAMODB_DATA)
    if name == PROMETHEUS:
        return prometheus_command(PROMETHEUS_CONFIG, PROMETHEUS_DATA, PROMETHEUS_PORT)
    module = dict(SERVICES).get(name, name)  # the gateway's module is its name
    return [sys.executable, "-m", module]


def _running(name: str) -> ProcessIdentity | None:
    """The process devcluster started as `name`, if that very process still runs."""
    return read_pid_file(RUN_DIR / f"{name}.pid", _command(name))


def _pid(name: str) -> int | None:
    running = _running(name)
    return running.pid if running else None


def _spawn(name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        _command(name),
        cwd=REPO_ROOT,
        env=env,
        stdout=open_log(LOG_DIR / f"{name}.log"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    write_pid_file(RUN_DIR / f"{name}.pid", process.pid, _command(name))
    return process


def _dev_secret() -> str:
    """The key the local cluster signs tokens with: the environment's, else the
    one kept in .local/dev-auth.env (so tokens survive a restart), else new."""
    if os.environ.get("REWARDS_AUTH_JWT_SECRET"):
        return os.environ["REWARDS_AUTH_JWT_SECRET"]
    if DEV_AUTH_FILE.exists():
        for line in DEV_AUTH_FILE.read_text().splitlines():
            if line.startswith("export REWARDS_AUTH_JWT_SECRET="):
                return line.split("=", 1)[1].strip()
    return new_secret()


def write_dev_tokens(secret: str) -> None:
    """Fresh game and admin tokens (30 days) for the key, readable by this user only."""
    DEV_AUTH_FILE.parent.mkdir(parents=True, exist_ok=True)
    DEV_AUTH_FILE.touch(mode=0o600)
    DEV_AUTH_FILE.write_text(dev_tokens_env(TokenAuthority(secret), secret))


def service_env(name: str, env: dict[str, str]) -> dict[str, str]:
    """The environment devcluster starts `name` with: the cluster's, and the service's own settings."""
    own = dict(env)
    for key, value in SERVICE_ENV.get(name, {}).items():
        own.setdefault(key, value)
    return own


def cluster_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("REWARDS_AUTH_JWT_SECRET", _dev_secret())
    env.setdefault("REWARDS_DYNAMODB_ENDPOINT", f"http://localhost:{DYNAMODB_PORT}")
    env.setdefault("AWS_REGION", "us-east-1")
    for key, value in LOCAL_CREDENTIALS.items():
        env.setdefault(key, value)
    return env


def up() -> int:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    env = cluster_env()
    write_dev_tokens(env["REWARDS_AUTH_JWT_SECRET"])
    for name in ["dynamodb", *(s[0] for s in SERVICES), GATEWAY]:
        if rotate_log(LOG_DIR / f"{name}.log"):
            print(f"rotated {LOG_DIR / name}.log (over {LOG_MAX_BYTES // 2**20} MiB; the last {LOG_BACKUPS} kept)")
    if _pid("dynamodb") is None:
        if port_open("127.0.0.1", DYNAMODB_PORT):
            print(f"port {DYNAMODB_PORT} is taken by another program; set REWARDS_DYNAMODB_LOCAL_PORT", file=sys.stderr)
            return 1
        process = start_dynamodb_local(
            DYNAMODB_PORT, open_log(LOG_DIR / "dynamodb.log"), DYNAMODB_DATA, start_new_session=True
        )
        write_pid_file(RUN_DIR / "dynamodb.pid", process.pid, _command("dynamodb"))
    for name, _ in SERVICES:
        port = _ports(name)[0]
        if _pid(name) is None:
            if port_open("127.0.0.1", port):
                print(f"port {port} ({name}) is taken by another program", file=sys.stderr)
                return 1
            _spawn(name, service_env(name, env))
        if not wait_grpc_serving(port):
            print(f"{name} did not become healthy; see {LOG_DIR / (name + '.log')}", file=sys.stderr)
            return 1
    # The HTTP/JSON gateway last: it calls XP, Achievements and Levels.
    port = _gateway_port()
    gateway = None
    if _pid(GATEWAY) is None:
        if port_open("127.0.0.1", port):
            print(f"port {port} ({GATEWAY}) is taken by another program; set REWARDS_GATEWAY_PORT", file=sys.stderr)
            return 1
        gateway = _spawn(GATEWAY, env)
    if not wait_http_healthy(f"http://localhost:{port}", gateway):
        print(f"{GATEWAY} did not become healthy; see {LOG_DIR / (GATEWAY + '.log')}", file=sys.stderr)
        return 1
    return status()


def _prometheus_url() -> str:
    return f"http://localhost:{PROMETHEUS_PORT}"


def observe() -> int:
    """A local Prometheus scraping the cluster's metrics ports (started by `up`, see the Makefile),
    with deploy/prometheus/alerts.yml loaded. A running one reads the configuration again."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    PROMETHEUS_DIR.mkdir(parents=True, exist_ok=True)
    targets = metrics_targets(Settings.from_env(cluster_env()))
    PROMETHEUS_CONFIG.write_text(prometheus_config(targets, [str(ALERTS_FILE)]))
    log = LOG_DIR / f"{PROMETHEUS}.log"
    if rotate_log(log):
        print(f"rotated {log} (over {LOG_MAX_BYTES // 2**20} MiB; the last {LOG_BACKUPS} kept)")
    running = _running(PROMETHEUS)
    process = None
    if running is not None:
        os.kill(running.pid, signal.SIGHUP)  # Prometheus reloads its configuration and rules on SIGHUP
    else:
        if port_open("127.0.0.1", PROMETHEUS_PORT):
            print(
                f"port {PROMETHEUS_PORT} ({PROMETHEUS}) is taken by another program; set REWARDS_PROMETHEUS_PORT",
                file=sys.stderr,
            )
            return 1
        try:
            process = start_prometheus(
                PROMETHEUS_CONFIG,
                PROMETHEUS_DATA,
                PROMETHEUS_PORT,
                open_log(log),
                cwd=REPO_ROOT,
                start_new_session=True,
            )
        except FileNotFoundError as error:
            print(error, file=sys.stderr)
            return 1
        write_pid_file(RUN_DIR / f"{PROMETHEUS}.pid", process.pid, _command(PROMETHEUS))
    if not wait_prometheus_ready(_prometheus_url(), process):
        print(f"{PROMETHEUS} did not become ready; see {log}", file=sys.stderr)
        return 1
    print(f"prometheus: {_prometheus_url()}  (alerts: {_prometheus_url()}/classic/alerts)")
    print(f"awards per second: {graph_url(_prometheus_url(), awards_per_second())}")
    return 0


def down() -> int:
    left_running = []
    for name in [PROMETHEUS, GATEWAY] + [s[0] for s in reversed(SERVICES)] + ["dynamodb"]:
        process = _running(name)  # a stale pid file is removed here, unsignalled
        if process is None:
            continue
        os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while still_running(process) and time.monotonic() < deadline:
            time.sleep(0.1)
        if still_running(process):
            print(
                f"{name} (pid {process.pid}) did not stop within {STOP_TIMEOUT_S:.0f} s; its pid file is kept",
                file=sys.stderr,
            )
            left_running.append(name)
            continue
        print(f"stopped {name} (pid {process.pid})")
        (RUN_DIR / f"{name}.pid").unlink(missing_ok=True)
    return 1 if left_running else 0


def status() -> int:
    rows = [("dynamodb-local", f"http://localhost:{DYNAMODB_PORT}", _pid("dynamodb"))]
    for name, module in SERVICES:
        port, metrics = _ports(name)
        rows.append((f"{name} ({module})", f"localhost:{port}  metrics :{metrics}", _pid(name)))
    rows.append((GATEWAY, f"http://localhost:{_gateway_port()}", _pid(GATEWAY)))
    observing = _pid(PROMETHEUS)
    print("rewards local cluster:")
    for label, address, pid in rows:
        print(f"  {label:38} {address:32} {'running, pid ' + str(pid) if pid else 'stopped'}")
    state = f"running, pid {observing}" if observing else "stopped"
    print(f"  {PROMETHEUS + ' (make observe)':38} {_prometheus_url():32} {state}")
    print(f"logs: {LOG_DIR}")
    print(
        f"dev tokens (auth is on): . {DEV_AUTH_FILE.relative_to(REPO_ROOT)}  "
        "# exports REWARDS_GAME_TOKEN, REWARDS_ADMIN_TOKEN, REWARDS_TOKEN"
    )
    return 0 if all(pid for _, _, pid in rows) else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster")
    parser.add_argument("command", choices=["up", "observe", "down", "status"])
    return {"up": up, "observe": observe, "down": down, "status": status}[parser.parse_args().command]()


if __name__ == "__main__":
    sys.exit(main())
