"""Crash faults: concurrent game clients award XP and unlock achievements, and
retry every failed call with the same request, while the test SIGKILLs and
restarts the Levels service, then XP, then Achievements. Afterwards the
invariant checker (`rewardsctl verify`, run as the real command) must find
nothing wrong, and what the stage holds must be what the clients asked for,
computed on the client side. Also: the checker can fail (a corrupted stage),
and its rules one by one on hand-made table contents.

Figures of a run are printed (pytest -s) and kept in docs/faults.md."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from common.dynamodb import attr, to_item
from common.models import Level, LevelTable, Reward
from devcluster.dynamodb_local import REPO_ROOT
from devcluster.readiness import wait_grpc_serving
from rewards.v1 import achievements_pb2, achievements_pb2_grpc, levels_pb2, levels_pb2_grpc, xp_pb2, xp_pb2_grpc
from rewardsctl.verify import NOTE, VIOLATION, WARNING, StageContents, verify_contents
from tests.cluster import Cluster, authorized_channel
from tests.process_cluster import ProcessCluster, start_process_cluster

Answer = TypeVar("Answer")

# --- the catalog --------------------------------------------------------------------

LEVEL_TABLE = LevelTable(
    [
        Level(1, 0),
        Level(2, 100, (Reward("coins", 100),)),
        Level(3, 300, (Reward("coins", 200),)),
        Level(4, 600, (Reward("chest", 1), Reward("coins", 300))),
        Level(5, 1000, (Reward("title-veteran", 1),)),
        Level(6, 1500, (Reward("gems", 5),)),
        Level(7, 2200, (Reward("gems", 10),)),
        Level(8, 3000, (Reward("mount", 1),)),
    ]
)
# boss-kill jumps levels at once; daily-login often crosses none.
ACTIVITY_XP = {"win-match": 60, "finish-quest": 35, "daily-login": 10, "boss-kill": 250}
ACTIVITY_WEIGHTS = {"win-match": 5, "finish-quest": 4, "daily-login": 3, "boss-kill": 1}


@dataclass(frozen=True)
class AchievementSpec:
    xp_reward: int
    required: tuple[str, ...] = ()
    min_total_xp: int = 0
    min_level: int = 0


# In the order each user's owning client unlocks them.
ACHIEVEMENTS = {
    "first-steps": AchievementSpec(25),
    "badge-only": AchievementSpec(0),  # an unlock that pays nothing
    "combo": AchievementSpec(40, required=("first-steps",)),
    "veteran": AchievementSpec(75, min_total_xp=400),
    "elite": AchievementSpec(100, min_level=3),
}

# --- the load -----------------------------------------------------------------------

USERS = [f"crash-user-{i:02d}" for i in range(40)]
CLIENTS = 10
# A fault starts once the clients have finished this many more requests, so each lands in running load.
REQUESTS_BETWEEN_FAULTS = 70
DOWN_S = 0.6  # how long a killed service stays down before its restart
# After the last restart every client keeps going for this many requests (and until its scripts are done).
TAIL_REQUESTS_PER_CLIENT = 12
MAX_REQUESTS_PER_CLIENT = 400
LOAD_BUDGET_S = 75
# Per request: retries of the same request until it succeeds, within this time and this many attempts.
REQUEST_BUDGET_S = 40
MAX_ATTEMPTS_PER_REQUEST = 200
CALL_TIMEOUT_S = 10
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
DUPLICATE_SHARE = 0.12  # of requests: a copy of a request another client already made
FAULT_ORDER = ("levels", "xp", "achievements")

# Fail fast on a dead server and reconnect quickly after its restart; retries are the test's own, to count them.
CHANNEL_OPTIONS = [
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class RequestFailed(Exception):
    """A request that did not succeed within its budget, or failed for good."""


@dataclass
class LoadRecord:
    """What the clients sent and were answered, for the client-side expectations."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: Counter[str] = field(default_factory=Counter)  # RPCs made, by method
    retries: Counter[str] = field(default_factory=Counter)  # by status code, and "deferred"
    requests_done: int = 0
    awards: dict[tuple[str, str], str] = field(default_factory=dict)  # (user, request id) -> activity
    award_answers: dict[tuple[str, str], list[xp_pb2.AwardXpResponse]] = field(
        default_factory=lambda: defaultdict(list)
    )
    unlock_answers: dict[tuple[str, str], list[achievements_pb2.UnlockAchievementResponse]] = field(
        default_factory=lambda: defaultdict(list)
    )
    check_answers: dict[tuple[str, str], levels_pb2.LevelUpResult] = field(default_factory=dict)
    # XP of the awards and unlocks answered so far: a lower bound of each user's total.
    known_xp: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


@dataclass
class Stubs:
    xp: xp_pb2_grpc.XpServiceStub
    achievements: achievements_pb2_grpc.AchievementsServiceStub
    levels: levels_pb2_grpc.LevelsServiceStub


def call_until_done(record: LoadRecord, method: str, call: Callable[[], Answer]) -> Answer:
    """One request, sent again unchanged (same request id) on a retryable
    failure, with growing jittered pauses, until it succeeds or its budget ends."""
    deadline = time.monotonic() + REQUEST_BUDGET_S
    pause = 0.05
    for _ in range(MAX_ATTEMPTS_PER_REQUEST):
        with record.lock:
            record.calls[method] += 1
        try:
            return call()
        except grpc.RpcError as error:
            code = error.code()
            if code not in RETRYABLE:
                raise RequestFailed(f"{method}: {code.name}: {error.details()}") from error
            if time.monotonic() > deadline:
                raise RequestFailed(f"{method}: still {code.name} after {REQUEST_BUDGET_S} s") from error
            with record.lock:
                record.retries[code.name] += 1
        time.sleep(pause * random.uniform(0.5, 1.0))
        pause = min(pause * 2, 1.0)
    raise RequestFailed(f"{method}: no answer in {MAX_ATTEMPTS_PER_REQUEST} attempts")


def award(record: LoadRecord, stubs: Stubs, user_id: str, activity_id: str, request_id: str) -> xp_pb2.AwardXpResponse:
    """AwardXp, repeated with the same request id until it succeeds and its
    level check was not deferred (the README's advice to game servers)."""
    request = xp_pb2.AwardXpRequest(user_id=user_id, activity_id=activity_id, request_id=request_id)
    with record.lock:
        record.awards[(user_id, request_id)] = activity_id
    deadline = time.monotonic() + REQUEST_BUDGET_S
    pause = 0.1
    for _ in range(MAX_ATTEMPTS_PER_REQUEST):
        answer = call_until_done(record, "AwardXp", lambda: stubs.xp.AwardXp(request, timeout=CALL_TIMEOUT_S))
        with record.lock:
            if not record.award_answers[(user_id, request_id)]:
                record.known_xp[user_id] += ACTIVITY_XP[activity_id]
            record.award_answers[(user_id, request_id)].append(answer)
        if not answer.level_check_deferred:
            return answer
        if time.monotonic() > deadline:
            break
        with record.lock:
            record.retries["deferred"] += 1
        time.sleep(pause * random.uniform(0.5, 1.0))
        pause = min(pause * 2, 1.0)
    raise RequestFailed(f"AwardXp {user_id}/{request_id}: level check still deferred after {REQUEST_BUDGET_S} s")


def unlock(
    record: LoadRecord, stubs: Stubs, user_id: str, achievement_id: str, request_id: str
) -> achievements_pb2.UnlockAchievementResponse:
    request = achievements_pb2.UnlockAchievementRequest(
        user_id=user_id, achievement_id=achievement_id, request_id=request_id
    )
    answer = call_until_done(
        record, "UnlockAchievement", lambda: stubs.achievements.UnlockAchievement(request, timeout=CALL_TIMEOUT_S)
    )
    with record.lock:
        if not record.unlock_answers[(user_id, achievement_id)]:
            record.known_xp[user_id] += ACHIEVEMENTS[achievement_id].xp_reward
        record.unlock_answers[(user_id, achievement_id)].append(answer)
    return answer


def check_level_up(record: LoadRecord, stubs: Stubs, user_id: str, request_id: str) -> levels_pb2.LevelUpResult:
    request = levels_pb2.CheckLevelUpRequest(user_id=user_id, request_id=request_id)
    answer = call_until_done(record, "CheckLevelUp", lambda: stubs.levels.CheckLevelUp(request, timeout=CALL_TIMEOUT_S))
    with record.lock:
        record.check_answers[(user_id, request_id)] = answer
    return answer


class GameClient:
    """One game server: awards XP to any user (so clients race on users),
    resends copies of requests already made, and walks the achievements of the
    users it owns in order, unlocking each once its requirements hold."""

    def __init__(
        self, index: int, record: LoadRecord, stubs: Stubs, faults_done: threading.Event, load_deadline: float
    ) -> None:
        self.index = index
        self.record = record
        self.stubs = stubs
        self.faults_done = faults_done
        self.load_deadline = load_deadline
        self.rng = random.Random(index)
        self.owned = USERS[index::CLIENTS]
        self.next_unlock = {user: 0 for user in self.owned}  # index into ACHIEVEMENTS

    def run(self) -> None:
        try:
            self._run()
        except Exception as failure:
            with self.record.lock:
                self.record.failures.append(f"client {self.index}: {failure!r}")

    def _run(self) -> None:
        tail = 0
        for number in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() > self.load_deadline:
                raise RequestFailed(f"load still running after {LOAD_BUDGET_S} s")
            if self.faults_done.is_set():
                if tail >= TAIL_REQUESTS_PER_CLIENT and self._scripts_done():
                    return
                tail += 1
            self._one_request(number)
            with self.record.lock:
                self.record.requests_done += 1
        raise RequestFailed(f"{MAX_REQUESTS_PER_CLIENT} requests made before the faults and the tail were done")

    def _scripts_done(self) -> bool:
        return all(step == len(ACHIEVEMENTS) for step in self.next_unlock.values())

    def _one_request(self, number: int) -> None:
        roll = self.rng.random()
        if roll < DUPLICATE_SHARE and self._resend_a_copy():
            return
        if roll < 0.35 and self._unlock_next():
            return
        user = self.rng.choice(USERS)
        activity = self.rng.choices(list(ACTIVITY_WEIGHTS), weights=list(ACTIVITY_WEIGHTS.values()))[0]
        award(self.record, self.stubs, user, activity, f"client{self.index}-{number}")

    def _resend_a_copy(self) -> bool:
        """A copy of an award or unlock some client already made: must change nothing."""
        with self.record.lock:
            awards = list(self.record.awards.items())
            unlocks = [key for key, answers in self.record.unlock_answers.items() if answers]
        if self.rng.random() < 0.75 and awards:
            (user, request_id), activity = self.rng.choice(awards)
            award(self.record, self.stubs, user, activity, request_id)
            return True
        if unlocks:
            user, achievement_id = self.rng.choice(unlocks)
            unlock(self.record, self.stubs, user, achievement_id, f"copy-{self.index}")
            return True
        return False

    def _unlock_next(self) -> bool:
        """The next achievement of an owned user whose requirements hold, as far as this client knows."""
        names = list(ACHIEVEMENTS)
        for user in self.rng.sample(self.owned, len(self.owned)):
            step = self.next_unlock[user]
            if step == len(names):
                continue
            spec = ACHIEVEMENTS[names[step]]
            with self.record.lock:
                known_xp = self.record.known_xp[user]
            if known_xp < max(spec.min_total_xp, LEVEL_TABLE.xp_required(spec.min_level) if spec.min_level else 0):
                continue
            if spec.min_level:
                # The stored level may lag behind deferred checks: settle it first, as a game server would.
                result = check_level_up(self.record, self.stubs, user, f"{user}-before-{names[step]}")
                if result.current_level < spec.min_level:
                    raise RequestFailed(
                        f"{user} has {known_xp} XP or more, yet CheckLevelUp says level {result.current_level}"
                    )
            unlock(self.record, self.stubs, user, names[step], f"{user}-{names[step]}")
            self.next_unlock[user] += 1
            return True
        if self.faults_done.is_set():
            # Scripts must finish in the tail: award the first unfinished user XP towards its next requirement.
            unfinished = [u for u in self.owned if self.next_unlock[u] < len(names)]
            if unfinished:
                user = unfinished[0]
                award(
                    self.record, self.stubs, user, "boss-kill", f"client{self.index}-push-{user}-{time.monotonic_ns()}"
                )
                return True
        return False


# --- killing and restarting one service -----------------------------------------------------


@dataclass
class Fault:
    service: str
    requests_done_at_kill: int
    down_s: float  # from SIGKILL to SERVING again


def restart_after_sigkill(cluster: ProcessCluster, name: str, down_s: float) -> float:
    """SIGKILLs one service, waits `down_s`, starts it again with the same
    command, environment and port, and waits until it is SERVING. Returns the
    seconds it was not serving."""
    process = cluster.processes[name]
    # The exact environment the process was started with (tests.process_cluster does not keep it).
    env = dict(
        entry.split("=", 1)
        for entry in Path(f"/proc/{process.pid}/environ").read_bytes().decode().split("\0")
        if "=" in entry
    )
    killed_at = time.monotonic()
    process.kill()  # SIGKILL: no graceful shutdown, in-flight calls are cut
    process.wait()
    time.sleep(down_s)
    cluster.processes[name] = subprocess.Popen(
        process.args,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(cluster.logs / f"{name}.log", "ab"),
    )
    if not wait_grpc_serving(cluster.ports[name]):
        raise AssertionError(f"{name} did not come back:\n" + (cluster.logs / f"{name}.log").read_text()[-3000:])
    return time.monotonic() - killed_at


def inject_faults(cluster: ProcessCluster, record: LoadRecord, load_deadline: float) -> list[Fault]:
    faults = []
    for name in FAULT_ORDER:
        with record.lock:
            start_at = record.requests_done + REQUESTS_BETWEEN_FAULTS
        for _ in range(int(LOAD_BUDGET_S / 0.02)):
            with record.lock:
                done, failed = record.requests_done, bool(record.failures)
            if done >= start_at or failed or time.monotonic() > load_deadline:
                break
            time.sleep(0.02)
        faults.append(Fault(name, done, 0.0))
        faults[-1].down_s = restart_after_sigkill(cluster, name, DOWN_S)
    return faults


# --- the stage ----------------------------------------------------------------------------------


@pytest.fixture
def process_cluster(dynamodb_endpoint: str, tmp_path: Path) -> Iterator[ProcessCluster]:
    cluster = start_process_cluster(dynamodb_endpoint, tmp_path, metrics=False)
    yield cluster
    cluster.stop()


def stage_env(dynamodb_endpoint: str, table_prefix: str) -> dict[str, str]:
    return {**os.environ, "REWARDS_DYNAMODB_ENDPOINT": dynamodb_endpoint, "REWARDS_TABLE_PREFIX": table_prefix}


def run_verify(dynamodb_endpoint: str, table_prefix: str, *flags: str) -> tuple[int, dict[str, Any], str]:
    """The real command, `python -m rewardsctl verify --json`: exit status, report, stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "rewardsctl", "verify", "--json", *flags],
        cwd=REPO_ROOT,
        env=stage_env(dynamodb_endpoint, table_prefix),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def table_prefix_of(cluster: ProcessCluster) -> str:
    environ = Path(f"/proc/{cluster.processes['xp'].pid}/environ").read_bytes().decode().split("\0")
    return next(e.split("=", 1)[1] for e in environ if e.startswith("REWARDS_TABLE_PREFIX="))


def put_catalog(stubs: Stubs) -> None:
    for level in LEVEL_TABLE.levels:
        stubs.levels.PutLevel(
            levels_pb2.PutLevelRequest(
                level=levels_pb2.Level(
                    level=level.level,
                    xp_required=level.xp_required,
                    rewards=[levels_pb2.Reward(reward_id=r.reward_id, quantity=r.quantity) for r in level.rewards],
                )
            )
        )
    for activity_id, xp in ACTIVITY_XP.items():
        stubs.xp.PutActivity(
            xp_pb2.PutActivityRequest(activity=xp_pb2.Activity(activity_id=activity_id, name=activity_id, xp=xp))
        )
    for achievement_id, spec in ACHIEVEMENTS.items():
        stubs.achievements.PutAchievement(
            achievements_pb2.PutAchievementRequest(
                achievement=achievements_pb2.Achievement(
                    achievement_id=achievement_id,
                    name=achievement_id,
                    xp_reward=spec.xp_reward,
                    requirements=achievements_pb2.Requirements(
                        required_achievements=list(spec.required),
                        min_total_xp=spec.min_total_xp,
                        min_level=spec.min_level,
                    ),
                )
            )
        )


def rewards_of_levels(levels: Iterator[Level] | tuple[Level, ...]) -> Counter[str]:
    """Quantities by reward id (a level-up answers one line per reward id, its quantities summed)."""
    return reported(r for level in levels for r in level.rewards)


def reported(rewards: Any) -> Counter[str]:
    quantities: Counter[str] = Counter()
    for r in rewards:
        quantities[r.reward_id] += r.quantity
    return quantities


# --- the fault test ----------------------------------------------------------------------------


def test_sigkill_of_each_service_under_retried_load_counts_everything_exactly_once(
    process_cluster: ProcessCluster, dynamodb_endpoint: str
) -> None:
    started = time.monotonic()
    channels = [
        authorized_channel(f"localhost:{process_cluster.ports[n]}", options=CHANNEL_OPTIONS)
        for n in ("xp", "achievements", "levels")
    ]
    stubs = Stubs(
        xp_pb2_grpc.XpServiceStub(channels[0]),
        achievements_pb2_grpc.AchievementsServiceStub(channels[1]),
        levels_pb2_grpc.LevelsServiceStub(channels[2]),
    )
    table_prefix = table_prefix_of(process_cluster)
    try:
        put_catalog(stubs)
        record = LoadRecord()
        faults_done = threading.Event()
        load_deadline = time.monotonic() + LOAD_BUDGET_S
        clients = [GameClient(i, record, stubs, faults_done, load_deadline) for i in range(CLIENTS)]
        threads = [threading.Thread(target=c.run, name=f"game-client-{c.index}") for c in clients]
        for thread in threads:
            thread.start()
        try:
            faults = inject_faults(process_cluster, record, load_deadline)
        finally:
            faults_done.set()
            for thread in threads:
                thread.join(timeout=LOAD_BUDGET_S + REQUEST_BUDGET_S)
        load_s = time.monotonic() - started
        assert not any(t.is_alive() for t in threads)

        # Every request a client made succeeded in the end (same request id each time).
        assert record.failures == []
        assert [f.service for f in faults] == list(FAULT_ORDER)
        # Each fault landed in running load: clients kept finishing requests after the last restart.
        assert record.requests_done >= faults[-1].requests_done_at_kill + CLIENTS * TAIL_REQUESTS_PER_CLIENT
        assert record.retries["UNAVAILABLE"] > 0  # the kills were felt
        assert all(step == len(ACHIEVEMENTS) for c in clients for step in c.next_unlock.values())

        # --- what each answer said, client side --------------------------------------------
        for (user, request_id), answers in record.award_answers.items():
            activity = record.awards[(user, request_id)]
            # Every answer for one request reports the XP of that one award, original or duplicate.
            assert {a.xp_awarded for a in answers} == {ACTIVITY_XP[activity]}, (user, request_id, answers)
            # At most one answer is the original (it may be lost with a killed server).
            assert sum(not a.duplicate for a in answers) <= 1, (user, request_id, answers)
        paying_answers_lost = 0
        for (user, achievement_id), unlock_answers in record.unlock_answers.items():
            reward = ACHIEVEMENTS[achievement_id].xp_reward
            paid = [a.xp_awarded for a in unlock_answers if a.xp_awarded]
            # Exactly one call per unlock reports the reward, unless a kill lost that very answer.
            assert paid in ([reward], []) if reward else paid == [], (user, achievement_id, unlock_answers)
            if reward and not paid:
                paying_answers_lost += 1

        # --- the stage, as the services show it -------------------------------------------------
        expected_xp: Counter[str] = Counter()
        for (user, _), activity in record.awards.items():
            expected_xp[user] += ACTIVITY_XP[activity]
        expected_unlocks: dict[str, set[str]] = defaultdict(set)
        for user, achievement_id in record.unlock_answers:
            expected_unlocks[user].add(achievement_id)
            expected_xp[user] += ACHIEVEMENTS[achievement_id].xp_reward
        for user in USERS:
            progress = stubs.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user), timeout=CALL_TIMEOUT_S)
            assert progress.total_xp == expected_xp[user], user
            assert set(progress.unlocked_achievements) == expected_unlocks[user] == set(ACHIEVEMENTS), user

        # --- the tables, as the checker proves them (deferred checks may still be due) ---------------
        status, before_settling, stderr = run_verify(dynamodb_endpoint, table_prefix)
        assert status == 0, (before_settling["violations"], stderr)
        counts = before_settling["counts"]
        paid_unlocks = len(USERS) * sum(1 for spec in ACHIEVEMENTS.values() if spec.xp_reward)
        assert counts["users"] == len(USERS)
        assert counts["ledger_entries"] == len(record.awards) + paid_unlocks
        assert counts["unlocks"] == len(USERS) * len(ACHIEVEMENTS)
        assert counts["violations"] == 0
        # Every unlock succeeded, so none owes XP; a level check may be due where the last check was deferred.
        assert {(w["invariant"], w["message"].split(":")[0]) for w in before_settling["warnings"]} <= {
            ("level-matches-xp", "level check due")
        }

        # --- settle deferred checks, then every level matches its XP exactly -------------------------
        for user in USERS:
            check_level_up(record, stubs, user, f"{user}-settle")
        status, settled, stderr = run_verify(dynamodb_endpoint, table_prefix, "--strict")
        assert status == 0, (settled["violations"], settled["warnings"], stderr)
        assert settled["counts"]["warnings"] == 0 and settled["counts"]["notes"] == 0
        assert settled["counts"]["levels_checked"] == sum(
            len(LEVEL_TABLE.levels_passed(LEVEL_TABLE.start_level, LEVEL_TABLE.level_for_xp(expected_xp[u])))
            for u in USERS
        )
        assert all(i["violations"] == 0 and i["checked"] > 0 for i in settled["invariants"].values())
        rewards_unreported = 0
        differing: list[tuple[str, str, list[Any]]] = []  # requests whose settled answers reported different level-ups
        for user in USERS:
            level = LEVEL_TABLE.level_for_xp(expected_xp[user])
            progress = stubs.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user), timeout=CALL_TIMEOUT_S)
            assert progress.level == level, user
            granted = rewards_of_levels(LEVEL_TABLE.levels_passed(LEVEL_TABLE.start_level, level))
            assert reported(progress.rewards) == granted, user
            # Across all requests, no level's rewards are reported twice (each request's answers taken once).
            told: Counter[str] = Counter()
            for (u, request_id), answers in record.award_answers.items():
                settled_answers = [reported(a.level_up.rewards) for a in answers if not a.level_check_deferred]
                if u == user and settled_answers:
                    if any(s != settled_answers[0] for s in settled_answers):
                        differing.append(
                            (
                                u,
                                request_id,
                                [
                                    (
                                        a.duplicate,
                                        a.level_check_deferred,
                                        a.level_up.previous_level,
                                        a.level_up.current_level,
                                        dict(reported(a.level_up.rewards)),
                                    )
                                    for a in answers
                                ],
                            )
                        )
                    fullest: Counter[str] = max(settled_answers, key=Counter.total)
                    told += fullest
            for (u, _), answers_of_unlock in record.unlock_answers.items():
                if u == user:
                    told += sum((reported(a.level_up.rewards) for a in answers_of_unlock if a.xp_awarded), Counter())
            for (u, _), check in record.check_answers.items():
                if u == user:
                    told += reported(check.rewards)
            assert told - granted == Counter(), (user, told, granted)
            rewards_unreported += sum((granted - told).values())

        figures = {
            "clients": CLIENTS,
            "users": len(USERS),
            "requests": record.requests_done,
            "distinct awards": len(record.awards),
            "unlocks": sum(1 for answers in record.unlock_answers.values() if answers),
            "calls made": sum(record.calls.values()),
            "calls by method": dict(record.calls),
            "retries": dict(record.retries),
            "faults injected": len(faults),
            "faults": [(f.service, f.requests_done_at_kill, round(f.down_s, 2)) for f in faults],
            "paying unlock answers lost in a kill": paying_answers_lost,
            "award requests answered differently": len(differing),
            "level rewards never reported": rewards_unreported,
            "ledger entries": settled["counts"]["ledger_entries"],
            "levels checked": settled["counts"]["levels_checked"],
            "invariants checked (settled run)": settled["counts"]["invariants_checked"],
            "warnings before settling": counts["warnings"],
            "load s": round(load_s, 1),
            "total s": round(time.monotonic() - started, 1),
        }
        print("\ncrash-fault figures:\n" + "\n".join(f"  {k}: {v}" for k, v in figures.items()))
        for example in differing[:5]:
            print(f"  answered differently: {example}")
        assert differing == []  # every answer for one request reports the same level-up
    finally:
        for channel in channels:
            channel.close()


# --- a repeat's answer after a deferred check of another award ------------------------------------------------


def test_a_repeat_reports_what_its_first_check_found_and_the_deferred_award_its_own_level_up(
    new_cluster: Callable[..., Cluster], user_id: str
) -> None:
    c = new_cluster()
    put_catalog(Stubs(c.xp, c.achievements, c.levels))
    first = c.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user_id, activity_id="win-match", request_id="a"))
    assert (first.total_xp, first.level_check_deferred, first.level_up.leveled_up) == (60, False, False)
    c.stop("levels")
    deferred = c.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user_id, activity_id="win-match", request_id="b"))
    assert (deferred.total_xp, deferred.level_check_deferred) == (120, True)  # level 2 is due, not granted
    c.start("levels")
    repeat_of_first = c.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user_id, activity_id="win-match", request_id="a"))
    retry_of_deferred = c.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user_id, activity_id="win-match", request_id="b"))
    assert repeat_of_first.duplicate and retry_of_deferred.duplicate
    assert not repeat_of_first.level_check_deferred and not retry_of_deferred.level_check_deferred
    # A repeat reports what the request's first answer did: no level-up ...
    assert (repeat_of_first.level_up.leveled_up, list(repeat_of_first.level_up.rewards)) == (False, [])
    # ... and the retried deferred award reports the level-up it caused (README, "XP asks Levels when an award may raise the level").
    assert retry_of_deferred.level_up.leveled_up
    assert reported(retry_of_deferred.level_up.rewards) == Counter({"coins": 100})


# --- the checker can fail: a corrupted stage ----------------------------------------------------------------


def test_verify_reports_each_corruption_of_a_stage_and_exits_1(
    new_cluster: Callable[..., Cluster], dynamodb_endpoint: str
) -> None:
    c = new_cluster()
    stubs = Stubs(c.xp, c.achievements, c.levels)
    put_catalog(stubs)
    users = [
        f"corrupt-{name}" for name in ("total", "level-item", "stray", "twice", "level", "unpaid", "unlocked", "intact")
    ]
    for user in users:
        for i, activity in enumerate(("boss-kill", "win-match", "win-match")):  # 370 XP, 435 with the unlocks: level 3
            c.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user, activity_id=activity, request_id=f"r{i}"))
        for achievement_id in ("first-steps", "combo", "badge-only"):
            c.achievements.UnlockAchievement(
                achievements_pb2.UnlockAchievementRequest(user_id=user, achievement_id=achievement_id)
            )
    prefix = c.settings.table_prefix
    status, clean, _ = run_verify(dynamodb_endpoint, prefix, "--strict")
    assert status == 0 and clean["counts"]["users"] == len(users) and clean["counts"]["violations"] == 0

    db = c.dynamodb

    def update_progress(user: str, expression: str, values: dict[str, Any]) -> None:
        db.update_item(
            TableName=prefix + "user_progress",
            Key={"user_id": attr(user)},
            UpdateExpression=expression,
            ExpressionAttributeValues=to_item(values),
        )

    def ledger_entry(user: str, entry_id: str) -> dict[str, Any]:
        return db.get_item(
            TableName=prefix + "xp_ledger", Key={"user_id": attr(user), "entry_id": attr(entry_id)}, ConsistentRead=True
        )["Item"]

    # XP added to a total without a ledger entry.
    update_progress("corrupt-total", "ADD total_xp :x", {":x": 50})
    # A passed level's rewards gone.
    db.delete_item(TableName=prefix + "level_rewards", Key={"user_id": attr("corrupt-level-item"), "level": attr(2)})
    # An achievement paid that was never unlocked (its XP in the total too, so only the payment is wrong).
    db.put_item(
        TableName=prefix + "xp_ledger",
        Item=to_item(
            {
                "user_id": "corrupt-stray",
                "entry_id": "ach#veteran",
                "kind": "achievement",
                "achievement_id": "veteran",
                "xp": 75,
                "attempt_id": "stray",
            }
        ),
    )
    update_progress("corrupt-stray", "ADD total_xp :x", {":x": 75})
    # One award recorded twice, under a second id (and counted in the total).
    copy = ledger_entry("corrupt-twice", "req#r2")
    db.put_item(TableName=prefix + "xp_ledger", Item={**copy, "entry_id": attr("auto#copy")})
    update_progress("corrupt-twice", "ADD total_xp :x", {":x": 60})
    # A level with no XP for it.
    db.update_item(
        TableName=prefix + "user_progress",
        Key={"user_id": attr("corrupt-level")},
        UpdateExpression="SET #l = :l",
        ExpressionAttributeNames={"#l": "level"},
        ExpressionAttributeValues=to_item({":l": 4}),
    )
    # An unlock marked paid whose payment is gone (with its XP).
    db.delete_item(
        TableName=prefix + "xp_ledger", Key={"user_id": attr("corrupt-unpaid"), "entry_id": attr("ach#combo")}
    )
    update_progress("corrupt-unpaid", "ADD total_xp :x", {":x": -40})
    # Unlock records the progress item does not know of.
    update_progress("corrupt-unlocked", "SET holds_achievements = :f", {":f": False})

    status, report, stderr = run_verify(dynamodb_endpoint, prefix)
    assert status == 1, stderr
    found = {(v["user_id"], v["invariant"]) for v in report["violations"]}
    assert found == {
        ("corrupt-total", "total-is-ledger-sum"),
        ("corrupt-level-item", "level-rewards-once"),
        ("corrupt-level-item", "level-check-records"),  # the check that granted level 2 still lists it
        ("corrupt-twice", "ledger-entry-well-formed"),
        ("corrupt-level", "level-matches-xp"),
        ("corrupt-level", "level-rewards-once"),  # level 4 passed, its rewards never granted
        ("corrupt-unpaid", "achievement-paid-once"),
        ("corrupt-unlocked", "unlocks-match-progress"),
    }
    messages: dict[tuple[str, str], list[str]] = defaultdict(list)
    for v in report["violations"]:
        messages[(v["user_id"], v["invariant"])].append(v["message"])
    assert messages[("corrupt-total", "total-is-ledger-sum")] == [
        "total_xp 485 but the ledger's 5 entries sum to 435 (+50)"
    ]
    assert messages[("corrupt-level-item", "level-rewards-once")] == [
        "level 2 was passed (stored level 3) but its rewards were never granted"
    ]
    # A payment with no unlock is what a GrantXp naming the achievement leaves too: a warning.
    assert [
        w["message"]
        for w in report["warnings"]
        if (w["user_id"], w["invariant"]) == ("corrupt-stray", "achievement-paid-once")
    ] == [
        "ledger entry 'ach#veteran' pays 75 XP for an achievement the user has not unlocked "
        "(a GrantXp naming it; its unlock will pay nothing more)"
    ]
    assert messages[("corrupt-twice", "ledger-entry-well-formed")] == [
        "ledger entry 'auto#copy': it has request_id 'r2', so it should have been deduplicated as req#",
        "2 ledger entries carry attempt id " + repr(copy["attempt_id"]["S"]) + ": one write was recorded 2 times",
    ]
    assert messages[("corrupt-level", "level-matches-xp")] == [
        "stored level 4 is above level 3, what total_xp 435 gives"
    ]
    assert messages[("corrupt-unpaid", "achievement-paid-once")] == [
        "unlock of 'combo' is marked paid, but no ledger entry 'ach#combo' pays its 40 XP"
    ]
    assert messages[("corrupt-unlocked", "unlocks-match-progress")] == [
        "3 unlock records (badge-only, combo, first-steps) but holds_achievements is not set"
    ]
    assert report["counts"]["users"] == len(users) and report["ok"] is False

    # The text report says the same, and fails too.
    done = subprocess.run(
        [sys.executable, "-m", "rewardsctl", "verify"],
        cwd=REPO_ROOT,
        env=stage_env(dynamodb_endpoint, prefix),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert f"FAILED: {len(report['violations'])} violations" in done.stdout
    assert "corrupt-total: total_xp 485 but the ledger's 5 entries sum to 435 (+50)" in done.stdout

    # A stage that does not exist is an error, not a clean report.
    done = subprocess.run(
        [sys.executable, "-m", "rewardsctl", "verify"],
        cwd=REPO_ROOT,
        env=stage_env(dynamodb_endpoint, "no-such-stage-"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "does not exist" in done.stderr and done.stdout == ""


# --- the checker's rules, pure -----------------------------------------------------------------------------


def one_user(
    *,
    total_xp: int = 0,
    level: int | None = None,
    unlocked: tuple[str, ...] = (),
    ledger: tuple[tuple[str, int], ...] = (),
    unlocks: tuple[tuple[str, int, bool], ...] = (),
    reached: tuple[int, ...] = (),
) -> StageContents:
    """A stage of one user `u`: ledger as (entry id, xp), unlocks as
    (achievement, xp_reward, xp_granted), levels reached, granted by one check."""
    progress: dict[str, Any] = {"user_id": "u", "total_xp": Decimal(total_xp)}
    if level is not None:
        progress["level"] = Decimal(level)
    if unlocked:
        progress["unlocked_achievements"] = set(unlocked)
    entries = []
    for entry_id, xp in ledger:
        prefix, _, rest = entry_id.partition("#")
        entry = {
            "user_id": "u",
            "entry_id": entry_id,
            "xp": Decimal(xp),
            "attempt_id": entry_id,
            "kind": {"req": "grant", "ach": "achievement", "auto": "grant"}.get(prefix, "grant"),
        }
        entry.update({"request_id": rest} if prefix == "req" else {"achievement_id": rest} if prefix == "ach" else {})
        entries.append(entry)
    levels = {l.level: l for l in LEVEL_TABLE.levels}
    return StageContents(
        levels=LEVEL_TABLE,
        progress=[progress],
        ledger=entries,
        unlocks=[
            {"user_id": "u", "achievement_id": a, "xp_reward": Decimal(x), "xp_granted": g} for a, x, g in unlocks
        ],
        level_rewards=[
            {
                "user_id": "u",
                "level": Decimal(l),
                "from_level": Decimal(1),
                "check_id": "auto:1",
                "rewards": [{"reward_id": r.reward_id, "quantity": Decimal(r.quantity)} for r in levels[l].rewards],
            }
            for l in reached
        ],
    )


def findings(contents: StageContents, **options: bool) -> set[tuple[str, str]]:
    return {(f.severity, f.invariant) for f in verify_contents(contents, **options).findings}


def test_a_settled_user_has_no_findings_and_each_invariant_is_counted() -> None:
    report = verify_contents(
        one_user(
            total_xp=335,
            level=3,
            unlocked=("first-steps",),
            ledger=(("req#a", 310), ("ach#first-steps", 25)),
            unlocks=(("first-steps", 25, True),),
            reached=(2, 3),
        )
    )
    assert report.findings == [] and report.ok
    assert report.counts() == {
        "users": 1,
        "ledger_entries": 2,
        "unlocks": 1,
        "levels_checked": 2,
        "level_table_levels": 8,
        "invariants_checked": 10,
        "violations": 0,
        "warnings": 0,
        "notes": 0,
    }


def test_owed_xp_and_a_due_level_check_are_warnings_a_pending_mark_a_note() -> None:
    owed = one_user(total_xp=0, unlocked=("first-steps",), unlocks=(("first-steps", 25, False),))
    assert findings(owed) == {(WARNING, "achievement-paid-once")}
    pending_mark = one_user(
        total_xp=25,
        level=1,
        unlocked=("first-steps",),
        ledger=(("ach#first-steps", 25),),
        unlocks=(("first-steps", 25, False),),
    )
    assert findings(pending_mark) == {(NOTE, "achievement-paid-once")}
    due = one_user(total_xp=310, level=2, ledger=(("req#a", 310),), reached=(2,))
    assert findings(due) == {(WARNING, "level-matches-xp")}
    never_checked = one_user(total_xp=310, ledger=(("auto#1", 310),))
    assert findings(never_checked) == {(WARNING, "level-matches-xp")}


def test_violations_and_what_a_changed_catalog_excuses() -> None:
    above = one_user(total_xp=120, level=3, ledger=(("req#a", 120),), reached=(2, 3))
    assert findings(above) == {(VIOLATION, "level-matches-xp")}
    assert findings(above, catalog_changed=True) == {(NOTE, "level-matches-xp")}
    missing = one_user(total_xp=310, level=3, ledger=(("req#a", 310),), reached=(3,))
    assert findings(missing) == {(VIOLATION, "level-rewards-once")}
    beyond = one_user(total_xp=310, level=2, ledger=(("req#a", 310),), reached=(2, 3))
    # Granted above the stored level: never legal, whatever the catalog did.
    assert (VIOLATION, "level-rewards-once") in findings(beyond, catalog_changed=True)
    wrong_xp = one_user(
        total_xp=99, level=1, unlocked=("combo",), ledger=(("ach#combo", 99),), unlocks=(("combo", 40, True),)
    )
    assert findings(wrong_xp) == {(VIOLATION, "achievement-paid-once")}
    malformed = one_user(total_xp=5, level=1, ledger=(("bonus-5", 5),))
    assert findings(malformed) == {(VIOLATION, "ledger-entry-well-formed")}
    no_progress = StageContents(
        levels=LEVEL_TABLE,
        ledger=[
            {
                "user_id": "v",
                "entry_id": "req#a",
                "request_id": "a",
                "kind": "grant",
                "xp": Decimal(5),
                "attempt_id": "x",
            }
        ],
    )
    assert findings(no_progress) == {(VIOLATION, "total-is-ledger-sum")}
