"""What a LU answers when its backing store fails, and how often it says so in the log.

A full file system under a thin-provisioned LUN is SPACE ALLOCATION FAILED WRITE PROTECT;
EIO is MEDIUM ERROR with UNRECOVERED READ ERROR or WRITE ERROR. A failing disk fails every
command that touches it, so the log line is rate-limited per LU and kind, and the counts are
kept for the metrics (``targetd_lun_store_errors_total``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from backing.errors import MediumReadError, MediumWriteError, SpaceExhausted, StoreError
from scsi.sense import CheckCondition, Reason

log = logging.getLogger("targetd.scsi")

# (kind as counted and logged, the answer), by error type.
ANSWERS: dict[type[StoreError], tuple[str, Reason]] = {
    SpaceExhausted: ("space_exhausted", Reason.SPACE_ALLOCATION_FAILED_WRITE_PROTECT),
    MediumReadError: ("read_error", Reason.UNRECOVERED_READ_ERROR),
    MediumWriteError: ("write_error", Reason.WRITE_ERROR),
}
KINDS = tuple(kind for kind, _ in ANSWERS.values())
# At most one log line per LU and kind in this many seconds; the rest are counted.
LOG_INTERVAL = 60.0


class StoreErrors:
    """One LU's store failures: the sense to answer, counts, rate-limited log lines."""

    __slots__ = ("_clock", "_last_logged", "_unlogged", "counts", "name")

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.counts = dict.fromkeys(KINDS, 0)
        self._clock = clock
        self._last_logged: dict[str, float] = {}
        self._unlogged = dict.fromkeys(KINDS, 0)

    def answer(self, exc: StoreError) -> CheckCondition:
        kind, reason = ANSWERS.get(type(exc), ("write_error", Reason.WRITE_ERROR))
        self.counts[kind] += 1
        self._log(kind, exc)
        return CheckCondition(reason, message=str(exc))

    def _log(self, kind: str, exc: StoreError) -> None:
        now = self._clock()
        last = self._last_logged.get(kind)
        if last is not None and now - last < LOG_INTERVAL:
            self._unlogged[kind] += 1
            return
        suppressed, self._unlogged[kind] = self._unlogged[kind], 0
        self._last_logged[kind] = now
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        log.error("%s: %s: %s%s", self.name, kind.replace("_", " "), exc, more)
