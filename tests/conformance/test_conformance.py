"""The conformance tier: libiscsi's iscsi-test-cu, every test, against a real targetd.

A test that fails must be listed in expected.toml with its reason, and a listed test that no
longer fails must leave the list, so the list (and docs/conformance.md) stays true.
Run with ``python3 -m pytest -m conformance tests/conformance``.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

from cu_output import Verdict  # noqa: E402
from cu_runner import Report, run_suite, to_markdown  # noqa: E402
from cu_targets import TargetdTarget  # noqa: E402

pytestmark = [
    pytest.mark.conformance,
    pytest.mark.timeout(900),
    pytest.mark.skipif(shutil.which("iscsi-test-cu") is None, reason="libiscsi-bin not installed"),
]


def load_expected() -> tuple[dict[str, str], dict[str, str]]:
    data = tomllib.loads((HERE / "expected.toml").read_text())
    return dict(data.get("fail", {})), dict(data.get("skip", {}))


def compare(report: Report, fail: dict[str, str], skip: dict[str, str]) -> list[str]:
    """Every way the run disagrees with expected.toml, one line each."""
    problems = []
    for name, outcome in report.outcomes.items():
        if outcome.verdict is Verdict.FAIL and name not in fail:
            problems.append(f"new failure {name}: {outcome.detail}")
    for name in fail:
        got = report.outcomes.get(name)
        if got is None:
            problems.append(f"expected.toml [fail] names {name}, which the tool does not list")
        elif got.verdict is not Verdict.FAIL:
            problems.append(f"{name} now {got.verdict.value}: remove it from expected.toml [fail]")
    for name in skip:
        got = report.outcomes.get(name)
        if got is not None and got.verdict is Verdict.PASS:
            problems.append(f"{name} now PASS: remove it from expected.toml [skip]")
    for name, outcome in report.outcomes.items():
        if outcome.verdict is Verdict.SKIP and name not in skip:
            problems.append(f"new skip {name}: {outcome.detail} (list it in [skip] with why)")
    return problems


def test_iscsi_test_cu_against_targetd(tmp_path: Path) -> None:
    fail, skip = load_expected()
    with TargetdTarget(config=HERE / "targetd-conformance.toml", workdir=tmp_path) as target:
        report = run_suite(target, log=tmp_path / "iscsi-test-cu.log", multipath=True)
    (tmp_path / "report.json").write_text(json.dumps(report.to_json(), indent=1))
    print(to_markdown(report))
    c = report.counts()
    print(f"targetd: {c['PASS']} passed, {c['FAIL']} failed, {c['SKIP']} skipped of {c['total']}")
    problems = compare(report, fail, skip)
    assert not problems, "\n".join(problems)
