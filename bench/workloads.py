"""The benchmark cases and the real initiators that run them: QEMU's and libiscsi's.

Each case is data (tool, direction, block size, depth, sessions); ``run_case`` turns one into
command lines, runs them against a target and parses the number they report. All tools are
user-space libiscsi initiators, so the kernel's iSCSI stack plays no part and nothing needs root.
"""

from __future__ import annotations

import random
import re
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from targets import Target

KiB = 1 << 10
MiB = 1 << 20
MB = 1_000_000  # throughput is reported in decimal MB/s, as qemu-img and fio do


class ClientError(RuntimeError):
    """A client exited non-zero, timed out, or printed no result."""


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    tool: str  # "qemu-img" | "iscsi-perf" | "qemu-io" (a key of RUNNERS)
    write: bool
    block_size: int
    depth: int
    random: bool = False
    sessions: int = 1  # clients run at once, each with its own login
    spread: int = 1  # the sessions go round this many targets (session i to target i mod N)
    percentile: int = 0  # latency cases: which percentile of the per-request times

    @property
    def unit(self) -> str:
        if self.percentile:
            return "us"
        return "MB/s" if self.block_size >= MiB else "IOPS"

    @property
    def lower_is_better(self) -> bool:
        return bool(self.percentile)

    def goal(self, noisy: bool = False) -> float:
        """The targetd/tgtd ratio the team must reach (issue 14's "how it is checked").

        Quiet: 2.0x for 1 MiB, 1.3x for 4 KiB. With a noisy neighbour: parity. Latency: at
        most tgtd's (a ratio of at most 1.0).
        """
        if self.lower_is_better or noisy:
            return 1.0
        return 2.0 if self.block_size >= MiB else 1.3


CASES: tuple[Case, ...] = (
    Case("qemu-seq-write-1M", "qemu-img", True, MiB, 16),
    Case("qemu-seq-read-1M", "qemu-img", False, MiB, 16),
    Case("qemu-seq-write-4K", "qemu-img", True, 4 * KiB, 32),
    Case("qemu-seq-read-4K", "qemu-img", False, 4 * KiB, 32),
    Case("perf-seq-read-1M", "iscsi-perf", False, MiB, 16),
    Case("perf-rand-read-4K", "iscsi-perf", False, 4 * KiB, 32, random=True),
    Case("agg8-rand-read-4K", "iscsi-perf", False, 4 * KiB, 32, random=True, sessions=8),
    Case("agg8-rand-write-4K", "qemu-img", True, 4 * KiB, 32, random=True, sessions=8),
    Case("qd1-read-4K-p50", "qemu-io", False, 4 * KiB, 1, random=True, percentile=50),
    Case("qd1-read-4K-p99", "qemu-io", False, 4 * KiB, 1, random=True, percentile=99),
)

# Not run by default: the same 8 sessions over two targets, what per-target worker
# processes can spread over cores (bench/scaling.py --workers 1,2).
SPREAD_CASES: tuple[Case, ...] = (
    Case("agg8x2t-rand-read-4K", "iscsi-perf", False, 4 * KiB, 32, True, sessions=8, spread=2),
    Case("agg8x2t-rand-write-4K", "qemu-img", True, 4 * KiB, 32, True, sessions=8, spread=2),
)


@dataclass(frozen=True, slots=True)
class Budget:
    """How much work one run of a case does: sized so a run takes a few seconds on tgtd."""

    big_count: int  # qemu-img requests of 1 MiB
    small_count: int  # qemu-img requests of 4 KiB
    perf_seconds: int  # iscsi-perf run time
    timeout: float  # per client run; a stuck target fails the case, not the whole benchmark
    latency_count: int = 5_000  # timed QD1 requests of a latency case

    @classmethod
    def full(cls) -> Budget:
        return cls(big_count=3072, small_count=120_000, perf_seconds=5, timeout=180.0)

    @classmethod
    def quick(cls) -> Budget:
        return cls(
            big_count=256, small_count=8_000, perf_seconds=1, timeout=60.0, latency_count=200
        )


@dataclass(frozen=True, slots=True)
class Sample:
    value: float  # in the case's unit
    seconds: float  # the client's wall time, login included: the span CPU use is taken over
    ops: int  # SCSI requests the clients completed: the denominator of CPU per 1,000 I/Os


def select_cases(spec: str | None) -> tuple[Case, ...]:
    """Cases named in a comma list; each item may be a full name or a substring of names."""
    if not spec:
        return CASES
    chosen: list[Case] = []
    every = CASES + SPREAD_CASES
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        matches = [c for c in every if item == c.name] or [c for c in every if item in c.name]
        if not matches:
            names = ", ".join(c.name for c in every)
            raise ValueError(f"no case matches {item!r}; cases are: {names}")
        chosen += [c for c in matches if c not in chosen]
    return tuple(chosen)


def qemu_image_opts(target: Target, region: int, lun: tuple[str, int] | None = None) -> str:
    """A raw view of just the first ``region`` bytes, so sequential runs wrap inside it."""
    iqn, number = lun or (target.iqn, target.lun)
    return ",".join(
        (
            "driver=raw",
            f"size={region}",
            "file.driver=iscsi",
            "file.transport=tcp",
            f"file.portal={target.portal}",
            f"file.target={iqn}",
            f"file.lun={number}",
        )
    )


def qemu_bench_argv(
    target: Target,
    region: int,
    *,
    write: bool,
    size: int,
    depth: int,
    count: int,
    lun: tuple[str, int] | None = None,
) -> list[str]:
    argv = ["qemu-img", "bench", "--image-opts", "-t", "none", "-d", str(depth)]
    argv += ["-s", str(size), "-c", str(count)]
    if write:
        argv += ["-w", "--pattern=0xa5"]
    return [*argv, qemu_image_opts(target, region, lun)]


def iscsi_perf_argv(target: Target, case: Case, seconds: int, session: int = 0) -> list[str]:
    argv = ["iscsi-perf", "-t", str(seconds), "-b", str(case.block_size // 512)]
    argv += ["-m", str(case.depth)]
    if case.random:
        argv.append("-r")
    iqn, lun = target.lun_of(session, case.spread)
    return [*argv, f"iscsi://{target.portal}/{iqn}/{lun}"]


_QEMU_DONE = re.compile(r"Run completed in ([0-9.]+) seconds")
# iscsi-perf rewrites one status line with \r and ends with the run's average.
_PERF_AVERAGE = re.compile(r"iops average (\d+) \(")


def parse_qemu_seconds(output: str) -> float:
    match = _QEMU_DONE.search(output)
    if not match:
        raise ClientError(f"qemu-img printed no run time: {output.strip()[-300:]}")
    return float(match.group(1))


def parse_perf_iops(output: str) -> int:
    found = _PERF_AVERAGE.findall(output)
    if not found:
        raise ClientError(f"iscsi-perf printed no average: {output.strip()[-300:]}")
    return int(found[-1])


def _run(argv: list[str], timeout: float) -> tuple[str, float]:
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClientError(f"{argv[0]} timed out after {timeout:.0f}s") from exc
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise ClientError(f"{argv[0]} exited {done.returncode}: {output.strip()[-300:]}")
    return output, elapsed


# A stride of an odd number of 4 KiB blocks visits every block of a power-of-two region once,
# in an order with no locality: qemu-img bench's way to scatter requests (it has no random
# mode). 40,961 blocks is about 160 MiB, prime, and an odd count of any block size.
SCATTER_STRIDE_BLOCKS = 40_961


def _each_session(case: Case, make_argv: Callable[[int], list[str]], timeout: float):
    """Run ``case.sessions`` clients at once (each its own login); their outputs and times."""
    if case.sessions == 1:
        return [_run(make_argv(0), timeout)]
    with ThreadPoolExecutor(case.sessions) as pool:
        futures = [pool.submit(_run, make_argv(i), timeout) for i in range(case.sessions)]
        return [f.result() for f in futures]


def _run_qemu_img(case: Case, target: Target, region: int, budget: Budget) -> Sample:
    total = budget.big_count if case.block_size >= MiB else budget.small_count
    count = max(1, total // case.sessions)

    def argv(session: int) -> list[str]:
        args = qemu_bench_argv(
            target, region, write=case.write, size=case.block_size, depth=case.depth,
            count=count, lun=target.lun_of(session, case.spread),
        )  # fmt: skip
        if case.random:
            # Each session starts at its own place in the region and strides through it.
            offset = (region // case.sessions * session) // case.block_size * case.block_size
            stride = SCATTER_STRIDE_BLOCKS * case.block_size
            args[2:2] = ["-S", str(stride), "-o", str(offset)]
        return args

    runs = _each_session(case, argv, budget.timeout)
    # The slowest session bounds the aggregate: total requests over the longest run time.
    seconds = max(parse_qemu_seconds(output) for output, _ in runs)
    ops = count * len(runs)
    ops_per_second = ops / seconds if seconds > 0 else float("inf")
    return Sample(ops_per_second, max(elapsed for _, elapsed in runs), ops)


def _run_iscsi_perf(case: Case, target: Target, region: int, budget: Budget) -> Sample:
    runs = _each_session(
        case, lambda i: iscsi_perf_argv(target, case, budget.perf_seconds, i), budget.timeout
    )
    # The sessions ran side by side for the same time: their rates add up.
    ops_per_second = sum(parse_perf_iops(output) for output, _ in runs)
    return Sample(
        float(ops_per_second),
        max(elapsed for _, elapsed in runs),
        int(ops_per_second * budget.perf_seconds),
    )


# qemu-io times each command alone and prints its rate: one request per command, so the
# request's latency is the inverse of "ops/sec".
_QEMU_IO_RATE = re.compile(r"1 ops; [0-9:.]+ sec \([^)]*and ([0-9.]+) ops/sec\)")


def parse_qemu_io_latencies(output: str) -> list[float]:
    """Per-request latencies in microseconds from qemu-io's per-command reports."""
    rates = [float(r) for r in _QEMU_IO_RATE.findall(output)]
    if not rates or min(rates) <= 0:
        raise ClientError(f"qemu-io printed no request times: {output.strip()[-300:]}")
    return [1e6 / rate for rate in rates]


def percentile(values: list[float], pct: int) -> float:
    """The nearest-rank percentile (p50 of 1..100 is 50, p99 is 99)."""
    ranked = sorted(values)
    return ranked[max(0, -(-len(ranked) * pct // 100) - 1)]


def _run_qemu_io(case: Case, target: Target, region: int, budget: Budget) -> Sample:
    """QD1 reads at random aligned offsets, each timed alone; the case's percentile in us."""
    picks = random.Random(region).choices(range(region // case.block_size), k=budget.latency_count)
    script = "".join(f"read {block * case.block_size} {case.block_size}\n" for block in picks)
    argv = ["qemu-io", "--image-opts", "-t", "none", qemu_image_opts(target, region)]
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv, input=script, capture_output=True, text=True, timeout=budget.timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ClientError(f"qemu-io timed out after {budget.timeout:.0f}s") from exc
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    if done.returncode != 0 or "failed" in output.lower():
        raise ClientError(f"qemu-io exited {done.returncode}: {output.strip()[-300:]}")
    latencies = parse_qemu_io_latencies(output)
    if len(latencies) != len(picks):
        raise ClientError(f"qemu-io timed {len(latencies)} of {len(picks)} reads")
    return Sample(percentile(latencies, case.percentile), elapsed, len(latencies))


RUNNERS: dict[str, Callable[[Case, Target, int, Budget], Sample]] = {
    "qemu-img": _run_qemu_img,
    "iscsi-perf": _run_iscsi_perf,
    "qemu-io": _run_qemu_io,
}


def run_case(case: Case, target: Target, region: int, budget: Budget) -> Sample:
    runner = RUNNERS.get(case.tool)
    if runner is None:
        raise ValueError(f"unknown tool {case.tool!r}")
    sample = runner(case, target, region, budget)
    if case.unit == "MB/s":
        return Sample(sample.value * case.block_size / MB, sample.seconds, sample.ops)
    return sample


def prefill(target: Target, region: int, budget: Budget) -> None:
    """Write the whole region once so that read cases read data, not holes."""
    count = max(1, region // MiB)
    for lun in target.luns or ((target.iqn, target.lun),):
        argv = qemu_bench_argv(target, region, write=True, size=MiB, depth=16, count=count, lun=lun)
        _run(argv, max(budget.timeout, region / (20 * MB)))
