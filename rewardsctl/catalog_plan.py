"""What `catalog apply` must do to make the services' catalog what the file
says: a pure comparison of two catalogs, in a stable order."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from rewardsctl.catalog import SECTIONS, Achievement, Activity, Catalog, Level

Entry = Activity | Achievement | Level
Action = Literal["create", "change", "delete", "keep"]

# The singular of each section, as the plan names an entry.
ENTRY_KIND = {"activities": "activity", "achievements": "achievement", "levels": "level"}


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


def plan_catalog(desired: Catalog, current: Catalog, *, delete_missing: bool = True) -> CatalogPlan:
    """Entries of `desired` missing from `current` are created, those that
    differ are changed (replaced whole), and entries of `current` that
    `desired` lacks are deleted, or kept when delete_missing is False. A
    section `desired` leaves out (None) is not touched. Order: sections as in
    the file format, and within one, creates and changes by key, then deletes."""
    changes: list[CatalogChange] = []
    summaries: list[SectionSummary] = []
    for section in SECTIONS:
        wanted: tuple[Entry, ...] | None = getattr(desired, section)
        present: tuple[Entry, ...] = getattr(current, section) or ()
        if wanted is None:
            summaries.append(SectionSummary(section, managed=False, unchanged=len(present)))
            continue
        present_by_key = {e.key: e for e in present}
        wanted_keys = {e.key for e in wanted}
        counts = {"create": 0, "change": 0, "delete": 0, "keep": 0, "unchanged": 0}
        for entry in sorted(wanted, key=lambda e: e.key):
            old = present_by_key.get(entry.key)
            if old is None:
                changes.append(CatalogChange("create", section, entry.key, entry))
                counts["create"] += 1
            elif old != entry:
                changes.append(CatalogChange("change", section, entry.key, entry, field_changes(old, entry)))
                counts["change"] += 1
            else:
                counts["unchanged"] += 1
        for entry in sorted(present, key=lambda e: e.key):
            if entry.key not in wanted_keys:
                action: Action = "delete" if delete_missing else "keep"
                changes.append(CatalogChange(action, section, entry.key, entry))
                counts[action] += 1
        summaries.append(SectionSummary(section, managed=True, **counts))
    return CatalogPlan(tuple(changes), tuple(summaries))


def field_changes(old: Entry, new: Entry) -> tuple[FieldChange, ...]:
    return tuple(
        FieldChange(f.name, getattr(old, f.name), getattr(new, f.name))
        for f in fields(old)
        if getattr(old, f.name) != getattr(new, f.name)
    )
