"""The load generator: worker processes (spawned once, reused by every case),
each running a few clients. The service side: client threads, each with its
own gRPC channel (or, for a case whose transport is "http", its own keep-alive
HTTP/1.1 connection to the gateway, sending the same calls as JSON). The floor
(bench/floor.py): the lean floor's clients are coroutines on one asyncio event
loop in the process, sharing one common.dynamodb.DynamoDBClient; the boto3
floor's (a reference) are threads, each with its own boto3 client. Clients
call in a closed loop: warm-up, then the measured window; each records the
latency of every call that completes inside the window (perf_counter) and the
parent merges them.

Why several processes: a Python client spends CPU under its GIL on every call
(protobuf and gRPC's Python layer: ~0.1-0.2 ms a call; the lean DynamoDB
client ~0.3 ms a DynamoDB call; boto3 about 1 ms). One process holding all
clients would cap the load at what one GIL can issue, and the comparison
would measure the generator. With at most CLIENTS_PER_PROCESS clients a
process, a process's clients together need well under one core, so the
processes are never the limit: the machine's cores, shared with the services
and DynamoDB Local, are. Each case reports its busiest load process's CPU use
(load_cpu_max, 1.0 = one full core) to show it.
"""

from __future__ import annotations

import asyncio
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

from botocore import xform_name

from bench.catalog import seeded_user

# The floors' clients are fewer a process: they issue DynamoDB calls back to back, with no service in
# between, so each needs more of its process's CPU (boto3's most of all).
CLIENTS_PER_PROCESS = {"service": 4, "floor": 2, "boto3_floor": 2}
SIDES = tuple(CLIENTS_PER_PROCESS)
CALL_TIMEOUT_S = 30.0

# award_xp_counted: AwardXp of an activity auto_unlock rules count (bench.catalog's counted stage);
# award_xp_streak: AwardXp of an activity a streak counts (bench.catalog's streak stage).
OPERATIONS = (
    "award_xp",
    "award_xp_counted",
    "award_xp_streak",
    "unlock_achievement",
    "check_level_up",
    "get_progress",
)
AWARD_OPERATIONS = ("award_xp", "award_xp_counted", "award_xp_streak")


@dataclass(frozen=True)
class LoadSpec:
    """One side of one case, as every load process gets it."""

    case: str
    operation: str  # one of OPERATIONS
    side: str  # one of SIDES: "service", "floor" (the lean floor) or "boto3_floor"
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
    achievement_xp: int = 0  # what each of `achievements` pays (the floors' catalog)
    activity_category: str = ""  # the category of `activities` (the counted and streak floors check and count it)
    # award_xp_streak's floors: the streak that counts `activities`, its period (common.periods) and the
    # game's time zone (the services' REWARDS_TIME_ZONE), in which the period's first day is taken.
    streak_id: str = ""
    streak_period: str = ""
    time_zone: str = "UTC"
    transport: str = "grpc"  # the service side's: "grpc", or "http" through the gateway (targets["gateway"])


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    window_s: float = 0.0
    total_calls: int = 0  # every call issued, warm-up and errors included (for DynamoDB calls per op)
    errors: Counter[str] = field(default_factory=Counter)
    anomalies: Counter[str] = field(default_factory=Counter)
    dynamodb_calls: Counter[str] = field(default_factory=Counter)  # a floor's own, by action
    cpu_fraction: list[float] = field(default_factory=list)  # per load process, over the window
    # What WorkerPool.run's `probe` returned at the start and at the end of the measured window.
    window_probes: list[Any] = field(default_factory=list)

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
    if spec.operation in AWARD_OPERATIONS:
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
            if response.level_check_deferred:
                return "level_check_deferred"
            # Expected in award_xp_counted (2 awards in 20 unlock a tier); never in award_xp nor award_xp_streak.
            return "auto_unlocked" if response.unlocked_achievements else None

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


def _floor_steps(spec: LoadSpec, thread: int, tables: Any) -> Callable[[int], Any]:
    """The i-th operation of a floor client, as bench.floor.Steps (the same for both floors)."""
    from bench import floor

    def request_id(i: int) -> str:
        return f"{spec.namespace}-t{thread}-r{i}"

    if spec.operation == "award_xp":

        def award(i: int) -> floor.Steps:
            activity_id, xp = spec.activities[i % len(spec.activities)]
            return floor.award_xp(tables, _user(spec, thread, i, spec.awards_per_user), activity_id, xp, request_id(i))

        return award
    if spec.operation == "award_xp_counted":

        def counted(i: int) -> floor.Steps:
            activity_id, xp = spec.activities[i % len(spec.activities)]
            return floor.award_xp_counted(
                tables,
                _user(spec, thread, i, spec.awards_per_user),
                activity_id,
                spec.activity_category,
                xp,
                request_id(i),
            )

        return counted
    if spec.operation == "award_xp_streak":
        from zoneinfo import ZoneInfo

        zone = ZoneInfo(spec.time_zone)

        def streak(i: int) -> floor.Steps:
            activity_id, xp = spec.activities[i % len(spec.activities)]
            return floor.award_xp_streak(
                tables,
                _user(spec, thread, i, spec.awards_per_user),
                activity_id,
                spec.activity_category,
                xp,
                request_id(i),
                spec.streak_id,
                spec.streak_period,
                zone,
            )

        return streak
    if spec.operation == "unlock_achievement":
        per_user = len(spec.achievements)

        def unlock(i: int) -> floor.Steps:
            return floor.unlock_achievement(
                tables,
                _user(spec, thread, i, per_user),
                spec.achievements[i % per_user],
                spec.achievement_xp,
                request_id(i),
            )

        return unlock
    if spec.operation == "check_level_up":

        def check(i: int) -> floor.Steps:
            return floor.check_level_up(tables, _seeded_user(spec, thread, i), request_id(i))

        return check
    if spec.operation == "get_progress":

        def progress(i: int) -> floor.Steps:
            return floor.get_progress(tables, _seeded_user(spec, thread, i))

        return progress
    raise ValueError(spec.operation)


def _first_read(spec: LoadSpec, tables: Any) -> tuple[str, dict[str, Any]]:
    """A read that opens a connection before the go (not counted), as a process that has served before has one."""
    from bench.catalog import seeded_user

    return ("GetItem", {"TableName": tables.progress, "Key": {"user_id": {"S": seeded_user(0)}}})


# --- one load process ---------------------------------------------------------------


def _error_name(error: Exception) -> str:
    """grpc.RpcError: its status; DynamoDBError and boto3's ClientError: DynamoDB's code; else the class."""
    name = getattr(error, "error_name", None)
    if name:
        return str(name)
    code = getattr(error, "code", None)
    if callable(code):
        return str(code().name)
    if isinstance(code, str) and code:
        return code
    response = getattr(error, "response", None)
    if isinstance(response, dict) and response.get("Error", {}).get("Code"):
        return str(response["Error"]["Code"])
    return error.__class__.__name__


def _account(result: LoadResult, began: float, times: list[float], anomaly: str | None) -> None:
    """A call that succeeded: its latency and anomaly count when it completed inside the window."""
    done = time.perf_counter()
    if times[1] <= done <= times[2]:
        result.latencies_ms.append((done - began) * 1000)
        if anomaly:
            result.anomalies[anomaly] += 1


class _Client(threading.Thread):
    """One client thread: a gRPC channel, an HTTP connection or a boto3 client, in a closed loop."""

    def __init__(self, call: Call, go: threading.Event, times: list[float]) -> None:
        super().__init__(daemon=True)
        self._call = call
        self._go = go
        self._times = times  # [start, measure_from, end], perf_counter, set before go
        self.result = LoadResult()

    def run(self) -> None:
        self._go.wait()
        start, _, end = self._times
        time.sleep(max(0.0, start - time.perf_counter()))
        result, i = self.result, 0
        while True:
            began = time.perf_counter()
            if began >= end:
                break
            try:
                anomaly = self._call(i)
            except Exception as error:  # grpc.RpcError, ClientError, HttpCallFailed...
                result.errors[_error_name(error)] += 1
            else:
                _account(result, began, self._times, anomaly)
            i += 1
        result.total_calls = i


class _LeanFloor(threading.Thread):
    """The lean floor's clients of this load process: coroutines on one asyncio
    event loop (this thread's), sharing one common.dynamodb.DynamoDBClient as a
    service's requests share its. Started by _prepare, which waits until it has
    connected (`prepared`; `failure` says why it could not)."""

    def __init__(self, spec: LoadSpec, threads: range, times: list[float]) -> None:
        super().__init__(daemon=True)
        self._spec = spec
        self._threads = threads
        self._times = times  # set before release()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._released: asyncio.Event | None = None
        self.result = LoadResult()
        self.prepared = threading.Event()
        self.failure: str | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    def release(self) -> None:
        """The go (from the load process's main thread)."""
        assert self._loop is not None and self._released is not None
        self._loop.call_soon_threadsafe(self._released.set)

    async def _main(self) -> None:
        from bench import floor
        from common.config import Settings
        from common.dynamodb import DynamoDBClient

        released = asyncio.Event()
        self._loop, self._released = asyncio.get_running_loop(), released
        spec = self._spec
        client = DynamoDBClient(Settings(dynamodb_endpoint=spec.dynamodb_endpoint, table_prefix=spec.table_prefix))
        tables = floor.Tables.with_prefix(spec.table_prefix)
        try:
            try:
                # One connection a client, open before the go.
                await asyncio.gather(*(client.call(*_first_read(spec, tables)) for _ in self._threads))
            except Exception as error:
                self.failure = f"{error.__class__.__name__}: {error}"
                return
            finally:
                self.prepared.set()
            await released.wait()  # release() comes ~0.2 s before the start
            results = await asyncio.gather(
                *(self._client(client, _floor_steps(spec, thread, tables)) for thread in self._threads)
            )
            for result in results:
                self.result.merge(result)
        finally:
            await client.close()

    async def _client(self, client: Any, steps: Callable[[int], Any]) -> LoadResult:
        from bench import floor

        start, _, end = self._times
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        result, i = LoadResult(), 0
        while True:
            began = time.perf_counter()
            if began >= end:
                break
            try:
                anomaly = await floor.run_lean(client, steps(i), result.dynamodb_calls)
            except Exception as error:  # DynamoDBError
                result.errors[_error_name(error)] += 1
            else:
                _account(result, began, self._times, anomaly)
            i += 1
        result.total_calls = i
        return result


Runner = _Client | _LeanFloor


def _prepare(
    spec: LoadSpec, first_thread: int, threads: int, go: threading.Event, times: list[float]
) -> tuple[list[Runner], list[Any], list[Counter[str]]]:
    """The clients (the lean floor's already started and connected), what to
    close after the run, and the boto3 floor's call counters."""
    runners: list[Runner] = []
    closers: list[Any] = []
    counters: list[Counter[str]] = []
    numbers = range(first_thread, first_thread + threads)
    if spec.side == "service" and spec.transport == "http":
        for thread in numbers:
            connection = KeepAliveConnection(spec.targets["gateway"])
            closers.append(connection)
            runners.append(_Client(_http_call(spec, thread, connection), go, times))
        return runners, closers, counters
    if spec.side == "service":
        import grpc

        from common.channels import CLIENT_CHANNEL_OPTIONS

        for thread in numbers:
            channel = grpc.insecure_channel(_service_target(spec), options=CLIENT_CHANNEL_OPTIONS)
            grpc.channel_ready_future(channel).result(timeout=30)
            closers.append(channel)
            runners.append(_Client(_service_call(spec, thread, channel), go, times))
        return runners, closers, counters
    if spec.side == "floor":
        lean = _LeanFloor(spec, numbers, times)
        lean.start()
        if not lean.prepared.wait(60):
            raise TimeoutError("the lean floor did not connect")
        if lean.failure is not None:
            raise RuntimeError(lean.failure)
        return [lean], closers, counters
    if spec.side != "boto3_floor":
        raise ValueError(spec.side)

    from bench import floor
    from common.config import Settings
    from common.dynamodb import create_dynamodb_client

    settings = Settings(dynamodb_endpoint=spec.dynamodb_endpoint, table_prefix=spec.table_prefix)
    tables = floor.Tables.with_prefix(spec.table_prefix)
    for thread in numbers:
        client = create_dynamodb_client(settings)
        action, payload = _first_read(spec, tables)
        getattr(client, xform_name(action))(**payload)
        counter: Counter[str] = Counter()
        counters.append(counter)
        steps = _floor_steps(spec, thread, tables)

        def call(
            i: int, client: Any = client, steps: Callable[[int], Any] = steps, counter: Counter[str] = counter
        ) -> str | None:
            return floor.run_boto3(client, steps(i), counter)

        runners.append(_Client(call, go, times))
    return runners, closers, counters


def worker_main(conn: multiprocessing.connection.Connection) -> None:
    """A load process: serves tasks from the parent until told to stop.
    Protocol: ("task", spec, first_thread, threads) -> "ready"; ("go", start_at
    as time.time()) -> LoadResult; None -> exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    import boto3  # noqa: F401  (imported once, before the first task)
    import grpc  # noqa: F401

    from bench import floor  # noqa: F401
    from common.dynamodb import DynamoDBClient  # noqa: F401
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
        go = threading.Event()
        times: list[float] = []
        try:
            runners, closers, counters = _prepare(spec, first_thread, threads, go, times)
        except Exception as error:
            conn.send(("failed", f"{error.__class__.__name__}: {error}"))
            continue
        for runner in runners:
            if runner.ident is None:
                runner.start()
        conn.send(("ready", os.getpid()))
        message = conn.recv()
        if message is None:
            return
        _, start_at = message
        start = time.perf_counter() + (start_at - time.time())
        measure_from, end = start + spec.warmup_s, start + spec.warmup_s + spec.duration_s
        times.extend((start, measure_from, end))
        go.set()
        for runner in runners:
            if isinstance(runner, _LeanFloor):
                runner.release()
        time.sleep(max(0.0, measure_from - time.perf_counter()))
        cpu_from = time.process_time()
        time.sleep(max(0.0, end - time.perf_counter()))
        cpu = (time.process_time() - cpu_from) / spec.duration_s
        merged = LoadResult(window_s=spec.duration_s, cpu_fraction=[round(cpu, 3)])
        for runner in runners:
            runner.join()
            merged.merge(runner.result)
        for counter in counters:
            merged.dynamodb_calls.update(counter)
        for closer in closers:
            closer.close()
        conn.send(("done", merged))


# --- the parent's side --------------------------------------------------------------


class WorkerPool:
    """Load processes, spawned once (spawn: no state inherited from the parent)."""

    def __init__(self, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[Any, multiprocessing.connection.Connection]] = []
        for _ in range(size):
            parent_end, child_end = context.Pipe()
            process = context.Process(target=worker_main, args=(child_end,), daemon=True)
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

    def run(self, spec: LoadSpec, probe: Callable[[], Any] | None = None) -> LoadResult:
        """Runs one side of a case; `probe`, when given, is called at the start and
        at the end of the measured window (its answers in window_probes)."""
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
        probes: list[Any] = []
        if probe is not None:
            time.sleep(max(0.0, start_at + spec.warmup_s - time.time()))
            probes.append(probe())
            time.sleep(max(0.0, start_at + spec.warmup_s + spec.duration_s - time.time()))
            probes.append(probe())
        total = LoadResult(window_probes=probes)
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
