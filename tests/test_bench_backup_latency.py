"""bench/backup_latency.py runs end to end in its quick mode.

This proves the harness works (the daemon starts, both backups and the splits run, the
table comes out with every case, nothing is left running); it asserts nothing about speed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from bench_runs import run_bench, running

ROWS = (
    "host writes, idle",
    "host writes, backup to tape",
    "host writes, backup to file sink",
    "PAIR OUT SPLIT round trip, host writing",
    "the disk's floor: 2 KiB write + fdatasync, between the splits",
)


@pytest.mark.timeout(300)
def test_quick_run_prints_every_case(tmp_path: Path) -> None:
    proc = run_bench(
        "backup_latency.py", "--quick", "--size", "32MiB", "--splits", "10",
        env={**os.environ, "BENCH_DIR": str(tmp_path)}, timeout=280,
    )  # fmt: skip
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| case |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    assert header[:5] == ["case", "n", "p50", "p99", "max"]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    assert list(rows) == list(ROWS)
    for row in rows.values():
        assert int(row["n"]) >= 10
        for column in ("p50", "p99", "max"):
            assert re.fullmatch(r"\d+\.\d\d ms", row[column]), row
        assert re.fullmatch(r"\d+\.\d\dx", row["p99 / idle p99"]), row
    assert rows["host writes, idle"]["p99 / idle p99"] == "1.00x"
    for name in ROWS[1:4]:
        assert rows[name]["verdict"] in {"PASS", "MISS"}
    # Both backups really ran: a rate for each.
    assert re.search(r"backup to tape under the host writes: median \d+ MiB/s", proc.stdout)
    assert re.search(r"backup to sink under the host writes: median \d+ MiB/s", proc.stdout)
    # The daemon it started is gone, and so is its state directory.
    pid = int(re.search(r"daemon pid (\d+)", proc.stdout)[1])  # type: ignore[index]
    assert not running(pid)
    assert list(tmp_path.iterdir()) == []
