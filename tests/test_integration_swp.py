"""libiscsi's tests of software write protect against a real daemon, with the flags a plain
``iscsi-test-cu -d -S -t ALL`` run passes: Sanitize.Readonly sets SWP from a second session
(it used to fail at test_sanitize_readonly.c:60, "SWP is not changeable"), and
ModeSense6.Control-SWP reads it back and expects WRITE(10) to be refused."""

from __future__ import annotations

import re

import pytest
from clients import run
from conftest import Daemon


@pytest.mark.parametrize("test", ["SCSI.Sanitize.Readonly", "SCSI.ModeSense6.Control-SWP"])
def test_libiscsi_software_write_protect(targetd: Daemon, test: str) -> None:
    proc = run(
        "iscsi-test-cu", "--dataloss", "--allow-sanitize", "-V", "-t", test, targetd.url(0),
        check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    summary = re.search(r"tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out)
    assert summary is not None, out
    assert summary.groups() == ("1", "1", "1", "0"), out
    assert "not changeable" not in out and "does not support changing SWP" not in out, out
    assert "Set Software Write Protect" in out or "Set SWP" in out, out
    # SWP was cleared at the end: the LUN takes writes again.
    out = run("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 4k", targetd.url(0)).stdout
    assert "wrote 4096/4096" in out, out
