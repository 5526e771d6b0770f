"""rewardsctl's gRPC clients (rewardsctl.service_clients and the commands of
rewardsctl.__main__ that use them) against grpc_testing's scripted channel: no
server, no DynamoDB, no socket.

grpc_testing cannot drive the services' grpc.aio servicers (grpc/grpc issue
24942), so the services themselves are tested against real servers in tests/.
rewardsctl's clients are synchronous stubs, which its channel fits: each test
plays the server for one call at a time, sees the request and metadata as the
client sent them, and answers or fails the call.

The channels are made by the real common.channels.client_channel (options,
bearer-token interceptor); only grpc.insecure_channel is replaced. Two gaps of
grpc_testing 1.85's channel are bridged by _ScriptedChannel, in this module only:
its multi-callables reject the wait_for_ready and compression arguments that
grpc.intercept_channel passes on, and it drops each call's timeout (its
channel-side rpc has no time_remaining()), so the timeout is recorded here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
import grpc_testing
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from common.channels import CLIENT_CHANNEL_OPTIONS
from common.config import ENVIRONMENT_VARIABLES, Settings
from common.periods import DAY, WEEK
from common.streaks import Streak, StreakLength
from rewards.v1 import achievements_pb2, levels_pb2, xp_pb2
from rewardsctl.__main__ import main
from rewardsctl.catalog import Achievement, Activity, ActivityCount, Cap, Catalog, Level, Reward
from rewardsctl.catalog_plan import CatalogChange
from rewardsctl.service_clients import ServiceClients, ServiceTargets

XP = xp_pb2.DESCRIPTOR.services_by_name["XpService"]
ACHIEVEMENTS = achievements_pb2.DESCRIPTOR.services_by_name["AchievementsService"]
LEVELS = levels_pb2.DESCRIPTOR.services_by_name["LevelsService"]

TARGETS = ServiceTargets(xp="xp.test:50051", achievements="achievements.test:50052", levels="levels.test:50053")
TARGET_FLAGS = [
    "--xp-target",
    TARGETS.xp,
    "--achievements-target",
    TARGETS.achievements,
    "--levels-target",
    TARGETS.levels,
]
TIMEOUT_S = 2.5
TOKEN = "test-token"
BEARER = ("authorization", f"Bearer {TOKEN}")
# How long a test waits for the client to make a call before failing (instead of hanging).
WAIT_S = 5.0

Answer = TypeVar("Answer")
Metadata = tuple[tuple[str, str | bytes], ...]


@dataclass(frozen=True)
class SentCall:
    target: str
    method: str
    timeout: float | None


class _FailedCall(grpc.RpcError):
    """A failed call as grpc's own channel raises it: also the outcome whose
    result() raises it, which is what grpc.intercept_channel expects."""

    def __init__(self, failed: Any) -> None:
        super().__init__(failed.details())
        self._failed = failed

    def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = self._failed.code()
        return code

    def details(self) -> str:
        details: str = self._failed.details()
        return details

    def initial_metadata(self) -> Any:
        return tuple(self._failed.initial_metadata())

    def trailing_metadata(self) -> Any:  # grpc-stubs types RpcError's oddly
        return tuple(self._failed.trailing_metadata())

    def result(self, timeout: float | None = None) -> NoReturn:
        raise self

    def exception(self, timeout: float | None = None) -> grpc.RpcError:
        return self


class _RecordingUnaryUnary(grpc.UnaryUnaryMultiCallable):
    """grpc_testing's multi-callable, called without the arguments it rejects
    (credentials, wait_for_ready, compression), and recording the timeout it drops."""

    def __init__(self, target: str, method: str, services: ScriptedServices) -> None:
        self._target = target
        self._method = method
        self._services = services
        self._scripted = services.channel.unary_unary(method)

    def _record(self, timeout: float | None) -> None:
        self._services.sent.append(SentCall(self._target, self._method, timeout))

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        self._record(timeout)
        try:
            return self._scripted(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            raise _FailedCall(error) from None

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> tuple[Any, grpc.Call]:
        self._record(timeout)
        try:
            return self._scripted.with_call(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            raise _FailedCall(error) from None

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        raise NotImplementedError("rewardsctl makes blocking calls")


class _ScriptedChannel(grpc.Channel):
    """What grpc.insecure_channel(target) returns in these tests: unary calls
    go to the shared grpc_testing channel, recorded with target and timeout."""

    def __init__(self, target: str, services: ScriptedServices) -> None:
        self.target = target
        self.closed = False
        self._services = services

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.UnaryUnaryMultiCallable:
        return _RecordingUnaryUnary(self.target, method, self._services)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("rewardsctl makes unary calls only")

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("rewardsctl makes unary calls only")

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("rewardsctl makes unary calls only")

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        raise NotImplementedError

    def unsubscribe(self, callback: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> _ScriptedChannel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ScriptedServices:
    """The three services, played by the test through one grpc_testing channel."""

    def __init__(self) -> None:
        self.channel = grpc_testing.channel([XP, ACHIEVEMENTS, LEVELS], grpc_testing.strict_real_time())
        self.opened: list[tuple[str, Any]] = []
        self.channels: list[_ScriptedChannel] = []
        self.sent: list[SentCall] = []

    def insecure_channel(self, target: str, options: Any = None, compression: Any = None) -> _ScriptedChannel:
        self.opened.append((target, options))
        self.channels.append(_ScriptedChannel(target, self))
        return self.channels[-1]

    def start(self, work: Callable[[], Answer]) -> Future[Answer]:
        """Runs the client's side on a daemon thread (one stuck on a call the
        test never answers cannot hold up the interpreter's exit)."""
        outcome: Future[Answer] = Future()

        def run() -> None:
            try:
                outcome.set_result(work())
            except BaseException as error:
                outcome.set_exception(error)

        threading.Thread(target=run, daemon=True).start()
        return outcome

    def take(self, method: Any, client: Future[Any]) -> tuple[Metadata, Any, Any]:
        """The next call of `method`: (invocation metadata, request, rpc)."""
        taken: Future[tuple[Metadata, Any, Any]] = Future()
        threading.Thread(target=lambda: taken.set_result(self.channel.take_unary_unary(method)), daemon=True).start()
        wait([taken, client], timeout=WAIT_S, return_when=FIRST_COMPLETED)
        if taken.done():
            return taken.result()
        if client.done():
            outcome = client.exception() or client.result()
            pytest.fail(f"{method.full_name} was not called; the client ended with {outcome!r}")
        pytest.fail(f"{method.full_name} was not called within {WAIT_S} s")

    def answer(self, method: Any, client: Future[Any], response: Message) -> tuple[Metadata, Any]:
        metadata, request, rpc = self.take(method, client)
        rpc.terminate(response, (), grpc.StatusCode.OK, "")
        return metadata, request

    def fail(
        self, method: Any, client: Future[Any], code: grpc.StatusCode, details: str, trailing: Metadata = ()
    ) -> tuple[Metadata, Any]:
        metadata, request, rpc = self.take(method, client)
        rpc.terminate(method.output_type._concrete_class(), trailing, code, details)
        return metadata, request


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch) -> ScriptedServices:
    scripted = ScriptedServices()
    monkeypatch.setattr(grpc, "insecure_channel", scripted.insecure_channel)
    # main() reads Settings.from_env(): none of the developer's targets, token or TLS files.
    for variable in [*ENVIRONMENT_VARIABLES.values(), "AWS_DEFAULT_REGION"]:
        monkeypatch.delenv(variable, raising=False)
    return scripted


def method(service: Any, name: str) -> Any:
    return service.methods_by_name[name]


def path(service: Any, name: str) -> str:
    return f"/{service.full_name}/{name}"


def result(client: Future[Answer]) -> Answer:
    return client.result(timeout=WAIT_S)


def level_up(previous: int, current: int, *rewards: tuple[str, int]) -> levels_pb2.LevelUpResult:
    return levels_pb2.LevelUpResult(
        user_id="player-1",
        leveled_up=True,
        previous_level=previous,
        current_level=current,
        rewards=[levels_pb2.Reward(reward_id=r, quantity=q) for r, q in rewards],
    )


# --- ServiceClients ----------------------------------------------------------------


def test_each_service_gets_a_channel_with_the_client_options_and_close_closes_them(
    services: ScriptedServices,
) -> None:
    clients = ServiceClients(TARGETS, TIMEOUT_S, Settings(), token=TOKEN)
    assert services.opened == [
        (TARGETS.xp, CLIENT_CHANNEL_OPTIONS),
        (TARGETS.achievements, CLIENT_CHANNEL_OPTIONS),
        (TARGETS.levels, CLIENT_CHANNEL_OPTIONS),
    ]
    assert [c.closed for c in services.channels] == [False, False, False]
    clients.close()
    assert [c.closed for c in services.channels] == [True, True, True]


PLAYER_CALLS = [
    pytest.param(
        XP,
        "AwardXp",
        lambda c: c.award("player-1", "daily-login", "req-1"),
        xp_pb2.AwardXpRequest(user_id="player-1", activity_id="daily-login", request_id="req-1"),
        xp_pb2.AwardXpResponse(user_id="player-1", xp_awarded=50, total_xp=1250, level=3),
        TARGETS.xp,
        id="award",
    ),
    pytest.param(
        ACHIEVEMENTS,
        "UnlockAchievement",
        lambda c: c.unlock("player-1", "first-win", "req-2"),
        achievements_pb2.UnlockAchievementRequest(user_id="player-1", achievement_id="first-win", request_id="req-2"),
        achievements_pb2.UnlockAchievementResponse(
            achievement=achievements_pb2.Achievement(achievement_id="first-win", name="First win"),
            xp_awarded=100,
            total_xp=1350,
        ),
        TARGETS.achievements,
        id="unlock",
    ),
    pytest.param(
        XP,
        "GetProgress",
        lambda c: c.progress("player-1"),
        xp_pb2.GetProgressRequest(user_id="player-1"),
        xp_pb2.UserProgress(user_id="player-1", total_xp=1350, level=3, unlocked_achievements=["first-win"]),
        TARGETS.xp,
        id="progress",
    ),
    pytest.param(
        ACHIEVEMENTS,
        "UnlockDueAchievements",
        lambda c: c.unlock_due("player-1", "backfill#run-1", ("wins-10", "wins-50")),
        achievements_pb2.UnlockDueAchievementsRequest(
            user_id="player-1", trigger_id="backfill#run-1", achievement_ids=["wins-10", "wins-50"]
        ),
        achievements_pb2.UnlockDueAchievementsResponse(unlocked=["wins-10"], total_xp=1600, level=6),
        TARGETS.achievements,
        id="unlock-due",
    ),
    pytest.param(
        ACHIEVEMENTS,
        "UnlockDueAchievements",
        lambda c: c.unlock_due("player-1", "backfill-dry-run#run-2", dry_run=True),
        achievements_pb2.UnlockDueAchievementsRequest(
            user_id="player-1", trigger_id="backfill-dry-run#run-2", dry_run=True
        ),
        achievements_pb2.UnlockDueAchievementsResponse(total_xp=1350, level=3, due=["wins-1", "wins-10"]),
        TARGETS.achievements,
        id="unlock-due-dry-run",
    ),
    pytest.param(
        XP,
        "AdjustXp",
        lambda c: c.adjust("player-1", -200, "refund of a bought boost", "fix-1"),
        xp_pb2.AdjustXpRequest(user_id="player-1", delta=-200, reason="refund of a bought boost", request_id="fix-1"),
        xp_pb2.AwardXpResponse(user_id="player-1", xp_awarded=-200, total_xp=1150, level=3),
        TARGETS.xp,
        id="adjust",
    ),
    pytest.param(
        XP,
        "RevokeAward",
        lambda c: c.revoke("player-1", "cheated", request_id="req-1"),
        xp_pb2.RevokeAwardRequest(user_id="player-1", request_id="req-1", reason="cheated"),
        xp_pb2.AwardXpResponse(user_id="player-1", xp_awarded=-50, total_xp=1100, level=3),
        TARGETS.xp,
        id="revoke-by-request-id",
    ),
    pytest.param(
        XP,
        "RevokeAward",
        lambda c: c.revoke("player-1", "cheated", entry_id="auto#9c1e"),
        xp_pb2.RevokeAwardRequest(user_id="player-1", entry_id="auto#9c1e", reason="cheated"),
        xp_pb2.AwardXpResponse(user_id="player-1", xp_awarded=-50, total_xp=1050, level=3),
        TARGETS.xp,
        id="revoke-by-entry-id",
    ),
]


@pytest.mark.parametrize(("service", "name", "call", "expected_request", "response", "target"), PLAYER_CALLS)
def test_player_call_sends_its_request_with_token_and_deadline_and_returns_the_answer(
    services: ScriptedServices,
    service: Any,
    name: str,
    call: Callable[[ServiceClients], Message],
    expected_request: Message,
    response: Message,
    target: str,
) -> None:
    clients = ServiceClients(TARGETS, TIMEOUT_S, Settings(), token=TOKEN)
    client = services.start(lambda: call(clients))
    metadata, request = services.answer(method(service, name), client, response)
    assert request == expected_request
    assert BEARER in metadata
    assert result(client) == response
    assert services.sent == [SentCall(target, path(service, name), TIMEOUT_S)]


def test_without_a_token_no_authorization_metadata_is_sent(services: ScriptedServices) -> None:
    clients = ServiceClients(TARGETS, 0.75, Settings(), token="")
    client = services.start(lambda: clients.progress("player-1"))
    metadata, _ = services.answer(method(XP, "GetProgress"), client, xp_pb2.UserProgress(user_id="player-1"))
    assert [key for key, _ in metadata if key == "authorization"] == []
    assert result(client).user_id == "player-1"
    assert services.sent == [SentCall(TARGETS.xp, path(XP, "GetProgress"), 0.75)]


def test_list_activities_follows_next_page_token_until_it_is_empty(services: ScriptedServices) -> None:
    clients = ServiceClients(TARGETS, TIMEOUT_S, Settings(), token=TOKEN)
    client = services.start(clients.list_activities)
    pages = [
        xp_pb2.ListActivitiesResponse(
            activities=[
                xp_pb2.Activity(activity_id="zeta", name="Zeta", xp=5),
                xp_pb2.Activity(activity_id="alpha", name="Alpha", description="d", category="daily", xp=10),
            ],
            next_page_token="page-2",
        ),
        xp_pb2.ListActivitiesResponse(
            activities=[xp_pb2.Activity(activity_id="beta", name="Beta", xp=20)], next_page_token="page-3"
        ),
        xp_pb2.ListActivitiesResponse(),
    ]
    requests = [services.answer(method(XP, "ListActivities"), client, page)[1] for page in pages]
    assert requests == [
        xp_pb2.ListActivitiesRequest(page_size=100, page_token=token) for token in ("", "page-2", "page-3")
    ]
    assert result(client) == [
        Activity("zeta", "Zeta", xp=5),
        Activity("alpha", "Alpha", "d", "daily", 10),
        Activity("beta", "Beta", xp=20),
    ]
    assert services.sent == [SentCall(TARGETS.xp, path(XP, "ListActivities"), TIMEOUT_S)] * 3


def test_read_catalog_pages_through_each_service_with_the_deadline_on_every_call(services: ScriptedServices) -> None:
    clients = ServiceClients(TARGETS, TIMEOUT_S, Settings(), token=TOKEN)
    client = services.start(clients.read_catalog)
    services.answer(
        method(XP, "ListActivities"),
        client,
        xp_pb2.ListActivitiesResponse(
            activities=[
                xp_pb2.Activity(
                    activity_id="daily-login",
                    name="Log in",
                    xp=10,
                    cap=xp_pb2.Cap(max_awards=1, period=xp_pb2.PERIOD_DAY),
                )
            ]
        ),
    )
    _, first = services.answer(
        method(ACHIEVEMENTS, "ListAchievements"),
        client,
        achievements_pb2.ListAchievementsResponse(
            achievements=[achievements_pb2.Achievement(achievement_id="veteran", name="Veteran", xp_reward=500)],
            next_page_token="next",
        ),
    )
    _, second = services.answer(
        method(ACHIEVEMENTS, "ListAchievements"),
        client,
        achievements_pb2.ListAchievementsResponse(
            achievements=[
                achievements_pb2.Achievement(
                    achievement_id="champion",
                    name="Champion",
                    xp_reward=1000,
                    hidden=True,
                    requirements=achievements_pb2.Requirements(
                        required_achievements=["veteran"], min_total_xp=5000, min_level=4
                    ),
                )
            ]
        ),
    )
    services.answer(
        method(LEVELS, "ListLevels"),
        client,
        levels_pb2.ListLevelsResponse(
            levels=[
                levels_pb2.Level(level=2, xp_required=100, rewards=[levels_pb2.Reward(reward_id="gold", quantity=50)]),
                levels_pb2.Level(level=1, xp_required=0),
            ]
        ),
    )
    services.answer(
        method(XP, "ListStreaks"),
        client,
        xp_pb2.ListStreaksResponse(
            streaks=[
                xp_pb2.Streak(
                    streak_id="login-days", name="Log in daily", activity_id="daily-login", period=xp_pb2.PERIOD_DAY
                )
            ]
        ),
    )
    assert (first.page_token, second.page_token) == ("", "next")
    assert (first.page_size, second.page_size) == (100, 100)
    assert result(client) == Catalog(
        activities=(Activity("daily-login", "Log in", xp=10, cap=Cap(1, DAY)),),
        achievements=(
            Achievement(
                "champion",
                "Champion",
                xp_reward=1000,
                hidden=True,
                required_achievements=("veteran",),
                min_total_xp=5000,
                min_level=4,
            ),
            Achievement("veteran", "Veteran", xp_reward=500),
        ),
        levels=(Level(1, 0), Level(2, 100, (Reward("gold", 50),))),
        streaks=(Streak("login-days", "Log in daily", DAY, activity_id="daily-login"),),
    )
    assert services.sent == [
        SentCall(TARGETS.xp, path(XP, "ListActivities"), TIMEOUT_S),
        SentCall(TARGETS.achievements, path(ACHIEVEMENTS, "ListAchievements"), TIMEOUT_S),
        SentCall(TARGETS.achievements, path(ACHIEVEMENTS, "ListAchievements"), TIMEOUT_S),
        SentCall(TARGETS.levels, path(LEVELS, "ListLevels"), TIMEOUT_S),
        SentCall(TARGETS.xp, path(XP, "ListStreaks"), TIMEOUT_S),
    ]


CHANGES = [
    pytest.param(
        CatalogChange("create", "activities", "daily-login", Activity("daily-login", "Log in", "", "daily", 10)),
        XP,
        "PutActivity",
        xp_pb2.PutActivityRequest(
            activity=xp_pb2.Activity(activity_id="daily-login", name="Log in", category="daily", xp=10)
        ),
        TARGETS.xp,
        id="create-activity",
    ),
    pytest.param(
        CatalogChange(
            "change",
            "achievements",
            "champion",
            Achievement("champion", "Champion", xp_reward=900, required_achievements=("veteran",), min_level=4),
        ),
        ACHIEVEMENTS,
        "PutAchievement",
        achievements_pb2.PutAchievementRequest(
            achievement=achievements_pb2.Achievement(
                achievement_id="champion",
                name="Champion",
                xp_reward=900,
                requirements=achievements_pb2.Requirements(required_achievements=["veteran"], min_level=4),
            )
        ),
        TARGETS.achievements,
        id="change-achievement",
    ),
    pytest.param(
        CatalogChange(
            "create",
            "achievements",
            "wins-10",
            Achievement(
                "wins-10",
                "Winner II",
                xp_reward=250,
                activity_counts=(ActivityCount("win-match", count=10), ActivityCount(category="pvp", count=20)),
                auto_unlock=True,
            ),
        ),
        ACHIEVEMENTS,
        "PutAchievement",
        achievements_pb2.PutAchievementRequest(
            achievement=achievements_pb2.Achievement(
                achievement_id="wins-10",
                name="Winner II",
                xp_reward=250,
                auto_unlock=True,
                requirements=achievements_pb2.Requirements(
                    activity_counts=[
                        achievements_pb2.ActivityCount(activity_id="win-match", count=10),
                        achievements_pb2.ActivityCount(category="pvp", count=20),
                    ]
                ),
            )
        ),
        TARGETS.achievements,
        id="create-auto-unlock-achievement",
    ),
    pytest.param(
        CatalogChange("change", "activities", "daily-login", Activity("daily-login", "Log in", xp=10, cap=Cap(1, DAY))),
        XP,
        "PutActivity",
        xp_pb2.PutActivityRequest(
            activity=xp_pb2.Activity(
                activity_id="daily-login", name="Log in", xp=10, cap=xp_pb2.Cap(max_awards=1, period=xp_pb2.PERIOD_DAY)
            )
        ),
        TARGETS.xp,
        id="change-activity-cap",
    ),
    pytest.param(
        CatalogChange("create", "streaks", "pvp-weeks", Streak("pvp-weeks", "PvP weeks", WEEK, category="pvp")),
        XP,
        "PutStreak",
        xp_pb2.PutStreakRequest(
            streak=xp_pb2.Streak(streak_id="pvp-weeks", name="PvP weeks", category="pvp", period=xp_pb2.PERIOD_WEEK)
        ),
        TARGETS.xp,
        id="create-streak",
    ),
    pytest.param(
        CatalogChange("delete", "streaks", "pvp-weeks", Streak("pvp-weeks", "PvP weeks", WEEK, category="pvp")),
        XP,
        "DeleteStreak",
        xp_pb2.DeleteStreakRequest(streak_id="pvp-weeks"),
        TARGETS.xp,
        id="delete-streak",
    ),
    pytest.param(
        CatalogChange(
            "create",
            "achievements",
            "loyal",
            Achievement("loyal", "Loyal", auto_unlock=True, streak_lengths=(StreakLength("login-days", 7),)),
        ),
        ACHIEVEMENTS,
        "PutAchievement",
        achievements_pb2.PutAchievementRequest(
            achievement=achievements_pb2.Achievement(
                achievement_id="loyal",
                name="Loyal",
                auto_unlock=True,
                requirements=achievements_pb2.Requirements(
                    streak_lengths=[achievements_pb2.StreakLength(streak_id="login-days", length=7)]
                ),
            )
        ),
        TARGETS.achievements,
        id="create-achievement-with-a-streak-run",
    ),
    pytest.param(
        CatalogChange("delete", "levels", 3, Level(3, 300, (Reward("gold", 5),))),
        LEVELS,
        "DeleteLevel",
        levels_pb2.DeleteLevelRequest(level=3),
        TARGETS.levels,
        id="delete-level",
    ),
]


@pytest.mark.parametrize(("change", "service", "name", "expected_request", "target"), CHANGES)
def test_apply_change_writes_the_entry_to_its_service(
    services: ScriptedServices, change: CatalogChange, service: Any, name: str, expected_request: Message, target: str
) -> None:
    clients = ServiceClients(TARGETS, TIMEOUT_S, Settings(), token=TOKEN)
    client = services.start(lambda: clients.apply_change(change))
    metadata, request = services.answer(
        method(service, name), client, method(service, name).output_type._concrete_class()
    )
    assert request == expected_request
    assert BEARER in metadata
    assert result(client) is None
    assert services.sent == [SentCall(target, path(service, name), TIMEOUT_S)]


def test_apply_change_keep_calls_nothing(services: ScriptedServices) -> None:
    clients = ServiceClients(TARGETS, TIMEOUT_S, Settings(), token=TOKEN)
    clients.apply_change(CatalogChange("keep", "activities", "old", Activity("old", "Old", xp=1)))
    assert services.sent == []


def test_get_achievement_reads_auto_unlock_and_activity_counts(services: ScriptedServices) -> None:
    clients = ServiceClients(TARGETS, TIMEOUT_S, Settings(), token=TOKEN)
    client = services.start(lambda: clients.get_achievement("quests-7"))
    _, request = services.answer(
        method(ACHIEVEMENTS, "GetAchievement"),
        client,
        achievements_pb2.Achievement(
            achievement_id="quests-7",
            name="Seven quests",
            xp_reward=200,
            auto_unlock=True,
            requirements=achievements_pb2.Requirements(
                min_level=2, activity_counts=[achievements_pb2.ActivityCount(category="daily-quest", count=7)]
            ),
        ),
    )
    assert request == achievements_pb2.GetAchievementRequest(achievement_id="quests-7")
    assert result(client) == Achievement(
        "quests-7",
        "Seven quests",
        xp_reward=200,
        min_level=2,
        activity_counts=(ActivityCount(category="daily-quest", count=7),),
        auto_unlock=True,
    )
    assert services.sent == [SentCall(TARGETS.achievements, path(ACHIEVEMENTS, "GetAchievement"), TIMEOUT_S)]


# --- the commands (rewardsctl.__main__.main) ------------------------------------------


def run_main(services: ScriptedServices, argv: Sequence[str]) -> Future[int]:
    return services.start(lambda: main(list(argv)))


def test_award_command_prints_the_answer_and_closes_its_channels(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    client = run_main(
        services,
        ["award", "player-1", "daily-login", "--request-id", "req-1", "--timeout", "2.5", "--token", TOKEN]
        + TARGET_FLAGS,
    )
    metadata, request = services.answer(
        method(XP, "AwardXp"),
        client,
        xp_pb2.AwardXpResponse(
            user_id="player-1", xp_awarded=50, total_xp=1250, level=3, level_up=level_up(2, 3, ("gold", 100))
        ),
    )
    assert result(client) == 0
    assert request == xp_pb2.AwardXpRequest(user_id="player-1", activity_id="daily-login", request_id="req-1")
    assert BEARER in metadata
    assert services.sent == [SentCall(TARGETS.xp, path(XP, "AwardXp"), 2.5)]
    assert [c.closed for c in services.channels] == [True, True, True]
    out, err = capsys.readouterr()
    assert out == (
        "player-1: +50 XP for daily-login; total 1,250 XP, level 3\n"
        "level up: 2 -> 3; rewards: 100 gold\n"
        "request_id req-1 (repeat it with --request-id to retry safely)\n"
    )
    assert err == ""


def test_unlock_command_prints_what_was_unlocked(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    client = run_main(services, ["unlock", "player-1", "first-win", "--token", TOKEN] + TARGET_FLAGS)
    _, request = services.answer(
        method(ACHIEVEMENTS, "UnlockAchievement"),
        client,
        achievements_pb2.UnlockAchievementResponse(
            achievement=achievements_pb2.Achievement(achievement_id="first-win", name="First win"),
            xp_awarded=100,
            total_xp=1350,
        ),
    )
    assert result(client) == 0
    assert request == achievements_pb2.UnlockAchievementRequest(user_id="player-1", achievement_id="first-win")
    assert services.sent == [SentCall(TARGETS.achievements, path(ACHIEVEMENTS, "UnlockAchievement"), 10.0)]
    assert capsys.readouterr().out == "player-1: unlocked first-win ('First win'): +100 XP; total 1,350 XP\n"


def test_progress_command_takes_target_and_token_from_the_environment_and_defaults_to_10_s(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REWARDS_XP_TARGET", "xp.from-env:7000")
    monkeypatch.setenv("REWARDS_TOKEN", "env-token")
    client = run_main(services, ["progress", "player-1"])
    metadata, request = services.answer(
        method(XP, "GetProgress"),
        client,
        xp_pb2.UserProgress(
            user_id="player-1",
            total_xp=1350,
            level=3,
            unlocked_achievements=["first-win"],
            rewards=[
                levels_pb2.Reward(reward_id="gold", quantity=50),
                levels_pb2.Reward(reward_id="gold", quantity=100),
            ],
        ),
    )
    assert result(client) == 0
    assert request == xp_pb2.GetProgressRequest(user_id="player-1")
    assert ("authorization", "Bearer env-token") in metadata
    assert services.sent == [SentCall("xp.from-env:7000", path(XP, "GetProgress"), 10.0)]
    assert capsys.readouterr().out == (
        "user          player-1\n"
        "total XP      1,350\n"
        "level         3\n"
        "achievements  first-win\n"
        "rewards       150 gold (2 grants)\n"
    )


AWARD_FAILURES = [
    pytest.param(
        grpc.StatusCode.UNAVAILABLE,
        "failed to connect to all addresses",
        "award failed: UNAVAILABLE: failed to connect to all addresses\n"
        f"  check that the service runs at {TARGETS.xp} (`make up` starts the local cluster)\n"
        "  safe to retry: run it again with --request-id req-1",
        id="unavailable-connect",
    ),
    pytest.param(
        grpc.StatusCode.UNAVAILABLE,
        # The service's own message (common.dynamodb.transactions.storage_error_as_domain_error).
        "DynamoDB could not be reached (ConnectionError); retry",
        "award failed: UNAVAILABLE: DynamoDB could not be reached (ConnectionError); retry\n"
        "  the service runs, but DynamoDB does not answer it: check that DynamoDB runs at the services' "
        "REWARDS_DYNAMODB_ENDPOINT (`make status` shows DynamoDB Local, `make up` starts it)\n"
        "  safe to retry: run it again with --request-id req-1",
        id="unavailable-dynamodb-unreachable",
    ),
    pytest.param(
        grpc.StatusCode.UNAVAILABLE,
        "DynamoDB is throttling",
        "award failed: UNAVAILABLE: DynamoDB is throttling\n  safe to retry: run it again with --request-id req-1",
        id="unavailable-other",
    ),
    pytest.param(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "Deadline Exceeded",
        "award failed: DEADLINE_EXCEEDED: Deadline Exceeded\n"
        "  the call may or may not have been done: it is safe to run it again with --request-id req-1",
        id="deadline-exceeded",
    ),
    pytest.param(
        grpc.StatusCode.UNAUTHENTICATED,
        "missing bearer token",
        "award failed: UNAUTHENTICATED: missing bearer token\n"
        "  pass a token with --token or REWARDS_TOKEN (`make up` writes dev tokens to .local/dev-auth.env; "
        "`rewardsctl token mint` makes one from REWARDS_AUTH_JWT_SECRET)",
        id="unauthenticated",
    ),
    pytest.param(
        grpc.StatusCode.NOT_FOUND,
        "activity daily-login does not exist",
        "award failed: NOT_FOUND: activity daily-login does not exist",
        id="not-found",
    ),
]


@pytest.mark.parametrize(("code", "details", "expected"), AWARD_FAILURES)
def test_award_command_failure_prints_the_status_and_its_hint_and_exits_1(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str], code: grpc.StatusCode, details: str, expected: str
) -> None:
    client = run_main(
        services, ["award", "player-1", "daily-login", "--request-id", "req-1", "--token", TOKEN] + TARGET_FLAGS
    )
    services.fail(method(XP, "AwardXp"), client, code, details)
    assert result(client) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"rewardsctl: {expected}\n"


def test_award_unavailable_hint_names_the_request_id_it_generated(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    client = run_main(services, ["award", "player-1", "daily-login", "--token", TOKEN] + TARGET_FLAGS)
    _, request = services.fail(method(XP, "AwardXp"), client, grpc.StatusCode.UNAVAILABLE, "Socket closed")
    assert result(client) == 1
    assert request.request_id.startswith("rewardsctl-")
    assert capsys.readouterr().err.endswith(f"  safe to retry: run it again with --request-id {request.request_id}\n")


def test_award_deadline_hint_names_the_request_id_it_generated(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    client = run_main(services, ["award", "player-1", "daily-login", "--token", TOKEN] + TARGET_FLAGS)
    _, request = services.fail(method(XP, "AwardXp"), client, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert result(client) == 1
    assert f"--request-id {request.request_id}" in capsys.readouterr().err


def test_progress_command_lists_the_bad_request_fields_of_the_status_details(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field="user_id", description="1 to 128 characters")
            ]
        )
    )
    status = rpc_status.to_status(
        status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="invalid request", details=[detail])
    )
    client = run_main(services, ["progress", "x" * 200, "--token", TOKEN] + TARGET_FLAGS)
    services.fail(method(XP, "GetProgress"), client, status.code, status.details, status.trailing_metadata)
    assert result(client) == 1
    assert capsys.readouterr().err == (
        "rewardsctl: progress failed: INVALID_ARGUMENT: invalid request\n  field user_id: 1 to 128 characters\n"
    )


def test_catalog_export_failure_names_every_target(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    client = run_main(services, ["catalog", "export", "--token", TOKEN] + TARGET_FLAGS)
    services.answer(method(XP, "ListActivities"), client, xp_pb2.ListActivitiesResponse())
    services.fail(method(ACHIEVEMENTS, "ListAchievements"), client, grpc.StatusCode.UNAVAILABLE, "Connection refused")
    assert result(client) == 1
    assert capsys.readouterr().err == (
        "rewardsctl: reading the catalog failed: UNAVAILABLE: Connection refused\n"
        f"  check that the service runs at {TARGETS.xp}, {TARGETS.achievements} and {TARGETS.levels} "
        "(`make up` starts the local cluster)\n"
        "  safe to retry: run the same command again\n"
    )


def test_catalog_export_names_dynamodb_not_the_services_when_the_service_cannot_reach_it(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    client = run_main(services, ["catalog", "export", "--token", TOKEN] + TARGET_FLAGS)
    services.fail(
        method(XP, "ListActivities"),
        client,
        grpc.StatusCode.UNAVAILABLE,
        "DynamoDB could not be reached (Timeout); retry",
    )
    assert result(client) == 1
    assert capsys.readouterr().err == (
        "rewardsctl: reading the catalog failed: UNAVAILABLE: DynamoDB could not be reached (Timeout); retry\n"
        "  the service runs, but DynamoDB does not answer it: check that DynamoDB runs at the services' "
        "REWARDS_DYNAMODB_ENDPOINT (`make status` shows DynamoDB Local, `make up` starts it)\n"
        "  safe to retry: run the same command again\n"
    )


def test_backfill_command_checks_the_achievements_first_and_refuses_unknown_and_manual_ones(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    # An endpoint nothing listens on: the refusal comes before DynamoDB is asked.
    client = run_main(
        services,
        [
            "achievements",
            "backfill",
            "ghost",
            "first-win",
            "ghost",
            "--token",
            TOKEN,
            "--dynamodb-endpoint",
            "http://127.0.0.1:1",
        ]
        + TARGET_FLAGS,
    )
    _, first = services.fail(
        method(ACHIEVEMENTS, "GetAchievement"),
        client,
        grpc.StatusCode.NOT_FOUND,
        "achievement 'ghost' is not in the catalog",
    )
    _, second = services.answer(
        method(ACHIEVEMENTS, "GetAchievement"),
        client,
        achievements_pb2.Achievement(achievement_id="first-win", name="First win", xp_reward=50),
    )
    assert result(client) == 2
    assert [first.achievement_id, second.achievement_id] == ["ghost", "first-win"]  # each id asked once
    assert services.sent == [SentCall(TARGETS.achievements, path(ACHIEVEMENTS, "GetAchievement"), 10.0)] * 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "rewardsctl: nothing was backfilled:",
        "  achievement 'ghost' is not in the catalog",
        "  achievement 'first-win' is not auto_unlock: a backfill unlocks only auto_unlock achievements "
        "(`rewardsctl unlock USER first-win` unlocks it for one user)",
    ]


def test_backfill_command_without_auto_unlock_achievements_has_nothing_to_do(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    client = run_main(
        services,
        ["achievements", "backfill", "--token", TOKEN, "--dynamodb-endpoint", "http://127.0.0.1:1"] + TARGET_FLAGS,
    )
    services.answer(
        method(ACHIEVEMENTS, "ListAchievements"),
        client,
        achievements_pb2.ListAchievementsResponse(
            achievements=[achievements_pb2.Achievement(achievement_id="first-win", name="First win")]
        ),
    )
    assert result(client) == 0
    assert capsys.readouterr().out == "no auto_unlock achievements in the catalog: nothing to backfill\n"


# --- the XP history and corrections -------------------------------------------------------


def ledger_entry(entry_id: str, kind: str, xp: int, second: int, **fields: Any) -> xp_pb2.LedgerEntry:
    entry = xp_pb2.LedgerEntry(
        entry_id=entry_id, kind=xp_pb2.LedgerEntry.Kind.Value(f"KIND_{kind.upper()}"), xp=xp, **fields
    )
    entry.recorded_at.FromJsonString(f"2025-03-30T01:59:{second:02d}.250000Z")
    return entry


HISTORY = [  # newest first, as ListXpHistory answers
    ledger_entry(
        "rev#req#r2",
        "revoke",
        -150,
        50,
        activity_id="win-match",
        reason="match fixing",
        reverses_entry_id="req#r2",
    ),
    ledger_entry("req#fix-1", "adjustment", -1200, 40, request_id="fix-1", reason="refund, ticket 42"),
    ledger_entry("ach#first-win", "achievement", 50, 30, achievement_id="first-win"),
    ledger_entry("req#r2", "activity", 150, 20, request_id="r2", activity_id="win-match"),
    ledger_entry("auto#5e0c", "activity", 0, 10, activity_id="daily-login", capped=True),
    ledger_entry("auto#77aa", "grant", 1500, 0, reason="welcome back"),
]
HISTORY_LINES = [
    "2025-03-30T01:59:50.250000Z  revoke            -150  activity win-match, reason 'match fixing'  "
    "entry rev#req#r2  reverses req#r2",
    "2025-03-30T01:59:40.250000Z  adjustment      -1,200  reason 'refund, ticket 42'  entry req#fix-1",
    "2025-03-30T01:59:30.250000Z  achievement        +50  achievement first-win  entry ach#first-win",
    "2025-03-30T01:59:20.250000Z  activity          +150  activity win-match  entry req#r2",
    "2025-03-30T01:59:10.250000Z  activity            +0  activity daily-login, capped  entry auto#5e0c",
    "2025-03-30T01:59:00.250000Z  grant           +1,500  reason 'welcome back'  entry auto#77aa",
]


def test_history_pages_through_the_ledger_asking_for_no_more_than_the_limit(services: ScriptedServices) -> None:
    clients = ServiceClients(TARGETS, TIMEOUT_S, Settings(), token=TOKEN)
    client = services.start(lambda: list(clients.history("player-1", limit=130)))
    first = xp_pb2.ListXpHistoryResponse(entries=HISTORY[:1] * 100, next_page_token="p2")
    second = xp_pb2.ListXpHistoryResponse(entries=HISTORY[:1] * 30, next_page_token="p3")
    requests = [services.answer(method(XP, "ListXpHistory"), client, page)[1] for page in (first, second)]
    assert requests == [
        xp_pb2.ListXpHistoryRequest(user_id="player-1", page_size=100),
        xp_pb2.ListXpHistoryRequest(user_id="player-1", page_size=30, page_token="p2"),
    ]
    assert result(client) == [first, second]  # the limit reached: p3 is not asked for
    # Without a limit, pages of 100 until the token is empty.
    services.sent.clear()
    client = services.start(lambda: list(clients.history("player-1")))
    pages = [xp_pb2.ListXpHistoryResponse(entries=HISTORY, next_page_token="p2"), xp_pb2.ListXpHistoryResponse()]
    requests = [services.answer(method(XP, "ListXpHistory"), client, page)[1] for page in pages]
    assert [(r.page_size, r.page_token) for r in requests] == [(100, ""), (100, "p2")]
    assert result(client) == pages
    assert services.sent == [SentCall(TARGETS.xp, path(XP, "ListXpHistory"), TIMEOUT_S)] * 2


def test_history_command_prints_one_line_per_entry_newest_first(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    client = run_main(services, ["history", "player-1", "--token", TOKEN] + TARGET_FLAGS)
    _, first = services.answer(
        method(XP, "ListXpHistory"), client, xp_pb2.ListXpHistoryResponse(entries=HISTORY[:4], next_page_token="p2")
    )
    _, second = services.answer(method(XP, "ListXpHistory"), client, xp_pb2.ListXpHistoryResponse(entries=HISTORY[4:]))
    assert result(client) == 0
    assert (first.page_size, second.page_size, second.page_token) == (50, 46, "p2")  # the default limit, 50
    out, err = capsys.readouterr()
    assert out.splitlines() == HISTORY_LINES and err == ""


def test_history_command_says_when_the_limit_left_entries_out_and_when_there_are_none(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    client = run_main(services, ["history", "player-1", "--limit", "2", "--token", TOKEN] + TARGET_FLAGS)
    _, request = services.answer(
        method(XP, "ListXpHistory"), client, xp_pb2.ListXpHistoryResponse(entries=HISTORY[:2], next_page_token="p2")
    )
    assert result(client) == 0 and request.page_size == 2
    assert capsys.readouterr().out.splitlines() == [
        *HISTORY_LINES[:2],
        "the newest 2 entries of player-1; --limit N lists more (0 lists all)",
    ]
    client = run_main(services, ["history", "nobody", "--limit", "0", "--token", TOKEN] + TARGET_FLAGS)
    _, request = services.answer(method(XP, "ListXpHistory"), client, xp_pb2.ListXpHistoryResponse())
    assert result(client) == 0 and request.page_size == 100
    assert capsys.readouterr().out == "nobody: no ledger entries (a user with nothing yet)\n"


def test_history_command_json_is_one_response_with_where_the_next_entry_starts(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    client = run_main(services, ["history", "player-1", "--limit", "3", "--json", "--token", TOKEN] + TARGET_FLAGS)
    services.answer(
        method(XP, "ListXpHistory"), client, xp_pb2.ListXpHistoryResponse(entries=HISTORY[:3], next_page_token="p2")
    )
    assert result(client) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["next_page_token"] == "p2"
    assert [(e["entry_id"], e["kind"], e["xp"]) for e in answer["entries"]] == [
        ("rev#req#r2", "KIND_REVOKE", -150),
        ("req#fix-1", "KIND_ADJUSTMENT", -1200),
        ("ach#first-win", "KIND_ACHIEVEMENT", 50),
    ]
    assert answer["entries"][0]["reverses_entry_id"] == "req#r2"
    assert answer["entries"][0]["recorded_at"] == "2025-03-30T01:59:50.250Z"


def test_history_command_failure_after_a_page_says_how_many_entries_were_listed(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    client = run_main(services, ["history", "player-1", "--token", TOKEN] + TARGET_FLAGS)
    services.answer(
        method(XP, "ListXpHistory"), client, xp_pb2.ListXpHistoryResponse(entries=HISTORY[:2], next_page_token="p2")
    )
    services.fail(method(XP, "ListXpHistory"), client, grpc.StatusCode.UNAVAILABLE, "DynamoDB is throttling")
    assert result(client) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == HISTORY_LINES[:2]
    assert err == (
        "rewardsctl: history failed after 2 entries: UNAVAILABLE: DynamoDB is throttling\n"
        "  safe to retry: run the same command again\n"
    )


def test_adjust_command_takes_a_negative_delta_and_says_the_level_stays(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    client = run_main(
        services,
        ["adjust", "player-1", "-1200", "--reason", "refund, ticket 42", "--request-id", "fix-1", "--token", TOKEN]
        + TARGET_FLAGS,
    )
    metadata, request = services.answer(
        method(XP, "AdjustXp"),
        client,
        xp_pb2.AwardXpResponse(user_id="player-1", xp_awarded=-1200, total_xp=300, level=4),
    )
    assert result(client) == 0
    assert request == xp_pb2.AdjustXpRequest(
        user_id="player-1", delta=-1200, reason="refund, ticket 42", request_id="fix-1"
    )
    assert BEARER in metadata
    assert capsys.readouterr().out.splitlines() == [
        "player-1: -1,200 XP adjusted ('refund, ticket 42'); total 300 XP, level 4",
        "level 4 stays: levels reached, their rewards and unlocked achievements are never taken back",
        "request_id fix-1 (repeat it with --request-id to retry safely)",
    ]


def test_adjust_command_makes_a_request_id_and_a_repeat_says_nothing_changed(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    client = run_main(services, ["adjust", "player-1", "+250", "--reason", "event", "--token", TOKEN] + TARGET_FLAGS)
    _, request = services.answer(
        method(XP, "AdjustXp"),
        client,
        xp_pb2.AwardXpResponse(
            user_id="player-1", xp_awarded=250, total_xp=350, level=3, level_up=level_up(2, 3, ("gold", 100))
        ),
    )
    assert result(client) == 0
    assert request.delta == 250 and request.request_id.startswith("rewardsctl-")
    assert capsys.readouterr().out.splitlines() == [
        "player-1: +250 XP adjusted ('event'); total 350 XP, level 3",
        "level up: 2 -> 3; rewards: 100 gold",
        f"request_id {request.request_id} (repeat it with --request-id to retry safely)",
    ]
    client = run_main(
        services,
        ["adjust", "player-1", "250", "--reason", "event", "--request-id", request.request_id, "--token", TOKEN]
        + TARGET_FLAGS,
    )
    services.answer(
        method(XP, "AdjustXp"),
        client,
        xp_pb2.AwardXpResponse(user_id="player-1", xp_awarded=250, total_xp=350, level=3, duplicate=True),
    )
    assert result(client) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"player-1: request {request.request_id} was already recorded, nothing changed (it adjusted +250 XP); "
        "total 350 XP, level 3"
    )


def test_adjust_json_prints_the_answer_and_the_request_id_it_made_on_stderr(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    client = run_main(
        services, ["adjust", "player-1", "-5", "--reason", "typo", "--json", "--token", TOKEN] + TARGET_FLAGS
    )
    _, request = services.answer(
        method(XP, "AdjustXp"), client, xp_pb2.AwardXpResponse(user_id="player-1", xp_awarded=-5, total_xp=95, level=1)
    )
    assert result(client) == 0
    out, err = capsys.readouterr()
    assert (json.loads(out)["xp_awarded"], json.loads(out)["total_xp"]) == (-5, 95)
    assert err == f"request_id {request.request_id}\n"


def test_adjust_failure_hint_names_the_request_id_to_repeat(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    client = run_main(services, ["adjust", "player-1", "-5000", "--reason", "typo", "--token", TOKEN] + TARGET_FLAGS)
    _, request = services.fail(method(XP, "AdjustXp"), client, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert result(client) == 1
    assert capsys.readouterr().err == (
        "rewardsctl: adjust failed: DEADLINE_EXCEEDED: Deadline Exceeded\n"
        "  the call may or may not have been done: it is safe to run it again with "
        f"--request-id {request.request_id}\n"
    )


def test_revoke_command_prints_what_it_took_and_that_a_repeat_changed_nothing(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["revoke", "player-1", "--entry-id", "auto#5e0c", "--reason", "bot", "--token", TOKEN] + TARGET_FLAGS
    client = run_main(services, argv)
    _, request = services.answer(
        method(XP, "RevokeAward"),
        client,
        xp_pb2.AwardXpResponse(user_id="player-1", xp_awarded=-150, total_xp=50, level=2),
    )
    assert result(client) == 0
    assert request == xp_pb2.RevokeAwardRequest(user_id="player-1", entry_id="auto#5e0c", reason="bot")
    assert capsys.readouterr().out.splitlines() == [
        "player-1: revoked entry auto#5e0c: -150 XP; total 50 XP, level 2",
        "level 2 stays: levels reached, their rewards and unlocked achievements are never taken back",
    ]
    client = run_main(
        services, ["revoke", "player-1", "--request-id", "r2", "--reason", "bot", "--token", TOKEN] + TARGET_FLAGS
    )
    _, request = services.answer(
        method(XP, "RevokeAward"),
        client,
        xp_pb2.AwardXpResponse(user_id="player-1", xp_awarded=-150, total_xp=50, level=2, duplicate=True),
    )
    assert result(client) == 0
    assert request == xp_pb2.RevokeAwardRequest(user_id="player-1", request_id="r2", reason="bot")
    assert capsys.readouterr().out.splitlines()[0] == (
        "player-1: request r2 was already revoked, nothing changed (it took -150 XP); total 50 XP, level 2"
    )


def test_revoke_refused_prints_the_status_and_what_is_unmet(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str]
) -> None:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type="FAILED_PRECONDITION", subject="entry_id", description="revoke entries are not revoked"
                )
            ]
        )
    )
    status = rpc_status.to_status(
        status_pb2.Status(
            code=grpc.StatusCode.FAILED_PRECONDITION.value[0],
            message="entry 'rev#req#r2' is a revoke: there is nothing to revoke",
            details=[detail],
        )
    )
    client = run_main(
        services,
        ["revoke", "player-1", "--entry-id", "rev#req#r2", "--reason", "oops", "--token", TOKEN] + TARGET_FLAGS,
    )
    services.fail(method(XP, "RevokeAward"), client, status.code, status.details, status.trailing_metadata)
    assert result(client) == 1
    assert capsys.readouterr().err == (
        "rewardsctl: revoke failed: FAILED_PRECONDITION: entry 'rev#req#r2' is a revoke: there is nothing to revoke\n"
        "  unmet entry_id: revoke entries are not revoked\n"
    )


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        pytest.param(["adjust", "player-1", "0", "--reason", "x"], "argument DELTA: must not be 0", id="adjust-zero"),
        pytest.param(
            ["adjust", "player-1", "12.5", "--reason", "x"],
            "argument DELTA: must be a whole number of XP, such as 50 or -50 (got '12.5')",
            id="adjust-not-whole",
        ),
        pytest.param(["adjust", "player-1", "50"], "the following arguments are required: --reason", id="no-reason"),
        pytest.param(
            ["revoke", "player-1", "--reason", "x"],
            "one of the arguments --request-id --entry-id is required",
            id="revoke-no-target",
        ),
        pytest.param(
            ["revoke", "player-1", "--request-id", "r", "--entry-id", "e", "--reason", "x"],
            "argument --entry-id: not allowed with argument --request-id",
            id="revoke-two-targets",
        ),
        pytest.param(["history", "player-1", "--limit", "-1"], "must be 0 or more", id="history-negative-limit"),
    ],
)
def test_bad_command_lines_exit_2_and_call_nothing(
    services: ScriptedServices, capsys: pytest.CaptureFixture[str], argv: list[str], complaint: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv + ["--token", TOKEN] + TARGET_FLAGS)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err
    assert services.sent == []
