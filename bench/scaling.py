#!/usr/bin/env python3
"""How each target scales with the cores it may use: the curve from 1 core to all of them.

Starts tgtd and targetd (and any targetd variants given with ``--variant NAME:VAR=VALUE``, each
started with that environment variable set), then for k = 1 .. the cores this process may use,
pins every thread of every target to the first k cores (``os.sched_setaffinity``; the clients
are not pinned) and runs the chosen cases on each target in turn, the order rotating each
repeat. Prints the medians per core count, each target's ratio to tgtd, and its CPU-seconds per
1,000 requests. See docs/performance.md.

    python3 bench/scaling.py [--cases agg8-rand-read-4K,qemu-seq-read-4K] [--repeat 3] [--quick]
    python3 bench/scaling.py --cases agg8x2t --workers 1,2   # two targets, one or two workers
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cpu import tree_cpu_seconds
from targets import GiB, Target, TargetdTarget, TargetError, TgtdTarget
from workloads import Budget, ClientError, prefill, run_case, select_cases

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CASES = "agg8-rand-read-4K,agg8-rand-write-4K,perf-rand-read-4K,qemu-seq-write-4K"


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of ``pid`` and of its child processes (a portal's workers); threads
    started later inherit the mask of their creator."""
    for process in (pid, *descendants(pid)):
        with contextlib.suppress(OSError):  # a process that has just ended
            for task in Path(f"/proc/{process}/task").iterdir():
                with contextlib.suppress(OSError):  # a thread that has just ended
                    os.sched_setaffinity(int(task.name), cores)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(
                    int(entry.name)
                )
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:VAR=VALUE, a targetd started with VAR=VALUE in its environment",
    )
    parser.add_argument("--no-tgtd", action="store_true")
    parser.add_argument(
        "--workers",
        default="1",
        help="comma list of targetd worker counts to run side by side (docs/workers.md);"
        " N > 1 adds the target targetd-wN (default 1)",
    )
    args = parser.parse_args(argv)
    args.cases = select_cases(args.cases)
    args.workers = [int(n) for n in args.workers.split(",") if n.strip()]
    args.spread = max(c.spread for c in args.cases)
    return args


def start_targets(args: argparse.Namespace, workdir: Path) -> list[Target]:
    targets: list[Target] = []
    if not args.no_tgtd:
        targets.append(TgtdTarget.start(workdir, GiB, targets=args.spread))
    for workers in args.workers:
        name = "targetd" if workers == 1 else f"targetd-w{workers}"
        base = workdir / name
        base.mkdir()
        target = TargetdTarget.start(base, REPO_ROOT, targets=args.spread, workers=workers)
        target.name = name
        targets.append(target)
    for spec in args.variant:
        name, _, assignment = spec.partition(":")
        var, _, value = assignment.partition("=")
        sub = workdir / name
        sub.mkdir()
        saved = os.environ.get(var)
        os.environ[var] = value
        try:
            target = TargetdTarget.start(sub, REPO_ROOT)
        finally:
            if saved is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = saved
        target.name = name
        targets.append(target)
    return targets


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    budget = Budget.quick() if args.quick else Budget.full()
    region = (64 << 20) if args.quick else GiB
    cores = sorted(os.sched_getaffinity(0))
    rows: list[tuple[int, str, str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="targetd-scaling-") as tmp:
        targets: list[Target] = []
        try:
            targets = start_targets(args, Path(tmp))
            for target in targets:
                prefill(target, region, budget)
            for k in range(1, len(cores) + 1):
                allowed = set(cores[:k])
                results: dict[tuple[str, str], list[tuple[float, float]]] = {}
                for repeat in range(args.repeat):
                    shift = repeat % len(targets)
                    order = targets[shift:] + targets[:shift]
                    for case in args.cases:
                        for target in order:
                            pin(target.pid, allowed)
                            before = tree_cpu_seconds(target.pid)
                            try:
                                sample = run_case(case, target, region, budget)
                            except (ClientError, TargetError) as exc:
                                print(f"  {case.name} {target.name}: {exc}", file=sys.stderr)
                                continue
                            cost = 1000 * (tree_cpu_seconds(target.pid) - before) / sample.ops
                            results.setdefault((case.name, target.name), []).append(
                                (sample.value, cost)
                            )
                            print(
                                f"  cores={k} [{repeat + 1}] {case.name:<18} {target.name:<10}"
                                f" {sample.value:>10,.0f}  {cost:.4f} s/kIO",
                                file=sys.stderr,
                                flush=True,
                            )
                for (case_name, target_name), samples in results.items():
                    rows.append(
                        (
                            k,
                            case_name,
                            target_name,
                            statistics.median(v for v, _ in samples),
                            statistics.median(c for _, c in samples),
                        )
                    )
        except TargetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
        finally:
            for target in targets:
                target.stop()
    base = {(k, c): v for k, c, t, v, _ in rows if t == "tgtd"}
    print("cores | case | target | median | vs tgtd | CPU s/kIO")
    print("--- | --- | --- | ---: | ---: | ---:")
    for k, case_name, target_name, value, cost in sorted(rows):
        ref = base.get((k, case_name))
        ratio = f"{value / ref:.2f}x" if ref else "-"
        print(f"{k} | {case_name} | {target_name} | {value:,.0f} | {ratio} | {cost:.4f}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average {load}; {args.repeat} repeat(s); {time.strftime('%H:%M')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
