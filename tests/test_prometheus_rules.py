"""deploy/prometheus/ and deploy/grafana/ against promtool (Debian's `prometheus`
package) and the code: the alert rules pass `promtool check rules` and their
unit tests, carry exactly the alarms of common/alarms.py, and every PromQL
query of the Grafana dashboard parses and names only metrics that
common/metrics.py defines."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import common.metrics
from common.alarms import (
    ALARM_NAMES,
    ALARMS,
    LOCAL_MINIMUM_TASKS,
    STREAMING_METHODS,
    SYSTEM_ERROR_CODES,
    THROTTLING_CODES,
)
from devcluster.dynamodb_local import REPO_ROOT
from devcluster.prometheus import ALERTS_FILE, EXAMPLE_CONFIG

ALERTS_TEST = ALERTS_FILE.with_name("alerts_test.yml")
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "rewards.json"
# What the dashboard's Grafana variables stand for when its queries are checked outside Grafana.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": "xp|achievements|levels|events"}

INSTALL_HINT = "apt-get install -y --no-install-recommends prometheus chromium (scripts/install.sh does it)"


def promtool(*args: str | Path, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail(f"promtool is not installed: {INSTALL_HINT}")
    return subprocess.run(["promtool", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60)


def alert_rules(path: Path = ALERTS_FILE) -> dict[str, dict[str, Any]]:
    rules = [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]
    return {rule["alert"]: rule for rule in rules if "alert" in rule}


def test_the_docs_checks_are_these_and_pass() -> None:
    """docs/prometheus.md's block of promtool commands, run as written."""
    text = (REPO_ROOT / "docs" / "prometheus.md").read_text()
    block = text.split("```sh\npromtool check rules", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line) for line in ("promtool check rules" + block).strip().splitlines()]
    assert [command[:2] for command in commands] == [["promtool", "check"], ["promtool", "test"], ["promtool", "check"]]
    for command in commands:
        done = promtool(*command[1:])
        assert done.returncode == 0, (command, done.stdout + done.stderr)


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", ALERTS_FILE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout  # 7 alerts, 4 services' minimum tasks


def test_the_rules_pass_their_unit_tests() -> None:
    done = promtool("test", "rules", ALERTS_TEST)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_alerts_are_the_alarms_of_common_alarms() -> None:
    rules = alert_rules()
    assert set(rules) == ALARM_NAMES
    for alarm in ALARMS:
        rule = rules[alarm.name]
        assert rule["labels"] == {"severity": alarm.severity}, alarm.name
        assert rule["annotations"]["runbook_url"] == f"docs/deploy.md#alarm-{alarm.name.lower()}"
        assert rule["annotations"]["summary"], alarm.name
    assert {alarm.severity for alarm in ALARMS} == {"page", "ticket"}


def test_the_rules_use_the_error_codes_of_common_alarms() -> None:
    rules = alert_rules()
    assert f'code=~"{"|".join(THROTTLING_CODES)}"' in rules["DynamoDBThrottles"]["expr"]
    assert f'code=~"{"|".join(SYSTEM_ERROR_CODES)}"' in rules["DynamoDBSystemErrors"]["expr"]
    assert all(f'method!="{method}"' in rules["RpcLatencyP99"]["expr"] for method in STREAMING_METHODS)


def test_each_service_has_the_local_minimum_of_tasks() -> None:
    rules = [rule for group in yaml.safe_load(ALERTS_FILE.read_text())["groups"] for rule in group["rules"]]
    minimums = {rule["labels"]["job"]: rule["expr"] for rule in rules if rule.get("record") == "rewards:tasks_minimum"}
    assert minimums == {job: f"vector({LOCAL_MINIMUM_TASKS})" for job in ("xp", "achievements", "levels", "events")}


def test_each_alert_has_a_case_that_fires_and_one_that_must_not() -> None:
    cases: dict[str, set[bool]] = {name: set() for name in ALARM_NAMES}
    for group in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for case in group["alert_rule_test"]:
            cases[case["alertname"]].add(bool(case["exp_alerts"]))
    assert cases == {name: {True, False} for name in ALARM_NAMES}


@pytest.mark.parametrize("name", sorted(ALARM_NAMES))
def test_the_unit_tests_fail_when_an_alert_never_fires(tmp_path: Path, name: str) -> None:
    """The tests' firing cases are real: with the alert's expression replaced by one that never
    holds, `promtool test rules` fails on that alert."""
    groups = yaml.safe_load(ALERTS_FILE.read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                rule["expr"] = "vector(0) > 1"
    (tmp_path / ALERTS_FILE.name).write_text(yaml.safe_dump(groups))
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    done = promtool("test", "rules", ALERTS_TEST.name, cwd=tmp_path)
    assert done.returncode == 1, done.stdout
    failed = set(re.findall(r"alertname: (\w+),", done.stdout + done.stderr))
    assert failed == {name}


def test_the_example_config_is_fresh_and_valid() -> None:
    fresh = subprocess.run(
        [sys.executable, "-m", "devcluster.prometheus", "--check", str(EXAMPLE_CONFIG)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert fresh.returncode == 0, fresh.stderr
    done = promtool("check", "config", EXAMPLE_CONFIG)
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = [job["job_name"] for job in yaml.safe_load(EXAMPLE_CONFIG.read_text())["scrape_configs"]]
    assert jobs == ["xp", "achievements", "levels", "events"]


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def defined_series() -> set[str]:
    """The series names common/metrics.py's metrics are exposed under."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names = set()
    for metric in vars(common.metrics).values():
        if isinstance(metric, MetricWrapperBase):
            for family in metric.describe():
                names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def test_the_dashboard_takes_its_datasource_as_a_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    uses = [panel["datasource"] for panel in dashboard["panels"]]
    uses += [target["datasource"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert all(use == {"type": "prometheus", "uid": "${datasource}"} for use in uses)
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Awards per second", "RPCs per second, by code", "p99 latency per method", "Targets up"} <= titles
    assert {"DynamoDB reachable", "DynamoDB throttles per second", "DynamoDB errors per second, by code"} <= titles


def grafana_free(query: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        query = query.replace(variable, value)
    assert "$" not in query, query
    return query


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool parses each query, as the expression of a recording rule."""
    queries = dashboard_queries()
    rules = [{"record": f"dashboard:query_{i}", "expr": grafana_free(q)} for i, q in enumerate(queries)]
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", rules_file)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(queries)} rules found" in done.stdout


def test_every_dashboard_query_names_only_defined_metrics() -> None:
    """Every selector in the dashboard is written `name{...}`: the names before a brace are the
    metrics it reads."""
    allowed = defined_series() | {"up"}
    for query in dashboard_queries():
        names = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", query))
        assert names, query
        assert names <= allowed, (query, names - allowed)
