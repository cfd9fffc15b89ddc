"""bench/tape_s3_backup.py runs end to end at a small size.

This proves the harness works (the S3 server and the daemon start, every measure runs on
both stores, the table comes out, nothing is left running); it asserts nothing about speed.
"""

from __future__ import annotations

import re

import pytest
from bench_runs import run_bench, running

ROWS = (
    "EXTENDED COPY backup, MiB/s",
    "EXTENDED COPY restore, MiB/s",
    "host WRITE(6) 256 KiB + file mark, MiB/s",
    "load + first record, ms",
    "load + first record + file mark, ms",
    "raw S3 multipart upload (boto3, 8 MiB parts), MiB/s",
)


@pytest.mark.timeout(300)
def test_a_small_run_prints_every_row() -> None:
    proc = run_bench("tape_s3_backup.py", "--size", "16MiB", "--repeats", "1", timeout=280)
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| measure |"))
    rows = [line.strip("|").split("|")[0].strip() for line in lines[start + 2 :]]
    assert rows == list(ROWS)
    for line in lines[start + 2 : start + 2 + 5]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[1]) > 0 and float(cells[2]) > 0, line
    pids = re.search(r"daemon pid (\d+), weed pid (\d+)", proc.stdout)
    assert pids is not None
    assert not any(running(int(pid)) for pid in pids.groups())
