"""Achievements that unlock themselves, as both services see them: the
requirements (shared by the catalog and the rules), the awards counted per
activity and category, the catalog's auto-unlock rules, and the test XP makes
after an award: may one of them be due now? Pure.

Each user carries "watches" that the Achievements service writes after it
evaluated the user under one version of the rules (their fingerprint): for every
auto-unlock achievement the user lacks, one requirement it does not meet yet,
as a threshold (a count on the counter's item; total XP or level on the
progress item). Requirements only grow, so an achievement can become due only
when a watched threshold is reached: XP sees that in the read it makes after
every award, and asks Achievements only then, as it asks Levels only when the
next level's threshold is reached. A watch is written only while its
requirement is still unmet, so an award that raced the evaluation is never
missed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from common.models import LevelUpOutcome, ProgressRecord
from common.streaks import StreakLength

# Counter keys: one space per activity, one per category; a user's counters are
# the items of the activity_counts table under the user's id.
_ACTIVITY_COUNTER = "a#"
_CATEGORY_COUNTER = "c#"


def activity_counter(activity_id: str) -> str:
    return _ACTIVITY_COUNTER + activity_id


def category_counter(category: str) -> str:
    return _CATEGORY_COUNTER + category


def award_counters(activity_id: str, category: str) -> tuple[str, ...]:
    """The counters one award of an activity adds one to."""
    return (activity_counter(activity_id), category_counter(category)) if category else (activity_counter(activity_id),)


@dataclass(frozen=True)
class ActivityCount:
    """At least `count` awards of one activity, or of one category's activities."""

    activity_id: str = ""
    category: str = ""
    count: int = 0

    @property
    def counter(self) -> str:
        return activity_counter(self.activity_id) if self.activity_id else category_counter(self.category)

    def describe(self) -> str:
        subject = f"activity {self.activity_id!r}" if self.activity_id else f"category {self.category!r}"
        return f"{self.count} awards of {subject}"


@dataclass(frozen=True)
class Requirements:
    required_achievements: tuple[str, ...] = ()
    min_total_xp: int = 0
    min_level: int = 0
    activity_counts: tuple[ActivityCount, ...] = ()
    streak_lengths: tuple[StreakLength, ...] = ()

    def counted(self) -> tuple[ActivityCount | StreakLength, ...]:
        """The requirements on counter items: counts, then streak runs."""
        return (*self.activity_counts, *self.streak_lengths)


@dataclass(frozen=True)
class Counter:
    """One of a user's counters: awards counted (for a streak's item, the
    best run), and the watch on it (the count at which an auto-unlock
    achievement the user lacks may be due)."""

    counter: str
    awards: int = 0
    watch_at: int | None = None
    # A streak's item only: what the watch's write checks is unchanged (common.dynamodb.counters).
    streak_mark: tuple[int, str] | None = None


@dataclass(frozen=True)
class AutoRule:
    achievement_id: str
    requirements: Requirements
    revision: str = ""


@dataclass(frozen=True)
class AutoRules:
    """The catalog's auto-unlock achievements as one process last read them."""

    rules: tuple[AutoRule, ...] = ()
    # Names this set of rules (ids and revisions): the watches a user carries
    # are good only under the fingerprint they were written for.
    fingerprint: str = ""
    # Every counter some rule counts: an award of anything else reads no counter.
    counters: frozenset[str] = field(default=frozenset())
    # Every achievement some rule requires: unlocking one of them may complete a rule.
    required: frozenset[str] = field(default=frozenset())
    # Whether some rule asks for a level: a level-up may complete one.
    asks_levels: bool = False

    @classmethod
    def of(cls, rules: Iterable[AutoRule]) -> AutoRules:
        ordered = tuple(sorted(rules, key=lambda r: r.achievement_id))
        if not ordered:
            return cls()
        digest = hashlib.sha256()
        for rule in ordered:
            digest.update(f"{rule.achievement_id}\x00{rule.revision}\x00{rule.requirements!r}\x01".encode())
        return cls(
            ordered,
            digest.hexdigest()[:16],
            frozenset(c.counter for r in ordered for c in r.requirements.counted()),
            frozenset(a for r in ordered for a in r.requirements.required_achievements),
            any(r.requirements.min_level for r in ordered),
        )


def auto_unlock_may_be_due(
    rules: AutoRules, record: ProgressRecord, level: int, counters: Mapping[str, Counter]
) -> bool:
    """Whether an auto-unlock achievement the user lacks may be due, from the
    user's progress item (at `level`, after any level-up) and the counters the
    award touched: never False when one is due."""
    if not rules.rules:
        return False
    if record.auto_version != rules.fingerprint:  # never evaluated under these rules
        return True
    if record.watch_xp_at is not None and record.total_xp >= record.watch_xp_at:
        return True
    if record.watch_level_at is not None and level >= record.watch_level_at:
        return True
    return any(c.watch_at is not None and c.awards >= c.watch_at for c in counters.values())


@dataclass(frozen=True)
class DueUnlocks:
    """What an evaluation unlocked under one trigger, and where it left the user."""

    unlocked: tuple[str, ...]
    total_xp: int
    level: int
    due: tuple[str, ...] = ()  # a dry run's answer
    # The level-up those unlocks' rewards made, joined (common.models.level_ups_joined).
    level_up: LevelUpOutcome | None = None


class AutoUnlocker(Protocol):
    async def unlock_due(self, user_id: str, trigger_id: str, replay_only: bool = False) -> DueUnlocks | None:
        """The Achievements service's answer, or None when it could not answer in time; with
        `replay_only`, only what is already recorded under the trigger (nothing evaluated)."""


class WatchOutdated(Exception):
    """A watched requirement was met by the time the watches were written
    (nothing was written): evaluate the user again."""


@dataclass(frozen=True)
class Watches:
    """What an evaluation leaves on a user: thresholds under `fingerprint`."""

    fingerprint: str
    xp_at: int | None = None
    level_at: int | None = None
    counters: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Standing:
    """What requirements are checked against."""

    unlocked: frozenset[str]
    total_xp: int
    level: int
    counts: Mapping[str, int] = field(default_factory=dict)

    def count(self, counter: str) -> int:
        return self.counts.get(counter, 0)


def unmet_requirements(requirements: Requirements, standing: Standing) -> list[tuple[str, str]]:
    """(subject, description) for each requirement the player does not meet."""
    unmet = [
        (f"required_achievements/{a}", f"achievement {shown_id(a)!r} must be unlocked first")
        for a in requirements.required_achievements
        if a not in standing.unlocked
    ]
    if standing.total_xp < requirements.min_total_xp:
        unmet.append(("min_total_xp", f"needs {requirements.min_total_xp} total XP, has {standing.total_xp}"))
    if standing.level < requirements.min_level:
        unmet.append(("min_level", f"needs level {requirements.min_level}, is level {standing.level}"))
    for needed in requirements.activity_counts:
        has = standing.count(needed.counter)
        if has < needed.count:
            subject = f"activity_counts/{shown_id(needed.activity_id or needed.category)}"
            unmet.append((subject, f"needs {needed.describe()}, has {has}"))
    for run in requirements.streak_lengths:
        best = standing.count(run.counter)
        if best < run.length:
            unmet.append((f"streak_lengths/{shown_id(run.streak_id)}", f"needs {run.describe()}, best is {best}"))
    return unmet


def _needed(requirement: ActivityCount | StreakLength) -> int:
    return requirement.count if isinstance(requirement, ActivityCount) else requirement.length


def watches_for(rules: Iterable[AutoRule], held: frozenset[str], standing: Standing, fingerprint: str) -> Watches:
    """One unmet requirement watched per rule the user lacks: a count first
    (the usual driver), then total XP, then level. A rule missing only
    required achievements needs no watch: the unlock of one of those
    evaluates the user again. A rule whose requirements all hold (its unlock
    was refused: no room for its XP) gets none either."""
    xp_at: int | None = None
    level_at: int | None = None
    counters: dict[str, int] = {}
    for rule in rules:
        if rule.achievement_id in held:
            continue
        needs = rule.requirements
        short = next((c for c in needs.counted() if standing.count(c.counter) < _needed(c)), None)
        if short is not None:
            counters[short.counter] = min(counters.get(short.counter, _needed(short)), _needed(short))
        elif standing.total_xp < needs.min_total_xp:
            xp_at = min(xp_at or needs.min_total_xp, needs.min_total_xp)
        elif standing.level < needs.min_level:
            level_at = min(level_at or needs.min_level, needs.min_level)
    return Watches(fingerprint, xp_at, level_at, counters)


_ID_SHOWN = 32


def shown_id(text: str) -> str:
    """An id as error messages show it: gRPC trailers are capped (8 KB by default)."""
    return text if len(text) <= _ID_SHOWN else text[:_ID_SHOWN] + "…"
