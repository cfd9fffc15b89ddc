"""Rounds of an RBD benchmark on one throwaway Ceph cluster (tests/ceph/cluster.py), the
samples of every round merged: what bench/rbd_pair_record.py and bench/rbd_pair_split.py
share."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests" / "ceph"))
from cluster import CephCluster  # noqa: E402
from latency import pct  # noqa: E402

# (cluster, scratch directory, round number) -> samples in seconds by case name
Round = Callable[[CephCluster, Path, int], Coroutine[Any, Any, dict[str, list[float]]]]


def arguments(doc: str, size_mib: int) -> argparse.ArgumentParser:
    """The options every such benchmark takes; a script adds its own."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=size_mib, help="MiB per image")
    parser.add_argument("--writes", type=int, default=200, help="host writes per case")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--objectstore", default="bluestore")
    return parser


def run_rounds(one_round: Round, *, prefix: str, repeat: int, objectstore: str
               ) -> dict[str, list[float]]:  # fmt: skip
    """``repeat`` rounds on one cluster, each case's p50 per round on stderr as it goes."""
    import uvloop

    merged: dict[str, list[float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix=prefix) as tmp,
        CephCluster(Path(tmp) / "ceph", objectstore=objectstore) as cluster,
    ):
        for r in range(repeat):
            got = uvloop.run(one_round(cluster, Path(tmp), r))
            for name, values in got.items():
                merged.setdefault(name, []).extend(values)
                if len(values) > 1:
                    print(f"  [{r + 1}] {name:<16} p50 {pct(values, 0.5):7.2f} ms",
                          file=sys.stderr, flush=True)  # fmt: skip
    return merged
