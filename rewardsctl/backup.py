"""Backups of a stage straight from DynamoDB: every table to JSON lines, and
back into a stage whose tables are empty.

A backup is a directory:

    manifest.json    written last, so a directory without it is an export that
                     did not finish: format and version, when, the source
                     prefix, and per table its file, item count and SHA-256
    <table>.jsonl    one item a line, as {"Item": {...}} in DynamoDB's typed
                     JSON ({"N": "150"}, {"S": "..."}, binary as base64), the
                     form of DynamoDB's own export to S3

Items stay in DynamoDB's typed form from scan to put, so numbers (strings of
digits there) and sets come back exactly as they were; nothing goes through
float or Decimal.

A scan of a running stage is not a snapshot: items written during the export
may or may not be in it. Export a stage that takes no writes for an exact copy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from common.dynamodb import ALL_TABLES, RETRYABLE_ERROR_CODES, TableDefinition, ensure_tables, error_code
from common.dynamodb.tables import EVENT_READERS, WEBHOOK_DELIVERIES, WEBHOOKS

# What a backup holds: the catalog and the players. Not the events service's tables: webhooks (with
# their secrets) are one stage's integrations, deliveries and the webhook reader's stream cursor are
# that stage's operational state (a cursor names shards of its own tables' streams, meaningless in
# another stage).
BACKUP_TABLES = tuple(t for t in ALL_TABLES if t not in (WEBHOOKS, WEBHOOK_DELIVERIES, EVENT_READERS))

FORMAT = "rewards-backup"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
# BatchWriteItem's limit.
BATCH_SIZE = 25
_MAX_WRITE_ATTEMPTS = 12

# (table, items done, items in all or None when not known, finished)
ProgressReport = Callable[[str, int, int | None, bool], None]


class BackupError(Exception):
    """The backup cannot be made or restored as asked; nothing more was written."""


@dataclass(frozen=True)
class TableFile:
    table: str  # the table's name without the prefix
    file: str
    items: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    created_at: str
    source_table_prefix: str
    duration_s: float
    tables: tuple[TableFile, ...]
    format_version: int = FORMAT_VERSION

    @property
    def items(self) -> int:
        return sum(t.items for t in self.tables)

    def to_json(self) -> str:
        return (
            json.dumps(
                {
                    "format": FORMAT,
                    "format_version": self.format_version,
                    "created_at": self.created_at,
                    "source_table_prefix": self.source_table_prefix,
                    "duration_s": self.duration_s,
                    "tables": [
                        {"table": t.table, "file": t.file, "items": t.items, "sha256": t.sha256} for t in self.tables
                    ],
                },
                indent=2,
            )
            + "\n"
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            values = json.loads(text)
            if values.get("format") != FORMAT:
                raise BackupError(f"{MANIFEST_FILE} is not a {FORMAT} manifest")
            if values.get("format_version") != FORMAT_VERSION:
                raise BackupError(
                    f"backup format version {values.get('format_version')!r} is not one this rewardsctl "
                    f"reads (it reads {FORMAT_VERSION})"
                )
            tables = tuple(
                TableFile(str(t["table"]), str(t["file"]), int(t["items"]), str(t["sha256"])) for t in values["tables"]
            )
            return cls(
                str(values["created_at"]), str(values["source_table_prefix"]), float(values["duration_s"]), tables
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise BackupError(f"{MANIFEST_FILE} is damaged ({error})") from error


# --- typed items as JSON ---------------------------------------------------------------


def item_to_json(item: dict[str, Any]) -> dict[str, Any]:
    """A low-level item (as the client returns it) in JSON-safe form: only
    binary values change, to base64, as in DynamoDB's own exports."""
    return {name: _value_to_json(value) for name, value in item.items()}


def _value_to_json(value: dict[str, Any]) -> dict[str, Any]:
    ((kind, content),) = value.items()
    if kind == "B":
        return {"B": base64.b64encode(content).decode("ascii")}
    if kind == "BS":
        return {"BS": [base64.b64encode(b).decode("ascii") for b in content]}
    if kind == "M":
        return {"M": item_to_json(content)}
    if kind == "L":
        return {"L": [_value_to_json(v) for v in content]}
    return value  # S, N, SS, NS, BOOL, NULL are JSON already; N stays a string of digits


def item_from_json(item: dict[str, Any]) -> dict[str, Any]:
    return {name: _value_from_json(value) for name, value in item.items()}


def _value_from_json(value: dict[str, Any]) -> dict[str, Any]:
    ((kind, content),) = value.items()
    if kind == "B":
        return {"B": base64.b64decode(content)}
    if kind == "BS":
        return {"BS": [base64.b64decode(b) for b in content]}
    if kind == "M":
        return {"M": item_from_json(content)}
    if kind == "L":
        return {"L": [_value_from_json(v) for v in content]}
    return value


# --- export --------------------------------------------------------------------------------


def export_stage(
    client: Any,
    table_prefix: str,
    directory: Path,
    report: ProgressReport,
    tables: tuple[TableDefinition, ...] = BACKUP_TABLES,
) -> Manifest:
    """Scans every table (strongly consistent, page by page) into `directory`,
    which must be new or empty, and writes the manifest last."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BackupError(f"{directory} is not an empty directory: export into a new one, so no backup is overwritten")
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    created_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    written = tuple(_export_table(client, table_prefix + table.name, table.name, directory, report) for table in tables)
    manifest = Manifest(created_at, table_prefix, round(time.monotonic() - started, 3), written)
    _write_atomically(directory / MANIFEST_FILE, manifest.to_json().encode())
    return manifest


def _export_table(client: Any, table_name: str, name: str, directory: Path, report: ProgressReport) -> TableFile:
    file_name = f"{name}.jsonl"
    partial = directory / (file_name + ".partial")
    digest = hashlib.sha256()
    count = 0
    report(name, 0, None, False)
    try:
        with partial.open("wb") as out:
            for page in client.get_paginator("scan").paginate(TableName=table_name, ConsistentRead=True):
                for item in page["Items"]:
                    line = (
                        json.dumps(
                            {"Item": item_to_json(item)}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
                        )
                        + "\n"
                    ).encode("utf-8")
                    out.write(line)
                    digest.update(line)
                    count += 1
                report(name, count, None, False)
            out.flush()
            os.fsync(out.fileno())
    except ClientError as error:
        if error_code(error) == "ResourceNotFoundException":
            raise BackupError(f"table {table_name} does not exist: is the table prefix right?") from error
        raise
    partial.rename(directory / file_name)
    report(name, count, None, True)
    return TableFile(name, file_name, count, digest.hexdigest())


def _write_atomically(path: Path, content: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())
    partial.rename(path)


# --- import --------------------------------------------------------------------------------


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise BackupError(f"{path} is missing: {directory} is not a backup, or its export did not finish")
    return Manifest.from_json(path.read_text(encoding="utf-8"))


def verify_backup(directory: Path, manifest: Manifest, tables: tuple[TableDefinition, ...] = BACKUP_TABLES) -> None:
    """Every file is there, whole and unchanged, and names a table this version
    defines; checked before anything is written."""
    known = {t.name for t in tables}
    for table_file in manifest.tables:
        if table_file.table not in known:
            raise BackupError(f"the backup holds table {table_file.table!r}, which this version does not define")
        path = directory / table_file.file
        if path.parent != directory or not path.is_file():
            raise BackupError(f"{path} is missing")
        digest = hashlib.sha256()
        lines = 0
        with path.open("rb") as stream:
            for line in stream:
                digest.update(line)
                lines += 1
        if lines != table_file.items or digest.hexdigest() != table_file.sha256:
            raise BackupError(
                f"{path} is not the file the export wrote ({lines} items, manifest says {table_file.items}; "
                "or its checksum differs)"
            )


def non_empty_tables(client: Any, table_prefix: str, tables: tuple[TableDefinition, ...] = BACKUP_TABLES) -> list[str]:
    found = []
    for table in tables:
        response = client.scan(TableName=table_prefix + table.name, Limit=1, ConsistentRead=True)
        if response.get("Items"):
            found.append(table_prefix + table.name)
    return found


def import_stage(
    client: Any,
    table_prefix: str,
    directory: Path,
    report: ProgressReport,
    *,
    workers: int = 8,
    tables: tuple[TableDefinition, ...] = BACKUP_TABLES,
    sleep: Callable[[float], None] = time.sleep,
) -> Manifest:
    """Writes a backup into the stage of `table_prefix`: creates its missing
    tables, refuses unless every table is empty (an import adds to what is
    there, so into a used stage it would mix two histories), writes every item
    in batches of 25 from `workers` threads, and checks the counts at the end."""
    manifest = read_manifest(directory)
    verify_backup(directory, manifest, tables)
    ensure_tables(client, table_prefix, tables)
    occupied = non_empty_tables(client, table_prefix, tables)
    if occupied:
        raise BackupError(
            f"the target stage (table prefix {table_prefix!r}) is not empty: {', '.join(occupied)} already hold items. "
            "Import only into empty tables: choose a new REWARDS_TABLE_PREFIX, or delete that stage's tables first"
        )
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backup-import") as pool:
        for table_file in manifest.tables:
            _import_table(
                client,
                pool,
                workers,
                table_prefix + table_file.table,
                table_file,
                directory / table_file.file,
                report,
                sleep,
            )
    for table_file in manifest.tables:
        stored = count_items(client, table_prefix + table_file.table)
        if stored != table_file.items:
            raise BackupError(
                f"{table_prefix + table_file.table} holds {stored} items after the import, "
                f"the backup {table_file.items}: was something writing to the stage?"
            )
    return manifest


def _import_table(
    client: Any,
    pool: ThreadPoolExecutor,
    workers: int,
    table_name: str,
    table_file: TableFile,
    path: Path,
    report: ProgressReport,
    sleep: Callable[[float], None],
) -> None:
    done = 0
    report(table_file.table, 0, table_file.items, False)
    in_flight: set[Future[int]] = set()
    try:
        for batch in _batches(path):
            in_flight.add(pool.submit(write_batch, client, table_name, batch, sleep))
            # A bounded queue: the file is read as fast as batches are written, not into memory.
            if len(in_flight) >= 2 * workers:
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                done += sum(f.result() for f in finished)
                report(table_file.table, done, table_file.items, False)
        while in_flight:
            finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            done += sum(f.result() for f in finished)
            report(table_file.table, done, table_file.items, False)
    except BaseException:
        for future in in_flight:
            future.cancel()
        raise
    report(table_file.table, done, table_file.items, True)


def _batches(path: Path) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    with path.open("rb") as stream:
        for line in stream:
            batch.append(item_from_json(json.loads(line)["Item"]))
            if len(batch) == BATCH_SIZE:
                yield batch
                batch = []
    if batch:
        yield batch


def write_batch(
    client: Any, table_name: str, items: list[dict[str, Any]], sleep: Callable[[float], None] = time.sleep
) -> int:
    """Puts up to 25 items with BatchWriteItem, sending again what DynamoDB
    leaves unprocessed (throttling) after a jittered, growing pause. Returns
    how many items were written."""
    pending = [{"PutRequest": {"Item": item}} for item in items]
    for attempt in range(_MAX_WRITE_ATTEMPTS):
        try:
            response = client.batch_write_item(RequestItems={table_name: pending})
            pending = response.get("UnprocessedItems", {}).get(table_name, [])
        except ClientError as error:
            if error_code(error) not in RETRYABLE_ERROR_CODES:
                raise
        if not pending:
            return len(items)
        sleep(min(5.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
    raise BackupError(
        f"DynamoDB left {len(pending)} items of {table_name} unwritten after {_MAX_WRITE_ATTEMPTS} attempts "
        "(throttling): the import is incomplete"
    )


def count_items(client: Any, table_name: str) -> int:
    count = 0
    for page in client.get_paginator("scan").paginate(TableName=table_name, Select="COUNT", ConsistentRead=True):
        count += page["Count"]
    return count
