"""Achievements that unlock themselves, the unit tier: the pure rules of
common.auto_unlock (fingerprint, watches, the test XP makes after an award),
check_achievement's activity counts, Achievements.unlock_due_achievements and
the progress and stats against FakeAchievementsRepository, and XpLedger
asking the Achievements service only when an auto unlock may be due."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from achievements_service.domain import Achievement, AchievementNotFound, RequirementsNotMet, Unlock, check_achievement
from achievements_service.use_cases import Achievements, AchievementStats, Criterion
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
    auto_unlock_may_be_due,
    award_counters,
    category_counter,
    unmet_requirements,
    watches_for,
)
from common.errors import ContentionExhausted, InvalidField, PreconditionFailed
from common.models import MAX_TOTAL_XP, LevelUpOutcome, ProgressRecord
from tests.unit.fakes import (
    FakeAchievementsRepository,
    FakeAutoUnlocker,
    FakeLevelChecker,
    FakeXpRepository,
    stored_progress,
)
from xp_service.domain import Activity
from xp_service.use_cases import XpLedger

USER = "user-1"
RUN = activity_counter("run")
SWIM = activity_counter("swim")
SPORT = category_counter("sport")


def runs(count: int) -> ActivityCount:
    return ActivityCount(activity_id="run", count=count)


def needs(*counts: ActivityCount, required: tuple[str, ...] = (), xp: int = 0, level: int = 0) -> Requirements:
    return Requirements(required, min_total_xp=xp, min_level=level, activity_counts=counts)


def rule(achievement_id: str, requirements: Requirements, revision: str = "r1") -> AutoRule:
    return AutoRule(achievement_id, requirements, revision)


def standing(total_xp: int = 0, level: int = 1, unlocked: tuple[str, ...] = (), **counts: int) -> Standing:
    return Standing(frozenset(unlocked), total_xp, level, {activity_counter(a): n for a, n in counts.items()})


# --- common.auto_unlock: the rules' fingerprint ---------------------------------------------


def test_no_rules_have_an_empty_fingerprint_and_nothing_counted_or_required() -> None:
    assert AutoRules.of([]) == AutoRules((), "", frozenset(), frozenset())


def test_the_fingerprint_names_the_ids_revisions_and_requirements_in_any_order() -> None:
    a, b = rule("a", needs(runs(3))), rule("b", needs(xp=100))
    fingerprint = AutoRules.of([a, b]).fingerprint

    assert len(fingerprint) == 16
    assert AutoRules.of([b, a]).fingerprint == fingerprint
    assert AutoRules.of([replace(a, revision="r2"), b]).fingerprint not in ("", fingerprint)
    assert AutoRules.of([replace(a, requirements=needs(runs(4))), b]).fingerprint not in ("", fingerprint)
    assert AutoRules.of([a]).fingerprint not in ("", fingerprint)
    assert AutoRules.of([a, b, rule("c", needs())]).fingerprint != fingerprint


def test_the_rules_list_every_counter_counted_and_every_achievement_required() -> None:
    rules = AutoRules.of(
        [
            rule("b", needs(runs(3), ActivityCount(category="sport", count=2), required=("x",))),
            rule("a", needs(ActivityCount(activity_id="swim", count=1), required=("x", "y"), xp=10)),
        ]
    )

    assert [r.achievement_id for r in rules.rules] == ["a", "b"]
    assert rules.counters == frozenset({RUN, SWIM, SPORT})
    assert rules.required == frozenset({"x", "y"})


def test_an_award_adds_to_its_activity_and_its_category_counters() -> None:
    assert (RUN, SPORT) == ("a#run", "c#sport")
    assert award_counters("run", "sport") == (RUN, SPORT)
    assert award_counters("run", "") == (RUN,)
    assert ActivityCount(category="sport", count=1).counter == SPORT


# --- common.auto_unlock: may an auto unlock be due? ----------------------------------------

RULES = AutoRules.of([rule("runner", needs(runs(3))), rule("veteran", needs(xp=1000, level=5))])
WATCHED = ProgressRecord(
    USER, total_xp=500, level=2, auto_version=RULES.fingerprint, watch_xp_at=1000, watch_level_at=5
)


@pytest.mark.parametrize(
    ("rules", "record", "level", "counters", "may_be_due"),
    [
        pytest.param(RULES, replace(WATCHED, auto_version=""), 2, {}, True, id="never evaluated"),
        pytest.param(RULES, replace(WATCHED, auto_version="0123456789abcdef"), 2, {}, True, id="other rules"),
        pytest.param(RULES, replace(WATCHED, total_xp=1000), 2, {}, True, id="xp watch reached"),
        pytest.param(RULES, replace(WATCHED, total_xp=999), 2, {}, False, id="xp watch not reached"),
        pytest.param(RULES, WATCHED, 5, {}, True, id="level watch reached by the level-up"),
        pytest.param(RULES, WATCHED, 4, {}, False, id="level watch not reached"),
        pytest.param(RULES, WATCHED, 2, {RUN: Counter(RUN, 3, 3)}, True, id="counter watch reached"),
        pytest.param(RULES, WATCHED, 2, {RUN: Counter(RUN, 2, 3)}, False, id="counter watch not reached"),
        pytest.param(RULES, WATCHED, 2, {RUN: Counter(RUN, 9, None)}, False, id="counter not watched"),
        pytest.param(
            RULES, replace(WATCHED, watch_xp_at=None, watch_level_at=None), 99, {}, False, id="nothing watched"
        ),
        pytest.param(AutoRules(), ProgressRecord(USER, 10**9, 99), 99, {RUN: Counter(RUN, 9, 1)}, False, id="no rules"),
    ],
)
def test_an_auto_unlock_may_be_due_only_when_a_watch_is_reached_or_the_rules_are_new(
    rules: AutoRules, record: ProgressRecord, level: int, counters: dict[str, Counter], may_be_due: bool
) -> None:
    assert auto_unlock_may_be_due(rules, record, level, counters) is may_be_due


# --- common.auto_unlock: the watches an evaluation leaves -----------------------------------


def test_watches_watch_one_unmet_requirement_per_rule_the_user_lacks_counts_first() -> None:
    rules = [
        rule("runner", needs(runs(5), xp=10_000, level=50)),  # a count first
        rule("runner-2", needs(runs(3))),  # the same counter: the lowest count
        rule("runner-3", needs(runs(8))),
        rule("sporty", needs(ActivityCount(category="sport", count=2))),
        rule("rich", needs(required=("x",), xp=700, level=9)),  # XP before level
        rule("richer", needs(xp=500)),  # the lowest XP
        rule("high", needs(xp=10, level=7)),  # XP met: the level
        rule("higher", needs(level=6)),  # the lowest level
        rule("held", needs(runs(100), xp=10**6)),  # held: nothing
        rule("needs-x", needs(runs(1), required=("x",), xp=10, level=1)),  # only an achievement missing: nothing
        rule("met", needs(runs(1), xp=10)),  # all met (its unlock refused): nothing
    ]

    watches = watches_for(rules, frozenset({"held"}), standing(100, 2, run=1), "fp")

    assert watches == Watches("fp", xp_at=500, level_at=6, counters={RUN: 3, SPORT: 2})


def test_watches_with_nothing_lacking_leave_only_the_fingerprint() -> None:
    rules = [rule("a", needs(runs(3))), rule("b", needs(required=("a",)))]

    assert watches_for(rules, frozenset({"a", "b"}), standing(), "fp") == Watches("fp", None, None, {})
    assert watches_for([], frozenset(), standing(), "") == Watches("", None, None, {})


def test_watches_watch_the_first_count_not_met_of_a_rule() -> None:
    rules = [rule("a", needs(runs(3), ActivityCount(activity_id="swim", count=2)))]

    assert watches_for(rules, frozenset(), standing(run=3, swim=1), "fp").counters == {SWIM: 2}
    assert watches_for(rules, frozenset(), standing(run=1, swim=1), "fp").counters == {RUN: 3}


# --- common.auto_unlock: unmet requirements ---------------------------------------------------


def test_unmet_requirements_list_each_count_with_its_subject_and_what_the_user_has() -> None:
    requirements = needs(
        runs(3),
        ActivityCount(category="sport", count=2),
        ActivityCount(activity_id="swim", count=1),
        required=("first", "second"),
        xp=100,
        level=3,
    )

    unmet = unmet_requirements(requirements, standing(40, 2, ("second",), run=1, swim=1))

    assert unmet == [
        ("required_achievements/first", "achievement 'first' must be unlocked first"),
        ("min_total_xp", "needs 100 total XP, has 40"),
        ("min_level", "needs level 3, is level 2"),
        ("activity_counts/run", "needs 3 awards of activity 'run', has 1"),
        ("activity_counts/sport", "needs 2 awards of category 'sport', has 0"),
    ]
    assert unmet_requirements(requirements, standing(100, 3, ("first", "second"), run=3, swim=5)) == [
        ("activity_counts/sport", "needs 2 awards of category 'sport', has 0")
    ]


def test_an_unmet_count_names_a_long_id_shortened() -> None:
    long_id = "r" * 40

    [(subject, description)] = unmet_requirements(needs(ActivityCount(activity_id=long_id, count=2)), standing())

    assert subject == "activity_counts/" + "r" * 32 + "…"
    assert description == f"needs 2 awards of activity {long_id!r}, has 0"


# --- check_achievement: activity counts -----------------------------------------------------------


def with_counts(*counts: ActivityCount) -> Achievement:
    return Achievement("a", "A", requirements=Requirements(activity_counts=counts))


@pytest.mark.parametrize(
    ("counts", "field", "rule_text"),
    [
        pytest.param(
            tuple(ActivityCount(activity_id=f"x{i}", count=1) for i in range(11)),
            "achievement.requirements.activity_counts",
            "must list at most 10 counts (got 11)",
            id="more than 10",
        ),
        pytest.param(
            (runs(1), ActivityCount(activity_id="swim", category="water", count=1)),
            "achievement.requirements.activity_counts[1]",
            "set exactly one of activity_id and category",
            id="both set",
        ),
        pytest.param(
            (ActivityCount(count=1),),
            "achievement.requirements.activity_counts[0]",
            "set exactly one of activity_id and category",
            id="neither set",
        ),
        pytest.param(
            (runs(1), runs(2), runs(0)),
            "achievement.requirements.activity_counts[2].count",
            "must be between 1 and 1000000000 (got 0)",
            id="count 0",
        ),
        pytest.param(
            (runs(-1),),
            "achievement.requirements.activity_counts[0].count",
            "must be between 1 and 1000000000 (got -1)",
            id="negative count",
        ),
        pytest.param(
            (runs(10**9 + 1),),
            "achievement.requirements.activity_counts[0].count",
            "must be between 1 and 1000000000 (got 1000000001)",
            id="count past 10^9",
        ),
    ],
)
def test_each_broken_activity_count_rule_names_its_field(
    counts: tuple[ActivityCount, ...], field: str, rule_text: str
) -> None:
    with pytest.raises(InvalidField) as refused:
        check_achievement(with_counts(*counts))

    assert (refused.value.field, refused.value.rule) == (field, rule_text)


def test_counts_at_the_limits_are_accepted() -> None:
    counts = tuple(ActivityCount(activity_id=f"x{i}", count=1) for i in range(9)) + (runs(10**9),)

    assert check_achievement(with_counts(*counts)).requirements.activity_counts == counts


def test_counts_of_one_counter_collapse_to_the_highest_in_first_seen_order() -> None:
    checked = check_achievement(
        with_counts(
            runs(3),
            ActivityCount(category="sport", count=2),
            runs(5),
            ActivityCount(category="run", count=1),  # a category, not the activity
            runs(4),
            ActivityCount(category="sport", count=1),
        )
    )

    assert checked.requirements.activity_counts == (
        runs(5),
        ActivityCount(category="sport", count=2),
        ActivityCount(category="run", count=1),
    )


# --- Achievements.unlock_due_achievements ------------------------------------------------------

# A user checked at level 1 with the next level far: no reward asks the Levels service.
CHECKED = stored_progress(USER, 60, 1, next_level_xp=10**6, level_version=1)


class Setup:
    def __init__(self, achievements: tuple[Achievement, ...], progress: ProgressRecord | None) -> None:
        self.repository = FakeAchievementsRepository(start_level=1)
        self.catalog = {a.achievement_id: self.repository.seed_achievement(a) for a in achievements}
        if progress is not None:
            self.repository.seed_progress(progress)
        self.levels = FakeLevelChecker()
        self.achievements = Achievements(self.repository, self.levels)

    def due(self, trigger_id: str = "req#r1", only: tuple[str, ...] = (), dry_run: bool = False) -> DueUnlocks:
        return asyncio.run(self.achievements.unlock_due_achievements(USER, trigger_id, only, dry_run))

    def rules(self) -> AutoRules:
        return asyncio.run(self.repository.auto_rules())

    def paid(self) -> dict[str, int]:
        return {entry_id: e.xp for (_, entry_id), e in self.repository.ledger.items()}

    def unlocked(self) -> dict[str, str]:
        """Each unlock and its trigger."""
        return {a: u.trigger for (_, a), u in self.repository.unlocks.items()}

    def counter(self, counter: str) -> Counter | None:
        return self.repository.counters.get((USER, counter))


def auto(achievement_id: str, requirements: Requirements, xp_reward: int = 0) -> Achievement:
    return Achievement(
        achievement_id, f"Name of {achievement_id}", xp_reward=xp_reward, requirements=requirements, auto_unlock=True
    )


def setup(*achievements: Achievement, progress: ProgressRecord | None = CHECKED, **counts: int) -> Setup:
    s = Setup(achievements, progress)
    for activity_id, awards in counts.items():
        s.repository.count(USER, activity_counter(activity_id), awards)
    return s


TIERS = (
    auto("bronze", needs(runs(1)), 10),
    auto("silver", needs(runs(3)), 20),
    auto("gold", needs(runs(5)), 30),
)


def test_tiers_unlock_at_their_counts_and_the_next_tier_is_watched() -> None:
    s = setup(*TIERS, run=3)

    assert s.due() == DueUnlocks(("bronze", "silver"), 90, 1)
    assert s.unlocked() == {"bronze": "req#r1", "silver": "req#r1"}
    assert s.paid() == {"ach#bronze": 10, "ach#silver": 20}
    assert s.counter(RUN) == Counter(RUN, 3, 5)
    assert s.repository.progress[USER].auto_version == s.rules().fingerprint

    s.repository.count(USER, RUN, 5)

    assert s.due("req#r2") == DueUnlocks(("gold",), 120, 1)
    assert s.unlocked()["gold"] == "req#r2"
    assert s.counter(RUN) == Counter(RUN, 5, None)  # nothing left to watch on it
    assert s.repository.unlock_stats == {"bronze": 1, "silver": 1, "gold": 1}


def test_a_count_below_every_tier_unlocks_nothing() -> None:
    s = setup(*TIERS, run=0)

    assert s.due() == DueUnlocks((), 60, 1)
    assert s.unlocked() == {} and s.paid() == {}
    assert s.counter(RUN) == Counter(RUN, 0, 1)


CHAIN = (
    auto("runner", needs(runs(2)), 100),  # a count
    auto("centurion", needs(xp=150), 50),  # reached by runner's reward
    auto("both", needs(required=("runner", "centurion")), 10),  # completed by the two unlocks
)


def test_a_chain_unlocks_each_link_once_in_one_call_and_pays_each_once() -> None:
    s = setup(*CHAIN, run=2)

    outcome = s.due()

    assert outcome == DueUnlocks(("both", "centurion", "runner"), 220, 1)
    assert s.unlocked() == {"runner": "req#r1", "centurion": "req#r1", "both": "req#r1"}
    assert s.paid() == {"ach#runner": 100, "ach#centurion": 50, "ach#both": 10}
    assert s.repository.progress[USER].total_xp == 220
    assert [u.achievement_id for u, _ in s.repository.record_calls] == ["runner", "centurion", "both"]
    assert s.levels.calls == []
    assert s.repository.watch_writes == [Watches(s.rules().fingerprint, None, None, {})]


def test_a_repeat_of_the_trigger_lists_the_same_unlocks_and_pays_nothing() -> None:
    s = setup(*CHAIN, run=2)
    first = s.due()
    calls = len(s.repository.record_calls)

    assert s.due() == first == DueUnlocks(("both", "centurion", "runner"), 220, 1)
    assert len(s.repository.record_calls) == calls  # nothing was due: no unlock attempted
    assert s.paid() == {"ach#runner": 100, "ach#centurion": 50, "ach#both": 10}
    assert s.repository.progress[USER].total_xp == 220


def test_another_trigger_lists_nothing_it_did_not_unlock() -> None:
    s = setup(*CHAIN, run=2)
    s.due("req#r1")

    assert s.due("req#r2") == DueUnlocks((), 220, 1)
    assert s.repository.progress[USER].total_xp == 220


def test_a_dry_run_lists_what_is_due_now_and_writes_nothing() -> None:
    s = setup(*CHAIN, run=2)

    assert s.due(dry_run=True) == DueUnlocks((), 60, 1, ("runner",))
    assert s.unlocked() == {} and s.paid() == {}
    assert s.repository.record_calls == [] and s.repository.watch_writes == []
    assert s.repository.progress[USER] == CHECKED
    assert s.counter(RUN) == Counter(RUN, 2, None)


def test_only_restricts_what_is_looked_at_until_it_unlocks_something() -> None:
    s = setup(*CHAIN, progress=replace(CHECKED, total_xp=100), run=1)

    assert s.due(only=("centurion",)) == DueUnlocks((), 100, 1)
    assert s.unlocked() == {} and s.repository.watch_writes == []
    assert s.repository.progress[USER].auto_version == ""


def test_only_follows_the_chain_its_unlocks_start_and_nothing_else() -> None:
    s = setup(*CHAIN, progress=replace(CHECKED, total_xp=100), run=2)

    # runner (asked for), then what its reward and its record complete: centurion (XP), both (required).
    assert s.due(only=("runner",)) == DueUnlocks(("both", "centurion", "runner"), 260, 1)
    assert s.paid() == {"ach#runner": 100, "ach#centurion": 50, "ach#both": 10}
    assert s.repository.watch_writes == []


def test_only_leaves_a_rule_its_unlocks_cannot_complete() -> None:
    bystander = auto("swimmer", needs(ActivityCount(activity_id="swim", count=1)), 5)
    s = setup(*CHAIN, bystander, progress=replace(CHECKED, total_xp=100), run=2)
    s.repository.count(USER, "a#swim", 1)  # due all along, but not asked for, and no unlock completes it

    assert "swimmer" not in s.due(only=("runner",)).unlocked
    assert "swimmer" not in s.unlocked()


def test_an_award_landing_before_the_watches_are_written_evaluates_again_and_unlocks() -> None:
    s = setup(*TIERS, run=2)

    async def another_award_reaches_the_watch() -> None:
        s.repository.count(USER, RUN, 3)

    s.repository.before_write_watches.append(another_award_reaches_the_watch)

    assert s.due() == DueUnlocks(("bronze", "silver"), 90, 1)
    fingerprint = s.rules().fingerprint
    assert s.repository.watch_writes == [
        Watches(fingerprint, None, None, {RUN: 3}),
        Watches(fingerprint, None, None, {RUN: 5}),
    ]
    assert s.counter(RUN) == Counter(RUN, 3, 5)
    assert s.repository.progress[USER].auto_version == fingerprint


def test_the_watches_written_name_the_rules_and_the_lowest_threshold_of_each() -> None:
    s = setup(
        auto("runner", needs(runs(3))),
        auto("marathon", needs(runs(5))),
        auto("swimmer", needs(ActivityCount(activity_id="swim", count=2))),
        auto("rich", needs(xp=500)),
        auto("high", needs(level=4)),
        auto("after-runner", needs(required=("runner",))),
        run=1,
    )
    s.repository.counters[(USER, "a#old")] = Counter("a#old", 2, 7)  # a watch no rule needs any more

    assert s.due() == DueUnlocks((), 60, 1)
    assert s.counter(RUN) == Counter(RUN, 1, 3)
    assert s.counter(SWIM) == Counter(SWIM, 0, 2)
    assert s.counter("a#old") == Counter("a#old", 2, None)
    record = s.repository.progress[USER]
    assert (record.auto_version, record.watch_xp_at, record.watch_level_at) == (s.rules().fingerprint, 500, 4)
    assert (record.total_xp, record.level) == (60, 1)


def test_an_entry_no_longer_auto_unlock_in_the_catalog_copy_is_not_unlocked() -> None:
    s = setup(auto("runner", needs(runs(1)), 100), run=1)
    stale_rules = s.rules()  # this process read the rules while it was auto-unlock
    s.repository.seed_achievement(replace(s.catalog["runner"], auto_unlock=False))
    s.repository.rules = stale_rules

    assert s.due() == DueUnlocks((), 60, 1)
    assert s.unlocked() == {} and s.paid() == {}


def test_an_entry_made_manual_only_since_the_copy_was_read_is_not_unlocked() -> None:
    s = setup(auto("runner", needs(runs(1)), 100), run=1)
    asyncio.run(s.repository.cached_achievement("runner"))  # this process's copy: still auto-unlock
    s.repository.rules = s.rules()  # and its rules, read at the same time
    s.repository.seed_achievement(replace(s.catalog["runner"], auto_unlock=False))  # another replica's put

    assert s.due() == DueUnlocks((), 60, 1)
    assert s.unlocked() == {} and s.paid() == {}


def test_an_entry_made_auto_unlock_since_the_copy_was_read_is_unlocked() -> None:
    s = setup(replace(auto("runner", needs(runs(1)), 100), auto_unlock=False), run=1)
    asyncio.run(s.repository.cached_achievement("runner"))  # e.g. read by GetAchievementStats
    s.catalog["runner"] = s.repository.seed_achievement(replace(s.catalog["runner"], auto_unlock=True))

    assert s.rules().rules[0].revision == s.catalog["runner"].revision
    assert s.due() == DueUnlocks(("runner",), 160, 1)


def test_a_watch_on_a_counter_never_awarded_is_dropped_when_no_rule_needs_it() -> None:
    s = setup(auto("runner", needs(runs(3))), run=0)
    s.repository.counters.clear()  # the user never ran
    s.due("req#r1")
    assert s.counter(RUN) == Counter(RUN, 0, 3)
    assert (USER, RUN) in s.repository.uncounted  # the watch created the item, without awards
    s.repository.seed_achievement(
        replace(s.catalog["runner"], requirements=needs(ActivityCount(activity_id="swim", count=3)))
    )
    del s.repository.watch_writes[:]

    assert s.due("req#r2") == DueUnlocks((), 60, 1)
    assert s.repository.watch_writes == [Watches(s.rules().fingerprint, None, None, {SWIM: 3})]  # not 20
    assert s.repository.progress[USER].auto_version == s.rules().fingerprint
    assert (s.counter(RUN), s.counter(SWIM)) == (Counter(RUN, 0, None), Counter(SWIM, 0, 3))


def test_a_counted_watch_no_rule_needs_any_more_is_dropped_under_the_new_rules() -> None:
    s = setup(auto("runner", needs(runs(3))), run=1)
    s.due("req#r1")
    s.repository.seed_achievement(
        replace(s.catalog["runner"], requirements=needs(ActivityCount(activity_id="swim", count=3)))
    )

    assert s.due("req#r2") == DueUnlocks((), 60, 1)
    assert s.repository.progress[USER].auto_version == s.rules().fingerprint
    assert (s.counter(RUN), s.counter(SWIM)) == (Counter(RUN, 1, None), Counter(SWIM, 0, 3))


def test_a_due_unlock_whose_reward_has_no_room_is_not_made_and_not_watched() -> None:
    s = setup(auto("runner", needs(runs(1)), 100), progress=replace(CHECKED, total_xp=MAX_TOTAL_XP - 10), run=1)

    assert s.due() == DueUnlocks((), MAX_TOTAL_XP - 10, 1)
    assert s.unlocked() == {}
    assert s.repository.watch_writes == [Watches(s.rules().fingerprint, None, None, {})]


# --- Achievements.unlock_achievement: what a manual unlock completes --------------------------------

FIRST = Achievement("first", "First steps", xp_reward=50)
AFTER_FIRST = auto("after-first", needs(required=("first",)), 20)


def unlock(s: Setup, achievement_id: str, request_id: str) -> tuple[bool, int, int, tuple[str, ...]]:
    outcome = asyncio.run(s.achievements.unlock_achievement(USER, achievement_id, request_id))
    return outcome.already_unlocked, outcome.xp_awarded, outcome.total_xp, outcome.also_unlocked


def test_a_manual_unlock_lists_the_auto_unlock_it_completed_and_a_repeat_lists_it_again() -> None:
    s = setup(FIRST, AFTER_FIRST, TIERS[0])
    s.due("req#r0")  # evaluated: after-first, missing only `first`, is not watched
    assert s.repository.progress[USER].watch_xp_at is None

    assert unlock(s, "first", "u1") == (False, 50, 130, ("after-first",))
    assert s.unlocked() == {"first": "", "after-first": "unlock#first"}
    assert s.paid() == {"ach#first": 50, "ach#after-first": 20}

    assert unlock(s, "first", "u2") == (True, 0, 130, ("after-first",))
    assert s.paid() == {"ach#first": 50, "ach#after-first": 20}
    assert s.repository.progress[USER].total_xp == 130


def test_a_manual_unlock_without_reward_evaluates_the_rules_that_require_it() -> None:
    badge = Achievement("badge", "Badge")
    s = setup(badge, auto("after-badge", needs(required=("badge",)), 20))
    s.due("req#r0")

    assert unlock(s, "badge", "u1") == (False, 0, 80, ("after-badge",))
    assert s.paid() == {"ach#after-badge": 20}


def test_a_manual_unlock_whose_reward_reaches_an_xp_watch_lists_what_it_completed() -> None:
    s = setup(FIRST, auto("rich", needs(xp=100), 5))
    s.due("req#r0")  # watches the XP at 100
    assert s.repository.progress[USER].watch_xp_at == 100

    assert unlock(s, "first", "u1") == (False, 50, 115, ("rich",))


def test_a_manual_unlock_completing_nothing_writes_no_watches() -> None:
    s = setup(FIRST, auto("rich", needs(xp=1000), 5))
    s.due("req#r0")
    writes = len(s.repository.watch_writes)

    assert unlock(s, "first", "u1") == (False, 50, 110, ())
    assert len(s.repository.watch_writes) == writes


def test_a_manual_unlock_of_unmet_counts_is_refused_with_each_count() -> None:
    s = setup(
        Achievement("marathon", "Marathon", requirements=needs(runs(3), ActivityCount(category="sport", count=1))),
        run=1,
    )

    with pytest.raises(RequirementsNotMet) as refused:
        unlock(s, "marathon", "u1")

    assert refused.value.violations == [
        ("activity_counts/run", "needs 3 awards of activity 'run', has 1"),
        ("activity_counts/sport", "needs 1 awards of category 'sport', has 0"),
    ]
    assert s.unlocked() == {}


# --- progress and stats ----------------------------------------------------------------------------


SECRET = Achievement(
    "secret",
    "Secret",
    "Find the cave",
    hidden=True,
    requirements=needs(runs(4), required=("first",), xp=200, level=2),
)
OPEN_SECRET = Achievement("open-secret", "Open secret", "Found", hidden=True)
PLAIN = Achievement("plain", "Plain")


def progress_setup() -> Setup:
    s = setup(FIRST, SECRET, OPEN_SECRET, PLAIN, progress=replace(CHECKED, total_xp=100), run=2)
    for achievement_id in ("first", "open-secret"):
        s.repository.seed_unlock(Unlock(USER, achievement_id, "2024-01-02T00:00:00.000000Z", 0, True))
    s.repository.unlock_stats.update({"first": 3, "secret": 1, "open-secret": 6})
    s.repository.players.update({"a", "b", "c", "d"})
    return s


def progress_of(s: Setup, reveal_hidden: bool = False) -> dict[str, tuple[str, str, bool, float, float]]:
    views, token = asyncio.run(s.achievements.achievement_progress(USER, 0, "", reveal_hidden))
    assert token == ""
    return {
        v.achievement.achievement_id: (
            v.achievement.name,
            v.achievement.description,
            v.unlock is not None,
            v.percent,
            v.unlock_rate,
        )
        for v in views
    }


def test_progress_withholds_a_hidden_achievement_not_unlocked_and_shows_an_unlocked_one() -> None:
    assert progress_of(progress_setup()) == {
        "first": ("First steps", "", True, 100.0, 0.75),
        "open-secret": ("Open secret", "Found", True, 100.0, 1.0),  # 6 of 4 players: capped
        "plain": ("Plain", "", False, 100.0, 0.0),  # no requirement
        "secret": ("", "", False, 62.5, 0.25),
    }


def test_progress_reveals_a_hidden_achievement_when_asked() -> None:
    assert progress_of(progress_setup(), reveal_hidden=True)["secret"] == ("Secret", "Find the cave", False, 62.5, 0.25)


def test_progress_lists_one_criterion_per_requirement_with_its_values() -> None:
    views, _ = asyncio.run(progress_setup().achievements.achievement_progress(USER, 0, "", True))
    [secret] = [v for v in views if v.achievement.achievement_id == "secret"]

    assert secret.criteria == (
        Criterion("4 awards of activity 'run'", 2, 4),
        Criterion("total XP", 100, 200),
        Criterion("level", 1, 2),
        Criterion("achievement 'first' unlocked", 1, 1),
    )
    assert secret.achievement.requirements == SECRET.requirements


def test_a_hidden_achievement_not_unlocked_keeps_its_numbers_but_not_what_it_asks() -> None:
    views, _ = asyncio.run(progress_setup().achievements.achievement_progress(USER, 0, "", False))
    [secret] = [v for v in views if v.achievement.achievement_id == "secret"]

    assert [(c.description, c.current, c.target) for c in secret.criteria] == [
        ("hidden", 2, 4),
        ("hidden", 100, 200),
        ("hidden", 1, 2),
        ("hidden", 1, 1),
    ]
    assert secret.achievement.requirements == Requirements()


def test_progress_of_a_user_with_nothing_is_zero_on_each_criterion() -> None:
    s = setup(SECRET, progress=None)
    s.repository.start_level_value = 0

    views, _ = asyncio.run(s.achievements.achievement_progress(USER, 0, "", True))

    assert [(v.percent, v.criteria, v.unlock_rate) for v in views] == [
        (
            0.0,
            (
                Criterion("4 awards of activity 'run'", 0, 4),
                Criterion("total XP", 0, 200),
                Criterion("level", 0, 2),
                Criterion("achievement 'first' unlocked", 0, 1),
            ),
            0.0,
        )
    ]


def test_a_criterion_past_its_target_counts_as_met_only() -> None:
    s = setup(auto("runner", needs(runs(2), xp=1000)), progress=replace(CHECKED, total_xp=250), run=9)

    [view], _ = asyncio.run(s.achievements.achievement_progress(USER, 0, "", False))

    assert view.criteria == (Criterion("2 awards of activity 'run'", 9, 2), Criterion("total XP", 250, 1000))
    assert view.percent == 62.5  # (1 + 0.25) / 2


@pytest.mark.parametrize(
    ("unlocked", "players", "rate"),
    [
        pytest.param(0, 0, 0.0, id="no players"),
        pytest.param(3, 0, 0.0, id="unlocks counted before their players"),
        pytest.param(1, 4, 0.25, id="a share"),
        pytest.param(5, 4, 1.0, id="capped at 1"),
    ],
)
def test_stats_give_the_unlock_rate_of_all_players(unlocked: int, players: int, rate: float) -> None:
    s = setup(FIRST)
    s.repository.unlock_stats["first"] = unlocked
    s.repository.players.update(f"p{i}" for i in range(players))

    stats = asyncio.run(s.achievements.achievement_stats("first"))

    assert stats == AchievementStats("first", unlocked, players)
    assert stats.unlock_rate == rate


def test_stats_of_an_achievement_not_in_the_catalog_are_not_found() -> None:
    with pytest.raises(AchievementNotFound):
        asyncio.run(setup(FIRST).achievements.achievement_stats("nope"))


def test_an_unlock_is_counted_in_its_stats_and_its_player_once() -> None:
    s = setup(*TIERS, progress=None, run=3)

    s.due()
    s.due("req#r2")

    assert s.repository.unlock_stats == {"bronze": 1, "silver": 1}
    assert s.repository.players == {USER}
    assert s.repository.count_player_calls == [USER]  # the second reward found the user counted


# --- XpLedger: when the Achievements service is asked --------------------------------------------

RUN_ACTIVITY = Activity("run", "Run", "Run 5 km", "sport", 10)
SWIM_ACTIVITY = Activity("swim", "Swim", "Swim 1 km", "sport", 30)
XP_RULES = AutoRules.of([rule("runner", needs(runs(3))), rule("rich", needs(xp=1000))])
ANSWER = DueUnlocks(("runner",), 500, 3)


def xp_ledger(
    rules: AutoRules = XP_RULES,
    answer: DueUnlocks | None = ANSWER,
    *,
    auto_version: str | None = None,
    level_up: LevelUpOutcome | None = None,
) -> tuple[XpLedger, FakeXpRepository, FakeAutoUnlocker]:
    repository = FakeXpRepository(start_level=1, level_table_version=1)
    repository.seed_activity(RUN_ACTIVITY)
    repository.seed_activity(SWIM_ACTIVITY)
    repository.rules = rules
    version = rules.fingerprint if auto_version is None else auto_version
    repository.seed_progress(
        replace(
            stored_progress(USER, 50, 1, next_level_xp=10**6, level_version=1), auto_version=version, watch_xp_at=1000
        )
    )
    unlocker = FakeAutoUnlocker(answer)
    return XpLedger(repository, FakeLevelChecker(level_up), unlocker), repository, unlocker


def award(xp: XpLedger, activity_id: str = "run", request_id: str = "r1") -> tuple[int, int, tuple[str, ...], bool]:
    outcome = asyncio.run(xp.award_xp(USER, activity_id, request_id))
    return outcome.total_xp, outcome.level, outcome.unlocked_achievements, outcome.duplicate


def test_with_no_rules_the_achievements_service_is_never_asked_nor_a_counter_read() -> None:
    xp, repository, unlocker = xp_ledger(AutoRules(), auto_version="")

    assert award(xp) == (60, 1, (), False)
    assert award(xp) == (60, 1, (), True)  # even a repeat
    assert asyncio.run(xp.grant_xp(USER, 5000, "gift", "g1")).unlocked_achievements == ()
    assert unlocker.calls == []
    assert repository.counter_reads == [(), (), ()]
    assert repository.counters[(USER, RUN)] == Counter(RUN, 1, None)  # counted all the same


def test_with_no_watch_reached_the_service_is_not_asked_and_only_counted_counters_are_read() -> None:
    xp, repository, unlocker = xp_ledger()
    repository.counters[(USER, RUN)] = Counter(RUN, 1, 3)

    assert award(xp, "run", "r1") == (60, 1, (), False)
    assert award(xp, "swim", "r2") == (90, 1, (), False)

    assert unlocker.calls == []
    assert repository.counter_reads == [(RUN,), ()]  # no rule counts c#sport or a#swim
    assert repository.counters[(USER, RUN)] == Counter(RUN, 2, 3)


def test_a_counter_watch_reached_asks_with_the_entry_and_reports_the_answer() -> None:
    xp, repository, unlocker = xp_ledger()
    repository.counters[(USER, RUN)] = Counter(RUN, 2, 3)

    assert award(xp) == (500, 3, ("runner",), False)
    assert unlocker.calls == [(USER, "req#r1")]


def test_an_answer_below_the_award_keeps_the_awards_totals() -> None:
    xp, repository, unlocker = xp_ledger(answer=DueUnlocks((), 10, 0))
    repository.counters[(USER, RUN)] = Counter(RUN, 2, 3)

    assert award(xp) == (60, 1, (), False)
    assert unlocker.calls == [(USER, "req#r1")]


def test_an_xp_watch_reached_by_a_grant_asks_with_the_grants_entry() -> None:
    xp, _, unlocker = xp_ledger()

    outcome = asyncio.run(xp.grant_xp(USER, 950, "gift", "g1"))

    assert (outcome.total_xp, outcome.level, outcome.unlocked_achievements) == (
        1000,
        3,
        ("runner",),
    )  # the higher total
    assert unlocker.calls == [(USER, "req#g1")]


def test_a_level_watch_reached_by_the_level_up_asks() -> None:
    level_2 = LevelUpOutcome(USER, True, 1, 2, 60, (), 1000)
    xp, repository, unlocker = xp_ledger(AutoRules.of([rule("high", needs(level=2))]), level_up=level_2)
    repository.progress[USER] = replace(repository.progress[USER], next_level_xp=55, watch_xp_at=None, watch_level_at=2)

    assert award(xp) == (500, 3, ("runner",), False)
    assert unlocker.calls == [(USER, "req#r1")]


def test_a_level_up_asks_when_a_rule_asks_for_a_level() -> None:
    # The evaluation may have written its level watch after this award's read: the read cannot tell.
    level_2 = LevelUpOutcome(USER, True, 1, 2, 60, (), 1000)
    xp, repository, unlocker = xp_ledger(AutoRules.of([rule("high", needs(level=3))]), level_up=level_2)
    repository.progress[USER] = replace(repository.progress[USER], next_level_xp=55, watch_xp_at=None, watch_level_at=3)

    award(xp)
    assert unlocker.calls == [(USER, "req#r1")]


def test_a_level_up_does_not_ask_when_no_rule_asks_for_a_level() -> None:
    level_2 = LevelUpOutcome(USER, True, 1, 2, 60, (), 1000)
    xp, repository, unlocker = xp_ledger(AutoRules.of([rule("high", needs(xp=1000))]), level_up=level_2)
    repository.progress[USER] = replace(repository.progress[USER], next_level_xp=55, watch_xp_at=1000)

    assert award(xp) == (60, 2, (), False)
    assert unlocker.calls == []


def test_an_ask_first_makes_any_next_award_ask() -> None:
    xp, repository, unlocker = xp_ledger(answer=None)
    repository.counters[(USER, RUN)] = Counter(RUN, 2, 3)

    award(xp)
    assert unlocker.calls == [(USER, "req#r1")]
    assert repository.progress[USER].auto_version == ""


def test_rules_the_user_was_never_evaluated_under_ask() -> None:
    xp, _, unlocker = xp_ledger(auto_version="0123456789abcdef")

    assert award(xp) == (500, 3, ("runner",), False)
    assert unlocker.calls == [(USER, "req#r1")]


def test_an_unlocker_that_cannot_answer_leaves_the_awards_own_totals() -> None:
    xp, repository, unlocker = xp_ledger(answer=None)
    repository.counters[(USER, RUN)] = Counter(RUN, 2, 3)

    assert award(xp) == (60, 1, (), False)
    assert unlocker.calls == [(USER, "req#r1")]
    assert repository.progress[USER].total_xp == 60


def test_a_repeat_always_asks_to_list_what_its_original_unlocked() -> None:
    xp, repository, unlocker = xp_ledger()

    assert award(xp) == (60, 1, (), False)
    assert unlocker.calls == []
    assert award(xp) == (500, 3, ("runner",), True)
    assert unlocker.calls == [(USER, "req#r1")]
    assert repository.counters[(USER, RUN)] == Counter(RUN, 1, None)  # the repeat counted nothing


def test_a_repeat_of_an_answered_evaluation_only_lists_and_leaves_the_watches() -> None:
    xp, repository, unlocker = xp_ledger()
    award(xp)
    version = repository.progress[USER].auto_version

    award(xp)
    # Nothing evaluated: an unlock due since the first answer goes to the write that made it due.
    assert unlocker.replay_only == [True]
    assert repository.progress[USER].auto_version == version


def test_an_evaluation_achievements_could_not_answer_is_marked_and_its_repeats_evaluate() -> None:
    xp, repository, unlocker = xp_ledger(answer=None)
    repository.counters[(USER, RUN)] = Counter(RUN, 2, 3)

    assert award(xp) == (60, 1, (), False)
    assert repository.ledger[(USER, "req#r1")].unlocks_deferred is True
    unlocker.answer = DueUnlocks(("runner",), 500, 3)
    assert award(xp) == (500, 3, ("runner",), True)
    assert unlocker.replay_only == [False, False]


def test_the_repeat_lists_what_its_trigger_recorded_and_evaluates_nothing() -> None:
    s = setup(*CHAIN, run=2)
    first = s.due("req#r1")
    s.repository.counters[(USER, RUN)] = Counter(RUN, 50)  # more is due now, to the write that made it due

    assert asyncio.run(s.achievements.unlocks_under_trigger(USER, "req#r1")) == first
    assert asyncio.run(s.achievements.unlocks_under_trigger(USER, "req#r2")).unlocked == ()
    assert s.unlocked() == {"runner": "req#r1", "centurion": "req#r1", "both": "req#r1"}


def test_the_player_is_counted_once() -> None:
    xp, repository, _ = xp_ledger()

    award(xp, "run", "r1")
    award(xp, "swim", "r2")

    assert repository.players == {USER}
    assert repository.count_player_calls == [USER]
    assert repository.progress[USER].player_counted is True


def test_ids_asked_for_that_the_rules_lack_are_read_again_then_refused() -> None:
    s = setup(auto("runner", needs(runs(1)), 100), run=1)
    s.repository.rules = AutoRules()  # this process read the rules before "runner" was put
    assert asyncio.run(s.achievements.unlock_due_achievements(USER, "backfill#1", ("runner",))).unlocked == ("runner",)
    with pytest.raises(PreconditionFailed) as refused:
        asyncio.run(s.achievements.unlock_due_achievements(USER, "backfill#1", ("runner", "nope")))
    assert "achievement_ids[1]" in str(refused.value)


def test_an_evaluation_that_meets_contention_fails_and_leaves_the_user_to_be_asked_again() -> None:
    s = setup(*TIERS, run=2)

    async def contended() -> None:
        raise ContentionExhausted("too many concurrent writes to this user")

    s.repository.before_write_watches.append(contended)
    with pytest.raises(ContentionExhausted):  # its caller (XP, a backfill) asks again; nothing is lost
        s.due()
    assert s.unlocked() == {"bronze": "req#r1"} and s.repository.watch_writes[-1].counters == {RUN: 3}
    assert s.repository.progress[USER].auto_version == ""  # the watches were not written


def test_a_manual_unlock_whose_evaluation_meets_contention_still_answers_its_unlock() -> None:
    s = setup(Achievement("manual", "Manual", xp_reward=20), auto("after", needs(required=("manual",)), 5), run=0)

    async def contended() -> None:
        raise ContentionExhausted("too many concurrent writes to this user")

    s.repository.before_write_watches.append(contended)
    outcome = asyncio.run(s.achievements.unlock_achievement(USER, "manual", "u1"))
    assert (outcome.already_unlocked, outcome.xp_awarded, outcome.also_unlocked_deferred) == (False, 20, True)
    assert USER in s.repository.forgotten and s.repository.progress[USER].auto_version == ""
