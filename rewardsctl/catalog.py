"""The catalog as data, and its YAML file format. Pure: no gRPC, no I/O.

A catalog file is a mapping with up to four sections, each a list of entries
whose keys are the proto field names, and whose enum values are the proto
names (so what grpcurl shows reads the same):

    activities:   [{activity_id, name, description?, category?, xp?, cap?: {max_awards, period}}]
    streaks:      [{streak_id, name, activity_id | category, period}]
    achievements: [{achievement_id, name, description?, xp_reward?, hidden?, auto_unlock?,
                    requirements?: {required_achievements?, min_total_xp?, min_level?,
                                    activity_counts?: [{activity_id | category, count}],
                                    streak_lengths?: [{streak_id, length}]}}]
    levels:       [{level, xp_required?, rewards?: [{reward_id, quantity}]}]

A period is PERIOD_DAY or PERIOD_WEEK: days, or weeks from Monday, of the
game's one time zone. An activity's `cap` allows a user at most `max_awards`
awards of it each period (beyond it an award is recorded with 0 XP and counts
toward nothing); max_awards 0 is no cap, as is leaving `cap` out. A streak
counts the periods in a row in which a user had a counted award of its
activity (activity_id) or of any activity of its category; its period is
fixed once created, even after it is deleted, so a file that changes the
period of a streak of the catalog is refused before anything is written (a
streak of another period needs a new streak_id).

An achievement with `auto_unlock: true` is unlocked by the service itself as
soon as every requirement holds; `activity_counts` asks for at least `count`
awards of one activity (activity_id) or of the activities of one category;
`streak_lengths` for a best run of at least `length` periods of a streak.

A section left out of the file is not managed by it; a section present (even
empty) is the whole truth for that part of the catalog.

The file is checked for its shape here (types, unknown keys, duplicates, and
requirements or streaks that name achievements, activities or streaks the file
does not define, or requirements that form a cycle); the services stay the
authority on limits such as lengths and ranges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from common.periods import DAY, WEEK
from common.streaks import Streak, StreakLength

# In the order a plan writes them: a streak counts activities, an achievement may ask for a streak's run.
SECTIONS = ("activities", "streaks", "achievements", "levels")

# A period (common.periods) as the file spells it: the proto enum's name.
PERIOD_NAMES = {DAY: "PERIOD_DAY", WEEK: "PERIOD_WEEK"}
_PERIODS_BY_NAME = {name: period for period, name in PERIOD_NAMES.items()}


class CatalogFileError(ValueError):
    """The file is not a valid catalog; `problems` lists each, with where it is."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Reward:
    reward_id: str
    quantity: int


@dataclass(frozen=True)
class ActivityCount:
    """At least `count` awards of one activity, or of one category's
    activities: exactly one of activity_id and category is set."""

    activity_id: str = ""
    category: str = ""
    count: int = 0

    @property
    def subject(self) -> str:
        """What is counted, as the plan and the file's problems name it."""
        return self.activity_id if self.activity_id else f"category {self.category}"


@dataclass(frozen=True)
class Cap:
    """At most `max_awards` awards of an activity a user, each `period`
    (common.periods.DAY or WEEK). An activity without a cap has None."""

    max_awards: int
    period: str


@dataclass(frozen=True)
class Activity:
    activity_id: str
    name: str
    description: str = ""
    category: str = ""
    xp: int = 0
    cap: Cap | None = None

    @property
    def key(self) -> str:
        return self.activity_id


@dataclass(frozen=True)
class Achievement:
    achievement_id: str
    name: str
    description: str = ""
    xp_reward: int = 0
    hidden: bool = False
    required_achievements: tuple[str, ...] = ()
    min_total_xp: int = 0
    min_level: int = 0
    activity_counts: tuple[ActivityCount, ...] = ()
    auto_unlock: bool = False
    streak_lengths: tuple[StreakLength, ...] = ()

    @property
    def key(self) -> str:
        return self.achievement_id

    @property
    def has_requirements(self) -> bool:
        return bool(
            self.required_achievements
            or self.min_total_xp
            or self.min_level
            or self.activity_counts
            or self.streak_lengths
        )


@dataclass(frozen=True)
class Level:
    level: int
    xp_required: int = 0
    rewards: tuple[Reward, ...] = ()

    @property
    def key(self) -> int:
        return self.level


@dataclass(frozen=True)
class Catalog:
    """None for a section the file leaves out (not managed); entries are kept
    in a stable order: by id, levels by number. Streaks are common.streaks.Streak,
    the services' own model."""

    activities: tuple[Activity, ...] | None = None
    achievements: tuple[Achievement, ...] | None = None
    levels: tuple[Level, ...] | None = None
    streaks: tuple[Streak, ...] | None = None

    @classmethod
    def of(
        cls,
        activities: list[Activity],
        achievements: list[Achievement],
        levels: list[Level],
        streaks: list[Streak] | tuple[Streak, ...] = (),
    ) -> Catalog:
        return cls(
            tuple(sorted(activities, key=lambda a: a.activity_id)),
            tuple(sorted(achievements, key=lambda a: a.achievement_id)),
            tuple(sorted(levels, key=lambda l: l.level)),
            tuple(sorted(streaks, key=lambda s: s.streak_id)),
        )

    def is_empty(self) -> bool:
        return not (self.activities or self.achievements or self.levels or self.streaks)


# --- reading ----------------------------------------------------------------------


class _Reader:
    """Collects every problem of a file, each with its place (activities[2].xp),
    so that one run shows them all."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def mapping(
        self, where: str, value: Any, required: tuple[str, ...], optional: tuple[str, ...]
    ) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.fail(where, f"must be a mapping (got {_kind(value)})")
            return None
        for key in value:
            if key not in required and key not in optional:
                self.fail(f"{where}.{key}", f"is not a known key (known: {', '.join(required + optional)})")
        for key in required:
            if key not in value:
                self.fail(f"{where}.{key}", "is required")
        return value

    def string(self, where: str, values: Mapping[str, Any], key: str) -> str:
        value = values.get(key, "")
        if not isinstance(value, str):
            # YAML reads `no`, `on`, `123` or `2024-01-01` as other types.
            self.fail(f"{where}.{key}", f"must be a string (got {_kind(value)} {value!r}); quote it")
            return ""
        return value

    def integer(self, where: str, values: Mapping[str, Any], key: str, *, bits: int = 64) -> int:
        """A whole number that fits the proto field (int64, or int32 for levels):
        the services judge the range that makes sense, but a number protobuf
        cannot carry would never reach them."""
        value = values.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"{where}.{key}", f"must be a whole number (got {_kind(value)} {value!r})")
            return 0
        if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
            self.fail(f"{where}.{key}", f"is out of range (got {value})")
            return 0
        return value

    def boolean(self, where: str, values: Mapping[str, Any], key: str) -> bool:
        value = values.get(key, False)
        if not isinstance(value, bool):
            self.fail(f"{where}.{key}", f"must be true or false (got {_kind(value)} {value!r})")
            return False
        return value

    def sequence(self, where: str, value: Any) -> list[Any]:
        if value is None:  # `levels:` with nothing after it: an empty section
            return []
        if not isinstance(value, list):
            self.fail(where, f"must be a list (got {_kind(value)})")
            return []
        return value


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "boolean"
    return {int: "number", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def _read_activity(reader: _Reader, where: str, value: Any) -> Activity | None:
    values = reader.mapping(where, value, ("activity_id", "name"), ("description", "category", "xp", "cap"))
    if values is None:
        return None
    return Activity(
        activity_id=reader.string(where, values, "activity_id"),
        name=reader.string(where, values, "name"),
        description=reader.string(where, values, "description"),
        category=reader.string(where, values, "category"),
        xp=reader.integer(where, values, "xp"),
        cap=_read_cap(reader, f"{where}.cap", values.get("cap")),
    )


def _read_cap(reader: _Reader, where: str, value: Any) -> Cap | None:
    """{max_awards, period}; max_awards 0 is no cap (the service keeps none), so it reads as None."""
    if value is None:
        return None
    values = reader.mapping(where, value, ("max_awards",), ("period",))
    if values is None:
        return None
    max_awards = reader.integer(where, values, "max_awards", bits=32)
    if max_awards == 0:
        if "period" in values:
            _read_period(reader, where, values)  # still spelled right
        return None
    if "period" not in values:
        reader.fail(f"{where}.period", "is required with a max_awards other than 0 (PERIOD_DAY or PERIOD_WEEK)")
        return None
    return Cap(max_awards, _read_period(reader, where, values))


def _read_period(reader: _Reader, where: str, values: Mapping[str, Any]) -> str:
    """A period as the file spells it, the proto enum's name; common.periods' value."""
    name = values.get("period")
    if name not in _PERIODS_BY_NAME:
        reader.fail(f"{where}.period", f"must be {' or '.join(_PERIODS_BY_NAME)} (got {_kind(name)} {name!r})")
        return ""
    return _PERIODS_BY_NAME[name]


def _read_streak(reader: _Reader, where: str, value: Any, activity_ids: set[str] | None) -> Streak | None:
    """{streak_id, name, activity_id | category, period}. A file that manages
    the activities is the whole activity catalog: a streak of an activity it
    does not define could never grow."""
    values = reader.mapping(where, value, ("streak_id", "name", "period"), ("activity_id", "category"))
    if values is None:
        return None
    activity_id = category = ""
    has_activity, has_category = "activity_id" in values, "category" in values
    if has_activity == has_category:
        reader.fail(where, "set exactly one of activity_id and category: what the streak counts")
    else:
        key = "activity_id" if has_activity else "category"
        named = reader.string(where, values, key)
        if not named:
            reader.fail(f"{where}.{key}", "must not be empty")
        elif has_activity and activity_ids is not None and named not in activity_ids:
            reader.fail(f"{where}.activity_id", f"{named!r} is not an activity of this file")
        activity_id, category = (named, "") if has_activity else ("", named)
    return Streak(
        streak_id=reader.string(where, values, "streak_id"),
        name=reader.string(where, values, "name"),
        period=_read_period(reader, where, values) if "period" in values else "",
        activity_id=activity_id,
        category=category,
    )


def _read_achievement(
    reader: _Reader,
    where: str,
    value: Any,
    activity_ids: set[str] | None = None,
    streak_ids: set[str] | None = None,
) -> Achievement | None:
    """`activity_ids`, `streak_ids`: the activities and streaks of the file, when it manages them."""
    values = reader.mapping(
        where, value, ("achievement_id", "name"), ("description", "xp_reward", "hidden", "auto_unlock", "requirements")
    )
    if values is None:
        return None
    required: list[str] = []
    counts: list[ActivityCount] = []
    runs: list[StreakLength] = []
    min_total_xp = min_level = 0
    if values.get("requirements") is not None:
        requirements_where = f"{where}.requirements"
        requirements = reader.mapping(
            requirements_where,
            values["requirements"],
            (),
            ("required_achievements", "min_total_xp", "min_level", "activity_counts", "streak_lengths"),
        )
        if requirements is not None:
            listed = reader.sequence(
                f"{requirements_where}.required_achievements", requirements.get("required_achievements")
            )
            for i, achievement_id in enumerate(listed):
                if not isinstance(achievement_id, str):
                    reader.fail(
                        f"{requirements_where}.required_achievements[{i}]",
                        f"must be an achievement id (got {_kind(achievement_id)} {achievement_id!r})",
                    )
                elif achievement_id in required:
                    # The service keeps each once, so a repeat would show as a change on every apply.
                    reader.fail(
                        f"{requirements_where}.required_achievements[{i}]", f"{achievement_id!r} is listed twice"
                    )
                else:
                    required.append(achievement_id)
            min_total_xp = reader.integer(requirements_where, requirements, "min_total_xp")
            min_level = reader.integer(requirements_where, requirements, "min_level", bits=32)
            counts = _read_activity_counts(
                reader, requirements_where, requirements.get("activity_counts"), activity_ids
            )
            runs = _read_streak_lengths(reader, requirements_where, requirements.get("streak_lengths"), streak_ids)
    return Achievement(
        achievement_id=reader.string(where, values, "achievement_id"),
        name=reader.string(where, values, "name"),
        description=reader.string(where, values, "description"),
        xp_reward=reader.integer(where, values, "xp_reward"),
        hidden=reader.boolean(where, values, "hidden"),
        required_achievements=tuple(required),
        min_total_xp=min_total_xp,
        min_level=min_level,
        activity_counts=tuple(counts),
        auto_unlock=reader.boolean(where, values, "auto_unlock"),
        streak_lengths=tuple(runs),
    )


def _read_activity_counts(
    reader: _Reader, requirements_where: str, value: Any, activity_ids: set[str] | None
) -> list[ActivityCount]:
    """Each {activity_id, count} or {category, count}, each activity or category
    once (the service keeps one count per each, so a repeat would show as a
    change on every apply). A file that manages the activities too is the whole
    activity catalog: a count of an activity it does not define could never be met."""
    counts: list[ActivityCount] = []
    seen: set[tuple[str, str]] = set()
    for i, count_value in enumerate(reader.sequence(f"{requirements_where}.activity_counts", value)):
        where = f"{requirements_where}.activity_counts[{i}]"
        values = reader.mapping(where, count_value, ("count",), ("activity_id", "category"))
        if values is None:
            continue
        has_activity, has_category = "activity_id" in values, "category" in values
        if has_activity == has_category:
            reader.fail(where, "set exactly one of activity_id and category")
            continue
        key = "activity_id" if has_activity else "category"
        named = reader.string(where, values, key)
        if not named:
            reader.fail(f"{where}.{key}", "must not be empty")
            continue
        count = ActivityCount(
            activity_id=named if has_activity else "",
            category=named if has_category else "",
            count=reader.integer(where, values, "count"),
        )
        if (key, named) in seen:
            reader.fail(f"{where}.{key}", f"{named!r} is counted twice")
            continue
        if has_activity and activity_ids is not None and named not in activity_ids:
            reader.fail(f"{where}.activity_id", f"{named!r} is not an activity of this file")
        seen.add((key, named))
        counts.append(count)
    return counts


def _read_streak_lengths(
    reader: _Reader, requirements_where: str, value: Any, streak_ids: set[str] | None
) -> list[StreakLength]:
    """Each {streak_id, length}, each streak once (the service keeps one length
    per streak). A file that manages the streaks is the whole streak catalog: a
    run of a streak it does not define could never grow."""
    runs: list[StreakLength] = []
    seen: set[str] = set()
    for i, run_value in enumerate(reader.sequence(f"{requirements_where}.streak_lengths", value)):
        where = f"{requirements_where}.streak_lengths[{i}]"
        values = reader.mapping(where, run_value, ("streak_id", "length"), ())
        if values is None:
            continue
        streak_id = reader.string(where, values, "streak_id")
        length = reader.integer(where, values, "length")
        if not streak_id:
            reader.fail(f"{where}.streak_id", "must not be empty")
            continue
        if streak_id in seen:
            reader.fail(f"{where}.streak_id", f"{streak_id!r} is listed twice")
            continue
        if streak_ids is not None and streak_id not in streak_ids:
            reader.fail(f"{where}.streak_id", f"{streak_id!r} is not a streak of this file")
        seen.add(streak_id)
        runs.append(StreakLength(streak_id, length))
    return runs


def _read_level(reader: _Reader, where: str, value: Any) -> Level | None:
    values = reader.mapping(where, value, ("level",), ("xp_required", "rewards"))
    if values is None:
        return None
    rewards = []
    for i, reward_value in enumerate(reader.sequence(f"{where}.rewards", values.get("rewards"))):
        reward_where = f"{where}.rewards[{i}]"
        reward = reader.mapping(reward_where, reward_value, ("reward_id", "quantity"), ())
        if reward is not None:
            rewards.append(
                Reward(
                    reader.string(reward_where, reward, "reward_id"), reader.integer(reward_where, reward, "quantity")
                )
            )
    return Level(
        level=reader.integer(where, values, "level", bits=32),
        xp_required=reader.integer(where, values, "xp_required"),
        rewards=tuple(rewards),
    )


def catalog_from_document(document: Any) -> Catalog:
    """The catalog a parsed YAML document describes. Raises CatalogFileError
    listing every problem found."""
    reader = _Reader()
    if document is None:
        raise CatalogFileError(
            ["the file is empty: expected a mapping with activities, streaks, achievements and/or levels"]
        )
    top = reader.mapping("file", document, (), SECTIONS)
    if top is None:
        raise CatalogFileError(reader.problems)
    activities = achievements = levels = streaks = None
    if "activities" in top:
        read = [
            _read_activity(reader, f"activities[{i}]", v)
            for i, v in enumerate(reader.sequence("activities", top["activities"]))
        ]
        activities = [a for a in read if a is not None]
        _check_unique(reader, "activities", [a.activity_id for a in activities], "activity_id")
    activity_ids = None if activities is None else {a.activity_id for a in activities}
    if "streaks" in top:
        read_streaks = [
            _read_streak(reader, f"streaks[{i}]", v, activity_ids)
            for i, v in enumerate(reader.sequence("streaks", top["streaks"]))
        ]
        streaks = [s for s in read_streaks if s is not None]
        _check_unique(reader, "streaks", [s.streak_id for s in streaks], "streak_id")
    if "achievements" in top:
        streak_ids = None if streaks is None else {s.streak_id for s in streaks}
        read_achievements = [
            _read_achievement(reader, f"achievements[{i}]", v, activity_ids, streak_ids)
            for i, v in enumerate(reader.sequence("achievements", top["achievements"]))
        ]
        achievements = [a for a in read_achievements if a is not None]
        _check_unique(reader, "achievements", [a.achievement_id for a in achievements], "achievement_id")
        _check_requirements(reader, achievements)
    if "levels" in top:
        read_levels = [
            _read_level(reader, f"levels[{i}]", v) for i, v in enumerate(reader.sequence("levels", top["levels"]))
        ]
        levels = [l for l in read_levels if l is not None]
        _check_unique(reader, "levels", [l.level for l in levels], "level")
    if reader.problems:
        raise CatalogFileError(reader.problems)
    return Catalog(
        None if activities is None else tuple(sorted(activities, key=lambda a: a.activity_id)),
        None if achievements is None else tuple(sorted(achievements, key=lambda a: a.achievement_id)),
        None if levels is None else tuple(sorted(levels, key=lambda l: l.level)),
        None if streaks is None else tuple(sorted(streaks, key=lambda s: s.streak_id)),
    )


def _check_unique(reader: _Reader, section: str, keys: list[Any], key_name: str) -> None:
    seen: set[Any] = set()
    for i, key in enumerate(keys):
        if key in seen:
            reader.fail(f"{section}[{i}].{key_name}", f"{key!r} is defined twice")
        seen.add(key)


def _check_requirements(reader: _Reader, achievements: list[Achievement]) -> None:
    """The file is the whole achievement catalog, so a requirement on an
    achievement it does not define could never be met; nor could a cycle
    (which the service does not detect)."""
    defined = {a.achievement_id: a for a in achievements}
    for i, achievement in enumerate(achievements):
        for j, required in enumerate(achievement.required_achievements):
            if required == achievement.achievement_id:
                reader.fail(
                    f"achievements[{i}].requirements.required_achievements[{j}]", "an achievement cannot require itself"
                )
            elif required not in defined:
                reader.fail(
                    f"achievements[{i}].requirements.required_achievements[{j}]",
                    f"{required!r} is not an achievement of this file",
                )
    cycle = _find_requirement_cycle(defined)
    if cycle:
        reader.fail("achievements", "requirements form a cycle, so none of them can be unlocked: " + " -> ".join(cycle))


def _find_requirement_cycle(achievements: Mapping[str, Achievement]) -> list[str]:
    """One cycle (a, b, ..., a) through the requirements, or []."""
    done: set[str] = set()
    for start in sorted(achievements):
        path: list[str] = []
        on_path: set[str] = set()
        # Iterative depth-first search: (achievement, index of its next requirement).
        stack = [(start, 0)]
        while stack:
            current, next_index = stack.pop()
            if next_index == 0:
                if current in done:
                    continue
                path.append(current)
                on_path.add(current)
            requirements = [
                r for r in achievements[current].required_achievements if r in achievements and r != current
            ]
            if next_index < len(requirements):
                stack.append((current, next_index + 1))
                required = requirements[next_index]
                if required in on_path:
                    return path[path.index(required) :] + [required]
                if required not in done:
                    stack.append((required, 0))
            else:
                path.pop()
                on_path.discard(current)
                done.add(current)
    return []


def catalog_warnings(catalog: Catalog) -> list[str]:
    """What the services accept but is most likely a mistake."""
    warnings = []
    levels = catalog.levels or ()
    for lower, higher in zip(levels, levels[1:]):
        if higher.xp_required <= lower.xp_required:
            warnings.append(
                f"level {higher.level} needs {higher.xp_required:,} XP, no more than level {lower.level} "
                f"({lower.xp_required:,} XP): a player's level is the highest one their XP reaches, "
                f"so level {lower.level} is skipped"
            )
    categories = {a.category for a in catalog.activities or () if a.category}
    if catalog.activities is not None:
        for streak in catalog.streaks or ():
            if streak.category and streak.category not in categories:
                warnings.append(
                    f"streak {streak.streak_id} counts awards of category {streak.category!r}, "
                    "which no activity of the file has"
                )
    for achievement in catalog.achievements or ():
        if achievement.auto_unlock and not achievement.has_requirements:
            warnings.append(
                f"achievement {achievement.achievement_id} is auto_unlock with no requirements: "
                "every player is given it (at their next award, or by a backfill)"
            )
        if catalog.activities is None:
            continue
        for count in achievement.activity_counts:
            if count.category and count.category not in categories:
                warnings.append(
                    f"achievement {achievement.achievement_id} counts awards of category {count.category!r}, "
                    "which no activity of the file has"
                )
    return warnings


def parse_catalog(text: str) -> Catalog:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CatalogFileError([f"not valid YAML: {error}"]) from error
    return catalog_from_document(document)


# --- writing ----------------------------------------------------------------------


def catalog_to_document(catalog: Catalog) -> dict[str, Any]:
    """The file form of a catalog; defaults are left out, except the XP
    figures, which a reader looks for."""
    document: dict[str, Any] = {}
    if catalog.activities is not None:
        document["activities"] = [_activity_document(a) for a in catalog.activities]
    if catalog.streaks is not None:
        document["streaks"] = [_streak_document(s) for s in catalog.streaks]
    if catalog.achievements is not None:
        document["achievements"] = [_achievement_document(a) for a in catalog.achievements]
    if catalog.levels is not None:
        document["levels"] = [_level_document(l) for l in catalog.levels]
    return document


def _activity_document(activity: Activity) -> dict[str, Any]:
    values: dict[str, Any] = {"activity_id": activity.activity_id, "name": activity.name}
    if activity.description:
        values["description"] = activity.description
    if activity.category:
        values["category"] = activity.category
    values["xp"] = activity.xp
    if activity.cap is not None:
        values["cap"] = _FlowMapping(max_awards=activity.cap.max_awards, period=period_name(activity.cap.period))
    return values


def _streak_document(streak: Streak) -> dict[str, Any]:
    values: dict[str, Any] = {"streak_id": streak.streak_id, "name": streak.name}
    if streak.activity_id:
        values["activity_id"] = streak.activity_id
    if streak.category:
        values["category"] = streak.category
    values["period"] = period_name(streak.period)
    return values


def period_name(period: str) -> str:
    """A period as the file spells it (PERIOD_DAY, PERIOD_WEEK)."""
    return PERIOD_NAMES.get(period, period or "PERIOD_UNSPECIFIED")


def _achievement_document(achievement: Achievement) -> dict[str, Any]:
    values: dict[str, Any] = {"achievement_id": achievement.achievement_id, "name": achievement.name}
    if achievement.description:
        values["description"] = achievement.description
    values["xp_reward"] = achievement.xp_reward
    if achievement.hidden:
        values["hidden"] = True
    if achievement.auto_unlock:
        values["auto_unlock"] = True
    requirements: dict[str, Any] = {}
    if achievement.required_achievements:
        requirements["required_achievements"] = _FlowList(achievement.required_achievements)
    if achievement.min_total_xp:
        requirements["min_total_xp"] = achievement.min_total_xp
    if achievement.min_level:
        requirements["min_level"] = achievement.min_level
    if achievement.activity_counts:
        requirements["activity_counts"] = [
            _FlowMapping(activity_id=c.activity_id, count=c.count)
            if c.activity_id
            else _FlowMapping(category=c.category, count=c.count)
            for c in achievement.activity_counts
        ]
    if achievement.streak_lengths:
        requirements["streak_lengths"] = [
            _FlowMapping(streak_id=s.streak_id, length=s.length) for s in achievement.streak_lengths
        ]
    if requirements:
        values["requirements"] = requirements
    return values


def _level_document(level: Level) -> dict[str, Any]:
    values: dict[str, Any] = {"level": level.level, "xp_required": level.xp_required}
    if level.rewards:
        values["rewards"] = [_FlowMapping(reward_id=r.reward_id, quantity=r.quantity) for r in level.rewards]
    return values


class _FlowList(list[str]):
    """Written on one line: [a, b]."""


class _FlowMapping(dict[str, Any]):
    """Written on one line: {reward_id: gold, quantity: 50}."""


class _CatalogDumper(yaml.SafeDumper):
    """Block style with list items indented under their key, as people write
    YAML; short lists of ids and rewards on one line each."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


_CatalogDumper.add_representer(
    _FlowList, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)
)
_CatalogDumper.add_representer(
    _FlowMapping,
    lambda dumper, value: dumper.represent_mapping("tag:yaml.org,2002:map", value.items(), flow_style=True),
)


def format_catalog(catalog: Catalog, header: str = "") -> str:
    """YAML that parse_catalog reads back to the same catalog."""
    body = yaml.dump(
        catalog_to_document(catalog),
        Dumper=_CatalogDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + body
