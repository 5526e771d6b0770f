"""The local cluster's log files, kept from growing without end: `make up`
rotates each one over LOG_MAX_BYTES, keeping LOG_BACKUPS older files
(name.log.1 the newest), whether its process is stopped or still running."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3


def open_log(path: Path) -> IO[bytes]:
    """The log a process is started with. Append mode matters: after a
    rotation truncates the file under a running process, its next line goes to
    the start of the file, not after a hole."""
    return open(path, "ab")


def rotate_log(path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> bool:
    """When `path` holds max_bytes or more: name.log.N-1 becomes name.log.N (the
    oldest is dropped), the log is copied to name.log.1 and emptied in place.
    Copy-and-truncate rather than rename, so that a process still writing to
    it keeps writing to name.log (lines written during the copy are lost).
    True when it rotated."""
    try:
        if path.stat().st_size < max_bytes:
            return False
    except FileNotFoundError:
        return False
    for n in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)
    return True
