"""The conformance subset that depends on one process owning a LU's state, run against a
worker process behind the portal's login redirect (docs/workers.md): reservations (SPC-2
and persistent), unit attentions, task management, multipath over two sessions, the copy
manager. Every
test must end as it does against a single process (expected.toml)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

from cu_runner import list_tests, run_suite, to_markdown  # noqa: E402
from cu_targets import TargetdTarget  # noqa: E402
from test_conformance import compare, load_expected  # noqa: E402

pytestmark = [
    pytest.mark.conformance,
    pytest.mark.timeout(600),
    pytest.mark.skipif(shutil.which("iscsi-test-cu") is None, reason="libiscsi-bin not installed"),
]

# Suites whose verdict rests on state a process owns.
SUITES = (
    "Prin", "Prout", "Reserve6", "TestUnitReady", "MultipathIO", "iSCSITMF", "Inquiry",
    "ExtendedCopy", "ReceiveCopyResults", "CompareAndWrite",
)  # fmt: skip
# This test reconnects after its LUN reset; behind the portal's redirect libiscsi 1.19
# then aborts inside iscsi-test-cu ("malloc(): smallbin double linked list corrupted"),
# which also ends the tests after it. iscsi-perf's reconnect through the redirect works
# (docs/workers.md, "Limits").
LIBISCSI_RECONNECT = ("iSCSITMF.LUNResetSimpleAsync",)
# Another target first: the conformance target is then served by worker 1, not worker 0.
OTHER = """
[server]
workers = 2

[[target]]
name = "iqn.2026-11.org.targetd:other"
[[target.lun]]
lun = 0
path = "other-lun0.img"
size = "16MiB"

"""


def test_reservation_and_unit_attention_suites_against_a_worker(tmp_path: Path) -> None:
    config = tmp_path / "workers.toml"
    config.write_text(OTHER + (HERE / "targetd-conformance.toml").read_text())
    tests = [n for n in list_tests() if n.split(".")[0].startswith(SUITES)
             and n not in LIBISCSI_RECONNECT]  # fmt: skip
    assert len(tests) > 40, tests
    fail, skip = load_expected()
    with TargetdTarget(config=config, workdir=tmp_path) as target:
        report = run_suite(target, tests, log=tmp_path / "iscsi-test-cu.log", multipath=True)
    print(to_markdown(report))
    fail = {k: v for k, v in fail.items() if k in tests}
    problems = compare(report, fail, skip)
    assert not problems, "\n".join(problems)
    assert "redirected to 127.0.0.1:" in target.log_path.read_text()
