"""XpRepository: the activity catalog, the XP ledger and the XP part of
user_progress; reads of the level table and the levels reached, for progress."""

from __future__ import annotations

from typing import Any

from common.dynamodb import (
    ACTIVITIES,
    USER_PROGRESS,
    XP_LEDGER,
    CatalogTable,
    attr,
    from_item,
    load_level_table,
    read_levels_reached,
    read_progress,
    to_item,
    transact_write,
)
from common.models import LevelReached, LevelTable, ProgressRecord
from xp_service.domain import Activity, ActivityNotFound, LedgerEntry

# Activities kept in memory at most; past it the cache starts over (a catalog
# is far smaller: this only bounds memory against a runaway catalog).
_MAX_CACHED_ACTIVITIES = 10_000


class ActivityChanged(Exception):
    """The cached activity's XP changed, or it left the catalog, before the
    award was written (nothing was written); read it again."""


class DuplicateRequest(Exception):
    """The ledger already holds an entry for this (user_id, request_id)."""

    def __init__(self, existing: LedgerEntry) -> None:
        super().__init__(existing.entry_id)
        self.existing = existing


def _activity_from(values: dict[str, Any]) -> Activity:
    return Activity(
        activity_id=values["activity_id"],
        name=values.get("name", ""),
        description=values.get("description", ""),
        category=values.get("category", ""),
        xp=int(values.get("xp", 0)),
    )


class XpRepository:
    def __init__(self, client: Any, table_prefix: str) -> None:
        self._client = client
        self._prefix = table_prefix
        self._activities = CatalogTable(client, table_prefix, ACTIVITIES)
        self._ledger = table_prefix + XP_LEDGER.name
        self._progress = table_prefix + USER_PROGRESS.name
        # activity_id -> Activity as last read. Never trusted on its own: the
        # award's transaction checks the cached XP against the catalog item
        # (a ConditionCheck, no extra round trip), so a stale entry costs one
        # retry and never a wrong award, whichever replica changed the catalog.
        self._activity_cache: dict[str, Activity] = {}

    # --- catalog --------------------------------------------------------------

    def put_activity(self, activity: Activity) -> None:
        values: dict[str, Any] = {
            "activity_id": activity.activity_id,
            "name": activity.name,
            "description": activity.description,
            "xp": activity.xp,
        }
        if activity.category:  # an index key cannot be an empty string
            values["category"] = activity.category
        self._activities.put(values)
        self._activity_cache.pop(activity.activity_id, None)

    def get_activity(self, activity_id: str) -> Activity:
        values = self._activities.get(activity_id)
        if values is None:
            raise ActivityNotFound(activity_id)
        return _activity_from(values)

    def list_activities(self, category: str, page_size: int, page_token: str) -> tuple[list[Activity], str]:
        if category:
            items, token = self._activities.page(
                page_size, page_token, index=ACTIVITIES.string_indexes[0][0], key_condition=("category", category)
            )
        else:
            items, token = self._activities.page(page_size, page_token)
        return [_activity_from(values) for values in items], token

    def cached_activity(self, activity_id: str) -> Activity:
        """The activity as last read by this process, read now when unknown."""
        activity = self._activity_cache.get(activity_id)
        if activity is None:
            activity = self.get_activity(activity_id)
            if len(self._activity_cache) >= _MAX_CACHED_ACTIVITIES:
                self._activity_cache.clear()
            self._activity_cache[activity_id] = activity
        return activity

    def delete_activity(self, activity_id: str) -> None:
        self._activity_cache.pop(activity_id, None)
        if not self._activities.delete(activity_id):
            raise ActivityNotFound(activity_id)

    # --- ledger and progress ------------------------------------------------------

    def record_xp(self, entry: LedgerEntry, activity: Activity | None = None) -> None:
        """Adds the entry to the ledger and its XP to the user's total in one
        transaction, at most once per entry id. Raises DuplicateRequest when the
        entry id is already in the ledger (nothing is written then). With
        `activity`, the same transaction checks that the catalog still gives it
        that XP, and raises ActivityChanged (nothing written) when not."""
        ledger_values: dict[str, Any] = {
            "user_id": entry.user_id,
            "entry_id": entry.entry_id,
            "kind": entry.kind,
            "xp": entry.xp,
            "recorded_at": entry.recorded_at,
            "attempt_id": entry.attempt_id,
        }
        for name in ("request_id", "activity_id", "reason", "achievement_id"):
            if getattr(entry, name):
                ledger_values[name] = getattr(entry, name)
        codes = transact_write(
            self._client,
            [
                {
                    "Put": {
                        "TableName": self._ledger,
                        "Item": to_item(ledger_values),
                        "ConditionExpression": "attribute_not_exists(entry_id)",
                    }
                },
                {
                    "Update": {
                        "TableName": self._progress,
                        "Key": {"user_id": attr(entry.user_id)},
                        "UpdateExpression": "ADD total_xp :xp SET updated_at = :now",
                        "ExpressionAttributeValues": to_item({":xp": entry.xp, ":now": entry.recorded_at}),
                    }
                },
                *(
                    [
                        {
                            "ConditionCheck": {
                                "TableName": self._activities.name,
                                "Key": {"activity_id": attr(activity.activity_id)},
                                "ConditionExpression": "xp = :xp",  # false when the item is gone, too
                                "ExpressionAttributeValues": {":xp": attr(activity.xp)},
                            }
                        }
                    ]
                    if activity is not None
                    else []
                ),
            ],
        )
        if codes is not None and codes[0] != "ConditionalCheckFailed" and activity is not None:
            self._activity_cache.pop(activity.activity_id, None)
            raise ActivityChanged(activity.activity_id)
        if codes is not None:
            existing = self.get_entry(entry.user_id, entry.entry_id)
            if existing is None:  # only a vanished ledger item could get here
                raise RuntimeError(f"ledger entry {entry.entry_id!r} failed its condition but is missing")
            raise DuplicateRequest(existing)

    def get_entry(self, user_id: str, entry_id: str) -> LedgerEntry | None:
        response = self._client.get_item(
            TableName=self._ledger,
            Key={"user_id": attr(user_id), "entry_id": attr(entry_id)},
            ConsistentRead=True,
        )
        if "Item" not in response:
            return None
        values = from_item(response["Item"])
        return LedgerEntry(
            user_id=user_id,
            entry_id=entry_id,
            request_id=values.get("request_id", ""),
            kind=values["kind"],
            xp=int(values["xp"]),
            activity_id=values.get("activity_id", ""),
            reason=values.get("reason", ""),
            achievement_id=values.get("achievement_id", ""),
            recorded_at=values.get("recorded_at", ""),
            attempt_id=values.get("attempt_id", ""),
        )

    def get_progress(self, user_id: str) -> ProgressRecord:
        return read_progress(self._client, self._prefix, user_id)

    def levels_reached(self, user_id: str) -> list[LevelReached]:
        return read_levels_reached(self._client, self._prefix, user_id)

    def load_level_table(self) -> LevelTable:
        return load_level_table(self._client, self._prefix)
