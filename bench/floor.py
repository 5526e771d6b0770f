"""The floor: for each benchmarked RPC, the DynamoDB calls the service makes
for it, issued directly with boto3. No gRPC and no service code: only the
table names and key shapes come from common.dynamodb's table definitions.

Each function mirrors the service's path call for call (operation, items,
keys, condition expressions, consistency), including the branches its data
leads to: a first award of a new user pins its start level, an award that
crosses a level threshold writes the level-up and reads again, a lost race on
a level-up re-reads. The decisions are taken from what the calls return, as the
service takes them, so the mix of paths matches the service's under the same
load. The calls per RPC are counted on the client (see CallCounter) and
compared with the services' own metrics by bench.run: when the service's path
changes, the table shows the mismatch until this file follows it.

What each function mirrors (as of this writing):
- award_xp: XpService.AwardXp. The activity from a per-process cache (GetItem
  on a miss), TransactWriteItems (ledger Put if new, progress ADD, and a
  ConditionCheck of the activity's XP), then LevelsService.CheckLevelUp with
  the ledger entry's id (check_level).
- check_level: LevelsService.CheckLevelUp with a request_id. The level table
  from a per-process copy at most Settings.level_table_cache_s old (else a
  Scan), TransactGetItems (progress, check record); a level due, or a user
  without a stored level, on a cached table: Scan again; nothing due:
  UpdateItem of the check record (and, for a user without a stored level, an
  UpdateItem pinning it first); a level due: TransactWriteItems (progress
  level, check record, one Put per level passed) then TransactGetItems again.
- unlock_achievement: AchievementsService.UnlockAchievement of an achievement
  with an XP reward and no requirements. TransactGetItems (the unlock, the
  achievement, the progress), TransactWriteItems (unlock Put, progress ADD),
  then XpService.GrantXp (TransactWriteItems of ledger and progress,
  check_level with "ach#<id>"), then UpdateItem marking the XP paid.
- get_progress: XpService.GetProgress. GetItem of the progress item (Scan of
  the level table when it has no level), Query of the user's level_rewards.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from common.config import Settings
from common.dynamodb import (
    ACHIEVEMENTS,
    ACTIVITIES,
    LEVEL_CHECKS,
    LEVEL_REWARDS,
    LEVELS,
    USER_ACHIEVEMENTS,
    USER_PROGRESS,
    XP_LEDGER,
)

_CONFLICT_ATTEMPTS = 8


@dataclass(frozen=True)
class Tables:
    activities: str
    achievements: str
    levels: str
    progress: str
    ledger: str
    unlocks: str
    reached: str
    checks: str

    @classmethod
    def with_prefix(cls, prefix: str) -> Tables:
        return cls(
            activities=prefix + ACTIVITIES.name,
            achievements=prefix + ACHIEVEMENTS.name,
            levels=prefix + LEVELS.name,
            progress=prefix + USER_PROGRESS.name,
            ledger=prefix + XP_LEDGER.name,
            unlocks=prefix + USER_ACHIEVEMENTS.name,
            reached=prefix + LEVEL_REWARDS.name,
            checks=prefix + LEVEL_CHECKS.name,
        )


class CallCounter:
    """Counts the client's DynamoDB API calls by operation, one count per call
    as the services' rewards_dynamodb_call_duration_seconds_count does (the
    SDK's own retries inside a call are not counted). One counter per client;
    each client is used by one thread."""

    def __init__(self, client: Any) -> None:
        self.calls: Counter[str] = Counter()
        client.meta.events.register("before-call.dynamodb", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        self.calls[model.name] += 1


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _cancellation_codes(error: ClientError) -> list[str]:
    return [r.get("Code", "None") for r in error.response.get("CancellationReasons", [])]


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, 0.01 * 2**attempt))


def _transact_write(client: Any, items: list[dict[str, Any]]) -> bool:
    """False when a condition failed; retries transaction conflicts as the service does."""
    for attempt in range(_CONFLICT_ATTEMPTS):
        try:
            client.transact_write_items(TransactItems=items)
            return True
        except ClientError as error:
            if _error_code(error) != "TransactionCanceledException":
                raise
            codes = _cancellation_codes(error)
            if "ConditionalCheckFailed" in codes:
                return False
            if "TransactionConflict" not in codes:
                raise
        _backoff(attempt)
    raise RuntimeError("too many transaction conflicts")


def _transact_get(client: Any, keys: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    for attempt in range(_CONFLICT_ATTEMPTS):
        try:
            response = client.transact_get_items(TransactItems=[{"Get": key} for key in keys])
            return [r.get("Item") or None for r in response["Responses"]]
        except ClientError as error:
            if _error_code(error) != "TransactionCanceledException" or "TransactionConflict" not in _cancellation_codes(
                error
            ):
                raise
        _backoff(attempt)
    raise RuntimeError("too many transaction conflicts")


def _update_once(client: Any, **params: Any) -> bool:
    """A conditional UpdateItem; False when its condition failed."""
    for attempt in range(_CONFLICT_ATTEMPTS):
        try:
            client.update_item(**params)
            return True
        except ClientError as error:
            if _error_code(error) == "ConditionalCheckFailedException":
                return False
            if _error_code(error) != "TransactionConflictException":
                raise
        _backoff(attempt)
    raise RuntimeError("too many transaction conflicts")


# --- levels -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Level:
    level: int
    xp_required: int
    rewards: dict[str, Any]  # the item's `rewards` attribute, as stored


def _scan_levels(client: Any, t: Tables) -> list[_Level]:
    """The whole level table, strongly consistent, every page."""
    levels: list[_Level] = []
    params: dict[str, Any] = {"TableName": t.levels, "ConsistentRead": True}
    while True:
        page = client.scan(**params)
        for item in page["Items"]:
            levels.append(
                _Level(int(item["level"]["N"]), int(item["xp_required"]["N"]), item.get("rewards", {"L": []}))
            )
        if not page.get("LastEvaluatedKey"):
            return sorted(levels, key=lambda l: l.level)
        params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _level_for_xp(levels: list[_Level], total_xp: int) -> int:
    return max((l.level for l in levels if l.xp_required <= total_xp), default=0)


class ProcessCache:
    """What a service process keeps between calls, kept for the floor by each
    load process (shared by its threads): the activities' XP (XpService) and a
    copy of the level table (LevelsService, used for as long as
    Settings.level_table_cache_s after it was read; 0 when that setting does
    not exist). `shared_loaded_at`, when given, is one clock for every load
    process (a multiprocessing.Value): they scan as often as the one Levels
    process does, not each as often. The table does not change during a run,
    so a process may use its own copy while the shared one is recent."""

    def __init__(self, shared_loaded_at: Any = None, level_table_max_age_s: float | None = None) -> None:
        if level_table_max_age_s is None:
            level_table_max_age_s = float(getattr(Settings(), "level_table_cache_s", 0.0))
        self.level_table_max_age_s = level_table_max_age_s
        self.activity_xp: dict[str, int] = {}
        self._levels: list[_Level] | None = None
        self._loaded_at = shared_loaded_at

    def recent_levels(self) -> list[_Level] | None:
        if self._levels is None or self._loaded_at is None:
            return None
        if time.monotonic() - self._loaded_at.value > self.level_table_max_age_s:
            return None
        return self._levels

    def load_levels(self, client: Any, t: Tables) -> list[_Level]:
        levels = _scan_levels(client, t)
        self._levels = levels
        if self._loaded_at is not None:
            self._loaded_at.value = time.monotonic()
        return levels


def check_level(client: Any, t: Tables, cache: ProcessCache, user_id: str, check_id: str) -> None:
    """LevelsService.CheckLevelUp(user_id, request_id=check_id)."""
    recent = cache.recent_levels()
    levels = recent if recent is not None else cache.load_levels(client, t)
    fresh = recent is None
    user_key = {"user_id": _s(user_id)}
    granted = False
    while True:
        start_level = _level_for_xp(levels, 0)
        progress, check = _transact_get(
            client,
            [
                {"TableName": t.progress, "Key": user_key},
                {"TableName": t.checks, "Key": {"user_id": _s(user_id), "check_id": _s(check_id)}},
            ],
        )
        if check is not None and not granted:
            # A repeat of an earlier check: the service reads the levels it granted.
            granted_levels = [int(v) for v in check.get("levels", {}).get("NS", [])]
            if granted_levels:
                client.batch_get_item(
                    RequestItems={
                        t.reached: {
                            "Keys": [{"user_id": _s(user_id), "level": _n(l)} for l in granted_levels],
                            "ConsistentRead": True,
                        }
                    }
                )
            return
        stored = int(progress["level"]["N"]) if progress and "level" in progress else None
        total_xp = int(progress["total_xp"]["N"]) if progress and "total_xp" in progress else 0
        updated_at = progress.get("updated_at") if progress else None
        previous = start_level if stored is None else stored
        current = max(previous, _level_for_xp(levels, total_xp))
        if not fresh and (current > previous or (stored is None and updated_at is not None)):
            # A level-up, and a new user's start level, use the table as it is now.
            levels, fresh = cache.load_levels(client, t), True
            previous = _level_for_xp(levels, 0) if stored is None else stored
            current = max(previous, _level_for_xp(levels, total_xp))
        if current <= previous:
            if not granted and stored is None and updated_at is not None:
                _update_once(
                    client,
                    TableName=t.progress,
                    Key=user_key,
                    UpdateExpression="SET #l = :l",
                    ConditionExpression="attribute_exists(user_id) AND attribute_not_exists(#l)",
                    ExpressionAttributeNames={"#l": "level"},
                    ExpressionAttributeValues={":l": _n(current)},
                )
            if not granted and updated_at is not None:
                recorded = _update_once(
                    client,
                    TableName=t.checks,
                    Key={"user_id": _s(user_id), "check_id": _s(check_id)},
                    UpdateExpression="SET previous_level = :previous, updated_at = :now",
                    ConditionExpression="attribute_not_exists(check_id)",
                    ExpressionAttributeValues={":previous": _n(current), ":now": _s(_now())},
                )
                if not recorded:
                    continue
            return
        passed = [l for l in levels if previous < l.level <= current]
        now = _now()
        condition = "attribute_exists(user_id) AND total_xp >= :min_xp AND "
        condition += "attribute_not_exists(#l)" if stored is None else "#l = :expected"
        values: dict[str, Any] = {":new": _n(current), ":min_xp": _n(passed[-1].xp_required), ":now": _s(now)}
        if stored is not None:
            values[":expected"] = _n(stored)
        items: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": t.progress,
                    "Key": user_key,
                    "UpdateExpression": "SET #l = :new, updated_at = :now",
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": {"#l": "level"},
                    "ExpressionAttributeValues": values,
                }
            },
            {
                "Update": {
                    "TableName": t.checks,
                    "Key": {"user_id": _s(user_id), "check_id": _s(check_id)},
                    "UpdateExpression": "ADD levels :levels SET previous_level = if_not_exists(previous_level, :previous), updated_at = :now",
                    "ConditionExpression": "attribute_not_exists(check_id) OR attribute_exists(levels)",
                    "ExpressionAttributeValues": {
                        ":levels": {"NS": [str(l.level) for l in passed]},
                        ":previous": _n(previous),
                        ":now": _s(now),
                    },
                }
            },
        ]
        for level in passed:
            items.append(
                {
                    "Put": {
                        "TableName": t.reached,
                        "Item": {
                            "user_id": _s(user_id),
                            "level": _n(level.level),
                            "from_level": _n(previous),
                            "rewards": level.rewards,
                            "check_id": _s(check_id),
                            "granted_at": _s(now),
                        },
                        "ConditionExpression": "attribute_not_exists(#l)",
                        "ExpressionAttributeNames": {"#l": "level"},
                    }
                }
            )
        if _transact_write(client, items):
            granted = True  # then read again, as the service's loop does


# --- XP -----------------------------------------------------------------------------


def _record_xp(
    client: Any,
    t: Tables,
    user_id: str,
    entry_id: str,
    values: dict[str, Any],
    xp: int,
    activity: tuple[str, int] | None = None,
) -> None:
    now = _now()
    item = {
        "user_id": _s(user_id),
        "entry_id": _s(entry_id),
        "xp": _n(xp),
        "recorded_at": _s(now),
        "attempt_id": _s(uuid.uuid4().hex),
        **values,
    }
    items: list[dict[str, Any]] = [
        {"Put": {"TableName": t.ledger, "Item": item, "ConditionExpression": "attribute_not_exists(entry_id)"}},
        {
            "Update": {
                "TableName": t.progress,
                "Key": {"user_id": _s(user_id)},
                "UpdateExpression": "ADD total_xp :xp SET updated_at = :now",
                "ExpressionAttributeValues": {":xp": _n(xp), ":now": _s(now)},
            }
        },
    ]
    if activity is not None:
        items.append(
            {
                "ConditionCheck": {
                    "TableName": t.activities,
                    "Key": {"activity_id": _s(activity[0])},
                    "ConditionExpression": "xp = :xp",
                    "ExpressionAttributeValues": {":xp": _n(activity[1])},
                }
            }
        )
    if not _transact_write(client, items):
        # A repeat of the request (never in the benchmark): the service reads the entry.
        client.get_item(TableName=t.ledger, Key={"user_id": _s(user_id), "entry_id": _s(entry_id)}, ConsistentRead=True)


def read_activity_xp(client: Any, t: Tables, activity_id: str) -> int:
    response = client.get_item(TableName=t.activities, Key={"activity_id": _s(activity_id)}, ConsistentRead=True)
    return int(response["Item"]["xp"]["N"])


def award_xp(client: Any, t: Tables, cache: ProcessCache, user_id: str, activity_id: str, request_id: str) -> None:
    """XpService.AwardXp."""
    xp = cache.activity_xp.get(activity_id)
    if xp is None:
        xp = cache.activity_xp[activity_id] = read_activity_xp(client, t, activity_id)
    entry_id = f"req#{request_id}"
    _record_xp(
        client,
        t,
        user_id,
        entry_id,
        {"kind": _s("activity"), "request_id": _s(request_id), "activity_id": _s(activity_id)},
        xp,
        activity=(activity_id, xp),
    )
    check_level(client, t, cache, user_id, entry_id)


# --- achievements ---------------------------------------------------------------


def unlock_achievement(
    client: Any, t: Tables, cache: ProcessCache, user_id: str, achievement_id: str, request_id: str
) -> None:
    """AchievementsService.UnlockAchievement of a new (user, achievement) pair,
    the achievement with no requirements."""
    unlock_key = {"user_id": _s(user_id), "achievement_id": _s(achievement_id)}
    existing, achievement, _progress = _transact_get(
        client,
        [
            {"TableName": t.unlocks, "Key": unlock_key},
            {"TableName": t.achievements, "Key": {"achievement_id": _s(achievement_id)}},
            {"TableName": t.progress, "Key": {"user_id": _s(user_id)}},
        ],
    )
    if existing is not None or achievement is None:
        raise RuntimeError(
            f"{user_id} already unlocked {achievement_id}, or it is missing: "
            "the benchmark unlocks new pairs of existing achievements only"
        )
    xp_reward = int(achievement.get("xp_reward", {"N": "0"})["N"])
    now = _now()
    item = {**unlock_key, "unlocked_at": _s(now), "xp_reward": _n(xp_reward), "xp_granted": {"BOOL": xp_reward == 0}}
    if request_id:
        item["request_id"] = _s(request_id)
    if not _transact_write(
        client,
        [
            {
                "Put": {
                    "TableName": t.unlocks,
                    "Item": item,
                    "ConditionExpression": "attribute_not_exists(achievement_id)",
                }
            },
            {
                "Update": {
                    "TableName": t.progress,
                    "Key": {"user_id": _s(user_id)},
                    "UpdateExpression": "ADD unlocked_achievements :a SET updated_at = :now",
                    "ExpressionAttributeValues": {":a": {"SS": [achievement_id]}, ":now": _s(now)},
                }
            },
        ],
    ):
        raise RuntimeError(f"unlock of {achievement_id} for {user_id} failed its condition")
    if xp_reward == 0:
        return
    # XpService.GrantXp(user_id, amount, reason, achievement_id): its ledger entry is named after the achievement.
    entry_id = f"ach#{achievement_id}"
    _record_xp(
        client,
        t,
        user_id,
        entry_id,
        {
            "kind": _s("achievement"),
            "reason": _s(f"achievement:{achievement_id}"),
            "achievement_id": _s(achievement_id),
        },
        xp_reward,
    )
    check_level(client, t, cache, user_id, entry_id)
    marker = uuid.uuid4().hex
    _update_once(
        client,
        TableName=t.unlocks,
        Key=unlock_key,
        UpdateExpression="SET xp_granted = :t, granted_by = :m",
        ConditionExpression="attribute_exists(achievement_id) AND (xp_granted = :f OR granted_by = :m)",
        ExpressionAttributeValues={":t": {"BOOL": True}, ":f": {"BOOL": False}, ":m": _s(marker)},
    )


# --- progress --------------------------------------------------------------------


def get_progress(client: Any, t: Tables, user_id: str) -> None:
    """XpService.GetProgress."""
    progress = client.get_item(TableName=t.progress, Key={"user_id": _s(user_id)}, ConsistentRead=True).get("Item")
    if not progress or "level" not in progress:
        _scan_levels(client, t)
    params: dict[str, Any] = {
        "TableName": t.reached,
        "KeyConditionExpression": "user_id = :u",
        "ExpressionAttributeValues": {":u": _s(user_id)},
        "ConsistentRead": True,
    }
    while True:
        page = client.query(**params)
        if not page.get("LastEvaluatedKey"):
            return
        params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
