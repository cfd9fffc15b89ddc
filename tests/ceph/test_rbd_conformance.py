"""libiscsi's iscsi-test-cu against an RBD LUN: the same verdicts as against a file LUN.

The expected failures and skips are the file LUN's (tests/conformance/expected.toml), so a
test that passes on a sparse file and not on RBD fails here.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from ceph_fixtures import ImageFactory, ceph_cluster, new_image, rbd_lun_toml, target_toml
from cluster import CephCluster
from cu_runner import run_suite, to_markdown
from cu_targets import TARGETD_IQN, TargetdTarget
from test_conformance import compare, load_expected

pytestmark = [
    pytest.mark.conformance,
    pytest.mark.timeout(900),
    pytest.mark.skipif(shutil.which("iscsi-test-cu") is None, reason="libiscsi-bin not installed"),
]


def test_iscsi_test_cu_against_an_rbd_lun(
    ceph_cluster: CephCluster, new_image: ImageFactory, tmp_path: Path
) -> None:
    fail, skip = load_expected()
    config = tmp_path / "rbd-conformance.toml"
    lun = rbd_lun_toml(ceph_cluster, new_image(create=False), create_size="128MiB")
    config.write_text(target_toml(lun, iqn=TARGETD_IQN))
    with TargetdTarget(config=config, workdir=tmp_path) as target:
        report = run_suite(target, log=tmp_path / "iscsi-test-cu.log", multipath=True)
    (tmp_path / "report.json").write_text(json.dumps(report.to_json(), indent=1))
    print(to_markdown(report))
    c = report.counts()
    print(f"targetd on RBD: {c['PASS']} passed, {c['FAIL']} failed, {c['SKIP']} skipped")
    problems = compare(report, fail, skip)
    assert not problems, "\n".join(problems)
