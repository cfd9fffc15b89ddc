"""The benchmark cases and the two real initiators that run them: QEMU's and libiscsi's.

Each case is data (tool, direction, block size, depth); ``run_case`` turns one into a command
line, runs it against a target and parses the one number it reports. Both tools are user-space
libiscsi initiators, so the kernel's iSCSI stack plays no part and nothing needs root.
"""

from __future__ import annotations

import re
import subprocess
import time
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
    tool: str  # "qemu-img" | "iscsi-perf"
    write: bool
    block_size: int
    depth: int
    random: bool = False

    @property
    def unit(self) -> str:
        return "MB/s" if self.block_size >= MiB else "IOPS"

    @property
    def goal(self) -> float:
        """The targetd/tgtd ratio the team must reach: parity for big I/O, 0.8x for 4 KiB."""
        return 1.0 if self.block_size >= MiB else 0.8


CASES: tuple[Case, ...] = (
    Case("qemu-seq-write-1M", "qemu-img", True, MiB, 16),
    Case("qemu-seq-read-1M", "qemu-img", False, MiB, 16),
    Case("qemu-seq-write-4K", "qemu-img", True, 4 * KiB, 32),
    Case("qemu-seq-read-4K", "qemu-img", False, 4 * KiB, 32),
    Case("perf-seq-read-1M", "iscsi-perf", False, MiB, 16),
    Case("perf-rand-read-4K", "iscsi-perf", False, 4 * KiB, 32, random=True),
)


@dataclass(frozen=True, slots=True)
class Budget:
    """How much work one run of a case does: sized so a run takes a few seconds on tgtd."""

    big_count: int  # qemu-img requests of 1 MiB
    small_count: int  # qemu-img requests of 4 KiB
    perf_seconds: int  # iscsi-perf run time
    timeout: float  # per client run; a stuck target fails the case, not the whole benchmark

    @classmethod
    def full(cls) -> Budget:
        return cls(big_count=3072, small_count=120_000, perf_seconds=5, timeout=180.0)

    @classmethod
    def quick(cls) -> Budget:
        return cls(big_count=256, small_count=8_000, perf_seconds=1, timeout=60.0)


@dataclass(frozen=True, slots=True)
class Sample:
    value: float  # in the case's unit
    seconds: float  # the client's wall time, login included: the span CPU use is taken over


def select_cases(spec: str | None) -> tuple[Case, ...]:
    """Cases named in a comma list; each item may be a full name or a substring of names."""
    if not spec:
        return CASES
    chosen: list[Case] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        matches = [c for c in CASES if item == c.name] or [c for c in CASES if item in c.name]
        if not matches:
            names = ", ".join(c.name for c in CASES)
            raise ValueError(f"no case matches {item!r}; cases are: {names}")
        chosen += [c for c in matches if c not in chosen]
    return tuple(chosen)


def qemu_image_opts(target: Target, region: int) -> str:
    """A raw view of just the first ``region`` bytes, so sequential runs wrap inside it."""
    return ",".join(
        (
            "driver=raw",
            f"size={region}",
            "file.driver=iscsi",
            "file.transport=tcp",
            f"file.portal={target.portal}",
            f"file.target={target.iqn}",
            f"file.lun={target.lun}",
        )
    )


def qemu_bench_argv(
    target: Target, region: int, *, write: bool, size: int, depth: int, count: int
) -> list[str]:
    argv = ["qemu-img", "bench", "--image-opts", "-t", "none", "-d", str(depth)]
    argv += ["-s", str(size), "-c", str(count)]
    if write:
        argv += ["-w", "--pattern=0xa5"]
    return [*argv, qemu_image_opts(target, region)]


def iscsi_perf_argv(target: Target, case: Case, seconds: int) -> list[str]:
    argv = ["iscsi-perf", "-t", str(seconds), "-b", str(case.block_size // 512)]
    argv += ["-m", str(case.depth)]
    if case.random:
        argv.append("-r")
    return [*argv, target.url]


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


def run_case(case: Case, target: Target, region: int, budget: Budget) -> Sample:
    if case.tool == "qemu-img":
        count = budget.big_count if case.block_size >= MiB else budget.small_count
        argv = qemu_bench_argv(
            target, region, write=case.write, size=case.block_size, depth=case.depth, count=count
        )
        output, elapsed = _run(argv, budget.timeout)
        seconds = parse_qemu_seconds(output)
        ops_per_second = count / seconds if seconds > 0 else float("inf")
    elif case.tool == "iscsi-perf":
        argv = iscsi_perf_argv(target, case, budget.perf_seconds)
        output, elapsed = _run(argv, budget.timeout)
        ops_per_second = parse_perf_iops(output)
    else:
        raise ValueError(f"unknown tool {case.tool!r}")
    if case.unit == "MB/s":
        return Sample(ops_per_second * case.block_size / MB, elapsed)
    return Sample(float(ops_per_second), elapsed)


def prefill(target: Target, region: int, budget: Budget) -> None:
    """Write the whole region once so that read cases read data, not holes."""
    count = max(1, region // MiB)
    argv = qemu_bench_argv(target, region, write=True, size=MiB, depth=16, count=count)
    _run(argv, max(budget.timeout, region / (20 * MB)))
