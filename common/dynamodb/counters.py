"""Awards counted per activity and category (the activity_counts table), the
watches left on them and on the progress item (common.auto_unlock), and the
game-wide stats kept in shards (achievement_stats): the items XP and
Achievements both write."""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from common.auto_unlock import ActivityCount, Counter, Watches, WatchOutdated
from common.dynamodb.client import ConditionalCheckFailed, DynamoDBClient, DynamoDBError, TransactionCancelled
from common.dynamodb.items import attr, from_item
from common.dynamodb.reads import read_progress
from common.dynamodb.tables import ACHIEVEMENT_STATS, ACTIVITY_COUNTS, STAT_SHARDS, USER_PROGRESS
from common.dynamodb.transactions import batch_get_consistent, retry_on_transaction_conflict, transact_write
from common.errors import DomainError
from common.models import ProgressRecord
from common.streaks import Streak, StreakRecord, is_streak_counter, streak_counter

log = logging.getLogger("rewards.counters")

PLAYERS_STAT = "players"


def unlocks_stat(achievement_id: str) -> str:
    return f"ach#{achievement_id}"


def _counter_from(values: Mapping[str, Any]) -> Counter:
    counter = str(values["counter"])
    watch_at = int(values["watch_at"]) if "watch_at" in values else None
    if is_streak_counter(counter):  # a streak's run: its best counts, and the watch checks the item is as read
        record = streak_record_from(values)
        return Counter(counter, record.run().best, watch_at, streak_mark(record))
    return Counter(counter, int(values.get("awards", 0)), watch_at)


# --- streaks (common.streaks) ------------------------------------------------------


def streak_record_from(values: Mapping[str, Any]) -> StreakRecord:
    return StreakRecord(
        period=str(values.get("period", "")),
        touched=frozenset(str(d) for d in values.get("touched", ())),
        base_last=str(values.get("base_last", "")),
        base_current=int(values.get("base_current", 0)),
        base_best=int(values.get("base_best", 0)),
    )


def streak_touches(table_prefix: str, user_id: str, touched: Iterable[tuple[Streak, str]]) -> list[dict[str, Any]]:
    """Transaction items: each streak's period (its first local day, ISO)
    added to the user's run. A set ADD: a period is in it once however many
    awards, retries or races add it."""
    return [
        {
            "Update": {
                "TableName": table_prefix + ACTIVITY_COUNTS.name,
                "Key": {"user_id": attr(user_id), "counter": attr(streak_counter(streak.streak_id))},
                "UpdateExpression": "ADD touched :d SET #period = :p",
                "ExpressionAttributeNames": {"#period": "period"},
                "ExpressionAttributeValues": {":d": {"SS": [first_day]}, ":p": attr(streak.period)},
            }
        }
        for streak, first_day in touched
    ]


def streak_mark(record: StreakRecord) -> tuple[int, str]:
    """What tells a run's item changed: the number of periods in its set and
    the summary's last period (periods only get added, and a fold moves the summary)."""
    return len(record.touched), record.base_last


def _streak_unchanged(mark: tuple[int, str]) -> tuple[str, dict[str, Any]]:
    """A condition that holds while a run's item is as read (its streak_mark)."""
    size, base_last = mark
    parts = ["size(touched) = :size" if size else "attribute_not_exists(touched)"]
    values: dict[str, Any] = {":size": attr(size)} if size else {}
    if base_last:
        parts.append("base_last = :base")
        values[":base"] = attr(base_last)
    else:
        parts.append("attribute_not_exists(base_last)")
    return " AND ".join(parts), values


async def fold_streak(
    client: DynamoDBClient, table_prefix: str, user_id: str, counter: str, record: StreakRecord
) -> None:
    """Folds a run's older periods (StreakRecord.foldable) into its summary, so
    that the item stays small: only while the item is as read (else another
    fold won, or an award added a period: a later read folds). Periods added
    meanwhile stay in the set. Best effort: the award it follows is recorded,
    and a fold left undone changes no run, so a failure is logged, not raised."""
    folded, run = record.foldable(), record.folded()
    if not folded or run.last is None:
        return
    condition, condition_values = _streak_unchanged(streak_mark(record))
    params = {
        "TableName": table_prefix + ACTIVITY_COUNTS.name,
        "Key": {"user_id": attr(user_id), "counter": attr(counter)},
        "UpdateExpression": "SET base_last = :last, base_current = :current, base_best = :best DELETE touched :folded",
        "ConditionExpression": condition,
        "ExpressionAttributeValues": condition_values
        | {
            ":last": attr(run.last.isoformat()),
            ":current": attr(run.current),
            ":best": attr(run.best),
            ":folded": {"SS": sorted(folded)},
        },
    }
    try:
        await retry_on_transaction_conflict(lambda: client.call("UpdateItem", params))
    except ConditionalCheckFailed:
        pass
    except (DomainError, DynamoDBError, OSError) as error:
        log.warning("streak fold left to a later read", extra={"fields": {"user_id": user_id, "error": repr(error)}})


async def read_streak_records(client: DynamoDBClient, table_prefix: str, user_id: str) -> dict[str, StreakRecord]:
    """Every run of the user, by streak id (one Query page: a few hundred runs)."""
    params: dict[str, Any] = {
        "TableName": table_prefix + ACTIVITY_COUNTS.name,
        "KeyConditionExpression": "user_id = :u AND begins_with(#c, :s)",
        "ExpressionAttributeNames": {"#c": "counter"},
        "ExpressionAttributeValues": {":u": attr(user_id), ":s": attr(streak_counter(""))},
        "ConsistentRead": True,
    }
    runs: dict[str, StreakRecord] = {}
    while True:
        page = await client.call("Query", params)
        for item in page["Items"]:
            values = from_item(item)
            if "period" in values:  # not an item a watch alone made
                runs[str(values["counter"])[len(streak_counter("")) :]] = streak_record_from(values)
        if not page.get("LastEvaluatedKey"):
            return runs
        params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


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
    client: DynamoDBClient, table_prefix: str, user_id: str, counters: Iterable[str], *, fold_streaks: bool = False
) -> tuple[ProgressRecord, dict[str, Counter]]:
    """The progress item and these counters in one strongly consistent call
    (the progress item alone, a GetItem, when there are none); with
    `fold_streaks`, the streak runs among them that grew long are folded
    (one more call each, once every few periods)."""
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
    if fold_streaks:
        runs = [
            (str(v["counter"]), streak_record_from(v)) for v in found[counts_table] if is_streak_counter(v["counter"])
        ]
        await asyncio.gather(
            *(fold_streak(client, table_prefix, user_id, c, run) for c, run in runs if run.needs_fold())
        )
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
    streak_marks: Mapping[str, tuple[int, str]] | None = None,
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
    items: list[dict[str, Any]] = []
    for counter, at in watches.counters.items():
        watch: dict[str, Any] = {
            "TableName": counts_table,
            "Key": {"user_id": attr(user_id), "counter": attr(counter)},
            "UpdateExpression": "SET watch_at = :t",
            "ConditionExpression": "attribute_not_exists(awards) OR awards < :t",
            "ExpressionAttributeValues": {":t": attr(at)},
        }
        if is_streak_counter(counter):  # a run's best is derived: the item must be as the evaluation read it
            condition, unchanged = _streak_unchanged((streak_marks or {}).get(counter, (0, "")))
            watch.update(ConditionExpression=condition, ExpressionAttributeValues=unchanged | {":t": attr(at)})
        items.append({"Update": watch})
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
