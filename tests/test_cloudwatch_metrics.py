"""Metrics to CloudWatch (common/cloudwatch_metrics.py): the EMF lines that
real servers write count what they served, and every line is a valid EMF
document. In the test process (the servers of tests.cluster, one registry for
all of them), then as the real entry points, whose stdout CloudWatch reads."""

from __future__ import annotations

import io
import signal
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from common.cloudwatch_metrics import EmfMetricsWriter
from rewards.v1 import levels_pb2, levels_pb2_grpc, xp_pb2, xp_pb2_grpc
from tests.cluster import Cluster, authorized_channel, unique
from tests.emf_spec import check_emf_line
from tests.process_cluster import SERVICES, start_process_cluster

NAMESPACE = "rewards-test"
AWARD = "/rewards.v1.XpService/AwardXp"


def summed(documents: list[dict[str, Any]], name: str, **dimensions: str) -> float:
    """The sum of `name` over the lines whose dimension values include `dimensions`
    (a distribution counts its observations)."""
    total = 0.0
    for document in documents:
        if name in document and all(document.get(key) == value for key, value in dimensions.items()):
            value = document[name]
            total += value["Count"] if isinstance(value, dict) else value
    return total


def award_three_times_and_once_again(xp: xp_pb2_grpc.XpServiceStub, user: str, activity_id: str) -> None:
    """Three awards of a fresh user (3 x 120 XP: levels 2 and 3 of the standard
    levels), a duplicate of the first (OK, no XP) and a refused one."""
    for i in range(3):
        xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user, activity_id=activity_id, request_id=f"r{i}"))
    xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user, activity_id=activity_id, request_id="r0"))
    with pytest.raises(grpc.RpcError):
        xp.AwardXp(xp_pb2.AwardXpRequest(user_id="", activity_id=activity_id))


def put_activity(xp: xp_pb2_grpc.XpServiceStub, xp_amount: int) -> str:
    activity_id = unique("emf-activity")
    xp.PutActivity(
        xp_pb2.PutActivityRequest(activity=xp_pb2.Activity(activity_id=activity_id, name="Win", xp=xp_amount))
    )
    return activity_id


def test_in_process_servers_lines_count_the_awards_calls_xp_and_level_ups(cluster: Cluster) -> None:
    out = io.StringIO()
    activity_id = put_activity(cluster.xp, 120)
    writer = EmfMetricsWriter(NAMESPACE, "xp", stream=out)  # the process's registry, as the servers count
    award_three_times_and_once_again(cluster.xp, unique("emf-player"), activity_id)
    writer.flush()

    documents = [check_emf_line(line) for line in out.getvalue().splitlines()]
    assert {d["Service"] for d in documents} == {"xp"}
    assert {d["_aws"]["CloudWatchMetrics"][0]["Namespace"] for d in documents} == {NAMESPACE}
    assert summed(documents, "rpc_requests", method=AWARD, code="OK") == 4
    assert summed(documents, "rpc_requests", method=AWARD, code="INVALID_ARGUMENT") == 1
    assert summed(documents, "rpc_duration_seconds", method=AWARD) == 5
    assert summed(documents, "xp_awarded", kind="activity") == 360
    assert summed(documents, "level_ups") == 2
    [award_line] = [d for d in documents if d.get("method") == AWARD and d.get("code") == "OK"]
    assert award_line["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [
        ["Service"],
        ["Service", "method"],
        ["Service", "code"],
        ["Service", "method", "code"],
    ]


def test_each_service_process_writes_its_lines_on_stdout_and_the_last_at_sigterm(
    dynamodb_endpoint: str, tmp_path: Path
) -> None:
    env = {"REWARDS_CLOUDWATCH_METRICS_NAMESPACE": NAMESPACE, "REWARDS_CLOUDWATCH_METRICS_INTERVAL_S": "0.5"}
    cluster = start_process_cluster(dynamodb_endpoint, tmp_path, extra_env=env)
    try:
        with (
            authorized_channel(f"localhost:{cluster.ports['xp']}") as xp_channel,
            authorized_channel(f"localhost:{cluster.ports['levels']}") as levels_channel,
        ):
            levels = levels_pb2_grpc.LevelsServiceStub(levels_channel)
            for level, xp_required in ((1, 0), (2, 100), (3, 300)):
                levels.PutLevel(
                    levels_pb2.PutLevelRequest(level=levels_pb2.Level(level=level, xp_required=xp_required))
                )
            xp = xp_pb2_grpc.XpServiceStub(xp_channel)
            award_three_times_and_once_again(xp, f"emf-{uuid.uuid4().hex[:8]}", put_activity(xp, 120))
        # The last calls are written by the flush after the drain, whatever the interval's phase.
        for process in cluster.processes.values():
            process.send_signal(signal.SIGTERM)
        assert [process.wait(timeout=30) for process in cluster.processes.values()] == [0] * len(SERVICES)
    finally:
        cluster.stop()

    by_service = {
        name: [check_emf_line(line) for line in (tmp_path / f"{name}.stdout").read_text().splitlines()]
        for name in SERVICES
    }
    for name, documents in by_service.items():  # the events service too; each line of its own service
        assert documents, f"{name} wrote no line"
        assert {d["Service"] for d in documents} == {name}
        assert {d["_aws"]["CloudWatchMetrics"][0]["Namespace"] for d in documents} == {NAMESPACE}
        assert all(d["dynamodb_reachable"] == 1 for d in documents if "dynamodb_reachable" in d)
    xp_lines, levels_lines = by_service["xp"], by_service["levels"]
    assert summed(xp_lines, "rpc_requests", method=AWARD, code="OK") == 4
    assert summed(xp_lines, "rpc_requests", method=AWARD, code="INVALID_ARGUMENT") == 1
    assert summed(xp_lines, "rpc_duration_seconds", method=AWARD) == 5
    assert summed(xp_lines, "xp_awarded", kind="activity") == 360
    assert summed(levels_lines, "level_ups") == 2
    assert summed(levels_lines, "rpc_requests", method="/rewards.v1.LevelsService/PutLevel", code="OK") == 3
    assert summed(xp_lines, "dynamodb_calls", operation="TransactWriteItems", outcome="ok") >= 3
    # stderr keeps the JSON logs, none of them EMF.
    assert "CloudWatchMetrics" not in (tmp_path / "xp.log").read_text()
