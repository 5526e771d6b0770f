"""`rewardsctl achievements backfill`: every player of a stage evaluated now
against the auto-unlock achievements, for players who qualified before an
achievement existed (or before it was made easier) and may not play again.

The players are the items of user_progress, read by a parallel Scan (one
thread per segment, the user ids only); for each, the Achievements service's
UnlockDueAchievements unlocks what is due, exactly once, under the run's
trigger id (`backfill#<run id>`). Calls are paced by one token bucket that all
segments share.

A run is resumable: its checkpoint file records, per segment, the key of the
last page whose users were all evaluated and whether the segment is done, with
the run id; it is written (a temporary file, then os.replace) at the start and
after every page, and removed when the run ends. A run started again with the
same checkpoint goes on from those keys with the same trigger id, so the users
of a page it had begun are evaluated again and the service lists their unlocks
again (a repeat with the same trigger id lists, never unlocks twice): the counts
of the finished run are those of one uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from common.config import Settings
from common.dynamodb import USER_PROGRESS

CHECKPOINT_FORMAT = "rewardsctl-backfill-checkpoint"
CHECKPOINT_VERSION = 1
TRIGGER_PREFIX = "backfill#"
DEFAULT_SEGMENTS = 4
DEFAULT_PAGE_SIZE = 100

# (user id) -> (achievements unlocked under the run's trigger id, achievements due: dry run)
Evaluate = Callable[[str], tuple[Sequence[str], Sequence[str]]]
# ItemCountDisplay: (table, done, total, finished, note)
Progress = Callable[[str, int, int | None, bool, str], None]

# A call that may be repeated (the trigger id makes a repeat list, not unlock again).
# RESOURCE_EXHAUSTED: a service shedding load (REWARDS_MAX_CONCURRENT_RPCS): back off, as for the others.
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
_CALL_ATTEMPTS = 5


class CheckpointError(Exception):
    """The checkpoint cannot be used for this run (damaged, or of another run);
    nothing was evaluated."""


class EvaluationFailed(Exception):
    """The Achievements service refused or failed to evaluate one user (after
    the retries of a failure that may pass): the run stops there."""

    def __init__(self, user_id: str, error: grpc.RpcError) -> None:
        super().__init__(f"evaluating user {user_id!r}: {error}")
        self.user_id = user_id
        self.error = error


def players_table(table_prefix: str) -> str:
    return table_prefix + USER_PROGRESS.name


def default_checkpoint_path(settings: Settings, achievement_ids: Sequence[str]) -> Path:
    """One file per stage (endpoint or region, table prefix) and set of
    achievements, under $XDG_STATE_HOME/rewardsctl (~/.local/state/rewardsctl):
    the same command finds it again."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    where = settings.dynamodb_endpoint or f"aws:{settings.aws_region}"
    digest = hashlib.sha256("\n".join([where, settings.table_prefix, *sorted(set(achievement_ids))]).encode())
    stage = re.sub(r"[^A-Za-z0-9._-]+", "_", settings.table_prefix).strip("_.-")[:40] or "stage"
    return Path(state) / "rewardsctl" / f"backfill-{stage}-{digest.hexdigest()[:12]}.json"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- the checkpoint ---------------------------------------------------------------------


@dataclass
class SegmentState:
    """One segment of the scan: the key of its last page whose users were all
    evaluated (None: none yet), whether it is done, and the counts of those pages."""

    last_key: dict[str, Any] | None = None
    done: bool = False
    users: int = 0
    users_with_unlocks: int = 0
    unlocks: dict[str, int] = field(default_factory=dict)

    def to_json(self, segment: int) -> dict[str, Any]:
        return {
            "segment": segment,
            "last_key": self.last_key,
            "done": self.done,
            "users": self.users,
            "users_with_unlocks": self.users_with_unlocks,
            "unlocks": dict(sorted(self.unlocks.items())),
        }

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> SegmentState:
        last_key = values["last_key"]
        if last_key is not None and not isinstance(last_key, dict):
            raise ValueError("last_key must be a key or null")
        return cls(
            last_key,
            bool(values["done"]),
            int(values["users"]),
            int(values["users_with_unlocks"]),
            {str(k): int(v) for k, v in dict(values["unlocks"]).items()},
        )


@dataclass
class Checkpoint:
    run_id: str
    table_prefix: str
    achievement_ids: tuple[str, ...]  # as asked, sorted: () means every auto_unlock achievement
    segments: list[SegmentState]
    started_at: str
    updated_at: str = ""

    @classmethod
    def new(cls, table_prefix: str, achievement_ids: Sequence[str], segments: int) -> Checkpoint:
        return cls(
            uuid.uuid4().hex,
            table_prefix,
            tuple(sorted(set(achievement_ids))),
            [SegmentState() for _ in range(segments)],
            _now(),
        )

    @property
    def trigger_id(self) -> str:
        return TRIGGER_PREFIX + self.run_id

    @property
    def users(self) -> int:
        return sum(s.users for s in self.segments)

    @property
    def segments_done(self) -> int:
        return sum(s.done for s in self.segments)

    def to_json(self) -> str:
        return (
            json.dumps(
                {
                    "format": CHECKPOINT_FORMAT,
                    "format_version": CHECKPOINT_VERSION,
                    "run_id": self.run_id,
                    "trigger_id": self.trigger_id,
                    "table_prefix": self.table_prefix,
                    "achievement_ids": list(self.achievement_ids),
                    "total_segments": len(self.segments),
                    "started_at": self.started_at,
                    "updated_at": self.updated_at,
                    "segments": [s.to_json(i) for i, s in enumerate(self.segments)],
                },
                indent=2,
            )
            + "\n"
        )

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        values = json.loads(text)
        if values.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {CHECKPOINT_FORMAT} file")
        if values.get("format_version") != CHECKPOINT_VERSION:
            raise ValueError(f"format version {values.get('format_version')!r}, not {CHECKPOINT_VERSION}")
        segments = [SegmentState.from_json(s) for s in values["segments"]]
        if not segments or len(segments) != int(values["total_segments"]):
            raise ValueError("its segments do not match total_segments")
        run_id = str(values["run_id"])
        if not re.fullmatch(r"[0-9a-f]{32}", run_id):
            raise ValueError(f"run_id {run_id!r} is not a run id")
        return cls(
            run_id,
            str(values["table_prefix"]),
            tuple(str(a) for a in values["achievement_ids"]),
            segments,
            str(values["started_at"]),
            str(values.get("updated_at", "")),
        )


class CheckpointFile:
    """Where a run keeps its checkpoint: read once at the start, replaced
    whole (temporary file, fsync, os.replace) at every save."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Checkpoint | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as error:
            raise CheckpointError(f"cannot read the checkpoint {self.path}: {error.strerror or error}") from error
        try:
            return Checkpoint.from_json(text)
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"the checkpoint {self.path} is damaged ({error}): --restart starts the backfill over "
                "(what it unlocked stays unlocked, once)"
            ) from error

    def save(self, checkpoint: Checkpoint) -> None:
        checkpoint.updated_at = _now()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(checkpoint.to_json())
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def remove(self) -> None:
        """The checkpoint, and what a save cut short (a killed run) left beside it."""
        self.path.unlink(missing_ok=True)
        for left in self.path.parent.glob(self.path.name + ".*.tmp"):
            left.unlink(missing_ok=True)


def start_or_resume(
    store: CheckpointFile, table_prefix: str, achievement_ids: Sequence[str], segments: int | None, restart: bool
) -> tuple[Checkpoint, bool]:
    """The run to go on with (True) when the store holds one of this backfill,
    else a new one (False), saved at once so that a crash before its first
    page keeps its trigger id. --restart (restart) ignores an old checkpoint."""
    asked = tuple(sorted(set(achievement_ids)))
    old = None if restart else store.load()
    if old is not None:
        if (old.table_prefix, old.achievement_ids) != (table_prefix, asked):
            raise CheckpointError(
                f"the checkpoint {store.path} is of another backfill (prefix {old.table_prefix!r}, achievements "
                f"{', '.join(old.achievement_ids) or 'all auto_unlock ones'}): use another --checkpoint, or "
                "--restart to start this backfill over it"
            )
        if segments is not None and segments != len(old.segments):
            raise CheckpointError(
                f"the checkpoint {store.path} was made with --segments {len(old.segments)}: continue with that "
                "(or without --segments), or --restart to start over"
            )
        return old, True
    checkpoint = Checkpoint.new(table_prefix, asked, segments or DEFAULT_SEGMENTS)
    store.save(checkpoint)
    return checkpoint, False


# --- pacing -------------------------------------------------------------------------------


class TokenBucket:
    """`rate` takes a second, shared by every thread, in bursts of at most a
    tenth of a second's worth (at least one); rate 0 means no limit."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate / 10)
        self._tokens = 1.0
        self._clock = clock
        self._updated = clock()
        self._lock = threading.Lock()

    def take(self, stop: threading.Event) -> bool:
        """Waits for a token; False when `stop` was set meanwhile."""
        if self._rate <= 0:
            return not stop.is_set()
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return not stop.is_set()
                wait_s = (1 - self._tokens) / self._rate
            if stop.wait(wait_s):
                return False


# --- the run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackfillResult:
    checkpoint: Checkpoint
    users_before: int  # evaluated by earlier attempts of the run (from the checkpoint)
    users: int  # in all, earlier attempts included
    users_with_unlocks: int
    unlocks: dict[str, int]
    # dry run: users with anything due, and per achievement how many users it is due for
    users_due: int = 0
    due: dict[str, int] = field(default_factory=dict)

    @property
    def users_this_run(self) -> int:
        return self.users - self.users_before

    @property
    def unlock_count(self) -> int:
        return sum(self.unlocks.values())

    @property
    def due_count(self) -> int:
        return sum(self.due.values())


class _Run:
    def __init__(
        self,
        scan_client: Any,
        checkpoint: Checkpoint,
        evaluate: Evaluate,
        *,
        save: Callable[[Checkpoint], None] | None,
        page_size: int,
        rate: float,
        dry_run: bool,
        progress: Progress | None,
        stop: threading.Event,
    ) -> None:
        self._client = scan_client
        self._table = players_table(checkpoint.table_prefix)
        self._checkpoint = checkpoint
        self._evaluate = evaluate
        self._save = save
        self._page_size = page_size
        self._bucket = TokenBucket(rate)
        self._dry_run = dry_run
        self._progress = progress
        self._stop = stop
        self._lock = threading.Lock()
        self.users_before = checkpoint.users
        # Live counts, for the progress line: users evaluated (earlier attempts included), unlocks or dues.
        self._users_shown = checkpoint.users
        self._found_shown = sum(sum(s.unlocks.values()) for s in checkpoint.segments)
        self.due: dict[str, int] = {}
        self.users_due = 0

    def run(self) -> None:
        segments = self._checkpoint.segments
        with ThreadPoolExecutor(len(segments), thread_name_prefix="backfill") as pool:
            futures: list[Future[None]] = [pool.submit(self._segment, i) for i in range(len(segments))]
            # The failure that stopped the run, not one a segment met because it was stopped.
            first_failure: BaseException | None = None
            try:
                pending = set(futures)
                while pending:
                    # A timeout, so that the main thread takes a Ctrl-C while the segments run.
                    _, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                    failed = next((f.exception() for f in futures if f.done() and f.exception()), None)
                    if failed is not None and first_failure is None:
                        first_failure = failed
                        self._stop.set()
            except BaseException:
                self._stop.set()
                raise
        if first_failure is not None:
            raise first_failure
        self._show(finished=True)

    def _segment(self, segment: int) -> None:
        state = self._checkpoint.segments[segment]
        if state.done:
            return
        params: dict[str, Any] = {
            "TableName": self._table,
            "ProjectionExpression": "#u",
            "ExpressionAttributeNames": {"#u": "user_id"},
            "Segment": segment,
            "TotalSegments": len(self._checkpoint.segments),
            "Limit": self._page_size,
            "ConsistentRead": True,
        }
        if state.last_key:
            params["ExclusiveStartKey"] = state.last_key
        while not self._stop.is_set():
            page = self._client.scan(**params)
            users = with_unlocks = 0
            unlocks: dict[str, int] = {}
            for item in page.get("Items", ()):
                if not self._bucket.take(self._stop):
                    return  # stopped: this page is not recorded, the next attempt evaluates it again
                unlocked, due = _with_retries(self._evaluate, str(item["user_id"]["S"]), self._stop)
                users += 1
                with_unlocks += bool(unlocked)
                for achievement_id in unlocked:
                    unlocks[achievement_id] = unlocks.get(achievement_id, 0) + 1
                with self._lock:
                    self._users_shown += 1
                    self._found_shown += len(due) if self._dry_run else len(unlocked)
                    if due:
                        self.users_due += 1
                        for achievement_id in due:
                            self.due[achievement_id] = self.due.get(achievement_id, 0) + 1
                    self._show(finished=False)
            last_key = page.get("LastEvaluatedKey")
            with self._lock:
                state.users += users
                state.users_with_unlocks += with_unlocks
                for achievement_id, count in unlocks.items():
                    state.unlocks[achievement_id] = state.unlocks.get(achievement_id, 0) + count
                state.last_key = last_key
                state.done = last_key is None
                if self._save is not None:
                    self._save(self._checkpoint)
            if last_key is None:
                return
            params["ExclusiveStartKey"] = last_key

    def _show(self, *, finished: bool) -> None:
        if self._progress is not None:
            found = f"{self._found_shown:,} " + ("due" if self._dry_run else "unlocks")
            self._progress(USER_PROGRESS.name, self._users_shown, None, finished, found)


def _with_retries(evaluate: Evaluate, user_id: str, stop: threading.Event) -> tuple[Sequence[str], Sequence[str]]:
    """The user evaluated, again after a pause when the call's failure may pass
    (UNAVAILABLE, ABORTED, DEADLINE_EXCEEDED: safe, as a repeat under the same
    trigger id unlocks nothing twice)."""
    for attempt in range(_CALL_ATTEMPTS):
        try:
            return evaluate(user_id)
        except grpc.RpcError as error:
            if error.code() not in _RETRYABLE or attempt == _CALL_ATTEMPTS - 1 or stop.wait(min(0.25 * 2**attempt, 4)):
                raise EvaluationFailed(user_id, error) from error
    raise AssertionError("unreachable")


def run_backfill(
    scan_client: Any,
    checkpoint: Checkpoint,
    evaluate: Evaluate,
    *,
    save: Callable[[Checkpoint], None] | None,
    page_size: int = DEFAULT_PAGE_SIZE,
    rate: float = 0,
    dry_run: bool = False,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> BackfillResult:
    """Evaluates every user of user_progress the checkpoint's segments have
    left, `save`-ing the checkpoint after each page (None: never, as in a dry
    run). Raises what stopped it (a failed call, DynamoDB, KeyboardInterrupt)
    with the checkpoint as of the last page finished."""
    work = _Run(
        scan_client,
        checkpoint,
        evaluate,
        save=save,
        page_size=page_size,
        rate=rate,
        dry_run=dry_run,
        progress=progress,
        stop=stop or threading.Event(),
    )
    work.run()
    unlocks: dict[str, int] = {}
    for state in checkpoint.segments:
        for achievement_id, count in state.unlocks.items():
            unlocks[achievement_id] = unlocks.get(achievement_id, 0) + count
    return BackfillResult(
        checkpoint,
        users_before=work.users_before,
        users=checkpoint.users,
        users_with_unlocks=sum(s.users_with_unlocks for s in checkpoint.segments),
        unlocks=dict(sorted(unlocks.items())),
        users_due=work.users_due,
        due=dict(sorted(work.due.items())),
    )
