"""The achievements repository over DynamoDB: the achievement catalog, unlock
records and the achievement part of user_progress."""

from __future__ import annotations

import asyncio
import functools
import operator
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from boto3.dynamodb.conditions import Attr, ConditionExpressionBuilder

from achievements_service.domain import (
    Achievement,
    AchievementChanged,
    AchievementNotFound,
    AlreadyUnlocked,
    OwedPaid,
    Requirements,
    RequirementsNotHeld,
    RewardPaidBefore,
    Unlock,
)
from common.auto_unlock import AutoRules, Counter, Watches
from common.dynamodb import (
    ACHIEVEMENTS,
    USER_ACHIEVEMENTS,
    USER_PROGRESS,
    CatalogCopies,
    CatalogTable,
    DynamoDBClient,
    LevelTableCache,
    TransactionCancelled,
    attr,
    batch_get_consistent,
    decode_page_token,
    encode_page_token,
    from_item,
    ledger_put,
    mark_level_check_deferred,
    read_progress,
    to_item,
    transact_write,
    update_item_once,
)
from common.dynamodb.auto_rules import AutoRulesCache, requirements_from_values, requirements_to_values
from common.dynamodb.counters import (
    PLAYERS_STAT,
    count_checks,
    count_player_once,
    forget_auto_watches,
    read_all_counters,
    read_counts,
    read_stats,
    stat_add,
    unlocks_stat,
    watch_writes,
    write_watches,
)
from common.dynamodb.progress_item import last_change
from common.models import MAX_TOTAL_XP, LedgerEntry, ProgressRecord, TotalXpLimitReached, utc_now_iso


def _achievement_to_values(achievement: Achievement) -> dict[str, Any]:
    return {
        "achievement_id": achievement.achievement_id,
        "name": achievement.name,
        "description": achievement.description,
        "xp_reward": achievement.xp_reward,
        "hidden": achievement.hidden,
        "revision": achievement.revision,
        "requirements": requirements_to_values(achievement.requirements),
        "auto_unlock": achievement.auto_unlock,
    }


def _achievement_from(values: dict[str, Any]) -> Achievement:
    return Achievement(
        achievement_id=values["achievement_id"],
        name=values.get("name", ""),
        description=values.get("description", ""),
        xp_reward=int(values.get("xp_reward", 0)),
        hidden=bool(values.get("hidden", False)),
        requirements=requirements_from_values(values.get("requirements")),
        revision=values.get("revision", ""),
        auto_unlock=bool(values.get("auto_unlock", False)),
    )


def _unlock_from(values: dict[str, Any]) -> Unlock:
    return Unlock(
        user_id=values["user_id"],
        achievement_id=values["achievement_id"],
        unlocked_at=values.get("unlocked_at", ""),
        xp_reward=int(values.get("xp_reward", 0)),
        xp_granted=bool(values.get("xp_granted", False)),
        request_id=values.get("request_id", ""),
        trigger=values.get("trigger", ""),
        attempt_id=values.get("attempt_id", ""),
    )


def requirements_guard(requirements: Requirements, start_level: int) -> Any:
    """The XP and level requirements as a condition on the progress item, so
    the unlock is written only if they hold at that instant (a user with no
    stored level is at `start_level`); None when there are none. Required
    achievements are ConditionChecks on their unlock records."""
    conditions: list[Any] = []
    if requirements.min_total_xp:
        conditions.append(Attr("total_xp").gte(requirements.min_total_xp))
    if requirements.min_level:
        level: Any = Attr("level").gte(requirements.min_level)
        if start_level >= requirements.min_level:
            level = Attr("level").not_exists() | level
        conditions.append(level)
    return functools.reduce(operator.and_, conditions) if conditions else None


def _failed_conditions(cancelled: TransactionCancelled, items: int) -> list[bool]:
    """For each item of a cancelled transaction, whether its condition failed."""
    failed = [reason.code == "ConditionalCheckFailed" for reason in cancelled.reasons]
    return failed + [False] * (items - len(failed))


class DynamoDBAchievementsRepository:
    """achievements_service.domain.AchievementsRepository over DynamoDB."""

    def __init__(
        self, client: DynamoDBClient, table_prefix: str, level_table: LevelTableCache, auto_rules: AutoRulesCache
    ) -> None:
        self._client = client
        self._auto_rules = auto_rules
        self._level_table = level_table
        self._prefix = table_prefix
        self._achievements = CatalogTable(client, table_prefix, ACHIEVEMENTS)
        self._unlocks = table_prefix + USER_ACHIEVEMENTS.name
        self._progress = table_prefix + USER_PROGRESS.name
        # The unlock's transaction checks the copy's revision against the catalog item.
        self._copies: CatalogCopies[Achievement] = CatalogCopies()

    # --- catalog --------------------------------------------------------------

    async def put_achievement(self, achievement: Achievement) -> Achievement:
        stored = replace(achievement, revision=uuid.uuid4().hex)
        await self._achievements.put(_achievement_to_values(stored))
        self._copies.drop(achievement.achievement_id)
        self._auto_rules.forget()
        return stored

    async def get_achievement(self, achievement_id: str) -> Achievement:
        values = await self._achievements.get(achievement_id)
        if values is None:
            raise AchievementNotFound(achievement_id)
        return _achievement_from(values)

    async def cached_achievement(self, achievement_id: str) -> Achievement:
        return await self._copies.get(achievement_id, self.get_achievement)

    async def get_achievements(self, achievement_ids: list[str]) -> dict[str, Achievement]:
        return {k: _achievement_from(v) for k, v in (await self._achievements.batch_get(achievement_ids)).items()}

    async def list_achievements(self, page_size: int, page_token: str) -> tuple[list[Achievement], str]:
        items, token = await self._achievements.page(page_size, page_token)
        return [_achievement_from(values) for values in items], token

    async def delete_achievement(self, achievement_id: str) -> None:
        self._copies.drop(achievement_id)
        self._auto_rules.forget()
        if not await self._achievements.delete(achievement_id):
            raise AchievementNotFound(achievement_id)

    # --- unlocks ------------------------------------------------------------------

    async def get_progress(self, user_id: str) -> ProgressRecord:
        return await read_progress(self._client, self._prefix, user_id)

    async def get_unlock(self, user_id: str, achievement_id: str) -> Unlock | None:
        response = await self._client.call(
            "GetItem",
            {
                "TableName": self._unlocks,
                "Key": {"user_id": attr(user_id), "achievement_id": attr(achievement_id)},
                "ConsistentRead": True,
            },
        )
        return _unlock_from(from_item(response["Item"])) if "Item" in response else None

    async def list_unlocks(self, user_id: str, page_size: int, page_token: str) -> tuple[list[Unlock], str]:
        params: dict[str, Any] = {
            "TableName": self._unlocks,
            "KeyConditionExpression": "user_id = :u",
            "ExpressionAttributeValues": {":u": attr(user_id)},
            "Limit": page_size,
            "ConsistentRead": True,
        }
        start = decode_page_token(page_token, {"user_id": user_id, "achievement_id": None})
        if start:
            params["ExclusiveStartKey"] = start
        page = await self._client.call("Query", params)
        return [_unlock_from(from_item(item)) for item in page["Items"]], encode_page_token(
            page.get("LastEvaluatedKey")
        )

    async def record_unlock_once(
        self, unlock: Unlock, achievement: Achievement, start_level: int, payment: LedgerEntry | None
    ) -> None:
        """One transaction: the unlock record, its place in the progress
        (guarded by the requirements), the reward's ledger entry and XP, and a
        check of the catalog entry's revision. The cancellation says which
        condition failed; the unlock's own comes first, so a repeat is a repeat
        even after the achievement changed or left. A streak's run is checked
        by a read before: its best is derived from its item, so no condition
        can check it, and it never goes down."""
        runs = achievement.requirements.streak_lengths
        if runs:
            bests = await read_counts(self._client, self._prefix, unlock.user_id, [r.counter for r in runs])
            if any(bests[r.counter] < r.length for r in runs):
                earlier = await self.get_unlock(unlock.user_id, unlock.achievement_id)
                if earlier is not None:  # unlocked before the catalog asked for the run
                    raise AlreadyUnlocked(earlier)
                # Decided on this process's copy: as the transaction's revision check would, read it again
                # when the catalog moved (the run asked for may be shorter now, or the entry gone).
                current = await self._achievements.get(achievement.achievement_id)
                if current is None or str(current.get("revision", "")) != achievement.revision:
                    self._copies.drop(achievement.achievement_id)
                    raise AchievementChanged(achievement.achievement_id)
                raise RequirementsNotHeld(achievement.achievement_id)
        values: dict[str, Any] = {
            "user_id": unlock.user_id,
            "achievement_id": unlock.achievement_id,
            "unlocked_at": unlock.unlocked_at,
            "xp_reward": unlock.xp_reward,
            "xp_granted": unlock.xp_granted,
            "attempt_id": unlock.attempt_id,
            "counted": True,  # in its achievement's unlock stats, unlike unlocks an earlier version recorded
        }
        if unlock.request_id:
            values["request_id"] = unlock.request_id
        if unlock.trigger:
            values["trigger"] = unlock.trigger
        # The unlocked ids are the unlock records: the progress item only notes that there are some
        # (and drops the set an earlier version kept in it, which a large collection could fill).
        update: dict[str, Any] = {
            "TableName": self._progress,
            "Key": {"user_id": attr(unlock.user_id)},
            "UpdateExpression": "SET updated_at = :now, holds_achievements = :t REMOVE unlocked_achievements",
            "ExpressionAttributeValues": to_item({":now": unlock.unlocked_at, ":t": True}),
        }
        guard = requirements_guard(achievement.requirements, start_level)
        if payment is not None:
            update["UpdateExpression"] = "ADD total_xp :xp SET last_change = :change, " + update["UpdateExpression"][4:]
            update["ExpressionAttributeValues"].update(to_item({":xp": payment.xp, ":change": last_change(payment)}))
            room = Attr("total_xp").not_exists() | Attr("total_xp").lte(MAX_TOTAL_XP - payment.xp)
            guard = room if guard is None else guard & room
        if guard is not None:
            built = ConditionExpressionBuilder().build_expression(guard)
            update["ConditionExpression"] = built.condition_expression
            update["ExpressionAttributeNames"] = built.attribute_name_placeholders
            update["ExpressionAttributeValues"].update(to_item(built.attribute_value_placeholders))
        items: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self._unlocks,
                    "Item": to_item(values),
                    "ConditionExpression": "attribute_not_exists(achievement_id)",
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
            {"Update": update},
            self._revision_check(achievement),
        ]
        if payment is not None:
            items.append(ledger_put(self._prefix, payment))
        # At most 50 required and 10 counts (catalog rules): 65 items of the 100 allowed.
        required_from = len(items)
        items.extend(
            {
                "ConditionCheck": {
                    "TableName": self._unlocks,
                    "Key": {"user_id": attr(unlock.user_id), "achievement_id": attr(required)},
                    "ConditionExpression": "attribute_exists(achievement_id)",
                }
            }
            for required in achievement.requirements.required_achievements
        )
        items.extend(count_checks(self._prefix, unlock.user_id, achievement.requirements.activity_counts))
        items.append(stat_add(self._prefix, unlocks_stat(unlock.achievement_id), unlock.user_id))
        try:
            await transact_write(self._client, items)
        except TransactionCancelled as cancelled:
            failed = _failed_conditions(cancelled, len(items))
            if failed[0]:
                if failed[2]:  # the repeat answers with the copy it has; the next call reads the entry again
                    self._copies.drop(achievement.achievement_id)
                reason = cancelled.reasons[0]
                existing = (
                    _unlock_from(from_item(reason.item))
                    if reason.item
                    else await self.get_unlock(unlock.user_id, unlock.achievement_id)
                )
                if existing is not None:
                    raise AlreadyUnlocked(existing) from None
                raise AchievementChanged(achievement.achievement_id) from None  # withdrawn meanwhile: start over
            if failed[2]:
                self._copies.drop(achievement.achievement_id)
                raise AchievementChanged(achievement.achievement_id) from None
            if payment is not None and failed[3]:
                paid = cancelled.reasons[3].item or {}
                raise RewardPaidBefore(achievement.achievement_id, int(from_item(paid).get("xp", payment.xp))) from None
            if failed[1] or any(failed[required_from:]):
                raise RequirementsNotHeld(achievement.achievement_id) from None
            raise

    def _revision_check(self, achievement: Achievement) -> dict[str, Any]:
        check: dict[str, Any] = {
            "TableName": self._achievements.name,
            "Key": {"achievement_id": attr(achievement.achievement_id)},
        }
        if achievement.revision:  # false when the item is gone, too
            check["ConditionExpression"] = "revision = :r"
            check["ExpressionAttributeValues"] = {":r": attr(achievement.revision)}
        else:  # an entry put before revisions existed
            check["ConditionExpression"] = "attribute_exists(achievement_id) AND attribute_not_exists(revision)"
        return {"ConditionCheck": check}

    async def unlocked_among(self, user_id: str, achievement_ids: tuple[str, ...]) -> frozenset[str]:
        keys = [{"user_id": user_id, "achievement_id": a} for a in achievement_ids]
        found = (await batch_get_consistent(self._client, {self._unlocks: keys}))[self._unlocks] if keys else []
        return frozenset(str(item["achievement_id"]) for item in found)

    async def pay_owed_unlock_once(self, unlock: Unlock, marker: str) -> OwedPaid | None:
        """The unlock marked paid (only if it was not, or by this caller's own
        earlier attempt), the ledger entry (only if new) and the XP, in one
        transaction; where the entry exists (an earlier version's grant
        completed, its mark did not), the mark alone."""
        mark: dict[str, Any] = {
            "TableName": self._unlocks,
            "Key": {"user_id": attr(unlock.user_id), "achievement_id": attr(unlock.achievement_id)},
            "UpdateExpression": "SET xp_granted = :t, granted_by = :m",
            "ConditionExpression": "xp_granted = :f OR granted_by = :m",
            "ExpressionAttributeValues": {":t": attr(True), ":f": attr(False), ":m": attr(marker)},
        }
        payment = replace(unlock.payment(), attempt_id=marker)
        try:
            await transact_write(
                self._client,
                [
                    {"Update": mark},
                    ledger_put(self._prefix, payment),
                    {
                        "Update": {
                            "TableName": self._progress,
                            "Key": {"user_id": attr(unlock.user_id)},
                            "UpdateExpression": "ADD total_xp :xp SET updated_at = :now, last_change = :change",
                            "ConditionExpression": "attribute_not_exists(total_xp) OR total_xp <= :room",
                            "ExpressionAttributeValues": to_item(
                                {
                                    ":xp": payment.xp,
                                    ":now": utc_now_iso(),
                                    ":room": MAX_TOTAL_XP - payment.xp,
                                    ":change": last_change(payment),
                                }
                            ),
                        }
                    },
                ],
            )
            return OwedPaid(payment.xp, by_this_call=True)
        except TransactionCancelled as cancelled:
            mark_failed, entry_failed, no_room = _failed_conditions(cancelled, 3)
            if mark_failed:
                return None  # marked paid by another call
            if no_room and not entry_failed:
                raise TotalXpLimitReached(unlock.user_id, payment.xp) from None
            if not entry_failed:
                raise
            entry = from_item(cancelled.reasons[1].item or {})
            if entry.get("attempt_id") == marker:  # this transaction, retried by the client after a lost answer
                return OwedPaid(payment.xp, by_this_call=True)
        if not await update_item_once(self._client, mark):
            return None
        return OwedPaid(int(entry.get("xp", payment.xp)), by_this_call=False)

    async def counts_of(self, user_id: str, counters: tuple[str, ...]) -> dict[str, int]:
        return await read_counts(self._client, self._prefix, user_id, counters)

    async def auto_rules(self, fresh: bool = False) -> AutoRules:
        if fresh:
            self._auto_rules.forget()
        return await self._auto_rules.current()

    async def auto_standing(
        self, user_id: str, achievement_ids: tuple[str, ...]
    ) -> tuple[ProgressRecord, dict[str, Counter], dict[str, Unlock]]:
        keys = [{"user_id": user_id, "achievement_id": a} for a in dict.fromkeys(achievement_ids)]

        async def unlocks() -> dict[str, Unlock]:
            found: dict[str, Unlock] = {}
            for start in range(0, len(keys), 100):  # BatchGetItem's limit
                page = await batch_get_consistent(self._client, {self._unlocks: keys[start : start + 100]})
                found.update((str(v["achievement_id"]), _unlock_from(v)) for v in page[self._unlocks])
            return found

        progress, counters, held = await asyncio.gather(
            self.get_progress(user_id), read_all_counters(self._client, self._prefix, user_id), unlocks()
        )
        return progress, counters, held

    async def write_watches(
        self,
        user_id: str,
        watches: Watches,
        unwatched: tuple[str, ...],
        start_level: int,
        streak_marks: Mapping[str, tuple[int, str]] | None = None,
    ) -> bool:
        items = watch_writes(self._prefix, user_id, watches, unwatched, start_level, streak_marks)
        if items is None:
            return False
        await write_watches(self._client, items)
        return True

    async def forget_auto_watches(self, user_id: str) -> None:
        await forget_auto_watches(self._client, self._prefix, user_id)

    async def count_player_once(self, user_id: str) -> None:
        await count_player_once(self._client, self._prefix, user_id)

    async def unlock_counts(self, achievement_ids: tuple[str, ...]) -> dict[str, int]:
        totals = await read_stats(self._client, self._prefix, [unlocks_stat(a) for a in achievement_ids])
        return {a: totals[unlocks_stat(a)] for a in achievement_ids}

    async def player_count(self) -> int:
        return (await read_stats(self._client, self._prefix, [PLAYERS_STAT]))[PLAYERS_STAT]

    async def start_level(self) -> int:
        return (await self._level_table.current()).table.start_level

    async def level_table_version(self) -> int:
        return await self._level_table.version()

    async def mark_level_check_deferred(self, user_id: str, entry_id: str) -> None:
        await mark_level_check_deferred(self._client, self._prefix, user_id, entry_id)
