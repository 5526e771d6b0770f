"""Achievements.unlock_achievement against FakeAchievementsRepository and
FakeLevelChecker: requirements, exactly-once unlocks, the reward paid in the
unlock's own write and reported once, the catalog copy checked at the write."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from achievements_service.domain import Achievement, AchievementNotFound, Requirements, RequirementsNotMet, Unlock
from achievements_service.use_cases import Achievements, UnlockOutcome, UserAchievementView
from common.errors import ContentionExhausted
from common.models import ACHIEVEMENT, MAX_TOTAL_XP, LevelUpOutcome, ProgressRecord, Reward, TotalXpLimitReached
from tests.unit.fakes import FakeAchievementsRepository, FakeLevelChecker, stored_progress

USER = "user-1"
EARLIER = "2024-01-01T00:00:00.000000Z"
CRASHED_AT = "2024-01-02T00:00:00.000000Z"
FIRST = Achievement("first", "First steps", "Unlock anything", xp_reward=50)
BADGE = Achievement("badge", "Badge", xp_reward=0)
VETERAN = Achievement(
    "veteran", "Veteran", xp_reward=100, requirements=Requirements(("first",), min_total_xp=500, min_level=3)
)
LEVEL_2 = LevelUpOutcome(USER, True, 1, 2, 150, (Reward("coins", 10),), 250)


class Setup:
    def __init__(self, progress: ProgressRecord | None, start_level: int, answer: LevelUpOutcome | None) -> None:
        self.repository = FakeAchievementsRepository(start_level=start_level)
        self.catalog = {a.achievement_id: self.repository.seed_achievement(a) for a in (FIRST, BADGE, VETERAN)}
        if progress is not None:
            self.repository.seed_progress(progress)
        self.levels = FakeLevelChecker(answer)
        self.achievements = Achievements(self.repository, self.levels)


def setup(
    progress: ProgressRecord | None = None, *, start_level: int = 1, answer: LevelUpOutcome | None = LEVEL_2
) -> Setup:
    return Setup(progress, start_level, answer)


def user(total_xp: int, level: int | None = 1) -> ProgressRecord:
    return ProgressRecord(USER, total_xp=total_xp, level=level, updated_at=EARLIER)


def holding_first(s: Setup) -> Setup:
    """The user already holds `first` (paid), with the progress as given."""
    progress = s.repository.progress[USER]
    s.repository.seed_unlock(replace(owed(), xp_granted=True))
    s.repository.seed_progress(replace(progress, holds_achievements=True))
    return s


def unlock(s: Setup, achievement_id: str = "first", request_id: str = "u1") -> UnlockOutcome:
    return asyncio.run(s.achievements.unlock_achievement(USER, achievement_id, request_id))


def owed(achievement: Achievement = FIRST) -> Unlock:
    """An unlock an earlier version recorded before its separate XP grant completed."""
    return Unlock(USER, achievement.achievement_id, CRASHED_AT, achievement.xp_reward, xp_granted=False)


def paid_xp(s: Setup) -> dict[str, int]:
    return {entry_id: e.xp for (_, entry_id), e in s.repository.ledger.items()}


# --- a first unlock -----------------------------------------------------------------------


def test_an_unlock_is_recorded_and_paid_in_one_write_and_its_level_up_reported() -> None:
    s = setup(user(100))

    outcome = unlock(s)

    assert outcome == UnlockOutcome(s.catalog["first"], False, 50, 150, LEVEL_2)
    [(written, payment)] = s.repository.record_calls
    assert payment is not None and (payment.entry_id, payment.kind, payment.xp) == ("ach#first", ACHIEVEMENT, 50)
    stored = s.repository.unlocks[(USER, "first")]
    assert (stored.xp_reward, stored.xp_granted, stored.request_id) == (50, True, "u1")
    assert s.repository.progress[USER].holds_achievements is True
    assert s.repository.progress[USER].total_xp == 150
    assert paid_xp(s) == {"ach#first": 50}
    assert s.levels.calls == [(USER, "ach#first")]  # the check is named after the payment, for repeats


def test_an_unlock_with_no_level_due_asks_the_levels_service_nothing() -> None:
    s = setup(stored_progress(USER, 100, 1, next_level_xp=1000, level_version=1))

    outcome = unlock(s)

    assert outcome.level_up == LevelUpOutcome(USER, False, 1, 1, 150, (), 1000)
    assert (outcome.xp_awarded, outcome.total_xp) == (50, 150)
    assert s.levels.calls == []


def test_an_unlock_whose_level_check_cannot_be_done_is_marked_deferred() -> None:
    s = setup(user(100), answer=None)

    outcome = unlock(s)

    assert (outcome.xp_awarded, outcome.total_xp, outcome.level_up) == (50, 150, None)
    assert s.repository.ledger[(USER, "ach#first")].level_check_deferred is True
    assert s.repository.progress[USER].deferred_check == "ach#first"


def test_an_achievement_without_xp_pays_nothing_and_asks_no_level_check() -> None:
    s = setup(user(100))

    assert unlock(s, "badge") == UnlockOutcome(s.catalog["badge"], False, 0, 100, None)
    assert s.repository.ledger == {}
    assert s.levels.calls == []
    assert s.repository.unlocks[(USER, "badge")].xp_granted is True


def test_an_achievement_not_in_the_catalog_is_not_found() -> None:
    s = setup(user(100))

    with pytest.raises(AchievementNotFound, match="achievement 'nope' is not in the catalog"):
        unlock(s, "nope")
    assert s.repository.unlocks == {}


# --- requirements -------------------------------------------------------------------------


def test_unmet_requirements_are_refused_with_each_violation_and_nothing_written() -> None:
    s = setup(user(40, level=2))

    with pytest.raises(RequirementsNotMet) as refused:
        unlock(s, "veteran")

    assert refused.value.violations == [
        ("required_achievements/first", "achievement 'first' must be unlocked first"),
        ("min_total_xp", "needs 500 total XP, has 40"),
        ("min_level", "needs level 3, is level 2"),
    ]
    assert s.repository.unlocks == {}
    assert s.repository.ledger == {}
    assert s.repository.progress[USER] == user(40, level=2)


def test_a_user_never_checked_is_held_to_the_start_level_read_only_when_a_level_is_required() -> None:
    s = holding_first(setup(user(600, level=None), start_level=2))

    with pytest.raises(RequirementsNotMet) as refused:
        unlock(s, "veteran")
    assert refused.value.violations == [("min_level", "needs level 3, is level 2")]
    assert s.repository.start_level_calls == 1

    unlock(s, "badge")
    assert s.repository.start_level_calls == 1


def test_a_user_never_checked_meets_a_min_level_that_the_start_level_meets() -> None:
    s = holding_first(setup(user(600, level=None), start_level=3))

    outcome = unlock(s, "veteran")

    assert (outcome.xp_awarded, outcome.level_up) == (100, LEVEL_2)  # the total as the level check answered
    assert s.repository.progress[USER].total_xp == 700
    assert sorted(a for _, a in s.repository.unlocks) == ["first", "veteran"]


def test_requirements_broken_at_the_write_but_met_again_ask_for_a_retry() -> None:
    s = holding_first(setup(user(600, level=3)))
    s.repository.fail_next_requirements_guard = True

    with pytest.raises(RequirementsNotMet) as refused:
        unlock(s, "veteran")

    assert refused.value.violations == [("progress", "changed while unlocking; retry")]
    assert (USER, "veteran") not in s.repository.unlocks


# --- the catalog copy ---------------------------------------------------------------------------


def test_a_stale_copy_of_the_catalog_entry_is_read_again_and_the_new_reward_paid() -> None:
    s = setup(user(100))
    s.repository.cache["first"] = s.catalog["first"]
    s.repository.seed_achievement(replace(FIRST, xp_reward=80))  # another replica changed it

    outcome = unlock(s)

    assert outcome.xp_awarded == 80
    assert s.repository.progress[USER].total_xp == 180
    assert [p.xp for _, p in s.repository.record_calls if p] == [50, 80]  # the first write was refused whole
    assert paid_xp(s) == {"ach#first": 80}


def test_an_achievement_that_left_the_catalog_after_it_was_cached_is_not_found() -> None:
    s = setup(user(100))
    s.repository.cache["first"] = s.catalog["first"]
    del s.repository.catalog["first"]

    with pytest.raises(AchievementNotFound):
        unlock(s)
    assert s.repository.unlocks == {} and s.repository.ledger == {}


def test_an_achievement_that_keeps_changing_gives_up_with_aborted() -> None:
    s = setup(user(100))

    async def another_replica_changes_it() -> None:
        s.repository.seed_achievement(FIRST)

    s.repository.before_record_unlock.extend([another_replica_changes_it] * 5)

    with pytest.raises(ContentionExhausted, match="kept changing"):
        unlock(s)
    assert s.repository.unlocks == {} and s.repository.ledger == {}


def test_a_reward_a_grant_paid_before_the_unlock_is_not_paid_twice() -> None:
    s = setup(user(100))
    s.repository.pay(replace(owed().payment(), xp=30))  # GrantXp with this achievement_id, before any unlock

    outcome = unlock(s)

    assert outcome == UnlockOutcome(s.catalog["first"], False, 0, 130, None)
    stored = s.repository.unlocks[(USER, "first")]
    assert (stored.xp_granted, stored.xp_reward) == (True, 30)  # what was paid, as rewardsctl verify expects
    assert paid_xp(s) == {"ach#first": 30}


def test_a_reward_paid_before_and_a_catalog_change_meanwhile_read_the_entry_again() -> None:
    s = setup(user(100))
    s.repository.pay(replace(owed().payment(), xp=30))

    async def another_replica_changes_it() -> None:
        s.repository.seed_achievement(FIRST)

    s.repository.before_record_unlock.extend([None, another_replica_changes_it])

    outcome = unlock(s)

    assert (outcome.already_unlocked, outcome.xp_awarded, outcome.total_xp) == (False, 0, 130)
    # Paying, refused (paid before); not paying, refused (the entry changed); not paying, written.
    assert [p is not None for _, p in s.repository.record_calls] == [True, False, False]
    assert s.repository.unlocks[(USER, "first")].xp_reward == 30


# --- repeats --------------------------------------------------------------------------------


def test_an_unlock_already_paid_reports_already_unlocked_and_pays_nothing() -> None:
    s = setup(user(100))
    first = unlock(s)

    again = unlock(s, request_id="u2")

    assert first == UnlockOutcome(s.catalog["first"], False, 50, 150, LEVEL_2)
    assert again == UnlockOutcome(s.catalog["first"], True, 0, 150, None)
    assert paid_xp(s) == {"ach#first": 50}
    assert len(s.levels.calls) == 1


def test_our_own_write_retried_after_a_lost_answer_is_this_calls_unlock() -> None:
    s = setup(user(100))
    s.repository.lose_next_record_answers = 1

    assert unlock(s) == UnlockOutcome(s.catalog["first"], False, 50, 150, LEVEL_2)


def test_two_concurrent_calls_pay_once_and_report_once() -> None:
    s = setup(user(100))

    async def both() -> list[UnlockOutcome]:
        return list(
            await asyncio.gather(
                s.achievements.unlock_achievement(USER, "first", "u1"),
                s.achievements.unlock_achievement(USER, "first", "u2"),
            )
        )

    outcomes = asyncio.run(both())

    assert sorted((o.already_unlocked, o.xp_awarded, o.total_xp) for o in outcomes) == [
        (False, 50, 150),
        (True, 0, 150),
    ]
    assert [o.level_up for o in outcomes if o.already_unlocked] == [None]
    assert s.repository.progress[USER].total_xp == 150


def test_an_unlock_recorded_first_by_a_concurrent_call_reports_already_unlocked() -> None:
    s = setup(user(100))

    async def a_concurrent_call_records_it_first() -> None:
        s.repository.seed_unlock(replace(owed(), xp_granted=True))
        s.repository.pay(owed().payment())

    s.repository.before_record_unlock.append(a_concurrent_call_records_it_first)

    assert unlock(s) == UnlockOutcome(s.catalog["first"], True, 0, 150, None)
    assert s.repository.unlocks[(USER, "first")].unlocked_at == CRASHED_AT


# --- unlocks an earlier version left owing XP -------------------------------------------------------


def test_an_unlock_still_owing_xp_is_paid_by_the_repeat_which_reports_it() -> None:
    s = setup(user(100))
    s.repository.seed_unlock(owed())

    outcome = unlock(s)

    assert outcome == UnlockOutcome(s.catalog["first"], True, 50, 150, LEVEL_2)
    assert paid_xp(s) == {"ach#first": 50}
    assert s.repository.unlocks[(USER, "first")].xp_granted is True
    assert unlock(s, request_id="u2") == UnlockOutcome(s.catalog["first"], True, 0, 150, None)


def test_an_owed_unlock_whose_grant_completed_is_marked_without_paying_again() -> None:
    s = setup(user(100))
    s.repository.seed_unlock(owed())
    s.repository.pay(replace(owed().payment(), xp=40))  # an earlier version's grant landed (40); its mark did not

    outcome = unlock(s)

    assert (outcome.already_unlocked, outcome.xp_awarded) == (True, 40)  # what was paid
    assert s.repository.progress[USER].total_xp == 140
    assert paid_xp(s) == {"ach#first": 40}
    assert s.repository.unlocks[(USER, "first")].xp_granted is True


def test_xp_owed_by_an_unlock_whose_achievement_left_the_catalog_is_still_paid() -> None:
    s = setup(user(100))
    s.repository.seed_unlock(owed())
    del s.repository.catalog["first"]

    outcome = unlock(s)

    assert outcome == UnlockOutcome(Achievement("first", name="", xp_reward=50), True, 50, 150, LEVEL_2)
    assert paid_xp(s) == {"ach#first": 50}


# --- listing --------------------------------------------------------------------------------------


def test_a_users_achievements_list_each_unlock_with_its_catalog_entry_if_any() -> None:
    s = setup(user(100))
    s.repository.seed_unlock(replace(owed(), xp_granted=True))
    s.repository.seed_unlock(Unlock(USER, "gone", "2024-01-03T00:00:00.000000Z", 5, True))

    first_page, token = asyncio.run(s.achievements.list_user_achievements(USER, 1, ""))
    second_page, last = asyncio.run(s.achievements.list_user_achievements(USER, 1, token))

    assert first_page == [UserAchievementView(replace(owed(), xp_granted=True), s.catalog["first"])]
    assert second_page == [UserAchievementView(Unlock(USER, "gone", "2024-01-03T00:00:00.000000Z", 5, True), None)]
    assert (token, last) == ("first", "")


# --- what a player holds does not grow the progress item ---------------------------------------------


def test_a_required_achievement_is_checked_on_its_unlock_record_not_on_the_progress_item() -> None:
    s = setup(user(600, level=3))
    s.repository.seed_progress(replace(user(600, level=3), holds_achievements=True))  # holds others, not `first`

    with pytest.raises(RequirementsNotMet) as refused:
        unlock(s, "veteran")
    assert refused.value.violations == [("required_achievements/first", "achievement 'first' must be unlocked first")]

    unlock(s, "first")
    assert unlock(s, "veteran").xp_awarded == 100


def test_xp_owed_that_would_pass_the_total_maximum_is_refused_and_stays_owed() -> None:
    s = setup(user(MAX_TOTAL_XP - 10))
    s.repository.seed_unlock(owed())

    with pytest.raises(TotalXpLimitReached):
        unlock(s)
    assert s.repository.unlocks[(USER, "first")].xp_granted is False and s.repository.ledger == {}
