"""Calendar periods (days, weeks starting on Monday) in the game's one time
zone: where caps and streaks count. Pure. A period is named by its start, the
local midnight that begins it, so a change of daylight-saving time neither
skips nor doubles a day (a local day is 23 or 25 hours long then)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

DAY = "day"
WEEK = "week"
PERIODS = (DAY, WEEK)


def period_start_date(moment: datetime, period: str, zone: ZoneInfo) -> date:
    """The local date on which the period holding `moment` (an aware datetime) starts."""
    local = moment.astimezone(zone).date()
    return local - timedelta(days=local.weekday()) if period == WEEK else local


def period_start(moment: datetime, period: str, zone: ZoneInfo) -> datetime:
    """The instant (UTC) the period holding `moment` starts: local midnight of its first day."""
    return start_of_day(period_start_date(moment, period, zone), zone)


def start_of_day(local_day: date, zone: ZoneInfo) -> datetime:
    """The instant (UTC) of a local day's midnight (at a change of time that
    skips midnight, the first instant of that day)."""
    return datetime.combine(local_day, time(0), tzinfo=zone).astimezone(UTC)


def period_key(moment: datetime, period: str, zone: ZoneInfo) -> str:
    """A stable name of the period: `day:2026-03-08`, `week:2026-03-02` (its first local day)."""
    return f"{period}:{period_start_date(moment, period, zone).isoformat()}"
