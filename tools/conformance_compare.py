"""Runs libiscsi's iscsi-test-cu against tgt and targetd and prints the scores side by side.

    python3 tools/conformance_compare.py                    # runs both (about a minute)
    python3 tools/conformance_compare.py --tgt-baseline     # tgt from tgt-baseline.json
    python3 tools/conformance_compare.py --markdown out.md  # also write the tables as markdown

Per suite it shows pass/fail/skip for each target, then every test whose verdict differs.
Exits 1 when targetd fails a test in a suite that tgt passes fully (the bar in
docs/conformance.md), else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "conformance"))

from cu_output import Verdict  # noqa: E402
from cu_runner import Report, run_suite, suite_counts  # noqa: E402
from cu_targets import TargetdTarget, TgtdTarget  # noqa: E402

BASELINE = REPO / "tests" / "conformance" / "tgt-baseline.json"
CONFIG = REPO / "tests" / "conformance" / "targetd-conformance.toml"


def _cell(n: dict[str, int] | None) -> str:
    return "-/-/-" if n is None else f"{n.get('PASS', 0)}/{n.get('FAIL', 0)}/{n.get('SKIP', 0)}"


def side_by_side(tgt: Report, targetd: Report) -> tuple[list[str], list[str]]:
    """(markdown table lines, bar violations)."""
    a, b = suite_counts(tgt), suite_counts(targetd)
    lines = [
        "| suite | tgt pass/fail/skip | targetd pass/fail/skip |",
        "| --- | --- | --- |",
    ]
    violations = []
    for suite in dict.fromkeys([*a, *b]):
        lines.append(f"| {suite} | {_cell(a.get(suite))} | {_cell(b.get(suite))} |")
        if a.get(suite) and not a[suite]["FAIL"] and b.get(suite, {}).get("FAIL"):
            violations.append(f"{suite}: tgt passes fully, targetd fails {b[suite]['FAIL']}")
    ca, cb = tgt.counts(), targetd.counts()
    lines.append(
        f"| **total** | **{ca['PASS']}/{ca['FAIL']}/{ca['SKIP']}** "
        f"| **{cb['PASS']}/{cb['FAIL']}/{cb['SKIP']}** |"
    )
    if cb["PASS"] <= ca["PASS"]:
        violations.append(f"targetd passes {cb['PASS']}, not more than tgt's {ca['PASS']}")
    return lines, violations


def differences(tgt: Report, targetd: Report) -> list[str]:
    lines = ["| test | tgt | targetd | targetd detail |", "| --- | --- | --- | --- |"]
    for name, ours in targetd.outcomes.items():
        theirs = tgt.outcomes.get(name)
        if theirs is None or theirs.verdict is not ours.verdict:
            peer = theirs.verdict.value if theirs else "-"
            detail = ours.detail.replace("|", "/") if ours.verdict is not Verdict.PASS else ""
            lines.append(f"| {name} | {peer} | {ours.verdict.value} | {detail} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tgt-baseline", action="store_true", help=f"read tgt from {BASELINE.name}")
    ap.add_argument("--config", type=Path, default=CONFIG, help="targetd config file")
    ap.add_argument("--markdown", type=Path, help="write the tables here")
    ap.add_argument("--json", type=Path, help="write targetd's per-test report here")
    ap.add_argument(
        "--multipath", action="store_true", help="give both targets a second path (MultipathIO)"
    )
    args = ap.parse_args(argv)

    if args.tgt_baseline:
        tgt = Report.from_json(json.loads(BASELINE.read_text()))
    else:
        with TgtdTarget() as peer:
            tgt = run_suite(peer, multipath=args.multipath)
            tgt.version = TgtdTarget.version()
    with TargetdTarget(config=args.config) as ours:
        targetd = run_suite(ours, multipath=args.multipath)
    if args.json:
        args.json.write_text(json.dumps(targetd.to_json(), indent=1) + "\n")

    table, violations = side_by_side(tgt, targetd)
    diff = differences(tgt, targetd)
    out = "\n".join(
        [
            f"tgt {tgt.version}: {tgt.elapsed_s:.0f} s; targetd: {targetd.elapsed_s:.0f} s",
            "",
            *table,
            "",
            "Tests whose verdict differs:",
            "",
            *diff,
        ]
    )
    print(out)
    for v in violations:
        print(f"BAR NOT MET: {v}")
    for note in targetd.notes:
        print(f"note: {note}")
    if args.markdown:
        args.markdown.write_text(out + "\n")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
