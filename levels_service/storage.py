"""LevelsRepository: the levels table, the level part of user_progress, the
levels each user reached (level_rewards) and what each check granted (level_checks)."""

from __future__ import annotations

import threading
import time
from typing import Any

from botocore.exceptions import ClientError

from common.dynamodb import (
    LEVEL_CHECKS,
    LEVEL_REWARDS,
    LEVELS,
    USER_PROGRESS,
    CatalogTable,
    attr,
    batch_get_consistent,
    error_code,
    level_reached_from,
    load_level_table,
    read_progress,
    retry_on_transaction_conflict,
    to_item,
    transact_get,
    transact_write,
)
from common.models import Level, LevelReached, LevelTable, ProgressRecord, utc_now_iso
from levels_service.domain import LevelCheck, LevelNotFound, LevelUpPlan


class LevelChangedConcurrently(Exception):
    """Another check moved the user's level first; re-read and plan again."""


class LevelsRepository:
    def __init__(self, client: Any, table_prefix: str) -> None:
        self._client = client
        self._prefix = table_prefix
        self._levels = CatalogTable(client, table_prefix, LEVELS)
        self._progress = table_prefix + USER_PROGRESS.name
        self._reached = table_prefix + LEVEL_REWARDS.name
        self._checks = table_prefix + LEVEL_CHECKS.name
        # The level table as last read, and when; the generation moves on every
        # catalog write here, so a read that overlapped a write is not kept.
        self._cached_table: tuple[float, LevelTable] | None = None
        self._generation = 0
        self._cache_lock = threading.Lock()

    def put_level(self, level: Level) -> None:
        try:
            self._levels.put(
                {
                    "level": level.level,
                    "xp_required": level.xp_required,
                    "rewards": [{"reward_id": r.reward_id, "quantity": r.quantity} for r in level.rewards],
                }
            )
        finally:
            self._forget_level_table()

    def delete_level(self, level: int) -> None:
        try:
            if not self._levels.delete(level):
                raise LevelNotFound(level)
        finally:
            self._forget_level_table()

    def load_level_table(self) -> LevelTable:
        """The table as it is now (a consistent scan); kept as the recent copy."""
        with self._cache_lock:
            generation = self._generation
        table = load_level_table(self._client, self._prefix)
        with self._cache_lock:
            if generation == self._generation:
                self._cached_table = (time.monotonic(), table)
        return table

    def recent_level_table(self, max_age_s: float) -> LevelTable | None:
        """The copy read at most `max_age_s` ago, if there is one."""
        cached = self._cached_table
        if cached is None or time.monotonic() - cached[0] > max_age_s:
            return None
        return cached[1]

    def _forget_level_table(self) -> None:
        with self._cache_lock:
            self._generation += 1
            self._cached_table = None

    def get_progress(self, user_id: str) -> ProgressRecord:
        return read_progress(self._client, self._prefix, user_id, ("total_xp", "level", "updated_at"))

    def get_progress_and_check(self, user_id: str, check_id: str) -> tuple[ProgressRecord, LevelCheck | None]:
        """The user's progress and what an earlier check with this id granted,
        as one snapshot (both are written by one transaction), in one round trip."""
        progress_values, check_values = transact_get(
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
            check = LevelCheck(check_id, int(check_values["previous_level"]), levels)
        return progress, check

    def levels_reached(self, user_id: str, levels: tuple[int, ...]) -> list[LevelReached]:
        reached: list[LevelReached] = []
        for start in range(0, len(levels), 100):  # BatchGetItem's limit
            keys = [{"user_id": user_id, "level": level} for level in levels[start : start + 100]]
            reached.extend(
                level_reached_from(v) for v in batch_get_consistent(self._client, {self._reached: keys})[self._reached]
            )
        return sorted(reached, key=lambda r: r.level)

    def grant_level_rewards_once(
        self,
        user_id: str,
        expected_level: int | None,
        step: LevelUpPlan,
        min_total_xp: int,
        check_id: str,
        record_check: bool,
    ) -> None:
        """In one transaction: moves the stored level from `expected_level` to
        the step's level, records each level passed with its rewards (each only
        if not recorded before), and, when `record_check`, adds those levels to
        the check's record (kept for repeats of a request_id).
        Exactly one caller can make a given move. Raises LevelChangedConcurrently
        when another check moved first."""
        now = utc_now_iso()
        condition = "attribute_exists(user_id) AND total_xp >= :min_xp AND "
        condition += "attribute_not_exists(#l)" if expected_level is None else "#l = :expected"
        values: dict[str, Any] = {":new": step.current_level, ":min_xp": min_total_xp, ":now": now}
        if expected_level is not None:
            values[":expected"] = expected_level
        items: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self._progress,
                    "Key": {"user_id": attr(user_id)},
                    "UpdateExpression": "SET #l = :new, updated_at = :now",
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": {"#l": "level"},
                    "ExpressionAttributeValues": to_item(values),
                }
            },
        ]
        if record_check:  # only a check named by the caller can be repeated
            items.append(
                {
                    "Update": {
                        "TableName": self._checks,
                        "Key": {"user_id": attr(user_id), "check_id": attr(check_id)},
                        "UpdateExpression": "ADD levels :levels SET previous_level = if_not_exists(previous_level, :previous), updated_at = :now",
                        # Not into a record of a copy of this request that found nothing due: that copy answered first.
                        "ConditionExpression": "attribute_not_exists(check_id) OR attribute_exists(levels)",
                        "ExpressionAttributeValues": to_item(
                            {
                                ":levels": {level.level for level in step.passed},
                                ":previous": step.previous_level,
                                ":now": now,
                            }
                        ),
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
                                "check_id": check_id,
                                "granted_at": now,
                            }
                        ),
                        "ConditionExpression": "attribute_not_exists(#l)",
                        "ExpressionAttributeNames": {"#l": "level"},
                    }
                }
            )
        if transact_write(self._client, items) is not None:
            # A failed condition on any item means another check moved first
            # (real DynamoDB may name other items' reasons beside it).
            raise LevelChangedConcurrently(user_id)

    def record_nothing_due_once(self, user_id: str, check_id: str, level: int) -> bool:
        """Records that the check `check_id` found no level due, so that its
        repeats report the same. False when the check already has a record (a
        concurrent copy of the request granted levels first)."""
        try:
            retry_on_transaction_conflict(
                lambda: self._client.update_item(
                    TableName=self._checks,
                    Key={"user_id": attr(user_id), "check_id": attr(check_id)},
                    UpdateExpression="SET previous_level = :previous, updated_at = :now",
                    ConditionExpression="attribute_not_exists(check_id)",
                    ExpressionAttributeValues=to_item({":previous": level, ":now": utc_now_iso()}),
                )
            )
            return True
        except ClientError as error:
            if error_code(error) == "ConditionalCheckFailedException":
                return False
            raise

    def store_start_level_once(self, user_id: str, level: int) -> None:
        """Pins the level of a user who has XP but no stored level yet, so that a
        later change of the table's first levels cannot lower it."""
        try:
            retry_on_transaction_conflict(
                lambda: self._client.update_item(
                    TableName=self._progress,
                    Key={"user_id": attr(user_id)},
                    UpdateExpression="SET #l = :l",
                    ConditionExpression="attribute_exists(user_id) AND attribute_not_exists(#l)",
                    ExpressionAttributeNames={"#l": "level"},
                    ExpressionAttributeValues={":l": attr(level)},
                )
            )
        except ClientError as error:
            if error_code(error) != "ConditionalCheckFailedException":  # another check pinned it first
                raise
