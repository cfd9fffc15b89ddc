"""Kernel copies that give way to host I/O.

A backup's copy_file_range calls (block to tape image, block to file sink) move hundreds
of MiB per second of page-cache memcpy on one core; on a 2-core machine that competes
with the event loop that answers host commands. Three things keep host latency close to
idle while a backup runs (docs/xcopy.md, "Measured"):

- the kernel copies run on threads of their own (:func:`copy_executor`), never queued
  with, or queueing, the default executor's host I/O (large writes, cache-miss reads);
- those threads run at the lowest CPU priority (nice 19: nice 10 left host write p99 at
  2-3x idle) and the lowest best-effort I/O priority (not the idle class, which a disk
  kept busy by hosts would starve), so the scheduler hands a waking event loop the core
  first. The price: a backup racing a host that writes without pause, on a machine
  whose cores are busy, runs at a fraction of its speed (docs/xcopy.md, "Measured");
- the copies go in slices of :data:`SLICE` bytes; between two, :class:`GiveWay` looks at
  the count of SCSI commands started (:data:`scsi.activity.COMMANDS`) and, if hosts sent
  any meanwhile, sleeps as long as the slice took (half the copy rate while hosts are
  busy, the full rate when they are quiet).

Pacing changes when bytes move, never which bytes: every slice is copied whole, in order.

A backup window may want the speed instead: :func:`set_priority` ``"normal"`` (the
daemon's ``[pairs] backup_priority``) runs each copy job from then on at the daemon's own
CPU and I/O priority, and GiveWay no longer pauses. The threads persist, so each job sets
its thread's priority as it starts, and only when the mode changed since that thread's
last job.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

from scsi.activity import COMMANDS

MiB = 1 << 20
# Bytes per copy_file_range call: ~0.5-1 ms of kernel copying between looks at the hosts.
SLICE = 1 * MiB
# While hosts are active: sleep this many times as long as the last slice took, at most
# MAX_PAUSE seconds (so a slow disk does not stall the copy for long).
DUTY = 1.0
MAX_PAUSE = 0.005
# Copy threads: two, so a tape backup and a file sink backup can run at once.
WORKERS = 2
NICE = 19

_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_BE = 2
_IOPRIO_LOWEST = 7
_IOPRIO_CLASS_SHIFT = 13
_SYS_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "i686": 289, "ppc64le": 273, "s390x": 282}

Priority = Literal["background", "normal"]
PRIORITIES: tuple[Priority, ...] = ("background", "normal")

log = logging.getLogger(__name__)

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()
_mode: Priority = "background"
# The nice a "normal" job runs at: the daemon's own, as it started (it may run under nice).
_BASE_NICE = os.getpriority(os.PRIO_PROCESS, 0)
_thread = threading.local()  # .mode: the priority this copy thread last set
_refused_logged = False


def set_priority(mode: Priority) -> None:
    """The priority of copy and digest jobs submitted from now on (a running one keeps
    its own until its next job)."""
    global _mode
    if mode not in PRIORITIES:
        raise ValueError(f"backup priority must be one of {', '.join(PRIORITIES)}, got {mode!r}")
    _mode = mode


def priority() -> Priority:
    return _mode


def background_priority() -> None:
    """Lower the calling thread (Linux: nice and I/O priority are per thread)."""
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):  # not permitted (a sandbox): it runs where it is
        os.setpriority(os.PRIO_PROCESS, tid, NICE)
    _set_ioprio(tid, _IOPRIO_CLASS_BE << _IOPRIO_CLASS_SHIFT | _IOPRIO_LOWEST)


def normal_priority() -> None:
    """The calling thread back at the daemon's priority. Raising nice needs CAP_SYS_NICE
    (or RLIMIT_NICE): when refused, said once, and the copy runs on where it is."""
    global _refused_logged
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, _BASE_NICE)
    except OSError as err:
        if not _refused_logged:
            _refused_logged = True
            log.warning(
                "backup_priority normal: the copy threads stay at nice %d: %s",
                os.getpriority(os.PRIO_PROCESS, tid), err,
            )  # fmt: skip
    _set_ioprio(tid, 0)  # class "none": the kernel derives the I/O priority from nice


def _set_ioprio(tid: int, ioprio: int) -> None:
    number = _SYS_IOPRIO_SET.get(platform.machine())
    if number is None:
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.syscall(number, _IOPRIO_WHO_PROCESS, tid, ioprio)


def apply_priority() -> None:
    """On a copy or digest thread, as a job starts: the thread at the chosen priority
    (a system call only when the choice changed since this thread's last job)."""
    mode = _mode
    if getattr(_thread, "mode", None) == mode:
        return
    _thread.mode = mode
    if mode == "normal":
        normal_priority()
    else:
        background_priority()


def _prioritised(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    apply_priority()
    return fn(*args, **kwargs)


class PacedExecutor(ThreadPoolExecutor):
    """Threads whose every job runs at the priority :func:`set_priority` chose."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return super().submit(_prioritised, fn, *args, **kwargs)


def copy_executor() -> ThreadPoolExecutor:
    """The copy threads (created on first use, kept for the process's life)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = PacedExecutor(WORKERS, thread_name_prefix="xcopy-kcopy")
        return _executor


class GiveWay:
    """Called between two slices of a kernel copy, on the copy thread: sleeps while hosts
    are sending commands. ``activity`` returns a number that moves when they do."""

    def __init__(self, activity: Callable[[], int] | None = None) -> None:
        self.activity = activity or (lambda: COMMANDS.started)
        self.seen = self.activity()
        self.mark = time.monotonic()
        self.pauses = 0

    def __call__(self) -> None:
        now = self.activity()
        if now != self.seen:
            self.seen = now
            if _mode != "background":  # a backup window that chose speed
                self.mark = time.monotonic()
                return
            self.pauses += 1
            time.sleep(min(MAX_PAUSE, (time.monotonic() - self.mark) * DUTY))
        self.mark = time.monotonic()
