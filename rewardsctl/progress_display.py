"""How far a long export, import or backfill is, on stderr, without a dependency.

On a terminal one line is redrawn in place; anywhere else (a log, CI) a line
is printed every `every_items` items or `every_s` seconds, whichever comes
first, and one when each table is done, so a log shows progress without
thousands of lines."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO


class ItemCountDisplay:
    """A backup.ProgressReport that prints: `export  xp_ledger  12,000 items`;
    with `unit` and a note: `backfill  user_progress  1,200 users, 37 unlocks`."""

    def __init__(
        self,
        stream: TextIO,
        verb: str,
        *,
        unit: str = "items",
        every_items: int = 5000,
        every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._verb = verb
        self._unit = unit
        self._every_items = every_items
        self._every_s = every_s
        self._clock = clock
        self._in_place = stream.isatty()
        self._table = ""
        self._table_started = 0.0
        self._last_shown_at = 0.0
        self._last_shown_items = 0

    def __call__(self, table: str, done: int, total: int | None, finished: bool, note: str = "") -> None:
        """`note` (such as "37 unlocks") follows the count."""
        now = self._clock()
        if table != self._table:
            self._table, self._table_started = table, now
            self._last_shown_at, self._last_shown_items = now, 0
        if finished:
            line = self._line(table, done, total, note)
            self._show(f"{line}, done in {now - self._table_started:.1f} s", final=True)
            return
        due = now - self._last_shown_at >= (0.1 if self._in_place else self._every_s) or (
            not self._in_place and done - self._last_shown_items >= self._every_items
        )
        if due and done > 0:
            self._last_shown_at, self._last_shown_items = now, done
            self._show(self._line(table, done, total, note), final=False)

    def _line(self, table: str, done: int, total: int | None, note: str = "") -> str:
        line = f"{self._verb}  {table:<18} {done:>10,} {self._unit}"
        if total:
            line += f" of {total:,} ({100 * done // total}%)"
        if note:
            line += f", {note}"
        return line

    def _show(self, line: str, *, final: bool) -> None:
        if self._in_place:
            self._stream.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
