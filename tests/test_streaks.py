"""Streaks against real servers and DynamoDB Local, with XP's clock set by the
test (never slept): days and weeks of the game's time zone across a change of
daylight-saving time and a year boundary, a run that grows once per period
whatever the races, starts again after a missed period, survives folding, and
unlocks an achievement that asks for it."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest

from common.auto_unlock import Watches, WatchOutdated
from common.dynamodb import from_item, transact_write
from common.dynamodb.counters import streak_mark, streak_record_from, streak_touches, watch_writes, write_watches
from common.streaks import DAY, Streak, StreakRecord, streak_counter, streak_id_of
from rewards.v1 import achievements_pb2, xp_pb2
from tests.cluster import Cluster, rpc_error, unique

NEW_YORK = ZoneInfo("America/New_York")


class SetClock:
    """XP's clock: the instant the test last set."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 5, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def set_local(self, *parts: int) -> None:
        self.now = datetime(*parts, tzinfo=NEW_YORK).astimezone(UTC)


@pytest.fixture(scope="module")
def clock() -> SetClock:
    return SetClock()


@pytest.fixture(scope="module")
def game(dynamodb_endpoint: str, clock: SetClock) -> Iterator[Cluster]:
    """A cluster whose game's time zone is New York's, on the test's clock."""
    cluster = Cluster(dynamodb_endpoint, clock=clock, time_zone="America/New_York", auto_rules_cache_s=0.0)
    yield cluster
    cluster.close()


def put_activity(game: Cluster, category: str = "", cap: xp_pb2.Cap | None = None) -> str:
    activity_id = unique("act")
    activity = xp_pb2.Activity(activity_id=activity_id, name="Play", category=category, xp=10, cap=cap)
    game.xp.PutActivity(xp_pb2.PutActivityRequest(activity=activity))
    return activity_id


def put_streak(game: Cluster, period: int = xp_pb2.PERIOD_DAY, *, activity_id: str = "", category: str = "") -> str:
    streak = xp_pb2.Streak(
        streak_id=unique("streak"), name="Daily play", activity_id=activity_id, category=category, period=period
    )
    assert game.xp.PutStreak(xp_pb2.PutStreakRequest(streak=streak)) == streak
    return streak.streak_id


def award(game: Cluster, user: str, activity_id: str, request_id: str = "") -> xp_pb2.AwardXpResponse:
    return game.xp.AwardXp(
        xp_pb2.AwardXpRequest(user_id=user, activity_id=activity_id, request_id=request_id or unique("r"))
    )


def award_at(game: Cluster, clock: SetClock, user: str, activity_id: str, *local: int) -> None:
    clock.set_local(*local)
    award(game, user, activity_id)


def state(game: Cluster, user: str, streak_id: str) -> tuple[int, int, str]:
    """(current, best, last period start in UTC) as GetProgress shows them now."""
    progress = game.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user))
    found = [s for s in progress.streaks if s.streak_id == streak_id]
    if not found:
        return 0, 0, ""
    (run,) = found
    return run.current, run.best, run.last_period_start.ToJsonString() if run.HasField("last_period_start") else ""


def test_days_of_the_game_zone_across_the_spring_change_of_time(game: Cluster, clock: SetClock) -> None:
    activity = put_activity(game)
    streak = put_streak(game, activity_id=activity)
    user = unique("user")
    # 23:30 on the 6th and 00:30 on the 7th are one UTC day (04:30Z and 05:30Z) but two local days.
    award_at(game, clock, user, activity, 2026, 3, 6, 23, 30)
    award_at(game, clock, user, activity, 2026, 3, 7, 0, 30)
    assert state(game, user, streak) == (2, 2, "2026-03-07T05:00:00Z")
    # The 8th has 23 hours (clocks go from 2:00 to 3:00): its late evening is still the 8th.
    award_at(game, clock, user, activity, 2026, 3, 8, 23, 30)
    award_at(game, clock, user, activity, 2026, 3, 9, 0, 10)
    award_at(game, clock, user, activity, 2026, 3, 9, 10, 0)  # the same day again: nothing more
    # The 9th starts at 04:00Z now, not 05:00Z.
    assert state(game, user, streak) == (4, 4, "2026-03-09T04:00:00Z")
    clock.set_local(2026, 3, 10, 23, 59)  # the day after: still alive, an award today keeps it going
    assert state(game, user, streak) == (4, 4, "2026-03-09T04:00:00Z")
    clock.set_local(2026, 3, 11, 0, 1)  # a whole day missed
    assert state(game, user, streak) == (0, 4, "2026-03-09T04:00:00Z")
    award(game, user, activity)
    assert state(game, user, streak) == (1, 4, "2026-03-11T04:00:00Z")


def test_days_of_the_game_zone_across_the_autumn_change_of_time(game: Cluster, clock: SetClock) -> None:
    activity = put_activity(game)
    streak = put_streak(game, activity_id=activity)
    user = unique("user")
    # November 1st has 25 hours: 01:30 comes twice; 23:30 is still the 1st.
    award_at(game, clock, user, activity, 2026, 10, 31, 23, 59)
    award_at(game, clock, user, activity, 2026, 11, 1, 23, 30)
    award_at(game, clock, user, activity, 2026, 11, 2, 0, 30)
    assert state(game, user, streak) == (3, 3, "2026-11-02T05:00:00Z")


def test_weeks_from_monday_across_a_year_boundary(game: Cluster, clock: SetClock) -> None:
    activity = put_activity(game)
    weekly = put_streak(game, xp_pb2.PERIOD_WEEK, activity_id=activity)
    daily = put_streak(game, activity_id=activity)
    user = unique("user")
    award_at(game, clock, user, activity, 2026, 12, 24, 12, 0)  # the week of Monday December 21st
    award_at(game, clock, user, activity, 2026, 12, 31, 23, 0)  # the week of Monday December 28th...
    award_at(game, clock, user, activity, 2027, 1, 1, 0, 30)  # ...which holds New Year's day
    award_at(game, clock, user, activity, 2027, 1, 3, 22, 0)  # and the Sunday after it
    assert state(game, user, weekly) == (2, 2, "2026-12-28T05:00:00Z")
    assert state(game, user, daily)[:2] == (1, 2)  # the 31st and the 1st; the 3rd after a gap
    award_at(game, clock, user, activity, 2027, 1, 4, 0, 5)  # Monday: the next week
    assert state(game, user, weekly) == (3, 3, "2027-01-04T05:00:00Z")
    clock.set_local(2027, 1, 17, 23, 0)  # the week of the 11th: alive, an award this week keeps it
    assert state(game, user, weekly)[0] == 3
    clock.set_local(2027, 1, 18, 0, 30)  # the week of the 11th went by with nothing
    assert state(game, user, weekly) == (0, 3, "2027-01-04T05:00:00Z")


def test_a_run_grows_once_for_many_concurrent_awards_and_long_runs_fold(game: Cluster, clock: SetClock) -> None:
    activity = put_activity(game)
    streak = put_streak(game, activity_id=activity)
    user = unique("user")
    for day in range(1, 13):  # twelve days in a row, twenty concurrent awards a day
        clock.set_local(2026, 6, day, 9, 0)
        with ThreadPoolExecutor(20) as pool:
            list(pool.map(lambda _: award(game, user, activity), range(20)))
    assert state(game, user, streak) == (12, 12, "2026-06-12T04:00:00Z")
    item = run_item(game, user, streak)
    # Folded: the summary holds the run, the set only the days since.
    assert "base_last" in item and len(item.get("touched", {}).get("SS", [])) < 8
    assert int(game.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user)).total_xp) == 12 * 20 * 10


def test_a_category_streak_counts_any_of_its_activities_and_not_capped_awards(game: Cluster, clock: SetClock) -> None:
    category = unique("cat")
    run = put_activity(game, category)
    swim = put_activity(game, category, xp_pb2.Cap(max_awards=1, period=xp_pb2.PERIOD_WEEK))
    streak = put_streak(game, category=category)
    user = unique("user")
    award_at(game, clock, user, swim, 2026, 9, 7, 12, 0)  # Monday: counted
    clock.set_local(2026, 9, 8, 12, 0)
    assert award(game, user, swim).capped  # capped on Tuesday: no day for the streak
    assert state(game, user, streak)[:2] == (1, 1)
    award(game, user, run)  # the other activity of the category on Tuesday
    assert state(game, user, streak)[:2] == (2, 2)


def test_a_revoke_does_not_shorten_a_run_and_a_retry_counts_nothing_more(game: Cluster, clock: SetClock) -> None:
    activity = put_activity(game)
    streak = put_streak(game, activity_id=activity)
    user = unique("user")
    clock.set_local(2026, 5, 1, 12, 0)
    award(game, user, activity, "day-1")
    clock.set_local(2026, 5, 2, 12, 0)
    award(game, user, activity, "day-2")
    clock.set_local(2026, 5, 3, 12, 0)
    assert award(game, user, activity, "day-1").duplicate  # a late retry of the first day's award
    game.xp.RevokeAward(xp_pb2.RevokeAwardRequest(user_id=user, request_id="day-2", reason="cheated"))
    assert state(game, user, streak) == (2, 2, "2026-05-02T04:00:00Z")


def test_an_achievement_asks_for_a_run_and_unlocks_itself_on_the_day_it_is_reached(
    game: Cluster, clock: SetClock
) -> None:
    activity = put_activity(game)
    streak = put_streak(game, activity_id=activity)
    achievement = achievements_pb2.Achievement(
        achievement_id=unique("three-days"),
        name="Three days in a row",
        auto_unlock=True,
        requirements=achievements_pb2.Requirements(
            streak_lengths=[achievements_pb2.StreakLength(streak_id=streak, length=3)]
        ),
    )
    game.achievements.PutAchievement(achievements_pb2.PutAchievementRequest(achievement=achievement))
    manual = achievements_pb2.Achievement(
        achievement_id=unique("manual-two"),
        name="Two days in a row",
        requirements=achievements_pb2.Requirements(
            streak_lengths=[achievements_pb2.StreakLength(streak_id=streak, length=2)]
        ),
    )
    game.achievements.PutAchievement(achievements_pb2.PutAchievementRequest(achievement=manual))
    user = unique("user")
    unlocked = []
    for day in (10, 11, 12):
        clock.set_local(2026, 8, day, 20, 0)
        unlocked.append(list(award(game, user, activity).unlocked_achievements))
        if day == 10:
            refused = rpc_error(
                lambda: game.achievements.UnlockAchievement(
                    achievements_pb2.UnlockAchievementRequest(user_id=user, achievement_id=manual.achievement_id)
                )
            )
            assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "streak" in (refused.details() or "")
    assert unlocked == [[], [], [achievement.achievement_id]]
    made = game.achievements.UnlockAchievement(
        achievements_pb2.UnlockAchievementRequest(user_id=user, achievement_id=manual.achievement_id)
    )
    assert not made.already_unlocked


def test_the_streak_catalog_keeps_a_period_and_refuses_bad_input(game: Cluster) -> None:
    activity = put_activity(game)
    streak_id = put_streak(game, activity_id=activity)
    got = game.xp.GetStreak(xp_pb2.GetStreakRequest(streak_id=streak_id))
    assert (got.activity_id, got.period) == (activity, xp_pb2.PERIOD_DAY)
    listed = game.xp.ListStreaks(xp_pb2.ListStreaksRequest(page_size=100)).streaks
    assert streak_id in {s.streak_id for s in listed}

    weekly = xp_pb2.Streak(streak_id=streak_id, name="x", activity_id=activity, period=xp_pb2.PERIOD_WEEK)
    error = rpc_error(lambda: game.xp.PutStreak(xp_pb2.PutStreakRequest(streak=weekly)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "new streak_id" in (error.details() or "")

    game.xp.DeleteStreak(xp_pb2.DeleteStreakRequest(streak_id=streak_id))
    for call in (
        lambda: game.xp.GetStreak(xp_pb2.GetStreakRequest(streak_id=streak_id)),
        lambda: game.xp.DeleteStreak(xp_pb2.DeleteStreakRequest(streak_id=streak_id)),
    ):
        assert rpc_error(call).code() == grpc.StatusCode.NOT_FOUND
    # Deleted, its id keeps its period.
    assert rpc_error(lambda: game.xp.PutStreak(xp_pb2.PutStreakRequest(streak=weekly))).code() == (
        grpc.StatusCode.FAILED_PRECONDITION
    )

    bad: list[tuple[xp_pb2.Streak, str]] = [
        (xp_pb2.Streak(streak_id="s", name="x", period=xp_pb2.PERIOD_DAY), "streak.activity_id"),
        (
            xp_pb2.Streak(streak_id="s", name="x", activity_id="a", category="c", period=xp_pb2.PERIOD_DAY),
            "streak.activity_id",
        ),
        (xp_pb2.Streak(streak_id="s", name="x", activity_id="a"), "streak.period"),
        (xp_pb2.Streak(streak_id="s", activity_id="a", period=xp_pb2.PERIOD_DAY), "streak.name"),
        (xp_pb2.Streak(name="x", activity_id="a", period=xp_pb2.PERIOD_DAY), "streak.streak_id"),
    ]
    for streak, field in bad:
        error = rpc_error(lambda s=streak: game.xp.PutStreak(xp_pb2.PutStreakRequest(streak=s)))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (error.details() or ""), streak


def test_an_award_that_lands_a_day_late_after_a_fold_still_counts(game: Cluster, clock: SetClock) -> None:
    activity = put_activity(game)
    streak = put_streak(game, activity_id=activity)
    user = unique("user")
    for day in (*range(1, 9), 10):  # the 9th's award is slow: it commits after the 10th's
        award_at(game, clock, user, activity, 2026, 7, day, 12, 0)
    item = run_item(game, user, streak)
    assert item["base_last"] == {"S": "2026-07-08"}  # the 10th's read folded the 1st to the 8th...
    assert set(item["touched"]["SS"]) == {"2026-07-10"}  # ...and left the 10th
    award_at(game, clock, user, activity, 2026, 7, 9, 23, 59)  # the 9th lands
    clock.set_local(2026, 7, 10, 13, 0)
    assert state(game, user, streak) == (10, 10, "2026-07-10T04:00:00Z")


def test_a_watch_on_a_run_is_written_only_while_the_run_is_as_the_evaluation_read_it(
    game: Cluster,
) -> None:
    """counters.watch_writes on DynamoDB Local: a period added between the
    evaluation's read and its watch write makes the write fail (WatchOutdated);
    the same period added again does not."""
    streak = Streak("watched", "Watched", DAY, activity_id="a")
    user = unique("user")
    prefix = game.settings.table_prefix
    counter = streak_counter(streak.streak_id)

    def touch(first_day: str) -> None:
        game.loop.run(transact_write(game.lean, streak_touches(prefix, user, [(streak, first_day)])))

    def watch(mark: tuple[int, str]) -> None:
        items = watch_writes(prefix, user, Watches("f", counters={counter: 3}), (), 0, {counter: mark})
        assert items is not None
        game.loop.run(write_watches(game.lean, items))

    touch("2026-07-01")
    read = read_streak(game, user, counter)
    touch("2026-07-02")  # an award after the evaluation's read
    with pytest.raises(WatchOutdated):
        watch(streak_mark(read))
    read = read_streak(game, user, counter)
    touch("2026-07-02")  # the same period again: the run is as read
    watch(streak_mark(read))
    assert run_item(game, user, "watched")["watch_at"] == {"N": "3"}


def run_item(game: Cluster, user: str, streak_id: str) -> dict[str, Any]:
    return game.dynamodb.get_item(
        TableName=game.table("activity_counts"),
        Key={"user_id": {"S": user}, "counter": {"S": streak_counter(streak_id)}},
        ConsistentRead=True,
    )["Item"]


def read_streak(game: Cluster, user: str, counter: str) -> StreakRecord:
    return streak_record_from(from_item(run_item(game, user, streak_id_of(counter))))
