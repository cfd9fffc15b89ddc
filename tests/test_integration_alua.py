"""ALUA against a real daemon with two portals on 127.0.0.1, one per target port group:
REPORT TARGET PORT GROUPS, VPD 83h per path, NOT READY through a standby port, and the
unit attention a SIGHUP that changes the states raises on every path (docs/alua.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, free_port
from raw_initiator import RawInitiator

from scsi.sense import parse_sense

IQN = "iqn.2026-11.org.targetd.test:alua"
TUR = bytes(6)
READ10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0])
INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])
VPD83 = bytes([0x12, 1, 0x83, 0, 255, 0])
RTPG = bytes([0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])


class TwoPortalDaemon(Daemon):
    """Listens where its configuration says (the fixture's --listen would keep one portal)."""

    def command(self) -> list[str]:
        return [*super().command()[:4], "--state-dir", str(self.state_dir),
                "--config", str(self.config)]  # fmt: skip


def config(p1: int, p2: int, state1: str, state2: str) -> str:
    return f"""
[[portal]]
listen = "127.0.0.1:{p1}"
tpgt = 1
port_group = 1

[[portal]]
listen = "127.0.0.1:{p2}"
tpgt = 2
port_group = 2

[[port_group]]
id = 1
state = "{state1}"
preferred = true

[[port_group]]
id = 2
state = "{state2}"

[[target]]
name = "{IQN}"
[[target.lun]]
lun = 0
size = "8MiB"
"""


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[tuple[TwoPortalDaemon, int, int]]:
    p1, p2 = free_port(), free_port()
    path = tmp_path / "targetd.toml"
    path.write_text(config(p1, p2, "active/optimized", "standby"))
    daemon = TwoPortalDaemon(p1, tmp_path / "state", path, IQN, tmp_path / "targetd.log")
    daemon.start()
    yield daemon, p1, p2
    daemon.stop()


def login(port: int, host: str) -> RawInitiator:
    ini = RawInitiator(port, name=f"iqn.2026-11.org.targetd.test:{host}")
    assert ini.login(IQN).bhs[36:38] == b"\0\0"
    return ini


def sense_of(answer: tuple[int, bytes, bytes]) -> tuple[int, tuple[int, int, int] | None]:
    status, _, sense = answer
    return status, (parse_sense(sense) if sense else None)


def test_rtpg_and_vpd_83_name_each_path_s_port_and_group(
    paths: tuple[TwoPortalDaemon, int, int],
) -> None:
    _, p1, p2 = paths
    one, two = login(p1, "one"), login(p2, "two")
    expected = (
        (24).to_bytes(4, "big")
        + bytes([0x80, 0x8F, 0, 1, 0, 0x02, 0, 1, 0, 0, 0, 1])  # preferred, active/optimized
        + bytes([0x02, 0x8F, 0, 2, 0, 0x02, 0, 1, 0, 0, 0, 2])  # standby
    )
    for ini in (one, two):
        assert sense_of(ini.command(RTPG, read=256))[1] == (6, 0x29, 0x00)  # RTPG gets UAs
        status, data, _ = ini.command(RTPG, read=256)
        assert (status, data) == (0, expected)
        status, data, _ = ini.command(INQUIRY, read=96)
        assert status == 0 and data[5] & 0x30 == 0x10  # TPGS 01b: implicit ALUA
    for ini, port in ((one, 1), (two, 2)):
        status, page, _ = ini.command(VPD83, read=255)
        assert status == 0
        assert bytes([0x51, 0x94, 0, 4, 0, 0, 0, port]) in page  # relative target port
        assert bytes([0x51, 0x95, 0, 4, 0, 0, 0, port]) in page  # target port group


def test_standby_path_is_not_ready_for_media_access(
    paths: tuple[TwoPortalDaemon, int, int],
) -> None:
    _, p1, p2 = paths
    one, two = login(p1, "one"), login(p2, "two")
    one.clear_unit_attentions()
    assert sense_of(two.command(TUR)) == (2, (6, 0x29, 0x00))  # the power-on UA comes first
    assert sense_of(two.command(TUR)) == (2, (2, 0x04, 0x0B))
    assert sense_of(two.command(READ10, read=512)) == (2, (2, 0x04, 0x0B))
    assert sense_of(two.command(bytes([0x25]) + bytes(9), read=8)) == (0, None)  # READ CAPACITY
    assert sense_of(one.command(READ10, read=512)) == (0, None)


def reload_states(daemon: Daemon, p1: int, p2: int, state1: str, state2: str, count: int) -> None:
    """Write new states, SIGHUP, wait for the ``count``-th "updated" line in the log."""
    assert daemon.config is not None and daemon.proc is not None
    daemon.config.write_text(config(p1, p2, state1, state2))
    os.kill(daemon.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    marker = "ALUA port group states updated"
    while daemon.stderr.count(marker) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.stderr.count(marker) == count, daemon.stderr


def test_sighup_flips_states_with_a_unit_attention_on_every_path(
    paths: tuple[TwoPortalDaemon, int, int],
) -> None:
    daemon, p1, p2 = paths
    one, two = login(p1, "one"), login(p2, "two")
    one.clear_unit_attentions()
    two.command(TUR)  # power-on UA
    assert daemon.config is not None and daemon.proc is not None

    def reload(state1: str, state2: str, count: int) -> None:
        reload_states(daemon, p1, p2, state1, state2, count)

    reload("standby", "active/optimized", 1)
    changed = (2, (6, 0x2A, 0x06))
    assert sense_of(one.command(TUR)) == changed
    assert sense_of(one.command(READ10, read=512)) == (2, (2, 0x04, 0x0B))
    assert sense_of(two.command(READ10, read=512)) == changed
    assert sense_of(two.command(READ10, read=512)) == (0, None)
    status, data, _ = two.command(RTPG, read=256)
    assert status == 0 and (data[4], data[16]) == (0x82, 0x00)

    reload("unavailable", "transitioning", 2)
    assert sense_of(one.command(TUR)) == changed
    assert sense_of(one.command(TUR)) == (2, (2, 0x04, 0x0C))
    assert sense_of(two.command(TUR)) == changed
    assert sense_of(two.command(TUR)) == (2, (2, 0x04, 0x0A))


def iscsi_inq(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    url = f"iscsi://127.0.0.1:{port}/{IQN}/0"
    return subprocess.run(
        ["iscsi-inq", *args, url],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=30,
        check=False,
    )


def test_libiscsi_tools_see_tpgs_and_are_refused_on_the_standby_path(
    paths: tuple[TwoPortalDaemon, int, int],
) -> None:
    """libiscsi's own decoder: TPGS 1 and the group designator through the active path;
    its connect (a TEST UNIT READY after login) meets the standby NOT READY on the other."""
    _, p1, p2 = paths
    assert "TPGS:1" in iscsi_inq(p1).stdout
    page = iscsi_inq(p1, "-e", "1", "-c", "131").stdout
    assert "Designator Type:(5) TARGET_PORT_GROUP" in page, page
    assert "Designator Type:(4) RELATIVE_TARGET_PORT" in page, page
    refused = iscsi_inq(p2)
    assert refused.returncode != 0
    assert "NOT READY(2)" in refused.stderr + refused.stdout
    assert "0x040b" in refused.stderr + refused.stdout


def test_libiscsi_multipath_suite_over_the_two_ports(
    paths: tuple[TwoPortalDaemon, int, int],
) -> None:
    """libiscsi's MultipathIO suite (writes through one path read through the other, LU
    reset seen on both, COMPARE AND WRITE from both) with the second port's group made
    active/non-optimized: iscsi-test-cu first checks both paths name one LU in VPD 83h."""
    daemon, p1, p2 = paths
    reload_states(daemon, p1, p2, "active/optimized", "active/non-optimized", 1)
    urls = [f"iscsi://127.0.0.1:{port}/{IQN}/0" for port in (p1, p2)]
    run = subprocess.run(
        ["iscsi-test-cu", "--dataloss", "--test=ALL.MultipathIO",
         "-i", "iqn.2026-11.org.targetd.test:mpio", *urls],
        capture_output=True, text=True, errors="replace", timeout=300, check=False,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert "found matching LU device identifier for all (2) paths" in out, out
    for name in ("Simple", "Reset", "CompareAndWrite", "CompareAndWriteAsync"):
        assert f"Test: {name} ...passed" in out, out
    assert run.returncode == 0, out
