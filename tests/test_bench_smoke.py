"""The targetd-vs-tgtd benchmark runs end to end in its quick mode.

This proves the harness works (both targets start, every client runs against both, the table
and the JSON come out, nothing is left running); it asserts nothing about speed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench_runs import BENCH, REPO, run_bench, running

from targetd import gc_tuning

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
    # The collector set as the daemon sets it, not Python's default (700).
    assert float(rows["gc young-generation threshold"]) == gc_tuning.THRESHOLDS[0]
    assert float(rows["write gc passes per 1,000 commands"]) >= 0


@pytest.mark.timeout(200)
def test_scaling_prints_a_row_per_core_count() -> None:
    argv = ["--quick", "--repeat", "1", "--cases", "qd1-read-4K-p50"]
    done = run_bench("scaling.py", *argv, timeout=180)
    rows = [line.split(" | ") for line in done.stdout.splitlines() if "qd1-read-4K-p50" in line]
    cores = len(os.sched_getaffinity(0))
    assert sorted((int(r[0]), r[2]) for r in rows) == sorted(
        (k, t) for k in range(1, cores + 1) for t in ("targetd", "tgtd")
    )


def _head() -> str | None:
    """This checkout's HEAD; None outside a git checkout (or without git)."""
    if shutil.which("git") is None:
        return None
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def _tree_rows(stdout: str) -> tuple[list[str], dict[tuple[str, str], dict[str, str]]]:
    lines = stdout.splitlines()
    header = [cell.strip() for cell in lines[0].split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == len(header):
            rows[(cells[0], cells[2])] = dict(zip(header, cells, strict=True))
    return header, rows


@pytest.mark.timeout(200)
def test_two_targetd_trees_run_side_by_side(tmp_path: Path) -> None:
    """This checkout's HEAD (checked out by the bench into a temporary worktree) against the
    working tree, with tgtd: three contenders, each from its own code, each in the table."""
    head = _head()
    if head is None:
        pytest.skip("not a git checkout")
    json_path = tmp_path / "bench.json"
    cases = ("qd1-read-4K-p50", "qemu-seq-read-4K")
    argv = ["--quick", "--size", "16M", "--cases", ",".join(cases), "--json", str(json_path)]
    argv += ["--targetd-rev", "head=HEAD", "--targetd-tree", f"work={REPO}"]
    done = run_bench(SCRIPT, *argv, timeout=180)
    header, rows = _tree_rows(done.stdout)
    assert header[:4] == ["case", "unit", "target", "median"]
    assert {"vs tgtd", "vs head", "range vs head", "verdict", "CPU s/kIO"} <= set(header)
    assert {"CPU s/kIO vs head", "wait"} <= set(header)
    assert set(rows) == {(case, t) for case in cases for t in ("tgtd", "head", "work")}
    for case in cases:
        for target in ("tgtd", "head", "work"):
            row = rows[(case, target)]
            float(row["median"].replace(",", ""))  # measured, not FAIL or "-"
            float(row["CPU s/kIO"])  # each contender's own process's CPU
        assert rows[(case, "tgtd")]["vs tgtd"] == "-"
        assert rows[(case, "head")]["vs tgtd"].endswith("x")
        assert rows[(case, "head")]["verdict"] in {"PASS", "MISS"}
        assert rows[(case, "head")]["vs head"] == "-"  # the reference itself
        assert rows[(case, "work")]["vs tgtd"].endswith("x")
        assert rows[(case, "work")]["vs head"].endswith("x")
        assert rows[(case, "work")]["CPU s/kIO vs head"].endswith("x")

    saved = json.loads(json_path.read_text())
    trees = {t["name"]: t for t in saved["settings"]["targetd_trees"]}
    # Each daemon imported its own tree's targetd, the revision's from its own worktree.
    assert trees["head"]["commit"] == head and trees["head"]["rev"] == "HEAD"
    rev_tree = Path(trees["head"]["path"])
    assert trees["head"]["module_file"] == str(rev_tree / "targetd" / "__init__.py")
    assert REPO not in rev_tree.parents and rev_tree != REPO
    assert trees["work"]["module_file"] == str(REPO / "targetd" / "__init__.py")
    for case in saved["cases"]:
        assert {run["target"] for run in case["runs"]} == {"tgtd", "head", "work"}
        assert set(case["vs_tgtd"]) == {"head", "work"} and set(case["vs_first"]) == {"work"}
    # Three servers, each stopped; the worktree the bench made is gone, from git's list too.
    pids = saved["settings"]["server_pids"]
    assert set(pids) == {"tgtd", "head", "work"} and len(set(pids.values())) == 3
    assert [pid for pid in pids.values() if running(pid)] == []
    assert not rev_tree.exists()
    listed = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "list", "--porcelain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(rev_tree) not in listed


def test_tree_table_ratios_against_tgtd_and_the_first_tree() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from report import CaseResult, Run, format_table
        from workloads import CASES as BENCH_CASES
    finally:
        sys.path.remove(str(BENCH))
    by_name = {c.name: c for c in BENCH_CASES}
    iops = CaseResult(by_name["qemu-seq-read-4K"])
    latency = CaseResult(by_name["qd1-read-4K-p50"])
    # Two repeats; value, CPU seconds, wall seconds, requests.
    for repeat, (tgtd, a, b) in enumerate(((1000, 1500, 1800), (1000, 1300, 1300))):
        for name, value in (("tgtd", tgtd), ("a", a), ("b", b)):
            iops.runs.append(Run(name, repeat, value, value / 1000, 1.0, None, 1000))
    for repeat, (tgtd, a, b) in enumerate(((100, 100, 99), (100, 100, 102))):
        for name, value in (("tgtd", tgtd), ("a", a), ("b", b)):
            latency.runs.append(Run(name, repeat, value, 0.1, 1.0, None, 200))
    lines = format_table([iops, latency], trees=["a", "b"]).splitlines()
    header = [c.strip() for c in lines[0].split("|")]
    rows = {
        (cells[0], cells[2]): dict(zip(header, cells, strict=True))
        for cells in ([c.strip() for c in line.split("|")] for line in lines[2:])
    }
    a_row = rows[("qemu-seq-read-4K", "a")]
    b_row = rows[("qemu-seq-read-4K", "b")]
    a_cells = (a_row["median"], a_row["vs tgtd"], a_row["range vs tgtd"])
    assert a_cells == ("1,400", "1.40x", "1.30-1.50")
    assert (a_row["verdict"], a_row["vs a"]) == ("PASS", "-")
    # b against a: medians 1550 / 1400; per repeat 1.2 and 1.0; CPU per request the same ratio.
    assert (b_row["vs tgtd"], b_row["vs a"], b_row["range vs a"]) == ("1.55x", "1.10x", "1.00-1.20")
    assert b_row["CPU s/kIO vs a"] == "1.11x"
    # Latency (lower is better): b's median 100.5 against 100 is 1.005, rounded up, a MISS.
    lat_b = rows[("qd1-read-4K-p50", "b")]
    assert (lat_b["vs tgtd"], lat_b["vs a"], lat_b["verdict"]) == ("1.01x", "1.01x", "MISS")
    assert rows[("qd1-read-4K-p50", "a")]["verdict"] == "PASS"
    assert rows[("qd1-read-4K-p50", "tgtd")]["verdict"] == "-"
