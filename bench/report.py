"""Turns the runs into medians, ratios and verdicts, and prints them as a table or JSON."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clients import Case

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

    def errors(self, target: str) -> list[str]:
        return [r.error for r in self.runs if r.target == target and r.error]

    def ratio(self) -> float | None:
        base, cand = self.median(BASELINE), self.median(CANDIDATE)
        if base is None or cand is None or base == 0:
            return None
        return cand / base

    def paired_ratios(self) -> list[float]:
        """targetd/tgtd per repeat: the two runs of a repeat were back to back, so a burst of
        load from elsewhere on the machine tends to hit both; their spread shows the noise."""
        by_repeat: dict[int, dict[str, float]] = {}
        for r in self.runs:
            if r.value is not None:
                by_repeat.setdefault(r.repeat, {})[r.target] = r.value
        return [
            pair[CANDIDATE] / pair[BASELINE]
            for pair in by_repeat.values()
            if pair.get(BASELINE) and CANDIDATE in pair
        ]

    def verdict(self) -> str:
        ratio = self.ratio()
        if ratio is None:
            return "n/a"
        return "PASS" if ratio >= self.case.goal else "MISS"


def _number(result: CaseResult, target: str) -> str:
    """The median; "-" for a target that was not run, FAIL for one whose every run failed."""
    if not any(r.target == target for r in result.runs):
        return "-"
    value, unit = result.median(target), result.case.unit
    if value is None:
        return "FAIL"
    return f"{value:,.0f}" if unit == "IOPS" else f"{value:,.1f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _floor2(ratio: float) -> float:
    """Cut to two decimals, never round up: 0.795 shows as 0.79x next to a MISS of 0.8x."""
    return math.floor(ratio * 100) / 100


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
)


def table_rows(results: list[CaseResult]) -> list[tuple[str, ...]]:
    rows = []
    for result in results:
        unit = result.case.unit
        ratio = result.ratio()
        rows.append(
            (
                result.case.name,
                unit,
                _number(result, BASELINE),
                _number(result, CANDIDATE),
                "-" if ratio is None else f"{_floor2(ratio):.2f}x",
                _range(result.paired_ratios()),
                f">={result.case.goal:.1f}x",
                result.verdict(),
                _percent(result.cpu_median(BASELINE)),
                _percent(result.cpu_median(CANDIDATE)),
            )
        )
    return rows


def format_table(results: list[CaseResult]) -> str:
    rows = [HEADERS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    # Names left-aligned, numbers right-aligned, as a reader scans them.
    left = {0, 1, 7}

    def line(row: tuple[str, ...]) -> str:
        cells = (
            cell.ljust(widths[i]) if i in left else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        )
        return " | ".join(cells).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    lines = [line(HEADERS), rule, *(line(r) for r in rows[1:])]
    for result in results:
        for target in (BASELINE, CANDIDATE):
            for error in dict.fromkeys(result.errors(target)):
                lines.append(f"  {result.case.name} on {target}: {error}")
    return "\n".join(lines)


def to_json(results: list[CaseResult], settings: dict[str, object]) -> dict[str, object]:
    return {
        "settings": settings,
        "cases": [
            {
                "case": asdict(result.case),
                "unit": result.case.unit,
                "goal": result.case.goal,
                "median": {t: result.median(t) for t in (BASELINE, CANDIDATE)},
                "cpu_percent_median": {t: result.cpu_median(t) for t in (BASELINE, CANDIDATE)},
                "ratio": result.ratio(),
                "paired_ratios": result.paired_ratios(),
                "verdict": result.verdict(),
                "runs": [asdict(r) | {"cpu_percent": r.cpu_percent} for r in result.runs],
            }
            for result in results
        ],
    }


def save_json(path: Path, results: list[CaseResult], settings: dict[str, object]) -> None:
    path.write_text(json.dumps(to_json(results, settings), indent=2) + "\n")
