"""The EMF writer (common/cloudwatch_metrics.py) on a registry of its own:
the deltas it computes and the lines it writes, value by value."""

from __future__ import annotations

import io
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.cloudwatch_metrics import (
    MAX_VALUES_PER_METRIC,
    EmfMetricsFlusher,
    EmfMetricsWriter,
    start_cloudwatch_metrics,
)
from common.config import Settings
from tests.emf_spec import check_emf_line

NOW_S = 1_764_680_000.25
AWARD = "/rewards.v1.XpService/AwardXp"
PROGRESS = "/rewards.v1.XpService/GetProgress"


class Metrics:
    """The shapes of common/metrics.py's families, on a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpcs = Counter("rewards_rpc_requests_total", "", ["method", "code"], registry=self.registry)
        self.rpc_seconds = Histogram(
            "rewards_rpc_duration_seconds", "", ["method"], buckets=(0.01, 0.1, 1), registry=self.registry
        )
        self.reachable = Gauge("rewards_dynamodb_reachable", "", registry=self.registry)
        self.level_ups = Counter("rewards_level_ups_total", "", registry=self.registry)
        self.xp_awarded = Counter("rewards_xp_awarded_total", "", ["kind"], registry=self.registry)
        # Not ours (as the default registry's process_* and python_* families): never written.
        Counter("process_things_total", "", registry=self.registry).inc()
        self.out = io.StringIO()

    def writer(self, namespace: str = "rewards-prod", service: str = "xp") -> EmfMetricsWriter:
        return EmfMetricsWriter(namespace, service, registry=self.registry, stream=self.out, clock=lambda: NOW_S)

    def lines(self) -> list[dict[str, Any]]:
        """The documents written since the last call, each checked against the EMF specification."""
        text = self.out.getvalue()
        self.out.seek(0)
        self.out.truncate()
        assert text == "" or text.endswith("\n")
        return [check_emf_line(line) for line in text.splitlines()]


def metric_values(documents: list[dict[str, Any]], name: str) -> list[tuple[dict[str, str], Any]]:
    """(dimension values, value) of every line holding `name`."""
    found = []
    for document in documents:
        for directive in document["_aws"]["CloudWatchMetrics"]:
            if any(metric["Name"] == name for metric in directive["Metrics"]):
                dimensions = {d: document[d] for d in directive["Dimensions"][-1]}
                found.append((dimensions, document[name]))
    return found


def test_counters_are_written_as_their_increase_since_the_writer_started_then_since_the_last_flush() -> None:
    metrics = Metrics()
    metrics.rpcs.labels(AWARD, "OK").inc(7)  # before the writer: not counted
    writer = metrics.writer()
    metrics.rpcs.labels(AWARD, "OK").inc(3)
    metrics.rpcs.labels(AWARD, "UNAVAILABLE").inc()
    metrics.xp_awarded.labels("activity").inc(150)

    assert writer.flush() == 4
    documents = metrics.lines()
    assert sorted(metric_values(documents, "rpc_requests"), key=str) == [
        ({"Service": "xp", "method": AWARD, "code": "OK"}, 3),
        ({"Service": "xp", "method": AWARD, "code": "UNAVAILABLE"}, 1),
    ]
    assert metric_values(documents, "xp_awarded") == [({"Service": "xp", "kind": "activity"}, 150)]

    metrics.rpcs.labels(AWARD, "OK").inc(2)
    writer.flush()
    later = metrics.lines()
    # UNAVAILABLE did not change: left out, not written as 0.
    assert metric_values(later, "rpc_requests") == [({"Service": "xp", "method": AWARD, "code": "OK"}, 2)]
    assert metric_values(later, "xp_awarded") == []


def test_a_line_names_its_namespace_timestamp_units_and_dimension_sets() -> None:
    metrics = Metrics()
    writer = metrics.writer(namespace="rewards-staging", service="levels")
    metrics.rpcs.labels(PROGRESS, "NOT_FOUND").inc()
    writer.flush()
    [rpc_line] = [d for d in metrics.lines() if "rpc_requests" in d]
    assert rpc_line == {
        "_aws": {
            "Timestamp": 1_764_680_000_250,
            "CloudWatchMetrics": [
                {
                    "Namespace": "rewards-staging",
                    "Dimensions": [
                        ["Service"],
                        ["Service", "method"],
                        ["Service", "code"],
                        ["Service", "method", "code"],
                    ],
                    "Metrics": [{"Name": "rpc_requests", "Unit": "Count"}],
                }
            ],
        },
        "Service": "levels",
        "method": PROGRESS,
        "code": "NOT_FOUND",
        "rpc_requests": 1,
    }


def test_metrics_of_the_same_labels_share_a_line_and_gauges_are_their_current_value() -> None:
    metrics = Metrics()
    writer = metrics.writer()
    metrics.reachable.set(1)
    metrics.level_ups.inc(2)
    writer.flush()
    [line] = metrics.lines()
    assert line["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Service"]]
    assert line["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [
        {"Name": "dynamodb_reachable", "Unit": "None"},
        {"Name": "level_ups", "Unit": "Count"},
    ]
    assert (line["dynamodb_reachable"], line["level_ups"]) == (1, 2)
    # Nothing changed: the gauge is still written (an alarm on it needs a value every interval).
    writer.flush()
    assert [(d["dynamodb_reachable"], "level_ups" in d) for d in metrics.lines()] == [(1, False)]


def test_a_histogram_is_the_distribution_of_its_bucket_increases_in_seconds() -> None:
    metrics = Metrics()
    metrics.rpc_seconds.labels(AWARD).observe(0.5)  # before the writer: not counted
    writer = metrics.writer()
    for seconds in (0.004, 0.05, 0.07, 0.3, 7.0):
        metrics.rpc_seconds.labels(AWARD).observe(seconds)
    writer.flush()
    [line] = [d for d in metrics.lines() if "rpc_duration_seconds" in d]
    assert line["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [{"Name": "rpc_duration_seconds", "Unit": "Seconds"}]
    assert line["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Service"], ["Service", "method"]]
    distribution = line["rpc_duration_seconds"]
    # Each bucket by its upper bound; over the last bound (1 s) as twice it. The 0.01 bucket, empty, is left out.
    assert distribution["Values"] == [0.01, 0.1, 1, 2]
    assert distribution["Counts"] == [1, 2, 1, 1]
    assert (distribution["Min"], distribution["Max"], distribution["Count"]) == (0.01, 2, 5)
    assert distribution["Sum"] == pytest.approx(0.004 + 0.05 + 0.07 + 0.3 + 7.0)

    metrics.rpc_seconds.labels(AWARD).observe(0.02)
    writer.flush()
    [later] = [d for d in metrics.lines() if "rpc_duration_seconds" in d]
    assert later["rpc_duration_seconds"]["Values"] == [0.1]
    assert later["rpc_duration_seconds"]["Counts"] == [1]
    assert later["rpc_duration_seconds"]["Sum"] == pytest.approx(0.02)


def test_nothing_changed_writes_the_gauges_alone() -> None:
    metrics = Metrics()
    metrics.rpcs.labels(AWARD, "OK").inc()
    metrics.rpc_seconds.labels(AWARD).observe(0.1)
    writer = metrics.writer()
    assert writer.flush() == 1
    [line] = metrics.lines()
    assert [m["Name"] for m in line["_aws"]["CloudWatchMetrics"][0]["Metrics"]] == ["dynamodb_reachable"]
    assert line["dynamodb_reachable"] == 0


def test_without_a_gauge_nothing_changed_writes_nothing() -> None:
    registry = CollectorRegistry()
    Counter("rewards_level_ups_total", "", registry=registry).inc()
    out = io.StringIO()
    writer = EmfMetricsWriter("ns", "levels", registry=registry, stream=out, clock=lambda: NOW_S)
    assert writer.flush() == 0
    assert out.getvalue() == ""


def test_a_distribution_of_more_than_100_values_takes_several_lines() -> None:
    registry = CollectorRegistry()
    bounds = [round(0.001 * (i + 1), 3) for i in range(150)]
    wide = Histogram("rewards_wide_seconds", "", ["operation"], buckets=bounds, registry=registry)
    out = io.StringIO()
    writer = EmfMetricsWriter("ns", "events", registry=registry, stream=out, clock=lambda: NOW_S)
    for bound in bounds:  # one observation in each of the 150 finite buckets
        wide.labels("Query").observe(bound)
    wide.labels("Query").observe(5.0)  # and one over the last bound

    assert writer.flush() == 2
    documents = [check_emf_line(line) for line in out.getvalue().splitlines()]
    parts = [document["wide_seconds"] for document in documents]
    assert [len(part["Values"]) for part in parts] == [MAX_VALUES_PER_METRIC, 51]
    assert parts[0]["Values"] == bounds[:100] and parts[1]["Values"] == [*bounds[100:], 0.3]
    assert sum(sum(part["Counts"]) for part in parts) == 151
    assert [part["Count"] for part in parts] == [100, 51]
    assert sum(part["Sum"] for part in parts) == pytest.approx(sum(bounds) + 5.0)
    assert all(document["operation"] == "Query" for document in documents)


def test_more_than_100_metrics_of_one_label_set_take_several_lines() -> None:
    registry = CollectorRegistry()
    counters = [Counter(f"rewards_thing_{i}_total", "", registry=registry) for i in range(130)]
    out = io.StringIO()
    writer = EmfMetricsWriter("ns", "xp", registry=registry, stream=out, clock=lambda: NOW_S)
    for i, counter in enumerate(counters):
        counter.inc(i + 1)
    assert writer.flush() == 2
    documents = [check_emf_line(line) for line in out.getvalue().splitlines()]
    assert [len(d["_aws"]["CloudWatchMetrics"][0]["Metrics"]) for d in documents] == [100, 30]
    written = {name: value for d in documents for name, value in d.items() if name.startswith("thing_")}
    assert written == {f"thing_{i}": i + 1 for i in range(130)}


def test_an_empty_label_value_is_written_as_none() -> None:
    metrics = Metrics()
    writer = metrics.writer()
    metrics.xp_awarded.labels("").inc(5)
    writer.flush()
    assert metric_values(metrics.lines(), "xp_awarded") == [({"Service": "xp", "kind": "none"}, 5)]


def test_the_flusher_flushes_once_more_when_stopped() -> None:
    metrics = Metrics()
    flusher = EmfMetricsFlusher(metrics.writer(), interval_s=3600).start()
    metrics.level_ups.inc(4)
    flusher.stop()
    assert [d["level_ups"] for d in metrics.lines() if "level_ups" in d] == [4]


def test_the_namespace_setting_switches_it_on() -> None:
    assert Settings().cloudwatch_metrics_namespace == ""
    assert start_cloudwatch_metrics("xp", Settings()) is None
    env = {"REWARDS_CLOUDWATCH_METRICS_NAMESPACE": "rewards-prod", "REWARDS_CLOUDWATCH_METRICS_INTERVAL_S": "15"}
    settings = Settings.from_env(env)
    assert (settings.cloudwatch_metrics_namespace, settings.cloudwatch_metrics_interval_s) == ("rewards-prod", 15.0)
    flusher = start_cloudwatch_metrics("xp", settings)
    assert isinstance(flusher, EmfMetricsFlusher)
    flusher.stop()
