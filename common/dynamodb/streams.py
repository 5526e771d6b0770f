"""Reading DynamoDB Streams: the lean client for the Streams API, and a
follower of every shard of some tables' streams, from a saved position or
from now, that follows closed shards into their children.

A position says, per shard ("<table>/<shard id>"), where a reader stands:
a sequence number (after that record), "" (from the shard's first record),
or "@<unix ms>" (no record seen yet, reading since then: on a restart the
shard is read from its start, keeping the records whose change happened from
then on, by the follower's `moment_of`). Shards missing from a
position are either ancestors of one in it (read already) or came later (read
from their start once their parent is read to its end, which keeps each
item's records in order)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiodynamo.credentials import Key
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from yarl import URL

from common.config import Settings
from common.dynamodb.client import Boto3ChainCredentials, DynamoDBClient, DynamoDBError
from common.dynamodb.items import from_item
from common.errors import InvalidField, OutOfRange

log = logging.getLogger("rewards.streams")

_TARGET = "DynamoDBStreams_20120810"
_CURSOR_VERSION = 1
# A cursor's JSON: about 60 bytes a shard, and a stream has a handful of open shards.
_MAX_CURSOR_BYTES = 1024 * 1024
# What a cursor may name, as the Streams API spells it: "<table>/<shard id>" (shard ids are 28 to 65
# characters), and a sequence number (up to 40 digits), "" or "@<unix ms>". Anything else is no
# cursor of ours, refused before DynamoDB would refuse it (and a number DynamoDB refuses, after).
_SHARD_KEY = re.compile(r"[a-z_]{1,64}/[A-Za-z0-9_.-]{1,65}", re.ASCII)
_POSITION = re.compile(r"|[0-9]{1,40}|@[0-9]{1,15}", re.ASCII)


class DynamoDBStreamsClient(DynamoDBClient):
    """The services' lean client (retries, timeouts, metrics) for the
    DynamoDB Streams API. Signed by botocore's SigV4, since aiodynamo's signer
    only knows DynamoDB's own target; Streams signs as "dynamodb"."""

    def __init__(self, settings: Settings, credentials: Boto3ChainCredentials | None = None) -> None:
        super().__init__(settings, credentials)
        self._streams_url = self._endpoint or URL(f"https://streams.dynamodb.{settings.aws_region}.amazonaws.com/")

    def _signed(self, key: Key, action: str, payload: dict[str, Any]) -> tuple[URL, dict[str, str], bytes]:
        body = json.dumps(payload, separators=(",", ":")).encode()
        request = AWSRequest(
            method="POST",
            url=str(self._streams_url),
            data=body,
            headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": f"{_TARGET}.{action}"},
        )
        SigV4Auth(Credentials(key.id, key.secret, key.token), "dynamodb", self._region).add_auth(request)
        return self._streams_url, dict(request.headers.items()), body


class CursorExpired(OutOfRange):
    def __init__(self, detail: str) -> None:
        super().__init__(
            f"cursor is older than the streams' retention ({detail}): its events are gone; "
            "watch from now (an empty cursor)"
        )


Positions = dict[str, str]


def encode_cursor(positions: Mapping[str, str]) -> str:
    raw = json.dumps({"v": _CURSOR_VERSION, "p": positions}, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw)).decode().rstrip("=")


def decode_cursor(cursor: str) -> Positions:
    """The positions in a cursor this service issued; InvalidField otherwise."""
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)), _MAX_CURSOR_BYTES)
        if inflater.unconsumed_tail:  # far larger than any cursor this service issues
            raise ValueError("cursor too large")
        values = json.loads(raw)
        positions = values["p"]
        if values.get("v") != _CURSOR_VERSION or not isinstance(positions, dict) or len(positions) > 10_000:
            raise ValueError("unexpected cursor")
        for shard, position in positions.items():
            if not isinstance(shard, str) or not _SHARD_KEY.fullmatch(shard) or not isinstance(position, str):
                raise ValueError("unexpected shard")
            if not _POSITION.fullmatch(position):
                raise ValueError("unexpected position")
        return dict(positions)
    except (ValueError, TypeError, KeyError, zlib.error, RecursionError) as error:
        raise InvalidField("cursor", "is not a cursor this service issued") from error


def is_after(sequence: str, position: str) -> bool:
    """Whether a record of a shard comes after a position in that shard."""
    if position.isdigit():
        return int(sequence) > int(position)
    return True


@dataclass(frozen=True)
class StreamRecord:
    table: str  # the table's name without the prefix ("user_progress")
    shard: str  # "<table>/<shard id>"
    sequence: str
    event_name: str  # INSERT, MODIFY or REMOVE
    new_image: dict[str, Any]
    old_image: dict[str, Any] | None
    approximate_ms: int


@dataclass
class Round:
    """What one pass over the active shards read, each shard's records in
    order; then the shards it read to their end and the ones it started."""

    records: list[StreamRecord] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    # Shards read to their newest record and found with nothing new (at that moment, up to date).
    idle: list[str] = field(default_factory=list)
    started: Positions = field(default_factory=dict)


def apply_round_shape(positions: Positions, round_: Round) -> None:
    """After a round's records: finished shards leave the position (their
    children, which start from their first record, stand for them)."""
    for shard in round_.finished:
        positions.pop(shard, None)
    for shard, start in round_.started.items():
        positions.setdefault(shard, start)


@dataclass
class _Shard:
    key: str
    table: str
    arn: str
    shard_id: str
    parent: str  # the parent's key, "" for none
    read_from: str  # a position value: where reading (re)starts
    iterator: str | None = None
    state: str = "waiting"  # waiting (for its parent to end), active, done
    since_ms: int = 0  # "@ms" starts: records before this second are skipped
    caught_up: bool = False  # the last GetRecords answered no record at all


class StreamFollower:
    """Reads every shard of `tables`' streams ({name: full table name}). Not
    safe for concurrent use: one task calls start() then read_round()."""

    def __init__(
        self,
        dynamodb: DynamoDBClient,
        streams: DynamoDBStreamsClient,
        tables: Mapping[str, str],
        *,
        rediscover_s: float = 10.0,
        moment_of: Callable[[StreamRecord], int] | None = None,
    ) -> None:
        self._dynamodb = dynamodb
        self._streams = streams
        self._tables = dict(tables)
        self._rediscover_s = rediscover_s
        # When a record's change happened (unix ms), for "@ms" positions: by default its
        # ApproximateCreationDateTime, which is rounded (to the second on AWS, the minute on DynamoDB Local).
        self._moment_of = moment_of or (lambda record: record.approximate_ms)
        self._shards: dict[str, _Shard] = {}
        self._discovered_at = 0.0
        self._arns: dict[str, str] = {}

    async def start(self, positions: Positions | None) -> Positions:
        """Opens every shard: from `positions`, or (None) from now. Returns
        the position it starts from. Records written after this returns are
        read (it is live). CursorExpired when a position is past retention."""
        now_ms = int(time.time() * 1000)
        described: list[tuple[str, str, list[dict[str, Any]]]] = []
        for table, full_name in self._tables.items():
            answer = await self._dynamodb.call("DescribeTable", {"TableName": full_name})
            arn = answer["Table"].get("LatestStreamArn")
            if not arn:
                raise RuntimeError(f"table {full_name} has no stream: run ensure_tables")
            self._arns[table] = arn
            described.append((table, arn, await self._describe(arn)))
        start: Positions = {}
        if positions is None:
            for table, arn, shards in described:
                for shard in shards:
                    entry = self._entry(table, arn, shard)
                    if "EndingSequenceNumber" in shard.get("SequenceNumberRange", {}):
                        entry.state = "done"  # closed before now: holds nothing new
                    else:
                        entry.state, entry.read_from = "active", f"@{now_ms}"
                        entry.iterator = await self._iterator(entry, "LATEST")
                        start[entry.key] = entry.read_from
                    self._shards[entry.key] = entry
        else:
            known = {self._key(table, s["ShardId"]) for table, _, shards in described for s in shards}
            gone = [key for key in positions if key not in known and key.split("/", 1)[0] in self._tables]
            if gone:
                raise CursorExpired(f"shard {gone[0]} is no longer in its stream")
            for table, arn, shards in described:
                for shard in shards:
                    self._shards[self._key(table, shard["ShardId"])] = self._entry(table, arn, shard)
            read = self._ancestors_of(list(positions))
            for entry in self._shards.values():
                if entry.key in positions:
                    entry.read_from = positions[entry.key]
                    await self._open(entry)
                    start[entry.key] = entry.read_from
                elif entry.key in read:
                    entry.state = "done"
            for entry in self._shards.values():
                if entry.state == "waiting" and self._parent_done(entry):
                    await self._open(entry)
                    start[entry.key] = ""
        self._discovered_at = time.monotonic()
        return start

    async def read_round(self) -> Round:
        """One GetRecords per active shard (at once), up to 1,000 records each."""
        round_ = Round()
        if time.monotonic() - self._discovered_at > self._rediscover_s:
            await self._rediscover(round_)
        active = [s for s in self._shards.values() if s.state == "active"]
        answers = await asyncio.gather(*(self._get_records(s) for s in active))
        for shard, records in zip(active, answers, strict=True):
            round_.records.extend(records)
            if shard.state == "done":
                round_.finished.append(shard.key)
            elif not records and shard.caught_up:
                round_.idle.append(shard.key)
        if round_.finished:
            await self._rediscover(round_)
        return round_

    # --- shards -------------------------------------------------------------------

    @staticmethod
    def _key(table: str, shard_id: str) -> str:
        return f"{table}/{shard_id}"

    def _entry(self, table: str, arn: str, shard: dict[str, Any]) -> _Shard:
        parent = shard.get("ParentShardId") or ""
        return _Shard(
            self._key(table, shard["ShardId"]),
            table,
            arn,
            shard["ShardId"],
            self._key(table, parent) if parent else "",
            "",
        )

    def _ancestors_of(self, keys: list[str]) -> set[str]:
        ancestors: set[str] = set()
        for key in keys:
            entry = self._shards.get(key)
            while entry is not None and entry.parent and entry.parent not in ancestors:
                ancestors.add(entry.parent)
                entry = self._shards.get(entry.parent)
        return ancestors

    def _parent_done(self, entry: _Shard) -> bool:
        parent = self._shards.get(entry.parent)
        return parent is None or parent.state == "done"

    async def _describe(self, arn: str) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        payload: dict[str, Any] = {"StreamArn": arn}
        while True:
            answer = (await self._streams.call("DescribeStream", payload))["StreamDescription"]
            shards.extend(answer.get("Shards", []))
            last = answer.get("LastEvaluatedShardId")
            if not last:
                return shards
            payload = {"StreamArn": arn, "ExclusiveStartShardId": last}

    async def _rediscover(self, round_: Round) -> None:
        for table, arn in self._arns.items():
            for shard in await self._describe(arn):
                key = self._key(table, shard["ShardId"])
                if key not in self._shards:
                    self._shards[key] = self._entry(table, arn, shard)
        for entry in self._shards.values():
            if entry.state == "waiting" and self._parent_done(entry):
                await self._open(entry)
                round_.started[entry.key] = ""
        self._discovered_at = time.monotonic()

    async def _open(self, entry: _Shard) -> None:
        position = entry.read_from
        if position.isdigit():
            entry.iterator = await self._iterator(entry, "AFTER_SEQUENCE_NUMBER", position)
        else:
            entry.since_ms = int(position[1:]) if position.startswith("@") else 0
            entry.iterator = await self._iterator(entry, "TRIM_HORIZON")
        entry.state = "active"

    async def _iterator(self, entry: _Shard, kind: str, sequence: str = "") -> str:
        payload = {"StreamArn": entry.arn, "ShardId": entry.shard_id, "ShardIteratorType": kind}
        if sequence:
            payload["SequenceNumber"] = sequence
        try:
            answer = await self._streams.call("GetShardIterator", payload)
        except DynamoDBError as error:
            if error.code in ("TrimmedDataAccessException", "ResourceNotFoundException"):
                raise CursorExpired(f"shard {entry.key}: {error.code}") from error
            if error.code == "ValidationException" and sequence:  # a number its shard never issued
                raise InvalidField("cursor", "is not a cursor this service issued") from error
            raise
        return str(answer["ShardIterator"])

    async def _get_records(self, entry: _Shard) -> list[StreamRecord]:
        try:
            answer = await self._streams.call("GetRecords", {"ShardIterator": entry.iterator, "Limit": 1000})
        except DynamoDBError as error:
            if error.code == "ExpiredIteratorException":  # 15 minutes unused: open again where it stands
                await self._open(entry)
                entry.caught_up = False
                return []
            if error.code == "TrimmedDataAccessException":
                if entry.read_from.isdigit():  # what it had to read next is gone
                    raise CursorExpired(f"shard {entry.key}: {error.code}") from error
                # It had read nothing of the shard yet: its oldest record is where to start. (DynamoDB
                # Local also answers this to an iterator taken while the shard was empty.)
                await self._open(entry)
                entry.caught_up = False
                return []
            if error.retryable or error.code == "LimitExceededException":
                entry.caught_up = False
                log.warning("stream read failed", extra={"fields": {"shard": entry.key, "error": error.code}})
                return []
            raise
        records = []
        entry.caught_up = not answer.get("Records")
        for raw in answer.get("Records", []):
            data = raw["dynamodb"]
            approximate_ms = int(float(data.get("ApproximateCreationDateTime", 0)) * 1000)
            sequence = data["SequenceNumber"]
            entry.read_from = sequence
            record = StreamRecord(
                table=entry.table,
                shard=entry.key,
                sequence=sequence,
                event_name=raw.get("eventName", ""),
                new_image=from_item(data.get("NewImage", {})),
                old_image=from_item(data["OldImage"]) if "OldImage" in data else None,
                approximate_ms=approximate_ms,
            )
            if entry.since_ms and self._moment_of(record) < entry.since_ms:
                continue  # before this reader's start ("@ms" positions)
            records.append(record)
        entry.iterator = answer.get("NextShardIterator")
        if entry.iterator is None:
            entry.state = "done"
        return records
