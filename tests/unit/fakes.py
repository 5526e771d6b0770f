"""In-memory fakes of the repository Protocols the use cases depend on, for the
unit tier (cosmicpython's FakeRepository): plain dicts, async methods, no
DynamoDB and no gRPC.

Each fake keeps the contract of its DynamoDB implementation (xp_service/storage.py,
levels_service/storage.py, achievements_service/storage.py): every conditional
write checks the same conditions and, when one fails, writes nothing and raises
what the storage raises. A transaction is checked whole before anything is written.

Knobs inject what real concurrency would cause: a lost race, a level-table
change, a refused grant. Hooks (`async def` callables taking no argument, kept
in per-method lists and used once each, in order; None for "nothing this call")
run at a fixed point of a method, e.g. another check levelling the user up
between a use case's read and its write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from achievements_service.domain import (
    Achievement,
    AchievementChanged,
    AchievementNotFound,
    AlreadyUnlocked,
    OwedPaid,
    Requirements,
    RequirementsNotHeld,
    RewardPaidBefore,
    Unlock,
)
from common.auto_unlock import AutoRule, AutoRules, Counter, DueUnlocks, Watches, WatchOutdated, award_counters
from common.dynamodb.counters import MAX_WATCHED_COUNTERS
from common.models import (
    ACTIVITY,
    MAX_TOTAL_XP,
    REVOKE,
    LedgerEntry,
    Level,
    LevelReached,
    LevelTable,
    LevelUpOutcome,
    ProgressRecord,
    Reward,
    TotalXpLimitReached,
    TotalXpWouldGoNegative,
    VersionedLevelTable,
    utc_now_iso,
)
from common.streaks import Streak, StreakRecord, streak_counter
from levels_service.domain import (
    LevelChangedConcurrently,
    LevelCheck,
    LevelNotFound,
    LevelTableChanged,
    LevelUpPlan,
    is_recorded_check,
)
from xp_service.domain import (
    Activity,
    ActivityChanged,
    ActivityNotFound,
    CapReached,
    DuplicateRequest,
    StreakNotFound,
    StreakPeriodFixed,
)

Hook = Callable[[], Awaitable[None]]


async def _run_next(hooks: list[Hook | None]) -> None:
    """Runs (and uses up) the first hook of the list, if any."""
    if hooks:
        hook = hooks.pop(0)
        if hook is not None:
            await hook()


def _count_player_once(progress: dict[str, ProgressRecord], players: set[str], user_id: str) -> None:
    """counters.count_player_once: only a progress item with XP not counted yet is counted."""
    record = progress.get(user_id)
    if record is None or record.player_counted:
        return
    players.add(user_id)
    progress[user_id] = replace(record, player_counted=True)


def _page(ids: list[str], page_size: int, page_token: str) -> tuple[list[str], str]:
    """Keys after `page_token` (the last key of the previous page), in key order."""
    remaining = [i for i in sorted(ids) if i > page_token] if page_token else sorted(ids)
    size = page_size or len(remaining) or 1
    page = remaining[:size]
    return page, (page[-1] if len(remaining) > size else "")


# --- XP ----------------------------------------------------------------------------


class FakeXpRepository:
    """xp_service.domain.XpRepository in memory.

    `catalog` is the activity table; `cache` is this process's copy of it (what
    cached_activity answers from), which tests may leave stale to play another
    replica changing the catalog."""

    def __init__(self, *, start_level: int = 0, level_table_version: int = 1) -> None:
        self.catalog: dict[str, Activity] = {}
        self.cache: dict[str, Activity] = {}
        self.ledger: dict[tuple[str, str], LedgerEntry] = {}
        self.progress: dict[str, ProgressRecord] = {}
        self.reached: dict[str, list[LevelReached]] = {}
        self.held: dict[str, set[str]] = {}  # the user_achievements records, as XP reads them
        self.counters: dict[tuple[str, str], Counter] = {}  # the activity_counts items
        self.caps: dict[tuple[str, str], int] = {}  # the cap#<activity>#<period> items
        self.streak_catalog: dict[str, Streak] = {}  # the streaks table, deletion marks included
        self.deleted_streaks: set[str] = set()
        self.runs: dict[tuple[str, str], StreakRecord] = {}  # the s#<streak> items, by (user, streak id)
        self.rules = AutoRules()  # the catalog's auto-unlock rules, as this process read them
        self.players: set[str] = set()
        self.start_level_value = start_level
        self.version = level_table_version
        # Knobs.
        self.before_record: list[Hook | None] = []
        # The next N record_xp calls write, then report DuplicateRequest with the
        # entry just written: the SDK's retry of a transaction whose answer was lost.
        self.lose_next_record_answers = 0
        # Call log.
        self.record_calls: list[tuple[LedgerEntry, Activity | None]] = []
        self.get_activity_calls: list[str] = []
        self.counter_reads: list[tuple[str, ...]] = []  # the counters each progress read asked for
        self.count_player_calls: list[str] = []

    # --- seeding ----------------------------------------------------------------

    def seed_activity(self, activity: Activity) -> None:
        self.catalog[activity.activity_id] = activity

    def seed_progress(self, record: ProgressRecord) -> None:
        self.progress[record.user_id] = record

    def entries(self, user_id: str) -> list[LedgerEntry]:
        return [e for (u, _), e in sorted(self.ledger.items()) if u == user_id]

    # --- catalog ----------------------------------------------------------------

    async def put_activity(self, activity: Activity) -> None:
        self.catalog[activity.activity_id] = activity
        self.cache.pop(activity.activity_id, None)

    async def get_activity(self, activity_id: str) -> Activity:
        self.get_activity_calls.append(activity_id)
        activity = self.catalog.get(activity_id)
        if activity is None:
            raise ActivityNotFound(activity_id)
        return activity

    async def cached_activity(self, activity_id: str) -> Activity:
        activity = self.cache.get(activity_id)
        if activity is None:
            activity = await self.get_activity(activity_id)
            self.cache[activity_id] = activity
        return activity

    async def list_activities(self, category: str, page_size: int, page_token: str) -> tuple[list[Activity], str]:
        ids = [a.activity_id for a in self.catalog.values() if not category or a.category == category]
        page, token = _page(ids, page_size, page_token)
        return [self.catalog[i] for i in page], token

    async def delete_activity(self, activity_id: str) -> None:
        self.cache.pop(activity_id, None)
        if self.catalog.pop(activity_id, None) is None:
            raise ActivityNotFound(activity_id)

    # --- ledger and progress ------------------------------------------------------

    async def record_xp(
        self,
        entry: LedgerEntry,
        activity: Activity | None = None,
        cap_period: str = "",
        streak_periods: tuple[tuple[Streak, str], ...] = (),
    ) -> None:
        """One transaction: the entry only if its id is new (else DuplicateRequest
        with the entry held, which the ledger's condition reports first), the XP
        added to the total, and with `activity` a check that the catalog still
        gives it this XP (else ActivityChanged, and the cached copy is dropped)."""
        self.record_calls.append((entry, activity))
        await _run_next(self.before_record)
        key = (entry.user_id, entry.entry_id)
        existing = self.ledger.get(key)
        if existing is not None:
            raise DuplicateRequest(existing)
        total = self.progress.get(entry.user_id, ProgressRecord(entry.user_id)).total_xp
        if total + entry.xp > MAX_TOTAL_XP:
            raise TotalXpLimitReached(entry.user_id, entry.xp)
        if total + entry.xp < 0:
            raise TotalXpWouldGoNegative(entry.user_id, entry.xp)
        if activity is not None:
            current = self.catalog.get(activity.activity_id)
            if current is None or current.xp != activity.xp or current.category != activity.category:
                self.cache.pop(activity.activity_id, None)
                raise ActivityChanged(activity.activity_id)
            cap_key = (entry.user_id, f"cap#{activity.activity_id}#{cap_period}")
            if cap_period and self.caps.get(cap_key, 0) >= activity.cap_max_awards:
                raise CapReached()
            if cap_period:
                self.caps[cap_key] = self.caps.get(cap_key, 0) + 1
        # As ledger_put writes it: an activity award is marked counted.
        self.ledger[key] = replace(entry, counted=True) if entry.kind == ACTIVITY and not entry.capped else entry
        step = 1 if entry.kind == ACTIVITY and not entry.capped else -1 if entry.kind == REVOKE and entry.counted else 0
        for counter in award_counters(entry.activity_id, entry.category) if step else ():
            held = self.counters.get((entry.user_id, counter), Counter(counter))
            self.counters[(entry.user_id, counter)] = replace(held, awards=held.awards + step)
        for streak, first_day in streak_periods if step > 0 else ():  # streak_touches: a set ADD
            run = self.runs.get((entry.user_id, streak.streak_id), StreakRecord(streak.period))
            run = replace(run, period=streak.period, touched=run.touched | {first_day})
            self.runs[(entry.user_id, streak.streak_id)] = run
            counter = streak_counter(streak.streak_id)  # as _counter_from reads it: the best run counts
            held = self.counters.get((entry.user_id, counter), Counter(counter))
            self.counters[(entry.user_id, counter)] = replace(held, awards=run.run().best)
        record = self.progress.get(entry.user_id, ProgressRecord(entry.user_id))
        self.progress[entry.user_id] = replace(
            record, total_xp=record.total_xp + entry.xp, updated_at=entry.recorded_at
        )
        if self.lose_next_record_answers:
            self.lose_next_record_answers -= 1
            raise DuplicateRequest(entry)

    async def get_entry(self, user_id: str, entry_id: str) -> LedgerEntry | None:
        return self.ledger.get((user_id, entry_id))

    async def put_streak(self, streak: Streak) -> None:
        held = self.streak_catalog.get(streak.streak_id)
        if held is not None and held.period != streak.period:
            raise StreakPeriodFixed(streak.streak_id, held.period)
        self.streak_catalog[streak.streak_id] = streak
        self.deleted_streaks.discard(streak.streak_id)

    async def get_streak(self, streak_id: str) -> Streak:
        if streak_id not in self.streak_catalog or streak_id in self.deleted_streaks:
            raise StreakNotFound(streak_id)
        return self.streak_catalog[streak_id]

    async def list_streaks(self, page_size: int, page_token: str) -> tuple[list[Streak], str]:
        return list(await self.streaks()), ""

    async def delete_streak(self, streak_id: str) -> None:
        await self.get_streak(streak_id)
        self.deleted_streaks.add(streak_id)

    async def streaks(self, *, fresh: bool = False) -> tuple[Streak, ...]:
        return tuple(s for i, s in sorted(self.streak_catalog.items()) if i not in self.deleted_streaks)

    async def streak_records(self, user_id: str) -> dict[str, StreakRecord]:
        return {s: run for (u, s), run in self.runs.items() if u == user_id}

    async def history_page(self, user_id: str, page_size: int, page_token: str) -> tuple[list[LedgerEntry], str]:
        """Newest first (recorded_at, then entry id, as the by_time index sorts them); the token is the last entry id."""
        newest = sorted(
            (e for (u, _), e in self.ledger.items() if u == user_id),
            key=lambda e: (e.recorded_at, e.entry_id),
            reverse=True,
        )
        ids = [e.entry_id for e in newest]
        start = ids.index(page_token) + 1 if page_token in ids else 0
        page = newest[start : start + (page_size or len(newest))]
        return page, (page[-1].entry_id if start + len(page) < len(newest) else "")

    async def get_progress(self, user_id: str) -> ProgressRecord:
        return self.progress.get(user_id, ProgressRecord(user_id))

    async def mark_unlocks_deferred(self, user_id: str, entry_id: str) -> None:
        self.ledger[(user_id, entry_id)] = replace(self.ledger[(user_id, entry_id)], unlocks_deferred=True)

    async def mark_level_check_deferred(self, user_id: str, entry_id: str) -> None:
        self.ledger[(user_id, entry_id)] = replace(self.ledger[(user_id, entry_id)], level_check_deferred=True)
        self.progress[user_id] = replace(self.progress.get(user_id, ProgressRecord(user_id)), deferred_check=entry_id)

    async def auto_rules(self) -> AutoRules:
        return self.rules

    async def forget_auto_watches(self, user_id: str) -> None:
        self.progress[user_id] = replace(self.progress[user_id], auto_version="")

    async def get_progress_and_counters(
        self, user_id: str, counters: tuple[str, ...]
    ) -> tuple[ProgressRecord, dict[str, Counter]]:
        self.counter_reads.append(counters)
        found = {c: self.counters[(user_id, c)] for c in counters if (user_id, c) in self.counters}
        return await self.get_progress(user_id), found

    async def count_player_once(self, user_id: str) -> None:
        self.count_player_calls.append(user_id)
        _count_player_once(self.progress, self.players, user_id)

    async def unlocked_achievement_ids(self, user_id: str, limit: int) -> tuple[tuple[str, ...], bool]:
        ids = tuple(sorted(self.held.get(user_id, ())))
        return ids[:limit], len(ids) > limit

    async def latest_rewards(self, user_id: str, levels: int) -> tuple[tuple[Reward, ...], bool]:
        reached = sorted(self.reached.get(user_id, []), key=lambda r: r.level)
        return tuple(r for level in reached[-levels:] for r in level.rewards), len(reached) > levels

    async def start_level(self) -> int:
        return self.start_level_value

    async def level_table_version(self) -> int:
        return self.version


class FakeLevelChecker:
    """common.level_check.LevelChecker: answers `answer` (None: the Levels
    service could not answer in time) and logs each call."""

    def __init__(self, answer: LevelUpOutcome | None = None) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str]] = []
        self.replay_only: list[bool] = []

    async def check_level_up(self, user_id: str, request_id: str, replay_only: bool = False) -> LevelUpOutcome | None:
        self.calls.append((user_id, request_id))
        self.replay_only.append(replay_only)
        return self.answer


class FakeAutoUnlocker:
    """common.auto_unlock.AutoUnlocker: answers `answer` (None: the
    Achievements service could not answer in time) and logs each call."""

    def __init__(self, answer: DueUnlocks | None = None) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str]] = []
        self.replay_only: list[bool] = []

    async def unlock_due(self, user_id: str, trigger_id: str, replay_only: bool = False) -> DueUnlocks | None:
        self.calls.append((user_id, trigger_id))
        self.replay_only.append(replay_only)
        return self.answer


# --- Levels ------------------------------------------------------------------------


@dataclass
class CheckRecord:
    """A level_checks item: what the check with this id granted."""

    levels: set[int] = field(default_factory=set)
    previous_level: int | None = None
    target_level: int | None = None


@dataclass(frozen=True)
class GrantCall:
    user_id: str
    step: LevelUpPlan
    owner: str
    target_level: int
    min_total_xp: int
    next_level_xp: int
    version: int
    continuing: bool


@dataclass(frozen=True)
class PinCall:
    user_id: str
    expected_level: int | None
    level: int
    next_level_xp: int
    version: int


class FakeLevelsRepository:
    """levels_service.domain.LevelsRepository in memory.

    `table` at `table_version` is the level table as stored; `cached` is this
    process's copy (what level_table() answers), which may be older:
    level_table_at_least() catches it up with the stored table."""

    def __init__(self, levels: Iterable[Level] = (), *, version: int = 1) -> None:
        self.table = LevelTable(levels)
        self.table_version = version
        self.cached = VersionedLevelTable(version, self.table, 0.0)
        self.progress: dict[str, ProgressRecord] = {}
        self.checks: dict[tuple[str, str], CheckRecord] = {}
        self.nothing_due_calls: list[tuple[str, str, int]] = []
        self.reached: dict[tuple[str, int], LevelReached] = {}
        # Knobs.
        self.lose_next_grants = 0  # the next N grant_level_step calls lose a race (nothing written)
        self.change_table_before_next_grant = False  # another process bumps the table's version first
        self.before_grant: list[Hook | None] = []
        self.after_grant: list[Hook | None] = []
        self.before_pin: list[Hook | None] = []
        # Call log.
        self.grant_calls: list[GrantCall] = []
        self.pin_calls: list[PinCall] = []
        self.at_least_calls: list[int] = []

    # --- seeding ----------------------------------------------------------------

    def seed_progress(self, record: ProgressRecord) -> None:
        self.progress[record.user_id] = record

    def store_table(self, levels: Iterable[Level], *, refresh_cache: bool = False) -> None:
        """Another process writes the level table: its version moves by one."""
        self.table = LevelTable(levels)
        self.table_version += 1
        if refresh_cache:
            self.cached = VersionedLevelTable(self.table_version, self.table, 0.0)

    def levels_of(self, user_id: str) -> list[int]:
        return sorted(level for (u, level) in self.reached if u == user_id)

    # --- the level table ----------------------------------------------------------

    async def put_level(self, level: Level, expected_version: int) -> None:
        if expected_version != self.table_version:
            raise LevelTableChanged(expected_version)
        self.store_table([*(l for l in self.table.levels if l.level != level.level), level], refresh_cache=True)

    async def delete_level(self, level: int) -> None:
        if all(l.level != level for l in self.table.levels):
            raise LevelNotFound(level)
        self.store_table([l for l in self.table.levels if l.level != level], refresh_cache=True)

    async def level_table(self) -> VersionedLevelTable:
        return self.cached

    async def level_table_at_least(self, version: int) -> VersionedLevelTable:
        self.at_least_calls.append(version)
        if self.cached.version < version:
            assert self.table_version >= version, f"version {version} was never stored"
            self.cached = VersionedLevelTable(self.table_version, self.table, 0.0)
        return self.cached

    # --- users ----------------------------------------------------------------------

    async def get_progress(self, user_id: str) -> ProgressRecord:
        return self.progress.get(user_id, ProgressRecord(user_id))

    async def get_progress_and_check(self, user_id: str, check_id: str) -> tuple[ProgressRecord, LevelCheck | None]:
        progress = await self.get_progress(user_id)
        record = self.checks.get((user_id, check_id))
        if record is None:
            return progress, None
        assert record.previous_level is not None
        levels = tuple(sorted(record.levels))  # none: the check found nothing due
        target = record.target_level if record.target_level is not None else max(levels, default=0)
        return progress, LevelCheck(check_id, record.previous_level, levels, target)

    async def levels_reached_page(
        self, user_id: str, page_size: int, after_level: int
    ) -> tuple[list[LevelReached], bool]:
        reached = [
            self.reached[(u, level)] for (u, level) in sorted(self.reached) if u == user_id and level > after_level
        ]
        return reached[:page_size], len(reached) > page_size

    async def levels_reached(self, user_id: str, levels: tuple[int, ...]) -> list[LevelReached]:
        found = [self.reached[(user_id, level)] for level in levels if (user_id, level) in self.reached]
        return sorted(found, key=lambda r: r.level)

    async def grant_level_step(
        self,
        user_id: str,
        step: LevelUpPlan,
        *,
        owner: str,
        target_level: int,
        min_total_xp: int,
        next_level_xp: int,
        version: int,
        continuing: bool,
    ) -> None:
        self.grant_calls.append(
            GrantCall(user_id, step, owner, target_level, min_total_xp, next_level_xp, version, continuing)
        )
        await _run_next(self.before_grant)
        if self.change_table_before_next_grant:
            self.change_table_before_next_grant = False
            self.store_table(self.table.levels)
        if self.lose_next_grants:
            self.lose_next_grants -= 1
            raise LevelChangedConcurrently(user_id)
        # The version check is the transaction's second item: its failure is told apart.
        if version != self.table_version:
            raise LevelTableChanged(version)
        record = self.progress.get(user_id)
        if continuing:
            holds = record is not None and record.pending_check == owner and record.level == step.previous_level
        else:
            holds = (
                record is not None
                and record.total_xp >= min_total_xp
                and record.pending_check is None
                and (record.level is None or record.level == step.previous_level)
            )
        # Not into the record of a copy of this request that found nothing due.
        named = self.checks.get((user_id, owner))
        if is_recorded_check(owner) and named is not None and not named.levels:
            holds = False
        # Each level passed is recorded only if it was not before.
        if not holds or any((user_id, level.level) in self.reached for level in step.passed):
            raise LevelChangedConcurrently(user_id)
        assert record is not None
        now = utc_now_iso()
        pending = step.current_level < target_level
        self.progress[user_id] = replace(
            record,
            level=step.current_level,
            updated_at=now,
            next_level_xp=next_level_xp,
            level_version=version,
            pending_check=owner if pending else None,
            pending_target=target_level if pending else None,
            deferred_check=None,
        )
        if is_recorded_check(owner):
            check = self.checks.setdefault((user_id, owner), CheckRecord())
            check.levels |= {level.level for level in step.passed}
            if check.previous_level is None:
                check.previous_level = step.previous_level
            if check.target_level is None:
                check.target_level = target_level
        for level in step.passed:
            self.reached[(user_id, level.level)] = LevelReached(
                level.level, step.previous_level, level.rewards, owner, now
            )
        await _run_next(self.after_grant)

    async def record_nothing_due_once(self, user_id: str, check_id: str, level: int) -> bool:
        self.nothing_due_calls.append((user_id, check_id, level))
        if (user_id, check_id) in self.checks:
            return False
        self.checks[(user_id, check_id)] = CheckRecord(previous_level=level)
        return True

    async def pin_threshold(
        self, user_id: str, expected_level: int | None, level: int, next_level_xp: int, version: int
    ) -> bool:
        self.pin_calls.append(PinCall(user_id, expected_level, level, next_level_xp, version))
        await _run_next(self.before_pin)
        record = self.progress.get(user_id)
        if record is None or record.pending_check is not None or record.level != expected_level:
            return False
        self.progress[user_id] = replace(record, level=level, next_level_xp=next_level_xp, level_version=version)
        return True


# --- Achievements --------------------------------------------------------------------


class FakeAchievementsRepository:
    """achievements_service.domain.AchievementsRepository in memory.

    `catalog` is the achievement table, `cache` this process's copy of it (what
    cached_achievement answers from), which tests may leave stale to play
    another replica changing the catalog. `progress` and `ledger` stand for the
    shared user_progress item and the XP ledger: an unlock pays into them."""

    def __init__(self, *, start_level: int = 0, level_table_version: int = 1) -> None:
        self.catalog: dict[str, Achievement] = {}
        self.cache: dict[str, Achievement] = {}
        self.unlocks: dict[tuple[str, str], Unlock] = {}
        self.ledger: dict[tuple[str, str], LedgerEntry] = {}
        self.progress: dict[str, ProgressRecord] = {}
        self.counters: dict[tuple[str, str], Counter] = {}  # the activity_counts items
        # Counter items a watch created, which hold no `awards` attribute until an award adds
        # one (Counter reads them as 0 awards; conditions on `awards` see it missing).
        self.uncounted: set[tuple[str, str]] = set()
        self.forgotten: list[str] = []  # forget_auto_watches calls
        self.unlock_stats: dict[str, int] = {}
        self.players: set[str] = set()
        self.start_level_value = start_level
        self.version = level_table_version
        self._revisions = 0
        # Knobs.
        # This process's copy of the auto-unlock rules, when a test leaves it stale
        # (AutoRulesCache between refreshes); None: the rules of `catalog`.
        self.rules: AutoRules | None = None
        # Run before write_watches checks its conditions: an award landing mid-evaluation.
        self.before_write_watches: list[Hook | None] = []
        self.before_record_unlock: list[Hook | None] = []
        # The next record_unlock_once fails its requirements guard whatever the progress holds.
        self.fail_next_requirements_guard = False
        # The next N record_unlock_once calls write, then report AlreadyUnlocked with the
        # unlock just written: the client's retry of a transaction whose answer was lost.
        self.lose_next_record_answers = 0
        # Call log.
        self.record_calls: list[tuple[Unlock, LedgerEntry | None]] = []
        self.get_achievement_calls: list[str] = []
        self.start_level_calls = 0
        self.watch_writes: list[Watches] = []  # every write_watches call that reached its transaction
        self.count_player_calls: list[str] = []

    # --- seeding ----------------------------------------------------------------

    def seed_achievement(self, achievement: Achievement) -> Achievement:
        self._revisions += 1
        stored = replace(achievement, revision=f"r{self._revisions}")
        self.catalog[achievement.achievement_id] = stored
        return stored

    def seed_progress(self, record: ProgressRecord) -> None:
        self.progress[record.user_id] = record

    def seed_unlock(self, unlock: Unlock) -> None:
        """An unlock recorded earlier, with its place in the progress."""
        self.unlocks[(unlock.user_id, unlock.achievement_id)] = unlock
        record = self.progress.get(unlock.user_id, ProgressRecord(unlock.user_id))
        self.progress[unlock.user_id] = replace(record, holds_achievements=True, updated_at=unlock.unlocked_at)

    def count(self, user_id: str, counter: str, awards: int) -> None:
        """The counter at `awards` (its watch kept)."""
        held = self.counters.get((user_id, counter), Counter(counter))
        self.counters[(user_id, counter)] = replace(held, awards=awards)
        self.uncounted.discard((user_id, counter))

    def pay(self, entry: LedgerEntry) -> None:
        """The ledger entry and its XP in the total."""
        self.ledger[(entry.user_id, entry.entry_id)] = entry
        record = self.progress.get(entry.user_id, ProgressRecord(entry.user_id))
        self.progress[entry.user_id] = replace(record, total_xp=record.total_xp + entry.xp)

    # --- catalog ----------------------------------------------------------------

    async def put_achievement(self, achievement: Achievement) -> Achievement:
        self.cache.pop(achievement.achievement_id, None)
        return self.seed_achievement(achievement)

    async def get_achievement(self, achievement_id: str) -> Achievement:
        self.get_achievement_calls.append(achievement_id)
        achievement = self.catalog.get(achievement_id)
        if achievement is None:
            raise AchievementNotFound(achievement_id)
        return achievement

    async def cached_achievement(self, achievement_id: str) -> Achievement:
        achievement = self.cache.get(achievement_id)
        if achievement is None:
            achievement = await self.get_achievement(achievement_id)
            self.cache[achievement_id] = achievement
        return achievement

    async def get_achievements(self, achievement_ids: list[str]) -> dict[str, Achievement]:
        return {i: self.catalog[i] for i in achievement_ids if i in self.catalog}

    async def list_achievements(self, page_size: int, page_token: str) -> tuple[list[Achievement], str]:
        page, token = _page(list(self.catalog), page_size, page_token)
        return [self.catalog[i] for i in page], token

    async def delete_achievement(self, achievement_id: str) -> None:
        self.cache.pop(achievement_id, None)
        if self.catalog.pop(achievement_id, None) is None:
            raise AchievementNotFound(achievement_id)

    # --- unlocks ------------------------------------------------------------------

    async def get_progress(self, user_id: str) -> ProgressRecord:
        return self.progress.get(user_id, ProgressRecord(user_id))

    async def get_unlock(self, user_id: str, achievement_id: str) -> Unlock | None:
        return self.unlocks.get((user_id, achievement_id))

    async def list_unlocks(self, user_id: str, page_size: int, page_token: str) -> tuple[list[Unlock], str]:
        page, token = _page([a for (owner, a) in self.unlocks if owner == user_id], page_size, page_token)
        return [self.unlocks[(user_id, a)] for a in page], token

    async def unlocked_among(self, user_id: str, achievement_ids: tuple[str, ...]) -> frozenset[str]:
        return frozenset(a for a in achievement_ids if (user_id, a) in self.unlocks)

    def _guard_holds(
        self, user_id: str, record: ProgressRecord | None, requirements: Requirements, start_level: int
    ) -> bool:
        """achievements_service.storage's requirements: the ConditionChecks of the
        required unlock records and requirements_guard on the stored progress item."""
        if any((user_id, a) not in self.unlocks for a in requirements.required_achievements):
            return False
        for needed in requirements.activity_counts:
            if self.counters.get((user_id, needed.counter), Counter(needed.counter)).awards < needed.count:
                return False
        for run in requirements.streak_lengths:  # the storage's read of the runs before its transaction
            if self.counters.get((user_id, run.counter), Counter(run.counter)).awards < run.length:
                return False
        if record is None:  # a missing item: only the attribute_not_exists parts hold
            record = ProgressRecord("")
        if requirements.min_total_xp and record.total_xp < requirements.min_total_xp:
            return False
        if requirements.min_level:
            level = record.level if record.level is not None else start_level
            if level < requirements.min_level:
                return False
        return True

    async def record_unlock_once(
        self, unlock: Unlock, achievement: Achievement, start_level: int, payment: LedgerEntry | None
    ) -> None:
        """The storage's transaction, its conditions checked in the order it reports them."""
        self.record_calls.append((unlock, payment))
        await _run_next(self.before_record_unlock)
        key = (unlock.user_id, unlock.achievement_id)
        existing = self.unlocks.get(key)
        current = self.catalog.get(achievement.achievement_id)
        changed = current is None or current.revision != achievement.revision
        if changed:  # the storage drops its copy whichever condition it reports
            self.cache.pop(achievement.achievement_id, None)
        if existing is not None:
            raise AlreadyUnlocked(existing)
        if changed:
            raise AchievementChanged(achievement.achievement_id)
        if payment is not None and (payment.user_id, payment.entry_id) in self.ledger:
            raise RewardPaidBefore(achievement.achievement_id, self.ledger[(payment.user_id, payment.entry_id)].xp)
        record = self.progress.get(unlock.user_id)
        if self.fail_next_requirements_guard:
            self.fail_next_requirements_guard = False
            raise RequirementsNotHeld(achievement.achievement_id)
        room = payment is None or (record or ProgressRecord("")).total_xp + payment.xp <= MAX_TOTAL_XP
        if not room or not self._guard_holds(unlock.user_id, record, achievement.requirements, start_level):
            raise RequirementsNotHeld(achievement.achievement_id)
        self.seed_unlock(unlock)
        self.unlock_stats[unlock.achievement_id] = self.unlock_stats.get(unlock.achievement_id, 0) + 1
        if payment is not None:
            self.pay(payment)
        if self.lose_next_record_answers:
            self.lose_next_record_answers -= 1
            raise AlreadyUnlocked(unlock)

    async def pay_owed_unlock_once(self, unlock: Unlock, marker: str) -> OwedPaid | None:
        key = (unlock.user_id, unlock.achievement_id)
        stored = self.unlocks.get(key)
        if stored is None or stored.xp_granted:
            return None
        payment = unlock.payment()
        earlier = self.ledger.get((payment.user_id, payment.entry_id))
        if earlier is not None:
            self.unlocks[key] = replace(stored, xp_granted=True)
            return OwedPaid(earlier.xp, by_this_call=False)
        if self.progress.get(unlock.user_id, ProgressRecord(unlock.user_id)).total_xp + payment.xp > MAX_TOTAL_XP:
            raise TotalXpLimitReached(unlock.user_id, payment.xp)
        self.unlocks[key] = replace(stored, xp_granted=True)
        self.pay(payment)
        return OwedPaid(payment.xp, by_this_call=True)

    async def counts_of(self, user_id: str, counters: tuple[str, ...]) -> dict[str, int]:
        return {c: self.counters.get((user_id, c), Counter(c)).awards for c in counters}

    async def auto_rules(self, fresh: bool = False) -> AutoRules:
        """`rules` when set (and not `fresh`), else the rules of the auto-unlock entries of `catalog`."""
        if self.rules is not None and not fresh:
            return self.rules
        return AutoRules.of(
            AutoRule(a.achievement_id, a.requirements, a.revision) for a in self.catalog.values() if a.auto_unlock
        )

    async def auto_standing(
        self, user_id: str, achievement_ids: tuple[str, ...]
    ) -> tuple[ProgressRecord, dict[str, Counter], dict[str, Unlock]]:
        counters = {c: held for (owner, c), held in self.counters.items() if owner == user_id}
        unlocks = {a: self.unlocks[(user_id, a)] for a in achievement_ids if (user_id, a) in self.unlocks}
        return await self.get_progress(user_id), counters, unlocks

    async def write_watches(
        self,
        user_id: str,
        watches: Watches,
        unwatched: tuple[str, ...],
        start_level: int,
        streak_marks: Mapping[str, tuple[int, str]] | None = None,
    ) -> bool:
        """counters.watch_writes' transaction: every watch only while its requirement is unmet
        (`awards < :t`, true on an item without awards); a stale watch removed only from an
        item that exists (`attribute_exists(counter)`): any condition failing writes nothing."""
        stale = [c for c in dict.fromkeys(unwatched) if c not in watches.counters]
        if len(watches.counters) + len(stale) > MAX_WATCHED_COUNTERS:
            return False
        self.watch_writes.append(watches)
        await _run_next(self.before_write_watches)
        record = self.progress.get(user_id, ProgressRecord(user_id))
        level = record.level if record.level is not None else start_level
        if any(self.counters.get((user_id, c), Counter(c)).awards >= at for c, at in watches.counters.items()):
            raise WatchOutdated()
        if any((user_id, c) not in self.counters for c in stale):
            raise WatchOutdated()
        if watches.xp_at is not None and record.total_xp >= watches.xp_at:
            raise WatchOutdated()
        if watches.level_at is not None and level >= watches.level_at:
            raise WatchOutdated()
        for c, at in watches.counters.items():
            if (user_id, c) not in self.counters:  # SET watch_at creates the item, without awards
                self.uncounted.add((user_id, c))
            self.counters[(user_id, c)] = replace(self.counters.get((user_id, c), Counter(c)), watch_at=at)
        for c in stale:
            self.counters[(user_id, c)] = replace(self.counters[(user_id, c)], watch_at=None)
        self.progress[user_id] = replace(
            record, auto_version=watches.fingerprint, watch_xp_at=watches.xp_at, watch_level_at=watches.level_at
        )
        return True

    async def forget_auto_watches(self, user_id: str) -> None:
        self.forgotten.append(user_id)
        if user_id in self.progress:
            self.progress[user_id] = replace(self.progress[user_id], auto_version="")

    async def count_player_once(self, user_id: str) -> None:
        self.count_player_calls.append(user_id)
        _count_player_once(self.progress, self.players, user_id)

    async def unlock_counts(self, achievement_ids: tuple[str, ...]) -> dict[str, int]:
        return {a: self.unlock_stats.get(a, 0) for a in achievement_ids}

    async def player_count(self) -> int:
        return len(self.players)

    async def start_level(self) -> int:
        self.start_level_calls += 1
        return self.start_level_value

    async def level_table_version(self) -> int:
        return self.version

    async def mark_level_check_deferred(self, user_id: str, entry_id: str) -> None:
        self.ledger[(user_id, entry_id)] = replace(self.ledger[(user_id, entry_id)], level_check_deferred=True)
        self.progress[user_id] = replace(self.progress.get(user_id, ProgressRecord(user_id)), deferred_check=entry_id)


def stored_progress(
    user_id: str, total_xp: int, level: int | None, next_level_xp: int | None = None, level_version: int | None = None
) -> ProgressRecord:
    """A progress item the XP service wrote (so it has a time), as the Levels service left it."""
    return ProgressRecord(
        user_id,
        total_xp=total_xp,
        level=level,
        updated_at="2024-01-01T00:00:00.000000Z",
        next_level_xp=next_level_xp,
        level_version=level_version,
    )
