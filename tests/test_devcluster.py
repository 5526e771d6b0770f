"""devcluster's pid files and log rotation, on dummy processes and files in a
temporary directory: no cluster is started, and the real .local/ is untouched."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import devcluster.__main__ as devcluster_main
from common.config import Settings
from devcluster import pid_files
from devcluster.dynamodb_local import REPO_ROOT
from devcluster.log_files import open_log, rotate_log
from devcluster.pid_files import identity_of, read_pid_file, write_pid_file
from devcluster.prometheus import metrics_targets

# A process that is not the cluster's: what a recycled pid runs after a reboot.
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(devcluster_main, "RUN_DIR", run)
    return run


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(SLEEPER)
    time.sleep(0.2)  # exec'd: /proc shows its own command line
    yield process
    process.kill()
    process.wait()


def stale_files(pid: int) -> dict[str, str]:
    """Pid files naming `pid` that must not be taken for the cluster's xp service."""
    running = identity_of(pid)
    assert running is not None
    return {
        # An earlier devcluster's file, the pid alone: the process does not run xp's command.
        "pid-only": f"{pid}\n",
        # The pid was reused: same command, another start.
        "other-start": json.dumps({"pid": pid, "started": "another-boot:1", "command": list(running.command)}),
        # The pid was reused at the same tick (impossible, but it must not be enough).
        "other-command": json.dumps({"pid": pid, "started": running.started, "command": ["python", "-m", "xp"]}),
    }


@pytest.mark.parametrize("kind", ["pid-only", "other-start", "other-command"])
def test_down_removes_a_stale_pid_file_with_a_message_and_signals_nothing(
    run_dir: Path, sleeper: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    pid_file = run_dir / "xp.pid"
    pid_file.write_text(stale_files(sleeper.pid)[kind])
    assert devcluster_main.down() == 0
    time.sleep(0.3)  # a signal, had one been sent, would have ended it by now
    assert sleeper.poll() is None
    assert not pid_file.exists()
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{pid_file}: stale pid file: pid {sleeper.pid} is another process: {' '.join(SLEEPER)}; "
        "removed it, signalled nothing\n"
    )


def test_status_says_stopped_for_a_stale_pid_file(
    run_dir: Path, sleeper: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    (run_dir / "levels.pid").write_text(f"{sleeper.pid}\n")
    assert devcluster_main.status() == 1
    out, err = capsys.readouterr()
    levels_line = next(line for line in out.splitlines() if line.strip().startswith("levels (levels_service)"))
    assert levels_line.endswith("stopped")
    assert f"stale pid file: pid {sleeper.pid} is another process" in err
    assert sleeper.poll() is None and not (run_dir / "levels.pid").exists()


def test_a_pid_file_of_an_exited_process_is_stale(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    (run_dir / "gateway.pid").write_text(
        json.dumps({"pid": exited.pid, "started": "b:1", "command": [sys.executable, "-m", "gateway"]})
    )
    assert devcluster_main.down() == 0
    assert capsys.readouterr().err == (
        f"{run_dir / 'gateway.pid'}: stale pid file: pid {exited.pid} is no process; removed it, signalled nothing\n"
    )


@pytest.mark.parametrize("name", [*(name for name, _ in devcluster_main.SERVICES), devcluster_main.GATEWAY])
def test_down_stops_the_process_its_pid_file_records(
    run_dir: Path, sleeper: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str], name: str
) -> None:
    write_pid_file(run_dir / f"{name}.pid", sleeper.pid, SLEEPER)
    recorded = json.loads((run_dir / f"{name}.pid").read_text())
    assert recorded["pid"] == sleeper.pid and recorded["command"] == SLEEPER
    assert devcluster_main.down() == 0
    assert sleeper.wait(timeout=5) == -signal.SIGTERM
    assert capsys.readouterr() == (f"stopped {name} (pid {sleeper.pid})\n", "")
    assert not (run_dir / f"{name}.pid").exists()


# --- the services it runs ------------------------------------------------------------------


def test_the_four_services_start_in_order_and_stop_in_reverse_before_dynamodb(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each service after the ones it calls; the events service calls none and comes last.
    assert devcluster_main.SERVICES == [
        ("levels", "levels_service"),
        ("xp", "xp_service"),
        ("achievements", "achievements_service"),
        ("events", "events_service"),
    ]
    assert devcluster_main._command("events") == [sys.executable, "-m", "events_service"]
    # down: `make observe`'s Prometheus, the gateway, then the services in reverse (events first), then
    # DynamoDB Local.
    asked: list[str] = []
    monkeypatch.setattr(devcluster_main, "_running", lambda name: asked.append(name))
    assert devcluster_main.down() == 0
    assert asked == ["prometheus", "gateway", "events", "achievements", "xp", "levels", "dynamodb"]


def test_status_shows_every_service_with_its_ports_and_the_gateway(
    run_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, _ in devcluster_main.SERVICES:
        monkeypatch.delenv(f"REWARDS_{name.upper()}_LISTEN", raising=False)
        monkeypatch.delenv(f"REWARDS_{name.upper()}_METRICS_PORT", raising=False)
    assert devcluster_main.status() == 1  # nothing runs
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert [row[0] for row in rows] == [
        "dynamodb-local",
        "levels",
        "xp",
        "achievements",
        "events",
        "gateway",
        "prometheus",
    ]
    assert rows[4] == ["events", "(events_service)", "localhost:50054", "metrics", ":9454", "stopped"]
    assert rows[6] == [
        "prometheus",
        "(make",
        "observe)",
        f"http://localhost:{devcluster_main.PROMETHEUS_PORT}",
        "stopped",
    ]
    assert all(row[-1] == "stopped" for row in rows)


def test_status_is_fine_without_make_observes_prometheus(
    run_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devcluster_main, "_pid", lambda name: None if name == "prometheus" else 4242)
    assert devcluster_main.status() == 0
    monkeypatch.setattr(devcluster_main, "_pid", lambda name: None if name == "xp" else 4242)
    assert devcluster_main.status() == 1
    out = capsys.readouterr().out
    assert "running, pid 4242" in out


def test_prometheus_scrapes_every_workers_metrics_port() -> None:
    assert metrics_targets(Settings())["xp"] == ["127.0.0.1:9451"]
    two = metrics_targets(Settings(workers=2, xp_metrics_port=9600, events_metrics_port=9700))
    assert (two["xp"], two["events"]) == (["127.0.0.1:9600", "127.0.0.1:9601"], ["127.0.0.1:9700", "127.0.0.1:9701"])
    assert list(two) == ["xp", "achievements", "levels", "events"]


def test_observe_runs_prometheus_on_the_local_config_and_data() -> None:
    command = devcluster_main._command("prometheus")
    assert command[0] == "prometheus"
    assert f"--config.file={REPO_ROOT / '.local' / 'prometheus' / 'prometheus.yml'}" in command
    assert f"--storage.tsdb.path={REPO_ROOT / '.local' / 'prometheus' / 'data'}" in command
    assert f"--web.listen-address=127.0.0.1:{devcluster_main.PROMETHEUS_PORT}" in command


def test_the_events_service_alone_gets_its_local_development_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("REWARDS_EVENTS_POLL_S", "REWARDS_WEBHOOKS_ALLOW_HTTP"):
        monkeypatch.delenv(variable, raising=False)
    env = devcluster_main.cluster_env()
    events = Settings.from_env(devcluster_main.service_env("events", env))
    # Watches and webhooks see a change within about 0.1 s; webhooks may be http:// receivers on this machine.
    assert (events.events_poll_s, events.webhooks_allow_http) == (0.1, True)
    assert (Settings.from_env(env).events_poll_s, Settings.from_env(env).webhooks_allow_http) == (0.25, False)
    for name, _ in devcluster_main.SERVICES:
        if name != "events":
            assert devcluster_main.service_env(name, env) == env
    # The developer's own environment wins.
    monkeypatch.setenv("REWARDS_EVENTS_POLL_S", "0.5")
    assert Settings.from_env(devcluster_main.service_env("events", devcluster_main.cluster_env())).events_poll_s == 0.5


def test_an_earlier_pid_file_is_trusted_only_for_the_command_devcluster_runs(
    run_dir: Path, sleeper: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if devcluster started the sleeper as levels (the pid alone in the file, as before).
    monkeypatch.setattr(devcluster_main, "_command", lambda name: SLEEPER if name == "levels" else ["nothing"])
    (run_dir / "levels.pid").write_text(f"{sleeper.pid}\n")
    assert devcluster_main.down() == 0
    assert sleeper.wait(timeout=5) == -signal.SIGTERM
    assert capsys.readouterr() == (f"stopped levels (pid {sleeper.pid})\n", "")


def test_without_proc_the_start_time_and_command_come_from_ps(
    tmp_path: Path, sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pid_files, "PROC", tmp_path / "no-proc")  # as on macOS
    pid_file = tmp_path / "xp.pid"
    write_pid_file(pid_file, sleeper.pid, SLEEPER)
    recorded = json.loads(pid_file.read_text())
    assert recorded["command"] == SLEEPER and recorded["started"]
    found = read_pid_file(pid_file, ["unused"])
    assert found is not None and found.pid == sleeper.pid and found.started == recorded["started"]
    pid_file.write_text(json.dumps({**recorded, "started": "Thu Jan  1 00:00:00 1970"}))
    assert read_pid_file(pid_file, ["unused"]) is None and not pid_file.exists()


# --- logs ----------------------------------------------------------------------------------


def test_a_log_over_the_size_is_rotated_keeping_three_and_its_writer_goes_on_at_the_start(tmp_path: Path) -> None:
    log = tmp_path / "xp.log"
    for n, text in ((1, "newest old\n"), (2, "older\n"), (3, "oldest\n")):
        (tmp_path / f"xp.log.{n}").write_text(text)
    writer = open_log(log)  # as a running service holds it
    writer.write(b"x" * 100 + b"\n")
    writer.flush()
    assert rotate_log(log, max_bytes=100, backups=3)
    writer.write(b"after the rotation\n")
    writer.flush()
    writer.close()
    assert log.read_bytes() == b"after the rotation\n"  # at the start: no hole where the old lines were
    assert (tmp_path / "xp.log.1").read_bytes() == b"x" * 100 + b"\n"
    assert (tmp_path / "xp.log.2").read_text() == "newest old\n"
    assert (tmp_path / "xp.log.3").read_text() == "older\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xp.log", "xp.log.1", "xp.log.2", "xp.log.3"]


def test_a_log_under_the_size_or_missing_is_left_alone(tmp_path: Path) -> None:
    log = tmp_path / "levels.log"
    log.write_text("small\n")
    assert not rotate_log(log, max_bytes=100)
    assert not rotate_log(tmp_path / "missing.log", max_bytes=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["levels.log"]
    assert log.read_text() == "small\n"
