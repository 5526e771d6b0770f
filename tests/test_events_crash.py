"""SIGKILL of the events service (a real process, `python -m events_service`)
in the middle of a concurrent run: a watcher that reconnects with its cursor
still sees every change exactly once, and a webhook still receives every
event (a delivery cut by the kill may come again, with the same id)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common.caller_auth import Role
from common.config import Settings
from common.dynamodb import create_dynamodb_client
from rewards.v1 import achievements_pb2_grpc, events_pb2, events_pb2_grpc, levels_pb2, levels_pb2_grpc, xp_pb2_grpc
from tests.cluster import STANDARD_LEVELS, authorized_channel, unique
from tests.events_support import Receiver, Watcher, expected_events, play, put_catalog, signature_is_valid, wait_for
from tests.process_cluster import start_process_cluster
from tests.test_crash_faults import restart_after_sigkill

SECRET = "crash-" + "0123456789" * 3


class ProcessStubs:
    """The stubs and table access events_support's helpers use, on a process cluster."""

    def __init__(self, ports: dict[str, int], dynamodb_endpoint: str, table_prefix: str) -> None:
        def channel(name: str) -> Any:
            return authorized_channel(f"localhost:{ports[name]}", Role.ADMIN)

        self.xp = xp_pb2_grpc.XpServiceStub(channel("xp"))
        self.achievements = achievements_pb2_grpc.AchievementsServiceStub(channel("achievements"))
        self.levels = levels_pb2_grpc.LevelsServiceStub(channel("levels"))
        self.events = events_pb2_grpc.EventsServiceStub(channel("events"))
        self.dynamodb = create_dynamodb_client(Settings(dynamodb_endpoint=dynamodb_endpoint, table_prefix=table_prefix))
        self._prefix = table_prefix

    def table(self, name: str) -> str:
        return self._prefix + name


def test_sigkill_of_the_events_service_mid_run_loses_no_event(dynamodb_endpoint: str, tmp_path: Path) -> None:
    prefix = f"proc-{unique('events')}-"
    cluster = start_process_cluster(
        dynamodb_endpoint,
        tmp_path,
        metrics=False,
        extra_env={
            "REWARDS_TABLE_PREFIX": prefix,
            "REWARDS_LEVEL_CHECK_TIMEOUT_S": "10",
            "REWARDS_EVENTS_POLL_S": "0.1",
            "REWARDS_WEBHOOK_FIRST_RETRY_S": "0.2",
            # Another process takes over the streams for webhooks within this after the kill.
            "REWARDS_WEBHOOK_LEASE_S": "2",
        },
    )
    receiver = Receiver()
    url = receiver.start()
    try:
        stubs = ProcessStubs(cluster.ports, dynamodb_endpoint, prefix)
        for level in STANDARD_LEVELS:
            stubs.levels.PutLevel(levels_pb2.PutLevelRequest(level=level))
        ids = put_catalog(stubs)  # type: ignore[arg-type]
        stubs.events.PutWebhook(
            events_pb2.PutWebhookRequest(webhook=events_pb2.Webhook(webhook_id="crash", url=url, secret=SECRET))
        )
        watcher = Watcher(stubs.events, events_pb2.WatchEventsRequest())
        watcher.start(reconnect_every=25)
        users = [unique("crash") for _ in range(12)]
        played: list[str] = []

        def load() -> None:
            with ThreadPoolExecutor(4) as pool:
                for user in pool.map(lambda user: (play(stubs, ids, user), user)[1], users):  # type: ignore[arg-type]
                    played.append(user)

        loading = threading.Thread(target=load)
        loading.start()
        wait_for(lambda: len(watcher.responses) >= 20 and len(receiver.delivered()) >= 10)
        down_s = restart_after_sigkill(cluster, "events", 1.0)
        loading.join(timeout=120)
        assert len(played) == len(users)
        expected = expected_events(stubs, users)  # type: ignore[arg-type]
        mine = set(users)
        wait_for(lambda: set(expected) <= {k for k in watcher.keys() if k[0] in mine}, timeout_s=60)
        keys = {f"{user}/{event_id}" for user, event_id in expected}
        wait_for(lambda: keys <= set(receiver.delivered()), timeout_s=60)
        time.sleep(1.0)
        watcher.stop()
    finally:
        receiver.stop()
        cluster.stop()
    assert watcher.failures >= 1 and down_s > 1.0  # it was cut off, and came back
    assert Counter({k: n for k, n in watcher.keys().items() if k[0] in mine}) == expected
    requests = [r for r in receiver.snapshot() if r.delivery_id.split("/")[0] in mine]
    assert {r.delivery_id for r in requests} == keys  # every event, and nothing else
    assert all(signature_is_valid(SECRET, r.signature, r.body) for r in requests)
    repeats = sum(receiver.delivered()[key] - 1 for key in keys)
    print(f"{len(keys)} events, {repeats} delivered again, watcher reconnects {watcher.reconnects}")
    assert repeats <= len(keys) // 2, repeats  # only deliveries the kill cut come again
