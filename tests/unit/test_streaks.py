"""Streaks, the pure rules (common.streaks, common.periods.start_of_day): a
run derived from the set of periods touched and a fold's summary, whether it
is still alive in a given period, which streaks an award touches, and the
instants periods start at across daylight-saving changes. Time is given,
never read from the clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from common.periods import DAY, WEEK, period_start_date, start_of_day
from common.streaks import (
    FOLD_AT,
    Streak,
    StreakLength,
    StreakRecord,
    StreakRun,
    is_streak_counter,
    previous_period,
    streak_counter,
    streak_id_of,
    streaks_of_award,
)

NEW_YORK = ZoneInfo("America/New_York")


def days(*iso: str) -> frozenset[str]:
    return frozenset(iso)


def d(iso: str) -> date:
    return date.fromisoformat(iso)


# --- StreakRecord.run: runs from the periods touched -----------------------------------------


def test_no_period_touched_is_no_run() -> None:
    assert StreakRecord(DAY).run() == StreakRun(None, 0, 0)


def test_one_period_is_a_run_of_one() -> None:
    assert StreakRecord(DAY, days("2026-03-08")).run() == StreakRun(d("2026-03-08"), 1, 1)


def test_consecutive_days_grow_the_run_and_a_gap_starts_it_again() -> None:
    # 1..3 January, then 4 January missed, then 5 and 6: the run ending last is 2, the best 3.
    record = StreakRecord(DAY, days("2026-01-06", "2026-01-01", "2026-01-05", "2026-01-03", "2026-01-02"))

    assert record.run() == StreakRun(d("2026-01-06"), 2, 3)


def test_a_later_run_longer_than_the_first_is_the_best() -> None:
    record = StreakRecord(DAY, days("2026-01-01", "2026-01-03", "2026-01-04", "2026-01-05", "2026-01-06"))

    assert record.run() == StreakRun(d("2026-01-06"), 4, 4)


def test_a_run_ending_in_a_single_period_after_a_gap_is_one() -> None:
    record = StreakRecord(DAY, days("2026-01-01", "2026-01-02", "2026-01-03", "2026-01-10"))

    assert record.run() == StreakRun(d("2026-01-10"), 1, 3)


def test_days_run_on_across_the_spring_change_and_a_year_boundary() -> None:
    # The dates are calendar days: 8 March (23 hours in New York) is one day like the others.
    assert StreakRecord(DAY, days("2026-03-07", "2026-03-08", "2026-03-09")).run() == StreakRun(d("2026-03-09"), 3, 3)
    assert StreakRecord(DAY, days("2026-12-30", "2026-12-31", "2027-01-01")).run() == StreakRun(d("2027-01-01"), 3, 3)


def test_weeks_run_on_mondays_seven_days_apart_across_a_year_boundary() -> None:
    # Weeks of 21 and 28 December 2026 and 4 January 2027, then the week of 11 January missed.
    record = StreakRecord(WEEK, days("2026-12-21", "2026-12-28", "2027-01-04", "2027-01-18"))

    assert record.run() == StreakRun(d("2027-01-18"), 1, 3)
    assert StreakRecord(WEEK, days("2026-12-21", "2026-12-28", "2027-01-04")).run() == StreakRun(d("2027-01-04"), 3, 3)


def test_consecutive_days_in_a_weekly_record_are_not_consecutive_periods() -> None:
    # A week's previous period is 7 days back, never 1.
    assert StreakRecord(WEEK, days("2026-01-05", "2026-01-06")).run() == StreakRun(d("2026-01-06"), 1, 1)


# --- StreakRecord.run: a fold's summary and the periods after it ---------------------------


def test_a_summary_alone_is_the_run_it_names() -> None:
    record = StreakRecord(DAY, base_last="2026-01-10", base_current=4, base_best=6)

    assert record.run() == StreakRun(d("2026-01-10"), 4, 6)


def test_periods_right_after_the_summary_continue_its_run() -> None:
    record = StreakRecord(DAY, days("2026-01-11", "2026-01-12"), "2026-01-10", 4, 6)

    assert record.run() == StreakRun(d("2026-01-12"), 6, 6)
    longer = replace(record, touched=days("2026-01-11", "2026-01-12", "2026-01-13"))
    assert longer.run() == StreakRun(d("2026-01-13"), 7, 7)


def test_a_gap_after_the_summary_starts_a_new_run_and_keeps_the_summarys_best() -> None:
    record = StreakRecord(DAY, days("2026-01-12", "2026-01-13"), "2026-01-10", 4, 6)

    assert record.run() == StreakRun(d("2026-01-13"), 2, 6)


def test_a_weekly_summary_continues_with_the_next_monday() -> None:
    record = StreakRecord(WEEK, days("2027-01-04"), "2026-12-28", 2, 2)

    assert record.run() == StreakRun(d("2027-01-04"), 3, 3)


def test_periods_at_or_before_the_summarys_last_are_ignored() -> None:
    # 8 and 10 January are already counted in the summary (a retried fold, a late duplicate).
    record = StreakRecord(DAY, days("2026-01-08", "2026-01-10", "2026-01-11"), "2026-01-10", 4, 6)

    assert record.run() == StreakRun(d("2026-01-11"), 5, 6)
    only_old = StreakRecord(DAY, days("2026-01-01", "2026-01-09", "2026-01-10"), "2026-01-10", 4, 6)
    assert only_old.run() == StreakRun(d("2026-01-10"), 4, 6)


def test_a_set_is_folded_once_eight_periods_are_older_than_the_last_two() -> None:
    nine = frozenset(f"2026-01-0{i}" for i in range(1, 10))
    ten = nine | {"2026-01-10"}

    assert FOLD_AT == 8
    # The newest period and the one before it stay: 7 foldable of 9, 8 of 10.
    assert StreakRecord(DAY, nine).foldable() == frozenset(f"2026-01-0{i}" for i in range(1, 8))
    assert StreakRecord(DAY, nine).needs_fold() is False
    assert StreakRecord(DAY, ten).needs_fold() is True
    # What a fold writes, then read with the two periods it left: the run before the fold.
    record = StreakRecord(DAY, ten)
    assert record.folded() == StreakRun(d("2026-01-08"), 8, 8)
    after = StreakRecord(DAY, frozenset({"2026-01-09", "2026-01-10"}), "2026-01-08", 8, 8)
    assert record.run() == after.run() == StreakRun(d("2026-01-10"), 10, 10)


def test_a_period_that_lands_late_after_a_fold_still_counts() -> None:
    """The award of the 9th commits after the 10th's read folded: the 9th was not folded over."""
    folded = StreakRecord(DAY, frozenset({"2026-01-10"}), "2026-01-08", 8, 8)
    assert folded.run() == StreakRun(d("2026-01-10"), 1, 8)
    late = StreakRecord(DAY, frozenset({"2026-01-09", "2026-01-10"}), "2026-01-08", 8, 8)
    assert late.run() == StreakRun(d("2026-01-10"), 10, 10)


def test_weeks_keep_the_last_two_weeks_out_of_a_fold() -> None:
    mondays = frozenset({"2026-12-07", "2026-12-14", "2026-12-21", "2026-12-28", "2027-01-04"})
    assert StreakRecord(WEEK, mondays).foldable() == frozenset({"2026-12-07", "2026-12-14", "2026-12-21"})


# --- previous_period and StreakRun.current_at -------------------------------------------------


@pytest.mark.parametrize(
    ("first_day", "period", "previous"),
    [
        ("2027-01-01", DAY, "2026-12-31"),
        ("2026-03-09", DAY, "2026-03-08"),
        ("2026-03-01", DAY, "2026-02-28"),
        ("2027-01-04", WEEK, "2026-12-28"),
        ("2026-03-09", WEEK, "2026-03-02"),
    ],
)
def test_the_previous_period_is_a_day_or_a_week_back(first_day: str, period: str, previous: str) -> None:
    assert previous_period(d(first_day), period) == d(previous)


def test_a_daily_run_is_alive_this_day_and_the_next_and_gone_after_a_missed_day() -> None:
    run = StreakRun(d("2026-03-09"), 3, 5)

    assert run.current_at(d("2026-03-09"), DAY) == 3  # touched this period
    assert run.current_at(d("2026-03-10"), DAY) == 3  # the previous period: an award now keeps it going
    assert run.current_at(d("2026-03-11"), DAY) == 0  # 10 March was missed
    assert run.current_at(d("2026-04-01"), DAY) == 0
    # A run another replica extended a moment ahead (its clock past midnight): alive, not 0.
    assert run.current_at(d("2026-03-08"), DAY) == 3


def test_a_weekly_run_is_alive_this_week_and_the_next() -> None:
    run = StreakRun(d("2026-12-28"), 2, 2)

    assert run.current_at(d("2026-12-28"), WEEK) == 2
    assert run.current_at(d("2027-01-04"), WEEK) == 2
    assert run.current_at(d("2027-01-11"), WEEK) == 0


def test_no_run_is_zero_in_any_period() -> None:
    assert StreakRun().current_at(d("2026-03-09"), DAY) == 0
    assert StreakRun().current_at(d("2026-03-09"), WEEK) == 0


# --- which streaks an award touches -------------------------------------------------------------

DAILY_RUN = Streak("daily-run", "Run daily", DAY, activity_id="run")
WEEKLY_SPORT = Streak("weekly-sport", "Sport weekly", WEEK, category="sport")
DAILY_SWIM = Streak("daily-swim", "Swim daily", DAY, activity_id="swim")
WEEKLY_WATER = Streak("weekly-water", "Water weekly", WEEK, category="water")
# A category named like an activity: only awards of that category count.
RUN_CATEGORY = Streak("run-category", "Run category", DAY, category="run")
CATALOG = (DAILY_RUN, WEEKLY_SPORT, DAILY_SWIM, WEEKLY_WATER, RUN_CATEGORY)


@pytest.mark.parametrize(
    ("activity_id", "category", "touched"),
    [
        pytest.param("run", "sport", (DAILY_RUN, WEEKLY_SPORT), id="activity and category"),
        pytest.param("swim", "water", (DAILY_SWIM, WEEKLY_WATER), id="another activity and category"),
        pytest.param("swim", "sport", (WEEKLY_SPORT, DAILY_SWIM), id="catalog order"),
        pytest.param("bike", "sport", (WEEKLY_SPORT,), id="category only"),
        pytest.param("run", "", (DAILY_RUN,), id="activity without a category"),
        pytest.param("walk", "", (), id="nothing"),
        pytest.param("walk", "run", (RUN_CATEGORY,), id="category named like an activity"),
    ],
)
def test_an_award_touches_the_streaks_of_its_activity_and_of_its_category(
    activity_id: str, category: str, touched: tuple[Streak, ...]
) -> None:
    assert streaks_of_award(CATALOG, activity_id, category) == touched


def test_an_activity_without_a_category_matches_no_category_streak() -> None:
    assert WEEKLY_SPORT.counts("walk", "") is False
    # Not even a streak whose category is empty (which the API refuses to put).
    assert Streak("blank", "Blank", DAY).counts("walk", "") is False
    assert streaks_of_award((Streak("blank", "Blank", DAY), WEEKLY_SPORT), "walk", "") == ()


def test_an_activity_streak_counts_its_activity_whatever_the_category() -> None:
    assert DAILY_RUN.counts("run", "sport") is True
    assert DAILY_RUN.counts("run", "") is True
    assert DAILY_RUN.counts("run", "other") is True
    assert DAILY_RUN.counts("swim", "sport") is False


def test_a_streaks_counter_and_requirement() -> None:
    assert streak_counter("daily-run") == "s#daily-run"
    assert streak_id_of("s#daily-run") == "daily-run"
    assert is_streak_counter("s#daily-run") is True
    assert is_streak_counter("a#daily-run") is False
    requirement = StreakLength("daily-run", 7)
    assert requirement.counter == "s#daily-run"
    assert requirement.describe() == "a run of 7 periods of streak 'daily-run'"


# --- periods: the local midnights streaks count from ---------------------------------------


@pytest.mark.parametrize(
    ("local_day", "start"),
    [
        ("2026-03-07", "2026-03-07T05:00:00+00:00"),
        # 8 March 2026: clocks go forward at 02:00, after midnight: the day starts in EST...
        ("2026-03-08", "2026-03-08T05:00:00+00:00"),
        # ...and the next in EDT.
        ("2026-03-09", "2026-03-09T04:00:00+00:00"),
        ("2026-10-31", "2026-10-31T04:00:00+00:00"),
        # 1 November 2026: clocks go back at 02:00: the day starts in EDT, the next in EST.
        ("2026-11-01", "2026-11-01T04:00:00+00:00"),
        ("2026-11-02", "2026-11-02T05:00:00+00:00"),
        ("2027-01-01", "2027-01-01T05:00:00+00:00"),
    ],
)
def test_a_day_starts_at_its_local_midnight_in_new_york(local_day: str, start: str) -> None:
    instant = start_of_day(d(local_day), NEW_YORK)

    assert instant.isoformat() == start
    assert instant.tzinfo is UTC


def test_new_yorks_days_are_23_and_25_hours_long_at_the_changes() -> None:
    def hours(first: str, second: str) -> float:
        return (start_of_day(d(second), NEW_YORK) - start_of_day(d(first), NEW_YORK)).total_seconds() / 3600

    assert hours("2026-03-07", "2026-03-08") == 24
    assert hours("2026-03-08", "2026-03-09") == 23
    assert hours("2026-11-01", "2026-11-02") == 25


def test_a_day_whose_midnight_is_skipped_starts_at_its_first_instant() -> None:
    # Santiago, 6 September 2026: at 00:00 (-04) clocks go to 01:00 (-03); the day starts at 04:00 UTC.
    santiago = ZoneInfo("America/Santiago")
    instant = start_of_day(d("2026-09-06"), santiago)

    assert instant.isoformat() == "2026-09-06T04:00:00+00:00"
    assert instant.astimezone(santiago).isoformat() == "2026-09-06T01:00:00-03:00"
    assert period_start_date(instant, DAY, santiago) == d("2026-09-06")
    assert period_start_date(datetime(2026, 9, 6, 3, 59, 59, tzinfo=UTC), DAY, santiago) == d("2026-09-05")


@pytest.mark.parametrize(
    ("moment", "period", "first_day"),
    [
        # 23:30 EST on 7 March is 8 March in UTC: still New York's 7 March.
        ("2026-03-08T04:30:00+00:00", DAY, "2026-03-07"),
        ("2026-03-08T05:00:00+00:00", DAY, "2026-03-08"),
        # 23:59 EDT on 8 March, the 23-hour day.
        ("2026-03-09T03:59:00+00:00", DAY, "2026-03-08"),
        ("2026-03-09T04:00:00+00:00", DAY, "2026-03-09"),
        # Sunday 3 January 2027, 22:00 EST, is Monday in UTC: the week is still the one of 28 December.
        ("2027-01-04T03:00:00+00:00", WEEK, "2026-12-28"),
        ("2027-01-04T05:00:00+00:00", WEEK, "2027-01-04"),
    ],
)
def test_a_moments_period_first_day_is_new_yorks(moment: str, period: str, first_day: str) -> None:
    assert period_start_date(datetime.fromisoformat(moment), period, NEW_YORK) == d(first_day)
