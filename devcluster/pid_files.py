"""Pid files that name the process they were written for, not only its number.

After a reboot or a crash a recorded pid may belong to another program, which
`make down` must never signal. A pid file therefore holds the pid, the
process's start time and its command line, and the pid counts as the cluster's
process only while all three still match. A file that does not match is stale:
it is removed, with a message, and nothing is signalled.

The start time is the kernel's (ticks since boot, with the boot's id, from
/proc) on Linux, and `ps`'s elsewhere (macOS has no /proc).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    started: str
    command: tuple[str, ...]

    def same_process(self, other: ProcessIdentity) -> bool:
        # Joined, because `ps` gives the command line as one string.
        return (self.pid, self.started, " ".join(self.command)) == (other.pid, other.started, " ".join(other.command))


def identity_of(pid: int) -> ProcessIdentity | None:
    """The running process `pid`, or None when there is none (an exited process
    not yet reaped, a zombie, counts as none)."""
    if pid <= 0:
        return None
    if PROC.is_dir():
        return _identity_from_proc(pid)
    return _identity_from_ps(pid)


def _start_from_proc(pid: int) -> tuple[str, str] | None:
    """The process's state and its start: the boot's id and the tick since boot it was forked at."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        boot_id = (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The fields after the command name, which may itself hold spaces and parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], f"{boot_id}:{fields[19]}"  # stat fields 3 and 22 (proc(5))


def _identity_from_proc(pid: int) -> ProcessIdentity | None:
    start = _start_from_proc(pid)
    try:
        command = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if start is None or start[0] in ("Z", "X") or not command:
        return None
    arguments = tuple(a.decode(errors="replace") for a in command.rstrip(b"\0").split(b"\0"))
    return ProcessIdentity(pid, start[1], arguments)


def _ps(pid: int, column: str) -> str:
    done = subprocess.run(
        ["ps", "-ww", "-o", f"{column}=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def _identity_from_ps(pid: int) -> ProcessIdentity | None:
    started, state, command = _ps(pid, "lstart"), _ps(pid, "state"), _ps(pid, "command")
    if not started or not command or state.startswith("Z"):
        return None
    return ProcessIdentity(pid, started, (command,))


def write_pid_file(path: Path, pid: int, command: list[str]) -> None:
    """Records the process `pid`, just started with `command`. The command is
    the caller's: right after the start, the kernel may not show the new
    command line yet, while the start time is there from the fork on."""
    if PROC.is_dir():
        start = _start_from_proc(pid)
        started = start[1] if start else ""
    else:
        started = _ps(pid, "lstart")
    if not started:
        path.unlink(missing_ok=True)  # it exited already: nothing to record
        return
    path.write_text(json.dumps({"pid": pid, "started": started, "command": command}) + "\n")


def read_pid_file(path: Path, expected_command: list[str]) -> ProcessIdentity | None:
    """The process `path` records, while that very process runs. A stale file
    is removed with a message on stderr. A file of an earlier devcluster (the
    pid alone) is taken as ours only when the pid runs `expected_command`."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        if text.isdigit():
            pid = int(text)
            current = identity_of(pid)
            recorded = ProcessIdentity(pid, current.started if current else "", tuple(expected_command))
        else:
            values = json.loads(text)
            recorded = ProcessIdentity(int(values["pid"]), str(values["started"]), tuple(values["command"]))
            current = identity_of(recorded.pid)
    except (ValueError, KeyError, TypeError):
        print(f"{path}: unreadable pid file ({text[:60]!r}); removed it, signalled nothing", file=sys.stderr)
        path.unlink(missing_ok=True)
        return None
    if current is not None and current.same_process(recorded):
        return current
    now = "no process" if current is None else f"another process: {' '.join(current.command)[:120]}"
    print(
        f"{path}: stale pid file: pid {recorded.pid} is {now}; removed it, signalled nothing",
        file=sys.stderr,
    )
    path.unlink(missing_ok=True)
    return None


def still_running(process: ProcessIdentity) -> bool:
    current = identity_of(process.pid)
    return current is not None and current.same_process(process)
