"""XpLedger's awards and grants against FakeXpRepository and FakeLevelChecker:
when the Levels service is asked, and what each answer reports."""

from __future__ import annotations

import asyncio

import pytest

from common.auto_unlock import award_counters
from common.errors import ContentionExhausted
from common.models import ACHIEVEMENT, ACTIVITY, GRANT, LevelUpOutcome, ProgressRecord, Reward, TotalXpWouldGoNegative
from tests.unit.fakes import FakeAutoUnlocker, FakeLevelChecker, FakeXpRepository, stored_progress
from xp_service.domain import Activity, ActivityNotFound, EntryNotFound, NothingToRevoke, RequestIdReused
from xp_service.use_cases import AwardOutcome, XpLedger

USER = "user-1"
RUN = Activity("run", "Run", "Run 5 km", "sport", 10)
SWIM = Activity("swim", "Swim", "Swim 1 km", "sport", 30)
LEVEL_2 = LevelUpOutcome(USER, True, 1, 2, 105, (Reward("coins", 10),), 250)


def checked(
    total_xp: int, level: int | None, next_level_xp: int | None, level_version: int | None = 1
) -> ProgressRecord:
    return stored_progress(USER, total_xp, level, next_level_xp, level_version)


def ledger(
    progress: ProgressRecord | None = None, answer: LevelUpOutcome | None = None, *, start_level: int = 1
) -> tuple[XpLedger, FakeXpRepository, FakeLevelChecker]:
    repository = FakeXpRepository(start_level=start_level, level_table_version=1)
    repository.seed_activity(RUN)
    repository.seed_activity(SWIM)
    if progress is not None:
        repository.seed_progress(progress)
    checker = FakeLevelChecker(answer)
    return XpLedger(repository, checker, FakeAutoUnlocker()), repository, checker


def award(xp: XpLedger, activity_id: str = "run", request_id: str = "r1") -> AwardOutcome:
    return asyncio.run(xp.award_xp(USER, activity_id, request_id))


# --- the common path -------------------------------------------------------------------


def test_an_award_with_no_level_up_due_asks_the_levels_service_nothing() -> None:
    xp, repository, checker = ledger(checked(50, 1, 100))

    outcome = award(xp)

    assert checker.calls == []
    assert outcome == AwardOutcome(USER, 10, 60, 1, False, LevelUpOutcome(USER, False, 1, 1, 60, (), 100))
    assert repository.progress[USER].total_xp == 60
    [entry] = repository.entries(USER)
    assert (entry.entry_id, entry.kind, entry.xp, entry.activity_id, entry.request_id) == (
        "req#r1",
        ACTIVITY,
        10,
        "run",
        "r1",
    )


def test_at_the_top_level_no_check_is_made_whatever_the_total() -> None:
    xp, _, checker = ledger(checked(10**9, 5, 0))

    outcome = award(xp)

    assert checker.calls == []
    assert outcome == AwardOutcome(USER, 10, 10**9 + 10, 5, False, LevelUpOutcome(USER, False, 5, 5, 10**9 + 10, (), 0))


@pytest.mark.parametrize(
    "progress",
    [
        pytest.param(checked(95, 1, 100), id="threshold reached"),
        pytest.param(checked(90, 1, 100), id="threshold reached exactly"),
        pytest.param(checked(0, None, None, None), id="no level stored"),
        pytest.param(checked(0, 1, None), id="no threshold stored"),
        pytest.param(checked(0, 1, 100, level_version=0), id="threshold of another table version"),
        pytest.param(
            ProgressRecord(USER, 0, 1, next_level_xp=100, level_version=1, pending_check="c", pending_target=3),
            id="level-up under way",
        ),
    ],
)
def test_a_level_check_that_may_be_due_asks_the_levels_service_with_the_ledger_entry_id(
    progress: ProgressRecord,
) -> None:
    xp, _, checker = ledger(progress, LEVEL_2)

    outcome = award(xp)

    assert checker.calls == [(USER, "req#r1")]
    assert outcome == AwardOutcome(USER, 10, 105, 2, False, LEVEL_2)


def test_an_award_without_request_id_asks_for_an_unnamed_check() -> None:
    xp, repository, checker = ledger(checked(95, 1, 100), LEVEL_2)

    award(xp, request_id="")

    [entry] = repository.entries(USER)
    assert entry.entry_id.startswith("auto#")
    # It can never be repeated: no record is kept for it.
    assert checker.calls == [(USER, "")]


def test_a_deferred_level_check_reports_the_total_of_the_progress_read() -> None:
    xp, _, checker = ledger(checked(95, 1, 100), answer=None)

    outcome = award(xp)

    assert checker.calls == [(USER, "req#r1")]
    assert outcome == AwardOutcome(USER, 10, 105, 1, False, None, level_check_deferred=True)


def test_a_deferred_level_check_of_a_new_user_reports_the_start_level() -> None:
    xp, _, _ = ledger(None, answer=None, start_level=3)

    assert award(xp) == AwardOutcome(USER, 10, 10, 3, False, None, level_check_deferred=True)


# --- repeats -------------------------------------------------------------------------------


def test_a_repeat_is_a_duplicate_with_the_originals_xp_and_always_asks_the_levels_service() -> None:
    xp, repository, checker = ledger(checked(0, 1, 100), LEVEL_2)
    first = award(xp)
    assert first.duplicate is False
    assert checker.calls == []  # 10 of 100: nothing due
    asyncio.run(xp.put_activity(Activity("run", "Run", "Run 5 km", "sport", 25)))  # the XP changed since

    repeat = award(xp)

    assert repeat == AwardOutcome(USER, 10, 105, 2, True, LEVEL_2)
    assert checker.calls == [(USER, "req#r1")]
    assert repository.progress[USER].total_xp == 10
    assert len(repository.entries(USER)) == 1


def test_our_own_write_retried_after_a_lost_answer_is_not_a_duplicate() -> None:
    xp, repository, checker = ledger(checked(0, 1, 100))
    repository.lose_next_record_answers = 1

    outcome = award(xp)

    assert outcome == AwardOutcome(USER, 10, 10, 1, False, LevelUpOutcome(USER, False, 1, 1, 10, (), 100))
    assert checker.calls == []


def test_a_request_id_reused_for_another_activity_is_refused_and_writes_nothing() -> None:
    xp, repository, checker = ledger(checked(0, 1, 100))
    award(xp, "run", "r1")

    with pytest.raises(RequestIdReused) as refused:
        award(xp, "swim", "r1")

    assert refused.value.violations == [("request_id", "already used for activity 'run', not activity 'swim'")]
    assert repository.progress[USER].total_xp == 10
    assert len(repository.entries(USER)) == 1
    assert checker.calls == []


def test_a_request_id_reused_for_a_grant_of_another_amount_is_refused() -> None:
    xp, repository, _ = ledger(checked(0, 1, 100))
    asyncio.run(xp.grant_xp(USER, 40, "bonus", "g1"))

    with pytest.raises(RequestIdReused) as refused:
        asyncio.run(xp.grant_xp(USER, 50, "bonus", "g1"))

    assert refused.value.violations == [("request_id", "already used for a grant of 40 XP, not a grant of 50 XP")]
    assert repository.progress[USER].total_xp == 40


def test_a_grant_repeated_with_the_same_amount_is_a_duplicate() -> None:
    xp, repository, checker = ledger(checked(0, 1, 100), LEVEL_2)
    first = asyncio.run(xp.grant_xp(USER, 40, "bonus", "g1"))

    repeat = asyncio.run(xp.grant_xp(USER, 40, "bonus", "g1"))

    assert first == AwardOutcome(USER, 40, 40, 1, False, LevelUpOutcome(USER, False, 1, 1, 40, (), 100))
    assert repeat == AwardOutcome(USER, 40, 105, 2, True, LEVEL_2)
    assert checker.calls == [(USER, "req#g1")]
    [entry] = repository.entries(USER)
    assert (entry.kind, entry.xp, entry.reason) == (GRANT, 40, "bonus")


def test_an_achievements_reward_is_paid_once_per_achievement_and_never_as_another_amount() -> None:
    xp, repository, _ = ledger(checked(0, 1, 1000))
    first = asyncio.run(xp.grant_xp(USER, 50, "achievement:a1", "", achievement_id="a1"))
    again = asyncio.run(xp.grant_xp(USER, 50, "achievement:a1", "", achievement_id="a1"))

    with pytest.raises(RequestIdReused) as refused:
        asyncio.run(xp.grant_xp(USER, 60, "achievement:a1", "", achievement_id="a1"))

    assert (first.xp_awarded, first.duplicate, again.xp_awarded, again.duplicate) == (50, False, 50, True)
    assert refused.value.violations == [("achievement_id", "already granted as 50 XP")]
    [entry] = repository.entries(USER)
    assert (entry.entry_id, entry.kind, entry.xp) == ("ach#a1", ACHIEVEMENT, 50)
    assert repository.progress[USER].total_xp == 50


# --- the catalog changing ---------------------------------------------------------------------


def test_a_change_of_the_activitys_xp_since_it_was_cached_is_read_again() -> None:
    xp, repository, _ = ledger(checked(0, 1, 100))
    asyncio.run(repository.cached_activity("run"))
    repository.catalog["run"] = Activity("run", "Run", "Run 5 km", "sport", 20)  # another replica changed it

    outcome = award(xp)

    assert outcome == AwardOutcome(USER, 20, 20, 1, False, LevelUpOutcome(USER, False, 1, 1, 20, (), 100))
    assert [(entry.xp, activity.xp if activity else None) for entry, activity in repository.record_calls] == [
        (10, 10),
        (20, 20),
    ]
    [entry] = repository.entries(USER)
    assert entry.xp == 20


def test_an_activity_that_keeps_changing_exhausts_the_rereads() -> None:
    xp, repository, _ = ledger(checked(0, 1, 100))
    bumps = iter(range(11, 100))

    async def another_replica_changes_it() -> None:
        repository.catalog["run"] = Activity("run", "Run", "Run 5 km", "sport", next(bumps))

    repository.before_record.extend([another_replica_changes_it] * 5)

    with pytest.raises(ContentionExhausted, match="activity 'run' kept changing"):
        award(xp)
    assert len(repository.record_calls) == 5
    assert repository.entries(USER) == []
    assert repository.progress[USER].total_xp == 0


def test_a_new_award_of_an_activity_that_left_the_catalog_is_not_found() -> None:
    xp, repository, _ = ledger(checked(0, 1, 100))
    asyncio.run(repository.cached_activity("run"))
    del repository.catalog["run"]  # this process still holds it

    with pytest.raises(ActivityNotFound):
        award(xp)
    assert repository.entries(USER) == []
    assert len(repository.record_calls) == 1


def test_a_retry_of_an_award_whose_activity_left_the_catalog_is_still_a_duplicate() -> None:
    xp, repository, checker = ledger(checked(0, 1, 100), LEVEL_2)
    award(xp)
    asyncio.run(xp.delete_activity("run"))

    repeat = award(xp)

    assert repeat == AwardOutcome(USER, 10, 105, 2, True, LEVEL_2)
    assert checker.calls == [(USER, "req#r1")]
    assert repository.progress[USER].total_xp == 10
    assert len(repository.entries(USER)) == 1


@pytest.mark.parametrize(
    "request_id",
    [
        pytest.param("", id="no request id"),
        pytest.param("r2", id="another request id"),
        pytest.param("r1", id="the request id of another activity's award"),
        pytest.param("g1", id="the request id of a grant"),
    ],
)
def test_an_award_of_an_activity_that_left_the_catalog_is_not_found_unless_it_repeats_one(request_id: str) -> None:
    xp, repository, checker = ledger(checked(0, 1, 100))
    award(xp, "swim", "r1")
    asyncio.run(xp.grant_xp(USER, 5, "bonus", "g1"))
    asyncio.run(xp.delete_activity("run"))

    with pytest.raises(ActivityNotFound, match="activity 'run' is not in the catalog"):
        award(xp, "run", request_id)
    assert repository.progress[USER].total_xp == 35
    assert len(repository.entries(USER)) == 2
    assert checker.calls == []


# --- progress ---------------------------------------------------------------------------------


def test_progress_of_a_user_never_checked_is_the_start_level_without_rewards() -> None:
    xp, repository, _ = ledger(None, start_level=1)
    award(xp)

    progress = asyncio.run(xp.get_progress(USER))

    assert (progress.level, progress.rewards, progress.record.total_xp) == (1, (), 10)


# --- corrections ----------------------------------------------------------------------------


def test_a_revoke_reverses_its_entry_once_and_uncounts_a_counted_award() -> None:
    xp, repository, _ = ledger(checked(0, 1, 1000), start_level=1)
    asyncio.run(xp.award_xp(USER, "run", "r1"))
    counted = award_counters("run", RUN.category)
    assert [repository.counters[(USER, c)].awards for c in counted] == [1] * len(counted)

    first = asyncio.run(xp.revoke_award(USER, "r1", "", "cheated"))
    again = asyncio.run(xp.revoke_award(USER, "", "req#r1", "cheated"))
    assert (first.xp_awarded, first.duplicate, again.duplicate, again.total_xp) == (-RUN.xp, False, True, 0)
    assert [repository.counters[(USER, c)].awards for c in counted] == [0] * len(counted)
    revoke = repository.ledger[(USER, "rev#req#r1")]
    assert (revoke.kind, revoke.xp, revoke.reverses_entry_id, revoke.counted) == ("revoke", -RUN.xp, "req#r1", True)


def test_what_cannot_be_revoked_or_adjusted_below_zero_writes_nothing() -> None:
    xp, repository, _ = ledger(checked(0, 1, 1000), start_level=1)
    asyncio.run(xp.adjust_xp(USER, 30, "welcome", "a1"))
    with pytest.raises(NothingToRevoke):
        asyncio.run(xp.revoke_award(USER, "a1", "", "no"))
    with pytest.raises(EntryNotFound):
        asyncio.run(xp.revoke_award(USER, "nope", "", "no"))
    with pytest.raises(TotalXpWouldGoNegative):
        asyncio.run(xp.adjust_xp(USER, -31, "too much", "a2"))
    assert [e.entry_id for e in repository.entries(USER)] == ["req#a1"]
    assert repository.progress[USER].total_xp == 30
