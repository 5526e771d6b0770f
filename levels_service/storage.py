"""LevelsRepository: the levels table and the level part of user_progress."""
from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from common.dynamodb import LEVELS, USER_PROGRESS, CatalogTable, attr, error_code, read_progress, retry_on_transaction_conflict, to_item
from common.models import GrantedReward, ProgressRecord, Reward, utc_now_iso
from levels_service.domain import Level, LevelNotFound, LevelTable


class LevelChangedConcurrently(Exception):
    """Another check moved the user's level first; re-read and plan again."""


class LevelsRepository:
    def __init__(self, client: Any, table_prefix: str) -> None:
        self._client = client
        self._prefix = table_prefix
        self._levels = CatalogTable(client, table_prefix, LEVELS)
        self._progress = table_prefix + USER_PROGRESS.name

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
        return LevelTable(
            Level(
                level=int(values["level"]),
                xp_required=int(values["xp_required"]),
                rewards=tuple(Reward(str(r["reward_id"]), int(r["quantity"])) for r in values.get("rewards", [])),
            )
            for values in self._levels.scan_all()
        )

    def get_progress(self, user_id: str) -> ProgressRecord:
        return read_progress(self._client, self._prefix, user_id, ("total_xp", "level"))

    def grant_level_rewards_once(
        self,
        user_id: str,
        expected_level: int | None,
        new_level: int,
        min_total_xp: int,
        rewards: tuple[GrantedReward, ...],
    ) -> None:
        """Moves the stored level from `expected_level` to `new_level` and appends
        the rewards in the same conditional write, so exactly one caller can grant
        them. Raises LevelChangedConcurrently when the level was no longer
        `expected_level`."""
        condition = "attribute_exists(user_id) AND total_xp >= :min_xp AND "
        condition += "attribute_not_exists(#l)" if expected_level is None else "#l = :expected"
        values = {
            ":new": new_level,
            ":min_xp": min_total_xp,
            ":granted": [{"reward_id": r.reward_id, "quantity": r.quantity, "level": r.level} for r in rewards],
            ":empty": [],
            ":now": utc_now_iso(),
        }
        if expected_level is not None:
            values[":expected"] = expected_level
        try:
            retry_on_transaction_conflict(lambda: self._client.update_item(
                TableName=self._progress,
                Key={"user_id": attr(user_id)},
                UpdateExpression="SET #l = :new, rewards = list_append(if_not_exists(rewards, :empty), :granted), updated_at = :now",
                ConditionExpression=condition,
                ExpressionAttributeNames={"#l": "level"},
                ExpressionAttributeValues=to_item(values),
            ))
        except ClientError as error:
            if error_code(error) == "ConditionalCheckFailedException":
                raise LevelChangedConcurrently(user_id) from error
            raise
