"""The Prometheus metrics (common/metrics.py, defined there once) written as
CloudWatch Embedded Metric Format (EMF) log lines, for deployments without a
Prometheus scraper: CloudWatch Logs extracts the metrics from the lines the
awslogs driver ships. Off unless REWARDS_CLOUDWATCH_METRICS_NAMESPACE is set.

Every interval the writer reads the registry and writes what changed since its
last flush: counters as their increase (unit Count, zero increases left out),
histograms as the increase of each bucket (unit Seconds, a Values/Counts
distribution, so that CloudWatch computes percentiles), gauges as their value.
A family `rewards_<name>` (counters: `rewards_<name>_total`) becomes the
metric `<name>`. Dimensions: Service plus the family's labels, aggregated per
service, per label and per all labels.

Hand-written JSON rather than aws-embedded-metrics: that library records
values one call at a time and flushes through its own asyncio sink, while here
the values already sit in the Prometheus registry and only the deltas are new;
the format is a few lines of dicts."""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from prometheus_client import REGISTRY, CollectorRegistry

from common.config import Settings

log = logging.getLogger("rewards.cloudwatch_metrics")

PREFIX = "rewards_"
SERVICE_DIMENSION = "Service"
# EMF's limits: metrics in one directive, values in one metric's array.
MAX_METRICS_PER_LINE = 100
MAX_VALUES_PER_METRIC = 100
MIN_INTERVAL_S = 0.1


def histogram_unit(family_name: str) -> str:
    return "Seconds" if family_name.endswith("_seconds") else "None"


def emf_metric_name(family_name: str) -> str:
    """`rewards_rpc_requests` -> `rpc_requests` (prometheus_client already
    drops a counter's `_total` from its family's name)."""
    name = family_name.removeprefix(PREFIX)
    return name.removesuffix("_total")


def bucket_representatives(upper_bounds: list[float]) -> list[float]:
    """The value each bucket's observations are reported as: the bucket's
    upper bound (so a percentile reads "at most"), and for the +Inf bucket
    twice the last finite bound (over 10 s shows as 20 s)."""
    finite = [bound for bound in upper_bounds if math.isfinite(bound)]
    overflow = 2 * finite[-1] if finite else 1.0
    return [bound if math.isfinite(bound) else overflow for bound in upper_bounds]


@dataclass
class _Entry:
    """One metric's value on a line: a number, or a Values/Counts distribution."""

    name: str
    unit: str
    value: Any


@dataclass
class _Group:
    """Metrics with the same labels and label values: they share one line's dimensions."""

    labels: tuple[tuple[str, str], ...]
    entries: list[_Entry] = field(default_factory=list)


def dimension_sets(label_names: Iterable[str]) -> list[list[str]]:
    """[Service], [Service, <each label>], [Service, <all labels>], without repeats."""
    names = list(label_names)
    sets = [[SERVICE_DIMENSION]] + [[SERVICE_DIMENSION, name] for name in names]
    if len(names) > 1:
        sets.append([SERVICE_DIMENSION, *names])
    return sets


class EmfMetricsWriter:
    """Writes the deltas of `registry`'s `rewards_*` families as EMF lines to
    `stream`, one JSON object a line, at each flush(). The first flush counts
    from when the writer was made. Not thread-safe: one flusher at a time."""

    def __init__(
        self,
        namespace: str,
        service: str,
        *,
        registry: CollectorRegistry = REGISTRY,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._namespace = namespace
        self._service = service
        self._registry = registry
        self._stream = stream
        self._clock = clock
        # The last value written (or seen at start) of each counter and bucket series.
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._groups()  # the base of the first deltas

    def flush(self) -> int:
        """Writes the lines for what changed since the last flush; returns how many."""
        timestamp_ms = int(self._clock() * 1000)
        lines = [self._line(timestamp_ms, group.labels, entries) for group, entries in self._packed()]
        stream = self._stream or sys.stdout
        for line in lines:
            # One write and flush a line: a line under the pipe's atomic size is never interleaved
            # with another worker process's on the same stdout.
            stream.write(line + "\n")
            stream.flush()
        return len(lines)

    def _packed(self) -> list[tuple[_Group, list[_Entry]]]:
        """Each group's entries split into lines: at most MAX_METRICS_PER_LINE, and a name once a line
        (a distribution of more than MAX_VALUES_PER_METRIC values takes several lines)."""
        packed: list[tuple[_Group, list[_Entry]]] = []
        for group in self._groups():
            lines: list[list[_Entry]] = []
            for entry in group.entries:
                for line in lines:
                    if len(line) < MAX_METRICS_PER_LINE and all(other.name != entry.name for other in line):
                        line.append(entry)
                        break
                else:
                    lines.append([entry])
            packed.extend((group, line) for line in lines)
        return packed

    def _line(self, timestamp_ms: int, labels: tuple[tuple[str, str], ...], entries: list[_Entry]) -> str:
        document: dict[str, Any] = {
            "_aws": {
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [
                    {
                        "Namespace": self._namespace,
                        "Dimensions": dimension_sets(name for name, _ in labels),
                        "Metrics": [{"Name": entry.name, "Unit": entry.unit} for entry in entries],
                    }
                ],
            },
            SERVICE_DIMENSION: self._service,
            **dict(labels),
        }
        for entry in entries:
            document[entry.name] = entry.value
        return json.dumps(document, separators=(",", ":"))

    def _groups(self) -> list[_Group]:
        """The entries of every changed series, by label set, keeping the
        values read as the base of the next deltas. An empty label value
        becomes "none" (CloudWatch refuses an empty dimension value)."""
        groups: dict[tuple[tuple[str, str], ...], _Group] = {}

        def entry_for(labels: dict[str, str]) -> _Group:
            key = tuple((name, value or "none") for name, value in labels.items())
            return groups.setdefault(key, _Group(key))

        for family in self._registry.collect():
            if not family.name.startswith(PREFIX):
                continue
            name = emf_metric_name(family.name)
            if family.type == "counter":
                for sample in family.samples:
                    if not sample.name.endswith("_total"):
                        continue  # _created
                    delta = self._delta(sample.name, sample.labels, sample.value)
                    if delta > 0:
                        entry_for(sample.labels).entries.append(_Entry(name, "Count", _number(delta)))
            elif family.type == "gauge":
                for sample in family.samples:
                    entry_for(sample.labels).entries.append(_Entry(name, "None", _number(sample.value)))
            elif family.type == "histogram":
                for labels, distribution in self._histogram_deltas(family.samples):
                    group = entry_for(labels)
                    unit = histogram_unit(family.name)
                    group.entries.extend(_Entry(name, unit, part) for part in distribution)
        return [group for group in groups.values() if group.entries]

    def _delta(self, series: str, labels: dict[str, str], value: float) -> float:
        key = (series, tuple(sorted(labels.items())))
        last = self._last.get(key, 0.0)
        self._last[key] = value
        # A smaller value is a reset (a registry made anew): all of it is new.
        return value - last if value >= last else value

    def _histogram_deltas(self, samples: list[Any]) -> list[tuple[dict[str, str], list[Any]]]:
        """Per label set (le aside): the distribution of the observations since
        the last flush, in parts of at most MAX_VALUES_PER_METRIC values; none
        when nothing was observed."""
        by_labels: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        for sample in samples:
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            series = by_labels.setdefault(tuple(labels.items()), {"labels": labels, "buckets": []})
            if sample.name.endswith("_bucket"):
                series["buckets"].append((float(sample.labels["le"]), sample))
            elif sample.name.endswith("_sum"):
                series["sum_sample"] = sample
        found: list[tuple[dict[str, str], list[Any]]] = []
        for series in by_labels.values():
            buckets = sorted(series["buckets"], key=lambda bucket: bucket[0])
            cumulative = [self._delta(s.name, s.labels, s.value) for _, s in buckets]
            sum_sample = series.get("sum_sample")
            sum_delta = self._delta(sum_sample.name, sum_sample.labels, sum_sample.value) if sum_sample else 0.0
            counts = [cumulative[0], *(b - a for a, b in zip(cumulative, cumulative[1:], strict=False))]
            representatives = bucket_representatives([bound for bound, _ in buckets])
            observed = [(value, count) for value, count in zip(representatives, counts, strict=True) if count > 0]
            if not observed:
                continue
            total = sum(count for _, count in observed)
            parts = []
            for start in range(0, len(observed), MAX_VALUES_PER_METRIC):
                chunk = observed[start : start + MAX_VALUES_PER_METRIC]
                chunk_count = sum(count for _, count in chunk)
                parts.append(
                    {
                        "Values": [_number(value) for value, _ in chunk],
                        "Counts": [_number(count) for _, count in chunk],
                        "Max": _number(chunk[-1][0]),
                        "Min": _number(chunk[0][0]),
                        "Count": _number(chunk_count),
                        # The exact sum, shared in proportion to the counts when the values take several lines.
                        "Sum": sum_delta if len(observed) <= MAX_VALUES_PER_METRIC else sum_delta * chunk_count / total,
                    }
                )
            found.append((series["labels"], parts))
        return found


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


class EmfMetricsFlusher:
    """An EmfMetricsWriter flushed every `interval_s` by a daemon thread (off
    the event loop: the request path never waits for it), and once more by
    stop() (graceful shutdown)."""

    def __init__(self, writer: EmfMetricsWriter, interval_s: float) -> None:
        self._writer = writer
        # Not 0: a thread flushing without a pause would take a core.
        self._interval_s = max(interval_s, MIN_INTERVAL_S)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cloudwatch-metrics", daemon=True)

    def start(self) -> EmfMetricsFlusher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            self._flush()

    def _flush(self) -> None:
        try:
            self._writer.flush()
        except Exception:  # a broken stdout or a bug here must not end the metrics for good
            log.exception("writing the CloudWatch metrics failed")

    def stop(self) -> None:
        """Stops the thread, then flushes what changed since its last flush."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        self._flush()


def start_cloudwatch_metrics(service: str, settings: Settings) -> EmfMetricsFlusher | None:
    """The flusher of this process's metrics when settings.cloudwatch_metrics_namespace is set."""
    if not settings.cloudwatch_metrics_namespace:
        return None
    writer = EmfMetricsWriter(settings.cloudwatch_metrics_namespace, service)
    return EmfMetricsFlusher(writer, settings.cloudwatch_metrics_interval_s).start()
