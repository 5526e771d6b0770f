"""docker-compose.yml, run: through the published ports only, as a user would,
with the dev tokens the dev-tokens service prints. In order: every service
healthy from the project's image; the README's HTTP/JSON (curl) block through
the gateway and its grpcurl block; an award, an unlock and the progress with
their events on a watch; a SIGKILL of the XP container under retried load,
which compose restarts, with nothing lost or doubled (`rewardsctl verify`, the
totals, the events); and `down`, leaving nothing behind. Runs under `make
compose-test` only (conftest.py)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter

import boto3
import grpc

from common.caller_auth import BearerTokenInterceptor
from devcluster import container_engine as engine
from devcluster.dynamodb_local import LOCAL_CREDENTIALS, REPO_ROOT
from rewards.v1 import achievements_pb2, achievements_pb2_grpc, events_pb2, events_pb2_grpc, xp_pb2, xp_pb2_grpc
from tests.compose_cluster.conftest import ComposeCluster
from tests.events_support import Watcher, expected_events, wait_for
from tests.test_crash_faults import CHANNEL_OPTIONS, LoadRecord, RequestFailed, call_until_settled, run_verify
from tests.test_grpcurl_session import check_the_readme_grpcurl_block_results, readme_grpcurl_commands
from tests.test_readme_curl import Command, check_the_block_prints_what_the_readme_says, readme_block

# The services compose must build from the project's Dockerfile, and the one from DynamoDB Local's image.
PROJECT_IMAGE_SERVICES = {"xp", "achievements", "levels", "events", "gateway"}
# Activities of the sample catalog that no auto-unlock achievement counts (the README's grpcurl block adds
# one on pvp), so each user's total is exactly the sum of its awards.
LOAD_ACTIVITY_XP = {"complete-quest": 100, "defeat-boss": 300}
LOAD_USERS = [f"compose-load-{i:02d}" for i in range(12)]
AWARDS_PER_USER = 10
LOAD_CLIENTS = 6
KILLED_SERVICE = "xp"
# The kill lands once this many awards were answered, so that it falls in running load.
AWARDS_BEFORE_KILL = 30
RESTART_TIMEOUT_S = 120


def channel(cluster: ComposeCluster, service: str, grpc_port: int, token: str) -> grpc.Channel:
    address = f"127.0.0.1:{cluster.published_port(service, grpc_port)}"
    return grpc.intercept_channel(
        grpc.insecure_channel(address, options=CHANNEL_OPTIONS), BearerTokenInterceptor(token)
    )


class ComposeStage:
    """The stage compose runs, read through DynamoDB Local's published port (tests.events_support's shape)."""

    def __init__(self, cluster: ComposeCluster) -> None:
        self.dynamodb = boto3.client(
            "dynamodb",
            endpoint_url=f"http://127.0.0.1:{cluster.published_port('dynamodb', 8000)}",
            region_name="us-east-1",
            aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def table(self, name: str) -> str:
        return f"rewards-{name}"  # the compose file sets no REWARDS_TABLE_PREFIX: the default


def test_every_service_runs_healthy_from_the_projects_image(compose_cluster: ComposeCluster) -> None:
    states = compose_cluster.project.containers()
    assert set(compose_cluster.servers) == PROJECT_IMAGE_SERVICES | {"dynamodb"}
    for name in compose_cluster.servers:
        state = states[name]
        assert (state.status, state.health, state.restarts) == ("running", "healthy", 0), state
    for name in PROJECT_IMAGE_SERVICES:
        assert states[name].image == engine.PROJECT_IMAGE, states[name]
    assert states["dynamodb"].image == engine.DYNAMODB_LOCAL_IMAGE
    # Each check as the file writes it (podman's Docker API splits a CMD check's arguments at spaces,
    # podman#26519: a `bash -c "..."` check would pass vacuously), run and passed, not healthy by default.
    for name in compose_cluster.servers:
        written = [part.replace("$$", "$") for part in compose_cluster.config["services"][name]["healthcheck"]["test"]]
        assert states[name].healthcheck == written, name
    assert compose_cluster.driver.runs >= len(compose_cluster.servers)
    compose_cluster.figures["resident_memory_mb"] = {
        name: round(engine.resident_memory_kib(states[name].pid) / 1024) for name in compose_cluster.servers
    }


def test_the_readme_curl_block_through_the_published_gateway(compose_cluster: ComposeCluster) -> None:
    def run(command: Command) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command.text],
            cwd=REPO_ROOT,
            env=compose_cluster.shell_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )

    check_the_block_prints_what_the_readme_says(readme_block(), run)


def test_the_readme_grpcurl_block_through_the_published_ports(compose_cluster: ComposeCluster) -> None:
    results = [
        subprocess.run(
            ["bash", "-c", command],
            cwd=REPO_ROOT,
            env=compose_cluster.shell_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        for command in readme_grpcurl_commands()
    ]
    check_the_readme_grpcurl_block_results(results, sample_catalog=True)


def test_an_award_an_unlock_and_the_progress_with_their_events(compose_cluster: ComposeCluster) -> None:
    game = compose_cluster.tokens["REWARDS_GAME_TOKEN"]
    user = f"compose-player-{random.randrange(10**6)}"
    xp = xp_pb2_grpc.XpServiceStub(channel(compose_cluster, "xp", 50051, game))
    achievements = achievements_pb2_grpc.AchievementsServiceStub(channel(compose_cluster, "achievements", 50052, game))
    watcher = Watcher(
        events_pb2_grpc.EventsServiceStub(channel(compose_cluster, "events", 50054, game)),
        events_pb2.WatchEventsRequest(user_id=user),
    )
    watcher.start()
    try:
        awarded = xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user, activity_id="complete-quest", request_id="q-1"))
        assert (awarded.xp_awarded, awarded.total_xp, awarded.level, awarded.duplicate) == (100, 100, 2, False)
        unlocked = achievements.UnlockAchievement(
            achievements_pb2.UnlockAchievementRequest(user_id=user, achievement_id="quest-starter")
        )
        assert (unlocked.xp_awarded, unlocked.total_xp, unlocked.already_unlocked) == (50, 150, False)
        progress = xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user))
        assert (progress.total_xp, progress.level, list(progress.unlocked_achievements)) == (150, 2, ["quest-starter"])
        # The award's XP, level 2, the unlock and its XP: four events, each once.
        wait_for(lambda: len(watcher.responses) >= 4, timeout_s=30)
        time.sleep(1)  # nothing more comes
    finally:
        watcher.stop()
    types = Counter(events_pb2.EventType.Name(r.event.type) for r in watcher.responses)
    assert types == {
        "EVENT_TYPE_XP_AWARDED": 1,
        "EVENT_TYPE_LEVEL_UP": 1,
        "EVENT_TYPE_ACHIEVEMENT_UNLOCKED": 1,
        "EVENT_TYPE_XP_GRANTED": 1,  # the unlock's XP, which Achievements grants through XP
    }, types
    assert all(count == 1 for count in watcher.keys().values())


def kill_main_process(cluster: ComposeCluster, service: str) -> engine.ContainerState:
    """SIGKILL of the container's main process from the host: a crash (an OOM
    kill, a segfault), not a stop, so the restart policy applies."""
    state = cluster.project.containers()[service]
    os.kill(state.pid, signal.SIGKILL)
    return state


def test_sigkill_of_xp_under_retried_load_restarts_it_and_counts_everything_once(
    compose_cluster: ComposeCluster,
) -> None:
    tokens = compose_cluster.tokens
    xp = xp_pb2_grpc.XpServiceStub(channel(compose_cluster, "xp", 50051, tokens["REWARDS_GAME_TOKEN"]))
    stage = ComposeStage(compose_cluster)
    watcher = Watcher(
        events_pb2_grpc.EventsServiceStub(channel(compose_cluster, "events", 50054, tokens["REWARDS_ADMIN_TOKEN"])),
        events_pb2.WatchEventsRequest(),  # every user
    )
    watcher.start()
    record = LoadRecord()
    sent: dict[tuple[str, str], str] = {}  # (user, request id) -> activity

    def client(users: list[str]) -> None:
        try:
            for n in range(AWARDS_PER_USER):
                for user in users:
                    activity = list(LOAD_ACTIVITY_XP)[(n + len(user)) % len(LOAD_ACTIVITY_XP)]
                    request = xp_pb2.AwardXpRequest(user_id=user, activity_id=activity, request_id=f"load-{n}")
                    with record.lock:
                        sent[(user, request.request_id)] = activity

                    def on_answer(answer: xp_pb2.AwardXpResponse) -> None:
                        record.requests_done += 1

                    call_until_settled(record, "AwardXp", lambda r=request: xp.AwardXp(r, timeout=10), on_answer)
        except RequestFailed as failure:
            with record.lock:
                record.failures.append(str(failure))

    threads = [
        threading.Thread(target=client, args=(LOAD_USERS[i::LOAD_CLIENTS],), daemon=True) for i in range(LOAD_CLIENTS)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: record.requests_done >= AWARDS_BEFORE_KILL or bool(record.failures), timeout_s=120)
    assert not record.failures, record.failures
    killed = kill_main_process(compose_cluster, KILLED_SERVICE)
    killed_at = time.monotonic()

    def restarted_and_healthy() -> bool:
        now = compose_cluster.project.containers()[KILLED_SERVICE]
        return now.restarts > killed.restarts and now.pid not in (0, killed.pid) and now.health == "healthy"

    back_s = engine.wait_until("xp restarted by compose and healthy", restarted_and_healthy, RESTART_TIMEOUT_S)
    for thread in threads:
        thread.join(timeout=180)
    assert not any(thread.is_alive() for thread in threads), "the load did not finish"
    assert not record.failures, record.failures
    after = compose_cluster.project.containers()[KILLED_SERVICE]
    # The clients felt the kill (calls refused while XP was down, then retried), and
    # the restart policy, not the test, started it again: the same container, one restart.
    assert record.retries["UNAVAILABLE"] > 0, record.retries
    assert (after.name, after.restarts, after.status) == (killed.name, killed.restarts + 1, "running")

    # Everything once: each award's XP in the totals, exactly.
    expected_xp: Counter[str] = Counter()
    for (user, _), activity in sent.items():
        expected_xp[user] += LOAD_ACTIVITY_XP[activity]
    totals = {user: xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user)).total_xp for user in LOAD_USERS}
    assert totals == dict(expected_xp)
    assert len(sent) == len(LOAD_USERS) * AWARDS_PER_USER
    # ... in the ledger the events come from, and on the watch, each once (it reconnects with its cursor).
    expected = expected_events(stage, LOAD_USERS)  # type: ignore[arg-type]
    wait_for(lambda: sum(c for (u, _), c in watcher.keys().items() if u in LOAD_USERS) >= sum(expected.values()))
    time.sleep(1)
    watcher.stop()
    watched = Counter({key: count for key, count in watcher.keys().items() if key[0] in LOAD_USERS})
    assert watched == expected

    # The invariant checker, as an operator runs it against the published DynamoDB port.
    status, report, stderr = run_verify(
        f"http://127.0.0.1:{compose_cluster.published_port('dynamodb', 8000)}", "rewards-"
    )
    assert status == 0, (report, stderr)
    assert report["violations"] == [], report
    compose_cluster.figures["sigkill"] = {
        "service": KILLED_SERVICE,
        "awards": len(sent),
        "answered_before_kill": AWARDS_BEFORE_KILL,
        "retries": dict(record.retries),
        "kill_to_healthy_s": round(back_s, 1),
        "since_kill_s": round(time.monotonic() - killed_at, 1),
    }


def test_down_leaves_no_container_network_or_volume(compose_cluster: ComposeCluster) -> None:
    project = compose_cluster.project
    assert project.container_ids(all_states=True) and project.networks()
    down = project.compose("down", "--volumes", "--remove-orphans", timeout=180)
    assert (project.container_ids(all_states=True), project.networks(), project.volumes()) == ([], [], []), down.stderr
