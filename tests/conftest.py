"""Session fixtures: a real DynamoDB Local, real gRPC servers on real sockets."""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from common.rpc_logging import json_log_handler
from devcluster.dynamodb_local import LOCAL_CREDENTIALS, free_port, start_dynamodb_local
from tests.cluster import STANDARD_LEVELS, Cluster

# The compose cluster's tests build images and run docker-compose.yml on podman:
# `make compose-test` runs them (REWARDS_COMPOSE_TEST=1), `make test` does not.
collect_ignore = [] if os.environ.get("REWARDS_COMPOSE_TEST") == "1" else ["compose_cluster"]


def running_dynamodb_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    for key, value in LOCAL_CREDENTIALS.items():
        os.environ.setdefault(key, value)
    port = free_port()
    log_path = tmp_path_factory.mktemp("dynamodb") / "dynamodb-local.log"
    with open(log_path, "wb") as log:
        process = start_dynamodb_local(port, log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def dynamodb_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from running_dynamodb_local(tmp_path_factory)


@pytest.fixture
def own_dynamodb_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DynamoDB Local of the test's own, for a test that writes a lot: the
    session's one slows down as the suite fills it (the 300-player backup round
    trip takes about 30 s on a fresh one, over 160 s late in the suite)."""
    yield from running_dynamodb_local(tmp_path_factory)


@pytest.fixture(scope="session")
def cluster(dynamodb_endpoint: str) -> Iterator[Cluster]:
    """Shared by most tests: its level table is STANDARD_LEVELS and must not change."""
    shared = Cluster(dynamodb_endpoint)
    shared.put_levels(STANDARD_LEVELS)
    yield shared
    shared.close()


@pytest.fixture
def new_cluster(dynamodb_endpoint: str) -> Iterator[Callable[..., Cluster]]:
    """A cluster of its own (own tables), for tests that change the level table
    or stop servers."""
    made: list[Cluster] = []

    def make(**overrides: object) -> Cluster:
        made.append(Cluster(dynamodb_endpoint, **overrides))
        return made[-1]

    yield make
    for c in made:
        c.close()
        c.drop_tables()


@pytest.fixture
def user_id() -> str:
    return f"player-{uuid.uuid4().hex[:12]}"


LogLines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def json_log_lines() -> Iterator[LogLines]:
    """Everything logged during the test, as the servers write it (configure_logging's JSON lines)."""
    stream = io.StringIO()
    handler = json_log_handler("test", stream)
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
