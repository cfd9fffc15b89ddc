"""The ctypes layouts of hostcopy.libiscsi and hostcopy.sgio against the C headers they
mirror, compiled here: a libiscsi or kernel header that moved a field fails this test
instead of reading garbage status or sense."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from hostcopy import libiscsi, sgio

PROGRAM = r"""
#include <stdio.h>
#include <stddef.h>
#include <scsi/sg.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#define P(s, f) printf(#s "." #f " %zu\n", offsetof(struct s, f))
int main(void) {
    P(scsi_task, status); P(scsi_task, residual); P(scsi_task, sense); P(scsi_task, datain);
    P(scsi_task, lun); P(scsi_task, iovector_out);
    P(scsi_sense, key); P(scsi_sense, ascq); P(scsi_sense, bit_pointer);
    P(scsi_sense, field_pointer);
    P(iscsi_url, lun); P(iscsi_url, iscsi);
    P(sg_io_hdr, dxferp); P(sg_io_hdr, sbp); P(sg_io_hdr, status); P(sg_io_hdr, resid);
    P(sg_io_hdr, info);
    printf("sizeof.scsi_task %zu\nsizeof.sg_io_hdr %zu\n", sizeof(struct scsi_task),
           sizeof(struct sg_io_hdr));
    return 0;
}
"""

STRUCTS = {
    "scsi_task": libiscsi._Task,
    "scsi_sense": libiscsi._Sense,
    "iscsi_url": libiscsi._Url,
    "sg_io_hdr": sgio._SgIoHdr,
}


def test_struct_offsets_match_the_headers(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:  # gcc is installed by scripts/install-test-deps.sh
        pytest.fail("no C compiler: run scripts/install-test-deps.sh")
    src = tmp_path / "abi.c"
    src.write_text(PROGRAM)
    subprocess.run([cc, str(src), "-o", str(tmp_path / "abi")], check=True)
    out = subprocess.run([str(tmp_path / "abi")], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        name, value = line.split()
        kind, field = name.split(".")
        if kind == "sizeof":
            assert ctypes.sizeof(STRUCTS[field]) == int(value), name
        else:
            assert getattr(STRUCTS[kind], field).offset == int(value), name
