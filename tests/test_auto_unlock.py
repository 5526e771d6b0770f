"""Achievements that unlock themselves, against real servers and DynamoDB
Local: awards counted per activity and category in the award's transaction,
auto-unlock rules checked after every award that may complete one, exactly
once whatever the concurrency, retries and chains; progress and stats.

Each test runs on a cluster of its own: auto-unlock rules apply to every award."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from common.caller_auth import Role
from rewards.v1 import achievements_pb2 as ach
from rewards.v1 import achievements_pb2_grpc, xp_pb2
from tests.cluster import STANDARD_LEVELS, Cluster, rpc_error, unique

Factory = Callable[..., Cluster]


def auto_cluster(new_cluster: Factory) -> Cluster:
    c = new_cluster()
    c.put_levels(STANDARD_LEVELS)
    return c


def put_activity(c: Cluster, xp: int = 10, category: str = "pvp") -> str:
    activity_id = unique("win")
    c.xp.PutActivity(
        xp_pb2.PutActivityRequest(
            activity=xp_pb2.Activity(activity_id=activity_id, name="Win a match", category=category, xp=xp)
        )
    )
    return activity_id


def put_auto(c: Cluster, achievement_id: str, xp_reward: int = 0, hidden: bool = False, **requirements: object) -> None:
    c.achievements.PutAchievement(
        ach.PutAchievementRequest(
            achievement=ach.Achievement(
                achievement_id=achievement_id,
                name=f"Name of {achievement_id}",
                description="secret" if hidden else "",
                xp_reward=xp_reward,
                hidden=hidden,
                auto_unlock=True,
                requirements=ach.Requirements(**requirements),  # type: ignore[arg-type]
            )
        )
    )


def wins(activity_id: str, count: int) -> list[ach.ActivityCount]:
    return [ach.ActivityCount(activity_id=activity_id, count=count)]


def award(c: Cluster, user_id: str, activity_id: str, request_id: str) -> xp_pb2.AwardXpResponse:
    return c.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user_id, activity_id=activity_id, request_id=request_id))


def unlocks_of(c: Cluster, user_id: str) -> dict[str, int]:
    listing = c.achievements.ListUserAchievements(ach.ListUserAchievementsRequest(user_id=user_id, page_size=100))
    return {a.achievement_id: a.xp_reward for a in listing.achievements}


def total_xp(c: Cluster, user_id: str) -> int:
    return c.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id)).total_xp


def test_tiers_unlock_themselves_once_and_a_retry_lists_them_again(new_cluster: Factory) -> None:
    c = auto_cluster(new_cluster)
    activity = put_activity(c, xp=10)
    put_auto(c, "win-1", xp_reward=100, activity_counts=wins(activity, 1))
    put_auto(c, "win-3", xp_reward=100, activity_counts=wins(activity, 3))
    user = unique("user")

    answers = [award(c, user, activity, f"match-{i}") for i in range(4)]
    assert [list(a.unlocked_achievements) for a in answers] == [["win-1"], [], ["win-3"], []]
    # The answer's total includes what the unlocks it made paid.
    assert [a.total_xp for a in answers] == [110, 120, 230, 240]
    assert unlocks_of(c, user) == {"win-1": 100, "win-3": 100}

    retry = award(c, user, activity, "match-2")
    assert retry.duplicate and list(retry.unlocked_achievements) == ["win-3"]
    first_retry = award(c, user, activity, "match-0")
    assert list(first_retry.unlocked_achievements) == ["win-1"]
    assert total_xp(c, user) == 240  # retries counted nothing and paid nothing


def test_fifty_concurrent_awards_crossing_a_count_unlock_and_pay_once(new_cluster: Factory) -> None:
    c = auto_cluster(new_cluster)
    activity = put_activity(c, xp=1)
    put_auto(c, "veteran", xp_reward=1000, activity_counts=wins(activity, 25))
    user = unique("user")

    def fire(i: int) -> xp_pb2.AwardXpResponse:
        return award(c, user, activity, f"m{i}")

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(fire, range(50)))
        retries = list(pool.map(fire, range(50)))
    assert sum(list(a.unlocked_achievements) == ["veteran"] for a in answers) == 1
    assert sum(len(a.unlocked_achievements) for a in answers) == 1
    # Each retry is a duplicate and lists what its original listed.
    assert [list(r.unlocked_achievements) for r in retries] == [list(a.unlocked_achievements) for a in answers]
    assert all(r.duplicate for r in retries)
    assert unlocks_of(c, user) == {"veteran": 1000}
    assert total_xp(c, user) == 50 + 1000
    stats = c.achievements.GetAchievementStats(ach.GetAchievementStatsRequest(achievement_id="veteran"))
    assert (stats.unlocked_count, stats.players, stats.unlock_rate) == (1, 1, 1.0)


def test_a_chain_ends_with_each_link_unlocked_and_paid_once(new_cluster: Factory) -> None:
    c = auto_cluster(new_cluster)
    activity = put_activity(c, xp=10, category="quests")
    # Two awards of the category unlock "questor", whose reward reaches "rich"'s XP, which completes "legend".
    put_auto(c, "questor", xp_reward=500, activity_counts=[ach.ActivityCount(category="quests", count=2)])
    put_auto(c, "rich", xp_reward=50, min_total_xp=500)
    put_auto(c, "legend", xp_reward=0, required_achievements=["rich", "questor"])
    user = unique("user")

    first = award(c, user, activity, "q1")
    assert list(first.unlocked_achievements) == []
    second = award(c, user, activity, "q2")
    assert sorted(second.unlocked_achievements) == ["legend", "questor", "rich"]
    assert second.total_xp == 20 + 500 + 50
    assert award(c, user, activity, "q3").unlocked_achievements == []
    assert sorted(award(c, user, activity, "q2").unlocked_achievements) == ["legend", "questor", "rich"]
    assert unlocks_of(c, user) == {"questor": 500, "rich": 50, "legend": 0}
    assert total_xp(c, user) == 30 + 550


def test_concurrent_users_and_stats_match_the_unlocks(new_cluster: Factory) -> None:
    c = auto_cluster(new_cluster)
    activity = put_activity(c, xp=5)
    put_auto(c, "twice", xp_reward=7, activity_counts=wins(activity, 2))
    users = [unique("user") for _ in range(12)]

    def play(user_and_rounds: tuple[str, int]) -> None:
        user, rounds = user_and_rounds
        for i in range(rounds):
            award(c, user, activity, f"{user}-{i}")

    plan = [(user, 1 if n % 3 == 0 else 3) for n, user in enumerate(users)]
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(play, plan))
    qualified = [user for user, rounds in plan if rounds >= 2]
    assert [u for u in users if "twice" in unlocks_of(c, u)] == qualified
    stats = c.achievements.GetAchievementStats(ach.GetAchievementStatsRequest(achievement_id="twice"))
    assert (stats.unlocked_count, stats.players) == (len(qualified), len(users))
    assert stats.unlock_rate == pytest.approx(len(qualified) / len(users))


def test_progress_pages_the_catalog_and_withholds_hidden_names_from_games(new_cluster: Factory) -> None:
    c = auto_cluster(new_cluster)
    activity = put_activity(c, xp=10)
    put_auto(c, "a-seen", xp_reward=0, activity_counts=wins(activity, 4), min_total_xp=100)
    put_auto(c, "b-secret", xp_reward=0, hidden=True, activity_counts=wins(activity, 10))
    put_auto(c, "c-first", xp_reward=0, hidden=True, activity_counts=wins(activity, 1))
    user = unique("user")
    for i in range(2):
        award(c, user, activity, f"r{i}")

    def progress(role: Role) -> list[ach.AchievementProgress]:
        stub = achievements_pb2_grpc.AchievementsServiceStub(c.channel("achievements", role))
        first = stub.GetAchievementProgress(ach.GetAchievementProgressRequest(user_id=user, page_size=2))
        rest = stub.GetAchievementProgress(
            ach.GetAchievementProgressRequest(user_id=user, page_size=2, page_token=first.next_page_token)
        )
        assert not rest.next_page_token
        return sorted([*first.achievements, *rest.achievements], key=lambda p: p.achievement.achievement_id)

    seen, secret, first = progress(Role.GAME)
    assert (seen.unlocked, seen.percent) == (False, pytest.approx(100 * (2 / 4 + 20 / 100) / 2))
    assert [(k.current, k.target) for k in seen.criteria] == [(2, 4), (20, 100)]
    assert (secret.achievement.name, secret.achievement.description) == ("", "")
    assert secret.achievement.achievement_id == "b-secret" and secret.percent == pytest.approx(20.0)
    # Unlocked hidden achievements are shown.
    assert first.unlocked and first.achievement.name == "Name of c-first" and first.percent == 100.0
    assert first.unlock_rate == 1.0 and first.unlocked_at.seconds > 0

    _, secret_for_admin, _ = progress(Role.ADMIN)
    assert (secret_for_admin.achievement.name, secret_for_admin.achievement.description) == (
        "Name of b-secret",
        "secret",
    )


def test_unlock_achievement_checks_counts_and_lists_what_it_completed(new_cluster: Factory) -> None:
    c = auto_cluster(new_cluster)
    activity = put_activity(c, xp=10)
    c.achievements.PutAchievement(
        ach.PutAchievementRequest(
            achievement=ach.Achievement(
                achievement_id="manual",
                name="Manual",
                xp_reward=20,
                requirements=ach.Requirements(activity_counts=wins(activity, 2)),
            )
        )
    )
    put_auto(c, "after-manual", xp_reward=30, required_achievements=["manual"])
    user = unique("user")
    award(c, user, activity, "r1")

    def unlock(request_id: str) -> ach.UnlockAchievementResponse:
        return c.achievements.UnlockAchievement(
            ach.UnlockAchievementRequest(user_id=user, achievement_id="manual", request_id=request_id)
        )

    refused = rpc_error(lambda: unlock("u1"))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"needs 2 awards of activity {activity!r}, has 1" in (refused.details() or "")
    award(c, user, activity, "r2")
    first = unlock("u2")
    assert (first.xp_awarded, list(first.also_unlocked), first.total_xp) == (20, ["after-manual"], 20 + 20 + 30)
    again = unlock("u3")
    assert again.already_unlocked and list(again.also_unlocked) == ["after-manual"]
    assert unlocks_of(c, user) == {"manual": 20, "after-manual": 30}


@pytest.mark.parametrize(
    ("count", "field", "rule"),
    [
        (ach.ActivityCount(count=1), "achievement.requirements.activity_counts[0]", "exactly one of"),
        (
            ach.ActivityCount(activity_id="a", category="c", count=1),
            "achievement.requirements.activity_counts[0]",
            "exactly one of",
        ),
        (ach.ActivityCount(activity_id="a", count=0), "achievement.requirements.activity_counts[0].count", "between 1"),
    ],
)
def test_bad_activity_counts_are_invalid_argument_naming_the_field(
    cluster: Cluster, count: ach.ActivityCount, field: str, rule: str
) -> None:
    achievement_id = unique("ach")
    error = rpc_error(
        lambda: cluster.achievements.PutAchievement(
            ach.PutAchievementRequest(
                achievement=ach.Achievement(
                    achievement_id=achievement_id, name="Bad", requirements=ach.Requirements(activity_counts=[count])
                )
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "") and rule in (error.details() or "")
    assert (
        rpc_error(
            lambda: cluster.achievements.GetAchievement(ach.GetAchievementRequest(achievement_id=achievement_id))
        ).code()
        == grpc.StatusCode.NOT_FOUND
    )


def test_unlocks_left_while_achievements_is_down_come_with_the_retry(new_cluster: Factory) -> None:
    c = new_cluster(auto_unlock_timeout_s=1.0)
    c.put_levels(STANDARD_LEVELS)
    activity = put_activity(c, xp=10)
    put_auto(c, "first-win", xp_reward=40, activity_counts=wins(activity, 1))
    user = unique("user")
    award(c, unique("warm"), activity, "warm")  # XP has read the rules
    c.stop("achievements")
    try:
        left = award(c, user, activity, "r1")
    finally:
        c.start("achievements")
    assert (list(left.unlocked_achievements), left.total_xp, left.unlocks_deferred) == ([], 10, True)
    retry = award(c, user, activity, "r1")
    assert retry.duplicate and list(retry.unlocked_achievements) == ["first-win"] and retry.total_xp == 50
    assert not retry.unlocks_deferred
    assert unlocks_of(c, user) == {"first-win": 40}


def test_the_level_up_an_auto_unlock_reward_makes_is_in_the_award_answer_and_its_retry(new_cluster: Factory) -> None:
    c = auto_cluster(new_cluster)
    activity = put_activity(c, xp=50)
    # The second award (100 XP: level 2) unlocks "pair", whose 250 XP take the user to level 3.
    put_auto(c, "pair", xp_reward=250, activity_counts=wins(activity, 2))
    user = unique("user")
    award(c, user, activity, "a1")

    second = award(c, user, activity, "a2")
    assert list(second.unlocked_achievements) == ["pair"]
    assert (second.total_xp, second.level) == (350, 3)
    assert (second.level_up.leveled_up, second.level_up.previous_level, second.level_up.current_level) == (True, 1, 3)
    assert {r.reward_id: r.quantity for r in second.level_up.rewards} == {"coins": 300}
    retry = award(c, user, activity, "a2")
    assert retry.duplicate and list(retry.unlocked_achievements) == ["pair"]
    assert (retry.level_up.previous_level, retry.level_up.current_level) == (1, 3)
    assert {r.reward_id: r.quantity for r in retry.level_up.rewards} == {"coins": 300}


def test_an_unlock_left_while_achievements_is_down_comes_with_an_award_of_another_activity(
    new_cluster: Factory,
) -> None:
    c = new_cluster(auto_unlock_timeout_s=1.0)
    c.put_levels(STANDARD_LEVELS)
    counted, other = put_activity(c, xp=10), put_activity(c, xp=1, category="pve")
    put_auto(c, "first-win", xp_reward=40, activity_counts=wins(counted, 1))
    user = unique("user")
    award(c, user, other, "warm")  # evaluated: a watch on the counted activity's counter
    c.stop("achievements")
    try:
        left = award(c, user, counted, "r1")
    finally:
        c.start("achievements")
    assert list(left.unlocked_achievements) == [] and left.unlocks_deferred
    # The watch reached is on a counter this award does not touch: it asks all the same.
    later = award(c, user, other, "r2")
    assert list(later.unlocked_achievements) == ["first-win"] and later.total_xp == 1 + 10 + 1 + 40
