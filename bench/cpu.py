"""CPU time a server process has used, and the time it waited for a CPU, read from /proc (all
its threads, and its children).

A target that hands work to helper processes must not look cheaper than one that does it in
threads, so live descendants are counted too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return text[text.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and int(fields[1]) == pid:  # fields[1] is the parent PID
            found.append(int(entry.name))
    return found


def _process_clock(pid: int) -> int:
    """The kernel's CPU-time clock of process ``pid``, all its threads, live or ended (what
    clock_getcpuclockid(3) returns: the complement of the pid, shifted, with CPUCLOCK_SCHED)."""
    return ((~pid) << 3) | 2


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds ``pid`` has used, to the nanosecond; 0.0 once it has gone.

    /proc's utime + stime count whole clock ticks (10 ms): a short run of a cheap case could
    read 0 and leave its CPU per request, and any ratio to it, undefined. The tick count is
    the fallback where the process clock cannot be read."""
    try:
        return time.clock_gettime(_process_clock(pid))
    except OSError:
        pass
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # After the name: state, ppid, ... utime and stime are the 12th and 13th of these.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _tree_sum(pid: int, measure: Callable[[int], float]) -> float:
    """``measure`` of ``pid`` plus that of every live descendant."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        total += measure(current)
        pending += _children(current)
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` plus every live descendant."""
    return _tree_sum(pid, process_cpu_seconds)


def _threads_wait_seconds(pid: int) -> float:
    """Seconds the threads of ``pid`` have spent runnable but waiting for a CPU (schedstat)."""
    total = 0
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return 0.0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def tree_wait_seconds(pid: int) -> float:
    """Run-queue wait of ``pid`` and every live descendant, all threads: the time the target
    could have worked and the scheduler gave the CPU to someone else."""
    return _tree_sum(pid, _threads_wait_seconds)
