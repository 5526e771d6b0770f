"""Values the services share: the user-progress record (one DynamoDB item that
all three services write, each its own attributes) and a level check's outcome."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping


@dataclass(frozen=True)
class Reward:
    reward_id: str
    quantity: int


@dataclass(frozen=True)
class GrantedReward:
    reward_id: str
    quantity: int
    level: int


@dataclass(frozen=True)
class ProgressRecord:
    """What user_progress holds for one user. `level` is None until the Levels
    service first raises it: the user is then at the level 0 XP gives."""

    user_id: str
    total_xp: int = 0
    level: int | None = None
    unlocked_achievements: frozenset[str] = frozenset()
    rewards: tuple[GrantedReward, ...] = ()
    updated_at: str | None = None

    @classmethod
    def from_attributes(cls, user_id: str, values: Mapping[str, Any] | None) -> "ProgressRecord":
        if not values:
            return cls(user_id=user_id)
        return cls(
            user_id=user_id,
            total_xp=int(values.get("total_xp", 0)),
            level=int(values["level"]) if "level" in values else None,
            unlocked_achievements=frozenset(values.get("unlocked_achievements", ())),
            rewards=tuple(
                GrantedReward(str(r["reward_id"]), int(r["quantity"]), int(r["level"]))
                for r in values.get("rewards", ())
            ),
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
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
