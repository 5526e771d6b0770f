"""XP use cases: award from the catalog, grant, read progress."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from common.errors import ContentionExhausted
from common.metrics import XP_AWARDED
from common.models import LevelUpOutcome, ProgressRecord, Reward, utc_now_iso
from xp_service.domain import (
    ACHIEVEMENT,
    ACTIVITY,
    GRANT,
    Activity,
    ActivityNotFound,
    LedgerEntry,
    RequestIdReused,
    entry_id_for,
    is_same_request,
    new_entry,
)
from xp_service.storage import ActivityChanged, DuplicateRequest, XpRepository

# Catalog changes racing one award: each costs a re-read, and they are rare.
_MAX_ACTIVITY_REREADS = 5


class LevelChecker(Protocol):
    def check_level_up(self, user_id: str, request_id: str) -> LevelUpOutcome | None:
        """The Levels service's result, or None when it could not answer in time."""


@dataclass(frozen=True)
class AwardOutcome:
    user_id: str
    xp_awarded: int
    total_xp: int
    level: int
    duplicate: bool
    level_up: LevelUpOutcome | None

    @property
    def level_check_deferred(self) -> bool:
        return self.level_up is None


@dataclass(frozen=True)
class Progress:
    record: ProgressRecord
    level: int
    rewards: tuple[Reward, ...]


class XpLedger:
    def __init__(self, repository: XpRepository, levels: LevelChecker) -> None:
        self._repository = repository
        self._levels = levels

    # --- catalog ------------------------------------------------------------------

    def put_activity(self, activity: Activity) -> Activity:
        self._repository.put_activity(activity)
        return activity

    def get_activity(self, activity_id: str) -> Activity:
        return self._repository.get_activity(activity_id)

    def list_activities(self, category: str, page_size: int, page_token: str) -> tuple[list[Activity], str]:
        return self._repository.list_activities(category, page_size, page_token)

    def delete_activity(self, activity_id: str) -> None:
        self._repository.delete_activity(activity_id)

    # --- XP -----------------------------------------------------------------------

    def award_xp(self, user_id: str, activity_id: str, request_id: str) -> AwardOutcome:
        for _ in range(_MAX_ACTIVITY_REREADS):
            try:
                activity = self._repository.cached_activity(activity_id)
            except ActivityNotFound:
                return self._retry_of_an_award_whose_activity_left(user_id, activity_id, request_id)
            entry = new_entry(
                user_id, request_id, ACTIVITY, activity.xp, activity_id=activity_id, recorded_at=utc_now_iso()
            )
            try:
                return self._record_once_and_check_level(entry, activity)
            except ActivityChanged:
                continue  # the catalog changed since this process read it: read it again
        raise ContentionExhausted(f"activity {activity_id!r} kept changing; retry the award")

    def _retry_of_an_award_whose_activity_left(self, user_id: str, activity_id: str, request_id: str) -> AwardOutcome:
        """A retry of an award recorded before the activity left the catalog is
        still a retry (a duplicate); anything else is ActivityNotFound."""
        original = self._repository.get_entry(user_id, entry_id_for(request_id)) if request_id else None
        if original is None or original.kind != ACTIVITY or original.activity_id != activity_id:
            raise ActivityNotFound(activity_id)
        return self._record_once_and_check_level(
            new_entry(user_id, request_id, ACTIVITY, original.xp, activity_id=activity_id, recorded_at=utc_now_iso())
        )

    def grant_xp(
        self, user_id: str, amount: int, reason: str, request_id: str, achievement_id: str = ""
    ) -> AwardOutcome:
        kind = ACHIEVEMENT if achievement_id else GRANT
        entry = new_entry(
            user_id, request_id, kind, amount, reason=reason, achievement_id=achievement_id, recorded_at=utc_now_iso()
        )
        return self._record_once_and_check_level(entry)

    def get_progress(self, user_id: str) -> Progress:
        record = self._repository.get_progress(user_id)
        # Users with no stored level have not been checked yet: they are at the start level.
        level = record.level if record.level is not None else self._repository.load_level_table().start_level
        rewards = tuple(r for reached in self._repository.levels_reached(user_id) for r in reached.rewards)
        return Progress(record, level, rewards)

    def _record_once_and_check_level(self, entry: LedgerEntry, activity: Activity | None = None) -> AwardOutcome:
        xp_awarded, duplicate = entry.xp, False
        try:
            self._repository.record_xp(entry, activity)
            XP_AWARDED.labels(entry.kind).inc(entry.xp)
        except DuplicateRequest as error:
            original = error.existing
            if original.attempt_id != entry.attempt_id:  # not our own write retried by the SDK
                if not is_same_request(original, entry):
                    raise RequestIdReused(original, entry) from None
                xp_awarded, duplicate = original.xp, True
        # Named after the ledger entry, so that a retry of this award (a
        # duplicate) gets the level-up this award caused, even if the first
        # check answered too late; and a deferred check catches up.
        level_up = self._levels.check_level_up(entry.user_id, entry.entry_id)
        if level_up is not None:
            total_xp, level = level_up.total_xp, level_up.current_level
        else:
            record = self._repository.get_progress(entry.user_id)
            total_xp = record.total_xp
            level = record.level if record.level is not None else self._repository.load_level_table().start_level
        return AwardOutcome(entry.user_id, xp_awarded, total_xp, level, duplicate, level_up)
