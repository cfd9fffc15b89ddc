"""Reads the verbose (``-v``) console output of libiscsi's ``iscsi-test-cu``.

CUnit reports a test that skipped itself as *passed*: libiscsi marks a skip only by printing a
``[SKIPPED] why`` line inside the test before it returns. The XML mode (``-x``) loses those
lines, so this reads the console transcript instead, where each test looks like::

    Suite: GetLBAStatus
      Test: Simple ...passed
      Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful but should have failed ...
    FAILED
        1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
      Test: UnmapSingle ...    [SKIPPED] Logical unit is fully provisioned. Skipping test
    passed

The verdict word stands either right after ``...`` or at the start of a line. Text that follows
a verdict on the same line comes from the suite's teardown or the next test's setup, not from the
test just judged, so it is not counted against that test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum


class Verdict(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(slots=True)
class Outcome:
    verdict: Verdict
    # The first [FAILED]/[SKIPPED] message, else the first CUnit assertion line; "" for a pass.
    detail: str = ""
    transcript: list[str] = field(default_factory=list)


_SUITE = re.compile(r"^Suite: (?P<suite>\S+)")
_TEST = re.compile(r"^  Test: (?P<test>\S+) \.\.\.(?P<rest>.*)$")
_VERDICT = re.compile(r"^(?P<word>passed|FAILED)(?P<rest>.*)$")
_ASSERTION = re.compile(r"^\s+\d+\. (?P<where>\S+:\d+)\s+- (?P<what>.*)$")
_MARK = re.compile(r"\[(?P<kind>FAILED|SKIPPED)\]\s*(?P<msg>.*)")


def _judge(passed: bool, lines: list[str], assertions: list[str]) -> Outcome:
    marks = [m for line in lines if (m := _MARK.search(line))]
    if not passed:
        failed = [m.group("msg").strip() for m in marks if m.group("kind") == "FAILED"]
        detail = failed[0] if failed else (assertions[0] if assertions else "FAILED")
        return Outcome(Verdict.FAIL, detail, lines + assertions)
    skipped = [m.group("msg").strip() for m in marks if m.group("kind") == "SKIPPED"]
    if skipped:
        return Outcome(Verdict.SKIP, skipped[0], lines)
    return Outcome(Verdict.PASS, "", lines)


def parse(text: str) -> dict[str, Outcome]:
    """Maps ``Suite.Test`` to its outcome for every test that reached a verdict."""
    results: dict[str, Outcome] = {}
    suite = ""
    current: str | None = None  # test started, verdict not yet seen
    lines: list[str] = []
    judged: str | None = None  # last judged test, which owns the assertion lines after FAILED
    for line in text.splitlines():
        header = _SUITE.match(line) or _TEST.match(line)
        if header and current is not None:
            # The tool went on without printing a verdict (seen after Sanitize.ExitFailureMode):
            # CUnit always prints FAILED for a failed test, so this one did not fail.
            results[current] = _judge(True, lines, [])
        if m := _SUITE.match(line):
            suite, current, judged = m.group("suite"), None, None
            continue
        if m := _TEST.match(line):
            current, judged = f"{suite}.{m.group('test')}", None
            rest = m.group("rest")
            lines = []
            verdict = _VERDICT.match(rest)
            if verdict is None:
                lines.append(rest)
                continue
            line = rest  # "...passed" on the test line itself
        if current is not None and (verdict := _VERDICT.match(line)):
            results[current] = _judge(verdict.group("word") == "passed", lines, [])
            judged, current = current, None
            continue
        if current is not None:
            lines.append(line)
        elif judged is not None and (a := _ASSERTION.match(line)):
            outcome = results[judged]
            if outcome.verdict is Verdict.FAIL and outcome.detail == "FAILED":
                outcome.detail = f"{a.group('where')} {a.group('what')}"
            outcome.transcript.append(line)
    return results


def parse_listing(text: str) -> list[str]:
    """Test names (``Suite.Test``) from ``iscsi-test-cu -l``, in run order."""
    names = []
    for line in text.splitlines():
        parts = line.strip().split(".")
        if len(parts) == 3 and parts[0] == "ALL":
            names.append(f"{parts[1]}.{parts[2]}")
    return names
