"""AchievementsService against real servers and DynamoDB Local: unlocks that pay
their reward in their own transaction, and ask Levels when a level-up may be due."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc

from rewards.v1 import achievements_pb2 as ach
from rewards.v1 import levels_pb2, xp_pb2
from tests.cluster import STANDARD_LEVELS, Cluster, rpc_error, unique

Factory = Callable[..., Cluster]
T = TypeVar("T")


def put_achievement(cluster: Cluster, xp_reward: int = 0, **requirements: object) -> str:
    achievement_id = unique("ach")
    cluster.achievements.PutAchievement(
        ach.PutAchievementRequest(
            achievement=ach.Achievement(
                achievement_id=achievement_id,
                name="First Blood",
                xp_reward=xp_reward,
                requirements=ach.Requirements(**requirements),  # type: ignore[arg-type]
            )
        )
    )
    return achievement_id


def unlock(cluster: Cluster, user_id: str, achievement_id: str) -> ach.UnlockAchievementResponse:
    return cluster.achievements.UnlockAchievement(
        ach.UnlockAchievementRequest(user_id=user_id, achievement_id=achievement_id, request_id=unique("req"))
    )


def progress(cluster: Cluster, user_id: str) -> xp_pb2.UserProgress:
    return cluster.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id))


def unlocked_ids(cluster: Cluster, user_id: str) -> list[str]:
    listing = cluster.achievements.ListUserAchievements(ach.ListUserAchievementsRequest(user_id=user_id))
    return [a.achievement_id for a in listing.achievements]


def test_catalog_put_get_list_delete(cluster: Cluster) -> None:
    achievement = ach.Achievement(
        achievement_id=unique("ach"),
        name="Explorer",
        description="Visit every zone",
        xp_reward=150,
        hidden=True,
        requirements=ach.Requirements(required_achievements=["tutorial"], min_total_xp=10, min_level=2),
    )
    assert cluster.achievements.PutAchievement(ach.PutAchievementRequest(achievement=achievement)) == achievement
    assert (
        cluster.achievements.GetAchievement(ach.GetAchievementRequest(achievement_id=achievement.achievement_id))
        == achievement
    )

    listed: list[ach.Achievement] = []
    token = ""
    while True:
        page = cluster.achievements.ListAchievements(ach.ListAchievementsRequest(page_size=2, page_token=token))
        listed += page.achievements
        token = page.next_page_token
        if not token:
            break
    assert achievement in listed

    cluster.achievements.DeleteAchievement(ach.DeleteAchievementRequest(achievement_id=achievement.achievement_id))
    for call in (cluster.achievements.GetAchievement, cluster.achievements.DeleteAchievement):
        request_type = (
            ach.GetAchievementRequest if call is cluster.achievements.GetAchievement else ach.DeleteAchievementRequest
        )
        error = rpc_error(lambda: call(request_type(achievement_id=achievement.achievement_id)))
        assert error.code() == grpc.StatusCode.NOT_FOUND


def test_first_unlock_grants_xp_once_through_the_xp_ledger(cluster: Cluster, user_id: str) -> None:
    achievement_id = put_achievement(cluster, xp_reward=120)
    first = unlock(cluster, user_id, achievement_id)
    assert (first.already_unlocked, first.xp_awarded, first.total_xp) == (False, 120, 120)
    assert first.achievement.achievement_id == achievement_id
    # 120 XP crosses level 2 (100 XP): the unlock's own transaction paid it, then Levels was asked.
    assert (first.level_up.leveled_up, first.level_up.current_level) == (True, 2)

    repeat = unlock(cluster, user_id, achievement_id)
    assert (repeat.already_unlocked, repeat.xp_awarded, repeat.total_xp) == (True, 0, 120)
    after = progress(cluster, user_id)
    assert (after.total_xp, after.level, list(after.unlocked_achievements)) == (120, 2, [achievement_id])

    ledger = cluster.dynamodb.get_item(
        TableName=cluster.table("xp_ledger"),
        Key={"user_id": {"S": user_id}, "entry_id": {"S": f"ach#{achievement_id}"}},
        ConsistentRead=True,
    )["Item"]
    assert (ledger["kind"]["S"], ledger["xp"]["N"], ledger["achievement_id"]["S"]) == (
        "achievement",
        "120",
        achievement_id,
    )


def test_unknown_achievement_is_not_found(cluster: Cluster, user_id: str) -> None:
    error = rpc_error(lambda: unlock(cluster, user_id, "no-such-achievement"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-achievement" in error.details()


def test_unmet_requirements_name_what_is_missing_and_write_nothing(cluster: Cluster, user_id: str) -> None:
    prerequisite = put_achievement(cluster)
    gated = put_achievement(cluster, xp_reward=50, required_achievements=[prerequisite], min_total_xp=300, min_level=3)
    cluster.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=120, reason="t"))  # level 2

    error = rpc_error(lambda: unlock(cluster, user_id, gated))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"achievement {prerequisite!r} must be unlocked first" in error.details()
    assert "needs 300 total XP, has 120" in error.details()
    assert "needs level 3, is level 2" in error.details()
    assert unlocked_ids(cluster, user_id) == []
    assert progress(cluster, user_id).total_xp == 120

    unlock(cluster, user_id, prerequisite)
    cluster.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=200, reason="t"))  # 320 XP, level 3
    done = unlock(cluster, user_id, gated)
    assert (done.already_unlocked, done.xp_awarded, done.total_xp) == (False, 50, 370)
    assert unlocked_ids(cluster, user_id) == sorted([prerequisite, gated])  # in id order


def test_each_requirement_alone_is_enforced(cluster: Cluster, user_id: str) -> None:
    for requirements, expected in (
        ({"min_total_xp": 1}, "needs 1 total XP, has 0"),
        ({"min_level": 2}, "needs level 2, is level 1"),
        ({"required_achievements": ["never-unlocked"]}, "'never-unlocked' must be unlocked first"),
    ):
        error = rpc_error(lambda: unlock(cluster, user_id, put_achievement(cluster, **requirements)))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert expected in error.details()
    assert unlocked_ids(cluster, user_id) == []


def test_concurrent_unlocks_pay_the_reward_exactly_once(cluster: Cluster, user_id: str) -> None:
    achievement_id = put_achievement(cluster, xp_reward=75)
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda _: unlock(cluster, user_id, achievement_id), range(16)))
    assert sum(not r.already_unlocked for r in responses) == 1
    assert sum(r.xp_awarded for r in responses) == 75
    assert progress(cluster, user_id).total_xp == 75
    assert unlocked_ids(cluster, user_id) == [achievement_id]


def test_racing_unlocks_report_the_level_up_once(cluster: Cluster, user_id: str) -> None:
    achievement_id = put_achievement(cluster, xp_reward=150)  # crosses level 2 (100 XP)
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda _: unlock(cluster, user_id, achievement_id), range(8)))
    reporters = [r for r in responses if r.xp_awarded]
    assert len(reporters) == 1 and reporters[0].xp_awarded == 150
    assert [(x.reward_id, x.quantity) for x in reporters[0].level_up.rewards] == [("coins", 100)]
    assert not any(r.HasField("level_up") for r in responses if not r.xp_awarded)
    assert progress(cluster, user_id).total_xp == 150


def test_an_unlock_pays_its_reward_while_xp_service_is_down(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster()
    achievement_id = put_achievement(c, xp_reward=60)
    c.stop("xp")  # the unlock does not call it: the reward is in the unlock's transaction
    first = unlock(c, user_id, achievement_id)
    assert (first.already_unlocked, first.xp_awarded, first.total_xp) == (False, 60, 60)
    c.start("xp")
    assert retry_until_available(lambda: progress(c, user_id)).total_xp == 60


def test_a_level_up_the_unlock_could_not_check_is_granted_by_the_next_check(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster()
    c.put_levels(STANDARD_LEVELS)
    achievement_id = put_achievement(c, xp_reward=300)
    c.stop("levels")
    first = unlock(c, user_id, achievement_id)
    assert (first.already_unlocked, first.xp_awarded, first.total_xp) == (False, 300, 300)
    assert not first.HasField("level_up")  # deferred: the reward is paid, the level-up waits for Levels
    c.start("levels")
    checked = retry_until_available(
        lambda: c.levels.CheckLevelUp(levels_pb2.CheckLevelUpRequest(user_id=user_id, request_id=unique("check")))
    )
    assert (checked.leveled_up, checked.current_level, checked.total_xp) == (True, 3, 300)
    again = unlock(c, user_id, achievement_id)
    assert (again.already_unlocked, again.xp_awarded, again.total_xp) == (True, 0, 300)


def test_an_unlock_decided_on_a_stale_catalog_copy_is_written_with_the_catalog_as_it_is(
    cluster: Cluster, user_id: str
) -> None:
    achievement_id = put_achievement(cluster, xp_reward=10)
    unlock(cluster, unique("warm"), achievement_id)  # the server now holds a copy of the entry
    # Another replica raises the reward and adds a requirement, straight into the table.
    cluster.dynamodb.update_item(
        TableName=cluster.table("achievements"),
        Key={"achievement_id": {"S": achievement_id}},
        UpdateExpression="SET xp_reward = :x, requirements.min_total_xp = :m, revision = :r",
        ExpressionAttributeValues={":x": {"N": "25"}, ":m": {"N": "5"}, ":r": {"S": "another-replica"}},
    )
    error = rpc_error(lambda: unlock(cluster, user_id, achievement_id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "needs 5 total XP, has 0" in error.details()
    cluster.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=5, reason="support", request_id=unique("g")))
    paid = unlock(cluster, user_id, achievement_id)
    assert (paid.xp_awarded, paid.total_xp, paid.achievement.xp_reward) == (25, 30, 25)


def test_a_reward_granted_before_the_unlock_is_not_paid_twice(cluster: Cluster, user_id: str) -> None:
    achievement_id = put_achievement(cluster, xp_reward=30)
    cluster.xp.GrantXp(
        xp_pb2.GrantXpRequest(user_id=user_id, amount=20, reason="support", achievement_id=achievement_id)
    )
    first = unlock(cluster, user_id, achievement_id)
    assert (first.already_unlocked, first.xp_awarded, first.total_xp) == (False, 0, 20)
    listing = cluster.achievements.ListUserAchievements(ach.ListUserAchievementsRequest(user_id=user_id))
    assert [(a.achievement_id, a.xp_reward) for a in listing.achievements] == [(achievement_id, 20)]  # what was paid


def test_list_user_achievements_in_id_order_with_catalog_entries(cluster: Cluster, user_id: str) -> None:
    first, second = sorted((put_achievement(cluster, xp_reward=5), put_achievement(cluster, xp_reward=7)))
    unlock(cluster, user_id, first)
    unlock(cluster, user_id, second)
    listing = cluster.achievements.ListUserAchievements(ach.ListUserAchievementsRequest(user_id=user_id))
    assert listing.user_id == user_id
    assert sorted(a.xp_reward for a in listing.achievements) == [5, 7]
    assert [(a.achievement_id, a.achievement.name) for a in listing.achievements] == [
        (first, "First Blood"),
        (second, "First Blood"),
    ]
    assert all(a.unlocked_at.seconds > 0 for a in listing.achievements)
    cluster.achievements.DeleteAchievement(ach.DeleteAchievementRequest(achievement_id=second))
    listing = cluster.achievements.ListUserAchievements(ach.ListUserAchievementsRequest(user_id=user_id))
    assert listing.achievements[1].achievement_id == second and not listing.achievements[1].HasField("achievement")


def test_a_callers_request_id_cannot_collide_with_an_achievements_reward(cluster: Cluster, user_id: str) -> None:
    achievement_id = put_achievement(cluster, xp_reward=50)
    for request_id in (f"achievement:{achievement_id}", f"ach#{achievement_id}", achievement_id):
        cluster.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=7, reason="support", request_id=request_id))
    first = unlock(cluster, user_id, achievement_id)
    assert (first.already_unlocked, first.xp_awarded, first.total_xp) == (False, 50, 71)


def owed_unlock(cluster: Cluster, user_id: str, achievement_id: str, xp_reward: int) -> None:
    """An unlock as a version before this one left it when its separate XP grant did not complete."""
    cluster.dynamodb.put_item(
        TableName=cluster.table("user_achievements"),
        Item={
            "user_id": {"S": user_id},
            "achievement_id": {"S": achievement_id},
            "unlocked_at": {"S": "2026-01-01T00:00:00.000000Z"},
            "xp_reward": {"N": str(xp_reward)},
            "xp_granted": {"BOOL": False},
        },
    )
    cluster.dynamodb.update_item(
        TableName=cluster.table("user_progress"),
        Key={"user_id": {"S": user_id}},
        UpdateExpression="ADD unlocked_achievements :a",
        ExpressionAttributeValues={":a": {"SS": [achievement_id]}},
    )


def test_xp_an_earlier_version_left_owed_is_paid_once_even_after_the_achievement_left(
    cluster: Cluster, user_id: str
) -> None:
    achievement_id = put_achievement(cluster, xp_reward=40)
    owed_unlock(cluster, user_id, achievement_id, 40)
    cluster.achievements.DeleteAchievement(ach.DeleteAchievementRequest(achievement_id=achievement_id))
    with ThreadPoolExecutor(max_workers=4) as pool:
        repeats = list(pool.map(lambda _: unlock(cluster, user_id, achievement_id), range(4)))
    assert sorted((r.already_unlocked, r.xp_awarded, r.total_xp) for r in repeats) == [(True, 0, 40)] * 3 + [
        (True, 40, 40)
    ]
    assert all(r.achievement.achievement_id == achievement_id for r in repeats)


def test_an_owed_unlock_whose_grant_landed_is_marked_and_reported_once(cluster: Cluster, user_id: str) -> None:
    achievement_id = put_achievement(cluster, xp_reward=90)
    owed_unlock(cluster, user_id, achievement_id, 90)
    # The earlier version's GrantXp completed; its mark of the unlock did not.
    cluster.xp.GrantXp(
        xp_pb2.GrantXpRequest(user_id=user_id, amount=90, reason="achievement", achievement_id=achievement_id)
    )
    repeat = unlock(cluster, user_id, achievement_id)
    assert (repeat.already_unlocked, repeat.xp_awarded, repeat.total_xp) == (True, 90, 90)
    again = unlock(cluster, user_id, achievement_id)
    assert (again.already_unlocked, again.xp_awarded, again.total_xp) == (True, 0, 90)


def retry_until_available(call: Callable[[], T]) -> T:
    deadline = time.monotonic() + 15
    while True:
        try:
            return call()
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, error
            time.sleep(0.1)


# --- what a player holds: any number of achievements, long ids in any script ---------------------------------


def long_id(prefix: str) -> str:
    """128 characters, 4 UTF-8 bytes each but the suffix: about 500 bytes."""
    suffix = unique(prefix)
    return "\U00010348" * (128 - len(suffix)) + suffix


def progress_item(cluster: Cluster, user_id: str) -> dict:
    return cluster.dynamodb.get_item(
        TableName=cluster.table("user_progress"), Key={"user_id": {"S": user_id}}, ConsistentRead=True
    )["Item"]


def test_unlocked_ids_live_in_the_unlock_records_not_in_the_progress_item(cluster: Cluster, user_id: str) -> None:
    ids = [long_id("ach") for _ in range(40)]
    for achievement_id in ids:
        cluster.achievements.PutAchievement(
            ach.PutAchievementRequest(
                achievement=ach.Achievement(achievement_id=achievement_id, name="Long", xp_reward=1)
            )
        )
    gate = put_achievement(cluster, xp_reward=2, required_achievements=ids[:3])
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda a: unlock(cluster, user_id, a), ids))
    assert sum(a.xp_awarded for a in answers) == 40
    assert unlock(cluster, user_id, gate).xp_awarded == 2  # required ones checked on their unlock records
    item = progress_item(cluster, user_id)
    assert "unlocked_achievements" not in item and item["holds_achievements"] == {"BOOL": True}
    assert len(str(item).encode()) < 1_000  # 41 ids of about 500 bytes each are not in it
    shown = progress(cluster, user_id)
    assert (shown.total_xp, list(shown.unlocked_achievements), shown.more_unlocked_achievements) == (
        42,
        sorted([*ids, gate]),
        False,
    )


def test_ten_thousand_unlocks_page_and_leave_awards_and_progress_bounded(cluster: Cluster, user_id: str) -> None:
    held = [long_id("held") for _ in range(10_000)]
    table = cluster.table("user_achievements")
    for start in range(0, len(held), 25):  # as 10,000 unlocks leave them, written straight into the table
        cluster.dynamodb.batch_write_item(
            RequestItems={
                table: [
                    {
                        "PutRequest": {
                            "Item": {
                                "user_id": {"S": user_id},
                                "achievement_id": {"S": a},
                                "unlocked_at": {"S": "2026-01-01T00:00:00.000000Z"},
                                "xp_reward": {"N": "0"},
                                "xp_granted": {"BOOL": True},
                            }
                        }
                    }
                    for a in held[start : start + 25]
                ]
            }
        )
    cluster.dynamodb.put_item(
        TableName=cluster.table("user_progress"),
        Item={"user_id": {"S": user_id}, "total_xp": {"N": "0"}, "holds_achievements": {"BOOL": True}},
    )
    newest = put_achievement(cluster, xp_reward=5, required_achievements=held[:50])
    assert unlock(cluster, user_id, newest).xp_awarded == 5
    cluster.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=7, reason="support", request_id=unique("g")))

    shown = progress(cluster, user_id)
    assert (shown.total_xp, len(shown.unlocked_achievements), shown.more_unlocked_achievements) == (12, 100, True)
    assert shown.ByteSize() < 100_000
    listed: list[str] = []
    token = ""
    while True:
        page = cluster.achievements.ListUserAchievements(
            ach.ListUserAchievementsRequest(user_id=user_id, page_size=100, page_token=token)
        )
        assert len(page.achievements) <= 100 and page.ByteSize() < 4 * 1024 * 1024
        listed += [a.achievement_id for a in page.achievements]
        token = page.next_page_token
        if not token:
            break
    assert listed == sorted([*held, newest])


def test_a_progress_item_an_earlier_version_filled_with_ids_is_emptied_by_the_next_unlock(
    cluster: Cluster, user_id: str
) -> None:
    legacy = [long_id("old") for _ in range(700)]  # about 350 KB of the item's 400 KB
    cluster.dynamodb.put_item(
        TableName=cluster.table("user_progress"),
        Item={"user_id": {"S": user_id}, "total_xp": {"N": "0"}, "unlocked_achievements": {"SS": legacy}},
    )
    shown = progress(cluster, user_id)
    assert shown.unlocked_achievements == []  # the records are what counts, and this user has none
    newest = put_achievement(cluster, xp_reward=3)
    assert unlock(cluster, user_id, newest).xp_awarded == 3
    item = progress_item(cluster, user_id)
    assert "unlocked_achievements" not in item and item["total_xp"] == {"N": "3"}


def test_an_unlock_whose_reward_would_pass_the_total_maximum_is_refused_and_writes_nothing(
    cluster: Cluster, user_id: str
) -> None:
    cluster.dynamodb.put_item(
        TableName=cluster.table("user_progress"),
        Item={"user_id": {"S": user_id}, "total_xp": {"N": str(2**53 - 10)}},
    )
    achievement_id = put_achievement(cluster, xp_reward=11)
    error = rpc_error(lambda: unlock(cluster, user_id, achievement_id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "2^53" in error.details()
    assert unlocked_ids(cluster, user_id) == [] and progress(cluster, user_id).total_xp == 2**53 - 10
