"""CPU use on this machine while a case runs: the benchmark's own processes
against everything else, so that a run disturbed by other work on a shared
machine says so."""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _busy_ticks() -> int:
    """Every CPU's non-idle time since boot (first line of /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return user + nice + system + irq + softirq + steal


def _process_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads); 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


class CpuWatch:
    """Cores used between start() and stop(): by the machine, by `pids` (the
    benchmark's processes), by all the rest, and by each of `named` (a
    process named `name`; a Python process near 1.0 is held by its GIL)."""

    def __init__(self, pids: list[int], named: dict[str, int]) -> None:
        self._pids = pids
        self._named = named
        self._started: tuple[float, int, int, dict[str, int]] = (0.0, 0, 0, {})

    def start(self) -> None:
        self._started = (
            time.monotonic(),
            _busy_ticks(),
            sum(_process_ticks(p) for p in self._pids),
            {name: _process_ticks(pid) for name, pid in self._named.items()},
        )

    def stop(self) -> dict[str, float]:
        began, busy, ours, named = self._started
        elapsed = max(time.monotonic() - began, 1e-6)

        def cores(ticks: int) -> float:
            return round(ticks / _TICKS_PER_S / elapsed, 2)

        busy_ticks = _busy_ticks() - busy
        our_ticks = sum(_process_ticks(p) for p in self._pids) - ours
        figures = {
            "total": cores(busy_ticks),
            "bench": cores(our_ticks),
            "other": cores(max(0, busy_ticks - our_ticks)),
        }
        for name, pid in self._named.items():
            figures[name] = cores(_process_ticks(pid) - named[name])
        return figures


def cpu_seconds(named: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system, all threads) each named process has used so far:
    two readings around a window give what each used in it."""
    return {name: _process_ticks(pid) / _TICKS_PER_S for name, pid in named.items()}
