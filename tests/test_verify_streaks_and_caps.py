"""`rewardsctl verify`'s invariants of caps and streaks, pure: hand-made table
contents in, a report out (rewardsctl.verify.verify_contents), as the other
checker tests do. A player of a game in New York's time zone logs in (capped at
one award a day) and plays matches; the checker counts caps' slots and streaks'
runs in that zone's days and weeks, against the ledger."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from common.models import Level, LevelTable, iso_utc
from rewardsctl.verify import (
    INVARIANTS,
    NOTE,
    VIOLATION,
    WARNING,
    StageContents,
    report_as_json,
    report_as_text,
    verify_contents,
)

GAME_ZONE = "America/New_York"
NEW_YORK = ZoneInfo(GAME_ZONE)
LEVEL_TABLE = LevelTable([Level(1, 0), Level(2, 10_000)])
CAP_AND_STREAK_INVARIANTS = ("cap-respected", "streak-periods-have-awards", "streak-summary-consistent")

LOGIN = {"activity_id": "login", "name": "Log in", "category": "daily", "xp": Decimal(10)}
CAPPED_LOGIN = {**LOGIN, "cap_max_awards": Decimal(1), "cap_period": "day"}
WIN = {"activity_id": "win", "name": "Win", "category": "pvp", "xp": Decimal(20)}
LOGIN_DAYS = {"streak_id": "login-days", "name": "Days logged in", "period": "day", "activity_id": "login"}
PVP_WEEKS = {"streak_id": "pvp-weeks", "name": "Weeks of PvP", "period": "week", "category": "pvp"}


def local(year: int, month: int, day: int, hour: int, minute: int) -> str:
    """A ledger entry's recorded_at for a local time of the game's zone."""
    return iso_utc(datetime(year, month, day, hour, minute, tzinfo=NEW_YORK))


def award(request_id: str, activity: dict[str, Any], when: str, *, capped: bool = False) -> dict[str, Any]:
    """An AwardXp's ledger item as this version writes it: counted, or capped with 0 XP."""
    entry: dict[str, Any] = {
        "user_id": "u",
        "entry_id": f"req#{request_id}",
        "request_id": request_id,
        "kind": "activity",
        "activity_id": activity["activity_id"],
        "category": activity["category"],
        "xp": Decimal(0) if capped else activity["xp"],
        "recorded_at": when,
        "attempt_id": request_id,
    }
    entry.update({"capped": True} if capped else {"counted": True})
    return entry


def revoke(entry: dict[str, Any]) -> dict[str, Any]:
    """A RevokeAward's ledger item of a counted award."""
    return {
        "user_id": "u",
        "entry_id": f"rev#{entry['entry_id']}",
        "kind": "revoke",
        "xp": -entry["xp"],
        "reason": "cheated",
        "reverses_entry_id": entry["entry_id"],
        "activity_id": entry["activity_id"],
        "category": entry["category"],
        "counted": True,
        "attempt_id": f"rev#{entry['entry_id']}",
    }


def run(streak_id: str, period: str, touched: tuple[str, ...], **summary: Any) -> dict[str, Any]:
    """A user's run of a streak (activity_counts, s#<streak_id>), as awards add periods and folds summarize them."""
    item: dict[str, Any] = {"user_id": "u", "counter": f"s#{streak_id}", "period": period}
    if touched:
        item["touched"] = set(touched)
    item.update({name: Decimal(v) if isinstance(v, int) else v for name, v in summary.items()})
    return item


def slot(counter: str, awards: Any) -> dict[str, Any]:
    return {"user_id": "u", "counter": counter, "awards": Decimal(awards) if isinstance(awards, int) else awards}


# The settled player: four logins counted (one a day; the 6th at 23:30 and the 7th at 00:30 are two local days,
# though one UTC day), one capped on the 7th, the one of the 9th revoked since; a win on Monday the 9th.
AWARDS = (
    award("l1", CAPPED_LOGIN, local(2026, 3, 6, 23, 30)),
    award("l2", CAPPED_LOGIN, local(2026, 3, 7, 0, 30)),
    award("l3", CAPPED_LOGIN, local(2026, 3, 7, 10, 0), capped=True),
    award("l4", CAPPED_LOGIN, local(2026, 3, 8, 9, 0)),
    award("l5", CAPPED_LOGIN, local(2026, 3, 9, 9, 0)),
    award("w1", WIN, local(2026, 3, 9, 20, 0)),
)
REVOKES = (revoke(AWARDS[4]),)
# Its runs: the days of the 6th and 7th folded (the last one, its run and the best), the 8th and 9th since.
RUNS = (
    run("login-days", "day", ("2026-03-08", "2026-03-09"), base_last="2026-03-07", base_current=2, base_best=2),
    run("pvp-weeks", "week", ("2026-03-09",)),
)
SLOTS = tuple(slot(f"cap#login#day:2026-03-0{day}", 1) for day in (6, 7, 8, 9))
COUNTERS = {"a#login": 3, "c#daily": 3, "a#win": 1, "c#pvp": 1}  # the revoked login taken off


def player(
    *,
    awards: tuple[dict[str, Any], ...] = AWARDS,
    revokes: tuple[dict[str, Any], ...] = REVOKES,
    runs: tuple[dict[str, Any], ...] = RUNS,
    slots: tuple[dict[str, Any], ...] = SLOTS,
    counters: dict[str, int] | None = None,
    activities: tuple[dict[str, Any], ...] = (CAPPED_LOGIN, WIN),
    streaks: tuple[dict[str, Any], ...] = (LOGIN_DAYS, PVP_WEEKS),
    achievements: tuple[dict[str, Any], ...] = (),
    unlocked: tuple[str, ...] = (),
    time_zone: str = GAME_ZONE,
) -> StageContents:
    """A stage of one user `u` at level 1, its total what its ledger sums to."""
    ledger = [*awards, *revokes]
    progress: dict[str, Any] = {
        "user_id": "u",
        "total_xp": sum(e["xp"] for e in ledger),
        "level": Decimal(1),
        **({"holds_achievements": True} if unlocked else {}),
    }
    counter_items = [
        {"user_id": "u", "counter": c, "awards": Decimal(n)}
        for c, n in (COUNTERS if counters is None else counters).items()
    ]
    return StageContents(
        levels=LEVEL_TABLE,
        progress=[progress],
        ledger=ledger,
        counters=[*counter_items, *slots, *runs],
        unlocks=[{"user_id": "u", "achievement_id": a, "xp_reward": Decimal(0)} for a in unlocked],
        achievements=list(achievements),
        activities=list(activities),
        streaks=list(streaks),
        time_zone=time_zone,
    )


def findings(contents: StageContents, **options: bool) -> set[tuple[str, str]]:
    return {(f.severity, f.invariant) for f in verify_contents(contents, **options).findings}


def messages(contents: StageContents, **options: bool) -> list[tuple[str, str, str]]:
    return [(f.severity, f.invariant, f.message) for f in verify_contents(contents, **options).findings]


# --- a settled player ---------------------------------------------------------------------------


def test_a_settled_player_with_caps_and_streaks_has_no_findings_and_each_new_invariant_is_counted() -> None:
    report = verify_contents(player())
    assert report.findings == [] and report.ok
    # Each day with awards of the capped activity (4), and each of its slots (4).
    assert report.checked["cap-respected"] == 8
    # Each run, and each period a run holds: login-days the 7th (folded), the 8th and 9th; pvp-weeks the 9th's week.
    assert report.checked["streak-summary-consistent"] == 2
    assert report.checked["streak-periods-have-awards"] == 4
    # Cap slots and streak runs are activity_counts items too, but not counters of awards.
    assert report.checked["counters-match-ledger"] == 4
    assert all(name in INVARIANTS for name in CAP_AND_STREAK_INVARIANTS)
    summary = report_as_text(report).splitlines()
    assert summary[2].endswith(" · caps' and streaks' periods in time zone America/New_York")
    row = next(line.split() for line in summary if line.strip().startswith("streak-periods-have-awards "))
    assert row[:5] == ["streak-periods-have-awards", "4", "0", "0", "0"]
    as_json = json.loads(report_as_json(report))
    assert as_json["time_zone"] == GAME_ZONE
    assert as_json["invariants"]["cap-respected"]["checked"] == 8


def test_a_stage_without_caps_or_streaks_checks_none_of_their_invariants() -> None:
    """What a load without capped activities or streaks (the crash test's) reports for them: 0 checks."""
    plain = player(
        awards=tuple(award(f"w{i}", WIN, local(2026, 3, 9, 20, i)) for i in range(3)),
        revokes=(),
        runs=(),
        slots=(),
        counters={"a#win": 3, "c#pvp": 3},
        activities=(LOGIN, WIN),
        streaks=(),
    )
    report = verify_contents(plain)
    assert report.findings == []
    assert [report.checked[name] for name in CAP_AND_STREAK_INVARIANTS] == [0, 0, 0]
    assert "time zone" not in report_as_text(report)


# --- caps ----------------------------------------------------------------------------------------


def test_caps_count_in_the_days_of_the_game_time_zone() -> None:
    # Read in UTC, the 6th at 23:30 and the 7th at 00:30 (04:30Z and 05:30Z) are one day of two counted logins,
    # and the slot of the 6th has no award of its day.
    assert messages(player(time_zone="UTC")) == [
        (
            VIOLATION,
            "cap-respected",
            "activity 'login' is capped at 1 a day, but 2 of its awards in day:2026-03-07 were not capped (+1)",
        ),
        (
            VIOLATION,
            "cap-respected",
            "cap slot 'cap#login#day:2026-03-06' holds 1 awards, but the ledger has 0 awards of 'login' in "
            "day:2026-03-06 that were not capped (+1)",
        ),
    ]
    assert findings(player(time_zone="UTC"), catalog_changed=True) == {(NOTE, "cap-respected")}


def test_no_more_awards_count_in_a_period_than_the_cap_and_none_is_capped_below_it() -> None:
    twice = player(
        awards=(*AWARDS, award("l6", CAPPED_LOGIN, local(2026, 3, 8, 21, 0))),
        counters={**COUNTERS, "a#login": 4, "c#daily": 4},
    )
    assert messages(twice) == [
        (
            VIOLATION,
            "cap-respected",
            "activity 'login' is capped at 1 a day, but 2 of its awards in day:2026-03-08 were not capped (+1)",
        )
    ]
    # The cap was raised since (a catalog change): a note.
    assert findings(twice, catalog_changed=True) == {(NOTE, "cap-respected")}
    # Capped at 2 a day now: the capped award of the 7th was refused while a slot was free.
    looser = player(activities=({**CAPPED_LOGIN, "cap_max_awards": Decimal(2)}, WIN))
    assert messages(looser) == [
        (
            VIOLATION,
            "cap-respected",
            "1 awards of activity 'login' in day:2026-03-07 were capped, but only 1 of the 2 its cap allows a day "
            "counted",
        )
    ]
    # A weekly cap of 5: the four counted logins are one week's (Monday the 9th starts the next: 3 and 1).
    weekly = player(activities=({**CAPPED_LOGIN, "cap_max_awards": Decimal(5), "cap_period": "week"}, WIN))
    report = verify_contents(weekly)
    assert [(f.invariant, f.message) for f in report.findings] == [
        (
            "cap-respected",
            "1 awards of activity 'login' in week:2026-03-02 were capped, but only 3 of the 5 its cap allows a week "
            "counted",
        )
    ]


def test_a_cap_slot_holds_at_most_the_awards_of_its_period_that_counted() -> None:
    # A slot is taken only in the transaction that records an award that is not capped; a revoke gives none back.
    over = player(slots=(*SLOTS[:3], slot("cap#login#day:2026-03-09", 2)))
    assert messages(over) == [
        (
            VIOLATION,
            "cap-respected",
            "cap slot 'cap#login#day:2026-03-09' holds 2 awards, but the ledger has 1 awards of 'login' in "
            "day:2026-03-09 that were not capped (+1)",
        )
    ]
    malformed = player(slots=(*SLOTS, slot("cap#login#2026-03-09", 1), slot("cap#login#day:2026-03-10", "one")))
    assert messages(malformed) == [
        (VIOLATION, "cap-respected", "counter 'cap#login#2026-03-09' is not cap#<activity_id>#<day|week>:<date>"),
        (
            VIOLATION,
            "cap-respected",
            "cap slot 'cap#login#day:2026-03-10' holds awards 'one', not a whole number >= 0",
        ),
    ]
    # Slots of an activity with no cap now (it was lifted) are still checked against the ledger.
    lifted = player(activities=(LOGIN, WIN))
    assert verify_contents(lifted).findings == [] and verify_contents(lifted).checked["cap-respected"] == 4


# --- streaks -------------------------------------------------------------------------------------


def test_each_period_of_a_run_had_a_counted_award_of_what_the_streak_counts() -> None:
    # The 7th had a counted login at 00:30 (it is the summary's last day); the 10th had none.
    extra_day = player(
        runs=(
            run(
                "login-days",
                "day",
                ("2026-03-08", "2026-03-09", "2026-03-10"),
                base_last="2026-03-07",
                base_current=2,
                base_best=2,
            ),
            RUNS[1],
        )
    )
    assert messages(extra_day) == [
        (
            VIOLATION,
            "streak-periods-have-awards",
            "streak run 's#login-days' holds the day of 2026-03-10, but the ledger has no counted award of "
            "activity 'login' in it",
        )
    ]
    # The streak counted the category pvp, not daily, since its runs were made: a catalog change.
    moved = player(streaks=({**LOGIN_DAYS, "activity_id": "win"}, PVP_WEEKS))
    assert findings(moved) == {(VIOLATION, "streak-periods-have-awards")}
    assert [m for _, _, m in messages(moved)] == [
        f"streak run 's#login-days' holds the day of {day}, but the ledger has no counted award of activity 'win' in it"
        for day in ("2026-03-07", "2026-03-08")
    ]
    assert findings(moved, catalog_changed=True) == {(NOTE, "streak-periods-have-awards")}
    # A deleted streak's item stays with what it counted: its runs are checked all the same.
    deleted = player(streaks=({**LOGIN_DAYS, "activity_id": "win", "deleted": True}, PVP_WEEKS))
    assert messages(deleted)[0][2].endswith("in it (the streak is deleted)")
    assert verify_contents(player(streaks=({**LOGIN_DAYS, "deleted": True}, PVP_WEEKS))).findings == []


def test_a_category_streak_counts_the_category_each_award_counted_under() -> None:
    # The win of Monday the 9th is the pvp week's; neither a win recorded under another category (the activity
    # moved since) nor a capped one makes a week of pvp.
    other_week = player(
        awards=(
            *AWARDS,
            {**award("w0", WIN, local(2026, 3, 4, 20, 0)), "category": "arena"},
            award("w00", WIN, local(2026, 3, 5, 20, 0), capped=True),
        ),
        runs=(RUNS[0], run("pvp-weeks", "week", ("2026-03-02", "2026-03-09"))),
        counters={**COUNTERS, "a#win": 2, "c#arena": 1},
    )
    assert messages(other_week) == [
        (
            VIOLATION,
            "streak-periods-have-awards",
            "streak run 's#pvp-weeks' holds the week of 2026-03-02, but the ledger has no counted award of "
            "category 'pvp' in it",
        )
    ]


def test_a_run_holds_first_days_of_its_streak_period_and_a_consistent_summary() -> None:
    def run_messages(*runs: dict[str, Any], catalog_changed: bool = False) -> list[str]:
        report = verify_contents(player(runs=runs), catalog_changed=catalog_changed)
        assert {(f.severity, f.invariant) for f in report.findings} == {(VIOLATION, "streak-summary-consistent")}
        return [f.message for f in report.findings]

    assert run_messages(
        run("login-days", "day", ("2026-03-09",), base_last="2026-03-08", base_current=3, base_best=2),
        run("pvp-weeks", "week", ("2026-03-10",)),
    ) == [
        "streak run 's#login-days': base_current 3 is above base_best 2",
        "streak run 's#pvp-weeks': 2026-03-10 is not the first day of a week (a Monday)",
    ]
    assert run_messages(run("login-days", "day", ("2026-03-09", "9 March"), base_last="2026-03-08")) == [
        "streak run 's#login-days': the summary has base_last but not base_best, base_current",
        "streak run 's#login-days': '9 March' is not an ISO date",
    ]
    # A streak's period is fixed once created, even deleted: a run in other periods is never a catalog change.
    assert run_messages(run("login-days", "week", ("2026-03-09",)), catalog_changed=True) == [
        "streak run 's#login-days' is in weeks, but streak 'login-days' counts days (fixed once created)"
    ]
    assert run_messages(run("login-days", "month", ("2026-03-09",))) == [
        "streak run 's#login-days': period 'month' is not day or week"
    ]
    # A run of a streak the streak table does not hold (a deleted streak's item stays): what it counts is unknown.
    gone = player(streaks=(PVP_WEEKS,))
    assert messages(gone) == [
        (
            VIOLATION,
            "streak-summary-consistent",
            "streak run 's#login-days': streak 'login-days' is not in the streak table (a deleted streak's item "
            "stays there), so what it counts is not known",
        )
    ]
    assert findings(gone, catalog_changed=True) == {(NOTE, "streak-summary-consistent")}


def test_an_item_an_auto_unlock_watch_alone_made_is_not_a_run() -> None:
    watched = player(runs=(*RUNS, {"user_id": "u", "counter": "s#pvp-days", "watch_at": Decimal(3)}))
    report = verify_contents(watched)
    assert report.findings == [] and report.checked["streak-summary-consistent"] == 2


def test_streak_requirements_are_checked_against_the_best_run() -> None:
    # login-days: the 6th to the 9th in a row, best 4 (the summary's 2, then the 8th and the 9th).
    def requiring(length: int, *, auto: bool) -> dict[str, Any]:
        return {
            "achievement_id": f"regular-{length}",
            "xp_reward": Decimal(0),
            "auto_unlock": auto,
            "requirements": {
                "required_achievements": [],
                "min_total_xp": Decimal(0),
                "min_level": Decimal(0),
                "streak_lengths": [{"streak_id": "login-days", "length": Decimal(length)}],
            },
        }

    held = player(achievements=(requiring(4, auto=False),), unlocked=("regular-4",))
    assert verify_contents(held).findings == []
    short = player(achievements=(requiring(5, auto=False),), unlocked=("regular-5",))
    assert messages(short) == [
        (
            VIOLATION,
            "unlock-requirements-held",
            "'regular-5' is unlocked but its requirements do not hold: streak 'login-days' best run 4 < 5",
        )
    ]
    assert findings(short, catalog_changed=True) == {(NOTE, "unlock-requirements-held")}
    # An auto-unlock achievement the best run meets, not unlocked yet: due (a warning), not one that asks for more.
    due = player(achievements=(requiring(4, auto=True), requiring(5, auto=True)))
    assert messages(due) == [
        (
            WARNING,
            "auto-unlocks-made",
            "auto-unlock achievement 'regular-4' is due, not yet unlocked: `rewardsctl achievements backfill` "
            "unlocks it",
        )
    ]
