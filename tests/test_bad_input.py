"""Bad input: INVALID_ARGUMENT naming the field, with google.rpc.BadRequest
details, and nothing written."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from rewards.v1 import achievements_pb2 as ach
from rewards.v1 import events_pb2 as ev
from rewards.v1 import levels_pb2 as lv
from rewards.v1 import xp_pb2 as xp
from tests.cluster import Cluster

LONG_ID = "x" * 129
CONTROL_ID = "bad\x00id"
# Ids that look like "gw1" (or print as it, reordered) but are other strings: format characters
# (Unicode category Cf) and a spelling other than NFC.
ZERO_WIDTH_ID = "gw1\u200b"
RIGHT_TO_LEFT_ID = "\u202e1wg"
BOM_ID = "\ufeffgw1"
JOINED_ID = "g\u200dw1"
DECOMPOSED_ID = "gw1-caf\u0065\u0301"  # é as e + U+0301; NFC is U+00E9
LOOKALIKE_IDS = [ZERO_WIDTH_ID, RIGHT_TO_LEFT_ID, BOM_ID, JOINED_ID, DECOMPOSED_ID]

CASES: list[tuple[str, str, Any, str]] = [
    # (service, method, request, field the message must name)
    ("xp", "AwardXp", xp.AwardXpRequest(user_id="", activity_id="a"), "user_id"),
    ("xp", "AwardXp", xp.AwardXpRequest(user_id=LONG_ID, activity_id="a"), "user_id"),
    ("xp", "AwardXp", xp.AwardXpRequest(user_id=CONTROL_ID, activity_id="a"), "user_id"),
    ("xp", "AwardXp", xp.AwardXpRequest(user_id="u", activity_id=""), "activity_id"),
    ("xp", "AwardXp", xp.AwardXpRequest(user_id="u", activity_id="a", request_id="r" * 129), "request_id"),
    ("xp", "AwardXp", xp.AwardXpRequest(user_id="u", activity_id="a", request_id=" r"), "request_id"),
    ("xp", "AwardXp", xp.AwardXpRequest(user_id="u", activity_id="a", request_id="r\n1"), "request_id"),
    ("xp", "AwardXp", xp.AwardXpRequest(user_id=ZERO_WIDTH_ID, activity_id="a"), "user_id"),
    ("xp", "AwardXp", xp.AwardXpRequest(user_id=RIGHT_TO_LEFT_ID, activity_id="a"), "user_id"),
    ("xp", "AwardXp", xp.AwardXpRequest(user_id=DECOMPOSED_ID, activity_id="a"), "user_id"),
    ("xp", "AwardXp", xp.AwardXpRequest(user_id="u", activity_id=JOINED_ID), "activity_id"),
    ("xp", "AwardXp", xp.AwardXpRequest(user_id="u", activity_id="a", request_id=BOM_ID), "request_id"),
    ("xp", "GetProgress", xp.GetProgressRequest(user_id=ZERO_WIDTH_ID), "user_id"),
    (
        "xp",
        "GrantXp",
        xp.GrantXpRequest(user_id="u", amount=5, reason="r", achievement_id=RIGHT_TO_LEFT_ID),
        "achievement_id",
    ),
    ("xp", "ListActivities", xp.ListActivitiesRequest(category=DECOMPOSED_ID), "category"),
    (
        "xp",
        "PutActivity",
        xp.PutActivityRequest(activity=xp.Activity(activity_id=ZERO_WIDTH_ID, name="n", xp=1)),
        "activity.activity_id",
    ),
    (
        "xp",
        "PutActivity",
        xp.PutActivityRequest(activity=xp.Activity(activity_id="bad-a3", name="n", category=BOM_ID, xp=1)),
        "activity.category",
    ),
    ("xp", "GrantXp", xp.GrantXpRequest(user_id="u", amount=-5, reason="r"), "amount"),
    ("xp", "GrantXp", xp.GrantXpRequest(user_id="u", amount=10**12, reason="r"), "amount"),
    ("xp", "GrantXp", xp.GrantXpRequest(user_id="u", amount=5, reason=""), "reason"),
    (
        "xp",
        "GrantXp",
        xp.GrantXpRequest(user_id="u", amount=5, reason="r", request_id="r", achievement_id="a"),
        "request_id",
    ),
    ("xp", "GrantXp", xp.GrantXpRequest(user_id="u", amount=5, reason="r", achievement_id=LONG_ID), "achievement_id"),
    ("xp", "GetProgress", xp.GetProgressRequest(user_id=""), "user_id"),
    ("xp", "PutActivity", xp.PutActivityRequest(), "activity"),
    (
        "xp",
        "PutActivity",
        xp.PutActivityRequest(activity=xp.Activity(activity_id="bad-a1", name="n", xp=-1)),
        "activity.xp",
    ),
    (
        "xp",
        "PutActivity",
        xp.PutActivityRequest(activity=xp.Activity(activity_id="bad-a2", name="", xp=1)),
        "activity.name",
    ),
    (
        "xp",
        "PutActivity",
        xp.PutActivityRequest(activity=xp.Activity(activity_id=LONG_ID, name="n", xp=1)),
        "activity.activity_id",
    ),
    ("xp", "GetActivity", xp.GetActivityRequest(activity_id=""), "activity_id"),
    ("xp", "DeleteActivity", xp.DeleteActivityRequest(activity_id=CONTROL_ID), "activity_id"),
    ("xp", "ListActivities", xp.ListActivitiesRequest(page_size=-1), "page_size"),
    ("xp", "ListActivities", xp.ListActivitiesRequest(page_size=101), "page_size"),
    ("xp", "ListActivities", xp.ListActivitiesRequest(page_token="not-a-token"), "page_token"),
    (
        "achievements",
        "PutAchievement",
        ach.PutAchievementRequest(achievement=ach.Achievement(achievement_id="bad-h1", name="n", xp_reward=-10)),
        "achievement.xp_reward",
    ),
    (
        "achievements",
        "PutAchievement",
        ach.PutAchievementRequest(
            achievement=ach.Achievement(
                achievement_id="bad-h2", name="n", requirements=ach.Requirements(min_total_xp=-1)
            )
        ),
        "achievement.requirements.min_total_xp",
    ),
    (
        "achievements",
        "PutAchievement",
        ach.PutAchievementRequest(
            achievement=ach.Achievement(achievement_id="bad-h3", name="n", requirements=ach.Requirements(min_level=-2))
        ),
        "achievement.requirements.min_level",
    ),
    (
        "achievements",
        "PutAchievement",
        ach.PutAchievementRequest(
            achievement=ach.Achievement(
                achievement_id="bad-h4", name="n", requirements=ach.Requirements(required_achievements=[""])
            )
        ),
        "achievement.requirements.required_achievements[0]",
    ),
    (
        "achievements",
        "PutAchievement",
        ach.PutAchievementRequest(
            achievement=ach.Achievement(
                achievement_id="bad-h5", name="n", requirements=ach.Requirements(required_achievements=["bad-h5"])
            )
        ),
        "achievement.requirements.required_achievements[0]",
    ),
    ("achievements", "UnlockAchievement", ach.UnlockAchievementRequest(user_id="", achievement_id="a"), "user_id"),
    (
        "achievements",
        "UnlockAchievement",
        ach.UnlockAchievementRequest(user_id="u", achievement_id=LONG_ID),
        "achievement_id",
    ),
    (
        "achievements",
        "UnlockAchievement",
        ach.UnlockAchievementRequest(user_id=RIGHT_TO_LEFT_ID, achievement_id="a"),
        "user_id",
    ),
    (
        "achievements",
        "UnlockAchievement",
        ach.UnlockAchievementRequest(user_id="u", achievement_id=DECOMPOSED_ID),
        "achievement_id",
    ),
    (
        "achievements",
        "UnlockAchievement",
        ach.UnlockAchievementRequest(user_id="u", achievement_id="a", request_id=ZERO_WIDTH_ID),
        "request_id",
    ),
    (
        "achievements",
        "PutAchievement",
        ach.PutAchievementRequest(achievement=ach.Achievement(achievement_id=JOINED_ID, name="n")),
        "achievement.achievement_id",
    ),
    (
        "achievements",
        "PutAchievement",
        ach.PutAchievementRequest(
            achievement=ach.Achievement(
                achievement_id="bad-h6", name="n", requirements=ach.Requirements(required_achievements=[BOM_ID])
            )
        ),
        "achievement.requirements.required_achievements[0]",
    ),
    ("achievements", "GetAchievement", ach.GetAchievementRequest(achievement_id=ZERO_WIDTH_ID), "achievement_id"),
    ("achievements", "ListUserAchievements", ach.ListUserAchievementsRequest(user_id=DECOMPOSED_ID), "user_id"),
    ("achievements", "ListAchievements", ach.ListAchievementsRequest(page_size=1000), "page_size"),
    ("achievements", "ListUserAchievements", ach.ListUserAchievementsRequest(user_id=""), "user_id"),
    ("xp", "ListXpHistory", xp.ListXpHistoryRequest(user_id=ZERO_WIDTH_ID), "user_id"),
    ("xp", "ListXpHistory", xp.ListXpHistoryRequest(user_id="u", page_size=-1), "page_size"),
    ("xp", "ListXpHistory", xp.ListXpHistoryRequest(user_id="u", page_token="not-a-token"), "page_token"),
    ("xp", "AdjustXp", xp.AdjustXpRequest(user_id="u", delta=0, reason="r"), "delta"),
    ("xp", "AdjustXp", xp.AdjustXpRequest(user_id="u", delta=-1_000_000_001, reason="r"), "delta"),
    ("xp", "AdjustXp", xp.AdjustXpRequest(user_id="u", delta=5), "reason"),
    ("xp", "RevokeAward", xp.RevokeAwardRequest(user_id="u", reason="r"), "request_id"),
    ("xp", "RevokeAward", xp.RevokeAwardRequest(user_id="u", request_id="a", entry_id="b", reason="r"), "request_id"),
    ("xp", "RevokeAward", xp.RevokeAwardRequest(user_id="u", entry_id="x" * 200, reason="r"), "entry_id"),
    ("xp", "RevokeAward", xp.RevokeAwardRequest(user_id="u", request_id="a"), "reason"),
    ("xp", "PutStreak", xp.PutStreakRequest(), "streak"),
    (
        "xp",
        "PutStreak",
        xp.PutStreakRequest(streak=xp.Streak(streak_id=ZERO_WIDTH_ID, name="n", activity_id="a", period=xp.PERIOD_DAY)),
        "streak.streak_id",
    ),
    (
        "xp",
        "PutStreak",
        xp.PutStreakRequest(streak=xp.Streak(streak_id="bad-s1", activity_id="a", period=xp.PERIOD_DAY)),
        "streak.name",
    ),
    (
        "xp",
        "PutStreak",
        xp.PutStreakRequest(
            streak=xp.Streak(streak_id="bad-s2", name="x" * 201, activity_id="a", period=xp.PERIOD_DAY)
        ),
        "streak.name",
    ),
    (
        "xp",
        "PutStreak",
        xp.PutStreakRequest(streak=xp.Streak(streak_id="bad-s3", name="n", period=xp.PERIOD_DAY)),
        "streak.activity_id",
    ),
    (
        "xp",
        "PutStreak",
        xp.PutStreakRequest(
            streak=xp.Streak(streak_id="bad-s4", name="n", activity_id="a", category="c", period=xp.PERIOD_WEEK)
        ),
        "streak.activity_id",
    ),
    (
        "xp",
        "PutStreak",
        xp.PutStreakRequest(
            streak=xp.Streak(streak_id="bad-s5", name="n", activity_id=JOINED_ID, period=xp.PERIOD_DAY)
        ),
        "streak.activity_id",
    ),
    (
        "xp",
        "PutStreak",
        xp.PutStreakRequest(streak=xp.Streak(streak_id="bad-s6", name="n", category=BOM_ID, period=xp.PERIOD_DAY)),
        "streak.category",
    ),
    (
        "xp",
        "PutStreak",
        xp.PutStreakRequest(streak=xp.Streak(streak_id="bad-s7", name="n", activity_id="a")),
        "streak.period",
    ),
    (
        "xp",
        "PutStreak",
        xp.PutStreakRequest(streak=xp.Streak(streak_id="bad-s8", name="n", activity_id="a", period=99)),
        "streak.period",
    ),
    ("xp", "GetStreak", xp.GetStreakRequest(streak_id=""), "streak_id"),
    ("xp", "GetStreak", xp.GetStreakRequest(streak_id=DECOMPOSED_ID), "streak_id"),
    ("xp", "DeleteStreak", xp.DeleteStreakRequest(streak_id=LONG_ID), "streak_id"),
    ("xp", "ListStreaks", xp.ListStreaksRequest(page_size=101), "page_size"),
    ("xp", "ListStreaks", xp.ListStreaksRequest(page_token="not-a-token"), "page_token"),
    (
        "achievements",
        "PutAchievement",
        ach.PutAchievementRequest(
            achievement=ach.Achievement(
                achievement_id="bad-c1",
                name="n",
                requirements=ach.Requirements(activity_counts=[ach.ActivityCount(activity_id=ZERO_WIDTH_ID, count=1)]),
            )
        ),
        "achievement.requirements.activity_counts[0].activity_id",
    ),
    (
        "achievements",
        "PutAchievement",
        ach.PutAchievementRequest(
            achievement=ach.Achievement(
                achievement_id="bad-c2",
                name="n",
                requirements=ach.Requirements(activity_counts=[ach.ActivityCount(activity_id="a", count=1)] * 11),
            )
        ),
        "achievement.requirements.activity_counts",
    ),
    (
        "achievements",
        "PutAchievement",
        ach.PutAchievementRequest(
            achievement=ach.Achievement(
                achievement_id="bad-c3",
                name="n",
                requirements=ach.Requirements(streak_lengths=[ach.StreakLength(streak_id=ZERO_WIDTH_ID, length=3)]),
            )
        ),
        "achievement.requirements.streak_lengths[0].streak_id",
    ),
    (
        "achievements",
        "PutAchievement",
        ach.PutAchievementRequest(
            achievement=ach.Achievement(
                achievement_id="bad-c4",
                name="n",
                requirements=ach.Requirements(streak_lengths=[ach.StreakLength(streak_id="s", length=0)]),
            )
        ),
        "achievement.requirements.streak_lengths[0].length",
    ),
    (
        "achievements",
        "PutAchievement",
        ach.PutAchievementRequest(
            achievement=ach.Achievement(
                achievement_id="bad-c5",
                name="n",
                requirements=ach.Requirements(streak_lengths=[ach.StreakLength(streak_id="s", length=100_001)]),
            )
        ),
        "achievement.requirements.streak_lengths[0].length",
    ),
    (
        "achievements",
        "PutAchievement",
        ach.PutAchievementRequest(
            achievement=ach.Achievement(
                achievement_id="bad-c6",
                name="n",
                requirements=ach.Requirements(streak_lengths=[ach.StreakLength(streak_id="s", length=1)] * 11),
            )
        ),
        "achievement.requirements.streak_lengths",
    ),
    (
        "achievements",
        "GetAchievementProgress",
        ach.GetAchievementProgressRequest(user_id=DECOMPOSED_ID),
        "user_id",
    ),
    (
        "achievements",
        "GetAchievementProgress",
        ach.GetAchievementProgressRequest(user_id="u", page_size=101),
        "page_size",
    ),
    ("achievements", "GetAchievementStats", ach.GetAchievementStatsRequest(achievement_id=""), "achievement_id"),
    ("achievements", "UnlockDueAchievements", ach.UnlockDueAchievementsRequest(user_id="u"), "trigger_id"),
    (
        "achievements",
        "UnlockDueAchievements",
        ach.UnlockDueAchievementsRequest(user_id="u", trigger_id="t", achievement_ids=[ZERO_WIDTH_ID]),
        "achievement_ids[0]",
    ),
    ("levels", "PutLevel", lv.PutLevelRequest(level=lv.Level(level=0, xp_required=10)), "level.level"),
    ("levels", "PutLevel", lv.PutLevelRequest(level=lv.Level(level=-3, xp_required=10)), "level.level"),
    ("levels", "PutLevel", lv.PutLevelRequest(level=lv.Level(level=9001, xp_required=-1)), "level.xp_required"),
    (
        "levels",
        "PutLevel",
        lv.PutLevelRequest(
            level=lv.Level(level=9002, xp_required=1, rewards=[lv.Reward(reward_id="gold", quantity=0)])
        ),
        "level.rewards[0].quantity",
    ),
    ("levels", "DeleteLevel", lv.DeleteLevelRequest(level=0), "level"),
    ("levels", "PutLevel", lv.PutLevelRequest(level=lv.Level(level=2_000_000, xp_required=1)), "level.level"),
    (
        "levels",
        "PutLevel",
        lv.PutLevelRequest(
            level=lv.Level(level=9003, xp_required=1, rewards=[lv.Reward(reward_id="gold", quantity=1)] * 51)
        ),
        "level.rewards",
    ),
    (
        "levels",
        "PutLevel",
        lv.PutLevelRequest(level=lv.Level(level=9004, xp_required=1, rewards=[lv.Reward(reward_id="", quantity=1)])),
        "level.rewards[0].reward_id",
    ),
    (
        "levels",
        "PutLevel",
        lv.PutLevelRequest(
            level=lv.Level(level=9005, xp_required=1, rewards=[lv.Reward(reward_id=ZERO_WIDTH_ID, quantity=1)])
        ),
        "level.rewards[0].reward_id",
    ),
    ("levels", "CheckLevelUp", lv.CheckLevelUpRequest(user_id=RIGHT_TO_LEFT_ID), "user_id"),
    ("levels", "CheckLevelUp", lv.CheckLevelUpRequest(user_id="u", request_id="r" * 200 + "\u200b"), "request_id"),
    ("levels", "CheckLevelUp", lv.CheckLevelUpRequest(user_id=LONG_ID), "user_id"),
    ("levels", "CheckLevelUp", lv.CheckLevelUpRequest(user_id="u", request_id="r" * 257), "request_id"),
]


@pytest.mark.parametrize(
    "service,method,request_message,field", CASES, ids=[f"{c[1]}-{c[3]}-{i}" for i, c in enumerate(CASES)]
)
def test_bad_input_is_invalid_argument_naming_the_field(
    cluster: Cluster, service: str, method: str, request_message: Any, field: str
) -> None:
    stub = getattr(cluster, service)
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, method)(request_message)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(field + " ")
    status = rpc_status.from_call(error)  # rich details, for clients that read them
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == field


def test_rejected_writes_leave_nothing_behind(cluster: Cluster) -> None:
    for name in ("activities", "achievements", "streaks", "xp_ledger", "user_progress", "user_achievements"):
        items = cluster.dynamodb.scan(TableName=cluster.table(name), ConsistentRead=True)["Items"]
        keys = [next(iter(v.values())) for item in items for k, v in item.items() if k.endswith("_id")]
        assert not any(str(k).startswith("bad-") for k in keys), name
        assert not any(k in ("u", LONG_ID, CONTROL_ID, *LOOKALIKE_IDS) for k in keys), name
    levels = cluster.levels.ListLevels(lv.ListLevelsRequest()).levels
    assert all(l.level < 9000 for l in levels)


@pytest.mark.parametrize("method", ["/rewards.v1.XpService/AwardXp", "/rewards.v1.XpService/GetProgress"])
def test_malformed_protobuf_is_invalid_argument(cluster: Cluster, method: str) -> None:
    # Field 1 (user_id) holding bytes that are not UTF-8: gRPC alone would answer INTERNAL.
    call = cluster.channel("xp").unary_unary(method)
    with pytest.raises(grpc.RpcError) as caught:
        call(b"\x0a\x02\xff\xfe", timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in caught.value.details()


@pytest.mark.parametrize(
    "user_id,message",
    [
        (ZERO_WIDTH_ID, "user_id must not contain format character U+200B (ZERO WIDTH SPACE)"),
        (RIGHT_TO_LEFT_ID, "user_id must not contain format character U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        (BOM_ID, "user_id must not contain format character U+FEFF (ZERO WIDTH NO-BREAK SPACE)"),
        (JOINED_ID, "user_id must not contain format character U+200D (ZERO WIDTH JOINER)"),
        ("gw1\u00ad", "user_id must not contain format character U+00AD (SOFT HYPHEN)"),
        (DECOMPOSED_ID, "user_id must be in Unicode NFC (normalization form C)"),
        ("\u212b", "user_id must be in Unicode NFC (normalization form C)"),  # ANGSTROM SIGN; NFC is U+00C5
    ],
)
def test_lookalike_ids_are_refused_saying_what_is_wrong(cluster: Cluster, user_id: str, message: str) -> None:
    """Ids are keys: "gw1" and "gw1" with a zero-width space would be two users that print alike."""
    for call in (
        lambda: cluster.xp.AwardXp(xp.AwardXpRequest(user_id=user_id, activity_id="a", request_id="r")),
        lambda: cluster.xp.GetProgress(xp.GetProgressRequest(user_id=user_id)),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == message


EVENTS_CASES: list[tuple[str, Any, str]] = [
    # (method, request, field the message must name)
    ("WatchEvents", ev.WatchEventsRequest(user_id=LONG_ID), "user_id"),
    ("WatchEvents", ev.WatchEventsRequest(user_id=ZERO_WIDTH_ID), "user_id"),
    ("WatchEvents", ev.WatchEventsRequest(user_id="u", types=[ev.EVENT_TYPE_LEVEL_UP, 99]), "types[1]"),
    ("WatchEvents", ev.WatchEventsRequest(user_id="u", types=[ev.EVENT_TYPE_UNSPECIFIED]), "types[0]"),
    ("WatchEvents", ev.WatchEventsRequest(user_id="u", cursor="not-a-cursor"), "cursor"),
    ("PutWebhook", ev.PutWebhookRequest(), "webhook"),
    (
        "PutWebhook",
        ev.PutWebhookRequest(webhook=ev.Webhook(url="https://e.com", secret="s" * 16)),
        "webhook.webhook_id",
    ),
    (
        "PutWebhook",
        ev.PutWebhookRequest(webhook=ev.Webhook(webhook_id="bad-w1", url="ftp://e.com", secret="s" * 16)),
        "webhook.url",
    ),
    (
        "PutWebhook",
        ev.PutWebhookRequest(webhook=ev.Webhook(webhook_id="bad-w2", url="https://e.com", secret="s" * 15)),
        "webhook.secret",
    ),
    (
        "PutWebhook",
        ev.PutWebhookRequest(webhook=ev.Webhook(webhook_id="bad-w3", url="https://e.com", secret="s" * 16, types=[7])),
        "webhook.types[0]",
    ),
    ("ListWebhooks", ev.ListWebhooksRequest(page_size=-1), "page_size"),
    ("DeleteWebhook", ev.DeleteWebhookRequest(), "webhook_id"),
    ("ListFailedDeliveries", ev.ListFailedDeliveriesRequest(webhook_id=LONG_ID), "webhook_id"),
    ("RedeliverEvents", ev.RedeliverEventsRequest(webhook_id="w", delivery_ids=["d"] * 101), "delivery_ids"),
    ("RedeliverEvents", ev.RedeliverEventsRequest(webhook_id="w", delivery_ids=[CONTROL_ID]), "delivery_ids[0]"),
]


@pytest.fixture(scope="module")
def events_cluster(dynamodb_endpoint: str) -> Iterator[Cluster]:
    made = Cluster(dynamodb_endpoint, events=True)
    yield made
    made.close()


def test_bad_input_to_the_events_service_is_invalid_argument_naming_the_field(events_cluster: Cluster) -> None:
    for method, request_message, field in EVENTS_CASES:
        with pytest.raises(grpc.RpcError) as caught:
            answer = getattr(events_cluster.events, method)(request_message, timeout=10)
            if method == "WatchEvents":
                next(iter(answer))
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, field, error)
        assert error.details().startswith(field + " "), (method, field, error.details())
        status = rpc_status.from_call(error)
        assert status is not None
        bad_request = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(bad_request)
        assert bad_request.field_violations[0].field == field
    assert events_cluster.events.ListWebhooks(ev.ListWebhooksRequest()).webhooks == []  # nothing written
