"""Streaks through the use cases, the unit tier: XpLedger's awards touching
runs in the game's time zone (New York) on a clock the test sets, GetProgress's
standing of each run, the streak catalog through FakeXpRepository; the
auto-unlock rules on streak lengths (common.auto_unlock) and XP asking the
Achievements service when a watched run is reached; check_achievement's
streak_lengths rules."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from achievements_service.domain import Achievement, check_achievement
from achievements_service.use_cases import Achievements, Criterion, criteria_of
from common.auto_unlock import (
    ActivityCount,
    AutoRule,
    AutoRules,
    Counter,
    DueUnlocks,
    Requirements,
    Standing,
    Watches,
    activity_counter,
    unmet_requirements,
    watches_for,
)
from common.errors import InvalidField
from common.models import LedgerEntry
from common.periods import DAY, WEEK
from common.streaks import MAX_STREAKS, Streak, StreakLength, StreakRecord, streak_counter
from tests.unit.fakes import (
    FakeAchievementsRepository,
    FakeAutoUnlocker,
    FakeLevelChecker,
    FakeXpRepository,
    stored_progress,
)
from xp_service.domain import Activity, StreakNotFound, StreakPeriodFixed, TooManyStreaks
from xp_service.use_cases import AwardOutcome, StreakStanding, XpLedger

USER = "user-1"
NEW_YORK = ZoneInfo("America/New_York")

RUN = Activity("run", "Run", "Run 5 km", "sport", 10)
SWIM = Activity("swim", "Swim", "Swim 1 km", "sport", 30)
WALK = Activity("walk", "Walk", "Walk 1 km", "", 5)  # no category
# At most one counted award a week: a second one in the week is capped.
LOGIN = Activity("login", "Log in", "Log in", "", 1, cap_max_awards=1, cap_period=WEEK)

DAILY_RUN = Streak("daily-run", "Run daily", DAY, activity_id="run")
WEEKLY_SPORT = Streak("weekly-sport", "Sport weekly", WEEK, category="sport")
DAILY_LOGIN = Streak("daily-login", "Log in daily", DAY, activity_id="login")


class Clock:
    """XP's clock: the instant the test last set, given as New York's local time."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 5, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def set_local(self, year: int, month: int, day: int, hour: int = 12, minute: int = 0) -> None:
        self.now = datetime(year, month, day, hour, minute, tzinfo=NEW_YORK).astimezone(UTC)


def utc(year: int, month: int, day: int, hour: int) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


class StreakLoggingXpRepository(FakeXpRepository):
    """FakeXpRepository that also logs what each record_xp was asked to write:
    whether the entry is capped, and the streak periods it was given."""

    def __init__(self) -> None:
        super().__init__(start_level=1, level_table_version=1)
        self.streak_writes: list[tuple[bool, tuple[tuple[str, str], ...]]] = []

    async def record_xp(
        self,
        entry: LedgerEntry,
        activity: Activity | None = None,
        cap_period: str = "",
        streak_periods: tuple[tuple[Streak, str], ...] = (),
    ) -> None:
        self.streak_writes.append((entry.capped, tuple((s.streak_id, day) for s, day in streak_periods)))
        await super().record_xp(entry, activity, cap_period, streak_periods)


class Game:
    """An XpLedger on FakeXpRepository, New York's zone and the test's clock,
    for a user whose next level is far (the Levels service is never asked)."""

    def __init__(self, *streaks: Streak, unlocker: FakeAutoUnlocker | None = None) -> None:
        self.repository = StreakLoggingXpRepository()
        for activity in (RUN, SWIM, WALK, LOGIN):
            self.repository.seed_activity(activity)
        self.repository.seed_progress(stored_progress(USER, 0, 1, next_level_xp=10**6, level_version=1))
        self.clock = Clock()
        self.levels = FakeLevelChecker()
        self.unlocker = unlocker or FakeAutoUnlocker()
        self.xp = XpLedger(self.repository, self.levels, self.unlocker, zone=NEW_YORK, clock=self.clock)
        for streak in streaks:
            asyncio.run(self.xp.put_streak(streak))

    def award_at(self, local: tuple[int, ...], activity_id: str, request_id: str) -> AwardOutcome:
        self.clock.set_local(*local)
        return asyncio.run(self.xp.award_xp(USER, activity_id, request_id))

    def streaks_at(self, *local: int) -> tuple[StreakStanding, ...]:
        self.clock.set_local(*local)
        return asyncio.run(self.xp.get_progress(USER)).streaks

    def touched(self, streak_id: str) -> frozenset[str]:
        return self.repository.runs[(USER, streak_id)].touched


# --- awards on consecutive local days -------------------------------------------------------------


def test_consecutive_new_york_days_across_the_spring_change_grow_one_run() -> None:
    game = Game(DAILY_RUN)
    # Each pair is one hour apart in UTC, on the same UTC day, yet on two New York days;
    # 8 March (clocks forward at 02:00) is 23 hours long.
    game.award_at((2026, 3, 6, 23, 30), "run", "r1")  # 04:30 UTC on 7 March
    game.award_at((2026, 3, 7, 0, 30), "run", "r2")  # 05:30 UTC on 7 March
    game.award_at((2026, 3, 8, 23, 30), "run", "r3")  # 03:30 UTC on 9 March (EDT)
    game.award_at((2026, 3, 9, 0, 30), "run", "r4")  # 04:30 UTC on 9 March

    assert game.touched("daily-run") == {"2026-03-06", "2026-03-07", "2026-03-08", "2026-03-09"}
    # 9 March starts at 04:00 UTC (EDT); the progress is read the same day, then the next.
    assert game.streaks_at(2026, 3, 9, 12) == (StreakStanding("daily-run", 4, 4, utc(2026, 3, 9, 4)),)
    assert game.streaks_at(2026, 3, 10, 23, 59) == (StreakStanding("daily-run", 4, 4, utc(2026, 3, 9, 4)),)
    # 10 March passed with no award: the run is over, its best stays.
    assert game.streaks_at(2026, 3, 11, 0, 0) == (StreakStanding("daily-run", 0, 4, utc(2026, 3, 9, 4)),)


def test_a_day_of_the_spring_change_starts_at_its_est_midnight() -> None:
    game = Game(DAILY_RUN)
    game.award_at((2026, 3, 8, 0, 30), "run", "r1")
    game.award_at((2026, 3, 8, 23, 30), "run", "r2")  # 22 hours later: the same (23-hour) day

    assert game.touched("daily-run") == {"2026-03-08"}
    assert game.streaks_at(2026, 3, 8, 23, 45) == (StreakStanding("daily-run", 1, 1, utc(2026, 3, 8, 5)),)


def test_a_missed_day_starts_the_run_again_and_keeps_the_best() -> None:
    game = Game(DAILY_RUN)
    for i, day in enumerate((1, 2, 3, 5, 6)):
        game.award_at((2026, 2, day, 9), "run", f"r{i}")

    assert game.streaks_at(2026, 2, 6, 18) == (StreakStanding("daily-run", 2, 3, utc(2026, 2, 6, 5)),)


def test_days_and_weeks_across_a_year_boundary() -> None:
    game = Game(DAILY_RUN, WEEKLY_SPORT)
    game.award_at((2026, 12, 22, 12), "swim", "s1")  # Tuesday: the week of 21 December
    game.award_at((2026, 12, 31, 23), "run", "r1")  # 04:00 UTC on 1 January
    game.award_at((2027, 1, 1, 19, 30), "run", "r2")  # 00:30 UTC on 2 January
    game.award_at((2027, 1, 2, 10), "run", "r3")
    game.award_at((2027, 1, 3, 22), "run", "r4")  # Sunday; 03:00 UTC on Monday 4 January
    game.award_at((2027, 1, 4, 9), "swim", "s2")  # Monday: the week of 4 January

    assert game.touched("daily-run") == {"2026-12-31", "2027-01-01", "2027-01-02", "2027-01-03"}
    assert game.touched("weekly-sport") == {"2026-12-21", "2026-12-28", "2027-01-04"}
    # In streak id order; the day's run is alive on the day after its last.
    assert game.streaks_at(2027, 1, 4, 12) == (
        StreakStanding("daily-run", 4, 4, utc(2027, 1, 3, 5)),
        StreakStanding("weekly-sport", 3, 3, utc(2027, 1, 4, 5)),
    )
    assert game.streaks_at(2027, 1, 5, 0) == (
        StreakStanding("daily-run", 0, 4, utc(2027, 1, 3, 5)),
        StreakStanding("weekly-sport", 3, 3, utc(2027, 1, 4, 5)),
    )
    # The week's run is alive through the next week (from Monday 11 January), over on the one after.
    assert game.streaks_at(2027, 1, 17, 23, 59)[1] == StreakStanding("weekly-sport", 3, 3, utc(2027, 1, 4, 5))
    assert game.streaks_at(2027, 1, 18, 0, 0)[1] == StreakStanding("weekly-sport", 0, 3, utc(2027, 1, 4, 5))


def test_two_awards_in_one_period_count_it_once() -> None:
    game = Game(DAILY_RUN, WEEKLY_SPORT)
    game.award_at((2026, 3, 2, 8), "run", "r1")
    game.award_at((2026, 3, 2, 20), "run", "r2")
    game.award_at((2026, 3, 4, 20), "swim", "s1")  # the same week

    assert game.streaks_at(2026, 3, 4, 21) == (
        StreakStanding("daily-run", 0, 1, utc(2026, 3, 2, 5)),
        StreakStanding("weekly-sport", 1, 1, utc(2026, 3, 2, 5)),
    )
    assert game.repository.counters[(USER, streak_counter("daily-run"))].awards == 1


def test_a_stored_run_derives_what_xp_counts() -> None:
    # The fake's counter for a run is its best, as common.dynamodb.counters reads it.
    game = Game(DAILY_RUN)
    for i, day in enumerate((2, 3, 4, 6)):
        game.award_at((2026, 3, day, 9), "run", f"r{i}")

    record = game.repository.runs[(USER, "daily-run")]
    assert record == StreakRecord(DAY, frozenset({"2026-03-02", "2026-03-03", "2026-03-04", "2026-03-06"}))
    assert game.repository.counters[(USER, DAILY)].awards == 3


def test_an_activity_without_a_category_touches_no_category_streak() -> None:
    game = Game(WEEKLY_SPORT)
    game.award_at((2026, 3, 2, 8), "walk", "w1")

    assert game.repository.runs == {}
    assert game.streaks_at(2026, 3, 2, 9) == ()


def test_progress_shows_only_the_catalog_streaks_the_user_has_a_run_of() -> None:
    game = Game(DAILY_RUN, WEEKLY_SPORT)
    assert game.streaks_at(2026, 3, 2, 7) == ()

    game.award_at((2026, 3, 2, 8), "swim", "s1")  # the sport category: not the run activity

    assert game.streaks_at(2026, 3, 2, 9) == (StreakStanding("weekly-sport", 1, 1, utc(2026, 3, 2, 5)),)


# --- awards that touch no run ---------------------------------------------------------------------


def test_a_capped_award_does_not_touch_a_run() -> None:
    game = Game(DAILY_LOGIN)
    first = game.award_at((2026, 3, 2, 10), "login", "l1")  # Monday
    capped = game.award_at((2026, 3, 3, 10), "login", "l2")  # Tuesday, the same week: capped

    assert (first.xp_awarded, first.capped) == (1, False)
    assert (capped.xp_awarded, capped.capped, capped.total_xp) == (0, True, 1)
    # Tuesday's award was tried with its period, refused by the cap, then recorded capped without it.
    assert game.repository.streak_writes == [
        (False, (("daily-login", "2026-03-02"),)),
        (False, (("daily-login", "2026-03-03"),)),
        (True, ()),
    ]
    assert game.touched("daily-login") == {"2026-03-02"}
    assert game.repository.counters[(USER, streak_counter("daily-login"))].awards == 1
    assert game.streaks_at(2026, 3, 3, 11) == (StreakStanding("daily-login", 1, 1, utc(2026, 3, 2, 5)),)
    # Wednesday: Tuesday was missed, as far as the run is concerned.
    assert game.streaks_at(2026, 3, 4, 11) == (StreakStanding("daily-login", 0, 1, utc(2026, 3, 2, 5)),)


def test_a_retry_on_a_later_day_adds_nothing_to_the_run() -> None:
    game = Game(DAILY_RUN)
    game.award_at((2026, 3, 2, 23, 50), "run", "r1")

    repeat = game.award_at((2026, 3, 3, 0, 10), "run", "r1")  # the retry lands after midnight

    assert (repeat.duplicate, repeat.xp_awarded, repeat.total_xp) == (True, 10, 10)
    assert game.touched("daily-run") == {"2026-03-02"}
    assert game.streaks_at(2026, 3, 3, 1) == (StreakStanding("daily-run", 1, 1, utc(2026, 3, 2, 5)),)


def test_our_own_write_retried_after_a_lost_answer_counts_its_period_once() -> None:
    game = Game(DAILY_RUN)
    game.repository.lose_next_record_answers = 1

    outcome = game.award_at((2026, 3, 2, 9), "run", "r1")

    assert (outcome.duplicate, outcome.total_xp) == (False, 10)
    assert game.touched("daily-run") == {"2026-03-02"}
    assert game.streaks_at(2026, 3, 2, 10) == (StreakStanding("daily-run", 1, 1, utc(2026, 3, 2, 5)),)


def test_a_revoke_does_not_shorten_a_run() -> None:
    game = Game(DAILY_RUN)
    game.award_at((2026, 3, 2, 9), "run", "r1")
    game.award_at((2026, 3, 3, 9), "run", "r2")

    asyncio.run(game.xp.revoke_award(USER, "r2", "", "cheated"))

    assert game.streaks_at(2026, 3, 3, 10) == (StreakStanding("daily-run", 2, 2, utc(2026, 3, 3, 5)),)


# --- the streak catalog ------------------------------------------------------------------------------


def test_a_deleted_streak_is_not_shown_nor_touched_and_comes_back_with_its_run() -> None:
    game = Game(DAILY_RUN, WEEKLY_SPORT)
    game.award_at((2026, 3, 2, 9), "run", "r1")

    asyncio.run(game.xp.delete_streak("weekly-sport"))

    assert game.streaks_at(2026, 3, 2, 10) == (StreakStanding("daily-run", 1, 1, utc(2026, 3, 2, 5)),)
    game.award_at((2026, 3, 9, 9), "swim", "s1")  # the next week: the deleted streak is not touched
    assert game.touched("weekly-sport") == {"2026-03-02"}
    with pytest.raises(StreakNotFound):
        asyncio.run(game.xp.get_streak("weekly-sport"))
    assert asyncio.run(game.xp.list_streaks(10, "")) == ([DAILY_RUN], "")

    asyncio.run(game.xp.put_streak(WEEKLY_SPORT))  # put again, with its period

    # Its run is as it was: the swim of the week of 9 March, made while it was deleted, did not count
    # (the week of 2 March is the previous one: the run is alive, at 1).
    assert game.streaks_at(2026, 3, 9, 10) == (
        StreakStanding("daily-run", 0, 1, utc(2026, 3, 2, 5)),
        StreakStanding("weekly-sport", 1, 1, utc(2026, 3, 2, 5)),
    )


def test_a_streak_keeps_its_period_even_deleted() -> None:
    game = Game(DAILY_RUN)
    weekly = replace(DAILY_RUN, period=WEEK)

    with pytest.raises(StreakPeriodFixed) as refused:
        asyncio.run(game.xp.put_streak(weekly))

    assert refused.value.violations == [("streak.period", "streak 'daily-run' is fixed to days")]
    assert asyncio.run(game.xp.get_streak("daily-run")) == DAILY_RUN

    asyncio.run(game.xp.delete_streak("daily-run"))
    with pytest.raises(StreakPeriodFixed):
        asyncio.run(game.xp.put_streak(weekly))
    with pytest.raises(StreakNotFound):
        asyncio.run(game.xp.get_streak("daily-run"))


def test_a_streak_put_again_with_its_period_is_replaced() -> None:
    game = Game(DAILY_RUN)
    renamed = replace(DAILY_RUN, name="Run every day")

    assert asyncio.run(game.xp.put_streak(renamed)) == renamed
    assert asyncio.run(game.xp.get_streak("daily-run")) == renamed


def test_the_catalog_holds_at_most_64_streaks_but_one_of_them_may_be_put_again() -> None:
    game = Game(DAILY_RUN)
    for i in range(1, MAX_STREAKS):
        asyncio.run(game.xp.put_streak(replace(DAILY_RUN, streak_id=f"s{i:02d}")))

    with pytest.raises(TooManyStreaks) as refused:
        asyncio.run(game.xp.put_streak(replace(DAILY_RUN, streak_id="one-more")))
    assert refused.value.violations == [("streak.streak_id", "at most 64 streaks in the catalog")]
    assert asyncio.run(game.xp.put_streak(replace(DAILY_RUN, name="renamed"))).name == "renamed"
    asyncio.run(game.xp.delete_streak("s01"))
    assert asyncio.run(game.xp.put_streak(replace(DAILY_RUN, streak_id="one-more"))).streak_id == "one-more"


# --- common.auto_unlock: requirements on streak lengths --------------------------------------------

DAILY = streak_counter("daily-run")
WEEKLY = streak_counter("weekly-sport")
RUNS = activity_counter("run")


def standing(total_xp: int = 0, level: int = 1, **counts: int) -> Standing:
    """Counts by counter name: run=... for a#run, daily=/weekly= for the streaks' runs."""
    names = {"run": RUNS, "daily": DAILY, "weekly": WEEKLY}
    return Standing(frozenset(), total_xp, level, {names[k]: n for k, n in counts.items()})


def needs(*runs: StreakLength, counts: tuple[ActivityCount, ...] = (), xp: int = 0) -> Requirements:
    return Requirements(min_total_xp=xp, activity_counts=counts, streak_lengths=runs)


def test_requirements_count_runs_after_activity_counts() -> None:
    requirements = needs(StreakLength("daily-run", 5), counts=(ActivityCount(activity_id="run", count=3),))

    assert requirements.counted() == (ActivityCount(activity_id="run", count=3), StreakLength("daily-run", 5))
    assert AutoRules.of([AutoRule("a", requirements, "r1")]).counters == frozenset({RUNS, DAILY})


def test_unmet_streak_lengths_name_the_streak_and_the_best_run() -> None:
    requirements = needs(
        StreakLength("daily-run", 5),
        StreakLength("weekly-sport", 2),
        counts=(ActivityCount(activity_id="run", count=3),),
        xp=100,
    )

    assert unmet_requirements(requirements, standing(40, run=1, daily=4)) == [
        ("min_total_xp", "needs 100 total XP, has 40"),
        ("activity_counts/run", "needs 3 awards of activity 'run', has 1"),
        ("streak_lengths/daily-run", "needs a run of 5 periods of streak 'daily-run', best is 4"),
        ("streak_lengths/weekly-sport", "needs a run of 2 periods of streak 'weekly-sport', best is 0"),
    ]
    assert unmet_requirements(requirements, standing(100, run=3, daily=5, weekly=1)) == [
        ("streak_lengths/weekly-sport", "needs a run of 2 periods of streak 'weekly-sport', best is 1")
    ]
    assert unmet_requirements(requirements, standing(100, run=3, daily=5, weekly=2)) == []


def test_an_unmet_streak_length_names_a_long_id_shortened() -> None:
    long_id = "s" * 40

    [(subject, description)] = unmet_requirements(needs(StreakLength(long_id, 2)), standing())

    assert subject == "streak_lengths/" + "s" * 32 + "…"
    assert description == f"needs a run of 2 periods of streak {long_id!r}, best is 0"


def test_watches_watch_a_run_after_the_counts_and_before_xp() -> None:
    rules = [
        AutoRule("counts-first", needs(StreakLength("weekly-sport", 9), counts=(ActivityCount("run", count=5),))),
        AutoRule("streaker", needs(StreakLength("daily-run", 7), xp=10_000)),  # the run before the XP
        AutoRule("streaker-2", needs(StreakLength("daily-run", 4))),  # the same run: the shortest
        AutoRule("streaker-3", needs(StreakLength("daily-run", 10))),
        AutoRule("ran", needs(StreakLength("daily-run", 2), xp=500)),  # the run met: the XP
        AutoRule("held", needs(StreakLength("weekly-sport", 1))),
        AutoRule("met", needs(StreakLength("daily-run", 3))),  # all met (its unlock refused): nothing
    ]

    watches = watches_for(rules, frozenset({"held"}), standing(100, run=1, daily=3), "fp")

    assert watches == Watches("fp", xp_at=500, level_at=None, counters={RUNS: 5, DAILY: 4})


def test_a_rule_whose_counts_are_met_watches_its_first_short_run() -> None:
    rules = [AutoRule("a", needs(StreakLength("daily-run", 3), StreakLength("weekly-sport", 2)))]

    assert watches_for(rules, frozenset(), standing(daily=3, weekly=1), "fp").counters == {WEEKLY: 2}
    assert watches_for(rules, frozenset(), standing(daily=1, weekly=1), "fp").counters == {DAILY: 3}
    assert watches_for(rules, frozenset(), standing(daily=3, weekly=2), "fp") == Watches("fp", None, None, {})


def test_an_achievements_criteria_list_its_runs_after_its_counts() -> None:
    achievement = Achievement(
        "streaker",
        "Streaker",
        requirements=needs(StreakLength("daily-run", 5), counts=(ActivityCount(activity_id="run", count=3),), xp=50),
    )

    assert criteria_of(achievement, standing(20, run=2, daily=4)) == (
        Criterion("3 awards of activity 'run'", 2, 3),
        Criterion("a run of 5 periods of streak 'daily-run'", 4, 5),
        Criterion("total XP", 20, 50),
    )


# --- XP asks Achievements when a watched run is reached, Achievements unlocks it ----------------------

STREAKER = needs(StreakLength("daily-run", 3))
STREAK_RULES = AutoRules.of([AutoRule("streaker", STREAKER, "r1")])


def test_an_award_reaching_a_watched_run_asks_the_achievements_service() -> None:
    game = Game(DAILY_RUN, unlocker=FakeAutoUnlocker(DueUnlocks(("streaker",), 30, 1)))
    game.repository.rules = STREAK_RULES
    game.repository.progress[USER] = replace(game.repository.progress[USER], auto_version=STREAK_RULES.fingerprint)
    game.repository.counters[(USER, DAILY)] = Counter(DAILY, 0, watch_at=3)

    first = game.award_at((2026, 3, 7, 9), "run", "r1")
    second = game.award_at((2026, 3, 8, 9), "run", "r2")
    again = game.award_at((2026, 3, 8, 21), "run", "r3")  # the same day: the run stays at 2

    assert [o.unlocked_achievements for o in (first, second, again)] == [(), (), ()]
    assert game.unlocker.calls == []
    # Each award reads the runs it touched (the read that folds one grown long).
    assert game.repository.counter_reads == [(DAILY,), (DAILY,), (DAILY,)]

    third = game.award_at((2026, 3, 9, 9), "run", "r4")

    assert third.unlocked_achievements == ("streaker",)
    assert game.unlocker.calls == [(USER, "req#r4")]
    assert game.repository.counters[(USER, DAILY)] == Counter(DAILY, 3, watch_at=3)


def test_an_award_of_another_day_after_a_gap_does_not_reach_the_watch() -> None:
    game = Game(DAILY_RUN, unlocker=FakeAutoUnlocker(DueUnlocks(("streaker",), 30, 1)))
    game.repository.rules = STREAK_RULES
    game.repository.progress[USER] = replace(game.repository.progress[USER], auto_version=STREAK_RULES.fingerprint)
    game.repository.counters[(USER, DAILY)] = Counter(DAILY, 0, watch_at=3)

    for i, day in enumerate((7, 8, 10)):  # 9 March missed
        game.award_at((2026, 3, day, 9), "run", f"r{i}")

    assert game.unlocker.calls == []
    assert game.repository.counters[(USER, DAILY)] == Counter(DAILY, 2, watch_at=3)


def achievements_with(counts: dict[str, int]) -> tuple[Achievements, FakeAchievementsRepository]:
    repository = FakeAchievementsRepository(start_level=1)
    repository.seed_achievement(
        Achievement("streaker", "Streaker", xp_reward=0, requirements=STREAKER, auto_unlock=True)
    )
    repository.seed_progress(stored_progress(USER, 60, 1, next_level_xp=10**6, level_version=1))
    for counter, awards in counts.items():
        repository.count(USER, counter, awards)
    return Achievements(repository, FakeLevelChecker()), repository


def test_achievements_watch_a_short_run_and_unlock_a_long_enough_one() -> None:
    achievements, repository = achievements_with({DAILY: 2})

    assert asyncio.run(achievements.unlock_due_achievements(USER, "req#r1")) == DueUnlocks((), 60, 1)
    fingerprint = asyncio.run(repository.auto_rules()).fingerprint
    assert repository.watch_writes == [Watches(fingerprint, None, None, {DAILY: 3})]

    repository.count(USER, DAILY, 3)

    assert asyncio.run(achievements.unlock_due_achievements(USER, "req#r2")) == DueUnlocks(("streaker",), 60, 1)
    assert {a: u.trigger for (_, a), u in repository.unlocks.items()} == {"streaker": "req#r2"}


# --- check_achievement: streak lengths ------------------------------------------------------------------


def with_runs(*runs: StreakLength) -> Achievement:
    return Achievement("a", "A", requirements=Requirements(streak_lengths=runs))


@pytest.mark.parametrize(
    ("runs", "field", "rule_text"),
    [
        pytest.param(
            tuple(StreakLength(f"s{i}", 1) for i in range(11)),
            "achievement.requirements.streak_lengths",
            "must list at most 10 streaks (got 11)",
            id="more than 10",
        ),
        pytest.param(
            (StreakLength("a", 1), StreakLength("b", 2), StreakLength("c", 0)),
            "achievement.requirements.streak_lengths[2].length",
            "must be between 1 and 100000 (got 0)",
            id="length 0",
        ),
        pytest.param(
            (StreakLength("a", -1),),
            "achievement.requirements.streak_lengths[0].length",
            "must be between 1 and 100000 (got -1)",
            id="negative length",
        ),
        pytest.param(
            (StreakLength("a", 3), StreakLength("a", 100_001)),
            "achievement.requirements.streak_lengths[1].length",
            "must be between 1 and 100000 (got 100001)",
            id="length past 100000, indexed as in the request",
        ),
    ],
)
def test_each_broken_streak_length_rule_names_its_field(
    runs: tuple[StreakLength, ...], field: str, rule_text: str
) -> None:
    with pytest.raises(InvalidField) as refused:
        check_achievement(with_runs(*runs))

    assert (refused.value.field, refused.value.rule) == (field, rule_text)


def test_streak_lengths_at_the_limits_are_accepted() -> None:
    runs = tuple(StreakLength(f"s{i}", 1) for i in range(9)) + (StreakLength("long", 100_000),)

    assert check_achievement(with_runs(*runs)).requirements.streak_lengths == runs


def test_streak_lengths_of_one_streak_collapse_to_the_longest_in_first_seen_order() -> None:
    checked = check_achievement(
        with_runs(
            StreakLength("daily-run", 3),
            StreakLength("weekly-sport", 2),
            StreakLength("daily-run", 5),
            StreakLength("daily-run", 4),
            StreakLength("weekly-sport", 1),
        )
    )

    assert checked.requirements.streak_lengths == (StreakLength("daily-run", 5), StreakLength("weekly-sport", 2))


def test_streak_lengths_leave_activity_counts_alone() -> None:
    requirements = Requirements(
        activity_counts=(ActivityCount(activity_id="run", count=2),), streak_lengths=(StreakLength("daily-run", 2),)
    )

    checked = check_achievement(Achievement("a", "A", requirements=requirements))

    assert checked.requirements == requirements
