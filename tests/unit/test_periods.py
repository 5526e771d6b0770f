"""Days and weeks in the game's time zone (common.periods): where caps and
streaks count. Time is given, never read from the clock."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from common.periods import DAY, WEEK, period_key, period_start

NEW_YORK = ZoneInfo("America/New_York")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(
    ("moment", "period", "key"),
    [
        # 23:59 in New York is already the next day in UTC: the game's day is New York's.
        ("2026-03-07T23:59:00-05:00", DAY, "day:2026-03-07"),
        ("2026-03-08T00:00:00-05:00", DAY, "day:2026-03-08"),
        # 8 March 2026: clocks go forward at 02:00; the day is 23 hours long, and still one day.
        ("2026-03-08T03:30:00-04:00", DAY, "day:2026-03-08"),
        ("2026-03-08T23:59:59-04:00", DAY, "day:2026-03-08"),
        ("2026-03-09T00:00:00-04:00", DAY, "day:2026-03-09"),
        # 1 November 2026: clocks go back at 02:00; 01:30 happens twice, both in the same day.
        ("2026-11-01T01:30:00-04:00", DAY, "day:2026-11-01"),
        ("2026-11-01T01:30:00-05:00", DAY, "day:2026-11-01"),
        # Weeks start on Monday, across a year boundary too.
        ("2026-12-31T12:00:00-05:00", WEEK, "week:2026-12-28"),
        ("2027-01-03T23:59:00-05:00", WEEK, "week:2026-12-28"),
        ("2027-01-04T00:00:00-05:00", WEEK, "week:2027-01-04"),
    ],
)
def test_a_moment_falls_in_the_local_period(moment: str, period: str, key: str) -> None:
    assert period_key(at(moment), period, NEW_YORK) == key


def test_period_starts_are_local_midnights_whatever_the_offset() -> None:
    # The day of the spring change starts at 05:00 UTC, the next at 04:00 UTC: 23 hours apart.
    start = period_start(at("2026-03-08T12:00:00-04:00"), DAY, NEW_YORK)
    following = period_start(at("2026-03-09T12:00:00-04:00"), DAY, NEW_YORK)
    assert (start.isoformat(), following.isoformat()) == ("2026-03-08T05:00:00+00:00", "2026-03-09T04:00:00+00:00")
    assert (following - start).total_seconds() == 23 * 3600


def test_utc_is_the_default_zone_and_never_the_servers() -> None:
    assert period_key(at("2026-03-07T23:59:00-05:00"), DAY, ZoneInfo("UTC")) == "day:2026-03-08"
