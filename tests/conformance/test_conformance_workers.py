"""libiscsi's whole iscsi-test-cu suite against a target served by a worker process behind
the portal's login redirect (docs/workers.md): every test must end as it does against a
single process (expected.toml): reservations, unit attentions, task management, multipath
over two sessions, the copy manager, all in the worker that owns the LU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

from cu_runner import run_suite, to_markdown  # noqa: E402
from cu_targets import TargetdTarget  # noqa: E402
from test_conformance import compare, load_expected  # noqa: E402

pytestmark = [
    pytest.mark.conformance,
    pytest.mark.timeout(900),
    pytest.mark.skipif(shutil.which("iscsi-test-cu") is None, reason="libiscsi-bin not installed"),
]

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


def test_iscsi_test_cu_against_a_worker(tmp_path: Path) -> None:
    config = tmp_path / "workers.toml"
    config.write_text(OTHER + (HERE / "targetd-conformance.toml").read_text())
    fail, skip = load_expected()
    with TargetdTarget(config=config, workdir=tmp_path) as target:
        report = run_suite(target, log=tmp_path / "iscsi-test-cu.log", multipath=True)
    (tmp_path / "report.json").write_text(json.dumps(report.to_json(), indent=1))
    print(to_markdown(report))
    problems = compare(report, fail, skip)
    assert not problems, "\n".join(problems)
    log = target.log_path.read_text()
    assert 'reason="redirected to 127.0.0.1:' in log  # every login went through the portal
    assert "worker=1 event=login" in log  # at the conformance target's worker
    assert "worker=0 event=login" not in log  # and none at the other target's
