"""`python -m devcluster up|down|status`: the local cluster as background processes.

DynamoDB Local, the three services, then the HTTP/JSON gateway in front of them.
DynamoDB Local keeps its data in .local/dynamodb-data; logs go to .local/logs/.
Auth is on: the key and dev tokens (game, admin) are in .local/dev-auth.env.
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
from devcluster.dynamodb_local import LOCAL_CREDENTIALS, REPO_ROOT, port_open, start_dynamodb_local
from devcluster.readiness import wait_grpc_serving, wait_http_healthy
from rewardsctl.tokens import dev_tokens_env, new_secret

RUN_DIR = REPO_ROOT / ".local" / "run"
LOG_DIR = REPO_ROOT / ".local" / "logs"
DEV_AUTH_FILE = REPO_ROOT / ".local" / "dev-auth.env"
DYNAMODB_PORT = int(os.environ.get("REWARDS_DYNAMODB_LOCAL_PORT", "8000"))
# (process name, module), in start order: each service's dependencies first.
SERVICES = [("levels", "levels_service"), ("xp", "xp_service"), ("achievements", "achievements_service")]
# The HTTP/JSON gateway (python -m gateway): started after the services it calls, stopped first.
GATEWAY = "gateway"


def _ports(name: str) -> tuple[int, int]:
    """The gRPC and metrics ports the service will use, from the configuration."""
    settings = Settings.from_env(cluster_env())
    listen: str = getattr(settings, f"{name}_listen")
    return int(listen.rsplit(":", 1)[1]), int(getattr(settings, f"{name}_metrics_port"))


def _gateway_port() -> int:
    return Settings.from_env(cluster_env()).gateway_port


def _pid(name: str) -> int | None:
    path = RUN_DIR / f"{name}.pid"
    try:
        pid = int(path.read_text())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None


def _spawn(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(LOG_DIR / f"{name}.log", "ab")
    process = subprocess.Popen(
        args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    (RUN_DIR / f"{name}.pid").write_text(str(process.pid))
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
    if _pid("dynamodb") is None:
        if port_open("127.0.0.1", DYNAMODB_PORT):
            print(f"port {DYNAMODB_PORT} is taken by another program; set REWARDS_DYNAMODB_LOCAL_PORT", file=sys.stderr)
            return 1
        log = open(LOG_DIR / "dynamodb.log", "ab")
        process = start_dynamodb_local(
            DYNAMODB_PORT, log, REPO_ROOT / ".local" / "dynamodb-data", start_new_session=True
        )
        (RUN_DIR / "dynamodb.pid").write_text(str(process.pid))
    for name, module in SERVICES:
        port = _ports(name)[0]
        if _pid(name) is None:
            if port_open("127.0.0.1", port):
                print(f"port {port} ({name}) is taken by another program", file=sys.stderr)
                return 1
            _spawn(name, [sys.executable, "-m", module], env)
        if not wait_grpc_serving(port):
            print(f"{name} did not become healthy; see {LOG_DIR / (name + '.log')}", file=sys.stderr)
            return 1
    # The HTTP/JSON gateway last: it calls the three services.
    port = _gateway_port()
    gateway = None
    if _pid(GATEWAY) is None:
        if port_open("127.0.0.1", port):
            print(f"port {port} ({GATEWAY}) is taken by another program; set REWARDS_GATEWAY_PORT", file=sys.stderr)
            return 1
        gateway = _spawn(GATEWAY, [sys.executable, "-m", "gateway"], env)
    if not wait_http_healthy(f"http://localhost:{port}", gateway):
        print(f"{GATEWAY} did not become healthy; see {LOG_DIR / (GATEWAY + '.log')}", file=sys.stderr)
        return 1
    return status()


def down() -> int:
    for name in [GATEWAY] + [s[0] for s in reversed(SERVICES)] + ["dynamodb"]:
        pid = _pid(name)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if _pid(name) is None:
                    break
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                time.sleep(0.1)
            print(f"stopped {name} (pid {pid})")
        (RUN_DIR / f"{name}.pid").unlink(missing_ok=True)
    return 0


def status() -> int:
    rows = [("dynamodb-local", f"http://localhost:{DYNAMODB_PORT}", _pid("dynamodb"))]
    for name, module in SERVICES:
        port, metrics = _ports(name)
        rows.append((f"{name} ({module})", f"localhost:{port}  metrics :{metrics}", _pid(name)))
    rows.append((GATEWAY, f"http://localhost:{_gateway_port()}", _pid(GATEWAY)))
    print("rewards local cluster:")
    for label, address, pid in rows:
        print(f"  {label:38} {address:32} {'running, pid ' + str(pid) if pid else 'stopped'}")
    print(f"logs: {LOG_DIR}")
    print(
        f"dev tokens (auth is on): . {DEV_AUTH_FILE.relative_to(REPO_ROOT)}  "
        "# exports REWARDS_GAME_TOKEN, REWARDS_ADMIN_TOKEN, REWARDS_TOKEN"
    )
    return 0 if all(pid for _, _, pid in rows) else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster")
    parser.add_argument("command", choices=["up", "down", "status"])
    return {"up": up, "down": down, "status": status}[parser.parse_args().command]()


if __name__ == "__main__":
    sys.exit(main())
