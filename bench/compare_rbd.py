#!/usr/bin/env python3
"""Benchmark RBD gateways side by side on one image: targetd, tgtd with bs_rbd, native librbd.

One run starts a one-monitor, one-OSD Ceph cluster on loopback (tests/ceph/cluster.py;
BlueStore on a sparse file by default), makes one image, and serves that same image from:

- targetd, an RBD LUN (``kind = "rbd"``, docs/rbd.md);
- tgtd with ``--bstype rbd`` (Debian's tgt-rbd);
- and measures ``rbd bench`` on it: native librbd in one process, the ceiling.

The iSCSI targets are driven by the same client (``qemu-img bench``, libiscsi): sequential
cases, and random 4 KiB ones, where each request is a fixed stride of about 160 MiB from
the last (qemu-img bench has no random mode; iscsi-perf reads only), so no two are adjacent
and none merge; ``rbd bench --io-pattern rand`` for native. Each case
runs on each of the three in turn, the order rotating every repeat, so noise from a shared
machine falls on all alike. Printed: medians, targetd/tgt-rbd and targetd/native ratios
with their goals, and each target's CPU-seconds per 1,000 requests (for ``rbd bench``, its
own CPU, the cost of librbd itself).

All three run with the same librbd cache mode (``--cache``, default ``none``: a write is
acknowledged once the OSDs have committed it), named in the line above the table: the
same promise to the writer on every side. ``--peers-cache default`` leaves tgtd and
``rbd bench`` on librbd's own defaults instead (``writearound``), as they ship.

    python3 bench/compare_rbd.py [--quick] [--repeat N] [--size 256M] [--objectstore memstore]
                                 [--cache none|writearound|writeback] [--peers-cache default]
                                 [--cases randread-4K-qd32,...] [--requests 4K,1M]
                                 [--ceph-conf F [--image NAME]] [--json F]
                                 [--targetd-rev main=main --targetd-tree work=PATH ...]

``--targetd-tree NAME=PATH`` and ``--targetd-rev NAME=REV`` (bench/trees.py, as in
compare_tgtd.py) run several targetd code versions instead of this tree's, each a
contender of its own on the same image, taking turns with tgt-rbd and native: one table
per tree, then each tree against the first (medians, CPU, repeats won).

``--ceph-conf`` uses a running cluster instead of starting one (the test of this script
runs it against the Ceph tier's cluster); the image is made there and removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trees as code_trees
from cpu import tree_cpu_seconds
from targets import (
    LOOPBACK,
    Target,
    TargetError,
    TgtdTarget,
    _free_control_port,
    free_port,
    ready,
)
from trees import Tree, TreeError
from workloads import (
    MB,
    SCATTER_STRIDE_BLOCKS,
    ClientError,
    MiB,
    parse_qemu_seconds,
    qemu_bench_argv,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests" / "ceph"))
from cluster import CephCluster, ClusterError  # noqa: E402

KiB = 1 << 10
IQN = "iqn.2026-11.org.targetd.bench:rbd"
POOL, IMAGE = "rbd", "bench"
TARGETD, TGT, NATIVE = "targetd", "tgt-rbd", "native"


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    write: bool
    block_size: int
    depth: int
    random: bool = False

    @property
    def unit(self) -> str:
        return "MB/s" if self.block_size >= MiB else "IOPS"

    @property
    def goal_vs_tgt(self) -> float:
        return 1.5 if self.block_size >= MiB else 1.0

    @property
    def goal_vs_native(self) -> float | None:
        return 0.7 if self.block_size >= MiB else None


CASES = (
    Case("write-1M-qd16", True, MiB, 16),
    Case("read-1M-qd16", False, MiB, 16),
    Case("write-4K-qd32", True, 4 * KiB, 32),
    Case("read-4K-qd32", False, 4 * KiB, 32),
    Case("randwrite-4K-qd32", True, 4 * KiB, 32, random=True),
    Case("randread-4K-qd32", False, 4 * KiB, 32, random=True),
)


@dataclass
class Run:
    who: str
    value: float | None
    cpu_seconds: float
    ops: int
    error: str | None = None
    # The iSCSI client's own CPU (qemu-img's rusage): on a host where the client, the
    # gateway and the OSD share the cores, it is part of what a request costs.
    client_cpu_seconds: float | None = None

    @property
    def cpu_per_kilo_io(self) -> float | None:
        return None if self.value is None or not self.ops else 1000 * self.cpu_seconds / self.ops

    @property
    def client_cpu_per_kilo_io(self) -> float | None:
        if self.value is None or not self.ops or self.client_cpu_seconds is None:
            return None
        return 1000 * self.client_cpu_seconds / self.ops


@dataclass
class Result:
    case: Case
    runs: list[Run] = field(default_factory=list)

    def median(self, who: str) -> float | None:
        values = [r.value for r in self.runs if r.who == who and r.value is not None]
        return statistics.median(values) if values else None

    def cpu(self, who: str) -> float | None:
        costs = [c for r in self.runs if r.who == who and (c := r.cpu_per_kilo_io) is not None]
        return statistics.median(costs) if costs else None

    def client_cpu(self, who: str) -> float | None:
        costs = [
            c for r in self.runs if r.who == who and (c := r.client_cpu_per_kilo_io) is not None
        ]
        return statistics.median(costs) if costs else None

    def spread(self, who: str) -> tuple[list[float], list[float]]:
        """The figures and the CPU s/kIO of ``who``'s runs that completed."""
        runs = [r for r in self.runs if r.who == who and r.value is not None]
        return [r.value for r in runs if r.value is not None], [
            c for r in runs if (c := r.cpu_per_kilo_io) is not None
        ]


def parse_cases(text: str) -> tuple[Case, ...]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = {c.name: c for c in CASES}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"cases are among: {', '.join(known)}")
    return tuple(known[n] for n in names)


def parse_requests(text: str) -> tuple[int, int]:
    try:
        small, big = (int(n) for n in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("two counts: 4 KiB,1 MiB requests per run") from None
    if small < 1 or big < 1:
        raise argparse.ArgumentTypeError("counts are at least 1")
    return small, big


def parse_size(text: str) -> int:
    units = {"K": KiB, "M": MiB, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    size = int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text)
    if size < 16 * MiB or size % MiB:
        raise argparse.ArgumentTypeError("size must be whole MiB, at least 16M")
    return size


# -- the three ---------------------------------------------------------------------------
def peers_cache_options(mode: str) -> str:
    """The ``[client]`` section that gives tgtd and ``rbd bench`` librbd cache ``mode``
    (``"default"``: none, librbd's own defaults).

    librbd's defaults are ``rbd_cache = true`` with ``rbd_cache_policy = writearound`` and
    ``rbd_cache_writethrough_until_flush = true``: a client writes through (each write
    waits for the OSDs) until it sees its first flush. The ``rbd`` tool turns that last one
    off for itself; tgtd does not (bs_rbd sets no option) and leaves writethrough on its
    first SYNCHRONIZE CACHE (qemu-img sends one when it closes). targetd turns it off.
    So it is off here too: every contender runs ``mode`` from its first write."""
    if mode == "default":
        return ""
    if mode == "none":
        return "\n[client]\nrbd_cache = false\n"
    return (
        "\n[client]\nrbd_cache = true\n"
        f"rbd_cache_policy = {mode}\nrbd_cache_writethrough_until_flush = false\n"
    )


_CACHE_KEYS = ("rbd_cache", "rbd_cache_policy", "rbd_cache_writethrough_until_flush")


def librbd_cache_of(conf: Path, pid: int) -> dict[str, str] | None:
    """The cache settings librbd in process ``pid`` (client.admin) runs with, from its admin
    socket; None when ``conf`` names no admin socket (a cluster given with --ceph-conf)."""
    found = re.search(r"^\s*admin[_ ]socket\s*=\s*(\S+)", conf.read_text(), re.MULTILINE)
    if found is None:
        return None
    sock = found.group(1).replace("$cluster", "ceph").replace("$name", "client.admin")
    sock = sock.replace("$pid", str(pid))
    seen: dict[str, str] = {}
    for key in _CACHE_KEYS:
        done = subprocess.run(["ceph", "--admin-daemon", sock, "config", "get", key],
                              capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        if done.returncode != 0:
            return None
        seen[key] = json.loads(done.stdout)[key]
    return seen


def cache_line(args: argparse.Namespace) -> str:
    """The line above the table: which librbd cache mode each contender ran."""
    peers = "librbd's default (writearound)" if args.peers_cache == "default" else args.cache
    alike = "like for like" if args.peers_cache != "default" else "NOT like for like"
    return f"librbd cache: targetd {args.cache}; tgt-rbd and native {peers} ({alike})"


class Cluster:
    """A cluster the benchmark did not start: ``conf`` and ``rbd()`` as ``CephCluster``'s."""

    def __init__(self, conf: Path) -> None:
        self.conf = conf

    def rbd(self, *args: str, timeout: float = 120.0) -> str:
        argv = ["rbd", "-c", str(self.conf), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} failed: {done.stdout}{done.stderr}")
        return done.stdout


@contextlib.contextmanager
def cluster_for(args: argparse.Namespace, workdir: Path) -> Iterator[CephCluster | Cluster]:
    if args.ceph_conf is None:
        print(f"starting a {args.objectstore} cluster ...", file=sys.stderr, flush=True)
        with CephCluster(workdir / "ceph", objectstore=args.objectstore) as cluster:
            yield cluster
        return
    yield Cluster(args.ceph_conf)


def start_targetd(
    workdir: Path,
    cluster: CephCluster | Cluster,
    image: str,
    cache: str = "none",
    tree: Tree | None = None,
) -> Target:
    """This tree's targetd, or ``tree``'s (its own code, in a directory of its own, named
    for it in the tables)."""
    name, code, env = TARGETD, REPO_ROOT, None
    if tree is not None:
        name, code, env = tree.name, tree.path, code_trees.code_env(tree.path)
        workdir = workdir / f"contender-{tree.name}"
        workdir.mkdir()
    port = free_port()
    config = workdir / "targetd.toml"
    config.write_text(
        f'[[target]]\nname = "{IQN}"\n[[target.lun]]\nlun = 0\nkind = "rbd"\n'
        f'pool = "{POOL}"\nimage = "{image}"\nceph_conf = "{cluster.conf}"\ncache = "{cache}"\n'
    )
    log_path = workdir / "targetd.log"
    argv = [sys.executable, "-m", "targetd", "serve", "--listen", f"{LOOPBACK}:{port}"]
    argv += ["--config", str(config), "--state-dir", str(workdir / "targetd-state")]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=code, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
    return ready(Target(name, IQN, 0, port, proc, log_path), timeout=60)


def start_tgt_rbd(workdir: Path, image: str, conf: Path) -> Target:
    port = free_port()
    control_port = _free_control_port()
    log_path = workdir / "tgtd.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["tgtd", "-f", "-C", str(control_port), "--iscsi", f"portal={LOOPBACK}:{port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    iqn = "iqn.2026-11.org.targetd.bench:tgt-rbd"
    target = TgtdTarget(TGT, iqn, 1, port, proc, log_path, luns=((iqn, 1),),
                        control_port=control_port)  # fmt: skip

    def configure() -> None:
        target._admin("--op new --mode target --tid 1 -T", target.iqn)
        target._admin(
            f"--op new --mode logicalunit --tid 1 --lun 1 --bstype rbd --bsopts conf={conf}"
            " -b", f"{POOL}/{image}",
        )  # fmt: skip
        target._admin("--op bind --mode target --tid 1 -I ALL")

    return ready(target, timeout=15, configure=configure)


_RBD_BENCH = re.compile(r"elapsed:\s*([0-9.]+)\s+ops:\s*(\d+)\s+ops/sec:\s*([0-9.]+)")


def run_native(conf: Path, image: str, case: Case, count: int, timeout: float) -> Run:
    """``rbd bench`` in its own process; its CPU is taken from its rusage."""
    argv = ["rbd", "-c", str(conf), "bench", "--io-type", "write" if case.write else "read",
            "--io-size", str(case.block_size), "--io-threads", str(case.depth),
            "--io-total", str(count * case.block_size),
            "--io-pattern", "rand" if case.random else "seq",
            f"{POOL}/{image}"]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return Run(NATIVE, None, 0.0, 0, f"rbd bench timed out after {timeout:.0f}s")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    match = _RBD_BENCH.search(done.stdout)
    if done.returncode != 0 or not match:
        return Run(NATIVE, None, cpu, 0, f"rbd bench: {(done.stdout + done.stderr)[-300:]}")
    seconds, ops = float(match.group(1)), int(match.group(2))
    per_second = float(match.group(3))
    value = per_second * case.block_size / MB if case.unit == "MB/s" else per_second
    return Run(NATIVE, value if seconds >= 0 else None, cpu, ops)


def run_iscsi(target: Target, case: Case, region: int, count: int, timeout: float) -> Run:
    if not target.alive():
        return Run(target.name, None, 0.0, 0, f"exited; log: {target.log_tail(5)}")
    if case.write:
        # The image's exclusive lock is with the contender that wrote last; taking it over
        # (its holder asked, its cache flushed) is not the gateway's speed: a few writes
        # first, not measured. (rbd bench, a new client each run, still pays it.)
        warm = qemu_bench_argv(target, region, write=True, size=4 * KiB, depth=1, count=16)
        subprocess.run(warm, capture_output=True, timeout=timeout, check=False)
    argv = qemu_bench_argv(target, region, write=case.write, size=case.block_size,
                           depth=case.depth, count=count)  # fmt: skip
    if case.random:
        # Requests a stride apart: adjacent ones would merge into one librbd call in
        # targetd, which a random stream never gives it.
        argv[2:2] = ["-S", str(SCATTER_STRIDE_BLOCKS * case.block_size)]
    cpu_before = tree_cpu_seconds(target.pid)
    client_before = _children_cpu_seconds()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise ClientError(f"qemu-img exited {done.returncode}: {output[-300:]}")
        seconds = parse_qemu_seconds(output)
    except (ClientError, subprocess.TimeoutExpired) as exc:
        return Run(target.name, None, tree_cpu_seconds(target.pid) - cpu_before, 0, str(exc))
    cpu = tree_cpu_seconds(target.pid) - cpu_before
    client = _children_cpu_seconds() - client_before
    return Run(target.name, _value(case, count, seconds), cpu, count, client_cpu_seconds=client)


def _children_cpu_seconds() -> float:
    """User and system CPU of the children this process has waited for (the clients)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _value(case: Case, ops: int, seconds: float) -> float:
    per_second = ops / seconds if seconds > 0 else 0.0
    return per_second * case.block_size / MB if case.unit == "MB/s" else per_second


# -- the table ---------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def format_table(results: list[Result], mine: str = TARGETD) -> str:
    """``mine``: the targetd contender (a tree's name with --targetd-tree/--targetd-rev)."""
    head = (
        f"{'case':<17} {'unit':<5} {mine:>10} {'tgt-rbd':>10} {'native':>10} "
        f"{'vs tgt':>7} {'goal':>5} {'vs native':>9} {'goal':>5} "
        f"{'cpu s/kIO ' + mine:>18} {'tgt-rbd':>8} {'native':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        t, g, n = r.median(mine), r.median(TGT), r.median(NATIVE)
        vs_tgt = t / g if t and g else None
        vs_native = t / n if t and n else None
        goal_native = r.case.goal_vs_native
        lines.append(
            f"{r.case.name:<17} {r.case.unit:<5} {_fmt(t):>10} {_fmt(g):>10} {_fmt(n):>10} "
            f"{_fmt(vs_tgt, 2):>7} {r.case.goal_vs_tgt:>5.1f} {_fmt(vs_native, 2):>9} "
            f"{'-' if goal_native is None else f'{goal_native:.1f}':>5} "
            f"{_fmt(r.cpu(mine), 4):>18} {_fmt(r.cpu(TGT), 4):>8} {_fmt(r.cpu(NATIVE), 4):>8}"
        )
    return "\n".join(lines)


def _range(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    return f"{min(values):,.{digits}f}-{max(values):,.{digits}f}"


def format_spread(results: list[Result], mine: str = TARGETD) -> str:
    """Each contender's lowest and highest run: how far apart the medians' runs were."""
    head = (
        f"{'runs, low-high':<17} {mine:>15} {'tgt-rbd':>15} {'native':>15} "
        f"{'cpu ' + mine:>13} {'cpu tgt-rbd':>13}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        (t, t_cpu), (g, g_cpu), (n, _) = (r.spread(w) for w in (mine, TGT, NATIVE))
        lines.append(
            f"{r.case.name:<17} {_range(t, 0):>15} {_range(g, 0):>15} {_range(n, 0):>15} "
            f"{_range(t_cpu, 3):>13} {_range(g_cpu, 3):>13}"
        )
    return "\n".join(lines)


def format_client_cpu(results: list[Result], mine: str = TARGETD) -> str:
    """The client's CPU per 1,000 requests against each gateway (medians): the client,
    the gateways and the OSD share this host's cores, so the same client costing more
    against one gateway (smaller PDUs, more round trips) slows that gateway's runs too."""
    head = f"{'client cpu s/kIO':<17} {mine:>10} {'tgt-rbd':>10}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.case.name:<17} {_fmt(r.client_cpu(mine), 4):>10} "
            f"{_fmt(r.client_cpu(TGT), 4):>10}"
        )
    return "\n".join(lines)


def repeats_won(result: Result, mine: str, first: str) -> tuple[int, int]:
    """Of the repeats where both ran, how many ``mine`` did better than ``first`` in."""
    a = [r.value for r in result.runs if r.who == mine]
    b = [r.value for r in result.runs if r.who == first]
    pairs = [(x, y) for x, y in zip(a, b, strict=False) if x is not None and y is not None]
    return sum(x > y for x, y in pairs), len(pairs)


def format_trees(results: list[Result], names: list[str]) -> str:
    """Each targetd tree against the first one named: medians, ratio, CPU, repeats won."""
    first = names[0]
    head = (
        f"{'trees vs ' + first:<17} {'tree':<12} {'median':>10} {'vs ' + first:>9} "
        f"{'cpu s/kIO':>10} {'cpu vs ' + first:>11} {'won':>7} {'low-high':>15}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        base, base_cpu = r.median(first), r.cpu(first)
        for name in names:
            value, cpu = r.median(name), r.cpu(name)
            ratio = cpu_ratio = won = "-"
            if name != first:
                if value and base:
                    ratio = f"{value / base:.2f}x"
                if cpu and base_cpu:
                    cpu_ratio = f"{cpu / base_cpu:.2f}x"
                wins, of = repeats_won(r, name, first)
                won = f"{wins}/{of}"
            lines.append(
                f"{r.case.name:<17} {name:<12} {_fmt(value):>10} {ratio:>9} "
                f"{_fmt(cpu, 4):>10} {cpu_ratio:>11} {won:>7} {_range(r.spread(name)[0], 0):>15}"
            )
    return "\n".join(lines)


# -- the run -----------------------------------------------------------------------------
def targetd_names(args: argparse.Namespace) -> list[str]:
    """The targetd contenders: the trees' names, or this tree's targetd."""
    return [tree.name for tree in args.trees] or [TARGETD]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test")
    parser.add_argument("--repeat", type=int, help="runs per case and contender (default 3)")
    parser.add_argument("--size", type=parse_size, help="the image (default 256M; quick 32M)")
    parser.add_argument("--objectstore", choices=("bluestore", "memstore"), default="bluestore")
    parser.add_argument(
        "--cache",
        choices=("none", "writearound", "writeback"),
        default="none",
        help="librbd's cache mode for all three (docs/rbd-performance.md; default none)",
    )
    parser.add_argument(
        "--peers-cache",
        choices=("same", "default"),
        default="same",
        help="tgtd's and rbd bench's librbd cache: the same as targetd's (default), or "
        "librbd's own defaults (writearound), an unlike comparison",
    )
    parser.add_argument(
        "--cases", type=parse_cases, default=CASES, help="comma-separated cases (default: all)"
    )
    parser.add_argument(
        "--requests",
        type=parse_requests,
        metavar="4K,1M",
        help="requests per run: 4 KiB cases, 1 MiB cases (default 30000,768; quick 2000,64)",
    )
    parser.add_argument(
        "--ceph-conf", type=Path, help="a running cluster's ceph.conf (default: start one)"
    )
    parser.add_argument("--image", default=IMAGE, help="the image's name in pool rbd")
    parser.add_argument("--json", type=Path, help="also save every run and the medians here")
    code_trees.add_arguments(parser)
    args = parser.parse_args(argv)
    names = [name for _, name, _ in args.tree_specs]
    if {TGT, NATIVE} & set(names):
        parser.error(f"{TGT} and {NATIVE} are the peers' names; choose another")
    args.trees = []  # the resolved trees (run_with_trees)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.size = args.size or ((32 if args.quick else 256) * MiB)
    args.requests = args.requests or ((2000, 64) if args.quick else (30_000, 768))
    return args


def run(args: argparse.Namespace, workdir: Path) -> list[Result]:
    small, big = args.requests
    timeout = 120.0 if args.quick else 600.0
    image = args.image
    with cluster_for(args, workdir) as cluster:
        cluster.rbd("create", "--size", f"{args.size >> 20}M", f"{POOL}/{image}")
        try:
            return _run_on(args, workdir, cluster, image, small, big, timeout)
        finally:
            if args.ceph_conf is not None:
                with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
                    cluster.rbd("rm", "--no-progress", f"{POOL}/{image}", timeout=timeout)


def _run_on(
    args: argparse.Namespace,
    workdir: Path,
    cluster: CephCluster | Cluster,
    image: str,
    small: int,
    big: int,
    timeout: float,
) -> list[Result]:
    # Every read reads data: the whole image is written once first.
    cluster.rbd("bench", "--io-type", "write", "--io-size", "1M", "--io-threads", "16",
                "--io-total", str(args.size), "--io-pattern", "seq", f"{POOL}/{image}",
                timeout=timeout)  # fmt: skip
    # tgtd and rbd bench read their librbd cache mode from this ceph.conf.
    peers_conf = workdir / "peers.conf"
    mode = args.cache if args.peers_cache == "same" else "default"
    peers_conf.write_text(cluster.conf.read_text() + peers_cache_options(mode))
    targets: list[Target] = []
    try:
        for tree in args.trees or [None]:
            targets.append(start_targetd(workdir, cluster, image, args.cache, tree))
        tgt = start_tgt_rbd(workdir, image, peers_conf)
        targets.append(tgt)
        # A first pass over the image through each gateway (connections, the lock, the
        # OSD's caches) is not measured.
        for target in targets:
            argv = qemu_bench_argv(target, args.size, write=False, size=MiB, depth=16,
                                   count=args.size // MiB)  # fmt: skip
            subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        # What tgtd's librbd was really given (the like-for-like claim of the table).
        args.tgt_rbd_librbd = librbd_cache_of(cluster.conf, tgt.pid)
        print(f"tgt-rbd's librbd: {args.tgt_rbd_librbd}", file=sys.stderr, flush=True)
        results = [Result(case) for case in args.cases]
        contenders: list[str] = [*targetd_names(args), TGT, NATIVE]
        for repeat in range(args.repeat):
            shift = repeat % len(contenders)
            order = contenders[shift:] + contenders[:shift]
            for result in results:
                count = big if result.case.block_size >= MiB else small
                for who in order:
                    if who == NATIVE:
                        one = run_native(peers_conf, image, result.case, count, timeout)
                    else:
                        target = next(t for t in targets if t.name == who)
                        one = run_iscsi(target, result.case, args.size, count, timeout)
                    result.runs.append(one)
                    shown = "FAIL " + (one.error or "") if one.value is None else (
                        f"{one.value:,.1f} {result.case.unit}"
                    )  # fmt: skip
                    print(f"  [{repeat + 1}] {result.case.name:<17} {who:<12} {shown}",
                          file=sys.stderr, flush=True)  # fmt: skip
        return results
    finally:
        for target in targets:
            target.stop()


def run_with_trees(args: argparse.Namespace, workdir: Path) -> list[Result]:
    """``run``, with the --targetd-tree/--targetd-rev trees made ready first (each checked
    to import its own targetd) and the revisions' worktrees removed afterwards."""
    if not args.tree_specs:
        return run(args, workdir)
    for stale in code_trees.remove_stale(REPO_ROOT):
        print(f"removed {stale}: a worktree left by a bench run that was killed", file=sys.stderr)
    args.trees = code_trees.resolve(args.tree_specs, REPO_ROOT, workdir)
    try:
        for tree in args.trees:
            where = f"{tree.rev} = {tree.commit[:12]}" if tree.rev and tree.commit else tree.path
            print(f"tree {tree.name}: {where} ({tree.module_file})", file=sys.stderr)
        return run(args, workdir)
    finally:
        for tree in args.trees:
            code_trees.remove(tree, REPO_ROOT)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with tempfile.TemporaryDirectory(prefix=code_trees.WORKDIR_PREFIX) as tmp:
            results = run_with_trees(args, Path(tmp))
    except TreeError as exc:
        print(f"error: a targetd tree: {exc}", file=sys.stderr)
        return 2
    except (TargetError, ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; targets and cluster stopped", file=sys.stderr)
        return 130
    print(cache_line(args))
    names = targetd_names(args)
    for mine in names:
        if len(names) > 1:
            print(f"\n== targetd tree {mine} ==")
        print(format_table(results, mine))
        print()
        print(format_spread(results, mine))
        print()
        print(format_client_cpu(results, mine))
    if len(names) > 1:
        print()
        print(format_trees(results, names))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{args.ceph_conf or args.objectstore}; targetd cache {args.cache}; "
        f"peers' cache {args.peers_cache}; image {args.size >> 20} MiB; "
        f"{args.repeat} repeat(s); load average {load}",
        file=sys.stderr,
    )
    if args.json:
        args.json.write_text(json.dumps(
            {"settings": {"objectstore": args.objectstore, "size": args.size,
                          "repeat": args.repeat, "quick": args.quick, "cache": args.cache,
                          "peers_cache": args.peers_cache,
                          "tgt_rbd_librbd": getattr(args, "tgt_rbd_librbd", None),
                          "targetd_trees": [t.describe() for t in args.trees],
                          "load_average_after": os.getloadavg()},
             "results": [{"case": asdict(r.case), "runs": [asdict(x) for x in r.runs],
                          "median": {w: r.median(w) for w in (*names, TGT, NATIVE)},
                          "cpu_per_kilo_io": {w: r.cpu(w) for w in (*names, TGT, NATIVE)}}
                         for r in results]}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
