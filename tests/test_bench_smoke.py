"""The targetd-vs-tgtd benchmark runs end to end in its quick mode.

This proves the harness works (both targets start, every client runs against both, the table
and the JSON come out, nothing is left running); it asserts nothing about speed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from bench_runs import BENCH, run_bench, running

SCRIPT = "compare_tgtd.py"
CASES = (
    "qemu-seq-write-1M",
    "qemu-seq-read-1M",
    "qemu-seq-write-4K",
    "qemu-seq-read-4K",
    "perf-seq-read-1M",
    "perf-rand-read-4K",
    "agg8-rand-read-4K",
    "agg8-rand-write-4K",
    "qd1-read-4K-p50",
    "qd1-read-4K-p99",
)
UNITS = {"1M": "MB/s", "4K": "IOPS", "p50": "us", "p99": "us"}
TOOLS = ("tgtd", "tgtadm", "qemu-img", "qemu-io", "iscsi-perf", "iscsi-ls")

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in TOOLS),
    reason="needs tgt, qemu-utils and libiscsi-bin (scripts/install-test-deps.sh)",
)


@pytest.mark.timeout(240)
def test_quick_benchmark_prints_both_columns(tmp_path: Path) -> None:
    json_path = tmp_path / "bench.json"
    stdout = run_bench(SCRIPT, "--quick", "--json", str(json_path), timeout=200).stdout
    lines = stdout.splitlines()
    header = [cell.strip() for cell in lines[0].split("|")]
    assert header[:5] == ["case", "unit", "tgtd", "targetd", "ratio targetd/tgtd"]
    assert {
        "goal",
        "verdict",
        "tgtd CPU",
        "targetd CPU",
        "tgtd CPU s/kIO",
        "targetd CPU s/kIO",
        "tgtd wait",
        "targetd wait",
    } <= set(header)
    rows = {row[0]: row for row in ([c.strip() for c in line.split("|")] for line in lines[2:])}
    assert set(CASES) <= set(rows)
    for case in CASES:
        row = dict(zip(header, rows[case], strict=True))
        # Every cell holds a measured number, not FAIL or "-": both targets served the case.
        float(row["tgtd"].replace(",", ""))
        float(row["targetd"].replace(",", ""))
        assert row["ratio targetd/tgtd"].endswith("x")
        assert row["verdict"] in {"PASS", "MISS"}
        assert row["unit"] == UNITS[case.rsplit("-", 1)[1]]
        goal = "<=1.0x" if row["unit"] == "us" else ">=2.0x" if "1M" in case else ">=1.3x"
        assert row["goal"] == goal
        # CPU per 1,000 requests is measured for both targets.
        float(row["tgtd CPU s/kIO"])
        float(row["targetd CPU s/kIO"])
        # Run-queue wait is read for both (a share of the run's wall time).
        assert row["tgtd wait"].endswith("%") and row["targetd wait"].endswith("%")

    saved = json.loads(json_path.read_text())
    assert [c["case"]["name"] for c in saved["cases"]] == list(CASES)
    for case in saved["cases"]:
        assert {run["target"] for run in case["runs"]} == {"tgtd", "targetd"}

    # The harness stopped both servers it started.
    pids = saved["settings"]["server_pids"]
    assert set(pids) == {"tgtd", "targetd"}
    assert [pid for pid in pids.values() if running(pid)] == []


@pytest.mark.timeout(120)
def test_noisy_neighbour_runs_pinned_and_is_stopped(tmp_path: Path) -> None:
    json_path = tmp_path / "bench.json"
    argv = ["--quick", "--noisy", "--cases", "qd1-read-4K-p50", "--json", str(json_path)]
    done = run_bench(SCRIPT, *argv, timeout=100)
    assert "noisy neighbour: a CPU hog on core 0" in done.stderr
    saved = json.loads(json_path.read_text())
    assert saved["settings"]["noisy_core"] == 0
    # Under a neighbour every row's goal is parity; latency stays "at most tgtd's".
    assert saved["cases"][0]["goal"] == 1.0
    hog = saved["settings"]["neighbour_pid"]
    assert isinstance(hog, int) and not running(hog)


def test_neighbour_spins_on_its_core_until_stopped() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from noise import Neighbour
    finally:
        sys.path.remove(str(BENCH))
    with Neighbour(core=0, limit=30) as hog:
        assert hog.pid is not None
        deadline = time.monotonic() + 10
        status = ""
        while time.monotonic() < deadline:
            status = Path(f"/proc/{hog.pid}/status").read_text()
            if "Cpus_allowed_list:\t0\n" in status:
                break
            time.sleep(0.05)
        assert "Cpus_allowed_list:\t0\n" in status
    assert not running(hog.pid)


def test_hotpath_runs_reads_and_writes_that_succeed() -> None:
    done = run_bench("hotpath.py", "--commands", "2000", "--repeat", "1", timeout=120)
    rows = dict(line.split(" | ") for line in done.stdout.splitlines()[2:])
    assert float(rows["read total"]) > 0 and float(rows["write total"]) > 0
    # Every write answered by a 48-byte SCSI Response, every read by one Data-In PDU of
    # 48 + 4096 bytes (the login reply adds a fraction of a byte): a CHECK CONDITION or a
    # split would change the mean.
    assert float(rows["bytes written per command"]) == pytest.approx(2096.0, abs=1.0)


@pytest.mark.timeout(200)
def test_scaling_prints_a_row_per_core_count() -> None:
    argv = ["--quick", "--repeat", "1", "--cases", "qd1-read-4K-p50"]
    done = run_bench("scaling.py", *argv, timeout=180)
    rows = [line.split(" | ") for line in done.stdout.splitlines() if "qd1-read-4K-p50" in line]
    cores = len(os.sched_getaffinity(0))
    assert sorted((int(r[0]), r[2]) for r in rows) == sorted(
        (k, t) for k in range(1, cores + 1) for t in ("targetd", "tgtd")
    )
