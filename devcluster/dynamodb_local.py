"""Starts Amazon's DynamoDB Local (installed by scripts/install.sh) as a child process."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parent.parent
EMULATOR_DIR = REPO_ROOT / ".local" / "dynamodb"

# Any fixed pair works; DynamoDB Local checks only that credentials are present.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def dynamodb_local_command(port: int, db_path: Path | None = None) -> list[str]:
    """In memory unless db_path is given; -sharedDb so every client sees the
    same tables whatever its credentials and region."""
    args = [
        "java",
        f"-Djava.library.path={EMULATOR_DIR / 'DynamoDBLocal_lib'}",
        "-jar",
        str(EMULATOR_DIR / "DynamoDBLocal.jar"),
        "-sharedDb",
        "-port",
        str(port),
    ]
    return args + (["-inMemory"] if db_path is None else ["-dbPath", str(db_path)])


def start_dynamodb_local(
    port: int, log: IO[bytes], db_path: Path | None = None, **popen: object
) -> subprocess.Popen[bytes]:
    """DynamoDB Local (dynamodb_local_command), once it listens on `port`."""
    jar = EMULATOR_DIR / "DynamoDBLocal.jar"
    if not jar.exists():
        raise FileNotFoundError(f"{jar} is missing: run `make install` (scripts/install.sh) first")
    if db_path is not None:
        db_path.mkdir(parents=True, exist_ok=True)
    args = dynamodb_local_command(port, db_path)
    process = subprocess.Popen(args, cwd=EMULATOR_DIR, stdout=log, stderr=subprocess.STDOUT, **popen)  # type: ignore[call-overload]
    deadline = time.monotonic() + 60
    while not port_open("127.0.0.1", port):
        if process.poll() is not None:
            raise RuntimeError(f"DynamoDB Local exited with code {process.returncode}; see its log")
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError(f"DynamoDB Local did not listen on port {port} within 60 s")
        time.sleep(0.1)
    return process
