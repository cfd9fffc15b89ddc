"""A gateway stops quickly when its Ceph cluster is gone (targetd/stopping.py,
docs/operations.md "Signals"). Every librbd and librados call is bounded, but a stop makes
many of them (the flush, the lock's release, the watches, the reservation record, the image
close): with the monitor and the OSD dead, a gateway pair took 136 s to exit on SIGTERM,
and once more than 7 minutes; bounded at 40 s, both still took the whole 40 s (the holder's
flush waited for a write in flight, 30 s, then its lock release; the other's flush timed
out, 30 s, and a watch renewal begun before the stop held its lock work) and exited 1.

With ``cache = "none"`` nothing acknowledged depends on those steps: each is waited for 5 s
at most, then the LU is left to its cluster with one log line that says what was not done
and that nothing is at risk, and the daemon exits 0. With a librbd cache the flush guards
acknowledged writes: it is waited for up to the bound, and the log names what is at risk.

This module runs its own clusters: it kills their monitor and OSD."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ceph_fixtures import rbd_lun_toml, target_toml
from cluster import CephCluster, ClusterError
from conftest import Daemon, free_port, report_daemons
from gateways import IQN, ConfigDaemon, gateway_toml
from raw_initiator import RawInitiator

GOOD = 0x00
LUN = f"{IQN}/lun0"
LEFT = 'event="cluster work not done at stop"'


@pytest.fixture
def doomed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    try:
        cluster = CephCluster(tmp_path_factory.mktemp("ceph-doomed")).start()
    except ClusterError as exc:
        pytest.fail(f"cannot start the test cluster: {exc}", pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture
def daemons(request: pytest.FixtureRequest) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    report_daemons(request.node, started)
    yield started
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


@pytest.fixture
def pair(
    doomed_cluster: CephCluster, tmp_path: Path, daemons: list[Daemon]
) -> tuple[ConfigDaemon, ConfigDaemon]:
    doomed_cluster.rbd("create", "--size", "16M", f"{doomed_cluster.pool}/img")
    ports = free_port(), free_port()
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
    return daemons[0], daemons[1]  # type: ignore[return-value]


def stop_all(gateways: tuple[Daemon, ...], bound: float) -> dict[str, float]:
    """SIGTERM to each at once; how long each took to exit."""
    started = time.monotonic()
    for gateway in gateways:
        assert gateway.proc is not None
        os.kill(gateway.proc.pid, signal.SIGTERM)
    took = {}
    for gateway in gateways:
        assert gateway.proc is not None
        try:
            gateway.proc.wait(bound + 10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{gateway.log.name} still running {bound + 10:g} s after SIGTERM")
        took[gateway.log.name] = time.monotonic() - started
    return took


def test_gateways_whose_cluster_is_gone_stop_in_seconds_saying_what_they_left(
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
    took = stop_all((a, b), 40)
    for gateway in (a, b):
        log = gateway.stderr
        assert gateway.proc is not None and gateway.proc.returncode == 0, log
        assert 'event="stop abandoned"' not in log, log
        # The drain (2 s, the write in flight), each step waited for 5 s at most, and the
        # pairs' records (their reads wait out their timeout). Before: 40 s, the bound.
        assert took[gateway.log.name] < 20, took
        # One line says what was not done, and that nothing acknowledged is at risk.
        lines = [x for x in log.splitlines() if LEFT in x]
        assert len(lines) == 1, log
        assert re.search(rf"lu={re.escape(LUN)} ", lines[0]), lines[0]
        # The holder's flush may end (its write in flight failed) or be given up.
        assert re.search(r'not_done="(flush, )?lock release, close"', lines[0]), lines[0]
        assert 'at_risk="nothing (cache none: the cluster holds every acknowledged' in lines[0]
        assert "flush failed at shutdown" not in log, log
        # A watch renewal that failed after the stop cancelled it is logged, not left to
        # asyncio ("Future exception was never retrieved ... creating the gateway object").
        assert "never retrieved" not in log, log
    host.close()
    other.close()


def test_a_write_back_lu_whose_cluster_is_gone_waits_for_its_flush_and_names_what_is_at_risk(
    doomed_cluster: CephCluster,
    tmp_path: Path,
    daemons: list[Daemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With librbd's write-back cache, the flush at stop guards acknowledged writes: it is
    not given up after 5 s like a cache-none LU's steps; the stop waits for it up to the
    bound (12 s here), then says which LU's writes are at risk and exits 1."""
    iqn = "iqn.2026-11.org.targetd:rbd"
    doomed_cluster.rbd("create", "--size", "16M", f"{doomed_cluster.pool}/wb")
    monkeypatch.setenv("TARGETD_STOP_SECONDS", "12")
    config = tmp_path / "wb.toml"
    config.write_text(target_toml(rbd_lun_toml(doomed_cluster, "wb", cache="writeback")))
    (tmp_path / "wb-state").mkdir()
    daemon = Daemon(free_port(), tmp_path / "wb-state", config, iqn, tmp_path / "wb.log")
    daemons.append(daemon)
    daemon.start()
    host = RawInitiator(daemon.port, name="iqn.2026-11.org.test:host")
    host.login(iqn)
    host.clear_unit_attentions()
    assert host.command(bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0]), data=b"\x11" * 512)[0] == GOOD
    assert host.command(bytes([0x35]) + bytes(9))[0] == GOOD  # SYNCHRONIZE CACHE: durable
    doomed_cluster.kill_osd()
    doomed_cluster.kill_mon()
    # Acknowledged from librbd's cache: only a flush would put it in the cluster.
    assert host.command(bytes([0x2A, 0, 0, 0, 0, 8, 0, 0, 1, 0]), data=b"\x22" * 512)[0] == GOOD
    took = stop_all((daemon,), 12)[daemon.log.name]
    log = daemon.stderr
    assert daemon.proc is not None and daemon.proc.returncode == 1, log
    assert LEFT not in log, log  # its flush was not given up
    assert 12 <= took < 17, took
    line = next(x for x in log.splitlines() if 'event="stop abandoned"' in x)
    assert f'waiting_for="flushing: flush of {iqn}/lun0"' in line, line
    assert (
        f"at_risk=\"{iqn}/lun0: writes acknowledged from librbd's cache (cache writeback)"
        ' and not flushed since the last SYNCHRONIZE CACHE or FUA write"' in line
    ), line
    host.close()


def gateway_object(cluster: CephCluster, image: str, *args: str) -> str:
    """``rados ARGS`` on the image's gateway object."""
    info = json.loads(cluster.rbd("info", "--format", "json", f"{cluster.pool}/{image}"))
    return cluster._run("rados", "-c", str(cluster.conf), "-p", cluster.pool, args[0],
                        f"targetd.gateway.{info['id']}", *args[1:])  # fmt: skip


def test_a_renewal_of_the_gateway_watch_writes_nothing(
    doomed_cluster: CephCluster, pair: tuple[ConfigDaemon, ConfigDaemon], tmp_path: Path
) -> None:
    """A gateway whose watch of the gateway object was lost watches it again without
    writing the object first (it rewrote it, empty, at every try: with the cluster out of
    reach, each write waited out osd_op_timeout before the watch was even tried, and a stop
    waited for that renewal). Bytes put in the object are still there after the renewals."""
    a, b = pair
    marker = tmp_path / "marker"
    marker.write_bytes(b"still here")
    gateway_object(doomed_cluster, "img", "append", str(marker))
    # The OSD frozen past osd_client_watch_timeout (5 s here): it expires the watches as
    # it wakes, and each gateway learns so at its next ping (unless the OSD handled the
    # pings queued meanwhile first: then freeze it again).
    osd = doomed_cluster.procs["osd.0"]
    renewed = 'event="gateway watching again"'
    for _ in range(4):
        if all(renewed in gateway.stderr for gateway in (a, b)):
            break
        os.kill(osd.pid, signal.SIGSTOP)
        try:
            time.sleep(7)
        finally:
            os.kill(osd.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while not all(renewed in g.stderr for g in (a, b)) and time.monotonic() < deadline:
            time.sleep(0.1)
    for gateway in (a, b):
        assert renewed in gateway.stderr, gateway.stderr
        assert 'event="gateway watch lost"' in gateway.stderr
    got = tmp_path / "got"
    gateway_object(doomed_cluster, "img", "get", str(got))
    assert got.read_bytes() == b"still here"
