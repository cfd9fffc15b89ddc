"""A gateway stops within a bound when its Ceph cluster is gone (targetd/stopping.py,
docs/operations.md "Signals"). Every librbd and librados call is bounded, but a stop makes
many of them (the flush, the lock's release, the watches, the reservation record, the image
close): with the monitor and the OSD dead, a gateway pair took 136 s to exit on SIGTERM, and
once more than 7 minutes. Now each LU's closes run side by side off the event loop, and what
has not ended by ``STOP_SECONDS`` is named in the log and abandoned.

This module runs its own cluster: it kills the monitor."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import CephCluster, ClusterError
from conftest import free_port, report_daemons
from gateways import IQN, ConfigDaemon, gateway_toml
from raw_initiator import RawInitiator

from targetd.stopping import STOP_SECONDS

GOOD = 0x00
LUN = f"{IQN}/lun0"


@pytest.fixture(scope="module")
def doomed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    try:
        cluster = CephCluster(tmp_path_factory.mktemp("ceph-doomed")).start()
    except ClusterError as exc:
        pytest.fail(f"cannot start the test cluster: {exc}", pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture
def pair(
    doomed_cluster: CephCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[ConfigDaemon, ConfigDaemon]]:
    doomed_cluster.rbd("create", "--size", "16M", f"{doomed_cluster.pool}/img")
    ports = free_port(), free_port()
    daemons: list[ConfigDaemon] = []
    report_daemons(request.node, daemons)
    for name, (port, peer), tpgt in (("a", ports, 1), ("b", ports[::-1], 2)):
        config = tmp_path / f"{name}.toml"
        config.write_text(gateway_toml(doomed_cluster, "img", port=port, tpgt=tpgt,
                                       peer_port=peer, peer_tpgt=3 - tpgt, hold_ms=1000,
                                       takeover_ms=3000))  # fmt: skip
        (tmp_path / f"{name}-state").mkdir()
        daemons.append(ConfigDaemon(port, tmp_path / f"{name}-state", config, IQN,
                                    tmp_path / f"{name}.log"))  # fmt: skip
    for daemon in daemons:
        daemon.start()
    yield daemons[0], daemons[1]
    for daemon in daemons:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


def test_a_gateway_whose_cluster_is_gone_stops_within_the_bound_naming_what_it_abandoned(
    doomed_cluster: CephCluster, pair: tuple[ConfigDaemon, ConfigDaemon]
) -> None:
    a, b = pair
    host = RawInitiator(a.port, name="iqn.2026-11.org.test:host")
    host.login(IQN)
    host.clear_unit_attentions()
    register = bytes([0x5F, 0, 0, 0, 0]) + (24).to_bytes(4, "big") + bytes(1)
    assert host.command(register, data=bytes(8) + (7).to_bytes(8, "big") + bytes(8))[0] == GOOD
    assert host.command(bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0]), data=b"\x11" * 512)[0] == GOOD
    other = RawInitiator(b.port, name="iqn.2026-11.org.test:host")
    other.login(IQN)
    doomed_cluster.kill_osd()
    doomed_cluster.kill_mon()
    # A write in flight when the stop comes: librbd holds it for osd_op_timeout (30 s).
    late = bytes([0x2A, 0, 0, 0, 0, 8, 0, 0, 1, 0])
    host.send(host.scsi_header(late, write=512, data_len=512), b"\x22" * 512)
    time.sleep(0.5)
    started = time.monotonic()
    for gateway in (a, b):
        assert gateway.proc is not None
        os.kill(gateway.proc.pid, signal.SIGTERM)
    took = {}
    for gateway in (a, b):
        assert gateway.proc is not None
        try:
            gateway.proc.wait(STOP_SECONDS + 10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{gateway.log.name} still running {STOP_SECONDS + 10:g} s after SIGTERM")
        took[gateway.log.name] = time.monotonic() - started
    for gateway in (a, b):
        log = gateway.stderr
        assert took[gateway.log.name] < STOP_SECONDS + 5, took
        if 'event="stop abandoned"' in log:
            # What it still waited for: the stage, and the LU whose cluster calls hang.
            line = next(x for x in log.splitlines() if 'event="stop abandoned"' in x)
            assert re.search(rf'waiting_for="[^"]*of {re.escape(LUN)}', line), line
            assert gateway.proc is not None and gateway.proc.returncode == 1
        else:
            assert "event=stopped" in log, log
        # A watch renewal that failed after the stop cancelled it is logged, not left to
        # asyncio ("Future exception was never retrieved ... creating the gateway object").
        assert "never retrieved" not in log, log
    # The holder had a flush and a lock release to make with no cluster: it gave up.
    assert 'event="stop abandoned"' in a.stderr, a.stderr
    host.close()
    other.close()
