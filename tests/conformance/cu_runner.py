"""Runs libiscsi's ``iscsi-test-cu`` against a target and records PASS/FAIL/SKIP per test.

    python3 tests/conformance/cu_runner.py --target tgt --json out.json --markdown out.md
    python3 tests/conformance/cu_runner.py --target targetd [--config FILE]
    python3 tests/conformance/cu_runner.py --url iscsi://127.0.0.1:3260/IQN/0   # already running

The whole suite runs in one ``iscsi-test-cu -t ALL`` process, as a person would run it. A target
that hangs a command or crashes must not cost the rest of the run: when the tool prints nothing
for ``stall`` seconds or exits early, the test it was in is recorded as FAIL with why, the target
is restarted if it died, and the tool is started again on the tests still without a verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cu_output import Outcome, Verdict, parse, parse_listing
from cu_targets import Target, TgtdTarget, make_target

TOOL = "iscsi-test-cu"
INITIATOR = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test"
INITIATOR_2 = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2"
# --dataloss: the LUN is scratch, so the write tests run. Sanitize stays off (as in the tgt
# baseline); the two initiator names are the tool's defaults, spelled out so an ACL can name them.
BASE_ARGS = ("--dataloss", "-i", INITIATOR, "-I", INITIATOR_2)


@dataclass
class Report:
    target: str
    url: str
    version: str = ""
    command: str = ""
    elapsed_s: float = 0.0
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = Counter(o.verdict.value for o in self.outcomes.values())
        return {"total": len(self.outcomes), **{v.value: c.get(v.value, 0) for v in Verdict}}

    def verdicts(self) -> dict[str, str]:
        return {name: o.verdict.value for name, o in self.outcomes.items()}

    def to_json(self) -> dict[str, object]:
        return {
            "target": self.target,
            "version": self.version,
            "command": self.command,
            "elapsed_s": round(self.elapsed_s, 1),
            "counts": self.counts(),
            "results": self.verdicts(),
            "details": {n: o.detail for n, o in self.outcomes.items() if o.detail},
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Report:
        report = cls(str(data["target"]), "", str(data.get("version", "")))
        details = data.get("details", {})
        assert isinstance(details, dict)
        results = data["results"]
        assert isinstance(results, dict)
        for name, verdict in results.items():
            report.outcomes[name] = Outcome(Verdict(verdict), details.get(name, ""))
        report.elapsed_s = float(data.get("elapsed_s", 0.0))  # type: ignore[arg-type]
        return report


def suite_counts(report: Report) -> dict[str, Counter[str]]:
    suites: dict[str, Counter[str]] = {}
    for name, outcome in report.outcomes.items():
        suites.setdefault(name.split(".")[0], Counter())[outcome.verdict.value] += 1
    return suites


def list_tests() -> list[str]:
    out = subprocess.run([TOOL, "-l"], capture_output=True, text=True, check=False, timeout=60)
    names = parse_listing(out.stdout)
    if not names:
        raise RuntimeError(f"{TOOL} -l listed no tests: {out.stderr.strip()}")
    return names


def _run_tool(
    url: str, pattern: str, stall: float, workdir: Path, multipath: bool
) -> tuple[str, str]:
    """Runs the tool once; returns (transcript, why it ended early or "")."""
    cmd = [TOOL, *BASE_ARGS, "-t", pattern, url]
    if multipath:  # a second session to the same LU: the MultipathIO suite runs
        cmd.append(url)
    proc = subprocess.Popen(
        cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    chunks: list[bytes] = []
    why = ""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            if not sel.select(stall):
                why = f"no output for {stall:.0f}s (command hung?)"
                proc.kill()
                break
            data = proc.stdout.read()
            if not data:
                break
            chunks.append(data)
    rc = proc.wait(30)
    if not why and rc < 0:
        why = f"{TOOL} died of signal {-rc}"
    return b"".join(chunks).decode(errors="replace"), why


def run_suite(
    target: Target,
    tests: list[str] | None = None,
    stall: float = 60,
    log: Path | None = None,
    multipath: bool = False,
) -> Report:
    """Runs every test (or ``tests``) against a started target.

    ``multipath`` hands the tool the URL twice; the tgt baseline was measured without it, so
    the MultipathIO suite skips there.
    """
    names = tests if tests is not None else list_tests()
    report = Report(target.name, target.url)
    report.command = f"{TOOL} {' '.join(BASE_ARGS)} -t ALL {target.url}"
    if multipath:
        report.command += f" {target.url}"
    pending = list(names)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cu-run-") as tmp:
        pattern = "ALL" if tests is None else ",".join(f"ALL.{n}" for n in names)
        while pending:
            text, why = _run_tool(target.url, pattern, stall, Path(tmp), multipath)
            if log is not None:
                with open(log, "a") as f:
                    f.write(text)
            got = parse(text)
            report.outcomes.update({n: o for n, o in got.items() if n in pending})
            pending = [n for n in pending if n not in got]
            if not pending:
                break
            # The first test without a verdict is the one the tool was in when it stopped.
            culprit = pending.pop(0)
            dead = not target.alive()
            reason = why or "no verdict printed"
            if dead:
                reason = f"target died during the test; {reason}"
            report.outcomes[culprit] = Outcome(Verdict.FAIL, reason)
            report.notes.append(f"{culprit}: {reason}")
            if dead:
                report.notes.append(f"target log tail:\n{target.log_tail()}")
                target.restart()
            pattern = ",".join(f"ALL.{n}" for n in pending)
    report.elapsed_s = time.monotonic() - started
    order = {n: i for i, n in enumerate(names)}
    report.outcomes = dict(sorted(report.outcomes.items(), key=lambda kv: order[kv[0]]))
    return report


def to_markdown(report: Report) -> str:
    c = report.counts()
    lines = [
        f"## {report.target} {report.version}".rstrip(),
        "",
        f"{c['PASS']} pass, {c['FAIL']} fail, {c['SKIP']} skip of {c['total']} "
        f"in {report.elapsed_s:.0f} s (`{report.command}`)",
        "",
        "| suite | pass | fail | skip |",
        "| --- | ---: | ---: | ---: |",
    ]
    for suite, n in suite_counts(report).items():
        lines.append(f"| {suite} | {n['PASS']} | {n['FAIL']} | {n['SKIP']} |")
    lines += ["", "| test | result | detail |", "| --- | --- | --- |"]
    for name, o in report.outcomes.items():
        if o.verdict is not Verdict.PASS:
            lines.append(f"| {name} | {o.verdict.value} | {o.detail.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=["targetd", "tgt"], default="targetd")
    ap.add_argument("--url", help="run against an already-running target instead")
    ap.add_argument("--config", type=Path, help="targetd config file (a small LUN is faster)")
    ap.add_argument("-t", "--tests", help="comma-separated Suite.Test names (default: all)")
    ap.add_argument("--stall", type=float, default=60, help="seconds without output = hung")
    ap.add_argument("--json", type=Path, help="write the per-test report here")
    ap.add_argument("--markdown", type=Path, help="write a markdown summary here")
    ap.add_argument("--log", type=Path, help="append the tool's transcript here")
    ap.add_argument("--multipath", action="store_true", help="give the URL twice (MultipathIO)")
    args = ap.parse_args(argv)
    tests = args.tests.split(",") if args.tests else None

    if args.url:
        target: Target = Target()
        target.name, target.url = "external", args.url
        target.alive = lambda: True  # type: ignore[method-assign]
        report = run_suite(target, tests, args.stall, args.log, args.multipath)
    else:
        with make_target(args.target, args.config) as target:
            report = run_suite(target, tests, args.stall, args.log, args.multipath)
            if isinstance(target, TgtdTarget):
                report.version = TgtdTarget.version()
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(to_markdown(report))
    c = report.counts()
    print(
        f"{report.target}: {c['PASS']} passed, {c['FAIL']} failed, {c['SKIP']} skipped "
        f"of {c['total']} in {report.elapsed_s:.0f}s"
    )
    for name, o in report.outcomes.items():
        if o.verdict is Verdict.FAIL:
            print(f"  FAIL {name}: {o.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
