"""What CloudWatch's Embedded Metric Format specification requires of one log
line, checked member by member: the tests of common/cloudwatch_metrics.py
hold every line written to it."""

from __future__ import annotations

import json
import math
from typing import Any

# CloudWatch's metric units (MetricDatum.Unit).
UNITS = {
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
    "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
    "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
    "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
}  # fmt: skip
MAX_METRICS = 100
MAX_VALUES = 100
MAX_DIMENSIONS = 30


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_value(name: str, value: Any) -> None:
    if _is_number(value):
        return
    if isinstance(value, list):
        assert 0 < len(value) <= MAX_VALUES and all(map(_is_number, value)), (name, value)
        return
    # A distribution (Values with their Counts), as the CloudWatch agent writes histograms.
    assert isinstance(value, dict), (name, value)
    assert set(value) <= {"Values", "Counts", "Max", "Min", "Count", "Sum"}, (name, value)
    values, counts = value["Values"], value["Counts"]
    assert 0 < len(values) == len(counts) <= MAX_VALUES, (name, value)
    assert all(map(_is_number, values)) and all(_is_number(c) and c > 0 for c in counts), (name, value)
    assert all(_is_number(value[k]) for k in ("Max", "Min", "Count", "Sum") if k in value), (name, value)


def check_emf_line(line: str) -> dict[str, Any]:
    """The line's document, after asserting that it is a valid EMF document."""
    document = json.loads(line)
    assert isinstance(document, dict) and line.strip().startswith("{"), line
    metadata = document["_aws"]
    assert set(metadata) == {"Timestamp", "CloudWatchMetrics"}, metadata
    assert isinstance(metadata["Timestamp"], int) and metadata["Timestamp"] > 10**12, "Timestamp is in ms"
    directives = metadata["CloudWatchMetrics"]
    assert isinstance(directives, list) and directives, metadata
    for directive in directives:
        assert set(directive) == {"Namespace", "Dimensions", "Metrics"}, directive
        assert isinstance(directive["Namespace"], str) and 1 <= len(directive["Namespace"]) <= 255
        for dimension_set in directive["Dimensions"]:
            assert isinstance(dimension_set, list) and len(dimension_set) <= MAX_DIMENSIONS, dimension_set
            for dimension in dimension_set:
                value = document[dimension]
                assert isinstance(value, str) and value.strip() and len(value) <= 1024, (dimension, value)
        metrics = directive["Metrics"]
        assert 0 < len(metrics) <= MAX_METRICS, len(metrics)
        names = [metric["Name"] for metric in metrics]
        assert len(set(names)) == len(names), names
        for metric in metrics:
            assert set(metric) <= {"Name", "Unit", "StorageResolution"}, metric
            assert 1 <= len(metric["Name"]) <= 255
            assert metric.get("Unit", "None") in UNITS, metric
            _check_value(metric["Name"], document[metric["Name"]])
    return document
