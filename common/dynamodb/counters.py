"""Awards counted per activity and category (the activity_counts table), the
watches left on them and on the progress item (common.auto_unlock), and the
game-wide stats kept in shards (achievement_stats): the items XP and
Achievements both write."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from common.auto_unlock import ActivityCount, Counter, Watches, WatchOutdated
from common.dynamodb.client import DynamoDBClient, TransactionCancelled
from common.dynamodb.items import attr, from_item
from common.dynamodb.reads import read_progress
from common.dynamodb.tables import ACHIEVEMENT_STATS, ACTIVITY_COUNTS, STAT_SHARDS, USER_PROGRESS
from common.dynamodb.transactions import batch_get_consistent, transact_write
from common.models import ProgressRecord

PLAYERS_STAT = "players"


def unlocks_stat(achievement_id: str) -> str:
    return f"ach#{achievement_id}"


def _counter_from(values: Mapping[str, Any]) -> Counter:
    return Counter(
        str(values["counter"]),
        int(values.get("awards", 0)),
        int(values["watch_at"]) if "watch_at" in values else None,
    )


def counter_adds(table_prefix: str, user_id: str, counters: Iterable[str], step: int = 1) -> list[dict[str, Any]]:
    """Transaction items: one more award on each counter (`step` -1: one less, for a revoke)."""
    return [
        {
            "Update": {
                "TableName": table_prefix + ACTIVITY_COUNTS.name,
                "Key": {"user_id": attr(user_id), "counter": attr(counter)},
                "UpdateExpression": "ADD awards :one",
                "ExpressionAttributeValues": {":one": attr(step)},
            }
        }
        for counter in counters
    ]


def cap_take(table_prefix: str, user_id: str, activity_id: str, period: str, max_awards: int) -> dict[str, Any]:
    """A transaction item: one more of the user's awards of the activity in
    `period` (common.periods.period_key), only while below `max_awards`: of
    any number of concurrent awards, exactly the cap's go through. An item of
    its own per period (`cap#<activity>#<period>`); a revoke gives none back."""
    return {
        "Update": {
            "TableName": table_prefix + ACTIVITY_COUNTS.name,
            "Key": {"user_id": attr(user_id), "counter": attr(f"cap#{activity_id}#{period}")},
            "UpdateExpression": "ADD awards :one",
            "ConditionExpression": "attribute_not_exists(awards) OR awards < :max",
            "ExpressionAttributeValues": {":one": attr(1), ":max": attr(max_awards)},
        }
    }


def count_checks(table_prefix: str, user_id: str, needed: Iterable[ActivityCount]) -> list[dict[str, Any]]:
    """Transaction items that hold only while the user has the counts."""
    return [
        {
            "ConditionCheck": {
                "TableName": table_prefix + ACTIVITY_COUNTS.name,
                "Key": {"user_id": attr(user_id), "counter": attr(count.counter)},
                "ConditionExpression": "awards >= :n",  # false when the item is missing
                "ExpressionAttributeValues": {":n": attr(count.count)},
            }
        }
        for count in needed
    ]


async def read_progress_and_counters(
    client: DynamoDBClient, table_prefix: str, user_id: str, counters: Iterable[str]
) -> tuple[ProgressRecord, dict[str, Counter]]:
    """The progress item and these counters in one strongly consistent call
    (the progress item alone, a GetItem, when there are none)."""
    wanted = list(dict.fromkeys(counters))
    if not wanted:
        return await read_progress(client, table_prefix, user_id), {}
    progress_table, counts_table = table_prefix + USER_PROGRESS.name, table_prefix + ACTIVITY_COUNTS.name
    found = await batch_get_consistent(
        client,
        {
            progress_table: [{"user_id": user_id}],
            counts_table: [{"user_id": user_id, "counter": c} for c in wanted],
        },
    )
    progress = found[progress_table]
    record = ProgressRecord.from_attributes(user_id, progress[0] if progress else None)
    return record, {str(v["counter"]): _counter_from(v) for v in found[counts_table]}


async def read_counts(
    client: DynamoDBClient, table_prefix: str, user_id: str, counters: Iterable[str]
) -> dict[str, int]:
    """These counters' awards (missing ones are 0)."""
    _, found = await read_progress_and_counters(client, table_prefix, user_id, counters)
    return {c: found[c].awards if c in found else 0 for c in counters}


async def read_all_counters(client: DynamoDBClient, table_prefix: str, user_id: str) -> dict[str, Counter]:
    """Every counter of the user: one Query page per 1 MB (a few hundred counters)."""
    params: dict[str, Any] = {
        "TableName": table_prefix + ACTIVITY_COUNTS.name,
        "KeyConditionExpression": "user_id = :u",
        "ExpressionAttributeValues": {":u": attr(user_id)},
        "ConsistentRead": True,
    }
    counters: dict[str, Counter] = {}
    while True:
        page = await client.call("Query", params)
        for item in page["Items"]:
            counter = _counter_from(from_item(item))
            counters[counter.counter] = counter
        if not page.get("LastEvaluatedKey"):
            return counters
        params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


# A transaction holds at most 100 items: the progress item and 99 counters.
MAX_WATCHED_COUNTERS = 99


def watch_writes(
    table_prefix: str,
    user_id: str,
    watches: Watches,
    unwatched: Iterable[str],
    start_level: int,
) -> list[dict[str, Any]] | None:
    """The transaction that leaves `watches` on the user: each only while its
    requirement is still unmet, so that an award that met one meanwhile makes
    the write fail, and the evaluation runs again. Counters in `unwatched`
    lose an earlier watch. None when the watches do not fit one transaction:
    the user is then evaluated at every award."""
    stale = [c for c in dict.fromkeys(unwatched) if c not in watches.counters]
    if len(watches.counters) + len(stale) > MAX_WATCHED_COUNTERS:
        return None
    counts_table = table_prefix + ACTIVITY_COUNTS.name
    items: list[dict[str, Any]] = [
        {
            "Update": {
                "TableName": counts_table,
                "Key": {"user_id": attr(user_id), "counter": attr(counter)},
                "UpdateExpression": "SET watch_at = :t",
                "ConditionExpression": "attribute_not_exists(awards) OR awards < :t",
                "ExpressionAttributeValues": {":t": attr(at)},
            }
        }
        for counter, at in watches.counters.items()
    ]
    items.extend(
        {
            "Update": {
                "TableName": counts_table,
                "Key": {"user_id": attr(user_id), "counter": attr(counter)},
                "UpdateExpression": "REMOVE watch_at",
                # No item is created for it (a watch alone may have created the item: it has no awards).
                "ConditionExpression": "attribute_exists(#counter)",
                "ExpressionAttributeNames": {"#counter": "counter"},
            }
        }
        for counter in stale
    )
    sets, removes, conditions = ["auto_version = :f"], [], []
    values: dict[str, Any] = {":f": attr(watches.fingerprint)}
    if watches.xp_at is None:
        removes.append("watch_xp_at")
    else:
        sets.append("watch_xp_at = :x")
        conditions.append("(attribute_not_exists(total_xp) OR total_xp < :x)")
        values[":x"] = attr(watches.xp_at)
    if watches.level_at is None:
        removes.append("watch_level_at")
    else:
        sets.append("watch_level_at = :l")
        # A user with no stored level is at the start level, below the watched one.
        no_level = "attribute_not_exists(#level) OR " if start_level < watches.level_at else ""
        conditions.append(f"({no_level}#level < :l)")
        values[":l"] = attr(watches.level_at)
    update: dict[str, Any] = {
        "TableName": table_prefix + USER_PROGRESS.name,
        "Key": {"user_id": attr(user_id)},
        "UpdateExpression": "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else ""),
        "ExpressionAttributeValues": values,
    }
    if conditions:
        update["ConditionExpression"] = " AND ".join(conditions)
        if watches.level_at is not None:
            update["ExpressionAttributeNames"] = {"#level": "level"}
    items.append({"Update": update})
    return items


async def forget_auto_watches(client: DynamoDBClient, table_prefix: str, user_id: str) -> None:
    """Drops the fingerprint of the user's last evaluation, so that any award
    asks for one again (what the next evaluation's watches write back)."""
    await client.call(
        "UpdateItem",
        {
            "TableName": table_prefix + USER_PROGRESS.name,
            "Key": {"user_id": attr(user_id)},
            "UpdateExpression": "REMOVE auto_version",  # the award that asks has just written the item
        },
    )


async def write_watches(client: DynamoDBClient, items: list[dict[str, Any]]) -> None:
    """Raises WatchOutdated when a watched requirement was met meanwhile."""
    try:
        await transact_write(client, items)
    except TransactionCancelled as cancelled:
        if any(reason.code == "ConditionalCheckFailed" for reason in cancelled.reasons):
            raise WatchOutdated() from None
        raise


# --- game-wide stats, in shards --------------------------------------------------


def stat_shard(user_id: str) -> int:
    return zlib.crc32(user_id.encode()) % STAT_SHARDS


def stat_key(stat: str, shard: int) -> str:
    return f"{stat}#{shard:02d}"


def stat_of_key(key: str) -> tuple[str, int]:
    """(stat, shard) of a stat item's key."""
    stat, shard = key.rsplit("#", 1)
    return stat, int(shard)


def stat_add(table_prefix: str, stat: str, user_id: str) -> dict[str, Any]:
    """A transaction item: one more on the stat, in the shard the user hashes to."""
    return {
        "Update": {
            "TableName": table_prefix + ACHIEVEMENT_STATS.name,
            "Key": {"stat_shard": attr(stat_key(stat, stat_shard(user_id)))},
            "UpdateExpression": "ADD #n :one",
            "ExpressionAttributeNames": {"#n": "total"},
            "ExpressionAttributeValues": {":one": attr(1)},
        }
    }


async def count_player_once(client: DynamoDBClient, table_prefix: str, user_id: str) -> bool:
    """Counts the user among the players, once (the progress item's mark and
    the stat move in one transaction); False when already counted."""
    try:
        await transact_write(
            client,
            [
                {
                    "Update": {
                        "TableName": table_prefix + USER_PROGRESS.name,
                        "Key": {"user_id": attr(user_id)},
                        "UpdateExpression": "SET player_counted = :t",
                        "ConditionExpression": "attribute_exists(total_xp) AND attribute_not_exists(player_counted)",
                        "ExpressionAttributeValues": {":t": attr(True)},
                    }
                },
                stat_add(table_prefix, PLAYERS_STAT, user_id),
            ],
        )
        return True
    except TransactionCancelled as cancelled:
        if cancelled.reasons and cancelled.reasons[0].code == "ConditionalCheckFailed":
            return False
        raise


async def read_stats(client: DynamoDBClient, table_prefix: str, stats: Iterable[str]) -> dict[str, int]:
    """Each stat's total over its shards (BatchGetItem, 100 keys a call)."""
    wanted = list(dict.fromkeys(stats))
    table = table_prefix + ACHIEVEMENT_STATS.name
    shards = {stat_key(stat, shard): stat for stat in wanted for shard in range(STAT_SHARDS)}
    keys = [{"stat_shard": key} for key in shards]
    totals = dict.fromkeys(wanted, 0)
    pages = await asyncio.gather(
        *(batch_get_consistent(client, {table: keys[start : start + 100]}) for start in range(0, len(keys), 100))
    )
    for found in pages:
        for values in found[table]:
            totals[shards[str(values["stat_shard"])]] += int(values.get("total", 0))
    return totals
