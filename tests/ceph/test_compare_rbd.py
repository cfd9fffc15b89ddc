"""bench/compare_rbd.py runs end to end against the tier's cluster (tiny sizes and counts).

This proves the harness works: targetd and tgtd serve the image, every case runs on the
three contenders, and the table has every row with figures and ratios; it asserts nothing
about speed. The script was once broken on main for a while without anyone noticing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from cluster import CephCluster

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "compare_rbd.py"
CASES = (
    ("write-1M-qd16", "MB/s"),
    ("read-1M-qd16", "MB/s"),
    ("write-4K-qd32", "IOPS"),
    ("read-4K-qd32", "IOPS"),
    ("randwrite-4K-qd32", "IOPS"),
    ("randread-4K-qd32", "IOPS"),
)


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_compare_rbd_prints_every_row_with_figures_and_ratios(
    ceph_cluster: CephCluster, tmp_path: Path
) -> None:
    image = f"bench-{uuid.uuid4().hex[:8]}"
    json_path = tmp_path / "bench.json"
    argv = [sys.executable, str(SCRIPT), "--ceph-conf", str(ceph_cluster.conf)]
    argv += ["--image", image, "--size", "16M", "--requests", "200,8", "--repeat", "1"]
    argv += ["--cache", "writearound", "--json", str(json_path)]
    done = subprocess.run(
        argv, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"

    lines = done.stdout.splitlines()
    # The line above the table names the one cache mode all three ran with.
    assert lines[0] == (
        "librbd cache: targetd writearound; tgt-rbd and native writearound (like for like)"
    )
    lines = lines[1:]
    assert lines[0].split() == [
        "case", "unit", "targetd", "tgt-rbd", "native", "vs", "tgt", "goal", "vs", "native",
        "goal", "cpu", "s/kIO", "targetd", "tgt-rbd", "native",
    ]  # fmt: skip
    blank = lines.index("")
    rows = {cells[0]: cells for cells in (line.split() for line in lines[2:blank])}
    assert list(rows) == [name for name, _ in CASES], done.stdout
    for name, unit in CASES:
        cells = rows[name]
        assert len(cells) == 12, cells
        assert cells[1] == unit
        targetd, tgt, native = (_number(c) for c in cells[2:5])
        assert min(targetd, tgt, native) > 0, cells
        # The ratios are the medians' (one run each: the printed figures, rounded).
        assert abs(_number(cells[5]) - targetd / tgt) <= 0.01 + 0.001 * targetd / tgt, cells
        assert abs(_number(cells[7]) - targetd / native) <= 0.01 + 0.001 * targetd / native
        assert _number(cells[6]) == (1.5 if unit == "MB/s" else 1.0)
        assert cells[8] == ("0.7" if unit == "MB/s" else "-")
        assert all(_number(c) >= 0 for c in cells[9:12]), cells

    # Below: each contender's lowest and highest run (one run each here: low == high).
    assert lines[blank + 1].split() == [
        "runs,", "low-high", "targetd", "tgt-rbd", "native", "cpu", "targetd", "cpu", "tgt-rbd",
    ]  # fmt: skip
    second_blank = lines.index("", blank + 1)
    spread = {
        cells[0]: cells for cells in (line.split() for line in lines[blank + 3 : second_blank])
    }
    assert list(spread) == [name for name, _ in CASES], done.stdout
    for name, _ in CASES:
        cells = spread[name]
        assert len(cells) == 6, cells
        for cell in cells[1:]:
            low, high = (_number(x) for x in cell.split("-"))
            assert 0 <= low == high, cells

    # Last: the client's (qemu-img's) own CPU per 1,000 requests against each gateway.
    assert lines[second_blank + 1].split() == ["client", "cpu", "s/kIO", "targetd", "tgt-rbd"]
    client = {cells[0]: cells for cells in (line.split() for line in lines[second_blank + 3 :])}
    assert list(client) == [name for name, _ in CASES], done.stdout
    for name, _ in CASES:
        cells = client[name]
        assert len(cells) == 3, cells
        assert all(_number(c) > 0 for c in cells[1:]), cells

    saved = json.loads(json_path.read_text())
    assert (saved["settings"]["cache"], saved["settings"]["peers_cache"]) == ("writearound", "same")
    # tgtd's librbd, asked through its admin socket, ran that mode from its first write.
    assert saved["settings"]["tgt_rbd_librbd"] == {
        "rbd_cache": "true",
        "rbd_cache_policy": "writearound",
        "rbd_cache_writethrough_until_flush": "false",
    }
    assert [r["case"]["name"] for r in saved["results"]] == [name for name, _ in CASES]
    for result in saved["results"]:
        assert sorted(run["who"] for run in result["runs"]) == ["native", "targetd", "tgt-rbd"]
        assert all(run["error"] is None and run["ops"] > 0 for run in result["runs"]), result
        # The client's CPU is counted for the two iSCSI gateways (rbd bench has none).
        clients = {run["who"]: run["client_cpu_seconds"] for run in result["runs"]}
        assert clients["native"] is None and clients["targetd"] > 0 and clients["tgt-rbd"] > 0
    # The image the script made in the shared cluster is gone again.
    assert image not in ceph_cluster.rbd("ls", ceph_cluster.pool).split()


def _head() -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def test_compare_rbd_runs_two_targetd_trees_side_by_side(
    ceph_cluster: CephCluster, tmp_path: Path
) -> None:
    """HEAD (checked out by the bench into a temporary worktree) against this working tree,
    on one image with tgt-rbd and native: each from its own code, each with its own table,
    then the second against the first."""
    head = _head()
    image = f"bench-{uuid.uuid4().hex[:8]}"
    json_path = tmp_path / "bench.json"
    argv = [sys.executable, str(SCRIPT), "--ceph-conf", str(ceph_cluster.conf)]
    argv += ["--image", image, "--size", "16M", "--requests", "200,8", "--repeat", "2"]
    argv += ["--cases", "write-1M-qd16,read-4K-qd32", "--json", str(json_path)]
    argv += ["--targetd-rev", "head=HEAD", "--targetd-tree", f"work={REPO}"]
    done = subprocess.run(
        argv, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"

    lines = done.stdout.splitlines()
    for name in ("head", "work"):
        at = lines.index(f"== targetd tree {name} ==")
        assert lines[at + 1].split()[:5] == ["case", "unit", name, "tgt-rbd", "native"]
        rows = {cells[0]: cells for cells in (line.split() for line in lines[at + 3 : at + 5])}
        assert list(rows) == ["write-1M-qd16", "read-4K-qd32"], done.stdout
        for cells in rows.values():
            assert len(cells) == 12 and min(_number(c) for c in cells[2:5]) > 0, cells
    at = next(i for i, line in enumerate(lines) if line.startswith("trees vs head"))
    assert lines[at].split() == [
        "trees", "vs", "head", "tree", "median", "vs", "head", "cpu", "s/kIO", "cpu", "vs",
        "head", "won", "low-high",
    ]  # fmt: skip
    rows = {(c[0], c[1]): c for c in (line.split() for line in lines[at + 2 :])}
    cases = ("write-1M-qd16", "read-4K-qd32")
    assert set(rows) == {(case, t) for case in cases for t in ("head", "work")}
    for case in cases:
        assert rows[(case, "head")][3] == "-" and rows[(case, "head")][6] == "-"
        work = rows[(case, "work")]
        ratio = _number(work[2]) / _number(rows[(case, "head")][2])
        assert abs(_number(work[3].rstrip("x")) - ratio) <= 0.01 + 0.001 * ratio, work
        assert work[5].endswith("x")
        wins, of = (int(x) for x in work[6].split("/"))
        assert of == 2 and 0 <= wins <= 2, work

    saved = json.loads(json_path.read_text())
    trees = {t["name"]: t for t in saved["settings"]["targetd_trees"]}
    # Each daemon imported its own tree's targetd, the revision's from its own worktree.
    assert trees["head"]["commit"] == head and trees["head"]["rev"] == "HEAD"
    rev_tree = Path(trees["head"]["path"])
    assert trees["head"]["module_file"] == str(rev_tree / "targetd" / "__init__.py")
    assert trees["work"]["module_file"] == str(REPO / "targetd" / "__init__.py")
    for result in saved["results"]:
        assert sorted(run["who"] for run in result["runs"]) == [
            "head", "head", "native", "native", "tgt-rbd", "tgt-rbd", "work", "work",
        ]  # fmt: skip
        assert all(run["error"] is None and run["ops"] > 0 for run in result["runs"]), result
    # The worktree the bench made is gone, and so is the image.
    assert not rev_tree.exists()
    assert image not in ceph_cluster.rbd("ls", ceph_cluster.pool).split()
