"""The levels repository over DynamoDB: the levels table (and its version),
the level part of user_progress, the levels each user reached (level_rewards)
and what each named check granted (level_checks)."""

from __future__ import annotations

from typing import Any

from common.dynamodb import (
    LEVEL_CHECKS,
    LEVEL_REWARDS,
    USER_PROGRESS,
    DynamoDBClient,
    DynamoDBError,
    LevelTableCache,
    TransactionCancelled,
    attr,
    batch_get_consistent,
    level_reached_from,
    read_levels_reached,
    read_progress,
    to_item,
    transact_get,
    transact_write,
    update_item_once,
    version_bump,
    version_check,
)
from common.dynamodb.progress_item import move_unlocked_ids_out_of_progress
from common.models import Level, LevelReached, ProgressRecord, VersionedLevelTable, utc_now_iso
from levels_service.domain import (
    LevelChangedConcurrently,
    LevelCheck,
    LevelNotFound,
    LevelTableChanged,
    LevelUpPlan,
    is_recorded_check,
)


class DynamoDBLevelsRepository:
    """levels_service.domain.LevelsRepository over DynamoDB."""

    def __init__(self, client: DynamoDBClient, table_prefix: str, level_table: LevelTableCache) -> None:
        self._client = client
        self._prefix = table_prefix
        self._level_table = level_table
        self._levels = level_table.table_name
        self._progress = table_prefix + USER_PROGRESS.name
        self._reached = table_prefix + LEVEL_REWARDS.name
        self._checks = table_prefix + LEVEL_CHECKS.name

    # --- the level table ----------------------------------------------------------

    async def put_level(self, level: Level, expected_version: int) -> None:
        """The level and the table's version, in one transaction, only while the
        version is `expected_version`; this process sees it at once."""
        values = {
            "level": level.level,
            "xp_required": level.xp_required,
            "rewards": [{"reward_id": r.reward_id, "quantity": r.quantity} for r in level.rewards],
        }
        try:
            await transact_write(
                self._client,
                [
                    {"Put": {"TableName": self._levels, "Item": to_item(values)}},
                    *version_bump(self._levels, expected_version),
                ],
            )
        except TransactionCancelled as cancelled:
            if "ConditionalCheckFailed" in cancelled.codes:
                raise LevelTableChanged(expected_version) from None
            raise
        await self._level_table.reload_after_write()

    async def delete_level(self, level: int) -> None:
        try:
            await transact_write(
                self._client,
                [
                    {
                        "Delete": {
                            "TableName": self._levels,
                            "Key": {"level": attr(level)},
                            "ConditionExpression": "attribute_exists(#l)",
                            "ExpressionAttributeNames": {"#l": "level"},
                        }
                    },
                    *version_bump(self._levels),
                ],
            )
        except TransactionCancelled as cancelled:
            if cancelled.reasons and cancelled.reasons[0].code == "ConditionalCheckFailed":
                raise LevelNotFound(level) from None
            raise
        await self._level_table.reload_after_write()

    async def level_table(self) -> VersionedLevelTable:
        return await self._level_table.current()

    async def level_table_at_least(self, version: int) -> VersionedLevelTable:
        return await self._level_table.at_least(version)

    # --- users ----------------------------------------------------------------------

    async def get_progress(self, user_id: str) -> ProgressRecord:
        return await read_progress(self._client, self._prefix, user_id, _PROGRESS_ATTRIBUTES)

    async def get_progress_and_check(self, user_id: str, check_id: str) -> tuple[ProgressRecord, LevelCheck | None]:
        """The user's progress and what an earlier check with this id granted,
        as one snapshot (both are written by one transaction), in one round trip."""
        progress_values, check_values = await transact_get(
            self._client,
            [
                (self._progress, {"user_id": user_id}),
                (self._checks, {"user_id": user_id, "check_id": check_id}),
            ],
        )
        progress = ProgressRecord.from_attributes(user_id, progress_values)
        check = None
        if check_values is not None:
            # No levels: the check found nothing due (DynamoDB has no empty sets).
            levels = tuple(sorted(int(l) for l in check_values.get("levels", ())))
            target = int(check_values.get("target_level", max(levels, default=0)))
            check = LevelCheck(check_id, int(check_values["previous_level"]), levels, target)
        return progress, check

    async def levels_reached_page(
        self, user_id: str, page_size: int, after_level: int
    ) -> tuple[list[LevelReached], bool]:
        return await read_levels_reached(self._client, self._prefix, user_id, page_size, after_level=after_level)

    async def levels_reached(self, user_id: str, levels: tuple[int, ...]) -> list[LevelReached]:
        reached: list[LevelReached] = []
        for start in range(0, len(levels), 100):  # BatchGetItem's limit
            keys = [{"user_id": user_id, "level": level} for level in levels[start : start + 100]]
            found = await batch_get_consistent(self._client, {self._reached: keys})
            reached.extend(level_reached_from(v) for v in found[self._reached])
        return sorted(reached, key=lambda r: r.level)

    async def grant_level_step(
        self,
        user_id: str,
        step: LevelUpPlan,
        *,
        owner: str,
        target_level: int,
        min_total_xp: int,
        next_level_xp: int,
        version: int,
        continuing: bool,
    ) -> None:
        """One transaction: moves the stored level from the step's previous
        level to its level (a level-up's first step only while none is under
        way, a later step only for its owner), records each level passed with
        its rewards (each only if not recorded before), adds them to the
        owner's record when it has one, and holds only while the level table
        is at `version`. Exactly one caller can make a given move."""
        now = utc_now_iso()
        expected_level = step.previous_level
        values: dict[str, Any] = {
            ":new": step.current_level,
            ":expected": expected_level,
            ":now": now,
            ":next": next_level_xp,
            ":version": version,
        }
        if continuing:
            condition = "pending_check = :owner AND #l = :expected"
            values[":owner"] = owner
        else:
            condition = (
                "attribute_exists(user_id) AND total_xp >= :min_xp AND attribute_not_exists(pending_check)"
                " AND (#l = :expected OR attribute_not_exists(#l))"
            )
            values[":min_xp"] = min_total_xp
        update = "SET #l = :new, updated_at = :now, next_level_xp = :next, level_version = :version"
        # A level-up grants what a deferred award made due: its marker goes.
        if step.current_level < target_level:
            update += ", pending_check = :owner, pending_target = :target REMOVE deferred_check"
            values[":owner"] = owner
            values[":target"] = target_level
        else:
            update += " REMOVE pending_check, pending_target, deferred_check"
        items: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self._progress,
                    "Key": {"user_id": attr(user_id)},
                    "UpdateExpression": update,
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": {"#l": "level"},
                    "ExpressionAttributeValues": to_item(values),
                }
            },
            version_check(self._levels, version, user_id),
        ]
        if is_recorded_check(owner):  # only a check named by the caller can be repeated
            record_values: dict[str, Any] = {":previous": step.previous_level, ":target": target_level, ":now": now}
            record_update = (
                "SET previous_level = if_not_exists(previous_level, :previous),"
                " target_level = if_not_exists(target_level, :target), updated_at = :now"
            )
            if step.passed:  # DynamoDB has no empty sets: a step that passes no defined level adds none
                record_update = "ADD levels :levels " + record_update
                record_values[":levels"] = {level.level for level in step.passed}
            items.append(
                {
                    "Update": {
                        "TableName": self._checks,
                        "Key": {"user_id": attr(user_id), "check_id": attr(owner)},
                        "UpdateExpression": record_update,
                        # Not into the record of a copy of this request that found nothing due: it answered first.
                        "ConditionExpression": "attribute_not_exists(check_id) OR attribute_exists(levels)",
                        "ExpressionAttributeValues": to_item(record_values),
                    }
                }
            )
        for level in step.passed:
            items.append(
                {
                    "Put": {
                        "TableName": self._reached,
                        "Item": to_item(
                            {
                                "user_id": user_id,
                                "level": level.level,
                                "from_level": step.previous_level,
                                "rewards": [{"reward_id": r.reward_id, "quantity": r.quantity} for r in level.rewards],
                                "check_id": owner,
                                "granted_at": now,
                            }
                        ),
                        "ConditionExpression": "attribute_not_exists(#l)",
                        "ExpressionAttributeNames": {"#l": "level"},
                    }
                }
            )
        try:
            await transact_write(self._client, items)
        except TransactionCancelled as cancelled:
            reasons = cancelled.reasons
            if reasons and reasons[0].code == "ValidationError" and await self._make_room(user_id):
                raise LevelChangedConcurrently(user_id) from None  # made room: plan it again
            if "ConditionalCheckFailed" not in cancelled.codes:
                raise  # not a lost race (a validation or size limit): retrying would not help
            if len(reasons) > 1 and reasons[1].code == "ConditionalCheckFailed":
                raise LevelTableChanged(version) from None
            # Any other failed condition means another check moved first.
            raise LevelChangedConcurrently(user_id) from None

    async def record_nothing_due_once(self, user_id: str, check_id: str, level: int) -> bool:
        return await update_item_once(
            self._client,
            {
                "TableName": self._checks,
                "Key": {"user_id": attr(user_id), "check_id": attr(check_id)},
                "UpdateExpression": "SET previous_level = :previous, updated_at = :now",
                "ConditionExpression": "attribute_not_exists(check_id)",
                "ExpressionAttributeValues": to_item({":previous": level, ":now": utc_now_iso()}),
            },
        )

    async def pin_threshold(
        self, user_id: str, expected_level: int | None, level: int, next_level_xp: int, version: int
    ) -> bool:
        condition = "attribute_exists(user_id) AND attribute_not_exists(pending_check) AND "
        values: dict[str, Any] = {":l": level, ":next": next_level_xp, ":version": version}
        if expected_level is None:
            condition += "attribute_not_exists(#l)"
        else:
            condition += "#l = :expected"
            values[":expected"] = expected_level
        pin = {
            "TableName": self._progress,
            "Key": {"user_id": attr(user_id)},
            "UpdateExpression": "SET #l = :l, next_level_xp = :next, level_version = :version",
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#l": "level"},
            "ExpressionAttributeValues": to_item(values),
        }
        try:
            return await update_item_once(self._client, pin)
        except DynamoDBError as error:
            if error.code != "ValidationException" or not await self._make_room(user_id):
                raise
            return await update_item_once(self._client, pin)

    async def _make_room(self, user_id: str) -> bool:
        """A write that grows the progress item failed validation: the item
        may be one an earlier version filled with unlocked ids."""
        return await move_unlocked_ids_out_of_progress(self._client, self._prefix, user_id)


_PROGRESS_ATTRIBUTES = (
    "total_xp",
    "level",
    "updated_at",
    "next_level_xp",
    "level_version",
    "pending_check",
    "pending_target",
)
