"""The load generator: worker processes (spawned once, reused by every case),
each running a few client threads, each thread with its own gRPC channel (the
service side) or its own boto3 client (the floor side). Threads call in a
closed loop: warm-up, then the measured window; each records the latency of
every call that completes inside the window (perf_counter) and the parent
merges them. A case whose transport is "http" runs its service side through
the HTTP gateway instead: each client thread keeps one HTTP/1.1 connection
(http.client, keep-alive) and sends the same calls as JSON.

Why several processes: a Python client spends CPU under its GIL on every call
(protobuf and gRPC's Python layer: ~0.1-0.2 ms a call; boto3 much more, about
0.5-1 ms a DynamoDB call, several calls an operation). One process holding
all clients would cap the load at what one GIL can issue, on the floor side
first, and the comparison would measure the generator. With at most
CLIENTS_PER_PROCESS clients a process, a process's clients together need well
under one core even at the floor's rate, so the processes are never the
limit: the machine's cores, shared with the services and DynamoDB Local, are.
Each case reports its busiest load process's CPU use (load_cpu_max, 1.0 = one
full core) to show it.
"""

from __future__ import annotations

import http.client
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.catalog import seeded_user

CLIENTS_PER_PROCESS = {"service": 4, "floor": 2}
CALL_TIMEOUT_S = 30.0

OPERATIONS = ("award_xp", "unlock_achievement", "check_level_up", "get_progress")


@dataclass(frozen=True)
class LoadSpec:
    """One side (service or floor) of one case, as every load process gets it."""

    case: str
    operation: str  # one of OPERATIONS
    side: str  # "service" or "floor"
    clients: int
    hot_user: bool
    namespace: str  # unique per case and side: users and request ids under it are new
    warmup_s: float
    duration_s: float
    targets: dict[str, str]
    token: str
    dynamodb_endpoint: str
    table_prefix: str
    activities: tuple[tuple[str, int], ...]
    achievements: tuple[str, ...]
    seed_users: int
    awards_per_user: int = 20
    transport: str = "grpc"  # the service side's: "grpc", or "http" through the gateway (targets["gateway"])


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    window_s: float = 0.0
    total_calls: int = 0  # every call issued, warm-up and errors included (for DynamoDB calls per op)
    errors: Counter[str] = field(default_factory=Counter)
    anomalies: Counter[str] = field(default_factory=Counter)
    dynamodb_calls: Counter[str] = field(default_factory=Counter)  # the floor's own, by operation
    cpu_fraction: list[float] = field(default_factory=list)  # per load process, over the window

    def merge(self, other: LoadResult) -> None:
        self.latencies_ms.extend(other.latencies_ms)
        self.window_s = max(self.window_s, other.window_s)
        self.total_calls += other.total_calls
        self.errors.update(other.errors)
        self.anomalies.update(other.anomalies)
        self.dynamodb_calls.update(other.dynamodb_calls)
        self.cpu_fraction.extend(other.cpu_fraction)


# --- what one client thread calls ------------------------------------------------

Call = Callable[[int], "str | None"]  # the i-th call of the thread; returns an anomaly or None


def hot_user_id(namespace: str) -> str:
    return f"{namespace}-hot"


def _user(spec: LoadSpec, thread: int, i: int, per_user: int) -> str:
    if spec.hot_user:
        return hot_user_id(spec.namespace)
    return f"{spec.namespace}-t{thread}-u{i // per_user}"


def _seeded_user(spec: LoadSpec, thread: int, i: int) -> str:
    return seeded_user(thread * 37 + i)


def _service_call(spec: LoadSpec, thread: int, channel: Any) -> Call:
    from rewards.v1 import achievements_pb2, achievements_pb2_grpc, levels_pb2, levels_pb2_grpc, xp_pb2, xp_pb2_grpc

    metadata = (("authorization", f"Bearer {spec.token}"),)
    if spec.operation == "award_xp":
        xp = xp_pb2_grpc.XpServiceStub(channel)

        def award(i: int) -> str | None:
            activity_id, _ = spec.activities[i % len(spec.activities)]
            response = xp.AwardXp(
                xp_pb2.AwardXpRequest(
                    user_id=_user(spec, thread, i, spec.awards_per_user),
                    activity_id=activity_id,
                    request_id=f"{spec.namespace}-t{thread}-r{i}",
                ),
                metadata=metadata,
                timeout=CALL_TIMEOUT_S,
            )
            if response.duplicate:
                return "duplicate"
            return "level_check_deferred" if response.level_check_deferred else None

        return award
    if spec.operation == "unlock_achievement":
        achievements = achievements_pb2_grpc.AchievementsServiceStub(channel)
        per_user = len(spec.achievements)

        def unlock(i: int) -> str | None:
            response = achievements.UnlockAchievement(
                achievements_pb2.UnlockAchievementRequest(
                    user_id=_user(spec, thread, i, per_user),
                    achievement_id=spec.achievements[i % per_user],
                    request_id=f"{spec.namespace}-t{thread}-r{i}",
                ),
                metadata=metadata,
                timeout=CALL_TIMEOUT_S,
            )
            return "already_unlocked" if response.already_unlocked else None

        return unlock
    if spec.operation == "check_level_up":
        levels = levels_pb2_grpc.LevelsServiceStub(channel)

        def check(i: int) -> str | None:
            response = levels.CheckLevelUp(
                levels_pb2.CheckLevelUpRequest(
                    user_id=_seeded_user(spec, thread, i), request_id=f"{spec.namespace}-t{thread}-r{i}"
                ),
                metadata=metadata,
                timeout=CALL_TIMEOUT_S,
            )
            return "leveled_up" if response.leveled_up else None

        return check
    if spec.operation == "get_progress":
        xp = xp_pb2_grpc.XpServiceStub(channel)

        def progress(i: int) -> str | None:
            response = xp.GetProgress(
                xp_pb2.GetProgressRequest(user_id=_seeded_user(spec, thread, i)),
                metadata=metadata,
                timeout=CALL_TIMEOUT_S,
            )
            return None if response.rewards else "no_rewards"

        return progress
    raise ValueError(spec.operation)


class HttpCallFailed(Exception):
    """A gateway call that did not answer 200; `error_name` is what the case's errors count."""

    def __init__(self, status: int, body: bytes) -> None:
        try:
            code = str(json.loads(body)["code"])
        except (ValueError, KeyError, TypeError):
            code = "?"
        super().__init__(f"HTTP {status} {code}")
        self.error_name = f"HTTP_{status}_{code}"


class KeepAliveConnection:
    """One HTTP/1.1 connection, reused call after call (reopened once if the
    server closed it while idle: the calls are idempotent)."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._connection = http.client.HTTPConnection(host, int(port), timeout=CALL_TIMEOUT_S)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                self._connection.request("POST", path, body=body, headers=headers)
                response = self._connection.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._connection.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._connection.close()


def _http_call(spec: LoadSpec, thread: int, connection: KeepAliveConnection) -> Call:
    if spec.operation != "award_xp":
        raise ValueError(f"{spec.operation} has no HTTP case")
    headers = {"Authorization": f"Bearer {spec.token}", "Content-Type": "application/json"}

    def award(i: int) -> str | None:
        activity_id, _ = spec.activities[i % len(spec.activities)]
        body = json.dumps({"user_id": _user(spec, thread, i, spec.awards_per_user), "activity_id": activity_id})
        status, answer = connection.post(
            "/xp/award", body.encode(), {**headers, "Idempotency-Key": f"{spec.namespace}-t{thread}-r{i}"}
        )
        if status != 200:
            raise HttpCallFailed(status, answer)
        response = json.loads(answer)
        if response["duplicate"]:
            return "duplicate"
        return "level_check_deferred" if response["level_check_deferred"] else None

    return award


def _service_target(spec: LoadSpec) -> str:
    return spec.targets[
        "achievements"
        if spec.operation == "unlock_achievement"
        else "levels"
        if spec.operation == "check_level_up"
        else "xp"
    ]


def _floor_call(spec: LoadSpec, thread: int, client: Any, tables: Any, cache: Any) -> Call:
    from bench import floor

    if spec.operation == "award_xp":

        def award(i: int) -> str | None:
            activity_id, _ = spec.activities[i % len(spec.activities)]
            floor.award_xp(
                client,
                tables,
                cache,
                _user(spec, thread, i, spec.awards_per_user),
                activity_id,
                f"{spec.namespace}-t{thread}-r{i}",
            )
            return None

        return award
    if spec.operation == "unlock_achievement":
        per_user = len(spec.achievements)

        def unlock(i: int) -> str | None:
            floor.unlock_achievement(
                client,
                tables,
                cache,
                _user(spec, thread, i, per_user),
                spec.achievements[i % per_user],
                f"{spec.namespace}-t{thread}-r{i}",
            )
            return None

        return unlock
    if spec.operation == "check_level_up":

        def check(i: int) -> str | None:
            floor.check_level(client, tables, cache, _seeded_user(spec, thread, i), f"{spec.namespace}-t{thread}-r{i}")
            return None

        return check
    if spec.operation == "get_progress":

        def progress(i: int) -> str | None:
            floor.get_progress(client, tables, _seeded_user(spec, thread, i))
            return None

        return progress
    raise ValueError(spec.operation)


# --- one load process ---------------------------------------------------------------


class _Client(threading.Thread):
    def __init__(self, call: Call, go: threading.Event, times: list[float]) -> None:
        super().__init__(daemon=True)
        self._call = call
        self._go = go
        self._times = times  # [start, measure_from, end], perf_counter, set before go
        self.result = LoadResult()

    def run(self) -> None:
        self._go.wait()
        start, measure_from, end = self._times
        time.sleep(max(0.0, start - time.perf_counter()))
        result, i = self.result, 0
        latencies = result.latencies_ms
        while True:
            began = time.perf_counter()
            if began >= end:
                break
            try:
                anomaly = self._call(i)
            except Exception as error:  # grpc.RpcError, ClientError, HttpCallFailed...
                code = getattr(error, "code", None)
                name = getattr(error, "error_name", None) or (
                    code().name if callable(code) else error.__class__.__name__
                )
                result.errors[name] += 1
            else:
                done = time.perf_counter()
                if measure_from <= done <= end:
                    latencies.append((done - began) * 1000)
                    if anomaly:
                        result.anomalies[anomaly] += 1
            i += 1
        result.total_calls = i


def _prepare(spec: LoadSpec, first_thread: int, threads: int) -> tuple[list[Call], list[Any], list[Any]]:
    """The threads' calls, with their channels or clients connected."""
    calls: list[Call] = []
    closers: list[Any] = []
    counters: list[Any] = []
    if spec.side == "service" and spec.transport == "http":
        for thread in range(first_thread, first_thread + threads):
            connection = KeepAliveConnection(spec.targets["gateway"])
            closers.append(connection)
            calls.append(_http_call(spec, thread, connection))
        return calls, closers, counters
    if spec.side == "service":
        import grpc

        from common.channels import CLIENT_CHANNEL_OPTIONS

        for thread in range(first_thread, first_thread + threads):
            channel = grpc.insecure_channel(_service_target(spec), options=CLIENT_CHANNEL_OPTIONS)
            grpc.channel_ready_future(channel).result(timeout=30)
            closers.append(channel)
            calls.append(_service_call(spec, thread, channel))
        return calls, closers, counters

    from bench import floor
    from common.config import Settings
    from common.dynamodb import create_dynamodb_client

    global _floor_cache
    settings = Settings(dynamodb_endpoint=spec.dynamodb_endpoint, table_prefix=spec.table_prefix)
    tables = floor.Tables.with_prefix(spec.table_prefix)
    if _floor_cache is None or _floor_cache[0] != spec.table_prefix:
        _floor_cache = (spec.table_prefix, floor.ProcessCache(_shared_level_table_time))
    cache = _floor_cache[1]
    for thread in range(first_thread, first_thread + threads):
        client = create_dynamodb_client(settings)
        if not cache.activity_xp:  # as a service that has served before: its caches are warm (not counted)
            for activity_id, _ in spec.activities:
                cache.activity_xp[activity_id] = floor.read_activity_xp(client, tables, activity_id)
            if cache.recent_levels() is None:
                cache.load_levels(client, tables)
        counters.append(floor.CallCounter(client))
        calls.append(_floor_call(spec, thread, client, tables, cache))
    return calls, closers, counters


# The floor's caches in this load process (by table prefix), and the time the
# level table was last read by any load process (see floor.ProcessCache).
_floor_cache: tuple[str, Any] | None = None
_shared_level_table_time: Any = None


def worker_main(conn: multiprocessing.connection.Connection, level_table_time: Any) -> None:
    """A load process: serves tasks from the parent until told to stop.
    Protocol: ("task", spec, first_thread, threads) -> "ready"; ("go", start_at
    as time.time()) -> LoadResult; None -> exit."""
    global _shared_level_table_time
    _shared_level_table_time = level_table_time
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    import boto3  # noqa: F401  (imported once, before the first task)
    import grpc  # noqa: F401

    from bench import floor  # noqa: F401
    from rewards.v1 import achievements_pb2_grpc, levels_pb2_grpc, xp_pb2_grpc  # noqa: F401

    conn.send(("started", os.getpid()))

    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        _, spec, first_thread, threads = message
        try:
            calls, closers, counters = _prepare(spec, first_thread, threads)
        except Exception as error:
            conn.send(("failed", f"{error.__class__.__name__}: {error}"))
            continue
        go = threading.Event()
        times: list[float] = []
        clients = [_Client(call, go, times) for call in calls]
        for client in clients:
            client.start()
        conn.send(("ready", os.getpid()))
        message = conn.recv()
        if message is None:
            return
        _, start_at = message
        start = time.perf_counter() + (start_at - time.time())
        measure_from, end = start + spec.warmup_s, start + spec.warmup_s + spec.duration_s
        times.extend((start, measure_from, end))
        for counter in counters:
            counter.calls.clear()  # what _prepare read is not part of the load
        go.set()
        time.sleep(max(0.0, measure_from - time.perf_counter()))
        cpu_from = time.process_time()
        time.sleep(max(0.0, end - time.perf_counter()))
        cpu = (time.process_time() - cpu_from) / spec.duration_s
        merged = LoadResult(window_s=spec.duration_s, cpu_fraction=[round(cpu, 3)])
        for client in clients:
            client.join()
            merged.merge(client.result)
        for counter in counters:
            merged.dynamodb_calls.update(counter.calls)
        for closer in closers:
            closer.close()
        conn.send(("done", merged))


# --- the parent's side --------------------------------------------------------------


class WorkerPool:
    """Load processes, spawned once (spawn: no state inherited from the parent)."""

    def __init__(self, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[Any, multiprocessing.connection.Connection]] = []
        level_table_time = context.Value("d", 0.0, lock=False)
        for _ in range(size):
            parent_end, child_end = context.Pipe()
            process = context.Process(target=worker_main, args=(child_end, level_table_time), daemon=True)
            process.start()
            child_end.close()
            self._workers.append((process, parent_end))

    @property
    def pids(self) -> list[int]:
        return [process.pid for process, _ in self._workers]

    def wait_started(self, timeout_s: float = 120) -> None:
        """Until every load process has imported what it uses (so that their start
        does not compete with the first case for the CPU)."""
        for _, conn in self._workers:
            status, _ = self._receive(conn, timeout_s)
            if status != "started":
                raise RuntimeError(f"a load process answered {status!r} instead of starting")

    def __len__(self) -> int:
        return len(self._workers)

    def run(self, spec: LoadSpec) -> LoadResult:
        per_process = CLIENTS_PER_PROCESS[spec.side]
        processes = math.ceil(spec.clients / per_process)
        if processes > len(self._workers):
            raise ValueError(f"{spec.case}: needs {processes} load processes, the pool has {len(self._workers)}")
        shares = [spec.clients // processes + (1 if p < spec.clients % processes else 0) for p in range(processes)]
        used = self._workers[:processes]
        first = 0
        for (_, conn), share in zip(used, shares):
            conn.send(("task", spec, first, share))
            first += share
        failures = []
        for _, conn in used:
            status, detail = self._receive(conn, 120)
            if status != "ready":
                failures.append(detail)
        if failures:
            raise RuntimeError(f"{spec.case} ({spec.side}): load processes failed to prepare: {failures[0]}")
        start_at = time.time() + 0.2
        for _, conn in used:
            conn.send(("go", start_at))
        total = LoadResult()
        for _, conn in used:
            status, result = self._receive(conn, spec.warmup_s + spec.duration_s + CALL_TIMEOUT_S + 60)
            total.merge(result)
        return total

    @staticmethod
    def _receive(conn: multiprocessing.connection.Connection, timeout_s: float) -> Any:
        if not conn.poll(timeout_s):
            raise TimeoutError("a load process did not answer")
        return conn.recv()

    def close(self) -> None:
        for _process, conn in self._workers:
            try:
                conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        deadline = time.monotonic() + 5
        for process, _ in self._workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(5)
