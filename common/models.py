"""Values the services share: the level table and its rule, the user-progress
record (one DynamoDB item that all three services write, each its own
attributes), the levels a user reached, and a level check's outcome. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Reward:
    reward_id: str
    quantity: int


@dataclass(frozen=True)
class Level:
    level: int
    xp_required: int
    rewards: tuple[Reward, ...] = ()


class LevelTable:
    """The defined levels. A user's level is the highest defined level whose
    xp_required is at most their total XP, 0 when none fits."""

    def __init__(self, levels: Iterable[Level]) -> None:
        self.levels: tuple[Level, ...] = tuple(sorted(levels, key=lambda l: l.level))

    def level_for_xp(self, total_xp: int) -> int:
        return max((l.level for l in self.levels if l.xp_required <= total_xp), default=0)

    @property
    def start_level(self) -> int:
        """Where a new user starts, without that level's rewards."""
        return self.level_for_xp(0)

    def levels_passed(self, previous: int, current: int) -> tuple[Level, ...]:
        """Every defined level L with previous < L <= current, in order."""
        return tuple(l for l in self.levels if previous < l.level <= current)

    def xp_required(self, level: int) -> int:
        return next((l.xp_required for l in self.levels if l.level == level), 0)

    def next_level_xp(self, current: int) -> int:
        """XP at which the next defined level above `current` starts; 0 at the top."""
        return next((l.xp_required for l in self.levels if l.level > current), 0)


@dataclass(frozen=True)
class LevelReached:
    """A level a user passed, with the rewards granted for it, once."""

    level: int
    from_level: int  # the level the user left in the level-up that passed this one
    rewards: tuple[Reward, ...]
    check_id: str  # the CheckLevelUp call that granted it
    granted_at: str


@dataclass(frozen=True)
class ProgressRecord:
    """What user_progress holds for one user. `level` is None until the Levels
    service first checks a user with XP: the user is then at the level 0 XP gives."""

    user_id: str
    total_xp: int = 0
    level: int | None = None
    unlocked_achievements: frozenset[str] = frozenset()
    updated_at: str | None = None

    @classmethod
    def from_attributes(cls, user_id: str, values: Mapping[str, Any] | None) -> ProgressRecord:
        if not values:
            return cls(user_id=user_id)
        return cls(
            user_id=user_id,
            total_xp=int(values.get("total_xp", 0)),
            level=int(values["level"]) if "level" in values else None,
            unlocked_achievements=frozenset(values.get("unlocked_achievements", ())),
            updated_at=values.get("updated_at"),
        )


@dataclass(frozen=True)
class LevelUpOutcome:
    user_id: str
    leveled_up: bool
    previous_level: int
    current_level: int
    total_xp: int
    rewards: tuple[Reward, ...] = field(default=())
    next_level_xp: int = 0


def utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
