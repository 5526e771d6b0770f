"""The benchmark's own local cluster: DynamoDB Local in memory and the three
services as processes (their real entry points), and the HTTP gateway when a
case uses it, all on free ports, so it runs beside `make up`; the catalog and users it measures against; and what
the benchmark reads from the services (metrics, resident memory).

A stage (start_stage) is three more services on the same DynamoDB Local, under
a table prefix of their own, with a catalog of their own: the counted cases'
auto_unlock rules and the streak cases' streak live there, out of the plain
cases' catalog."""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc

from bench.catalog import (
    ACHIEVEMENT_XP,
    ACTIVITIES,
    COUNTED_ACTIVITY,
    COUNTED_CATEGORY,
    COUNTED_TIERS,
    LEVEL_COUNT,
    LEVEL_STEP_XP,
    SEED_USERS,
    SEED_XP,
    STREAK_ACTIVITY,
    STREAK_CATEGORY,
    STREAK_ID,
    STREAK_PERIOD,
    achievement_ids,
    counted_achievement_ids,
    seeded_user,
)
from common.caller_auth import Role, TokenAuthority
from common.channels import CLIENT_CHANNEL_OPTIONS
from common.periods import DAY, WEEK
from devcluster.dynamodb_local import LOCAL_CREDENTIALS, REPO_ROOT, free_port, start_dynamodb_local
from devcluster.readiness import wait_grpc_serving, wait_http_healthy
from rewards.v1 import achievements_pb2, achievements_pb2_grpc, levels_pb2, levels_pb2_grpc, xp_pb2, xp_pb2_grpc

# Start order: each service's dependencies first.
SERVICES = {"levels": "levels_service", "xp": "xp_service", "achievements": "achievements_service"}
# The HTTP/JSON gateway (python -m gateway), in front of the services.
GATEWAY = "gateway"
BENCH_DIR = REPO_ROOT / ".local" / "bench"


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the benchmark dies, whatever kills it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class BenchCluster:
    dynamodb_endpoint: str
    table_prefix: str
    secret: str
    ports: dict[str, int]
    metrics_ports: dict[str, int]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    profiles: dict[str, Path] = field(default_factory=dict)
    # Under py-spy: the service's own process (py-spy's child), once it serves.
    profiled_pids: dict[str, int] = field(default_factory=dict)
    # The gateway's HTTP port; 0 when it does not run.
    gateway_port: int = 0
    # A stage's name, and the cluster whose DynamoDB Local it uses; a cluster's stages.
    stage: str = ""
    parent: BenchCluster | None = field(default=None, repr=False)
    stages: dict[str, BenchCluster] = field(default_factory=dict, repr=False)

    def target(self, name: str) -> str:
        if name == GATEWAY:
            return f"127.0.0.1:{self.gateway_port}"
        return f"localhost:{self.ports[name]}"

    @property
    def has_gateway(self) -> bool:
        return GATEWAY in self.processes

    def on(self, stage: str) -> BenchCluster:
        """The stage of that name ("" for this cluster itself)."""
        return self.stages[stage] if stage else self

    @property
    def dynamodb_pid(self) -> int:
        """DynamoDB Local's process (a stage's is its parent's)."""
        return (self.parent or self).processes["dynamodb"].pid

    def token(self, role: Role) -> str:
        return TokenAuthority(self.secret).mint(role, "bench", 4 * 3600)

    def service_pid(self, name: str) -> int:
        """The service's own process (under py-spy, its child)."""
        if name in self.profiled_pids:
            return self.profiled_pids[name]
        pid = self.processes[name].pid
        if name in self.profiles:
            children = [
                int(child)
                for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()
            ]
            if children:
                self.profiled_pids[name] = children[0]
                return children[0]
        return pid

    @property
    def pids(self) -> list[int]:
        """Every process of the cluster (py-spy's and its service's, when profiling), its stages' too."""
        return (
            [p.pid for p in self.processes.values()]
            + list(self.profiled_pids.values())
            + [pid for stage in self.stages.values() for pid in stage.pids]
        )

    def rss_mb(self, name: str) -> dict[str, float]:
        """VmRSS and VmHWM (peak) of the process, in MB."""
        return status_memory_mb(self.service_pid(name) if name in (*SERVICES, GATEWAY) else self.processes[name].pid)

    def dynamodb_calls(self) -> Counter[str]:
        """DynamoDB API calls so far by operation, summed over the three services."""
        total: Counter[str] = Counter()
        for port in self.metrics_ports.values():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                total.update(parse_call_counts(response.read().decode()))
        return total

    def stop(self) -> None:
        """SIGTERM to every process (the services drain, py-spy writes its
        profile), then SIGKILL to what is still running after a while;
        its stages first (a stage leaves DynamoDB Local to its parent)."""
        for stage in self.stages.values():
            stage.stop()
        order = [GATEWAY, *reversed(list(SERVICES)), "dynamodb"]
        for name in order:
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            try:
                if name in self.profiles:
                    os.kill(self.service_pid(name), signal.SIGTERM)
                else:
                    process.terminate()
            except (ProcessLookupError, FileNotFoundError):
                pass
        deadline = time.monotonic() + 20
        for name in order:
            process = self.processes.get(name)
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if name in self.profiled_pids:  # py-spy gone: its service must not outlive it
                pid = self.profiled_pids[name]
                try:
                    if {**SERVICES, GATEWAY: GATEWAY}[name] in Path(f"/proc/{pid}/cmdline").read_text():
                        os.kill(pid, signal.SIGKILL)
                except (FileNotFoundError, ProcessLookupError):
                    pass


_CALLS = re.compile(r'^rewards_dynamodb_call_duration_seconds_count\{operation="([^"]+)"\}\s+([0-9.eE+]+)$')


def parse_call_counts(metrics_text: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in metrics_text.splitlines():
        match = _CALLS.match(line.strip())
        if match:
            counts[match.group(1)] += int(float(match.group(2)))
    return counts


def status_memory_mb(pid: int) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = round(int(rest.split()[0]) / 1024, 1)  # kB
    return values


def _profiler() -> str | None:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    return found


def start_cluster(*, profile: bool = False, gateway: bool = False, log: IO[str] = sys.stdout) -> BenchCluster:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    logs = BENCH_DIR / "logs"
    logs.mkdir(exist_ok=True)
    for key, value in LOCAL_CREDENTIALS.items():
        os.environ.setdefault(key, value)
    dynamodb_port = free_port()
    with open(logs / "dynamodb-local.log", "wb") as dynamodb_log:
        dynamodb = start_dynamodb_local(
            dynamodb_port, dynamodb_log, start_new_session=True, preexec_fn=_die_with_parent
        )
    cluster = BenchCluster(
        dynamodb_endpoint=f"http://127.0.0.1:{dynamodb_port}",
        table_prefix=f"bench-{uuid.uuid4().hex[:8]}-",
        secret=secrets.token_hex(32),
        ports={name: free_port() for name in SERVICES},
        metrics_ports={name: free_port() for name in SERVICES},
        logs=logs,
    )
    cluster.processes["dynamodb"] = dynamodb
    try:
        _start_services(cluster, profile, log)
        if gateway:
            cluster.gateway_port = free_port()
            _start_gateway(cluster, profile)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start_stage(cluster: BenchCluster, name: str, *, profile: bool = False, log: IO[str] = sys.stdout) -> BenchCluster:
    """Three more services on the cluster's DynamoDB Local (its JVM, as warm as
    the plain cases'), under the cluster's table prefix followed by `<name>-`
    (they create their tables at start), on free ports, with the same token secret;
    their logs in a folder of the stage's name. Stopped with the cluster."""
    logs = cluster.logs / name
    logs.mkdir(exist_ok=True)
    stage = BenchCluster(
        dynamodb_endpoint=cluster.dynamodb_endpoint,
        table_prefix=f"{cluster.table_prefix}{name}-",
        secret=cluster.secret,
        ports={service: free_port() for service in SERVICES},
        metrics_ports={service: free_port() for service in SERVICES},
        logs=logs,
        stage=name,
        parent=cluster,
    )
    cluster.stages[name] = stage
    _start_services(stage, profile, log)  # on a failure, cluster.stop() stops what started
    return stage


def _environment(cluster: BenchCluster) -> dict[str, str]:
    return {
        **os.environ,
        **LOCAL_CREDENTIALS,
        "REWARDS_DYNAMODB_ENDPOINT": cluster.dynamodb_endpoint,
        "REWARDS_TABLE_PREFIX": cluster.table_prefix,
        **{f"REWARDS_{name.upper()}_LISTEN": f"[::]:{port}" for name, port in cluster.ports.items()},
        **{f"REWARDS_{name.upper()}_TARGET": f"localhost:{port}" for name, port in cluster.ports.items()},
        **{f"REWARDS_{name.upper()}_METRICS_PORT": str(port) for name, port in cluster.metrics_ports.items()},
        "REWARDS_AUTH_JWT_SECRET": cluster.secret,
        "REWARDS_GATEWAY_HOST": "127.0.0.1",
        "REWARDS_GATEWAY_PORT": str(cluster.gateway_port),
    }


def _command(cluster: BenchCluster, name: str, module: str, spy: str | None) -> list[str]:
    command = [sys.executable, "-m", module]
    if spy is not None:
        cluster.profiles[name] = BENCH_DIR / f"profile-{name}{f'-{cluster.stage}' if cluster.stage else ''}.svg"
        # CPU samples (idle threads left out), without pausing the process at each sample.
        command = [
            spy,
            "record",
            "--nonblocking",
            "--threads",
            "--rate",
            "200",
            "--format",
            "flamegraph",
            "-o",
            str(cluster.profiles[name]),
            "--",
            *command,
        ]
    return command


def _start_services(cluster: BenchCluster, profile: bool, log: IO[str]) -> None:
    env = _environment(cluster)
    spy = _profiler() if profile else None
    if profile and spy is None:
        print("--profile: py-spy is not installed (`.venv/bin/pip install py-spy`); running without it", file=log)
    for name, module in SERVICES.items():
        cluster.processes[name] = subprocess.Popen(
            _command(cluster, name, module, spy),
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(cluster.logs / f"{name}.log", "wb"),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    for name, port in cluster.ports.items():
        if wait_grpc_serving(port, cluster.processes[name], timeout_s=60):
            if name in cluster.profiles:
                cluster.service_pid(name)  # noted now, for stop()
        else:
            raise RuntimeError(
                f"{name} did not become healthy; see {cluster.logs / (name + '.log')}:\n"
                + (cluster.logs / f"{name}.log").read_text()[-3000:]
            )


def _start_gateway(cluster: BenchCluster, profile: bool) -> None:
    """`python -m gateway` with the services' environment, once they serve."""
    spy = _profiler() if profile else None
    cluster.processes[GATEWAY] = process = subprocess.Popen(
        _command(cluster, GATEWAY, "gateway", spy),
        cwd=REPO_ROOT,
        env=_environment(cluster),
        stdout=subprocess.DEVNULL,
        stderr=open(cluster.logs / f"{GATEWAY}.log", "wb"),
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    if wait_http_healthy(f"http://{cluster.target(GATEWAY)}", process, timeout_s=60):
        if GATEWAY in cluster.profiles:
            cluster.service_pid(GATEWAY)  # noted now, for stop()
        return
    raise RuntimeError(
        f"the gateway did not start; see {cluster.logs / (GATEWAY + '.log')}:\n"
        + (cluster.logs / f"{GATEWAY}.log").read_text()[-3000:]
    )


def grant_xp(cluster: BenchCluster, users: list[str], amount: int) -> None:
    """Gives each user `amount` XP (and the levels it reaches) through XpService.GrantXp."""
    metadata = (("authorization", f"Bearer {cluster.token(Role.ADMIN)}"),)
    with grpc.insecure_channel(cluster.target("xp"), options=CLIENT_CHANNEL_OPTIONS) as channel:
        xp = xp_pb2_grpc.XpServiceStub(channel)
        for user in users:
            xp.GrantXp(
                xp_pb2.GrantXpRequest(
                    user_id=user, amount=amount, reason="bench setup", request_id=f"setup-{uuid.uuid4().hex}"
                ),
                metadata=metadata,
                timeout=30,
            )


def _admin(cluster: BenchCluster) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {cluster.token(Role.ADMIN)}"),)


def _put_levels(channel: grpc.Channel, metadata: Any) -> None:
    """LEVEL_COUNT levels LEVEL_STEP_XP apart, each with coins, a chest every fifth."""
    levels = levels_pb2_grpc.LevelsServiceStub(channel)
    for n in range(1, LEVEL_COUNT + 1):
        rewards = [levels_pb2.Reward(reward_id="coins", quantity=50 * n)]
        if n % 5 == 0:
            rewards.append(levels_pb2.Reward(reward_id="chest", quantity=1))
        levels.PutLevel(
            levels_pb2.PutLevelRequest(
                level=levels_pb2.Level(level=n, xp_required=LEVEL_STEP_XP * (n - 1), rewards=rewards if n > 1 else [])
            ),
            metadata=metadata,
            timeout=30,
        )


def _put_activities(
    channel: grpc.Channel, metadata: Any, activities: tuple[tuple[str, int], ...], category: str
) -> None:
    xp = xp_pb2_grpc.XpServiceStub(channel)
    for activity_id, amount in activities:
        xp.PutActivity(
            xp_pb2.PutActivityRequest(
                activity=xp_pb2.Activity(activity_id=activity_id, name=activity_id, category=category, xp=amount)
            ),
            metadata=metadata,
            timeout=30,
        )


def _prime(cluster: BenchCluster, channel: grpc.Channel, activities: tuple[tuple[str, int], ...]) -> None:
    """One award of each activity, so that XpService's cache of activities (and,
    on the counted stage, both services' copies of the auto-unlock rules; on the
    streak stage, XP's copy of the streak catalog) is as warm as the floor's
    when the measurements start."""
    xp = xp_pb2_grpc.XpServiceStub(channel)
    game = (("authorization", f"Bearer {cluster.token(Role.GAME)}"),)
    for activity_id, _ in activities:
        xp.AwardXp(
            xp_pb2.AwardXpRequest(user_id="bench-prime", activity_id=activity_id, request_id=f"prime-{activity_id}"),
            metadata=game,
            timeout=30,
        )


def seed(cluster: BenchCluster) -> None:
    """The catalog, through gRPC with an admin token; then SEED_USERS users
    with progress (one GrantXp each, which levels them up to level 6)."""
    metadata = _admin(cluster)
    channels = {name: grpc.insecure_channel(cluster.target(name), options=CLIENT_CHANNEL_OPTIONS) for name in SERVICES}
    try:
        _put_levels(channels["levels"], metadata)
        _put_activities(channels["xp"], metadata, ACTIVITIES, "bench")
        achievements = achievements_pb2_grpc.AchievementsServiceStub(channels["achievements"])
        for achievement_id in achievement_ids():
            achievements.PutAchievement(
                achievements_pb2.PutAchievementRequest(
                    achievement=achievements_pb2.Achievement(
                        achievement_id=achievement_id, name=achievement_id, xp_reward=ACHIEVEMENT_XP
                    )
                ),
                metadata=metadata,
                timeout=30,
            )
        xp = xp_pb2_grpc.XpServiceStub(channels["xp"])

        def grant(index: int) -> Any:
            return xp.GrantXp(
                xp_pb2.GrantXpRequest(
                    user_id=seeded_user(index), amount=SEED_XP, reason="bench seed", request_id=f"seed-{index}"
                ),
                metadata=metadata,
                timeout=30,
            )

        _prime(cluster, channels["xp"], ACTIVITIES)
        with ThreadPoolExecutor(16) as pool:
            for response in pool.map(grant, range(SEED_USERS)):
                if response.level != 1 + SEED_XP // LEVEL_STEP_XP:
                    raise RuntimeError(f"a seeded user is at level {response.level}: {response}")
    finally:
        for channel in channels.values():
            channel.close()


def seed_counted(stage: BenchCluster) -> None:
    """The counted stage's catalog: the same levels, COUNTED_ACTIVITY (in
    COUNTED_CATEGORY) and an auto_unlock achievement per COUNTED_TIERS tier
    (at least that many awards of the activity), nothing else; then one award
    of the activity (the user's first evaluation; no tier needs a single award)."""
    metadata = _admin(stage)
    channels = {name: grpc.insecure_channel(stage.target(name), options=CLIENT_CHANNEL_OPTIONS) for name in SERVICES}
    try:
        _put_levels(channels["levels"], metadata)
        _put_activities(channels["xp"], metadata, (COUNTED_ACTIVITY,), COUNTED_CATEGORY)
        achievements = achievements_pb2_grpc.AchievementsServiceStub(channels["achievements"])
        activity_id, _ = COUNTED_ACTIVITY
        for achievement_id, (awards, xp_reward) in zip(counted_achievement_ids(), COUNTED_TIERS):
            achievements.PutAchievement(
                achievements_pb2.PutAchievementRequest(
                    achievement=achievements_pb2.Achievement(
                        achievement_id=achievement_id,
                        name=achievement_id,
                        xp_reward=xp_reward,
                        auto_unlock=True,
                        requirements=achievements_pb2.Requirements(
                            activity_counts=[achievements_pb2.ActivityCount(activity_id=activity_id, count=awards)]
                        ),
                    )
                ),
                metadata=metadata,
                timeout=30,
            )
        _prime(stage, channels["xp"], (COUNTED_ACTIVITY,))
    finally:
        for channel in channels.values():
            channel.close()


# The streak catalog's periods (common.periods) as the API names them.
_PERIODS = {DAY: xp_pb2.PERIOD_DAY, WEEK: xp_pb2.PERIOD_WEEK}


def seed_streak(stage: BenchCluster) -> None:
    """The streak stage's catalog: the same levels, STREAK_ACTIVITY (in
    STREAK_CATEGORY) and one streak of STREAK_PERIOD that counts it (by
    activity id), nothing else; then one award of the activity."""
    metadata = _admin(stage)
    channels = {name: grpc.insecure_channel(stage.target(name), options=CLIENT_CHANNEL_OPTIONS) for name in SERVICES}
    try:
        _put_levels(channels["levels"], metadata)
        _put_activities(channels["xp"], metadata, (STREAK_ACTIVITY,), STREAK_CATEGORY)
        activity_id, _ = STREAK_ACTIVITY
        xp_pb2_grpc.XpServiceStub(channels["xp"]).PutStreak(
            xp_pb2.PutStreakRequest(
                streak=xp_pb2.Streak(
                    streak_id=STREAK_ID, name=STREAK_ID, activity_id=activity_id, period=_PERIODS[STREAK_PERIOD]
                )
            ),
            metadata=metadata,
            timeout=30,
        )
        _prime(stage, channels["xp"], (STREAK_ACTIVITY,))
    finally:
        for channel in channels.values():
            channel.close()
