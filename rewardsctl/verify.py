"""`rewardsctl verify`: proves, from a stage's tables alone, that every user's
progress is what exactly-once processing must leave behind.

Two parts, kept apart:

- `verify_users` is pure: it takes the catalog (`StageCatalog`) and the users'
  items one user at a time (`UserItems`) and returns a `VerifyReport` of counts
  and findings. No I/O. `verify_contents` does the same for a whole stage held
  in memory (`StageContents`).
- `read_catalog` and `read_users` read one stage (strongly consistent), with the
  settings backups use (REWARDS_DYNAMODB_ENDPOINT, REWARDS_TABLE_PREFIX):
  user_progress page by page, each user's items by Query, then the users that
  have items but no progress item. Memory holds one page of user ids and one
  user's items at a time, whatever the size of the stage. `read_catalog` reads
  the game-wide stats (achievement_stats) with the catalog: a few items per
  achievement.

Most invariants are about one user. The game-wide stats are checked once every
user was: `verify_users` tallies, per achievement and per stat shard, the unlock
records and progress items the stats count (those marked `counted` and
`player_counted`; what an earlier version wrote carries no mark and was never
counted), and compares the stats with the tallies at the end. Their findings
name no user.

Findings have three severities:

- violation: a state that exactly-once processing can never produce (XP counted
  twice or lost, an achievement paid twice or not at all, a level's rewards
  missing or granted above the level, an entry revoked twice or by another
  amount than its XP, a total below zero). The command exits 1.
- warning: a state that is legal but not settled yet: an unlock whose XP is
  still owed (the grant failed; a repeat of the unlock pays it), a level
  check still due (checks may be deferred; the next check grants it), or an
  auto-unlock achievement whose requirements the user meets but that the user
  lacks (left for later while Achievements could not answer XP; the award's
  retry, the user's next award that reaches the user's watch on it, or
  `rewardsctl achievements backfill` unlocks it).
- note: a legal step in between, such as an achievement whose XP was granted
  but whose unlock is not marked paid yet.

Every finding is counted; the report keeps only the first `limit` of each
severity by user id, so a stage with millions of findings stays small.

XP taken back (negative adjustments, revokes) lowers total_xp and, for a revoked
activity award, its counters, but never a level reached or an unlock: those
are checked against what the user had before, the positive entries summed (a
bound on any past total) and the counters with the revoked awards added back.
Nor does it take a period out of a streak's run, nor give back a cap's slot.

Caps and streaks count in periods (days, weeks from Monday) of the game's one
time zone (REWARDS_TIME_ZONE, `StageCatalog.zone`): an award's period is that
of its ledger entry's recorded_at, the instant the award read to find its cap's
period and its streaks' periods. The items they write in activity_counts are
checked against the ledger: `cap#<activity_id>#<period>` (a slot taken by each
award that was not capped) and `s#<streak_id>` (a user's run of a streak: the
first local day of each period with a counted award, `touched`, and after a
fold the summary `base_last`, `base_current`, `base_best`; common.streaks).

Some checks compare stored progress with the catalog as it is now: the level a
total gives, the rewards of each level, achievement requirements, the caps of
the activities, the activity or category a streak counts, and the time zone.
They hold when the catalog has only been what it is now while players played.
After the level table, the requirements, a cap or a streak changed (or a
streak was deleted after a change), or the time zone did (levels never go
down, rewards were granted as they were, periods were counted as they were),
`catalog_changed` turns those findings into notes. A streak's period is the
exception: it is fixed once created, even deleted, so a run in other periods
is always a violation.

A scan is not a snapshot: run it on a stage that takes no writes, or expect
findings about users written to during the scan.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from botocore.exceptions import ClientError

from common.auto_unlock import Requirements, Standing, unmet_requirements
from common.dynamodb import (
    ACHIEVEMENT_STATS,
    ACHIEVEMENTS,
    ACTIVITIES,
    ACTIVITY_COUNTS,
    LEVEL_CHECKS,
    LEVEL_REWARDS,
    LEVEL_TABLE_VERSION_KEY,
    LEVELS,
    STREAKS,
    USER_ACHIEVEMENTS,
    USER_PROGRESS,
    XP_LEDGER,
    TableDefinition,
    error_code,
    from_item,
)
from common.dynamodb.auto_rules import requirements_from_values
from common.dynamodb.counters import PLAYERS_STAT, stat_of_key, stat_shard, streak_record_from, unlocks_stat
from common.dynamodb.streak_catalog import is_deleted, streak_from_values
from common.models import Level, LevelTable, Reward
from common.periods import PERIODS, WEEK, period_key, period_start_date
from common.streaks import Streak, StreakRecord, is_streak_counter, streak_counter, streak_id_of

VIOLATION = "violation"
WARNING = "warning"
NOTE = "note"
SEVERITIES = (VIOLATION, WARNING, NOTE)

# What each invariant says, in the order the report lists them.
INVARIANTS: dict[str, str] = {
    "total-is-ledger-sum": "total_xp is the sum of the user's ledger",
    "total-not-negative": "total_xp is never below zero",
    "ledger-entry-well-formed": "each ledger entry is req#/ach#/auto#/rev# as its fields say, whole XP, one write",
    "revoke-reverses-entry": "each revoke rev#<entry> reverses an award, grant or reward of the user by minus its XP",
    "counters-match-ledger": "each a#<activity>, c#<category> counter is the number of the user's counted awards "
    "of it, less those revoked",
    "cap-respected": "a capped activity's awards that counted in one period are at most its cap (all of it when "
    "one was capped); each cap#<activity>#<period> slot is at most them",
    "streak-periods-have-awards": "each period of a streak run s#<streak> (touched, base_last) had a counted "
    "award of the streak's activity or category",
    "streak-summary-consistent": "each streak run has its streak's period, first days of such periods, and a "
    "summary with base_current <= base_best",
    "achievement-paid-once": "each unlock with a reward is paid by one ach# entry of that XP; no other ach# entry",
    "unlocks-match-progress": "the progress item notes the user's unlock records, and names no other",
    "unlock-requirements-held": "each unlock's requirements (prerequisites, total XP, level, counts, streak runs) "
    "still hold (total and counts with what was taken back)",
    "auto-unlocks-made": "each auto-unlock achievement whose requirements the user meets is unlocked",
    "level-matches-xp": "the stored level is a defined level, not above the level total_xp gives "
    "(or gave before XP was taken back)",
    "level-rewards-once": "each defined level above the start level up to the stored level granted once, none above",
    "level-check-records": "each named check's record lists exactly the levels it granted",
    # Game-wide, checked once every user was.
    "unlock-stats-match": "each achievement's unlock stat (its shards summed) is the number of its counted unlocks",
    "players-stat-matches": "the players stat (its shards summed) is the number of progress items counted as players",
}

ENTRY_KINDS = {
    "req": ("activity", "grant", "adjustment"),
    "ach": ("achievement",),
    "auto": ("activity", "grant", "adjustment"),
    "rev": ("revoke",),
}
# The kinds of entry a revoke may reverse: not a revoke, not an adjustment (its correction is another adjustment).
REVOCABLE_KINDS = ("activity", "grant", "achievement")
# The counters of activity_counts (common.auto_unlock): per activity and per category.
COUNTER_KINDS = {"a#": "activity", "c#": "category"}
# A cap's slots in activity_counts (common.dynamodb.counters.cap_take): cap#<activity_id>#<period key>.
CAP_SLOT = "cap#"
# The invariants that count in periods of the game's time zone.
_PERIOD_INVARIANTS = ("cap-respected", "streak-periods-have-awards")
# How a game-wide finding (about the stats, not one user) shows in the text report.
STAGE_WIDE = "(stage)"

# The findings `rewardsctl verify` lists unless told otherwise (all are counted).
DEFAULT_FINDINGS_LIMIT = 20
# Ids a finding names before it says how many more there are: a message stays one readable line.
_IDS_SHOWN = 10


class StageNotFound(Exception):
    """A table of the stage does not exist: a wrong prefix or endpoint."""


@dataclass(frozen=True)
class StageCatalog:
    """The parts of the catalog the invariants read, and the game-wide stats
    (achievement_stats), which are checked against all users once they were read."""

    levels: LevelTable
    achievements: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # by achievement_id
    # Each stat ("ach#<achievement_id>", "players") by shard: the stored `total` as read (a plain value).
    stats: Mapping[str, Mapping[int, Any]] = field(default_factory=dict)
    activities: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # by activity_id: their caps
    # By streak_id, the deleted ones too (a deleted streak's item stays, marked `deleted`, its period fixed).
    streaks: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    # The game's time zone (REWARDS_TIME_ZONE): where caps' and streaks' days and weeks start.
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))


@dataclass(frozen=True)
class UserItems:
    """What the user tables hold for one user, as plain values
    (common.dynamodb.from_item: numbers are Decimal, sets are sets)."""

    user_id: str
    progress: dict[str, Any] | None
    ledger: list[dict[str, Any]] = field(default_factory=list)
    unlocks: list[dict[str, Any]] = field(default_factory=list)
    level_rewards: list[dict[str, Any]] = field(default_factory=list)
    level_checks: list[dict[str, Any]] = field(default_factory=list)
    counters: list[dict[str, Any]] = field(default_factory=list)  # activity_counts


@dataclass(frozen=True)
class StageContents:
    """Every item of the tables the invariants are about, held in memory: for
    small stages and tests (`verify_contents`); the command streams instead."""

    levels: LevelTable
    achievements: list[dict[str, Any]] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    unlocks: list[dict[str, Any]] = field(default_factory=list)
    level_rewards: list[dict[str, Any]] = field(default_factory=list)
    level_checks: list[dict[str, Any]] = field(default_factory=list)
    counters: list[dict[str, Any]] = field(default_factory=list)  # activity_counts
    stats: list[dict[str, Any]] = field(default_factory=list)  # achievement_stats
    activities: list[dict[str, Any]] = field(default_factory=list)
    streaks: list[dict[str, Any]] = field(default_factory=list)  # deleted ones too
    time_zone: str = "UTC"  # REWARDS_TIME_ZONE


@dataclass(frozen=True)
class Finding:
    severity: str
    invariant: str
    user_id: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {
            "severity": self.severity,
            "invariant": self.invariant,
            "user_id": self.user_id,
            "message": self.message,
        }


@dataclass
class VerifyReport:
    # How many findings the report lists: the first `limit` by user id, violations
    # first; None lists all. Every finding is counted in `found` either way.
    limit: int | None = None
    # How many times each invariant was checked (one user, entry, unlock or level each).
    checked: Counter[str] = field(default_factory=Counter)
    # How many findings of each (severity, invariant).
    found: Counter[tuple[str, str]] = field(default_factory=Counter)
    users: int = 0
    ledger_entries: int = 0
    unlocks: int = 0
    levels_checked: int = 0
    level_table_levels: int = 0
    catalog_changed: bool = False
    time_zone: str = "UTC"  # where the periods of caps and streaks were counted
    # The candidates for listing, per severity, as (user_id, arrival, finding): at most
    # 2 * limit each between trims, so memory does not grow with the findings.
    _kept: dict[str, list[tuple[str, int, Finding]]] = field(default_factory=lambda: {s: [] for s in SEVERITIES})
    _arrivals: int = 0

    def add(self, finding: Finding) -> None:
        self.found[(finding.severity, finding.invariant)] += 1
        kept = self._kept[finding.severity]
        kept.append((finding.user_id, self._arrivals, finding))
        self._arrivals += 1
        if self.limit is not None and len(kept) > 2 * self.limit:
            kept.sort(key=lambda k: k[:2])
            del kept[self.limit :]

    def count(self, severity: str, invariant: str | None = None) -> int:
        if invariant is not None:
            return self.found[(severity, invariant)]
        return sum(n for (s, _), n in self.found.items() if s == severity)

    def of(self, severity: str) -> list[Finding]:
        """The findings of `severity` the report lists (all of them when limit is None)."""
        room = self.limit
        for earlier in SEVERITIES[: SEVERITIES.index(severity)]:
            if room is not None:
                room -= len(self._sorted(earlier, room))
        return self._sorted(severity, room)

    def _sorted(self, severity: str, room: int | None) -> list[Finding]:
        kept = sorted(self._kept[severity], key=lambda k: k[:2])
        return [finding for _, _, finding in kept[:room]]

    @property
    def findings(self) -> list[Finding]:
        """The listed findings: by severity, then user id."""
        return [f for severity in SEVERITIES for f in self.of(severity)]

    @property
    def total_findings(self) -> int:
        return sum(self.found.values())

    @property
    def invariants_checked(self) -> int:
        return sum(self.checked.values())

    @property
    def ok(self) -> bool:
        return self.count(VIOLATION) == 0

    def counts(self) -> dict[str, int]:
        return {
            "users": self.users,
            "ledger_entries": self.ledger_entries,
            "unlocks": self.unlocks,
            "levels_checked": self.levels_checked,
            "level_table_levels": self.level_table_levels,
            "invariants_checked": self.invariants_checked,
            "violations": self.count(VIOLATION),
            "warnings": self.count(WARNING),
            "notes": self.count(NOTE),
        }


# --- the checker, pure -------------------------------------------------------------------


def verify_users(
    catalog: StageCatalog, users: Iterable[UserItems], *, catalog_changed: bool = False, limit: int | None = None
) -> VerifyReport:
    """Checks every invariant for each user, one user at a time: `users` may be
    a stream that never fits in memory."""
    report = VerifyReport(
        limit=limit,
        catalog_changed=catalog_changed,
        level_table_levels=len(catalog.levels.levels),
        time_zone=catalog.zone.key,
    )
    tally = _StatsTally()
    auto_rules, caps, streaks = _auto_rules(catalog), _caps(catalog), _streaks(catalog)
    for user in users:
        report.users += 1
        report.ledger_entries += len(user.ledger)
        report.unlocks += len(user.unlocks)
        _UserCheck(report, catalog, user, auto_rules, caps, streaks).run()
        tally.add(user)
    _check_stats(report, catalog, tally)
    return report


def verify_contents(
    contents: StageContents, *, catalog_changed: bool = False, limit: int | None = None
) -> VerifyReport:
    """Checks every invariant for every user found in any user table of a stage held in memory."""
    progress_of = {str(p["user_id"]): p for p in contents.progress}
    ledger_of = _by_user(contents.ledger)
    unlocks_of = _by_user(contents.unlocks)
    reached_of = _by_user(contents.level_rewards)
    checks_of = _by_user(contents.level_checks)
    counters_of = _by_user(contents.counters)
    user_ids = sorted(
        set(progress_of) | set(ledger_of) | set(unlocks_of) | set(reached_of) | set(checks_of) | set(counters_of)
    )
    stats: dict[str, dict[int, Any]] = defaultdict(dict)
    for item in contents.stats:
        stat, shard = stat_of_key(str(item["stat_shard"]))
        stats[stat][shard] = item.get("total", 0)
    catalog = StageCatalog(
        contents.levels,
        {str(a["achievement_id"]): a for a in contents.achievements},
        stats,
        {str(a["activity_id"]): a for a in contents.activities},
        {str(s["streak_id"]): s for s in contents.streaks},
        ZoneInfo(contents.time_zone),
    )
    users = (
        UserItems(
            user_id,
            progress_of.get(user_id),
            ledger_of.get(user_id, []),
            unlocks_of.get(user_id, []),
            reached_of.get(user_id, []),
            checks_of.get(user_id, []),
            counters_of.get(user_id, []),
        )
        for user_id in user_ids
    )
    return verify_users(catalog, users, catalog_changed=catalog_changed, limit=limit)


def _by_user(items: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        grouped[str(item["user_id"])].append(item)
    return grouped


def _whole(value: Any) -> int | None:
    """The value as an int when it is a whole number stored as a number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        return None
    if isinstance(value, Decimal) and (not value.is_finite() or value % 1 != 0):
        return None
    return int(value)


def _rewards(values: Any) -> tuple[Reward, ...]:
    try:
        return tuple(
            sorted(
                (Reward(str(r["reward_id"]), int(r["quantity"])) for r in values or ()),
                key=lambda r: (r.reward_id, r.quantity),
            )
        )
    except (KeyError, TypeError, ValueError):
        return (Reward("<unreadable>", 0),)


def _some_ids(ids: Iterable[str]) -> str:
    """Sorted ids, the first few of them and how many more."""
    ordered = sorted(ids)
    shown = ", ".join(ordered[:_IDS_SHOWN])
    return shown if len(ordered) <= _IDS_SHOWN else f"{shown} and {len(ordered) - _IDS_SHOWN:,} more"


def _some_levels(levels: Iterable[int]) -> str:
    ordered = sorted(levels)
    if len(ordered) <= _IDS_SHOWN:
        return str(ordered)
    return f"[{', '.join(str(l) for l in ordered[:_IDS_SHOWN])}, ... {len(ordered):,} levels]"


def _auto_rules(catalog: StageCatalog) -> list[tuple[str, Requirements | None]]:
    """The catalog's auto-unlock achievements, by id, with their requirements
    (None when the catalog entry's are unreadable)."""
    rules: list[tuple[str, Requirements | None]] = []
    for achievement_id, entry in sorted(catalog.achievements.items()):
        if entry.get("auto_unlock") is not True:
            continue
        try:
            rules.append((achievement_id, requirements_from_values(entry.get("requirements"))))
        except (AttributeError, TypeError, ValueError, ArithmeticError):
            rules.append((achievement_id, None))
    return rules


def _caps(catalog: StageCatalog) -> dict[str, tuple[int, str]]:
    """The activities with a cap, by id: (max_awards, period). An activity item
    without cap_max_awards (or with 0) has none; one whose cap is unreadable
    is left out (the service could not have read it either)."""
    caps: dict[str, tuple[int, str]] = {}
    for activity_id, values in catalog.activities.items():
        max_awards, period = _whole(values.get("cap_max_awards", 0)), values.get("cap_period")
        if max_awards and max_awards > 0 and period in PERIODS:
            caps[activity_id] = (max_awards, str(period))
    return caps


def _streaks(catalog: StageCatalog) -> dict[str, tuple[Streak, bool]]:
    """Every streak of the streak table, by id, with whether it is deleted."""
    streaks: dict[str, tuple[Streak, bool]] = {}
    for streak_id, values in catalog.streaks.items():
        try:
            streaks[streak_id] = (streak_from_values(values), is_deleted(values))
        except (KeyError, TypeError, ValueError):
            continue  # unreadable: its runs are reported as of no streak
    return streaks


def _moment(recorded_at: Any) -> datetime | None:
    """A ledger entry's recorded_at (ISO 8601, UTC, `Z`) as an aware instant; None when unreadable."""
    try:
        moment = datetime.fromisoformat(str(recorded_at))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _first_day(text: Any) -> date | None:
    try:
        return date.fromisoformat(str(text))
    except ValueError:
        return None


def _streak_record(values: Mapping[str, Any]) -> StreakRecord | None:
    """A run's item as XP reads it; None when its attributes cannot be read so."""
    try:
        record = streak_record_from(values)
        record.run()
    except (TypeError, ValueError, ArithmeticError):
        return None
    return record


def _is_run(values: Mapping[str, Any]) -> bool:
    """A streak item that holds a run (an award wrote it), not only an auto-unlock watch."""
    return any(name in values for name in ("period", "touched", "base_last", "base_current", "base_best"))


class _UserCheck:
    """The invariants of one user; each `_check_*` counts what it checks."""

    def __init__(
        self,
        report: VerifyReport,
        catalog: StageCatalog,
        user: UserItems,
        auto_rules: list[tuple[str, Requirements | None]] | None = None,
        caps: dict[str, tuple[int, str]] | None = None,
        streaks: dict[str, tuple[Streak, bool]] | None = None,
    ) -> None:
        self.report = report
        self.auto_rules = _auto_rules(catalog) if auto_rules is None else auto_rules
        self.caps = _caps(catalog) if caps is None else caps
        self.streaks = _streaks(catalog) if streaks is None else streaks
        self.zone = catalog.zone
        self.table = catalog.levels
        self.catalog = catalog.achievements
        self.user_id = user.user_id
        self.progress = user.progress
        self.ledger = user.ledger
        self.unlocks = user.unlocks
        self.reached = user.level_rewards
        self.checks = user.level_checks
        self.counters = user.counters
        self.total_xp = _whole((self.progress or {}).get("total_xp", 0))
        self.stored_level = _whole(self.progress["level"]) if self.progress and "level" in self.progress else None
        # The awards each counter holds (a counter item holding only a watch holds none); for a
        # streak's run, the best run, what its requirements ask of it (common.dynamodb.counters).
        self.counts: dict[str, int | None] = {}
        for c in self.counters:
            counter = str(c["counter"])
            if is_streak_counter(counter):
                record = _streak_record(c)
                self.counts[counter] = record.run().best if record is not None else 0
            else:
                self.counts[counter] = _whole(c.get("awards", 0))
        # Per (activity, period kind): the awards that counted and those capped, by period key (memo).
        self._periods: dict[tuple[str, str], tuple[Counter[str], Counter[str]]] = {}
        # XP taken back (negative adjustments, revokes), and what total_xp can have been at most:
        # the positive entries summed. Levels reached and unlocks stay when XP is taken back.
        xps = [_whole(e.get("xp")) or 0 for e in self.ledger]
        self.taken_back = -sum(x for x in xps if x < 0)
        self.peak_total = sum(x for x in xps if x > 0)
        # Per counter, the counted activity awards that a revoke reversed (each took one off its counters).
        entries = {str(e.get("entry_id", "")): e for e in self.ledger}
        self.revoked: Counter[str] = Counter()
        for entry in self.ledger:
            if entry.get("kind") != "revoke":
                continue
            reversed_entry = entries.get(str(entry.get("reverses_entry_id") or ""))
            if reversed_entry is not None and _counted_award(reversed_entry):
                self.revoked.update(_counters_of(reversed_entry))

    def run(self) -> None:
        self._check_ledger_entries()
        self._check_revokes()
        self._check_total()
        self._check_counters()
        self._check_caps()
        self._check_streaks()
        self._check_achievement_payments()
        self._check_unlocked_set()
        self._check_unlock_requirements()
        self._check_auto_unlocks()
        self._check_level()
        self._check_level_rewards()
        self._check_level_check_records()

    def _find(self, severity: str, invariant: str, message: str) -> None:
        self.report.add(Finding(severity, invariant, self.user_id, message))

    def _catalog_dependent(self) -> str:
        """A finding that only holds if the catalog never changed."""
        return NOTE if self.report.catalog_changed else VIOLATION

    # --- XP ------------------------------------------------------------------------

    def _check_ledger_entries(self) -> None:
        attempts: Counter[str] = Counter()
        for entry in self.ledger:
            self.report.checked["ledger-entry-well-formed"] += 1
            entry_id = str(entry.get("entry_id", ""))
            for problem in _ledger_entry_problems(entry):
                self._find(VIOLATION, "ledger-entry-well-formed", f"ledger entry {entry_id!r}: {problem}")
            if entry.get("attempt_id"):
                attempts[str(entry["attempt_id"])] += 1
        for attempt_id, count in attempts.items():
            if count > 1:  # one award written under two entry ids
                self._find(
                    VIOLATION,
                    "ledger-entry-well-formed",
                    f"{count} ledger entries carry attempt id {attempt_id!r}: one write was recorded {count} times",
                )

    def _check_revokes(self) -> None:
        """Each revoke reverses one earlier entry of the user that can be revoked, by exactly minus
        its XP. Its id is rev#<that entry's id>, which makes a second revoke of the entry impossible."""
        entries = {str(e.get("entry_id", "")): e for e in self.ledger}
        for entry in self.ledger:
            if entry.get("kind") != "revoke":
                continue
            self.report.checked["revoke-reverses-entry"] += 1
            entry_id = str(entry.get("entry_id", ""))
            target_id = str(entry.get("reverses_entry_id") or "")
            if not target_id:
                self._find(
                    VIOLATION, "revoke-reverses-entry", f"revoke {entry_id!r} names no entry (reverses_entry_id)"
                )
                continue
            if entry_id != "rev#" + target_id:
                self._find(
                    VIOLATION,
                    "revoke-reverses-entry",
                    f"revoke {entry_id!r} reverses {target_id!r} but is not named 'rev#{target_id}': "
                    "a second revoke of that entry could be recorded",
                )
            target = entries.get(target_id)
            if target is None:
                self._find(
                    VIOLATION,
                    "revoke-reverses-entry",
                    f"revoke {entry_id!r} reverses {target_id!r}, which is not in the user's ledger",
                )
                continue
            kind = target.get("kind")
            if kind not in REVOCABLE_KINDS:
                self._find(
                    VIOLATION,
                    "revoke-reverses-entry",
                    f"revoke {entry_id!r} reverses {target_id!r}, of kind {kind!r}: only activity awards, grants "
                    "and achievement rewards can be revoked",
                )
                continue
            given, taken = _whole(target.get("xp")), _whole(entry.get("xp"))
            if given is None or taken is None:  # ledger-entry-well-formed reports it
                continue
            if given <= 0:
                self._find(
                    VIOLATION,
                    "revoke-reverses-entry",
                    f"revoke {entry_id!r} reverses {target_id!r}, which gave {given:,} XP"
                    + (" (capped)" if target.get("capped") is True else "")
                    + ": there is nothing to revoke",
                )
            elif taken != -given:
                self._find(
                    VIOLATION,
                    "revoke-reverses-entry",
                    f"revoke {entry_id!r} takes {taken:+,} XP, but {target_id!r} gave {given:+,} "
                    f"(a revoke takes {-given:+,})",
                )

    def _check_total(self) -> None:
        self.report.checked["total-is-ledger-sum"] += 1
        ledger_sum = sum(_whole(e.get("xp")) or 0 for e in self.ledger)
        if self.progress is None:
            if self.ledger:
                self._find(
                    VIOLATION,
                    "total-is-ledger-sum",
                    f"{len(self.ledger)} ledger entries ({ledger_sum:,} XP) but no user_progress item",
                )
            return
        self.report.checked["total-not-negative"] += 1
        if self.total_xp is not None and self.total_xp < 0:
            self._find(VIOLATION, "total-not-negative", f"total_xp {self.total_xp:,} is below zero")
        if self.total_xp is None:
            self._find(
                VIOLATION, "total-is-ledger-sum", f"total_xp {self.progress.get('total_xp')!r} is not a whole number"
            )
        elif self.total_xp != ledger_sum:
            self._find(
                VIOLATION,
                "total-is-ledger-sum",
                f"total_xp {self.total_xp:,} but the ledger's {len(self.ledger)} entries sum to {ledger_sum:,} "
                f"({self.total_xp - ledger_sum:+,})",
            )

    def _check_counters(self) -> None:
        """Each award of an activity that its ledger entry says was counted (`counted`; an
        earlier version's awards were not) added one to the activity's counter and one to its
        category's, in the award's own transaction; a revoke of it took them off in its own."""
        awarded: Counter[str] = Counter()
        for entry in self.ledger:
            if _counted_award(entry):
                awarded.update(_counters_of(entry))
        expected = awarded - self.revoked
        raw = {str(c["counter"]): c.get("awards", 0) for c in self.counters}
        # A cap's slots and streaks' runs are items of the same table, checked by their own invariants.
        others = {c for c in self.counts if c.startswith(CAP_SLOT) or is_streak_counter(c)}
        for counter in sorted((set(awarded) | set(self.counts)) - others):
            self.report.checked["counters-match-ledger"] += 1
            kind, subject = COUNTER_KINDS.get(counter[:2]), counter[2:]
            held = self.counts.get(counter, 0)
            if kind is None or not subject:
                self._find(
                    VIOLATION,
                    "counters-match-ledger",
                    f"counter {counter!r} is neither a#<activity_id> nor c#<category>",
                )
            elif held is None or held < 0:
                self._find(
                    VIOLATION,
                    "counters-match-ledger",
                    f"counter {counter!r} holds awards {raw[counter]!r}, not a whole number >= 0",
                )
            elif held != expected[counter]:
                revoked = (
                    f" ({awarded[counter]:,} less {self.revoked[counter]:,} revoked)" if self.revoked[counter] else ""
                )
                self._find(
                    VIOLATION,
                    "counters-match-ledger",
                    f"counter {counter!r} holds {held:,} awards, but the ledger has {expected[counter]:,} "
                    f"counted awards of {kind} {subject!r}{revoked} ({held - expected[counter]:+,})",
                )

    # --- caps and streaks -------------------------------------------------------------

    def _awards_by_period(self, activity_id: str, period: str) -> tuple[Counter[str], Counter[str]]:
        """The user's awards of the activity by period key (common.periods.period_key of their
        recorded_at): those that were not capped (each took a slot, whether revoked since or not:
        a revoke gives none back), and those capped."""
        known = self._periods.get((activity_id, period))
        if known is not None:
            return known
        counted: Counter[str] = Counter()
        capped: Counter[str] = Counter()
        for entry in self.ledger:
            if entry.get("kind") != "activity" or entry.get("activity_id") != activity_id:
                continue
            moment = _moment(entry.get("recorded_at"))
            if moment is None:
                continue  # reported below, where the period of an award is needed
            key = period_key(moment, period, self.zone)
            (capped if entry.get("capped") is True else counted)[key] += 1
        self._periods[(activity_id, period)] = (counted, capped)
        return counted, capped

    def _check_caps(self) -> None:
        """Of any number of awards of a capped activity in one period, exactly the cap's count
        (each takes a slot, cap#<activity>#<period>, only while below the cap, in its own
        transaction); the others are recorded capped. Against the caps of the catalog as it is
        now, in the time zone as it is now: notes with `catalog_changed`."""
        for activity_id, (max_awards, period) in sorted(self.caps.items()):
            counted, capped = self._awards_by_period(activity_id, period)
            for key in sorted(set(counted) | set(capped)):
                self.report.checked["cap-respected"] += 1
                if counted[key] > max_awards:
                    self._find(
                        self._catalog_dependent(),
                        "cap-respected",
                        f"activity {activity_id!r} is capped at {max_awards:,} a {period}, but {counted[key]:,} of "
                        f"its awards in {key} were not capped (+{counted[key] - max_awards:,})",
                    )
                elif capped[key] and counted[key] < max_awards:
                    self._find(
                        self._catalog_dependent(),
                        "cap-respected",
                        f"{capped[key]:,} awards of activity {activity_id!r} in {key} were capped, but only "
                        f"{counted[key]:,} of the {max_awards:,} its cap allows a {period} counted",
                    )
        for item in self.counters:
            counter = str(item["counter"])
            if not counter.startswith(CAP_SLOT):
                continue
            self.report.checked["cap-respected"] += 1
            activity_id, _, key = counter[len(CAP_SLOT) :].rpartition("#")
            period, _, first = key.partition(":")
            slots = _whole(item.get("awards", 0))
            if not activity_id or period not in PERIODS or _first_day(first) is None:
                self._find(
                    VIOLATION, "cap-respected", f"counter {counter!r} is not cap#<activity_id>#<day|week>:<date>"
                )
            elif slots is None or slots < 0:
                self._find(
                    VIOLATION,
                    "cap-respected",
                    f"cap slot {counter!r} holds awards {item.get('awards')!r}, not a whole number >= 0",
                )
            elif slots > (awarded := self._awards_by_period(activity_id, period)[0][key]):
                self._find(
                    self._catalog_dependent(),
                    "cap-respected",
                    f"cap slot {counter!r} holds {slots:,} awards, but the ledger has {awarded:,} awards of "
                    f"{activity_id!r} in {key} that were not capped (+{slots - awarded:,})",
                )
        unreadable = sum(
            1
            for e in self.ledger
            if e.get("kind") == "activity"
            and e.get("activity_id") in self.caps
            and _moment(e.get("recorded_at")) is None
        )
        if unreadable:
            self._find(
                VIOLATION,
                "cap-respected",
                f"{unreadable:,} awards of capped activities have a recorded_at that is not an ISO 8601 instant: "
                "their periods are unknown",
            )

    def _check_streaks(self) -> None:
        """Each of the user's streak runs (s#<streak_id>): what its item holds (streak-summary-
        consistent), and that each period it holds had a counted award of what the streak counts
        (streak-periods-have-awards: a period is added only by a counted award's own transaction,
        and never taken out, by a revoke either)."""
        award_periods: dict[tuple[str, str, str], set[str]] = {}
        for item in self.counters:
            counter = str(item["counter"])
            if not is_streak_counter(counter) or not _is_run(item):
                continue  # not a streak's item, or one an auto-unlock watch alone made
            streak_id = streak_id_of(counter)
            self.report.checked["streak-summary-consistent"] += 1
            known = self.streaks.get(streak_id)
            period = item.get("period")
            problems = self._run_problems(item, period)
            for problem in problems:
                self._find(VIOLATION, "streak-summary-consistent", f"streak run {counter!r}: {problem}")
            if known is None:
                self._find(
                    self._catalog_dependent(),
                    "streak-summary-consistent",
                    f"streak run {counter!r}: streak {streak_id!r} is not in the streak table (a deleted "
                    "streak's item stays there), so what it counts is not known",
                )
                continue
            streak, deleted = known
            if period in PERIODS and period != streak.period:
                # A streak's period is fixed once created, even deleted: never a catalog change.
                self._find(
                    VIOLATION,
                    "streak-summary-consistent",
                    f"streak run {counter!r} is in {period}s, but streak {streak_id!r} counts {streak.period}s "
                    "(fixed once created)",
                )
                continue
            if problems:
                continue  # its periods cannot be read as the streak's
            subject = (streak.activity_id, streak.category, streak.period)
            if subject not in award_periods:
                award_periods[subject] = self._streak_award_periods(streak)
            held = {str(d) for d in item.get("touched") or ()}
            if item.get("base_last"):
                held.add(str(item["base_last"]))
            for first_day in sorted(held):
                self.report.checked["streak-periods-have-awards"] += 1
                if first_day not in award_periods[subject]:
                    what = f"activity {streak.activity_id!r}" if streak.activity_id else f"category {streak.category!r}"
                    self._find(
                        self._catalog_dependent(),
                        "streak-periods-have-awards",
                        f"streak run {counter!r} holds the {streak.period} of {first_day}, but the ledger has no "
                        f"counted award of {what} in it" + (" (the streak is deleted)" if deleted else ""),
                    )

    def _run_problems(self, item: Mapping[str, Any], period: Any) -> list[str]:
        """What is wrong with a run's item as XP writes and folds it (common.dynamodb.counters)."""
        problems = []
        if period not in PERIODS:
            problems.append(f"period {period!r} is not {' or '.join(PERIODS)}")
        touched = item.get("touched", set())
        if not isinstance(touched, (set, frozenset, list)) or not all(isinstance(d, str) for d in touched):
            problems.append(f"touched {touched!r} is not a set of ISO dates")
            touched = set()
        base = [name for name in ("base_last", "base_current", "base_best") if name in item]
        if base and len(base) < 3:
            missing = sorted({"base_last", "base_current", "base_best"} - set(base))
            problems.append(f"the summary has {', '.join(base)} but not {', '.join(missing)}")
        days = [str(d) for d in touched] + ([str(item["base_last"])] if "base_last" in item else [])
        for text in sorted(days):
            first = _first_day(text)
            if first is None:
                problems.append(f"{text!r} is not an ISO date")
            elif period == WEEK and first.weekday() != 0:
                problems.append(f"{text} is not the first day of a week (a Monday)")
        if len(base) == 3:
            current, best = _whole(item["base_current"]), _whole(item["base_best"])
            if current is None or best is None or current < 1:
                problems.append(
                    f"base_current {item['base_current']!r} and base_best {item['base_best']!r} are not whole "
                    "numbers >= 1"
                )
            elif current > best:
                problems.append(f"base_current {current:,} is above base_best {best:,}")
        return problems

    def _streak_award_periods(self, streak: Streak) -> set[str]:
        """The first days (ISO) of the periods in which the user had a counted award (not capped;
        revoked or not) of what the streak counts: its activity, or any activity of its category
        (the category the award counted under, kept with the entry)."""
        found: set[str] = set()
        for entry in self.ledger:
            if not _counted_award(entry):
                continue
            if not streak.counts(str(entry.get("activity_id", "")), str(entry.get("category") or "")):
                continue
            moment = _moment(entry.get("recorded_at"))
            if moment is not None:
                found.add(period_start_date(moment, streak.period, self.zone).isoformat())
        return found

    # --- achievements -----------------------------------------------------------------

    def _check_achievement_payments(self) -> None:
        unlocks = {str(u["achievement_id"]): u for u in self.unlocks}
        payments = {str(e["entry_id"])[4:]: e for e in self.ledger if str(e.get("entry_id", "")).startswith("ach#")}
        for achievement_id, entry in sorted(payments.items()):
            self.report.checked["achievement-paid-once"] += 1
            unlock = unlocks.get(achievement_id)
            paid = _whole(entry.get("xp"))
            if unlock is None:
                # Reachable through the API (GrantXp naming the achievement, before any unlock, which then
                # pays nothing more), so not a violation; but worth a look, as it is what a lost unlock leaves too.
                self._find(
                    WARNING,
                    "achievement-paid-once",
                    f"ledger entry 'ach#{achievement_id}' pays {paid} XP for an achievement the user has not unlocked "
                    "(a GrantXp naming it; its unlock will pay nothing more)",
                )
                continue
            reward = _whole(unlock.get("xp_reward", 0))
            if not reward:
                self._find(
                    VIOLATION,
                    "achievement-paid-once",
                    f"achievement {achievement_id!r} has no XP reward, yet ledger entry 'ach#{achievement_id}' pays {paid} XP",
                )
            elif paid != reward:
                self._find(
                    VIOLATION,
                    "achievement-paid-once",
                    f"ledger entry 'ach#{achievement_id}' pays {paid} XP, the unlock's xp_reward is {reward}",
                )
            elif not unlock.get("xp_granted", False):
                self._find(
                    NOTE,
                    "achievement-paid-once",
                    f"achievement {achievement_id!r}: XP granted, unlock not marked paid yet (the next repeat marks it)",
                )
        for achievement_id, unlock in sorted(unlocks.items()):
            self.report.checked["achievement-paid-once"] += 1
            reward = _whole(unlock.get("xp_reward", 0))
            if reward is None or reward < 0:
                self._find(
                    VIOLATION,
                    "achievement-paid-once",
                    f"unlock of {achievement_id!r}: xp_reward {unlock.get('xp_reward')!r} is not a whole number >= 0",
                )
                continue
            if reward == 0 or achievement_id in payments:
                continue
            if unlock.get("xp_granted", False):
                self._find(
                    VIOLATION,
                    "achievement-paid-once",
                    f"unlock of {achievement_id!r} is marked paid, but no ledger entry 'ach#{achievement_id}' pays its {reward} XP",
                )
            else:
                self._find(
                    WARNING,
                    "achievement-paid-once",
                    f"unlock of {achievement_id!r} still owes its {reward} XP (a repeat of UnlockAchievement pays it)",
                )

    def _check_unlocked_set(self) -> None:
        self.report.checked["unlocks-match-progress"] += 1
        records = {str(u["achievement_id"]) for u in self.unlocks}
        progress = self.progress or {}
        holds = progress.get("holds_achievements") is True
        # The ids an earlier version kept in the progress item; an unlock now removes
        # the set and sets holds_achievements, the unlock records being the ids.
        listed = {str(a) for a in progress.get("unlocked_achievements", ())}
        if "unlocked_achievements" in progress and not holds:
            if records - listed:
                self._find(
                    VIOLATION,
                    "unlocks-match-progress",
                    f"unlock records missing from unlocked_achievements: {_some_ids(records - listed)}",
                )
        elif records and not holds:
            self._find(
                VIOLATION,
                "unlocks-match-progress",
                f"{len(records):,} unlock records ({_some_ids(records)}) but "
                + ("no user_progress item" if self.progress is None else "holds_achievements is not set"),
            )
        elif holds and not records:
            self._find(VIOLATION, "unlocks-match-progress", "holds_achievements is set but there is no unlock record")
        if listed - records:
            self._find(
                VIOLATION,
                "unlocks-match-progress",
                f"unlocked_achievements without an unlock record: {_some_ids(listed - records)}",
            )

    def _check_unlock_requirements(self) -> None:
        unlocked = {str(u["achievement_id"]) for u in self.unlocks}
        level = self.stored_level if self.stored_level is not None else self.table.start_level
        for achievement_id in sorted(unlocked):
            entry = self.catalog.get(achievement_id)
            if entry is None:  # left the catalog: its requirements are not known any more
                continue
            self.report.checked["unlock-requirements-held"] += 1
            requirements = entry.get("requirements") or {}
            unmet = [
                f"prerequisite {r!r}" for r in requirements.get("required_achievements", ()) if str(r) not in unlocked
            ]
            min_total_xp = _whole(requirements.get("min_total_xp", 0)) or 0
            if not self.taken_back and (self.total_xp or 0) < min_total_xp:
                unmet.append(f"total XP {self.total_xp} < {min_total_xp}")
            elif self.taken_back and self.peak_total < min_total_xp:  # it held when unlocked, then XP was taken back
                unmet.append(
                    f"total XP {self.total_xp} (at most {self.peak_total} before {self.taken_back} XP was taken back) "
                    f"< {min_total_xp}"
                )
            min_level = _whole(requirements.get("min_level", 0)) or 0
            if level < min_level:
                unmet.append(f"level {level} < {min_level}")
            for needed in requirements.get("activity_counts", ()) or ():
                # The unlock's transaction checked the counter, and counters only grow but by revokes.
                if not isinstance(needed, Mapping):
                    continue
                activity_id, category = str(needed.get("activity_id") or ""), str(needed.get("category") or "")
                counter = "a#" + activity_id if activity_id else "c#" + category
                count, has = _whole(needed.get("count", 0)) or 0, self.counts.get(counter, 0) or 0
                if has + self.revoked[counter] < count:
                    revoked = f" (and {self.revoked[counter]:,} revoked)" if self.revoked[counter] else ""
                    unmet.append(f"{COUNTER_KINDS[counter[:2]]} {counter[2:]!r} counted {has:,}{revoked} < {count:,}")
            for run in requirements.get("streak_lengths", ()) or ():
                # The unlock's transaction checked the run's item; a best run never shortens.
                if not isinstance(run, Mapping):
                    continue
                streak_id, length = str(run.get("streak_id") or ""), _whole(run.get("length", 0)) or 0
                best = self.counts.get(streak_counter(streak_id), 0) or 0
                if best < length:
                    unmet.append(f"streak {streak_id!r} best run {best:,} < {length:,}")
            if unmet:
                # Levels and unlocks only grow, and totals and counters but for what was taken back (counted
                # above): what held at the unlock still holds, unless the catalog changed.
                self._find(
                    self._catalog_dependent(),
                    "unlock-requirements-held",
                    f"{achievement_id!r} is unlocked but its requirements do not hold: {'; '.join(unmet)}",
                )

    def _check_auto_unlocks(self) -> None:
        """An auto-unlock achievement the user qualifies for but lacks is legal
        (left for later while Achievements could not answer XP), not settled."""
        if self.progress is None or not self.auto_rules:  # not a player (reported above when it has items)
            return
        held = frozenset(str(u["achievement_id"]) for u in self.unlocks)
        level = self.stored_level if self.stored_level is not None else self.table.start_level
        standing = Standing(held, self.total_xp or 0, level, {c: n or 0 for c, n in self.counts.items()})
        for achievement_id, requirements in self.auto_rules:
            self.report.checked["auto-unlocks-made"] += 1
            if achievement_id in held or requirements is None:
                continue
            if not unmet_requirements(requirements, standing):
                self._find(
                    WARNING,
                    "auto-unlocks-made",
                    f"auto-unlock achievement {achievement_id!r} is due, not yet unlocked: "
                    "`rewardsctl achievements backfill` unlocks it",
                )

    # --- levels ---------------------------------------------------------------------

    def _check_level(self) -> None:
        self.report.checked["level-matches-xp"] += 1
        total = self.total_xp or 0
        due = self.table.level_for_xp(total)
        if self.stored_level is None:
            if self.progress is not None and "level" in self.progress:
                self._find(VIOLATION, "level-matches-xp", f"level {self.progress['level']!r} is not a whole number")
            elif due > self.table.start_level:
                self._find(
                    WARNING, "level-matches-xp", f"level check due: never checked, total_xp {total:,} gives level {due}"
                )
            return
        stored = self.stored_level
        defined = {l.level for l in self.table.levels} | {0}
        if stored not in defined:
            self._find(self._catalog_dependent(), "level-matches-xp", f"stored level {stored} is not a defined level")
        reachable = self.table.level_for_xp(self.peak_total) if self.taken_back else due
        if stored > reachable:
            # Levels never go down, so this is legal only if the table changed since; or, when XP was taken
            # back (an adjustment, a revoke), up to the level the XP before gave, since levels stay.
            self._find(
                self._catalog_dependent(),
                "level-matches-xp",
                f"stored level {stored} is above level {due}, what total_xp {total:,} gives"
                + (
                    f", and above level {reachable}, what it gave at most before {self.taken_back:,} XP was taken back"
                    if self.taken_back
                    else ""
                ),
            )
        elif stored < due:
            self._find(
                WARNING,
                "level-matches-xp",
                f"level check due: stored level {stored}, total_xp {total:,} gives level {due}",
            )
        if stored < self.table.start_level:
            self._find(
                self._catalog_dependent(),
                "level-matches-xp",
                f"stored level {stored} is below the start level {self.table.start_level}",
            )

    def _check_level_rewards(self) -> None:
        by_level: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for item in self.reached:
            by_level[int(item["level"])].append(item)
        stored = self.stored_level
        expected = self.table.levels_passed(self.table.start_level, stored) if stored is not None else ()
        for level in expected:
            self.report.checked["level-rewards-once"] += 1
            self.report.levels_checked += 1
            items = by_level.get(level.level, [])
            if not items:
                self._find(
                    self._catalog_dependent(),
                    "level-rewards-once",
                    f"level {level.level} was passed (stored level {stored}) but its rewards were never granted",
                )
            elif len(items) > 1:
                self._find(VIOLATION, "level-rewards-once", f"level {level.level} was granted {len(items)} times")
            elif _rewards(items[0].get("rewards")) != _rewards(_as_values(level.rewards)):
                self._find(
                    self._catalog_dependent(),
                    "level-rewards-once",
                    f"level {level.level} was granted {_describe(items[0].get('rewards'))}, "
                    f"the level table gives {_describe(_as_values(level.rewards))}",
                )
        expected_levels = {l.level for l in expected}
        for level_number, items in sorted(by_level.items()):
            if level_number in expected_levels:
                self._check_from_level(level_number, items)
                continue
            self.report.checked["level-rewards-once"] += 1
            self.report.levels_checked += 1
            if stored is None or level_number > stored:
                # The item and the move of the level are one transaction, and levels never go down.
                above = "but the user has no stored level" if stored is None else f"above the stored level {stored}"
                self._find(VIOLATION, "level-rewards-once", f"level {level_number} was granted, {above}")
            else:
                self._find(
                    self._catalog_dependent(),
                    "level-rewards-once",
                    f"level {level_number} was granted but is not a defined level between the start level "
                    f"{self.table.start_level} and the stored level {stored}",
                )
            if len(items) > 1:
                self._find(VIOLATION, "level-rewards-once", f"level {level_number} was granted {len(items)} times")
            self._check_from_level(level_number, items)

    def _check_from_level(self, level_number: int, items: list[dict[str, Any]]) -> None:
        for item in items:
            from_level = _whole(item.get("from_level"))
            if from_level is None or from_level >= level_number:
                self._find(
                    VIOLATION,
                    "level-rewards-once",
                    f"level {level_number} was granted in a move from level {item.get('from_level')!r}, not from below",
                )

    def _check_level_check_records(self) -> None:
        granted_by: dict[str, set[int]] = defaultdict(set)
        for item in self.reached:
            granted_by[str(item.get("check_id", ""))].add(int(item["level"]))
        recorded = {str(c["check_id"]): {int(l) for l in c.get("levels", ())} for c in self.checks}
        for check_id, levels in sorted(recorded.items()):
            self.report.checked["level-check-records"] += 1
            if levels != granted_by.get(check_id, set()):
                self._find(
                    VIOLATION,
                    "level-check-records",
                    f"check {check_id!r} records levels {_some_levels(levels)}, "
                    f"but granted {_some_levels(granted_by.get(check_id, set()))}",
                )
        for check_id, levels in sorted(granted_by.items()):
            if check_id in recorded:
                continue
            self.report.checked["level-check-records"] += 1
            # Only a check without a request id (named auto:<uuid>) goes unrecorded: nobody can repeat it.
            if not check_id.startswith("auto:"):
                self._find(
                    VIOLATION,
                    "level-check-records",
                    f"check {check_id!r} granted levels {_some_levels(levels)} but has no record for its repeats",
                )


# --- the game-wide stats ----------------------------------------------------------------------------


@dataclass
class _StatsTally:
    """What the game-wide stats must hold, by stat and shard, tallied one user at a time."""

    counted: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, user: UserItems) -> None:
        shard = stat_shard(user.user_id)  # the shard the user's unlocks and player count went to
        for unlock in user.unlocks:
            if unlock.get("counted") is True:  # recorded with its stat in one transaction
                self.counted[unlocks_stat(str(unlock["achievement_id"]))][shard] += 1
        if user.progress is not None and user.progress.get("player_counted") is True:
            self.counted[PLAYERS_STAT][shard] += 1


def _check_stats(report: VerifyReport, catalog: StageCatalog, tally: _StatsTally) -> None:
    """Each stat, its shards summed, against what the users' items say it counted."""
    report.checked["players-stat-matches"] += 1
    problem = _stat_problem(catalog.stats.get(PLAYERS_STAT, {}), tally.counted[PLAYERS_STAT])
    if problem:
        report.add(
            Finding(
                VIOLATION,
                "players-stat-matches",
                "",
                f"the players stat {problem[0]}, but {problem[1]:,} progress items are marked player_counted"
                + problem[2],
            )
        )
    prefix = unlocks_stat("")
    achievement_ids = (
        set(catalog.achievements)
        | {stat.removeprefix(prefix) for stat in catalog.stats if stat.startswith(prefix)}
        | {stat.removeprefix(prefix) for stat in tally.counted if stat.startswith(prefix)}
    )
    for achievement_id in sorted(achievement_ids):
        report.checked["unlock-stats-match"] += 1
        stat = unlocks_stat(achievement_id)
        problem = _stat_problem(catalog.stats.get(stat, {}), tally.counted.get(stat, Counter()))
        if problem:
            report.add(
                Finding(
                    VIOLATION,
                    "unlock-stats-match",
                    "",
                    f"the unlock stat {stat!r} {problem[0]}, but {problem[1]:,} unlock records of "
                    f"{achievement_id!r} are counted" + problem[2],
                )
            )


def _stat_problem(shards: Mapping[int, Any], tallied: Counter[int]) -> tuple[str, int, str] | None:
    """None when the shards sum to the tally; else (what the stat holds, the
    tally, the shards that differ from their users' items)."""
    expected = sum(tallied.values())
    stored = {shard: _whole(value) for shard, value in shards.items()}
    unreadable = sorted(shard for shard, value in stored.items() if value is None)
    if unreadable:
        return f"has shards holding no whole number ({_some_levels(unreadable)})", expected, ""
    total = sum(value or 0 for value in stored.values())
    if total == expected:
        return None
    off = [
        f"{shard}: {stored.get(shard, 0) or 0:,} for {tallied.get(shard, 0):,}"
        for shard in sorted(set(stored) | set(tallied))
        if (stored.get(shard, 0) or 0) != tallied.get(shard, 0)
    ]
    shown = "; ".join(off[:_IDS_SHOWN]) + (f" and {len(off) - _IDS_SHOWN:,} more" if len(off) > _IDS_SHOWN else "")
    return f"is {total:,} (its shards summed)", expected, f" ({total - expected:+,}; shards off: {shown})"


def _ledger_entry_problems(entry: Mapping[str, Any]) -> list[str]:
    """What is wrong with one ledger entry's shape; empty when nothing is."""
    problems = []
    entry_id = str(entry.get("entry_id", ""))
    prefix, _, rest = entry_id.partition("#")
    kind = entry.get("kind")
    if prefix not in ENTRY_KINDS or not rest:
        problems.append("the id is not req#<request_id>, ach#<achievement_id>, auto#<id> or rev#<entry_id>")
    elif kind not in ENTRY_KINDS[prefix]:
        problems.append(f"kind {kind!r} cannot be recorded as a {prefix}# entry")
    elif prefix == "req" and entry.get("request_id") != rest:
        problems.append(f"request_id {entry.get('request_id')!r} is not the id's request id {rest!r}")
    elif prefix == "ach" and entry.get("achievement_id") != rest:
        problems.append(f"achievement_id {entry.get('achievement_id')!r} is not the id's achievement {rest!r}")
    elif prefix == "auto" and entry.get("request_id"):
        problems.append(f"it has request_id {entry.get('request_id')!r}, so it should have been deduplicated as req#")
    if kind == "activity" and not entry.get("activity_id"):
        problems.append("an activity award without activity_id")
    if kind in ("adjustment", "revoke") and not entry.get("reason"):
        problems.append(f"{'an adjustment' if kind == 'adjustment' else 'a revoke'} without a reason")
    xp = _whole(entry.get("xp"))
    if kind == "adjustment":  # signed, never 0
        if xp is None or xp == 0:
            problems.append(f"xp {entry.get('xp')!r} is not a whole number other than 0")
    elif kind == "revoke":  # minus the entry it reverses (revoke-reverses-entry)
        if xp is None:
            problems.append(f"xp {entry.get('xp')!r} is not a whole number")
    elif xp is None or xp < 0:
        problems.append(f"xp {entry.get('xp')!r} is not a whole number >= 0")
    return problems


def _counted_award(entry: Mapping[str, Any]) -> bool:
    """An activity award that added one to its counters (an earlier version's were not counted;
    an award beyond its activity's cap, `capped`, counts toward nothing)."""
    return entry.get("kind") == "activity" and entry.get("counted") is True and entry.get("capped") is not True


def _counters_of(entry: Mapping[str, Any]) -> list[str]:
    """The counters a counted award added one to: its activity's and, when it had one, its category's."""
    counters = ["a#" + str(entry.get("activity_id", ""))]
    if entry.get("category"):
        counters.append("c#" + str(entry["category"]))
    return counters


def _as_values(rewards: Iterable[Reward]) -> list[dict[str, Any]]:
    return [{"reward_id": r.reward_id, "quantity": r.quantity} for r in rewards]


def _describe(rewards: Any) -> str:
    found = _rewards(list(rewards or ()))
    return ", ".join(f"{r.quantity} {r.reward_id}" for r in found) or "no rewards"


# --- output ----------------------------------------------------------------------------------


def report_as_json(report: VerifyReport, where: str = "") -> str:
    listed = {severity: report.of(severity) for severity in SEVERITIES}
    return json.dumps(
        {
            "stage": where,
            "ok": report.ok,
            "catalog_changed": report.catalog_changed,
            "time_zone": report.time_zone,
            "counts": report.counts(),
            "invariants": {
                name: {
                    "description": text,
                    "checked": report.checked[name],
                    **{severity + "s": report.count(severity, name) for severity in SEVERITIES},
                }
                for name, text in INVARIANTS.items()
            },
            # The lists below hold the first `limit` findings by user id, violations first.
            "listed": {
                "limit": report.limit,
                "findings": sum(len(found) for found in listed.values()),
                "of": report.total_findings,
            },
            **{severity + "s": [f.as_dict() for f in listed[severity]] for severity in SEVERITIES},
        },
        indent=2,
    )


def report_as_text(report: VerifyReport, where: str = "") -> str:
    """The summary first: the counts, each invariant with how often it was
    checked and what it found, the verdict; then the listed findings."""
    counts = report.counts()
    lines = [
        f"verified {where}".rstrip(),
        f"  users {counts['users']:,} · ledger entries {counts['ledger_entries']:,} · unlocks {counts['unlocks']:,} · "
        f"levels checked {counts['levels_checked']:,} (level table: {counts['level_table_levels']:,} levels)",
        f"  invariants checked {counts['invariants_checked']:,}"
        + (" (catalog changed: checks against the current catalog are notes)" if report.catalog_changed else "")
        + (
            f" · caps' and streaks' periods in time zone {report.time_zone}"
            if any(report.checked[name] for name in _PERIOD_INVARIANTS)
            else ""
        ),
        f"    {'invariant':<26} {'checked':>9} {'violations':>10} {'warnings':>9} {'notes':>7}",
    ]
    for name, text in INVARIANTS.items():
        found = " ".join(f"{report.count(severity, name):>{width},}" for severity, width in zip(SEVERITIES, (10, 9, 7)))
        lines.append(f"    {name:<26} {report.checked[name]:>9,} {found}  {text}")
    lines.append(
        f"{'OK' if report.ok else 'FAILED'}: {counts['violations']:,} violations, {counts['warnings']:,} warnings, "
        f"{counts['notes']:,} notes"
    )
    listed = report.findings
    total = report.total_findings
    if len(listed) < total:
        more = "; --limit N lists more" if report.limit is not None else ""
        lines.append(f"findings: the first {len(listed):,} of {total:,}, violations first, by user id{more}")
    elif listed:
        lines.append(f"findings ({total:,}):")
    lines.extend(f"{f.severity:<9} {f.invariant:<26} {f.user_id or STAGE_WIDE}: {f.message}" for f in listed)
    return "\n".join(lines)


# --- reading a stage ----------------------------------------------------------------------------

# The tables that hold a user's items besides user_progress, as UserItems names them.
_USER_TABLES = {
    "ledger": XP_LEDGER,
    "unlocks": USER_ACHIEVEMENTS,
    "level_rewards": LEVEL_REWARDS,
    "level_checks": LEVEL_CHECKS,
    "counters": ACTIVITY_COUNTS,
}
# Users read per page of user_progress, and users read at once (each one Query per user table):
# together they bound what is in memory, one page of ids and a few users' items.
_PROGRESS_PAGE = 500
_USERS_IN_FLIGHT = 4
# Keys per page when looking for users without a progress item; BatchGetItem's maximum.
_KEY_PAGE = 2000
_BATCH_GET_KEYS = 100


def read_catalog(client: Any, table_prefix: str, time_zone: str = "UTC") -> StageCatalog:
    """The level table, the achievements, the activities, the streaks (the
    deleted ones too) and the game-wide stats (a few items per achievement);
    `time_zone` is the game's (REWARDS_TIME_ZONE). Raises StageNotFound when a
    table is missing (but the streak table, which a stage of an earlier
    version lacks until its services start: no streaks then)."""
    levels = [
        Level(
            int(v["level"]),
            int(v["xp_required"]),
            tuple(Reward(str(r["reward_id"]), int(r["quantity"])) for r in v.get("rewards") or ()),
        )
        for page in _pages(client, "scan", table_prefix, LEVELS)
        for v in map(from_item, page["Items"])
        if int(v["level"]) > LEVEL_TABLE_VERSION_KEY  # the table version's copies, not levels
    ]
    achievements = {
        str(a["achievement_id"]): a
        for page in _pages(client, "scan", table_prefix, ACHIEVEMENTS)
        for a in map(from_item, page["Items"])
    }
    stats: dict[str, dict[int, Any]] = defaultdict(dict)
    for page in _pages(client, "scan", table_prefix, ACHIEVEMENT_STATS):
        for values in map(from_item, page["Items"]):
            stat, shard = stat_of_key(str(values["stat_shard"]))
            stats[stat][shard] = values.get("total", 0)
    activities = {
        str(a["activity_id"]): a
        for page in _pages(client, "scan", table_prefix, ACTIVITIES)
        for a in map(from_item, page["Items"])
    }
    try:
        streaks = {
            str(s["streak_id"]): s
            for page in _pages(client, "scan", table_prefix, STREAKS)
            for s in map(from_item, page["Items"])
        }
    except StageNotFound:
        streaks = {}
    return StageCatalog(LevelTable(levels), achievements, dict(stats), activities, streaks, ZoneInfo(time_zone))


def read_users(client: Any, table_prefix: str) -> Iterator[UserItems]:
    """Every user of the stage with their items, one at a time: first each user
    with a progress item (user_progress page by page, a Query per user table
    for each), then each user that has items but no progress item. Strongly
    consistent reads. Raises StageNotFound when a table is missing."""
    for table in _USER_TABLES.values():  # a wrong prefix fails before any user is read
        next(_pages(client, "scan", table_prefix, table, Limit=1))
    progress_pages = _pages(client, "scan", table_prefix, USER_PROGRESS, Limit=_PROGRESS_PAGE)
    with_progress = (from_item(item) for page in progress_pages for item in page["Items"])
    # A few users at a time: the Queries wait on DynamoDB, not on this process.
    with ThreadPoolExecutor(_USERS_IN_FLIGHT) as pool:
        in_flight: deque[Future[UserItems]] = deque()
        for progress in with_progress:
            in_flight.append(pool.submit(_read_user, client, table_prefix, str(progress["user_id"]), progress))
            if len(in_flight) >= _USERS_IN_FLIGHT:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
    for user_id in _users_without_progress(client, table_prefix):
        yield _read_user(client, table_prefix, user_id, None)


def _read_user(client: Any, table_prefix: str, user_id: str, progress: dict[str, Any] | None) -> UserItems:
    items = {
        name: [
            from_item(item)
            for page in _pages(
                client,
                "query",
                table_prefix,
                table,
                KeyConditionExpression="user_id = :u",
                ExpressionAttributeValues={":u": {"S": user_id}},
            )
            for item in page["Items"]
        ]
        for name, table in _USER_TABLES.items()
    }
    return UserItems(user_id, progress, **items)


def _users_without_progress(client: Any, table_prefix: str) -> Iterator[str]:
    """The users that have items in a user table but no progress item (which
    every write path creates): their keys, page by page, against user_progress."""
    reported: set[str] = set()  # such users are corruption: few, and each is reported once
    for table in _USER_TABLES.values():
        for page in _pages(client, "scan", table_prefix, table, ProjectionExpression="user_id", Limit=_KEY_PAGE):
            user_ids = [u for u in dict.fromkeys(str(i["user_id"]["S"]) for i in page["Items"]) if u not in reported]
            for missing in _without_progress(client, table_prefix, user_ids):
                reported.add(missing)
                yield missing


def _without_progress(client: Any, table_prefix: str, user_ids: list[str]) -> list[str]:
    table = table_prefix + USER_PROGRESS.name
    found: set[str] = set()
    for start in range(0, len(user_ids), _BATCH_GET_KEYS):
        keys = [{"user_id": {"S": u}} for u in user_ids[start : start + _BATCH_GET_KEYS]]
        pending: dict[str, Any] = {table: {"Keys": keys, "ConsistentRead": True, "ProjectionExpression": "user_id"}}
        attempt = 0
        while pending:
            answer = _call(client, "batch_get_item", table, RequestItems=pending)
            found.update(str(item["user_id"]["S"]) for item in answer["Responses"].get(table, ()))
            pending = answer.get("UnprocessedKeys") or {}
            if pending:  # throttled: back off before asking for the rest
                time.sleep(min(0.05 * 2**attempt, 2.0))
                attempt += 1
    return [u for u in user_ids if u not in found]


def _pages(client: Any, operation: str, table_prefix: str, table: TableDefinition, **params: Any) -> Iterator[Any]:
    """The pages of a strongly consistent scan or query of one table."""
    name = table_prefix + table.name
    params = {"TableName": name, "ConsistentRead": True, **params}
    while True:
        page = _call(client, operation, name, **params)
        yield page
        if not page.get("LastEvaluatedKey"):
            return
        params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _call(client: Any, operation: str, table_name: str, **params: Any) -> Any:
    try:
        return getattr(client, operation)(**params)
    except ClientError as error:
        if error_code(error) == "ResourceNotFoundException":
            raise StageNotFound(f"table {table_name} does not exist: is the table prefix right?") from error
        raise
