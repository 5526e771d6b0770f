"""Pure domain rules: no servers, no DynamoDB."""

from __future__ import annotations

from common.auto_unlock import Requirements, Standing, unmet_requirements
from common.models import ACTIVITY, GRANT, LedgerEntry, Level, LevelTable, Reward, entry_id_for
from levels_service.domain import MAX_LEVELS_PER_STEP, plan_level_up
from xp_service.domain import is_same_request

TABLE = LevelTable(
    [
        Level(3, 300, (Reward("coins", 200),)),
        Level(1, 0),
        Level(2, 100, (Reward("coins", 100),)),
        Level(5, 1000, (Reward("title", 1),)),
    ]
)


def test_level_is_highest_defined_level_whose_requirement_is_met() -> None:
    assert [TABLE.level_for_xp(xp) for xp in (0, 99, 100, 299, 300, 999, 1000, 10**9)] == [1, 1, 2, 2, 3, 3, 5, 5]


def test_no_level_fits_gives_level_zero() -> None:
    assert LevelTable([Level(1, 10)]).level_for_xp(9) == 0
    assert LevelTable([]).level_for_xp(10**6) == 0


def test_levels_passed_are_each_defined_level_above_previous_up_to_current() -> None:
    assert [l.level for l in TABLE.levels_passed(1, 5)] == [2, 3, 5]
    assert [l.level for l in TABLE.levels_passed(2, 3)] == [3]
    assert TABLE.levels_passed(3, 3) == ()


def test_new_user_starts_at_start_level_without_its_rewards() -> None:
    plan = plan_level_up(LevelTable([Level(1, 0, (Reward("starter", 1),)), Level(2, 50)]), None, 0)
    assert (plan.previous_level, plan.current_level, plan.rewards, plan.leveled_up) == (1, 1, (), False)


def test_multi_level_jump_plans_every_passed_level() -> None:
    plan = plan_level_up(TABLE, None, 1500)
    assert (plan.previous_level, plan.current_level) == (1, 5)
    assert [l.level for l in plan.passed] == [2, 3, 5]
    assert plan.rewards == (Reward("coins", 100), Reward("coins", 200), Reward("title", 1))


def test_a_jump_longer_than_one_write_goes_in_steps() -> None:
    table = LevelTable(Level(n, (n - 1) * 10, (Reward(f"r{n}", 1),)) for n in range(1, 251))
    plan = plan_level_up(table, None, 10**6)
    assert (plan.previous_level, plan.current_level, len(plan.passed)) == (1, 250, 249)
    step = plan.first_step()
    assert (step.previous_level, step.current_level, len(step.passed)) == (
        1,
        1 + MAX_LEVELS_PER_STEP,
        MAX_LEVELS_PER_STEP,
    )
    assert plan_level_up(table, None, 50).first_step() == plan_level_up(table, None, 50)


def test_levels_never_go_down_when_the_table_changes() -> None:
    plan = plan_level_up(LevelTable([Level(1, 0), Level(2, 5000)]), 3, 400)
    assert (plan.previous_level, plan.current_level, plan.leveled_up) == (3, 3, False)


def test_next_level_xp_is_zero_at_the_top() -> None:
    assert TABLE.next_level_xp(1) == 100
    assert TABLE.next_level_xp(3) == 1000
    assert TABLE.next_level_xp(5) == 0


def _entry(kind: str, xp: int, activity_id: str = "") -> LedgerEntry:
    return LedgerEntry("u", "req#r", "r", kind, xp, activity_id=activity_id)


def test_a_retry_names_the_same_activity_whatever_its_xp_is_now() -> None:
    assert is_same_request(_entry(ACTIVITY, 10, "a"), _entry(ACTIVITY, 99, "a"))
    assert not is_same_request(_entry(ACTIVITY, 10, "a"), _entry(ACTIVITY, 10, "b"))
    assert not is_same_request(_entry(ACTIVITY, 10, "a"), _entry(GRANT, 10))
    assert is_same_request(_entry(GRANT, 10), _entry(GRANT, 10))
    assert not is_same_request(_entry(GRANT, 10), _entry(GRANT, 11))


def test_request_ids_and_generated_ids_never_collide() -> None:
    assert entry_id_for("abc") == "req#abc"
    generated = {entry_id_for("") for _ in range(100)}
    assert len(generated) == 100 and all(g.startswith("auto#") for g in generated)


def test_unmet_requirements_name_what_is_missing() -> None:
    requirements = Requirements(("first-blood", "explorer"), min_total_xp=500, min_level=3)
    unmet = unmet_requirements(requirements, Standing(frozenset({"explorer"}), 120, 2))
    assert [subject for subject, _ in unmet] == ["required_achievements/first-blood", "min_total_xp", "min_level"]
    assert "needs 500 total XP, has 120" in unmet[1][1]
    assert unmet_requirements(requirements, Standing(frozenset({"explorer", "first-blood"}), 500, 3)) == []
