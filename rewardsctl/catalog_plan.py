"""What `catalog apply` must do to make the services' catalog what the file
says: a pure comparison of two catalogs, in a stable order; which changes the
services would refuse (a streak's period is fixed once created); and which
auto-unlock achievements the plan adds or makes easier to get, whose players
a backfill should evaluate."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from common.streaks import Streak, StreakLength
from rewardsctl.catalog import SECTIONS, Achievement, Activity, ActivityCount, Catalog, Level, period_name

Entry = Activity | Streak | Achievement | Level
Action = Literal["create", "change", "delete", "keep"]

# The singular of each section, as the plan names an entry.
ENTRY_KIND = {"activities": "activity", "streaks": "streak", "achievements": "achievement", "levels": "level"}


def entry_key(entry: Entry) -> str | int:
    """What names an entry in its section: its id, a level's number."""
    return entry.streak_id if isinstance(entry, Streak) else entry.key


@dataclass(frozen=True)
class FieldChange:
    field: str
    old: Any
    new: Any


@dataclass(frozen=True)
class CatalogChange:
    """One entry to create, change or delete; or, under --no-delete, one the
    file lacks that is kept ("keep", which writes nothing)."""

    action: Action
    section: str
    key: str | int
    entry: Entry  # what is written, or what is deleted or kept
    field_changes: tuple[FieldChange, ...] = ()
    # Why the service would refuse this change (so that apply writes nothing); empty when it would not.
    refused: str = ""

    @property
    def kind(self) -> str:
        return ENTRY_KIND[self.section]

    @property
    def writes(self) -> bool:
        return self.action != "keep"


@dataclass(frozen=True)
class SectionSummary:
    section: str
    managed: bool  # False when the file leaves the section out
    create: int = 0
    change: int = 0
    delete: int = 0
    keep: int = 0
    unchanged: int = 0


@dataclass(frozen=True)
class CatalogPlan:
    changes: tuple[CatalogChange, ...]
    summaries: tuple[SectionSummary, ...]

    @property
    def writes(self) -> tuple[CatalogChange, ...]:
        return tuple(c for c in self.changes if c.writes)

    @property
    def refused(self) -> tuple[CatalogChange, ...]:
        """The changes the services would refuse: apply makes none of the plan's changes then."""
        return tuple(c for c in self.changes if c.refused)


def plan_catalog(desired: Catalog, current: Catalog, *, delete_missing: bool = True) -> CatalogPlan:
    """Entries of `desired` missing from `current` are created, those that
    differ are changed (replaced whole), and entries of `current` that
    `desired` lacks are deleted, or kept when delete_missing is False. A
    section `desired` leaves out (None) is not touched. Order: sections as in
    the file format, and within one, creates and changes by key, then deletes.
    A change of a streak's period is planned as refused (`refused` says why):
    the service keeps a streak's period for good, its players' runs being
    made of periods of that length."""
    changes: list[CatalogChange] = []
    summaries: list[SectionSummary] = []
    for section in SECTIONS:
        wanted: tuple[Entry, ...] | None = getattr(desired, section)
        present: tuple[Entry, ...] = getattr(current, section) or ()
        if wanted is None:
            summaries.append(SectionSummary(section, managed=False, unchanged=len(present)))
            continue
        present_by_key = {entry_key(e): e for e in present}
        wanted_keys = {entry_key(e) for e in wanted}
        counts = {"create": 0, "change": 0, "delete": 0, "keep": 0, "unchanged": 0}
        for entry in sorted(wanted, key=entry_key):
            key = entry_key(entry)
            old = present_by_key.get(key)
            if old is None:
                changes.append(CatalogChange("create", section, key, entry))
                counts["create"] += 1
            elif old != entry:
                changes.append(
                    CatalogChange("change", section, key, entry, field_changes(old, entry), _refusal(old, entry))
                )
                counts["change"] += 1
            else:
                counts["unchanged"] += 1
        for entry in sorted(present, key=entry_key):
            if entry_key(entry) not in wanted_keys:
                action: Action = "delete" if delete_missing else "keep"
                changes.append(CatalogChange(action, section, entry_key(entry), entry))
                counts[action] += 1
        summaries.append(SectionSummary(section, managed=True, **counts))
    return CatalogPlan(tuple(changes), tuple(summaries))


def _refusal(old: Entry, new: Entry) -> str:
    """Why the service would refuse to replace `old` by `new`; empty when it would not."""
    if isinstance(old, Streak) and isinstance(new, Streak) and old.period != new.period:
        return (
            f"a streak's period is fixed once created (its players' runs are made of {old.period}s), so XpService "
            f"refuses {period_name(new.period)} with FAILED_PRECONDITION: a streak of another period needs a new "
            "streak_id"
        )
    return ""


def field_changes(old: Entry, new: Entry) -> tuple[FieldChange, ...]:
    return tuple(
        FieldChange(f.name, getattr(old, f.name), getattr(new, f.name))
        for f in fields(old)
        if getattr(old, f.name) != getattr(new, f.name)
    )


@dataclass(frozen=True)
class Backfill:
    """An auto-unlock achievement that players who play no more may now hold:
    why, as the command says it ("added", "min_level lowered 5 -> 3", ...)."""

    achievement_id: str
    reasons: tuple[str, ...]


def backfills(plan: CatalogPlan) -> tuple[Backfill, ...]:
    """The auto_unlock achievements the plan creates, or changes to be easier
    to get: auto_unlock switched on, min_total_xp or min_level lowered, an
    activity count lowered or removed, a required achievement removed. A
    change that only makes an achievement harder (or touches other fields)
    needs none: a catalog edit never takes an unlock away. A streak run
    lowered or removed eases it too."""
    found = []
    for change in plan.changes:
        entry = change.entry
        if not isinstance(entry, Achievement) or not entry.auto_unlock:
            continue
        if change.action == "create":
            found.append(Backfill(entry.achievement_id, ("added",)))
        elif change.action == "change":
            old = {f.field: f.old for f in change.field_changes}
            reasons = easings(old, entry)
            if reasons:
                found.append(Backfill(entry.achievement_id, reasons))
    return tuple(found)


def easings(old: dict[str, Any], new: Achievement) -> tuple[str, ...]:
    """How `new` is easier to get than it was; `old` holds the old value of
    each field that changed."""
    if old.get("auto_unlock") is False:
        return ("auto_unlock switched on",)
    reasons = []
    for name in ("min_total_xp", "min_level"):
        if name in old and getattr(new, name) < old[name]:
            reasons.append(f"{name} lowered {old[name]:,} -> {getattr(new, name):,}")
    if "activity_counts" in old:
        new_counts = {(c.activity_id, c.category): c for c in new.activity_counts}
        old_count: ActivityCount
        for old_count in old["activity_counts"]:
            now = new_counts.get((old_count.activity_id, old_count.category))
            if now is None:
                reasons.append(f"count of {old_count.subject} removed (was {old_count.count:,})")
            elif now.count < old_count.count:
                reasons.append(f"count of {old_count.subject} lowered {old_count.count:,} -> {now.count:,}")
    if "streak_lengths" in old:
        new_runs = {s.streak_id: s for s in new.streak_lengths}
        old_run: StreakLength
        for old_run in old["streak_lengths"]:
            run = new_runs.get(old_run.streak_id)
            if run is None:
                reasons.append(f"run of streak {old_run.streak_id} removed (was {old_run.length:,})")
            elif run.length < old_run.length:
                reasons.append(f"run of streak {old_run.streak_id} lowered {old_run.length:,} -> {run.length:,}")
    if "required_achievements" in old:
        for required in old["required_achievements"]:
            if required not in new.required_achievements:
                reasons.append(f"required achievement {required} removed")
    return tuple(reasons)
