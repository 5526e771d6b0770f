"""Streaks, pure: the catalog's definition, and a user's run as stored and as
derived. XP writes runs, Achievements reads them (StreakLength requirements),
the tooling checks them.

A user's run of a streak is stored as the set of periods (their first local
days, common.periods) in which a counted award touched it: the award's own
transaction ADDs its period to the set, which is idempotent and commutative,
so concurrent awards, retries and crashes neither lose nor double a period,
and no award reads before it writes. The set is folded now and then into a
summary (the last folded period, the run ending there, the best run) by a
conditional write, so the item stays small. A fold leaves the newest period
in the set and the one before it, so an award that lands a period late (its
clock said 23:59, its write committed after another award of the next day,
or another replica's clock runs a moment ahead) still counts; periods at or
before the summary's last one are already counted and are ignored."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from common.periods import DAY, WEEK

# A user's run of a streak is the activity_counts item under this counter.
_STREAK_COUNTER = "s#"
# Fold a run's set of periods into its summary once this many can be folded.
FOLD_AT = 8
# The catalog holds at most this many streaks: each award's transaction has room
# for the streaks of its activity and category (100 items, 6 of them the award's).
MAX_STREAKS = 64


def streak_counter(streak_id: str) -> str:
    return _STREAK_COUNTER + streak_id


def is_streak_counter(counter: str) -> bool:
    return counter.startswith(_STREAK_COUNTER)


def streak_id_of(counter: str) -> str:
    return counter[len(_STREAK_COUNTER) :]


@dataclass(frozen=True)
class Streak:
    streak_id: str
    name: str
    period: str  # common.periods.DAY or WEEK
    # Exactly one: awards of this activity, or of any activity of this category, count.
    activity_id: str = ""
    category: str = ""

    def counts(self, activity_id: str, category: str) -> bool:
        return (self.activity_id == activity_id) if self.activity_id else bool(category) and self.category == category


def streaks_of_award(streaks: Iterable[Streak], activity_id: str, category: str) -> tuple[Streak, ...]:
    """The streaks one counted award of the activity touches."""
    return tuple(s for s in streaks if s.counts(activity_id, category))


def previous_period(first_day: date, period: str) -> date:
    return first_day - timedelta(days=7 if period == WEEK else 1)


@dataclass(frozen=True)
class StreakRecord:
    """A user's run as stored: periods touched since the summary, and the summary."""

    period: str = DAY
    touched: frozenset[str] = frozenset()  # ISO dates: each period's first local day
    base_last: str = ""  # the last period folded in ("" before any fold)
    base_current: int = 0  # the run that ends at base_last
    base_best: int = 0

    def run(self) -> StreakRun:
        return self._run_over(self.touched)

    def foldable(self) -> frozenset[str]:
        """The periods a fold moves into the summary: all but the newest and the one before it."""
        if not self.touched:
            return frozenset()
        keep_from = previous_period(max(date.fromisoformat(d) for d in self.touched), self.period)
        return frozenset(d for d in self.touched if date.fromisoformat(d) < keep_from)

    def folded(self) -> StreakRun:
        """The summary a fold writes: the run over the summary and the foldable periods."""
        return self._run_over(self.foldable())

    def _run_over(self, periods: frozenset[str]) -> StreakRun:
        last = date.fromisoformat(self.base_last) if self.base_last else None
        current, best = self.base_current, self.base_best
        for first_day in sorted(date.fromisoformat(d) for d in periods):
            if last is not None and first_day <= last:
                continue  # already folded in (a retried fold, or a late duplicate)
            current = current + 1 if last is not None and previous_period(first_day, self.period) == last else 1
            best = max(best, current)
            last = first_day
        return StreakRun(last, current, best)

    def needs_fold(self) -> bool:
        return len(self.foldable()) >= FOLD_AT


@dataclass(frozen=True)
class StreakRun:
    """A run as derived: the last period with a counted award, the run that
    ends there, and the longest run ever."""

    last: date | None = None
    current: int = 0
    best: int = 0

    def current_at(self, this_period: date, period: str) -> int:
        """The run as of the period `this_period` starts: alive while its last
        period is this one or the one before (an award now keeps it going), or
        later (another replica's clock a moment ahead at midnight)."""
        if self.last is None or self.last < previous_period(this_period, period):
            return 0
        return self.current


@dataclass(frozen=True)
class StreakLength:
    """A requirement: a best run of at least `length` periods."""

    streak_id: str
    length: int

    @property
    def counter(self) -> str:
        return streak_counter(self.streak_id)

    def describe(self) -> str:
        return f"a run of {self.length} periods of streak {self.streak_id!r}"
