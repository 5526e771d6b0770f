"""From an award to its event in a watcher: the events service started on the
bench cluster's tables (after the other cases, so that its readers of the
streams do not weigh on them), one WatchEvents of every user, and awards
paced at a steady rate. Latency is from the award's answer to the event's
arrival (and from the award's request, for reference); CPU is the events
process's, per event delivered."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from typing import IO, Any

import grpc

from bench.catalog import ACTIVITIES, seeded_user
from bench.cluster import BenchCluster, _die_with_parent, _environment
from bench.cpu import cpu_seconds
from common.caller_auth import BearerTokenInterceptor, Role
from devcluster.dynamodb_local import REPO_ROOT, free_port
from devcluster.readiness import wait_grpc_serving
from rewards.v1 import events_pb2, events_pb2_grpc, xp_pb2, xp_pb2_grpc

# make up's poll interval, and the service's default (docs/deploy.md: readers of a shard on AWS).
POLL_INTERVALS_S = (0.1, 0.25)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure_event_latency(
    cluster: BenchCluster, duration_s: float, rate_per_s: float = 20.0, log: IO[str] = sys.stdout
) -> dict[str, Any]:
    return {f"poll_{poll_s:g}s": _measure(cluster, duration_s, rate_per_s, poll_s, log) for poll_s in POLL_INTERVALS_S}


def _measure(
    cluster: BenchCluster, duration_s: float, rate_per_s: float, poll_s: float, log: IO[str]
) -> dict[str, Any]:
    port = free_port()
    env = {
        **_environment(cluster),
        "REWARDS_EVENTS_LISTEN": f"[::]:{port}",
        "REWARDS_EVENTS_METRICS_PORT": "0",
        "REWARDS_EVENTS_POLL_S": str(poll_s),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "events_service"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(cluster.logs / f"events-{poll_s:g}.log", "wb"),
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    try:
        if not wait_grpc_serving(port, process, timeout_s=60):
            raise RuntimeError(f"the events service did not start; see {cluster.logs}")
        token = cluster.token(Role.ADMIN)
        events = events_pb2_grpc.EventsServiceStub(
            grpc.intercept_channel(grpc.insecure_channel(f"localhost:{port}"), BearerTokenInterceptor(token))
        )
        xp = xp_pb2_grpc.XpServiceStub(
            grpc.intercept_channel(grpc.insecure_channel(cluster.target("xp")), BearerTokenInterceptor(token))
        )
        arrived: dict[str, float] = {}
        watch = events.WatchEvents(events_pb2.WatchEventsRequest(types=[events_pb2.EVENT_TYPE_XP_AWARDED]))
        watch.initial_metadata()  # live

        def read() -> None:
            try:
                for response in watch:
                    arrived[response.event.event_id] = time.monotonic()
            except grpc.RpcError:
                pass  # cancelled at the end

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        run = uuid.uuid4().hex[:6]
        sent: dict[str, tuple[float, float]] = {}
        activity = ACTIVITIES[0][0]
        before = cpu_seconds({"events": process.pid})
        began = time.monotonic()
        index = 0
        while time.monotonic() - began < duration_s:
            request_id = f"latency-{run}-{index}"
            asked = time.monotonic()
            xp.AwardXp(xp_pb2.AwardXpRequest(user_id=seeded_user(index), activity_id=activity, request_id=request_id))
            sent[f"req#{request_id}"] = (asked, time.monotonic())
            index += 1
            time.sleep(max(0.0, began + index / rate_per_s - time.monotonic()))
        deadline = time.monotonic() + 10
        while len(arrived.keys() & sent.keys()) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        after = cpu_seconds({"events": process.pid})
        watch.cancel()
        from_answer = [(arrived[k] - done) * 1000 for k, (_, done) in sent.items() if k in arrived]
        from_request = [(arrived[k] - asked) * 1000 for k, (asked, _) in sent.items() if k in arrived]
        figures = {
            "poll_s": poll_s,
            "awards": len(sent),
            "events_seen": len(from_answer),
            "missing": len(sent) - len(from_answer),
            "p50_ms": round(_percentile(from_answer, 0.5), 1),
            "p95_ms": round(_percentile(from_answer, 0.95), 1),
            "p99_ms": round(_percentile(from_answer, 0.99), 1),
            "max_ms": round(max(from_answer, default=float("nan")), 1),
            "from_request_p50_ms": round(_percentile(from_request, 0.5), 1),
            "events_cpu_ms_per_event": round((after["events"] - before["events"]) * 1000 / max(1, len(from_answer)), 2),
        }
        print(
            f"  event_latency (poll {poll_s:g} s): {figures['events_seen']}/{figures['awards']} events, award answer -> "
            f"event p50 {figures['p50_ms']} ms p95 {figures['p95_ms']} ms p99 {figures['p99_ms']} ms; "
            f"events service cpu {figures['events_cpu_ms_per_event']} ms/event",
            file=log,
            flush=True,
        )
        return figures
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
