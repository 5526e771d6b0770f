"""What follows a new ledger entry, in XP's awards and grants and in
Achievements' paid unlocks alike: read the user's progress, and ask the Levels
service only when that read says a level-up may be due. Pure: the storage and
the Levels client are Protocols, implemented in common.dynamodb and
common.levels_client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from common.models import LevelUpOutcome, ProgressRecord


class LevelChecker(Protocol):
    async def check_level_up(self, user_id: str, request_id: str, replay_only: bool = False) -> LevelUpOutcome | None:
        """The Levels service's result, or None when it could not answer in time."""


class LevelCheckStore(Protocol):
    async def get_progress(self, user_id: str) -> ProgressRecord: ...

    async def level_table_version(self) -> int:
        """The version of the level table this process holds."""

    async def start_level(self) -> int:
        """The level of a user with no stored level."""

    async def mark_level_check_deferred(self, user_id: str, entry_id: str) -> None:
        """Notes, on the ledger entry and on the user's progress, that this
        entry's level check was deferred."""


@dataclass(frozen=True)
class LevelAfterXp:
    total_xp: int
    level: int
    # The level-up check's answer (leveled_up False when none was due); None when it was deferred.
    level_up: LevelUpOutcome | None

    @property
    def deferred(self) -> bool:
        return self.level_up is None


async def check_level_after_xp(
    store: LevelCheckStore,
    levels: LevelChecker,
    user_id: str,
    entry_id: str,
    check_name: str,
    *,
    repeat: bool = False,
    replay_only: bool = False,
    record: ProgressRecord | None = None,
) -> LevelAfterXp:
    """The common path is one read and no gRPC hop: the progress item carries
    the next level's threshold under a version of the level table. A repeat
    always asks, by the check's name, for the level-up its original made; a
    first write whose check cannot be done is marked deferred, so that its
    repeats may still grant it. `record`: the progress as the caller just read it."""
    if record is None:
        record = await store.get_progress(user_id)
    if repeat or record.level_check_due(await store.level_table_version()):
        level_up = await levels.check_level_up(user_id, check_name, replay_only)
        if level_up is not None:
            return LevelAfterXp(level_up.total_xp, level_up.current_level, level_up)
        if not repeat:
            await store.mark_level_check_deferred(user_id, entry_id)
        level = record.level if record.level is not None else await store.start_level()
        return LevelAfterXp(record.total_xp, level, None)
    assert record.level is not None  # level_check_due is True without one
    nothing_due = LevelUpOutcome(
        user_id=user_id,
        leveled_up=False,
        previous_level=record.level,
        current_level=record.level,
        total_xp=record.total_xp,
        next_level_xp=record.next_level_xp or 0,
    )
    return LevelAfterXp(record.total_xp, record.level, nothing_due)
