"""`python -m bench`: starts a local cluster of its own, seeds it, warms
DynamoDB Local's JVM, runs each case through gRPC (the *_http cases: through
the HTTP gateway), then on the floor (the fewest DynamoDB calls the operation
needs, through the services' lean client: bench/floor.py) and on the boto3
floor (the same calls with boto3, for reference), prints the comparison, the
services' DynamoDB calls and CPU per op, and the targets, and writes
bench/results.json."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.catalog import (
    ACHIEVEMENT_XP,
    ACTIVITIES,
    AWARDS_PER_USER,
    COUNTED_ACTIVITY,
    COUNTED_CATEGORY,
    COUNTED_STAGE,
    LEVEL_COUNT,
    LEVEL_STEP_XP,
    SEED_USERS,
    STREAK_ACTIVITY,
    STREAK_CATEGORY,
    STREAK_ID,
    STREAK_PERIOD,
    STREAK_STAGE,
    achievement_ids,
    counted_achievement_ids,
)
from bench.cluster import (
    GATEWAY,
    SERVICES,
    BenchCluster,
    grant_xp,
    seed,
    seed_counted,
    seed_streak,
    start_cluster,
    start_stage,
    status_memory_mb,
)
from bench.cpu import CpuWatch, cpu_seconds
from bench.event_latency import measure_event_latency
from bench.floor import FLOOR_KIND, MIN_CALLS, min_calls_per_op
from bench.load import CLIENTS_PER_PROCESS, LoadResult, LoadSpec, WorkerPool, hot_user_id
from common.caller_auth import Role
from common.config import Settings
from devcluster.dynamodb_local import LOCAL_CREDENTIALS, REPO_ROOT

RESULTS_FILE = REPO_ROOT / "bench" / "results.json"
MEMORY_LIMIT_MB = 150.0
# A load process busier than this (cores) may be what limits its clients (its
# GIL). Not a warning at one client: a process with one client thread is as
# busy as that client's own work makes it, on the floors the DynamoDB client's
# (which the service does in its own process).
LOAD_CPU_WARNING = 0.85
# Cores used by processes other than the benchmark's during a case, above which
# its figures are flagged as disturbed (the machine may be shared).
OTHER_CPU_WARNING = 0.2


@dataclass(frozen=True)
class Case:
    key: str
    operation: str
    clients: int
    hot_user: bool = False
    # How the service side calls: "grpc", or "http" through the gateway (python -m gateway, JSON over
    # one keep-alive HTTP/1.1 connection a client).
    transport: str = "grpc"
    # The services it runs on: "" for the cluster's own, else a stage of its own (bench/cluster.py
    # start_stage), with its own tables and catalog.
    stage: str = ""


# How each stage's catalog is seeded (bench/cluster.py).
STAGE_SEEDS = {COUNTED_STAGE: seed_counted, STREAK_STAGE: seed_streak}

CASES = (
    Case("award_xp_c1", "award_xp", 1),
    Case("award_xp_c16", "award_xp", 16),
    Case("award_xp_c64", "award_xp", 64),
    Case("award_xp_hot_c16", "award_xp", 16, hot_user=True),
    Case("award_xp_http_c1", "award_xp", 1, transport="http"),
    Case("award_xp_http_c16", "award_xp", 16, transport="http"),
    # Awards of an activity that auto_unlock achievements count at tiers (bench/catalog.py), on a stage
    # of their own: the shared catalog has no auto_unlock rule, so the cases above measure what they did.
    Case("award_xp_counted_c1", "award_xp_counted", 1, stage=COUNTED_STAGE),
    Case("award_xp_counted_c16", "award_xp_counted", 16, stage=COUNTED_STAGE),
    # Awards of an activity that one daily streak counts (bench/catalog.py), on a stage of their own: a
    # streak in the shared catalog would make every GetProgress read the user's runs too.
    Case("award_xp_streak_c1", "award_xp_streak", 1, stage=STREAK_STAGE),
    Case("award_xp_streak_c16", "award_xp_streak", 16, stage=STREAK_STAGE),
    Case("unlock_achievement_c1", "unlock_achievement", 1),
    Case("unlock_achievement_c16", "unlock_achievement", 16),
    Case("check_level_up_c1", "check_level_up", 1),
    Case("check_level_up_c16", "check_level_up", 16),
    Case("get_progress_c1", "get_progress", 1),
    Case("get_progress_c16", "get_progress", 16),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per case and side (default 8)")
    parser.add_argument(
        "--warmup", type=float, default=1.5, help="warm-up seconds before each measurement (default 1.5)"
    )
    parser.add_argument(
        "--cases", default="", help="comma-separated case keys or prefixes (default: all); --list shows them"
    )
    parser.add_argument(
        "--jvm-warmup",
        type=float,
        default=1.5,
        help="seconds a round of unmeasured load before the first case, to warm DynamoDB Local's JIT (a "
        "fresh JVM's first seconds are several times slower): per operation of the chosen cases, a round on "
        "the service and on the boto3 floor, then rounds on the lean floor until its throughput stops "
        "rising (default 1.5; 0 skips it)",
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS_FILE,
        help=f"where to write the figures (default {RESULTS_FILE.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the services under py-spy (if installed: pip install py-spy) and write their CPU "
        "flame graphs to .local/bench/; the figures of such a run are skewed by the sampling",
    )
    return parser.parse_args(argv)


# Not a Case (no floor, no load processes): award to event in a watcher, through the events service.
EVENT_LATENCY = "event_latency"


def wants_event_latency(spec: str) -> bool:
    words = [w.strip() for w in spec.split(",") if w.strip()]
    return not words or any(EVENT_LATENCY.startswith(w) for w in words)


def select_cases(spec: str) -> list[Case]:
    if not spec.strip():
        return list(CASES)
    chosen: list[Case] = []
    for word in (w.strip() for w in spec.split(",") if w.strip()):
        if EVENT_LATENCY.startswith(word) and not any(c.key.startswith(word) for c in CASES):
            continue
        matches = [c for c in CASES if c.key == word] or [c for c in CASES if c.key.startswith(word)]
        if not matches:
            raise SystemExit(f"unknown case {word!r}; cases: {', '.join(c.key for c in CASES)}")
        chosen.extend(c for c in matches if c not in chosen)
    return [c for c in CASES if c in chosen]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank."""
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def summarize(result: LoadResult) -> dict[str, Any]:
    values = sorted(result.latencies_ms)

    def ms(q: float) -> float | None:  # None (JSON null) when no call succeeded
        return round(percentile(values, q), 2) if values else None

    return {
        "throughput": round(len(values) / result.window_s, 1) if result.window_s else 0.0,
        "p50_ms": ms(0.50),
        "p95_ms": ms(0.95),
        "p99_ms": ms(0.99),
        "calls": len(values),
        "errors": dict(result.errors),
        "load_cpu_max": max(result.cpu_fraction, default=0.0),
    }


def per_op(counts: Counter[str], ops: int) -> dict[str, float]:
    return {name: round(count / ops, 3) for name, count in sorted(counts.items()) if count} if ops else {}


FLOORS = ("floor", "boto3_floor")  # the lean floor (the results' floor) and the boto3 reference


# The JVM warm-up repeats its lean floor round of an operation until its throughput stops rising
# (by more than JVM_WARMUP_GAIN over the best round before), at most JVM_WARMUP_ROUNDS times.
JVM_WARMUP_GAIN = 1.1
JVM_WARMUP_ROUNDS = 6


def warm_up(
    cases: list[Case],
    cluster: BenchCluster,
    pool: WorkerPool,
    args: argparse.Namespace,
    run_id: str,
    tokens: dict[str, str],
) -> dict[str, dict[str, Any]]:
    """Unmeasured load of each operation of the chosen cases, so that DynamoDB
    Local's JIT has compiled the paths of their requests before the first case
    (a fresh JVM's first seconds are several times slower, which would otherwise
    land on the first case, its service side first): one round of
    args.jvm_warmup seconds on the service and on the boto3 floor, then rounds
    on the lean floor (the most DynamoDB calls a second) until its throughput
    stops rising. Returns each operation's throughput per side and round."""
    operations = list(dict.fromkeys(case.operation for case in cases))
    figures: dict[str, dict[str, Any]] = {}
    for operation in operations:
        clients = min(8, len(pool) * min(CLIENTS_PER_PROCESS.values()))
        stage = next(case.stage for case in cases if case.operation == operation)
        done: list[int] = []

        def round_on(side: str) -> float:
            done.append(1)  # a namespace a round: its awards and unlocks are new
            case = Case(f"warm-{operation}-{len(done)}", operation, clients, stage=stage)
            result = pool.run(_spec(case, side, cluster, run_id, tokens, 0.0, args.jvm_warmup))
            if result.errors:
                print(f"  WARNING warm-up {operation} ({side}): errors {dict(result.errors)}", flush=True)
            return float(summarize(result)["throughput"])

        rounds = figures[operation] = {"service": round_on("service"), "boto3_floor": round_on("boto3_floor")}
        lean = [round_on("floor")]
        while len(lean) < JVM_WARMUP_ROUNDS:
            lean.append(round_on("floor"))
            if lean[-1] <= JVM_WARMUP_GAIN * max(lean[:-1]):
                break
        rounds["floor"] = lean
        print(
            f"  warm-up {operation} ({clients} clients, {args.jvm_warmup:g} s a round): service "
            f"{rounds['service']:.0f}/s, boto3 floor {rounds['boto3_floor']:.0f}/s, lean floor "
            + " -> ".join(f"{t:.0f}/s" for t in lean),
            flush=True,
        )
    return figures


def _spec(
    case: Case,
    side: str,
    cluster: BenchCluster,
    run_id: str,
    tokens: dict[str, str],
    warmup_s: float,
    duration_s: float,
) -> LoadSpec:
    """One side of a case, on the case's stage (`cluster`: the root cluster)."""
    cluster = cluster.on(case.stage)
    counted = case.operation == "award_xp_counted"
    streak = case.operation == "award_xp_streak"
    return LoadSpec(
        case=case.key,
        operation=case.operation,
        side=side,
        clients=case.clients,
        hot_user=case.hot_user,
        namespace=f"b{run_id}-{case.key}-{side[0]}",
        warmup_s=warmup_s,
        duration_s=duration_s,
        targets={name: cluster.target(name) for name in (*SERVICES, *([GATEWAY] if cluster.has_gateway else []))},
        token=tokens["game"],
        transport=case.transport,
        dynamodb_endpoint=cluster.dynamodb_endpoint,
        table_prefix=cluster.table_prefix,
        activities=(COUNTED_ACTIVITY,) if counted else (STREAK_ACTIVITY,) if streak else ACTIVITIES,
        achievements=counted_achievement_ids() if counted else achievement_ids(),
        seed_users=SEED_USERS,
        awards_per_user=AWARDS_PER_USER,
        achievement_xp=ACHIEVEMENT_XP,
        activity_category=COUNTED_CATEGORY if counted else STREAK_CATEGORY if streak else "bench",
        streak_id=STREAK_ID if streak else "",
        streak_period=STREAK_PERIOD if streak else "",
        # The services' zone: they read it from this process's environment (bench/cluster.py).
        time_zone=Settings.from_env().time_zone,
    )


def window_cpu_ms_per_op(result: LoadResult, ops: int) -> dict[str, float]:
    """CPU ms per op of each probed process over the measured window (ops: the
    calls that completed in it)."""
    if len(result.window_probes) != 2 or not ops:
        return {}
    start, end = result.window_probes
    return {name: round((end[name] - start[name]) * 1000 / ops, 3) for name in start}


def client_cpu_ms_per_op(result: LoadResult, ops: int) -> float | None:
    """The load processes' CPU ms per op over the measured window: on a floor,
    what issuing its calls costs the client."""
    return round(sum(result.cpu_fraction) * result.window_s * 1000 / ops, 3) if ops else None


def run_case(
    case: Case, cluster: BenchCluster, pool: WorkerPool, args: argparse.Namespace, run_id: str, tokens: dict[str, str]
) -> dict[str, Any]:
    def spec(side: str) -> LoadSpec:
        return _spec(case, side, cluster, run_id, tokens, args.warmup, args.duration)

    stage = cluster.on(case.stage)  # the case's services; `cluster` is the root (every process)

    if case.hot_user:
        # A veteran at the top level: every award is a plain one, none races another for a level-up,
        # so the calls per award do not depend on how the races fall.
        grant_xp(
            stage,
            [hot_user_id(spec(side).namespace) for side in ("service", *FLOORS)],
            LEVEL_STEP_XP * (LEVEL_COUNT - 1),
        )
    named = {
        **{name: stage.service_pid(name) for name in _processes(stage)},
        "dynamodb_local": cluster.dynamodb_pid,
    }
    watch = CpuWatch([os.getpid(), *cluster.pids, *pool.pids], named)

    def probe() -> dict[str, float]:
        return cpu_seconds(named)

    before = stage.dynamodb_calls()
    watch.start()
    service = pool.run(spec("service"), probe)
    service_cpu = watch.stop()
    after = stage.dynamodb_calls()
    floors: dict[str, tuple[LoadResult, dict[str, float]]] = {}
    for side in FLOORS:
        watch.start()
        result = pool.run(spec(side), probe)
        floors[side] = (result, watch.stop())
    idle = stage.dynamodb_calls() - after  # the services should have made none during the floors
    s = summarize(service)
    service_calls = per_op(after - before, service.total_calls)
    service_cpu_ms = window_cpu_ms_per_op(service, s["calls"])
    record: dict[str, Any] = {
        "operation": case.operation,
        "clients": case.clients,
        "hot_user": case.hot_user,
        "transport": case.transport,
        "stage": case.stage,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "throughput": s["throughput"],
        "p50_ms": s["p50_ms"],
        "p95_ms": s["p95_ms"],
        "p99_ms": s["p99_ms"],
        "floor_kind": FLOOR_KIND,
    }
    for side, (result, cpu) in floors.items():
        f = summarize(result)
        floor_ms = window_cpu_ms_per_op(result, f["calls"])
        record.update(
            {
                f"{side}_throughput": f["throughput"],
                f"{side}_p50_ms": f["p50_ms"],
                f"{side}_p95_ms": f["p95_ms"],
                f"{side}_p99_ms": f["p99_ms"],
                f"ratio_to_{side}": round(s["throughput"] / f["throughput"], 3) if f["throughput"] else None,
                f"{side}_calls_measured": f["calls"],
                f"{side}_errors": f["errors"],
                f"{side}_anomalies": dict(result.anomalies),
                f"{side}_dynamodb_calls_per_op": per_op(result.dynamodb_calls, result.total_calls),
                # What issuing the floor's calls costs its client (the load processes), and DynamoDB Local.
                f"{side}_client_cpu_ms_per_op": client_cpu_ms_per_op(result, f["calls"]),
                f"{side}_dynamodb_local_cpu_ms_per_op": floor_ms.get("dynamodb_local"),
                f"{side}_load_cpu_max": f["load_cpu_max"],
                f"{side}_cpu_cores": cpu,
            }
        )
    f = summarize(floors["floor"][0])
    record.update(
        {
            "p50_delta_ms": round(s["p50_ms"] - f["p50_ms"], 2)
            if s["p50_ms"] is not None and f["p50_ms"] is not None
            else None,
            "p99_ratio": round(s["p99_ms"] / f["p99_ms"], 2) if s["p99_ms"] is not None and f["p99_ms"] else None,
            # The services' DynamoDB calls per op (their metrics, warm-up included) next to the minimum.
            "calls_per_op": round(sum(service_calls.values()), 3),
            "min_calls_per_op": min_calls_per_op(case.operation),
            "dynamodb_calls_per_op": service_calls,
            "min_dynamodb_calls_per_op": dict(MIN_CALLS[case.operation]),
            # CPU of XP, Levels and Achievements (summed) per op in the measured window, and of each
            # probed process (the gateway too, when it runs; DynamoDB Local).
            "cpu_ms_per_op": round(sum(service_cpu_ms.get(name, 0.0) for name in SERVICES), 3)
            if service_cpu_ms
            else None,
            "cpu_ms_per_op_by_process": service_cpu_ms,
            "calls_measured": s["calls"],
            "errors": s["errors"],
            "anomalies": dict(service.anomalies),
            "load_cpu_max": s["load_cpu_max"],
            # Cores busy during each side (warm-up included): the machine, the benchmark's processes, the
            # rest of the machine, and each service and DynamoDB Local.
            "cpu_cores": service_cpu,
        }
    )
    if +idle:
        record["service_calls_during_floor"] = dict(+idle)
    return record


def _processes(cluster: BenchCluster) -> list[str]:
    """The services, and the gateway when it runs."""
    return [*SERVICES, *([GATEWAY] if cluster.has_gateway else [])]


def grpc_counterpart(case: Case) -> str | None:
    """The gRPC case an HTTP case is compared with: same operation, clients and users."""
    for other in CASES:
        if (
            other.transport == "grpc"
            and other.operation == case.operation
            and other.clients == case.clients
            and other.hot_user == case.hot_user
        ):
            return other.key
    return None


def add_gateway_overhead(case: Case, results: dict[str, dict[str, Any]]) -> None:
    """For an HTTP case whose gRPC counterpart ran in this run: its throughput,
    and the p50 the gateway adds (HTTP p50 minus gRPC p50)."""
    record = results[case.key]
    counterpart = results.get(grpc_counterpart(case) or "")
    if case.transport != "http" or counterpart is None:
        return
    record["grpc_case"] = grpc_counterpart(case)
    record["grpc_throughput"] = counterpart["throughput"]
    record["grpc_p50_ms"] = counterpart["p50_ms"]
    record["gateway_overhead_p50_ms"] = (
        round(record["p50_ms"] - counterpart["p50_ms"], 2)
        if record["p50_ms"] is not None and counterpart["p50_ms"] is not None
        else None
    )
    record["throughput_ratio_to_grpc"] = (
        round(record["throughput"] / counterpart["throughput"], 3) if counterpart["throughput"] else None
    )


# Award cases compared with the plain award case of the same clients (plain_counterpart).
OVER_PLAIN_OPERATIONS = ("award_xp_counted", "award_xp_streak")


def plain_counterpart(case: Case) -> str | None:
    """The plain award case a counted or streak one is compared with: same
    clients, over gRPC, on the cluster's services."""
    if case.operation not in OVER_PLAIN_OPERATIONS:
        return None
    for other in CASES:
        if other.operation == "award_xp" and other.transport == "grpc" and not other.hot_user:
            if other.clients == case.clients:
                return other.key
    return None


def add_counted_overhead(case: Case, results: dict[str, dict[str, Any]]) -> None:
    """For a counted or streak award case whose plain case ran in this run:
    what it costs over the plain award (DynamoDB calls and service CPU per
    award, throughput, p50)."""
    plain_key = plain_counterpart(case)
    record, plain = results[case.key], results.get(plain_key or "")
    if plain is None:
        return

    def over(field: str, digits: int) -> float | None:
        if record[field] is None or plain[field] is None:
            return None
        return round(record[field] - plain[field], digits)

    record.update(
        {
            "plain_case": plain_key,
            "plain_throughput": plain["throughput"],
            "plain_p50_ms": plain["p50_ms"],
            "plain_calls_per_op": plain["calls_per_op"],
            "plain_cpu_ms_per_op": plain["cpu_ms_per_op"],
            "calls_over_plain": over("calls_per_op", 3),
            "cpu_ms_over_plain": over("cpu_ms_per_op", 3),
            "p50_over_plain_ms": over("p50_ms", 2),
        }
    )


# --- output ------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def print_table(results: dict[str, dict[str, Any]], out: Any = sys.stdout) -> None:
    headers = [
        "case",
        "clients",
        "thr/s",
        "p50",
        "p95",
        "p99",
        "floor thr/s",
        "floor p50",
        "floor p99",
        "ratio",
        "p50 delta",
        "p99 ratio",
        "boto3 thr/s",
        "boto3 p50",
        "calls/op",
        "min calls",
        "cpu ms/op",
    ]
    rows = []
    for key, r in results.items():
        rows.append(
            [
                key,
                str(r["clients"]),
                _fmt(r["throughput"]),
                _fmt(r["p50_ms"], 2),
                _fmt(r["p95_ms"], 2),
                _fmt(r["p99_ms"], 2),
                _fmt(r["floor_throughput"]),
                _fmt(r["floor_p50_ms"], 2),
                _fmt(r["floor_p99_ms"], 2),
                _fmt(r["ratio_to_floor"], 2),
                _fmt(r["p50_delta_ms"], 2),
                _fmt(r["p99_ratio"], 2),
                _fmt(r["boto3_floor_throughput"]),
                _fmt(r["boto3_floor_p50_ms"], 2),
                _fmt(r["calls_per_op"], 2),
                _fmt(r["min_calls_per_op"]),
                _fmt(r["cpu_ms_per_op"], 2),
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    print(
        f"latencies in ms; floor ({FLOOR_KIND}) = the fewest DynamoDB calls of the operation through the services' "
        "lean client; ratio = throughput / floor throughput; p50 delta = p50 - floor p50; p99 ratio = p99 / floor "
        "p99; boto3 = the same calls with boto3 (reference); calls/op = the services' DynamoDB calls per op, "
        "min calls = the floor's; cpu ms/op = XP + Levels + Achievements CPU per op in the measured window",
        file=out,
    )
    print("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths))), file=out)
    for row in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))), file=out)


def print_calls(results: dict[str, dict[str, Any]], out: Any = sys.stdout) -> None:
    print(
        "\nDynamoDB calls per op: the services' (their metrics, warm-up included) | the minimum (the floor's)",
        file=out,
    )
    for key, r in results.items():
        service, minimum = r["dynamodb_calls_per_op"], r["min_dynamodb_calls_per_op"]
        line = ", ".join(f"{n} {v:.2f}" for n, v in service.items()) or "none"
        least = ", ".join(f"{n} {v}" for n, v in minimum.items())
        print(
            f"  {key}: {line}; total {r['calls_per_op']:.2f} | {least}; total {r['min_calls_per_op']}",
            file=out,
        )
        for side in ("floor", "boto3_floor"):
            issued = r[f"{side}_dynamodb_calls_per_op"]
            if any(abs(issued.get(n, 0.0) - minimum.get(n, 0)) > 0.01 for n in set(issued) | set(minimum)):
                print(
                    f"  WARNING {key}: the {side.replace('_', ' ')} issued {issued} per op, not its minimum "
                    f"{minimum}: its errors or data are not what bench/floor.py expects",
                    file=out,
                )
        for field, label in (
            ("errors", "service errors"),
            ("floor_errors", "floor errors"),
            ("boto3_floor_errors", "boto3 floor errors"),
            ("service_calls_during_floor", "service DynamoDB calls during the floors"),
        ):
            if r.get(field):
                print(f"  WARNING {key}: {label}: {r[field]}", file=out)
        for field, label in (
            ("anomalies", "service"),
            ("floor_anomalies", "floor"),
            ("boto3_floor_anomalies", "boto3 floor"),
        ):
            if r.get(field):
                print(f"  note {key}: {label} anomalies {r[field]}", file=out)
        other = max(r["cpu_cores"]["other"], r["floor_cpu_cores"]["other"], r["boto3_floor_cpu_cores"]["other"])
        if other > OTHER_CPU_WARNING:
            print(
                f"  WARNING {key}: other processes on this machine used up to {other:.2f} cores during this case: "
                f"its figures are disturbed",
                file=out,
            )
        busiest = max(r["load_cpu_max"], r["floor_load_cpu_max"], r["boto3_floor_load_cpu_max"])
        if r["clients"] > 1 and busiest > LOAD_CPU_WARNING:
            print(
                f"  WARNING {key}: a load process used {busiest:.2f} of a core: the load generator may have "
                f"capped this case",
                file=out,
            )


def print_gateway(results: dict[str, dict[str, Any]], out: Any = sys.stdout) -> None:
    rows = [(key, r) for key, r in results.items() if r.get("transport") == "http"]
    if not rows:
        return
    print("\nThrough the HTTP gateway, next to the same calls over gRPC in this run", file=out)
    for key, r in rows:
        if "grpc_case" not in r:
            print(
                f"  {key}: {_fmt(r['throughput'])}/s p50 {_fmt(r['p50_ms'], 2)} ms (its gRPC case did not run)",
                file=out,
            )
            continue
        print(
            f"  {key}: {_fmt(r['throughput'])}/s vs {_fmt(r['grpc_throughput'])}/s over gRPC ({r['grpc_case']}; "
            f"ratio {_fmt(r['throughput_ratio_to_grpc'], 2)}); p50 {_fmt(r['p50_ms'], 2)} vs "
            f"{_fmt(r['grpc_p50_ms'], 2)} ms: the gateway adds {_fmt(r['gateway_overhead_p50_ms'], 2)} ms; "
            f"gateway process {r['cpu_cores'].get(GATEWAY, 0):.2f} cores",
            file=out,
        )


def print_counted(results: dict[str, dict[str, Any]], out: Any = sys.stdout) -> None:
    for operation, title in (
        ("award_xp_counted", "Counted awards (auto_unlock tiers, their own stage)"),
        ("award_xp_streak", "Streak awards (one daily streak, their own stage)"),
    ):
        _print_over_plain(results, operation, title, out)


def _print_over_plain(results: dict[str, dict[str, Any]], operation: str, title: str, out: Any) -> None:
    rows = [(key, r) for key, r in results.items() if r["operation"] == operation]
    if not rows:
        return
    print(f"\n{title}, next to the plain awards of this run", file=out)
    for key, r in rows:
        if "plain_case" not in r:
            print(f"  {key}: its plain case did not run", file=out)
            continue
        print(
            f"  {key}: calls/op {_fmt(r['calls_per_op'], 2)} vs {_fmt(r['plain_calls_per_op'], 2)} "
            f"({r['plain_case']}; {_signed(r['calls_over_plain'])}); cpu ms/op {_fmt(r['cpu_ms_per_op'], 2)} vs "
            f"{_fmt(r['plain_cpu_ms_per_op'], 2)} ({_signed(r['cpu_ms_over_plain'])}); {_fmt(r['throughput'])}/s vs "
            f"{_fmt(r['plain_throughput'])}/s; p50 {_fmt(r['p50_ms'], 2)} vs {_fmt(r['plain_p50_ms'], 2)} ms",
            file=out,
        )


def print_cpu(results: dict[str, dict[str, Any]], out: Any = sys.stdout) -> None:
    print(
        "\nCPU ms per op in the measured window: the services (XP + Levels + Achievements = cpu ms/op; the gateway "
        "when it runs) and DynamoDB Local | floor: its load processes (the client) and DynamoDB Local | boto3 floor",
        file=out,
    )
    for key, r in results.items():
        by_process = r["cpu_ms_per_op_by_process"]
        names = [*SERVICES, *([GATEWAY] if GATEWAY in by_process else [])]
        service = " + ".join(f"{n} {_fmt(by_process.get(n), 2)}" for n in names)
        floors = " | ".join(
            f"{label} client {_fmt(r[f'{side}_client_cpu_ms_per_op'], 2)} ddb "
            f"{_fmt(r[f'{side}_dynamodb_local_cpu_ms_per_op'], 2)}"
            for side, label in (("floor", "floor"), ("boto3_floor", "boto3"))
        )
        print(
            f"  {key}: {service} = {_fmt(r['cpu_ms_per_op'], 2)}, ddb {_fmt(by_process.get('dynamodb_local'), 2)} "
            f"| {floors}",
            file=out,
        )
    print(
        "\nCores busy during each side, warm-up included (service | floor | boto3 floor): the machine, each "
        "service (and the gateway), DynamoDB Local, other processes",
        file=out,
    )
    for key, r in results.items():

        def side(cpu: dict[str, float]) -> str:
            names = [*SERVICES, *([GATEWAY] if GATEWAY in cpu else [])]
            parts = [
                f"total {cpu['total']:.2f}",
                *(f"{n} {cpu.get(n, 0):.2f}" for n in names),
                f"ddb {cpu.get('dynamodb_local', 0):.2f}",
                f"other {cpu['other']:.2f}",
            ]
            return " ".join(parts)

        print(
            f"  {key}: {side(r['cpu_cores'])} | {side(r['floor_cpu_cores'])} | {side(r['boto3_floor_cpu_cores'])}",
            file=out,
        )


def evaluate_targets(
    results: dict[str, dict[str, Any]], memory: dict[str, float], event_latency: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []

    def add(name: str, case: str, value: float | None, limit: float | None, ok: bool | None) -> None:
        targets.append(
            {
                "target": name,
                "case": case,
                "value": value,
                "limit": limit,
                "status": "skip" if ok is None else "pass" if ok else "fail",
            }
        )

    def value(case: str, name: str) -> float | None:
        record = results.get(case)
        return None if record is None else record[name]

    def check(name: str, case: str, field: str, limit: float, at_least: bool) -> None:
        found = value(case, field)
        add(name, case, found, limit, None if found is None else found >= limit if at_least else found <= limit)

    # Issue 10's targets (docs/benchmarks.md).
    for case in ("award_xp_c1", "award_xp_c16"):
        check(f"service CPU per award ({case}) <= 1.0 ms", case, "cpu_ms_per_op", 1.0, False)
    for case in ("get_progress_c1", "get_progress_c16"):
        check(f"service CPU per GetProgress ({case}) <= 0.6 ms", case, "cpu_ms_per_op", 0.6, False)
    check("AwardXp c16 throughput >= 0.6 x floor", "award_xp_c16", "ratio_to_floor", 0.6, True)
    check("AwardXp c16 throughput >= 350/s", "award_xp_c16", "throughput", 350.0, True)
    check("AwardXp c1 p50 <= floor p50 + 1.5 ms", "award_xp_c1", "p50_delta_ms", 1.5, False)
    check("AwardXp c16 p99 <= 1.5 x floor p99", "award_xp_c16", "p99_ratio", 1.5, False)
    check("GetProgress c16 throughput >= 0.6 x floor", "get_progress_c16", "ratio_to_floor", 0.6, True)
    check("GetProgress c1 p50 <= floor p50 + 1 ms", "get_progress_c1", "p50_delta_ms", 1.0, False)
    # Issue 14's: award to event in a watcher, with make up's poll interval.
    local = (event_latency or {}).get("poll_0.1s")
    add(
        "award answer -> event in a watcher p50 < 300 ms (poll 0.1 s)",
        EVENT_LATENCY,
        None if local is None else local["p50_ms"],
        300.0,
        None if local is None else local["p50_ms"] < 300.0 and local["missing"] == 0,
    )
    for name in SERVICES:
        add(
            f"{name} resident memory < {MEMORY_LIMIT_MB:.0f} MB",
            "",
            memory.get(name),
            MEMORY_LIMIT_MB,
            None if name not in memory else memory[name] < MEMORY_LIMIT_MB,
        )
    return targets


def print_targets(targets: list[dict[str, Any]], out: Any = sys.stdout) -> None:
    print("\nTargets", file=out)
    for t in targets:
        value = _fmt(t["value"], 2) if isinstance(t["value"], float) else _fmt(t["value"])
        print(f"  {t['status'].upper():4}  {t['target']}: {value}", file=out)


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    total_kb = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:")), 0)
    return {
        "cpu_model": models[0] if models else platform.processor(),
        "cpu_count": len(models) or os.cpu_count(),
        "memory_mb": round(total_kb / 1024),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# --- main ----------------------------------------------------------------------------------


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for case in CASES:
            print(f"{case.key}  ({case.operation}, {case.clients} clients{', one user' if case.hot_user else ''})")
        print(f"{EVENT_LATENCY}  (award answer to event in a watcher, at 20 awards/s, 1 client)")
        return 0
    cases = select_cases(args.cases)
    signal.signal(signal.SIGTERM, _interrupt)
    began = time.monotonic()
    pool_size = max((math.ceil(c.clients / n) for c in cases for n in CLIENTS_PER_PROCESS.values()), default=1)
    pool: WorkerPool | None = None
    cluster: BenchCluster | None = None
    results: dict[str, dict[str, Any]] = {}
    event_latency: dict[str, Any] = {}
    try:
        print(
            f"bench: {len(cases)} cases, {args.warmup:g} s warm-up + {args.duration:g} s each side; "
            f"{pool_size} load processes",
            flush=True,
        )
        for key, value in LOCAL_CREDENTIALS.items():  # before the load processes start: they inherit it
            os.environ.setdefault(key, value)
        pool = WorkerPool(pool_size)  # they import while the cluster starts
        cluster = start_cluster(profile=args.profile, gateway=any(case.transport == "http" for case in cases))
        print(
            f"bench: cluster up in {time.monotonic() - began:.0f} s (DynamoDB Local {cluster.dynamodb_endpoint}, "
            + ", ".join(f"{n} :{p}" for n, p in cluster.ports.items())
            + (f", gateway :{cluster.gateway_port}" if cluster.has_gateway else "")
            + f"); logs in {cluster.logs}",
            flush=True,
        )
        seed(cluster)
        for stage in dict.fromkeys(case.stage for case in cases if case.stage):
            # Three more services on the same DynamoDB Local, with the stage's own catalog.
            STAGE_SEEDS[stage](start_stage(cluster, stage, profile=args.profile))
            print(f"bench: stage {stage!r} up and seeded ({time.monotonic() - began:.0f} s)", flush=True)
        pool.wait_started()
        print(f"bench: seeded ({time.monotonic() - began:.0f} s)", flush=True)
        tokens = {"game": cluster.token(Role.GAME)}
        run_id = uuid.uuid4().hex[:6]
        warmup_figures: dict[str, dict[str, Any]] = {}
        if args.jvm_warmup > 0:  # before the first measured case
            warmup_figures = warm_up(cases, cluster, pool, args, run_id, tokens)
            print(f"bench: warmed up DynamoDB Local ({time.monotonic() - began:.0f} s)", flush=True)
        for case in cases:
            record = run_case(case, cluster, pool, args, run_id, tokens)
            results[case.key] = record
            add_gateway_overhead(case, results)
            add_counted_overhead(case, results)
            other = max(record[f"{side}cpu_cores"]["other"] for side in ("", "floor_", "boto3_floor_"))
            print(
                f"  {case.key}: {record['throughput']:.1f}/s p50 {_fmt(record['p50_ms'], 2)} ms | floor "
                f"{record['floor_throughput']:.1f}/s p50 {_fmt(record['floor_p50_ms'], 2)} ms | ratio "
                f"{_fmt(record['ratio_to_floor'], 2)} | boto3 floor {record['boto3_floor_throughput']:.1f}/s | "
                f"calls/op {_fmt(record['calls_per_op'], 2)} (min {record['min_calls_per_op']}) | "
                f"cpu {_fmt(record['cpu_ms_per_op'], 2)} ms/op"
                f"{f'  (other processes used {other:.2f} cores)' if other > OTHER_CPU_WARNING else ''}",
                flush=True,
            )
        if wants_event_latency(args.cases):
            event_latency = measure_event_latency(cluster, args.duration)
        # A stage's services as "<service>@<stage>".
        staged = [
            (f"{name}@{key}" if key else name, cluster.on(key), name)
            for key in ("", *cluster.stages)
            for name in _processes(cluster.on(key))
        ]
        memory = {label: on.rss_mb(name)["VmRSS"] for label, on, name in staged}
        memory_peak = {label: on.rss_mb(name)["VmHWM"] for label, on, name in staged}
        dynamodb_memory = status_memory_mb(cluster.processes["dynamodb"].pid).get("VmRSS")
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping", file=sys.stderr)
        return 130
    finally:
        if pool is not None:
            pool.close()
        if cluster is not None:
            cluster.stop()
            for name, path in cluster.profiles.items():
                print(f"bench: profile of {name}: {path}")
    elapsed = time.monotonic() - began
    print()
    if results:
        print_table(results)
    print_calls(results)
    print_gateway(results)
    print_counted(results)
    print_cpu(results)
    print(
        "\nResident memory after the run (MB): "
        + ", ".join(f"{n} {memory[n]:.1f} (peak {memory_peak[n]:.1f})" for n in memory)
        + f"; DynamoDB Local {_fmt(dynamodb_memory)}"
    )
    targets = evaluate_targets(results, memory, event_latency)
    print_targets(targets)
    output: dict[str, Any] = {
        **results,
        EVENT_LATENCY: event_latency,
        "memory_mb": memory,
        "memory_peak_mb": memory_peak,
        "dynamodb_local_memory_mb": dynamodb_memory,
        "targets": targets,
        "machine": machine(),
        "run": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "clients_per_process": CLIENTS_PER_PROCESS,
            "load_processes": pool_size,
            "floor_kind": FLOOR_KIND,
            "jvm_warmup_s": args.jvm_warmup,
            # Throughput per operation and side during the JVM warm-up (the lean floor's per round).
            "jvm_warmup_throughput": warmup_figures,
            "profile": args.profile,
            "total_runtime_s": round(elapsed, 1),
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(output, indent=2) + "\n")
    print(f"\nbench: wrote {args.output} ({elapsed:.0f} s in all)")
    return 0
