"""The floor: for each benchmarked RPC, the fewest DynamoDB calls the operation
needs, issued directly (no gRPC, no service code) from the load processes. It
does not mirror the services' paths: it is what they are measured against.

Each operation is written once, as a generator of (action, payload) requests
in DynamoDB JSON (the API's own shapes) that receives each answer, and is run
by two drivers:
- lean (the floor of the results, floor_kind "lean"): common.dynamodb's
  DynamoDBClient, the services' own client, inside an asyncio event loop in the
  load process, its clients coroutines sharing one DynamoDBClient as a
  service's requests share its;
- boto3 (a reference column, boto3_floor_*): boto3's low-level client, one a
  client thread.

The minimum of each operation (MIN_CALLS; what the bench's workload needs):
- award_xp: one TransactWriteItems (the ledger entry, put only if its id is new;
  the ADD to the user's total; a ConditionCheck that the activity still gives
  the XP the process knows), then one consistent GetItem of the progress item
  (the new total, and whether a level-up may be due). The floor never levels
  up: that is the service's extra work when the progress says one is due.
- award_xp_counted (an activity an auto_unlock rule counts): the same
  TransactWriteItems with the ADD of one award to each of the user's counters
  of the activity and of its category (the activity's ConditionCheck also
  checks the category), then one strongly consistent BatchGetItem of the
  progress item and the activity's counter (what says whether a counted tier
  may be due). The floor never evaluates nor unlocks: the first evaluation of
  each user and the tiers' unlocks (3 awards in 20 in the bench, through
  AchievementsService.UnlockDueAchievements) are the service's extra work, as
  its level-ups are.
- award_xp_streak (an activity one streak counts, no auto_unlock rule): the
  counted award's TransactWriteItems (the activity's two counters are ADDed
  whether or not a rule counts them) with one more Update, the ADD of the
  streak's period (its first local day in the game's time zone) to the set of
  the user's run (common.dynamodb.counters.streak_touches), then one strongly
  consistent BatchGetItem of the progress item and the run. The floor never
  folds a run (FOLD_AT periods in its set: never within a bench's day).
- unlock_achievement (no requirements, an XP reward): the same shape, one
  TransactWriteItems (the unlock, put only if new; the ledger entry; the ADD of
  the XP and of the achievement to the progress; a ConditionCheck of the
  achievement's reward) and one consistent GetItem of the progress item.
- check_level_up (with a request_id, nothing due): one read, a TransactGetItems
  of the progress item and the check record (whether this request_id was
  answered before), as one snapshot.
- get_progress: one consistent GetItem of the progress item, plus one Query of
  the user's level_rewards where the user has a level (every seeded user: so
  two calls in the bench).

The activities' and achievements' XP come from the load spec (the catalog the
bench seeded), as a service whose caches are warm has them: no call.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from botocore import xform_name

from common.auto_unlock import activity_counter, award_counters
from common.dynamodb import (
    ACHIEVEMENTS,
    ACTIVITIES,
    ACTIVITY_COUNTS,
    LEVEL_CHECKS,
    LEVEL_REWARDS,
    USER_ACHIEVEMENTS,
    USER_PROGRESS,
    XP_LEDGER,
    DynamoDBClient,
)
from common.periods import period_start_date
from common.streaks import streak_counter

# What the results call the floor (floor_kind).
FLOOR_KIND = "lean"

# The fewest DynamoDB calls of each operation, by action, for the bench's workload.
MIN_CALLS: dict[str, dict[str, int]] = {
    "award_xp": {"TransactWriteItems": 1, "GetItem": 1},
    "award_xp_counted": {"TransactWriteItems": 1, "BatchGetItem": 1},
    "award_xp_streak": {"TransactWriteItems": 1, "BatchGetItem": 1},
    "unlock_achievement": {"TransactWriteItems": 1, "GetItem": 1},
    "check_level_up": {"TransactGetItems": 1},
    "get_progress": {"GetItem": 1, "Query": 1},
}


def min_calls_per_op(operation: str) -> int:
    return sum(MIN_CALLS[operation].values())


Request = tuple[str, dict[str, Any]]
# Yields requests, is sent each answer, returns an anomaly (or None).
Steps = Generator[Request, dict[str, Any], "str | None"]


@dataclass(frozen=True)
class Tables:
    activities: str
    achievements: str
    progress: str
    ledger: str
    unlocks: str
    reached: str
    checks: str
    counts: str

    @classmethod
    def with_prefix(cls, prefix: str) -> Tables:
        return cls(
            activities=prefix + ACTIVITIES.name,
            achievements=prefix + ACHIEVEMENTS.name,
            progress=prefix + USER_PROGRESS.name,
            ledger=prefix + XP_LEDGER.name,
            unlocks=prefix + USER_ACHIEVEMENTS.name,
            reached=prefix + LEVEL_REWARDS.name,
            checks=prefix + LEVEL_CHECKS.name,
            counts=prefix + ACTIVITY_COUNTS.name,
        )


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ledger_put(t: Tables, user_id: str, entry_id: str, xp: int, now: str, values: dict[str, Any]) -> dict[str, Any]:
    item = {
        "user_id": _s(user_id),
        "entry_id": _s(entry_id),
        "xp": _n(xp),
        "recorded_at": _s(now),
        "attempt_id": _s(uuid.uuid4().hex),
        **values,
    }
    return {"Put": {"TableName": t.ledger, "Item": item, "ConditionExpression": "attribute_not_exists(entry_id)"}}


def _read_progress(t: Tables, user_id: str) -> Request:
    return ("GetItem", {"TableName": t.progress, "Key": {"user_id": _s(user_id)}, "ConsistentRead": True})


def award_xp(t: Tables, user_id: str, activity_id: str, xp: int, request_id: str) -> Steps:
    """AwardXp: TransactWriteItems, then a consistent GetItem of the progress item."""
    now = _now()
    yield (
        "TransactWriteItems",
        {
            "TransactItems": [
                _ledger_put(
                    t,
                    user_id,
                    f"req#{request_id}",
                    xp,
                    now,
                    {"kind": _s("activity"), "request_id": _s(request_id), "activity_id": _s(activity_id)},
                ),
                {
                    "Update": {
                        "TableName": t.progress,
                        "Key": {"user_id": _s(user_id)},
                        "UpdateExpression": "ADD total_xp :xp SET updated_at = :now",
                        "ExpressionAttributeValues": {":xp": _n(xp), ":now": _s(now)},
                    }
                },
                {
                    "ConditionCheck": {
                        "TableName": t.activities,
                        "Key": {"activity_id": _s(activity_id)},
                        "ConditionExpression": "xp = :xp",
                        "ExpressionAttributeValues": {":xp": _n(xp)},
                    }
                },
            ]
        },
    )
    progress = (yield _read_progress(t, user_id)).get("Item")
    return None if progress else "no_progress"


def _counted_award_items(
    t: Tables, user_id: str, activity_id: str, category: str, xp: int, request_id: str, now: str
) -> list[dict[str, Any]]:
    """A counted award's transaction items: the ledger put, the progress ADD,
    the activity's check of its XP and category, the ADDs of its two counters."""
    counters = [
        {
            "Update": {
                "TableName": t.counts,
                "Key": {"user_id": _s(user_id), "counter": _s(counter)},
                "UpdateExpression": "ADD awards :one",
                "ExpressionAttributeValues": {":one": _n(1)},
            }
        }
        for counter in award_counters(activity_id, category)
    ]
    return [
        _ledger_put(
            t,
            user_id,
            f"req#{request_id}",
            xp,
            now,
            {
                "kind": _s("activity"),
                "request_id": _s(request_id),
                "activity_id": _s(activity_id),
                "category": _s(category),
            },
        ),
        {
            "Update": {
                "TableName": t.progress,
                "Key": {"user_id": _s(user_id)},
                "UpdateExpression": "ADD total_xp :xp SET updated_at = :now",
                "ExpressionAttributeValues": {":xp": _n(xp), ":now": _s(now)},
            }
        },
        {
            "ConditionCheck": {
                "TableName": t.activities,
                "Key": {"activity_id": _s(activity_id)},
                "ConditionExpression": "xp = :xp AND category = :c",
                "ExpressionAttributeValues": {":xp": _n(xp), ":c": _s(category)},
            }
        },
        *counters,
    ]


def _read_progress_and_counter(t: Tables, user_id: str, counter: str) -> Generator[Request, Any, dict[str, int]]:
    """One strongly consistent BatchGetItem of the progress item and one of the
    user's activity_counts items; how many items each table gave."""
    pending: dict[str, Any] = {
        t.progress: {"Keys": [{"user_id": _s(user_id)}], "ConsistentRead": True},
        t.counts: {"Keys": [{"user_id": _s(user_id), "counter": _s(counter)}], "ConsistentRead": True},
    }
    found: dict[str, int] = {}
    while pending:  # DynamoDB Local leaves no key unprocessed; a retry would show in the floor's calls
        answer = yield ("BatchGetItem", {"RequestItems": pending})
        for table, items in answer["Responses"].items():
            found[table] = found.get(table, 0) + len(items)
        pending = answer.get("UnprocessedKeys") or {}
    return found


def award_xp_counted(t: Tables, user_id: str, activity_id: str, category: str, xp: int, request_id: str) -> Steps:
    """AwardXp of an activity an auto_unlock rule counts: TransactWriteItems
    (with the counters' ADDs), then a consistent BatchGetItem of the progress
    item and the activity's counter."""
    now = _now()
    yield (
        "TransactWriteItems",
        {"TransactItems": _counted_award_items(t, user_id, activity_id, category, xp, request_id, now)},
    )
    found = yield from _read_progress_and_counter(t, user_id, activity_counter(activity_id))
    if not found.get(t.progress):
        return "no_progress"
    return None if found.get(t.counts) else "no_counter"


def award_xp_streak(
    t: Tables,
    user_id: str,
    activity_id: str,
    category: str,
    xp: int,
    request_id: str,
    streak_id: str,
    period: str,
    zone: ZoneInfo,
) -> Steps:
    """AwardXp of an activity one streak counts: TransactWriteItems (with the
    counters' ADDs and the ADD of the streak's period to the user's run), then
    a consistent BatchGetItem of the progress item and the run."""
    moment = datetime.now(UTC)
    now = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    run = streak_counter(streak_id)
    touch = {
        "Update": {
            "TableName": t.counts,
            "Key": {"user_id": _s(user_id), "counter": _s(run)},
            "UpdateExpression": "ADD touched :d SET #period = :p",
            "ExpressionAttributeNames": {"#period": "period"},
            "ExpressionAttributeValues": {
                ":d": {"SS": [period_start_date(moment, period, zone).isoformat()]},
                ":p": _s(period),
            },
        }
    }
    items = [*_counted_award_items(t, user_id, activity_id, category, xp, request_id, now), touch]
    yield ("TransactWriteItems", {"TransactItems": items})
    found = yield from _read_progress_and_counter(t, user_id, run)
    if not found.get(t.progress):
        return "no_progress"
    return None if found.get(t.counts) else "no_run"


def unlock_achievement(t: Tables, user_id: str, achievement_id: str, xp_reward: int, request_id: str) -> Steps:
    """UnlockAchievement of an achievement with an XP reward and no requirements:
    one TransactWriteItems, then a consistent GetItem of the progress item."""
    now = _now()
    unlock_key = {"user_id": _s(user_id), "achievement_id": _s(achievement_id)}
    yield (
        "TransactWriteItems",
        {
            "TransactItems": [
                {
                    "Put": {
                        "TableName": t.unlocks,
                        "Item": {
                            **unlock_key,
                            "unlocked_at": _s(now),
                            "xp_reward": _n(xp_reward),
                            "xp_granted": {"BOOL": True},
                            "request_id": _s(request_id),
                        },
                        "ConditionExpression": "attribute_not_exists(achievement_id)",
                    }
                },
                _ledger_put(
                    t,
                    user_id,
                    f"ach#{achievement_id}",
                    xp_reward,
                    now,
                    {
                        "kind": _s("achievement"),
                        "reason": _s(f"achievement:{achievement_id}"),
                        "achievement_id": _s(achievement_id),
                    },
                ),
                {
                    "Update": {
                        "TableName": t.progress,
                        "Key": {"user_id": _s(user_id)},
                        "UpdateExpression": "ADD total_xp :xp SET updated_at = :now, holds_achievements = :t",
                        "ExpressionAttributeValues": {
                            ":xp": _n(xp_reward),
                            ":t": {"BOOL": True},
                            ":now": _s(now),
                        },
                    }
                },
                {
                    "ConditionCheck": {
                        "TableName": t.achievements,
                        "Key": {"achievement_id": _s(achievement_id)},
                        "ConditionExpression": "xp_reward = :xp",
                        "ExpressionAttributeValues": {":xp": _n(xp_reward)},
                    }
                },
            ]
        },
    )
    progress = (yield _read_progress(t, user_id)).get("Item")
    return None if progress else "no_progress"


def check_level_up(t: Tables, user_id: str, check_id: str) -> Steps:
    """CheckLevelUp with a request_id, nothing due: one TransactGetItems (progress, check record)."""
    answer = yield (
        "TransactGetItems",
        {
            "TransactItems": [
                {"Get": {"TableName": t.progress, "Key": {"user_id": _s(user_id)}}},
                {"Get": {"TableName": t.checks, "Key": {"user_id": _s(user_id), "check_id": _s(check_id)}}},
            ]
        },
    )
    progress, check = (r.get("Item") for r in answer["Responses"])
    if check:
        return "repeated_check"
    return None if progress and "level" in progress else "no_level"


def get_progress(t: Tables, user_id: str) -> Steps:
    """GetProgress: a consistent GetItem of the progress item, and a Query of the
    user's level_rewards (every page) where the user has a level."""
    progress = (yield _read_progress(t, user_id)).get("Item")
    if not progress or "level" not in progress:
        return "no_level"
    params: dict[str, Any] = {
        "TableName": t.reached,
        "KeyConditionExpression": "user_id = :u",
        "ExpressionAttributeValues": {":u": _s(user_id)},
        "ConsistentRead": True,
    }
    rewards = 0
    while True:
        page = yield ("Query", dict(params))
        rewards += len(page["Items"])
        if not page.get("LastEvaluatedKey"):
            return None if rewards else "no_rewards"
        params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


# --- drivers ------------------------------------------------------------------------


async def run_lean(client: DynamoDBClient, steps: Steps, calls: Counter[str]) -> str | None:
    """Runs an operation through the lean client; counts its calls by action."""
    try:
        action, payload = next(steps)
        while True:
            calls[action] += 1
            answer = await client.call(action, payload)
            action, payload = steps.send(answer)
    except StopIteration as done:
        result: str | None = done.value
        return result


def run_boto3(client: Any, steps: Steps, calls: Counter[str]) -> str | None:
    """Runs an operation through a boto3 low-level client (same requests); counts its calls by action."""
    try:
        action, payload = next(steps)
        while True:
            calls[action] += 1
            answer = getattr(client, xform_name(action))(**payload)
            action, payload = steps.send(answer)
    except StopIteration as done:
        result: str | None = done.value
        return result
