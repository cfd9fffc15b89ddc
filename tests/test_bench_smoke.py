"""The targetd-vs-tgtd benchmark runs end to end in its quick mode.

This proves the harness works (both targets start, every client runs against both, the table
and the JSON come out, nothing is left running); it asserts nothing about speed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "compare_tgtd.py"
CASES = (
    "qemu-seq-write-1M",
    "qemu-seq-read-1M",
    "qemu-seq-write-4K",
    "qemu-seq-read-4K",
    "perf-seq-read-1M",
    "perf-rand-read-4K",
)
TOOLS = ("tgtd", "tgtadm", "qemu-img", "iscsi-perf", "iscsi-ls")

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in TOOLS),
    reason="needs tgt, qemu-utils and libiscsi-bin (scripts/install-test-deps.sh)",
)


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"


@pytest.mark.timeout(240)
def test_quick_benchmark_prints_both_columns(tmp_path: Path) -> None:
    json_path = tmp_path / "bench.json"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(json_path)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=200)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"stdout:\n{stdout}\nstderr:\n{stderr}"

    lines = stdout.splitlines()
    header = [cell.strip() for cell in lines[0].split("|")]
    assert header[:5] == ["case", "unit", "tgtd", "targetd", "ratio targetd/tgtd"]
    assert {"goal", "verdict", "tgtd CPU", "targetd CPU"} <= set(header)
    rows = {row[0]: row for row in ([c.strip() for c in line.split("|")] for line in lines[2:])}
    assert set(CASES) <= set(rows)
    for case in CASES:
        row = dict(zip(header, rows[case], strict=True))
        # Every cell holds a measured number, not FAIL or "-": both targets served the case.
        float(row["tgtd"].replace(",", ""))
        float(row["targetd"].replace(",", ""))
        assert row["ratio targetd/tgtd"].endswith("x")
        assert row["verdict"] in {"PASS", "MISS"}
        assert row["unit"] == ("MB/s" if case.endswith("1M") else "IOPS")

    saved = json.loads(json_path.read_text())
    assert [c["case"]["name"] for c in saved["cases"]] == list(CASES)
    for case in saved["cases"]:
        assert {run["target"] for run in case["runs"]} == {"tgtd", "targetd"}

    # The harness stopped both servers it started.
    pids = saved["settings"]["server_pids"]
    assert set(pids) == {"tgtd", "targetd"}
    assert [pid for pid in pids.values() if _running(pid)] == []
