"""The XP repository over DynamoDB: the activity catalog, the XP ledger and the
XP part of user_progress; reads of the levels reached, for progress."""

from __future__ import annotations

from typing import Any

from common.auto_unlock import AutoRules, Counter, award_counters
from common.dynamodb import (
    ACTIVITIES,
    STREAKS,
    USER_ACHIEVEMENTS,
    USER_PROGRESS,
    XP_LEDGER,
    CatalogCopies,
    CatalogTable,
    ConditionalCheckFailed,
    DynamoDBClient,
    LevelTableCache,
    TransactionCancelled,
    attr,
    decode_page_token,
    encode_page_token,
    from_item,
    ledger_entry_from,
    ledger_put,
    mark_level_check_deferred,
    mark_unlocks_deferred,
    read_levels_reached,
    read_progress,
    to_item,
    transact_write,
)
from common.dynamodb.auto_rules import AutoRulesCache
from common.dynamodb.counters import (
    cap_take,
    count_player_once,
    counter_adds,
    forget_auto_watches,
    read_progress_and_counters,
    read_streak_records,
    streak_touches,
)
from common.dynamodb.progress_item import last_change, move_unlocked_ids_out_of_progress
from common.dynamodb.streak_catalog import StreakCatalogSnapshot, is_deleted, streak_from_values, streak_to_values
from common.models import (
    ACTIVITY,
    MAX_TOTAL_XP,
    REVOKE,
    LedgerEntry,
    ProgressRecord,
    Reward,
    TotalXpLimitReached,
    TotalXpWouldGoNegative,
)
from common.streaks import Streak, StreakRecord
from xp_service.domain import (
    Activity,
    ActivityChanged,
    ActivityNotFound,
    CapReached,
    DuplicateRequest,
    StreakNotFound,
    StreakPeriodFixed,
)


def _activity_from(values: dict[str, Any]) -> Activity:
    return Activity(
        activity_id=values["activity_id"],
        name=values.get("name", ""),
        description=values.get("description", ""),
        category=values.get("category", ""),
        xp=int(values.get("xp", 0)),
        cap_max_awards=int(values.get("cap_max_awards", 0)),
        cap_period=values.get("cap_period", ""),
    )


class DynamoDBXpRepository:
    """xp_service.domain.XpRepository over DynamoDB."""

    def __init__(
        self,
        client: DynamoDBClient,
        table_prefix: str,
        level_table: LevelTableCache,
        auto_rules: AutoRulesCache,
        streak_catalog: StreakCatalogSnapshot,
    ) -> None:
        self._client = client
        self._auto_rules = auto_rules
        self._streak_catalog = streak_catalog
        self._streaks = table_prefix + STREAKS.name
        self._prefix = table_prefix
        self._activities = CatalogTable(client, table_prefix, ACTIVITIES)
        self._ledger = table_prefix + XP_LEDGER.name
        self._progress = table_prefix + USER_PROGRESS.name
        self._level_table = level_table
        # The award's transaction checks the copy's XP against the catalog item.
        self._activity_copies: CatalogCopies[Activity] = CatalogCopies()

    # --- catalog --------------------------------------------------------------

    async def put_activity(self, activity: Activity) -> None:
        values: dict[str, Any] = {
            "activity_id": activity.activity_id,
            "name": activity.name,
            "description": activity.description,
            "xp": activity.xp,
        }
        if activity.category:  # an index key cannot be an empty string
            values["category"] = activity.category
        if activity.cap_max_awards:
            values.update(cap_max_awards=activity.cap_max_awards, cap_period=activity.cap_period)
        await self._activities.put(values)
        self._activity_copies.drop(activity.activity_id)

    async def get_activity(self, activity_id: str) -> Activity:
        values = await self._activities.get(activity_id)
        if values is None:
            raise ActivityNotFound(activity_id)
        return _activity_from(values)

    async def list_activities(self, category: str, page_size: int, page_token: str) -> tuple[list[Activity], str]:
        if category:
            items, token = await self._activities.page(
                page_size, page_token, index=ACTIVITIES.string_indexes[0][0], key_condition=("category", category)
            )
        else:
            items, token = await self._activities.page(page_size, page_token)
        return [_activity_from(values) for values in items], token

    async def cached_activity(self, activity_id: str) -> Activity:
        return await self._activity_copies.get(activity_id, self.get_activity)

    async def delete_activity(self, activity_id: str) -> None:
        self._activity_copies.drop(activity_id)
        if not await self._activities.delete(activity_id):
            raise ActivityNotFound(activity_id)

    # --- streak catalog ---------------------------------------------------------

    async def put_streak(self, streak: Streak) -> None:
        """Replaces the entry (and a deletion mark) only while the id is new
        or has this period."""
        try:
            await self._client.call(
                "PutItem",
                {
                    "TableName": self._streaks,
                    "Item": to_item(streak_to_values(streak)),
                    "ConditionExpression": "attribute_not_exists(streak_id) OR #period = :p",
                    "ExpressionAttributeNames": {"#period": "period"},
                    "ExpressionAttributeValues": {":p": attr(streak.period)},
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                },
            )
        except ConditionalCheckFailed as failed:
            raise StreakPeriodFixed(streak.streak_id, str(from_item(failed.item or {}).get("period", "?"))) from None
        finally:
            self._streak_catalog.forget()

    async def get_streak(self, streak_id: str) -> Streak:
        response = await self._client.call(
            "GetItem", {"TableName": self._streaks, "Key": {"streak_id": attr(streak_id)}, "ConsistentRead": True}
        )
        values = from_item(response["Item"]) if "Item" in response else None
        if values is None or is_deleted(values):
            raise StreakNotFound(streak_id)
        return streak_from_values(values)

    async def list_streaks(self, page_size: int, page_token: str) -> tuple[list[Streak], str]:
        params: dict[str, Any] = {
            "TableName": self._streaks,
            "Limit": page_size,
            "FilterExpression": "attribute_not_exists(deleted)",  # a page may then hold fewer
        }
        start = decode_page_token(page_token, {"streak_id": None})
        if start:
            params["ExclusiveStartKey"] = start
        page = await self._client.call("Scan", params)
        streaks = [streak_from_values(from_item(item)) for item in page["Items"]]
        return streaks, encode_page_token(page.get("LastEvaluatedKey"))

    async def delete_streak(self, streak_id: str) -> None:
        try:
            await self._client.call(
                "UpdateItem",
                {
                    "TableName": self._streaks,
                    "Key": {"streak_id": attr(streak_id)},
                    "UpdateExpression": "SET deleted = :t",
                    "ConditionExpression": "attribute_exists(streak_id) AND attribute_not_exists(deleted)",
                    "ExpressionAttributeValues": {":t": attr(True)},
                },
            )
        except ConditionalCheckFailed:
            raise StreakNotFound(streak_id) from None
        finally:
            self._streak_catalog.forget()

    async def streaks(self, *, fresh: bool = False) -> tuple[Streak, ...]:
        return await (self._streak_catalog.fresh() if fresh else self._streak_catalog.current())

    async def streak_records(self, user_id: str) -> dict[str, StreakRecord]:
        return await read_streak_records(self._client, self._prefix, user_id)

    # --- ledger and progress ------------------------------------------------------

    async def record_xp(
        self,
        entry: LedgerEntry,
        activity: Activity | None = None,
        cap_period: str = "",
        streak_periods: tuple[tuple[Streak, str], ...] = (),
        *,
        moved_ids: bool = False,
    ) -> None:
        """One transaction: the ledger entry, put only if its id is new (the
        old entry comes back with the cancellation when it is not), the ADD to
        the user's total, and with `activity` a check that the catalog still
        gives it this XP and category; an activity's entry adds one to its
        counters (after the items whose conditions say what failed)."""
        items: list[dict[str, Any]] = [
            ledger_put(self._prefix, entry),
            {
                "Update": {
                    "TableName": self._progress,
                    "Key": {"user_id": attr(entry.user_id)},
                    "UpdateExpression": "ADD total_xp :xp SET updated_at = :now, last_change = :change",
                    # Totals stay within 0 and MAX_TOTAL_XP: a correction may take XP away, never below zero.
                    "ConditionExpression": "total_xp >= :need"
                    if entry.xp < 0
                    else "attribute_not_exists(total_xp) OR total_xp <= :room",
                    "ExpressionAttributeValues": to_item(
                        {":xp": entry.xp, ":now": entry.recorded_at, ":change": last_change(entry)}
                        | ({":need": -entry.xp} if entry.xp < 0 else {":room": MAX_TOTAL_XP - entry.xp})
                    ),
                }
            },
        ]
        if activity is not None:
            # False when the item is gone, too; the category is what the award counts under, the cap
            # what it is held to.
            same_category = "category = :c" if activity.category else "attribute_not_exists(category)"
            same_cap = (
                "cap_max_awards = :m AND cap_period = :p"
                if activity.cap_max_awards
                else "attribute_not_exists(cap_max_awards)"
            )
            check: dict[str, Any] = {
                "TableName": self._activities.name,
                "Key": {"activity_id": attr(activity.activity_id)},
                "ConditionExpression": f"xp = :xp AND {same_category} AND {same_cap}",
                "ExpressionAttributeValues": {":xp": attr(activity.xp)},
            }
            if activity.category:
                check["ExpressionAttributeValues"][":c"] = attr(activity.category)
            if activity.cap_max_awards:
                check["ExpressionAttributeValues"].update(
                    {":m": attr(activity.cap_max_awards), ":p": attr(activity.cap_period)}
                )
            items.append({"ConditionCheck": check})
        cap_at = len(items)
        if activity is not None and cap_period:
            items.append(
                cap_take(self._prefix, entry.user_id, activity.activity_id, cap_period, activity.cap_max_awards)
            )
        if entry.kind == ACTIVITY and not entry.capped:
            items.extend(counter_adds(self._prefix, entry.user_id, award_counters(entry.activity_id, entry.category)))
            items.extend(streak_touches(self._prefix, entry.user_id, streak_periods))
        elif entry.kind == REVOKE and entry.counted:  # the award it reverses counts no more
            counters = award_counters(entry.activity_id, entry.category)
            items.extend(counter_adds(self._prefix, entry.user_id, counters, step=-1))
        try:
            await transact_write(self._client, items)
        except TransactionCancelled as cancelled:
            ledger = cancelled.reasons[0] if cancelled.reasons else None
            if ledger is None or ledger.code != "ConditionalCheckFailed":
                capped = cap_period and len(cancelled.reasons) > cap_at
                if capped and cancelled.reasons[cap_at].code == "ConditionalCheckFailed":
                    if cancelled.reasons[2].code != "ConditionalCheckFailed":  # the activity is as cached
                        raise CapReached() from None
                if len(cancelled.reasons) > 1 and cancelled.reasons[1].code == "ConditionalCheckFailed":
                    if entry.xp < 0:
                        raise TotalXpWouldGoNegative(entry.user_id, entry.xp) from None
                    raise TotalXpLimitReached(entry.user_id, entry.xp) from None
                if (
                    len(cancelled.reasons) > 1
                    and cancelled.reasons[1].code == "ValidationError"
                    and not moved_ids
                    and await move_unlocked_ids_out_of_progress(self._client, self._prefix, entry.user_id)
                ):
                    return await self.record_xp(entry, activity, cap_period, streak_periods, moved_ids=True)
                if activity is not None:
                    self._activity_copies.drop(activity.activity_id)
                    raise ActivityChanged(activity.activity_id) from None
                raise
            existing = (
                ledger_entry_from(from_item(ledger.item))
                if ledger.item
                else await self.get_entry(entry.user_id, entry.entry_id)
            )
            if existing is None:  # only a vanished ledger item could get here
                raise RuntimeError(f"ledger entry {entry.entry_id!r} failed its condition but is missing") from None
            raise DuplicateRequest(existing) from None

    async def get_entry(self, user_id: str, entry_id: str) -> LedgerEntry | None:
        response = await self._client.call(
            "GetItem",
            {
                "TableName": self._ledger,
                "Key": {"user_id": attr(user_id), "entry_id": attr(entry_id)},
                "ConsistentRead": True,
            },
        )
        return ledger_entry_from(from_item(response["Item"])) if "Item" in response else None

    async def get_progress(self, user_id: str) -> ProgressRecord:
        return await read_progress(self._client, self._prefix, user_id)

    async def history_page(self, user_id: str, page_size: int, page_token: str) -> tuple[list[LedgerEntry], str]:
        params: dict[str, Any] = {
            "TableName": self._ledger,
            "IndexName": XP_LEDGER.string_indexes[0][0],
            "KeyConditionExpression": "user_id = :u",
            "ExpressionAttributeValues": {":u": attr(user_id)},
            "ScanIndexForward": False,  # newest first
            "Limit": page_size,
        }
        start = decode_page_token(page_token, {"user_id": user_id, "recorded_at": None, "entry_id": None})
        if start:
            params["ExclusiveStartKey"] = start
        page = await self._client.call("Query", params)
        entries = [ledger_entry_from(from_item(item)) for item in page["Items"]]
        return entries, encode_page_token(page.get("LastEvaluatedKey"))

    async def auto_rules(self) -> AutoRules:
        return await self._auto_rules.current()

    async def get_progress_and_counters(
        self, user_id: str, counters: tuple[str, ...]
    ) -> tuple[ProgressRecord, dict[str, Counter]]:
        return await read_progress_and_counters(self._client, self._prefix, user_id, counters, fold_streaks=True)

    async def forget_auto_watches(self, user_id: str) -> None:
        await forget_auto_watches(self._client, self._prefix, user_id)

    async def count_player_once(self, user_id: str) -> None:
        await count_player_once(self._client, self._prefix, user_id)

    async def mark_level_check_deferred(self, user_id: str, entry_id: str) -> None:
        await mark_level_check_deferred(self._client, self._prefix, user_id, entry_id)

    async def mark_unlocks_deferred(self, user_id: str, entry_id: str) -> None:
        await mark_unlocks_deferred(self._client, self._prefix, user_id, entry_id)

    async def unlocked_achievement_ids(self, user_id: str, limit: int) -> tuple[tuple[str, ...], bool]:
        response = await self._client.call(
            "Query",
            {
                "TableName": self._prefix + USER_ACHIEVEMENTS.name,
                "KeyConditionExpression": "user_id = :u",
                "ExpressionAttributeValues": {":u": attr(user_id)},
                "ProjectionExpression": "achievement_id",
                "Limit": limit + 1,  # one more tells whether there are more
                "ConsistentRead": True,
            },
        )
        ids = tuple(str(from_item(item)["achievement_id"]) for item in response["Items"])
        return ids[:limit], len(ids) > limit or bool(response.get("LastEvaluatedKey"))

    async def latest_rewards(self, user_id: str, levels: int) -> tuple[tuple[Reward, ...], bool]:
        newest, more = await read_levels_reached(self._client, self._prefix, user_id, levels, newest_first=True)
        return tuple(r for level in reversed(newest) for r in level.rewards), more

    async def start_level(self) -> int:
        return (await self._level_table.current()).table.start_level

    async def level_table_version(self) -> int:
        return await self._level_table.version()
