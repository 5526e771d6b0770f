"""What the events tests share: a real local HTTP receiver (records every
request, answers a delivery's first `fail_first` attempts with 503), a
watcher that reconnects with its cursor, the changes a test makes, and the
events the tables say those changes must make."""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

from rewards.v1 import achievements_pb2, events_pb2, events_pb2_grpc, xp_pb2
from tests.cluster import Cluster, unique


@dataclass
class Received:
    delivery_id: str
    signature: str
    body: bytes
    status: int  # what the receiver answered
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


def signature_is_valid(secret: str, header: str, body: bytes) -> bool:
    """What the README's receiver does: t and v1 from the header, HMAC-SHA256 of "t.body"."""
    parts = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - int(parts["t"])) < 300


@dataclass
class Receiver:
    """A webhook receiver on a local port: records every POST; answers 503 to each delivery's first
    `fail_first` attempts, or to every one while `always_fail`, else 200."""

    fail_first: int = 0
    always_fail: bool = False
    requests: list[Received] = field(default_factory=list)
    _attempts: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> str:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                delivery_id = self.headers.get("Rewards-Delivery-Id", "")
                with receiver._lock:
                    receiver._attempts[delivery_id] += 1
                    failing = receiver.always_fail or receiver._attempts[delivery_id] <= receiver.fail_first
                    status = 503 if failing else 200
                    receiver.requests.append(
                        Received(
                            delivery_id,
                            self.headers.get("Rewards-Signature", ""),
                            body,
                            status,
                            dict(self.headers.items()),
                        )
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def delivered(self) -> Counter[str]:
        """Successful deliveries per delivery id ("<user_id>/<event_id>")."""
        with self._lock:
            return Counter(r.delivery_id for r in self.requests if r.status == 200)

    def posts(self, status: int) -> list[Received]:
        """The requests it answered with `status`."""
        with self._lock:
            return [r for r in self.requests if r.status == status]

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.requests)


def expected_events(cluster: Cluster, users: list[str]) -> Counter[tuple[str, str]]:
    """(user_id, event_id) of every change the tables recorded for `users`:
    ledger entries that moved XP (not capped ones), levels reached, unlocks."""
    expected: Counter[tuple[str, str]] = Counter()
    for user in users:
        key = {":u": {"S": user}}
        for table, event_id in (
            ("xp_ledger", lambda i: i["entry_id"]["S"] if "capped" not in i else None),
            ("level_rewards", lambda i: f"level#{i['level']['N']}"),
            ("user_achievements", lambda i: f"unlock#{i['achievement_id']['S']}"),
        ):
            items = cluster.dynamodb.query(
                TableName=cluster.table(table),
                KeyConditionExpression="user_id = :u",
                ExpressionAttributeValues=key,
                ConsistentRead=True,
            )["Items"]
            expected.update((user, e) for e in map(event_id, items) if e)
    return expected


class Watcher:
    """WatchEvents in a thread, reconnecting with its last cursor every
    `reconnect_every` events: keeps every response it got."""

    def __init__(self, stub: events_pb2_grpc.EventsServiceStub, request: events_pb2.WatchEventsRequest) -> None:
        self._stub = stub
        self._request = request
        self.responses: list[events_pb2.WatchEventsResponse] = []
        self.reconnects = 0
        self.failures = 0
        self._stop = threading.Event()
        self._live: queue.Queue[object] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self, reconnect_every: int = 0) -> None:
        self._thread = threading.Thread(target=self._run, args=(reconnect_every,), daemon=True)
        self._thread.start()
        live = self._live.get(timeout=30)
        if isinstance(live, Exception):
            raise live

    def _run(self, reconnect_every: int) -> None:
        cursor = self._request.cursor
        first = True
        while not self._stop.is_set():
            request = events_pb2.WatchEventsRequest()
            request.CopyFrom(self._request)
            request.cursor = cursor
            call = self._stub.WatchEvents(request)
            try:
                call.initial_metadata()  # sent once the watch is live
                if first:
                    self._live.put(True)
                    first = False
                seen = 0
                for response in call:
                    self.responses.append(response)
                    cursor = response.cursor
                    seen += 1
                    if self._stop.is_set() or (reconnect_every and seen >= reconnect_every):
                        break
            except grpc.RpcError as error:
                if first:
                    self._live.put(error)
                    return
                if error.code() == grpc.StatusCode.UNAVAILABLE:  # the service restarts: again, from the cursor
                    self.failures += 1
                    time.sleep(0.2)
                elif error.code() != grpc.StatusCode.CANCELLED:
                    raise
            finally:
                call.cancel()
            self.reconnects += 1

    def stop(self) -> None:
        self._stop.set()

    def keys(self) -> Counter[tuple[str, str]]:
        return Counter((r.event.user_id, r.event.event_id) for r in self.responses)


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def put_catalog(cluster: Cluster) -> dict[str, str]:
    ids = {"activity": unique("ev-run"), "capped": unique("ev-capped"), "achievement": unique("ev-ach")}
    cluster.xp.PutActivity(
        xp_pb2.PutActivityRequest(activity=xp_pb2.Activity(activity_id=ids["activity"], name="Run", xp=120))
    )
    cluster.xp.PutActivity(
        xp_pb2.PutActivityRequest(
            activity=xp_pb2.Activity(
                activity_id=ids["capped"], name="Daily", xp=5, cap=xp_pb2.Cap(max_awards=1, period=xp_pb2.PERIOD_DAY)
            )
        )
    )
    cluster.achievements.PutAchievement(
        achievements_pb2.PutAchievementRequest(
            achievement=achievements_pb2.Achievement(achievement_id=ids["achievement"], name="Evented", xp_reward=50)
        )
    )
    return ids


def play(cluster: Cluster, ids: dict[str, str], user: str) -> None:
    """Every kind of change, and some that are no change: a retried award, a capped award."""
    for i in range(4):
        cluster.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user, activity_id=ids["activity"], request_id=f"a{i}"))
    cluster.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user, activity_id=ids["activity"], request_id="a0"))  # a retry
    for i in range(2):  # the second is capped
        cluster.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user, activity_id=ids["capped"], request_id=f"c{i}"))
    cluster.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user, amount=30, reason="gift", request_id="g"))
    cluster.xp.AdjustXp(xp_pb2.AdjustXpRequest(user_id=user, delta=-10, reason="fix", request_id="adj"))
    cluster.xp.RevokeAward(xp_pb2.RevokeAwardRequest(user_id=user, request_id="a3", reason="cheat"))
    cluster.achievements.UnlockAchievement(
        achievements_pb2.UnlockAchievementRequest(user_id=user, achievement_id=ids["achievement"], request_id="u")
    )
