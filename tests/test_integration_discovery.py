"""Discovery and identification with libiscsi's utilities against a real daemon."""

from __future__ import annotations

import re

from clients import run
from conftest import Daemon

GiB = 1 << 30


def test_iscsi_ls_lists_target_and_luns(targetd: Daemon) -> None:
    out = run("iscsi-ls", "-s", targetd.url(None)).stdout
    assert f"Target:{targetd.iqn} Portal:127.0.0.1:{targetd.port},1" in out
    luns = re.findall(r"^Lun:(\d+)\s+Type:(\S+)", out, re.MULTILINE)
    assert luns == [
        ("0", "DIRECT_ACCESS"),
        ("1", "DIRECT_ACCESS"),
        ("2", "SEQUENTIAL_ACCESS"),  # the default tape LUN
    ], out


def test_iscsi_ls_url_form(targetd: Daemon) -> None:
    out = run("iscsi-ls", "--url", targetd.url(None)).stdout
    assert f"iscsi://127.0.0.1:{targetd.port}/{targetd.iqn}" in out, out


def test_standard_inquiry(targetd: Daemon) -> None:
    out = run("iscsi-inq", targetd.url(0)).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    assert fields["Peripheral Qualifier"] == "CONNECTED"
    assert fields["Peripheral Device Type"] == "DIRECT_ACCESS"
    assert fields["Removable"] == "0"
    assert fields["Vendor"].rstrip() == "TARGETD"
    assert fields["Product"].rstrip() == "VIRTUAL-DISK"


def test_absent_lun_is_refused(targetd: Daemon) -> None:
    proc = run("iscsi-inq", targetd.url(7), check=False)
    assert proc.returncode != 0, proc.stdout


# iscsi-inq reads --pagecode with popt's integer parser, which takes decimal only:
# "-c 0x83" silently becomes page 0. Hence 131 (0x83) and 128 (0x80).
def test_vpd_supported_pages(targetd: Daemon) -> None:
    out = run("iscsi-inq", "-e", "1", "-c", "0", targetd.url(0)).stdout
    pages = set(re.findall(r"^Page:0x([0-9a-f]{2})", out, re.MULTILINE))
    assert {"00", "80", "83"} <= pages, out


def test_vpd_device_identification(targetd: Daemon) -> None:
    out = run("iscsi-inq", "-e", "1", "-c", "131", targetd.url(0)).stdout
    assert "Page Code:(0x83) DEVICE_IDENTIFICATION" in out, out
    assert "Designator Type:(3) NAA" in out, out


def test_vpd_unit_serial_number(targetd: Daemon) -> None:
    serials = []
    for lun in (0, 1):
        out = run("iscsi-inq", "-e", "1", "-c", "128", targetd.url(lun)).stdout
        match = re.search(r"Unit Serial Number:\[(.*)\]", out)
        assert match and match.group(1).strip(), out
        serials.append(match.group(1).strip())
    assert serials[0] != serials[1]


def test_readcapacity16_reports_one_gib(targetd: Daemon) -> None:
    for lun in (0, 1):
        out = run("iscsi-readcapacity16", targetd.url(lun)).stdout
        assert "RETURNED LOGICAL BLOCK ADDRESS:2097151" in out, out
        assert "LOGICAL BLOCK LENGTH IN BYTES:512" in out, out
        assert f"Total size:{GiB}" in out, out


def test_configured_lun_geometry(targetd_factory) -> None:
    daemon = targetd_factory(
        """
        [[target]]
        name = "iqn.2026-11.org.targetd.test:geometry"
        [[target.lun]]
        lun = 3
        size = "64MiB"
        block_size = 4096
        """
    )
    out = run("iscsi-readcapacity16", daemon.url(3)).stdout
    assert f"RETURNED LOGICAL BLOCK ADDRESS:{64 * 256 - 1}" in out, out
    assert "LOGICAL BLOCK LENGTH IN BYTES:4096" in out, out
    listing = run("iscsi-ls", "-s", daemon.url(None)).stdout
    assert re.findall(r"^Lun:(\d+)", listing, re.MULTILINE) == ["3"], listing
