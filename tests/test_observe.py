"""`make observe`'s Prometheus, for real: a cluster of this test's own (free
ports, beside any `make up`), the local Prometheus started through the same
functions devcluster uses, XP awarded steadily for half a minute; then
Prometheus' HTTP API shows the awards and the alert rules, and headless
Chromium takes a screenshot of its graph of awards per second.

REWARDS_UPDATE_SCREENSHOT=1 writes that screenshot to
docs/images/awards-per-second.png, the README's picture."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from common.alarms import ALARM_NAMES
from devcluster.dynamodb_local import REPO_ROOT, free_port
from devcluster.log_files import open_log
from devcluster.prometheus import (
    ALERTS_FILE,
    SERVICE_JOBS,
    awards_per_second,
    graph_url,
    prometheus_config,
    start_prometheus,
    wait_prometheus_ready,
)
from rewards.v1 import xp_pb2, xp_pb2_grpc
from tests.cluster import authorized_channel
from tests.process_cluster import ProcessCluster, start_process_cluster
from tests.test_prometheus_rules import GRAFANA_VARIABLES, INSTALL_HINT, dashboard_queries

SCREENSHOT = REPO_ROOT / "docs" / "images" / "awards-per-second.png"
SCREENSHOT_SIZE = (1200, 800)
AWARDING_S = 25.0
# What the screenshot's graph spans: about the awards' time.
GRAPH_RANGE = "30s"
# Scraped and evaluated every second: the half minute of awards makes a graph.
SCRAPE_INTERVAL_S = 1.0
CHROMIUM = shutil.which("chromium")


@pytest.fixture
def process_cluster(dynamodb_endpoint: str, tmp_path: Path) -> Iterator[ProcessCluster]:
    (tmp_path / "logs").mkdir()
    cluster = start_process_cluster(dynamodb_endpoint, tmp_path / "logs")
    yield cluster
    cluster.stop()


@pytest.fixture
def prometheus(process_cluster: ProcessCluster, tmp_path: Path) -> Iterator[str]:
    """The local Prometheus scraping the test's cluster; its base URL."""
    if shutil.which("prometheus") is None or CHROMIUM is None:
        pytest.fail(f"prometheus or chromium is not installed: {INSTALL_HINT}")
    targets = {job: [f"127.0.0.1:{process_cluster.metrics_ports[job]}"] for job in SERVICE_JOBS}
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config(targets, [str(ALERTS_FILE)], SCRAPE_INTERVAL_S))
    port = free_port()
    log = tmp_path / "logs" / "prometheus.log"
    process = start_prometheus(config, tmp_path / "prometheus-data", port, open_log(log))
    base_url = f"http://127.0.0.1:{port}"
    try:
        assert wait_prometheus_ready(base_url, process), log.read_text()
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def api(base_url: str, path: str, **params: str) -> Any:
    url = f"{base_url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def instant_values(base_url: str, query: str) -> dict[str, float]:
    """The query's result now, as {job label (or "") : value}."""
    result = api(base_url, "query", query=query)["result"]
    return {sample["metric"].get("job", ""): float(sample["value"][1]) for sample in result}


@contextmanager
def steady_awards(xp_port: int) -> Iterator[list[int]]:
    """Awards one after another, 50 ms apart, spread over a few players, in a thread, until the
    block ends; yields [the number made so far]."""
    made = [0]
    failures: list[BaseException] = []
    stop = threading.Event()
    with authorized_channel(f"localhost:{xp_port}") as channel:
        xp = xp_pb2_grpc.XpServiceStub(channel)
        xp.PutActivity(xp_pb2.PutActivityRequest(activity=xp_pb2.Activity(activity_id="observe", name="O", xp=10)))
        players = [f"observe-{uuid.uuid4().hex[:8]}-{n}" for n in range(5)]

        def award() -> None:
            try:
                while not stop.wait(0.05):
                    xp.AwardXp(xp_pb2.AwardXpRequest(user_id=players[made[0] % 5], activity_id="observe"), timeout=5)
                    made[0] += 1
            except BaseException as error:  # reported by the test, not lost with the thread
                failures.append(error)

        thread = threading.Thread(target=award, name="steady-awards")
        thread.start()
        try:
            yield made
        finally:
            stop.set()
            thread.join(timeout=10)
    assert failures == []


def screenshot(url: str, path: Path, user_data_dir: Path) -> None:
    assert CHROMIUM is not None
    width, height = SCREENSHOT_SIZE
    command = [
        CHROMIUM,
        "--headless",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={user_data_dir}",
        f"--screenshot={path}",
        f"--window-size={width},{height}",
        # Virtual time runs the page's scripts (the query, the drawing) before the picture is taken.
        "--virtual-time-budget=10000",
    ]
    if os.geteuid() == 0:
        command.append("--no-sandbox")  # Chromium refuses to run as root inside its sandbox
    done = subprocess.run([*command, url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and path.exists(), done.stderr[-2000:]


def png_pixels(data: bytes) -> tuple[int, int, set[bytes]]:
    """Width, height and the distinct colours of an 8-bit RGB or RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat, header = 8, b"", b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour_type in (2, 6), (depth, colour_type)
    channels = 3 if colour_type == 2 else 4
    stride = width * channels
    raw = zlib.decompress(idat)
    previous = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(height):
        start = y * (stride + 1)
        kind, row = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):  # undo the row's filter (PNG spec, 9.2)
            left = row[i - channels] if i >= channels else 0
            up, up_left = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                row[i] = (row[i] + left) & 0xFF
            elif kind == 2:
                row[i] = (row[i] + up) & 0xFF
            elif kind == 3:
                row[i] = (row[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                row[i] = (row[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else up_left)) & 0xFF
        colours.update(bytes(row[x : x + channels]) for x in range(0, stride, channels))
        previous = row
    return width, height, colours


@pytest.mark.timeout(180)
def test_prometheus_graphs_the_awards_and_loads_the_alert_rules(
    process_cluster: ProcessCluster, prometheus: str, tmp_path: Path
) -> None:
    # The awards go on while Prometheus is asked and the picture taken: its graph ends on them.
    with steady_awards(process_cluster.ports["xp"]) as awarded:
        time.sleep(AWARDING_S)
        assert awarded[0] > 50

        # Every service scraped, under its job's name.
        assert instant_values(prometheus, "up") == {job: 1.0 for job in SERVICE_JOBS}
        xp_rate = instant_values(prometheus, "sum by (job) (rate(rewards_xp_awarded_total[1m]))")
        assert xp_rate.keys() == {"xp"} and xp_rate["xp"] > 0
        awards_rate = instant_values(prometheus, awards_per_second())
        assert awards_rate.keys() == {"xp"} and awards_rate["xp"] > 1

        # The rules file loaded: its alerts are the alarms, none of them firing on a healthy cluster.
        groups = api(prometheus, "rules")["groups"]
        alerts = [rule for group in groups for rule in group["rules"] if rule["type"] == "alerting"]
        assert {rule["name"] for rule in alerts} == ALARM_NAMES
        assert all(rule["health"] == "ok" for group in groups for rule in group["rules"])
        assert [rule["name"] for rule in alerts if rule["state"] != "inactive"] == []

        # Each of the dashboard's queries runs against the real server.
        for query in dashboard_queries():
            for variable, value in GRAFANA_VARIABLES.items():
                query = query.replace(variable, value)
            assert api(prometheus, "query", query=query)["resultType"] == "vector"

        picture = tmp_path / "awards-per-second.png"
        # Averaged over 10 s, not a minute: the half minute of awards is a line, not a ramp.
        screenshot(graph_url(prometheus, awards_per_second("10s"), GRAPH_RANGE), picture, tmp_path / "chromium")
    width, height, colours = png_pixels(picture.read_bytes())
    assert (width, height) == SCREENSHOT_SIZE
    assert len(colours) > 1
    if os.environ.get("REWARDS_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(picture, SCREENSHOT)


def test_the_readme_shows_the_screenshot_this_test_takes() -> None:
    assert "](docs/images/awards-per-second.png)" in (REPO_ROOT / "README.md").read_text()
    width, height, colours = png_pixels(SCREENSHOT.read_bytes())
    assert (width, height) == SCREENSHOT_SIZE
    assert len(colours) > 1
