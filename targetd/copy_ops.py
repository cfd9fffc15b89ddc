"""EXTENDED COPY operations as an operator sees them: a ``copy_operations`` section of
``targetctl status`` and Prometheus families, from each target's copy manager.

Families (label ``target``; per operation also ``initiator`` and ``list_id``):

``targetd_copy_operations_running``            gauge    copies running now
``targetd_copy_operations_started_total``      counter  copies started since the daemon started
``targetd_copy_operations_total{result}``      counter  copies ended: completed, failed, aborted
``targetd_copy_bytes_total``                   counter  bytes moved (ended copies and running ones)
``targetd_copy_operation_bytes``               gauge    bytes a running copy has moved
``targetd_copy_operation_total_bytes``         gauge    bytes a running copy will move
``targetd_copy_operation_rate_bytes_per_second`` gauge  a running copy's mean rate so far

Managers are looked up at every call: a target added by SIGHUP is seen at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from targetd.metrics import Family
from xcopy.manager import CopyManager, Operation

if TYPE_CHECKING:
    from targetd.server import TargetServer


def operation_dict(target: str, op: Operation, now: float) -> dict[str, Any]:
    """One copy operation as JSON (a ``targetctl status`` item)."""
    end = op.ended if op.ended is not None else now
    elapsed = max(end - op.started, 1e-9)
    return {
        "target": target,
        "initiator": op.initiator,
        "list_id": op.list_id,
        "state": op.state.value,
        "segments_processed": op.segments_processed,
        "segments": len(op.copy_list.segments),
        "bytes_done": op.bytes_done,
        "bytes_total": op.bytes_total,
        "percent": round(100.0 * op.bytes_done / op.bytes_total, 1) if op.bytes_total else 100.0,
        "rate": round(op.bytes_done / elapsed, 1),
        "elapsed": round(end - op.started, 3),
    }


class CopyOperations:
    """The copy managers of a running server, for status and metrics."""

    def __init__(self, server: TargetServer) -> None:
        self.server = server

    def managers(self) -> Iterator[tuple[str, CopyManager]]:
        for name, runtime in sorted(self.server.targets.items()):
            for lu in runtime.scsi.luns.values():
                manager = lu.services.copy_manager
                if isinstance(manager, CopyManager):
                    yield name, manager
                    break

    def status(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            operation_dict(name, op, now)
            for name, manager in self.managers()
            for ops in manager.operations.values()
            for op in ops.values()
        ]

    def metric_families(self) -> list[Family]:
        running = Family(
            "targetd_copy_operations_running", "gauge", "EXTENDED COPY operations running"
        )
        started = Family(
            "targetd_copy_operations_started_total", "counter", "EXTENDED COPY operations started"
        )
        ended = Family(
            "targetd_copy_operations_total",
            "counter",
            "EXTENDED COPY operations ended, by result (completed, failed, aborted)",
        )
        moved = Family("targetd_copy_bytes_total", "counter", "bytes moved by EXTENDED COPY")
        op_bytes = Family("targetd_copy_operation_bytes", "gauge", "bytes a running copy has moved")
        op_total = Family(
            "targetd_copy_operation_total_bytes", "gauge", "bytes a running copy moves in all"
        )
        op_rate = Family(
            "targetd_copy_operation_rate_bytes_per_second",
            "gauge",
            "mean rate of a running copy since it started",
        )
        now = time.monotonic()
        for name, manager in self.managers():
            labels = {"target": name}
            live = manager.running()
            c = manager.counters
            running.add(len(live), labels)
            started.add(c.started, labels)
            for result, count in (
                ("completed", c.completed),
                ("failed", c.failed),
                ("aborted", c.aborted),
            ):
                ended.add(count, {**labels, "result": result})
            moved.add(c.bytes + sum(op.bytes_done for op in live), labels)
            for op in live:
                per_op = {**labels, "initiator": op.initiator, "list_id": str(op.list_id)}
                op_bytes.add(op.bytes_done, per_op)
                op_total.add(op.bytes_total, per_op)
                op_rate.add(op.bytes_done / max(now - op.started, 1e-9), per_op)
        return [running, started, ended, moved, op_bytes, op_total, op_rate]
