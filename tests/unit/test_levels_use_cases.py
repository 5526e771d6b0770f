"""Levels.check_level_up against FakeLevelsRepository: every branch of the
loop, with exact answers and exact writes."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from common.errors import ContentionExhausted, InvalidField
from common.models import Level, LevelUpOutcome, ProgressRecord, Reward
from levels_service.domain import MAX_LEVELS_PER_STEP, LevelUpPlan, TooManyRewardIds
from levels_service.use_cases import Levels
from tests.unit.fakes import CheckRecord, FakeLevelsRepository, GrantCall, PinCall, stored_progress

USER = "user-1"

L1 = Level(1, 0)
L2 = Level(2, 100, (Reward("coins", 10),))
L3 = Level(3, 250, (Reward("gems", 1), Reward("coins", 20)))
L4 = Level(4, 500, (Reward("badge", 1),))
L5 = Level(5, 1000)
STANDARD = (L1, L2, L3, L4, L5)

# 250 levels, 10 XP apart: level L at (L-1)*10 XP, rewarding L gems.
LONG = tuple(Level(n, (n - 1) * 10, (Reward("gem", n),)) for n in range(1, 251))


def long_rewards(first: int, last: int) -> tuple[Reward, ...]:
    """The answer's one line for `gem`: the levels' quantities summed."""
    return (Reward("gem", sum(range(first, last + 1))),)


def levels_between(first: int, last: int) -> tuple[Level, ...]:
    return LONG[first - 1 : last]


def progress(
    total_xp: int,
    level: int | None,
    next_level_xp: int | None = None,
    level_version: int | None = None,
) -> ProgressRecord:
    return stored_progress(USER, total_xp, level, next_level_xp, level_version)


def check(repository: FakeLevelsRepository, request_id: str = "") -> LevelUpOutcome:
    return asyncio.run(Levels(repository).check_level_up(USER, request_id))


class Stopped(Exception):
    """The call ended here (its deadline, a crash): nothing after it ran."""


async def stop() -> None:
    raise Stopped


# --- nothing due -----------------------------------------------------------------------


def test_nothing_due_reports_the_stored_level_and_records_only_that_for_the_named_check() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(120, 2, next_level_xp=250, level_version=1))

    outcome = check(repository, "r1")

    assert outcome == LevelUpOutcome(USER, False, 2, 2, 120, (), 250)
    assert repository.grant_calls == []
    assert repository.pin_calls == []
    # Its repeats answer the same, even once a level is due: the record says nothing was.
    assert repository.checks == {(USER, "r1"): CheckRecord(set(), 2, None)}
    repository.seed_progress(progress(400, 2, next_level_xp=250, level_version=1))
    assert check(repository, "r1") == LevelUpOutcome(USER, False, 2, 2, 400, (), 250)
    assert repository.grant_calls == []


def test_a_user_with_no_progress_item_is_at_the_start_level_and_nothing_is_written() -> None:
    repository = FakeLevelsRepository(STANDARD)

    outcome = check(repository)

    assert outcome == LevelUpOutcome(USER, False, 1, 1, 0, (), 100)
    assert repository.pin_calls == []
    assert repository.progress == {}


def test_at_the_top_level_nothing_is_due_and_the_threshold_is_zero() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(5000, 5, next_level_xp=0, level_version=1))

    assert check(repository, "r1") == LevelUpOutcome(USER, False, 5, 5, 5000, (), 0)
    assert repository.pin_calls == []


# --- pinning the threshold ----------------------------------------------------------------


def test_a_new_user_gets_the_start_level_pinned_with_its_threshold() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(50, None))

    outcome = check(repository, "r1")

    assert outcome == LevelUpOutcome(USER, False, 1, 1, 50, (), 100)
    assert repository.pin_calls == [PinCall(USER, None, 1, 100, 1)]
    assert repository.progress[USER] == progress(50, 1, next_level_xp=100, level_version=1)
    assert repository.grant_calls == []


def test_the_threshold_is_pinned_again_under_a_new_table_version() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(200, 2, next_level_xp=250, level_version=1))
    repository.store_table([L1, L2, Level(3, 300), L4, L5], refresh_cache=True)

    outcome = check(repository, "r1")

    assert outcome == LevelUpOutcome(USER, False, 2, 2, 200, (), 300)
    assert repository.pin_calls == [PinCall(USER, 2, 2, 300, 2)]
    assert repository.progress[USER] == progress(200, 2, next_level_xp=300, level_version=2)


def test_a_stale_threshold_under_the_same_version_is_pinned_again() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(200, 2, next_level_xp=None, level_version=1))

    assert check(repository) == LevelUpOutcome(USER, False, 2, 2, 200, (), 250)
    assert repository.pin_calls == [PinCall(USER, 2, 2, 250, 1)]


def test_a_pin_that_loses_its_race_reads_again_and_reports_what_the_winner_wrote() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(50, None))

    async def xp_arrives_and_another_check_levels_up_first() -> None:
        repository.seed_progress(progress(120, 2, next_level_xp=250, level_version=1))

    repository.before_pin.append(xp_arrives_and_another_check_levels_up_first)

    assert check(repository, "r1") == LevelUpOutcome(USER, False, 2, 2, 120, (), 250)
    assert repository.pin_calls == [PinCall(USER, None, 1, 100, 1)]  # the second read found nothing to pin
    assert repository.progress[USER] == progress(120, 2, next_level_xp=250, level_version=1)


def test_a_threshold_unchanged_by_a_new_table_version_is_pinned_under_it() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(200, 2, next_level_xp=250, level_version=1))
    repository.store_table([L1, L2, L3, L4, Level(5, 900)], refresh_cache=True)

    assert check(repository) == LevelUpOutcome(USER, False, 2, 2, 200, (), 250)
    assert repository.pin_calls == [PinCall(USER, 2, 2, 250, 2)]
    assert repository.progress[USER].level_version == 2


# --- level-ups -------------------------------------------------------------------------


def test_a_level_up_in_one_step_grants_each_level_passed_once() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(260, 1, next_level_xp=100, level_version=1))

    outcome = check(repository, "r1")

    assert outcome == LevelUpOutcome(USER, True, 1, 3, 260, (Reward("coins", 30), Reward("gems", 1)), 500)
    assert repository.grant_calls == [
        GrantCall(USER, LevelUpPlan(1, 3, (L2, L3)), "r1", 3, 250, 500, 1, continuing=False)
    ]
    stored = repository.progress[USER]
    assert (stored.level, stored.next_level_xp, stored.level_version) == (3, 500, 1)
    assert (stored.pending_check, stored.pending_target) == (None, None)
    assert repository.levels_of(USER) == [2, 3]
    assert {repository.reached[(USER, n)].check_id for n in (2, 3)} == {"r1"}
    assert repository.checks == {(USER, "r1"): CheckRecord({2, 3}, 1, 3)}


def test_a_new_user_levels_up_from_the_start_level() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(120, None))

    outcome = check(repository)

    assert outcome == LevelUpOutcome(USER, True, 1, 2, 120, (Reward("coins", 10),), 250)
    assert repository.progress[USER].level == 2
    assert repository.grant_calls[0].step == LevelUpPlan(1, 2, (L2,))
    assert repository.grant_calls[0].owner.startswith("auto:")
    assert repository.checks == {}  # automatic checks keep no record


def test_a_level_up_longer_than_one_step_goes_in_steps_to_the_target_of_its_first() -> None:
    repository = FakeLevelsRepository(LONG)
    repository.seed_progress(progress(1990, 1, next_level_xp=10, level_version=1))

    async def xp_arrives_after_the_first_step() -> None:
        repository.seed_progress(replace(repository.progress[USER], total_xp=2490))

    repository.after_grant.append(xp_arrives_after_the_first_step)

    outcome = check(repository, "r1")

    # Level 250 became due after the first step: this level-up still ends at 200.
    assert outcome == LevelUpOutcome(USER, True, 1, 200, 2490, long_rewards(2, 200), 2000)
    assert MAX_LEVELS_PER_STEP == 97
    assert repository.grant_calls == [
        GrantCall(USER, LevelUpPlan(1, 98, levels_between(2, 98)), "r1", 200, 1990, 2000, 1, continuing=False),
        GrantCall(USER, LevelUpPlan(98, 195, levels_between(99, 195)), "r1", 200, 0, 2000, 1, continuing=True),
        GrantCall(USER, LevelUpPlan(195, 200, levels_between(196, 200)), "r1", 200, 0, 2000, 1, continuing=True),
    ]
    assert repository.levels_of(USER) == list(range(2, 201))
    assert repository.checks == {(USER, "r1"): CheckRecord(set(range(2, 201)), 1, 200)}
    stored = repository.progress[USER]
    assert (stored.level, stored.pending_check, stored.pending_target) == (200, None, None)


def test_an_automatic_multi_step_level_up_reports_all_of_its_steps() -> None:
    repository = FakeLevelsRepository(LONG)
    repository.seed_progress(progress(1990, 1, next_level_xp=10, level_version=1))

    outcome = check(repository)

    assert outcome == LevelUpOutcome(USER, True, 1, 200, 1990, long_rewards(2, 200), 2000)
    assert [(c.step.previous_level, c.step.current_level, c.continuing) for c in repository.grant_calls] == [
        (1, 98, False),
        (98, 195, True),
        (195, 200, True),
    ]
    assert len({c.owner for c in repository.grant_calls}) == 1
    assert repository.checks == {}


def test_another_checks_pending_level_up_is_completed_first_and_stays_its_own() -> None:
    repository = FakeLevelsRepository(LONG)
    repository.seed_progress(progress(1990, 1, next_level_xp=10, level_version=1))
    repository.before_grant.extend([None, stop])  # check "other" ends after its first step
    with pytest.raises(Stopped):
        check(repository, "other")
    stored = repository.progress[USER]
    assert (stored.level, stored.pending_check, stored.pending_target) == (98, "other", 200)
    repository.grant_calls.clear()

    outcome = check(repository, "r2")

    assert outcome == LevelUpOutcome(USER, False, 200, 200, 1990, (), 2000)
    assert [(c.step.previous_level, c.step.current_level, c.owner, c.continuing) for c in repository.grant_calls] == [
        (98, 195, "other", True),
        (195, 200, "other", True),
    ]
    assert repository.checks == {
        (USER, "other"): CheckRecord(set(range(2, 201)), 1, 200),
        (USER, "r2"): CheckRecord(set(), 200, None),  # r2 itself found nothing due
    }
    assert {repository.reached[(USER, n)].check_id for n in range(2, 201)} == {"other"}
    # The check that made the level-up reports the whole of it, and writes nothing more.
    assert check(repository, "other") == LevelUpOutcome(USER, True, 1, 200, 1990, long_rewards(2, 200), 2000)
    assert len(repository.grant_calls) == 2


# --- repeats -----------------------------------------------------------------------------


def test_a_repeat_of_a_request_id_replays_its_answer_and_grants_nothing_more() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(260, 1, next_level_xp=100, level_version=1))
    first = check(repository, "r1")

    repeat = check(repository, "r1")

    assert repeat == first
    assert repeat == LevelUpOutcome(USER, True, 1, 3, 260, (Reward("coins", 30), Reward("gems", 1)), 500)
    assert len(repository.grant_calls) == 1
    assert repository.pin_calls == []


def test_a_repeat_of_a_multi_step_level_up_replays_the_whole_of_it() -> None:
    repository = FakeLevelsRepository(LONG)
    repository.seed_progress(progress(1990, 1, next_level_xp=10, level_version=1))
    first = check(repository, "r1")

    assert check(repository, "r1") == first == LevelUpOutcome(USER, True, 1, 200, 1990, long_rewards(2, 200), 2000)
    assert len(repository.grant_calls) == 3


def test_a_repeat_of_a_call_that_stopped_after_its_first_step_completes_and_reports_the_whole() -> None:
    repository = FakeLevelsRepository(LONG)
    repository.seed_progress(progress(1990, 1, next_level_xp=10, level_version=1))
    repository.before_grant.extend([None, stop])
    with pytest.raises(Stopped):
        check(repository, "r1")
    assert repository.levels_of(USER) == list(range(2, 99))

    repeat = check(repository, "r1")

    assert repeat == LevelUpOutcome(USER, True, 1, 200, 1990, long_rewards(2, 200), 2000)
    assert [(c.step.previous_level, c.step.current_level, c.owner, c.continuing) for c in repository.grant_calls] == [
        (1, 98, "r1", False),
        (98, 195, "r1", True),  # the attempt that stopped: nothing written
        (98, 195, "r1", True),
        (195, 200, "r1", True),
    ]
    assert repository.levels_of(USER) == list(range(2, 201))
    assert check(repository, "r1") == repeat


def test_a_repeat_after_a_later_level_up_reports_its_own_levels_at_the_current_level() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(120, 1, next_level_xp=100, level_version=1))
    assert check(repository, "r1") == LevelUpOutcome(USER, True, 1, 2, 120, (Reward("coins", 10),), 250)
    repository.seed_progress(replace(repository.progress[USER], total_xp=600))
    assert check(repository, "r2") == LevelUpOutcome(
        USER, True, 2, 4, 600, (Reward("gems", 1), Reward("coins", 20), Reward("badge", 1)), 1000
    )

    assert check(repository, "r1") == LevelUpOutcome(USER, True, 1, 4, 600, (Reward("coins", 10),), 1000)


# --- races ---------------------------------------------------------------------------------


def test_a_lost_race_is_retried_and_then_granted() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(260, 1, next_level_xp=100, level_version=1))
    repository.lose_next_grants = 1

    outcome = check(repository, "r1")

    assert outcome == LevelUpOutcome(USER, True, 1, 3, 260, (Reward("coins", 30), Reward("gems", 1)), 500)
    assert len(repository.grant_calls) == 2
    assert repository.grant_calls[0] == repository.grant_calls[1]
    assert repository.levels_of(USER) == [2, 3]


def test_a_race_lost_to_another_check_reports_no_level_up_of_its_own() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(260, 1, next_level_xp=100, level_version=1))
    answers: list[LevelUpOutcome] = []

    async def another_check_first() -> None:
        answers.append(await Levels(repository).check_level_up(USER, "other"))

    repository.before_grant.append(another_check_first)

    outcome = check(repository, "r1")

    rewards = (Reward("coins", 30), Reward("gems", 1))
    assert answers == [LevelUpOutcome(USER, True, 1, 3, 260, rewards, 500)]
    assert outcome == LevelUpOutcome(USER, False, 3, 3, 260, (), 500)
    assert {repository.reached[(USER, n)].check_id for n in (2, 3)} == {"other"}
    assert repository.checks == {(USER, "other"): CheckRecord({2, 3}, 1, 3), (USER, "r1"): CheckRecord(set(), 3, None)}


def test_fifty_lost_races_are_survived() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(120, 1, next_level_xp=100, level_version=1))
    repository.lose_next_grants = 50

    assert check(repository, "r1") == LevelUpOutcome(USER, True, 1, 2, 120, (Reward("coins", 10),), 250)
    assert len(repository.grant_calls) == 51


def test_contention_exhausted_after_too_many_lost_races() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(120, 1, next_level_xp=100, level_version=1))
    repository.lose_next_grants = 51

    with pytest.raises(ContentionExhausted, match="level of user 'user-1' kept changing"):
        check(repository, "r1")
    assert len(repository.grant_calls) == 51
    assert repository.progress[USER] == progress(120, 1, next_level_xp=100, level_version=1)
    assert repository.checks == {}


# --- the level table moving ------------------------------------------------------------------


def test_a_level_table_change_refreshes_the_table_and_plans_again() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(160, 1, next_level_xp=100, level_version=1))
    cheaper_3 = Level(3, 150, (Reward("ruby", 2),))
    repository.store_table([L1, L2, cheaper_3, L4, L5])  # another replica: this one's copy is still version 1

    outcome = check(repository, "r1")

    assert outcome == LevelUpOutcome(USER, True, 1, 3, 160, (Reward("coins", 10), Reward("ruby", 2)), 500)
    assert repository.at_least_calls == [2]
    assert [(c.step.current_level, c.version) for c in repository.grant_calls] == [(2, 1), (3, 2)]
    assert repository.progress[USER].level_version == 2


def test_a_table_change_just_before_the_write_is_survived() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(120, 1, next_level_xp=100, level_version=1))
    repository.change_table_before_next_grant = True

    assert check(repository, "r1") == LevelUpOutcome(USER, True, 1, 2, 120, (Reward("coins", 10),), 250)
    assert repository.at_least_calls == [2]
    assert [c.version for c in repository.grant_calls] == [1, 2]


def test_progress_written_under_a_newer_table_brings_that_table_first() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.store_table([L1, L2, Level(3, 150, (Reward("ruby", 2),)), L4, L5])
    repository.seed_progress(progress(160, 2, next_level_xp=150, level_version=2))

    outcome = check(repository, "r1")

    assert outcome == LevelUpOutcome(USER, True, 2, 3, 160, (Reward("ruby", 2),), 500)
    assert repository.at_least_calls == [2]
    assert [c.version for c in repository.grant_calls] == [2]


# --- known bugs -------------------------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="levels_service/use_cases.py check_level_up, branch `if own_steps: return self._outcome(...)`: an "
    "automatic check whose multi-step level-up another check completed reports current_level 200 but only the "
    "rewards of its own first step (levels 2..98); the rewards of levels 99..200 are reported to no caller",
)
def test_an_automatic_check_whose_level_up_another_check_completed_reports_all_of_it() -> None:
    repository = FakeLevelsRepository(LONG)
    repository.seed_progress(progress(1990, 1, next_level_xp=10, level_version=1))
    answers: list[LevelUpOutcome] = []

    async def another_check_completes_it() -> None:
        answers.append(await Levels(repository).check_level_up(USER, "other"))

    repository.after_grant.append(another_check_completes_it)

    outcome = check(repository)

    assert answers == [LevelUpOutcome(USER, False, 200, 200, 1990, (), 2000)]
    assert repository.levels_of(USER) == list(range(2, 201))
    assert outcome == LevelUpOutcome(USER, True, 1, 200, 1990, long_rewards(2, 200), 2000)


# --- repeats that only replay (replay_only) ---------------------------------------------


def repeat(repository: FakeLevelsRepository, request_id: str, wait_s: float = 0.2) -> LevelUpOutcome:
    return asyncio.run(Levels(repository, repeat_wait_s=wait_s).check_level_up(USER, request_id, replay_only=True))


def test_a_repeat_with_nothing_recorded_and_nothing_due_answers_nothing_and_writes_nothing() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(120, 2, next_level_xp=250, level_version=1))

    assert repeat(repository, "r1") == LevelUpOutcome(USER, False, 2, 2, 120, (), 250)
    assert (repository.grant_calls, repository.pin_calls, repository.checks) == ([], [], {})


def test_a_repeat_leaves_a_level_made_due_by_a_deferred_award_to_that_awards_retry() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(replace(progress(300, 2, next_level_xp=250, level_version=1), deferred_check="req#b"))

    assert repeat(repository, "req#a", wait_s=5.0) == LevelUpOutcome(USER, False, 2, 2, 300, (), 250)
    assert repository.grant_calls == []
    # The deferred award's own retry grants it (a normal check: its first was deferred).
    outcome = check(repository, "req#b")
    assert (outcome.leveled_up, outcome.previous_level, outcome.current_level) == (True, 2, 3)
    assert repository.progress[USER].deferred_check is None


def test_a_repeat_racing_its_first_call_reports_the_first_calls_level_up() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(300, 2, next_level_xp=250, level_version=1))

    async def both() -> list[LevelUpOutcome]:
        levels = Levels(repository, repeat_wait_s=5.0)
        copy = asyncio.create_task(levels.check_level_up(USER, "r1", replay_only=True))
        await asyncio.sleep(0.06)  # the copy is waiting: nothing recorded yet, a level due
        first = await levels.check_level_up(USER, "r1")
        return [first, await copy]

    first, copy = asyncio.run(both())
    assert first == copy == LevelUpOutcome(USER, True, 2, 3, 300, L3.rewards, 500)
    assert len(repository.grant_calls) == 1


def test_a_repeat_whose_first_call_never_checked_grants_after_the_wait() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.seed_progress(progress(300, 2, next_level_xp=250, level_version=1))

    outcome = repeat(repository, "r1", wait_s=0.1)

    assert outcome == LevelUpOutcome(USER, True, 2, 3, 300, L3.rewards, 500)
    assert repository.checks == {(USER, "r1"): CheckRecord({3}, 2, 3)}


# --- the level table's reward ids ------------------------------------------------------------


def test_a_level_that_would_take_the_table_past_a_thousand_reward_ids_is_refused() -> None:
    repository = FakeLevelsRepository(
        [Level(n, n * 10, tuple(Reward(f"r{n}-{k}", 1) for k in range(50))) for n in range(1, 21)]  # 1,000 ids
    )
    levels = Levels(repository)

    with pytest.raises(TooManyRewardIds, match="at most 1000 distinct reward ids; with this level it would use 1001"):
        asyncio.run(levels.put_level(Level(21, 500, (Reward("new", 1),))))
    assert [l.level for l in repository.table.levels][-1] == 20
    # Reusing ids is fine, and so is replacing a level's own ids.
    asyncio.run(levels.put_level(Level(21, 500, (Reward("r1-0", 5),))))
    asyncio.run(levels.put_level(Level(20, 200, tuple(Reward(f"other-{k}", 1) for k in range(50)))))
    assert len({r.reward_id for l in repository.table.levels for r in l.rewards}) == 1000


def test_a_level_put_on_a_stale_copy_of_the_table_is_checked_again_on_the_new_one() -> None:
    repository = FakeLevelsRepository(STANDARD)
    repository.store_table([*STANDARD, Level(9, 900, tuple(Reward(f"x{k}", 1) for k in range(50)))])  # not cached

    asyncio.run(Levels(repository).put_level(Level(10, 1000, (Reward("coins", 1),))))

    assert repository.at_least_calls == [repository.table_version - 1]
    assert [l.level for l in repository.table.levels][-2:] == [9, 10]


@pytest.mark.parametrize("token", ["²", "0", "abc", "1000001", "-1", "1" * 5000])
def test_a_page_token_the_listing_did_not_issue_is_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidField, match="page_token is not a token this listing issued"):
        asyncio.run(Levels(FakeLevelsRepository(STANDARD)).list_levels(10, token))


def test_the_level_table_pages_in_level_order() -> None:
    levels = Levels(FakeLevelsRepository(STANDARD))
    first, token = asyncio.run(levels.list_levels(2, ""))
    rest, last = asyncio.run(levels.list_levels(10, token))
    assert [l.level for l in (*first, *rest)] == [l.level for l in STANDARD] and (token, last) == ("2", "")
