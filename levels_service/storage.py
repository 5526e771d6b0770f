"""LevelsRepository: the levels table, the level part of user_progress, and
the levels each user reached (level_rewards)."""
from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from common.dynamodb import (
    LEVEL_REWARDS,
    LEVELS,
    USER_PROGRESS,
    CatalogTable,
    attr,
    error_code,
    load_level_table,
    read_levels_reached,
    read_progress,
    retry_on_transaction_conflict,
    to_item,
    transact_write,
)
from common.models import Level, LevelReached, LevelTable, ProgressRecord, utc_now_iso
from levels_service.domain import LevelNotFound, LevelUpPlan


class LevelChangedConcurrently(Exception):
    """Another check moved the user's level first; re-read and plan again."""


class LevelsRepository:
    def __init__(self, client: Any, table_prefix: str) -> None:
        self._client = client
        self._prefix = table_prefix
        self._levels = CatalogTable(client, table_prefix, LEVELS)
        self._progress = table_prefix + USER_PROGRESS.name
        self._reached = table_prefix + LEVEL_REWARDS.name

    def put_level(self, level: Level) -> None:
        self._levels.put({
            "level": level.level,
            "xp_required": level.xp_required,
            "rewards": [{"reward_id": r.reward_id, "quantity": r.quantity} for r in level.rewards],
        })

    def delete_level(self, level: int) -> None:
        if not self._levels.delete(level):
            raise LevelNotFound(level)

    def load_level_table(self) -> LevelTable:
        return load_level_table(self._client, self._prefix)

    def get_progress(self, user_id: str) -> ProgressRecord:
        return read_progress(self._client, self._prefix, user_id,
                             ("total_xp", "level", "updated_at", "last_level_up_check"))

    def levels_reached_by(self, user_id: str, check_id: str) -> list[LevelReached]:
        return read_levels_reached(self._client, self._prefix, user_id, check_id)

    def grant_level_rewards_once(self, user_id: str, expected_level: int | None, step: LevelUpPlan,
                                 min_total_xp: int, check_id: str) -> None:
        """In one transaction: moves the stored level from `expected_level` to
        the step's level, and records each level passed with its rewards, each
        only if not recorded before. Exactly one caller can make a given move.
        Raises LevelChangedConcurrently when the level was no longer `expected_level`."""
        now = utc_now_iso()
        condition = "attribute_exists(user_id) AND total_xp >= :min_xp AND "
        condition += "attribute_not_exists(#l)" if expected_level is None else "#l = :expected"
        values: dict[str, Any] = {":new": step.current_level, ":min_xp": min_total_xp, ":now": now, ":check": check_id}
        if expected_level is not None:
            values[":expected"] = expected_level
        items: list[dict[str, Any]] = [{"Update": {
            "TableName": self._progress,
            "Key": {"user_id": attr(user_id)},
            "UpdateExpression": "SET #l = :new, updated_at = :now, last_level_up_check = :check",
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#l": "level"},
            "ExpressionAttributeValues": to_item(values),
        }}]
        for level in step.passed:
            items.append({"Put": {
                "TableName": self._reached,
                "Item": to_item({
                    "user_id": user_id,
                    "level": level.level,
                    "from_level": step.previous_level,
                    "rewards": [{"reward_id": r.reward_id, "quantity": r.quantity} for r in level.rewards],
                    "check_id": check_id,
                    "granted_at": now,
                }),
                "ConditionExpression": "attribute_not_exists(#l)",
                "ExpressionAttributeNames": {"#l": "level"},
            }})
        codes = transact_write(self._client, items)
        if codes is None:
            return
        if codes[0] == "ConditionalCheckFailed":
            raise LevelChangedConcurrently(user_id)
        # The level moved as expected, yet a level above it was already granted:
        # only possible if user_progress was edited by hand.
        raise RuntimeError(f"user {user_id!r}: a level above {expected_level} was already granted")

    def store_start_level_once(self, user_id: str, level: int) -> None:
        """Pins the level of a user who has XP but no stored level yet, so that a
        later change of the table's first levels cannot lower it."""
        try:
            retry_on_transaction_conflict(lambda: self._client.update_item(
                TableName=self._progress,
                Key={"user_id": attr(user_id)},
                UpdateExpression="SET #l = :l",
                ConditionExpression="attribute_exists(user_id) AND attribute_not_exists(#l)",
                ExpressionAttributeNames={"#l": "level"},
                ExpressionAttributeValues={":l": attr(level)},
            ))
        except ClientError as error:
            if error_code(error) != "ConditionalCheckFailedException":  # another check pinned it first
                raise
