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
from ceph_fixtures import ImageFactory, rbd_lun_toml, target_toml
from cluster import CephCluster
from cu_runner import list_tests, run_suite, to_markdown
from cu_targets import TARGETD_IQN, Target, TargetdTarget
from gateways import IQN, ConfigDaemon, PairFactory, gateway_pair
from raw_initiator import RawInitiator
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


PR_SUITES = ("PrinReadKeys", "PrinServiceactionRange", "PrinReportCapabilities",
             "ProutRegister", "ProutReserve", "ProutClear", "ProutPreempt")  # fmt: skip
WITNESS = "iqn.2026-11.org.targetd.test:aptpl-witness"
WITNESS_KEY = 0x5EED_0000_0000_0001


def _witness(port: int, register: bool, iqn: str = TARGETD_IQN) -> list[int]:
    """The keys registered (read by a third initiator), after it registered its own with
    APTPL if ``register``."""
    ini = RawInitiator(port, name=WITNESS)
    assert ini.login(iqn).bhs[36:38] == b"\0\0"
    ini.clear_unit_attentions()
    if register:
        params = bytes(8) + WITNESS_KEY.to_bytes(8, "big") + bytes([0, 0, 0, 0, 1, 0, 0, 0])
        assert ini.command(bytes([0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0]), data=params)[0] == 0
    status, data, _ = ini.command(bytes([0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0]), read=256)
    ini.close()
    assert status == 0
    return [int.from_bytes(data[i : i + 8], "big") for i in range(8, len(data), 8)]


def test_persistent_reservation_suites_on_an_rbd_lun_across_a_restart_with_aptpl(
    ceph_cluster: CephCluster, new_image: ImageFactory, tmp_path: Path
) -> None:
    """libiscsi's persistent reservation suites against an RBD LUN (reservations in the
    cluster), then an APTPL registration, a restart of the gateway (alone: a power cycle
    of the LU), and the suites again: every test passes both times, as on a file LUN."""
    fail, skip = load_expected()
    names = [n for n in list_tests() if n.split(".")[0] in PR_SUITES]
    assert len(names) >= 20
    config = tmp_path / "rbd-pr.toml"
    lun = rbd_lun_toml(ceph_cluster, new_image(create=False), create_size="64MiB")
    config.write_text(target_toml(lun, iqn=TARGETD_IQN))
    with TargetdTarget(config=config, workdir=tmp_path) as target:
        for run in ("before", "after"):
            report = run_suite(target, tests=names, log=tmp_path / f"cu-{run}.log")
            c = report.counts()
            print(f"{run} the restart: {c['PASS']} passed, {c['FAIL']} failed of {c['total']}")
            problems = compare(report, fail, skip)
            assert not problems, "\n".join(problems)
            assert c["PASS"] == len(names)
            if run == "before":
                assert _witness(target.port, register=True) == [WITNESS_KEY]
                target.restart()
                assert _witness(target.port, register=False) == [WITNESS_KEY]


class GatewayTarget(Target):
    """One gateway of a pair (tests/ceph/gateways.py), as the conformance runner's target."""

    def __init__(self, gateway: ConfigDaemon) -> None:
        self.gateway = gateway
        self.name = "targetd gateway"
        self.url = gateway.url(0)
        self.log_path = gateway.log

    def start(self) -> None:
        self.gateway.start()

    def stop(self) -> None:
        self.gateway.stop()

    def alive(self) -> bool:
        proc = self.gateway.proc
        return proc is not None and proc.poll() is None


def test_persistent_reservation_suites_through_two_gateways_across_a_power_cycle(
    new_image: ImageFactory, gateway_pair: PairFactory, tmp_path: Path
) -> None:
    """The same suites against two gateways on one image: run through A, an APTPL
    registration made through A, both gateways stopped and started (the LU's power cycle),
    then the suites run through B: every test passes both times and the registration is
    seen through B. (unit_attention = false: the suites do not retry the unit attention the
    first write's lock move raises.)"""
    fail, skip = load_expected()
    names = [n for n in list_tests() if n.split(".")[0] in PR_SUITES]
    pair = gateway_pair(new_image("64M"), unit_attention=False)
    for run, gateway in (("before", pair.a), ("after", pair.b)):
        report = run_suite(GatewayTarget(gateway), tests=names, log=tmp_path / f"cu-{run}.log")
        c = report.counts()
        print(f"through {run} the power cycle: {c['PASS']} passed of {c['total']}")
        problems = compare(report, fail, skip)
        assert not problems, "\n".join(problems)
        assert c["PASS"] == len(names)
        if run == "before":
            assert _witness(pair.a.port, register=True, iqn=IQN) == [WITNESS_KEY]
            for daemon in (pair.a, pair.b):
                daemon.stop()
            for daemon in (pair.b, pair.a):
                daemon.start()
            assert _witness(pair.b.port, register=False, iqn=IQN) == [WITNESS_KEY]
