#!/usr/bin/env python3
"""Benchmark targetd against tgtd (STGT) side by side, in one run, with the same clients.

Both targets run at once on their own loopback ports. For every repeat, each case runs on one
target and then the other, the order flipping each repeat, so that noise from a shared machine
falls on both alike. The table shows medians, the targetd/tgtd ratio with the goal the team must
reach, and each target's CPU use during the case (share of a core, and CPU-seconds per 1,000
requests). ``--noisy`` measures both with a CPU hog pinned to one core. ``--targetd-tree
NAME=PATH`` and ``--targetd-rev NAME=REV`` run several targetd code versions instead, each as
its own contender, against tgtd and against the first of them. See bench/README.md.

    python3 bench/compare_tgtd.py [--quick] [--repeat N] [--cases a,b] [--size 1G] [--noisy]
                                  [--json F] [--targetd-rev base=main --targetd-tree new=.]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import trees as code_trees
from cpu import tree_cpu_seconds, tree_wait_seconds
from noise import Neighbour
from report import BASELINE, CANDIDATE, CaseResult, Run, format_table, save_json
from targets import GiB, Target, TargetdTarget, TargetError, TgtdTarget
from trees import Tree, TreeError
from workloads import CASES, Budget, ClientError, prefill, run_case, select_cases

REPO_ROOT = Path(__file__).resolve().parent.parent
_SUFFIXES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = _SUFFIXES.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in _SUFFIXES else text
    try:
        size = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if size < (1 << 20) or size % (1 << 20):
        raise argparse.ArgumentTypeError("size must be a whole number of MiB, at least 1M")
    return size


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="short runs (about a second a case): a smoke test"
    )
    parser.add_argument("--repeat", type=int, help="runs per case and target (default 5; quick 1)")
    parser.add_argument(
        "--cases",
        help="comma list of case names or substrings (default all): "
        + ", ".join(c.name for c in CASES),
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        help="LUN region the clients touch and prefill, e.g. 256M (default 1G; quick 64M)",
    )
    parser.add_argument("--json", type=Path, help="also save every run and the medians here")
    parser.add_argument(
        "--targets",
        help=f"which targets to run (default all: {BASELINE},{CANDIDATE}, or {BASELINE} and"
        " the trees' names); one alone is for trying the harness",
    )
    code_trees.add_arguments(parser)
    parser.add_argument("--no-prefill", action="store_true", help="read cases may read holes")
    parser.add_argument(
        "--noisy",
        action="store_true",
        help="measure with a noisy neighbour: a CPU hog pinned to one core (--noisy-core)",
    )
    parser.add_argument(
        "--noisy-core", type=int, default=0, help="the core the hog spins on (default 0)"
    )
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 5)
    args.size = args.size or ((64 << 20) if args.quick else GiB)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.noisy and args.noisy_core not in os.sched_getaffinity(0):
        parser.error(f"--noisy-core {args.noisy_core} is not a core this process may use")
    if args.size > GiB:
        parser.error("--size is at most 1G: targetd's default LUN is 1 GiB")
    try:
        args.cases = select_cases(args.cases)
    except ValueError as exc:
        parser.error(str(exc))
    names = [name for _, name, _ in args.tree_specs]
    if len(set(names)) != len(names):
        parser.error(f"each --targetd-tree/--targetd-rev needs its own name: {', '.join(names)}")
    known = [BASELINE, *names] if names else [BASELINE, CANDIDATE]
    chosen = args.targets or ",".join(known)
    args.targets = [t.strip() for t in chosen.split(",") if t.strip()]
    if not args.targets or set(args.targets) - set(known):
        parser.error(f"--targets takes some of {', '.join(known)}")
    args.tree_specs = [spec for spec in args.tree_specs if spec[1] in args.targets]
    return args


def start_target(
    name: str, workdir: Path, spread: int = 1, trees: dict[str, Tree] | None = None
) -> Target:
    """``spread``: as many targets as the cases spread their sessions over. A name in
    ``trees`` is a targetd started from that tree's code, in a directory of its own."""
    if name == BASELINE:
        return TgtdTarget.start(workdir, GiB, targets=spread)
    if trees:
        sub = workdir / f"contender-{name}"
        sub.mkdir()
        return TargetdTarget.start(sub, trees[name].path, targets=spread, name=name)
    return TargetdTarget.start(workdir, REPO_ROOT, targets=spread)


def measure(case_result: CaseResult, target: Target, repeat: int, region: int, budget: Budget):
    """One run of one case on one target, with the target's CPU use over the client's run."""
    if not target.alive():
        died = f"target exited ({target.proc.returncode}); log: {target.log_tail(5)}"
        case_result.runs.append(Run(target.name, repeat, None, 0.0, 0.0, died))
        return
    cpu_before = tree_cpu_seconds(target.pid)
    wait_before = tree_wait_seconds(target.pid)
    started = time.monotonic()
    ops = 0
    try:
        sample = run_case(case_result.case, target, region, budget)
        value, error, ops = sample.value, None, sample.ops
    except ClientError as exc:
        value, error = None, str(exc)
    wall = time.monotonic() - started
    cpu = tree_cpu_seconds(target.pid) - cpu_before
    waited = tree_wait_seconds(target.pid) - wait_before
    run = Run(target.name, repeat, value, cpu, wall, error, ops, waited)
    case_result.runs.append(run)
    shown = "FAIL" if value is None else f"{value:,.1f} {case_result.case.unit}"
    cost = run.cpu_per_kilo_io
    print(
        f"  [{repeat + 1}] {case_result.case.name:<18} {target.name:<8} {shown:>16}"
        f"  cpu {run.cpu_percent or 0:4.0f}%  wait {run.wait_percent or 0:4.0f}%"
        + ("" if cost is None else f"  {cost:.4f} s/kIO"),
        file=sys.stderr,
        flush=True,
    )


def run_benchmark(
    args: argparse.Namespace,
    workdir: Path,
    pids: dict[str, int],
    settings: dict[str, object],
    trees: dict[str, Tree] | None = None,
) -> list[CaseResult]:
    """Every case on every target; ``pids`` learns each server's PID and ``settings`` the
    neighbour's (both kept in the JSON)."""
    budget = Budget.quick() if args.quick else Budget.full()
    targets: list[Target] = []
    try:
        for name in args.targets:
            print(f"starting {name} ...", file=sys.stderr, flush=True)
            spread = max(c.spread for c in args.cases)
            targets.append(start_target(name, workdir, spread, trees))
            pids[name] = targets[-1].pid
        if not args.no_prefill and any(not c.write for c in args.cases):
            for target in targets:
                print(f"prefilling {args.size >> 20} MiB on {target.name}", file=sys.stderr)
                prefill(target, args.size, budget)
        results = [CaseResult(case) for case in args.cases]
        neighbour = Neighbour(args.noisy_core) if args.noisy else contextlib.nullcontext()
        with neighbour as hog:
            if isinstance(hog, Neighbour):
                settings["neighbour_pid"] = hog.pid
                print(f"noisy neighbour: a CPU hog on core {args.noisy_core}", file=sys.stderr)
            for repeat in range(args.repeat):
                # Each contender goes first in turn (with two: the order flips each repeat).
                shift = repeat % len(targets)
                order = targets[shift:] + targets[:shift]
                for result in results:
                    for target in order:
                        measure(result, target, repeat, args.size, budget)
        return results
    finally:
        for target in targets:
            target.stop()


def run_with_trees(
    args: argparse.Namespace, workdir: Path, pids: dict[str, int], settings: dict[str, object]
) -> list[CaseResult]:
    """``run_benchmark``, with the --targetd-tree/--targetd-rev trees made ready first (each
    checked to import its own targetd) and the revisions' worktrees removed afterwards."""
    if not args.tree_specs:
        return run_benchmark(args, workdir, pids, settings)
    for stale in code_trees.remove_stale(REPO_ROOT):
        print(f"removed {stale}: a worktree left by a bench run that was killed", file=sys.stderr)
    trees = code_trees.resolve(args.tree_specs, REPO_ROOT, workdir)
    try:
        settings["targetd_trees"] = [tree.describe() for tree in trees]
        for tree in trees:
            where = f"{tree.rev} = {tree.commit[:12]}" if tree.rev and tree.commit else tree.path
            print(f"tree {tree.name}: {where} ({tree.module_file})", file=sys.stderr)
        return run_benchmark(args, workdir, pids, settings, {t.name: t for t in trees})
    finally:
        for tree in trees:
            code_trees.remove(tree, REPO_ROOT)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM from a test runner or CI must still stop the targets (the finally blocks).
    signal.signal(signal.SIGTERM, _raise_interrupt)
    pids: dict[str, int] = {}
    settings = {
        "server_pids": pids,
        "quick": args.quick,
        "repeat": args.repeat,
        "region_bytes": args.size,
        "targets": args.targets,
        "budget": asdict(Budget.quick() if args.quick else Budget.full()),
        "noisy_core": args.noisy_core if args.noisy else None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_before": os.getloadavg(),
    }
    tree_names = [name for _, name, _ in args.tree_specs] or None
    try:
        with tempfile.TemporaryDirectory(prefix=code_trees.WORKDIR_PREFIX) as tmp:
            results = run_with_trees(args, Path(tmp), pids, settings)
    except TreeError as exc:
        print(f"error: a targetd tree: {exc}", file=sys.stderr)
        return 2
    except TargetError as exc:
        print(f"error: a target failed to start: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; targets stopped", file=sys.stderr)
        return 130
    settings["load_average_after"] = os.getloadavg()
    print(format_table(results, args.noisy, tree_names))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    mode = f"noisy neighbour on core {args.noisy_core}" if args.noisy else "no added load"
    print(f"{mode}; load average {load}; {args.repeat} repeat(s)", file=sys.stderr)
    if args.json:
        save_json(args.json, results, settings, args.noisy, tree_names)
    failed = any(r.value is None for result in results for r in result.runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
