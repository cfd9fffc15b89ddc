"""Turns the runs into medians, ratios and verdicts, and prints them as a table or JSON."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workloads import Case

BASELINE = "tgtd"
CANDIDATE = "targetd"


@dataclass
class Run:
    target: str
    repeat: int
    value: float | None  # None when the run failed
    cpu_seconds: float
    wall_seconds: float
    error: str | None = None
    ops: int = 0  # requests completed in the run
    wait_seconds: float = 0.0  # runnable but not running (all threads), over the run

    @property
    def wait_percent(self) -> float | None:
        if self.wall_seconds <= 0:
            return None
        return 100.0 * self.wait_seconds / self.wall_seconds

    @property
    def cpu_per_kilo_io(self) -> float | None:
        """The target's CPU-seconds per 1,000 requests."""
        if self.value is None or self.ops <= 0:
            return None
        return 1000.0 * self.cpu_seconds / self.ops

    @property
    def cpu_percent(self) -> float | None:
        if self.wall_seconds <= 0:
            return None
        return 100.0 * self.cpu_seconds / self.wall_seconds


@dataclass
class CaseResult:
    case: Case
    runs: list[Run] = field(default_factory=list)

    def values(self, target: str) -> list[float]:
        return [r.value for r in self.runs if r.target == target and r.value is not None]

    def median(self, target: str) -> float | None:
        values = self.values(target)
        return statistics.median(values) if values else None

    def cpu_median(self, target: str) -> float | None:
        cpus = [
            r.cpu_percent
            for r in self.runs
            if r.target == target and r.value is not None and r.cpu_percent is not None
        ]
        return statistics.median(cpus) if cpus else None

    def wait_median(self, target: str) -> float | None:
        waits = [
            r.wait_percent
            for r in self.runs
            if r.target == target and r.value is not None and r.wait_percent is not None
        ]
        return statistics.median(waits) if waits else None

    def cpu_per_kilo_io_median(self, target: str) -> float | None:
        costs = [
            cost
            for r in self.runs
            if r.target == target and (cost := r.cpu_per_kilo_io) is not None
        ]
        return statistics.median(costs) if costs else None

    def errors(self, target: str) -> list[str]:
        return [r.error for r in self.runs if r.target == target and r.error]

    def ratio(self, target: str = CANDIDATE, base: str = BASELINE) -> float | None:
        reference, value = self.median(base), self.median(target)
        if reference is None or value is None or reference == 0:
            return None
        return value / reference

    def paired_ratios(self, target: str = CANDIDATE, base: str = BASELINE) -> list[float]:
        """target/base per repeat: the runs of a repeat were back to back, so a burst of
        load from elsewhere on the machine tends to hit both; their spread shows the noise."""
        by_repeat: dict[int, dict[str, float]] = {}
        for r in self.runs:
            if r.value is not None:
                by_repeat.setdefault(r.repeat, {})[r.target] = r.value
        return [
            pair[target] / pair[base]
            for pair in by_repeat.values()
            if pair.get(base) and target in pair
        ]

    def cost_ratio(self, target: str, base: str) -> float | None:
        """target's CPU-seconds per 1,000 requests over base's (medians): below 1 is cheaper."""
        reference, value = self.cpu_per_kilo_io_median(base), self.cpu_per_kilo_io_median(target)
        if reference is None or value is None or reference == 0:
            return None
        return value / reference

    def verdict(self, noisy: bool = False, target: str = CANDIDATE) -> str:
        ratio = self.ratio(target)
        if ratio is None:
            return "n/a"
        goal = self.case.goal(noisy)
        met = ratio <= goal if self.case.lower_is_better else ratio >= goal
        return "PASS" if met else "MISS"


def _number(result: CaseResult, target: str) -> str:
    """The median; "-" for a target that was not run, FAIL for one whose every run failed."""
    if not any(r.target == target for r in result.runs):
        return "-"
    value, unit = result.median(target), result.case.unit
    if value is None:
        return "FAIL"
    return f"{value:,.1f}" if unit == "MB/s" else f"{value:,.0f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _cost(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _floor2(ratio: float) -> float:
    """Cut to two decimals, never round up: 0.795 shows as 0.79x next to a MISS of 0.8x."""
    return math.floor(ratio * 100) / 100


def _ceil2(ratio: float) -> float:
    """Latency ratios (lower is better) round up: 1.005 shows as 1.01x next to a MISS."""
    return math.ceil(ratio * 100) / 100


def _goal(case: Case, noisy: bool) -> str:
    return f"{'<=' if case.lower_is_better else '>='}{case.goal(noisy):.1f}x"


def _range(ratios: list[float]) -> str:
    return f"{_floor2(min(ratios)):.2f}-{_floor2(max(ratios)):.2f}" if len(ratios) > 1 else "-"


HEADERS = (
    "case",
    "unit",
    BASELINE,
    CANDIDATE,
    f"ratio {CANDIDATE}/{BASELINE}",
    "per-repeat range",
    "goal",
    "verdict",
    f"{BASELINE} CPU",
    f"{CANDIDATE} CPU",
    f"{BASELINE} CPU s/kIO",
    f"{CANDIDATE} CPU s/kIO",
    f"{BASELINE} wait",
    f"{CANDIDATE} wait",
)


def table_rows(results: list[CaseResult], noisy: bool = False) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for result in results:
        unit = result.case.unit
        ratio = result.ratio()
        cut = _ceil2 if result.case.lower_is_better else _floor2
        rows.append(
            (
                result.case.name,
                unit,
                _number(result, BASELINE),
                _number(result, CANDIDATE),
                "-" if ratio is None else f"{cut(ratio):.2f}x",
                _range(result.paired_ratios()),
                _goal(result.case, noisy),
                result.verdict(noisy),
                _percent(result.cpu_median(BASELINE)),
                _percent(result.cpu_median(CANDIDATE)),
                _cost(result.cpu_per_kilo_io_median(BASELINE)),
                _cost(result.cpu_per_kilo_io_median(CANDIDATE)),
                _percent(result.wait_median(BASELINE)),
                _percent(result.wait_median(CANDIDATE)),
            )
        )
    return rows


def format_table(
    results: list[CaseResult], noisy: bool = False, trees: list[str] | None = None
) -> str:
    """The table: one row per case, tgtd and targetd side by side; or with ``trees`` (targetd
    code versions, the first the reference) one row per case and contender."""
    if trees:
        headers = tree_headers(trees[0])
        rows = [headers, *tree_table_rows(results, trees, noisy)]
        left = {0, 1, 2, 9}
        contenders = (BASELINE, *trees)
    else:
        headers = HEADERS
        rows = [HEADERS, *table_rows(results, noisy)]
        left = {0, 1, 7}
        contenders = (BASELINE, CANDIDATE)
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    # Names left-aligned, numbers right-aligned, as a reader scans them.

    def line(row: tuple[str, ...]) -> str:
        cells = (
            cell.ljust(widths[i]) if i in left else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        )
        return " | ".join(cells).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    lines = [line(headers), rule, *(line(r) for r in rows[1:])]
    for result in results:
        for target in contenders:
            for error in dict.fromkeys(result.errors(target)):
                lines.append(f"  {result.case.name} on {target}: {error}")
    return "\n".join(lines)


def tree_headers(first: str) -> tuple[str, ...]:
    return (
        "case",
        "unit",
        "target",
        "median",
        f"vs {BASELINE}",
        f"range vs {BASELINE}",
        f"vs {first}",
        f"range vs {first}",
        "goal",
        "verdict",
        "CPU",
        "CPU s/kIO",
        f"CPU s/kIO vs {first}",
        "wait",
    )


def tree_table_rows(
    results: list[CaseResult], trees: list[str], noisy: bool = False
) -> list[tuple[str, ...]]:
    """A row per case and contender: tgtd first, then each targetd tree with its ratio to
    tgtd (and the goal's verdict) and to the first tree, per-repeat ranges beside each."""
    first = trees[0]
    rows: list[tuple[str, ...]] = []
    for result in results:
        cut = _ceil2 if result.case.lower_is_better else _floor2

        def shown(ratio: float | None) -> str:
            return "-" if ratio is None else f"{cut(ratio):.2f}x"  # noqa: B023 (used at once)

        for target in (BASELINE, *trees):
            peer = target != BASELINE
            other = peer and target != first
            cost = result.cost_ratio(target, first) if other else None
            rows.append(
                (
                    result.case.name,
                    result.case.unit,
                    target,
                    _number(result, target),
                    shown(result.ratio(target)) if peer else "-",
                    _range(result.paired_ratios(target)) if peer else "-",
                    shown(result.ratio(target, first)) if other else "-",
                    _range(result.paired_ratios(target, first)) if other else "-",
                    _goal(result.case, noisy) if peer else "-",
                    result.verdict(noisy, target) if peer else "-",
                    _percent(result.cpu_median(target)),
                    _cost(result.cpu_per_kilo_io_median(target)),
                    "-" if cost is None else f"{_ceil2(cost):.2f}x",
                    _percent(result.wait_median(target)),
                )
            )
    return rows


def _comparisons(result: CaseResult, noisy: bool, trees: list[str] | None) -> dict[str, object]:
    """targetd against tgtd; with ``trees``, each tree against tgtd and against the first."""
    if not trees:
        return {
            "ratio": result.ratio(),
            "paired_ratios": result.paired_ratios(),
            "verdict": result.verdict(noisy),
        }
    return {
        f"vs_{BASELINE}": {
            t: {
                "ratio": result.ratio(t),
                "paired_ratios": result.paired_ratios(t),
                "verdict": result.verdict(noisy, t),
            }
            for t in trees
        },
        "vs_first": {
            t: {
                "ratio": result.ratio(t, trees[0]),
                "paired_ratios": result.paired_ratios(t, trees[0]),
                "cpu_per_1000_io_ratio": result.cost_ratio(t, trees[0]),
            }
            for t in trees[1:]
        },
    }


def to_json(
    results: list[CaseResult],
    settings: dict[str, object],
    noisy: bool = False,
    trees: list[str] | None = None,
) -> dict[str, object]:
    names = (BASELINE, *trees) if trees else (BASELINE, CANDIDATE)
    return {
        "settings": settings,
        "cases": [
            {
                "case": asdict(result.case),
                "unit": result.case.unit,
                "goal": result.case.goal(noisy),
                "lower_is_better": result.case.lower_is_better,
                "median": {t: result.median(t) for t in names},
                "cpu_percent_median": {t: result.cpu_median(t) for t in names},
                "wait_percent_median": {t: result.wait_median(t) for t in names},
                "cpu_seconds_per_1000_io_median": {
                    t: result.cpu_per_kilo_io_median(t) for t in names
                },
                **_comparisons(result, noisy, trees),
                "runs": [
                    asdict(r)
                    | {
                        "cpu_percent": r.cpu_percent,
                        "cpu_per_1000_io": r.cpu_per_kilo_io,
                        "wait_percent": r.wait_percent,
                    }
                    for r in result.runs
                ],
            }
            for result in results
        ],
    }


def save_json(
    path: Path,
    results: list[CaseResult],
    settings: dict[str, object],
    noisy: bool = False,
    trees: list[str] | None = None,
) -> None:
    path.write_text(json.dumps(to_json(results, settings, noisy, trees), indent=2) + "\n")
