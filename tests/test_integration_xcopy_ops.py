"""EXTENDED COPY as an operator watches it: copy operations in ``targetctl status`` and on
the Prometheus endpoint while a backup runs and after it ends, and a LUN added by SIGHUP
that EXTENDED COPY can reach (and send) at once."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from typing import Any

from conftest import Daemon, DaemonFactory, free_port
from pair_scsi import CREATE, SPLIT, BlockClient, pair_out
from test_integration_xcopy import naa_of
from xcopy_lists import cscd, lid1, lid4, seg_b2b, seg_b2s, xcopy_cdb

MiB = 1 << 20
IQN = "iqn.2026-11.org.targetd:xcopyops"
TAPE = 2
CONFIG = f"""
[pairs]
chunk_size = "64KiB"
# Slow enough that the split set outlasts a loaded machine's targetctl and metrics calls.
copy_rate = "256KiB"

[[target]]
name = "{IQN}"
[[target.lun]]
lun = 0
size = "2MiB"
[[target.lun]]
lun = 1
size = "2MiB"
[[target.lun]]
lun = 2
kind = "tape"
path = "tape.img"
size = "32MiB"
"""


def metrics(port: int) -> dict[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("targetd_copy")
    )


def copy_status(daemon: Daemon) -> list[dict[str, Any]]:
    return daemon.targetctl_json("status")["copy_operations"]  # type: ignore[no-any-return]


def test_copy_operations_in_status_and_metrics(targetd_factory: DaemonFactory) -> None:
    port = free_port()
    daemon = targetd_factory(CONFIG + f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    client = BlockClient(daemon.port, IQN, (0, 1, TAPE))
    client.write(0, 0, b"\x11" * (2 * MiB))
    cdb = bytearray(pair_out(CREATE, 0, 1))
    cdb[6] = 0x02  # wait: the backup waits for SPLIT, so it is seen running
    client.ok(bytes(cdb))
    client.ok(pair_out(SPLIT))  # a quick split: the creation copy is the split set
    ini = client.ini
    target, tape = naa_of(ini, 1), naa_of(ini, TAPE)
    segments = b"".join(seg_b2s(0, 1, 256 * 1024, 512, lba) for lba in range(0, 4096, 512))
    params = lid4(
        cscd(target, 0x00, block_length=512) + cscd(tape, 0x01), segments, list_id=9, immed=True
    )
    xcopy = xcopy_cdb(len(params), 0x01)
    status, _, sense = ini.command(xcopy, lun=1, data=params)
    assert (status, sense) == (0, b"")

    running = copy_status(daemon)
    assert [(o["list_id"], o["state"], o["bytes_total"]) for o in running] == [
        (9, "running", 2 * MiB)
    ]
    assert running[0]["target"] == IQN and running[0]["segments"] == 8
    sample = metrics(port)
    labels = f'target="{IQN}"'
    assert sample[f"targetd_copy_operations_running{{{labels}}}"] == "1"
    assert sample[f"targetd_copy_operations_started_total{{{labels}}}"] == "1"
    per_op = [k for k in sample if k.startswith("targetd_copy_operation_total_bytes{")]
    assert len(per_op) == 1 and 'list_id="9"' in per_op[0] and sample[per_op[0]] == str(2 * MiB)

    deadline = time.monotonic() + 60
    while copy_status(daemon)[0]["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    done = copy_status(daemon)[0]
    assert (done["state"], done["bytes_done"], done["percent"]) == ("completed", 2 * MiB, 100.0)
    sample = metrics(port)
    assert sample[f"targetd_copy_operations_running{{{labels}}}"] == "0"
    assert sample[f'targetd_copy_operations_total{{{labels},result="completed"}}'] == "1"
    assert sample[f"targetd_copy_bytes_total{{{labels}}}"] == str(2 * MiB)
    assert not [k for k in sample if k.startswith("targetd_copy_operation_bytes{")]

    # A copy that fails (a range past the end of LUN 0) counts as failed.
    disk = naa_of(ini, 0)
    b2b = seg_b2b(0, 0, 8, 4096, 0)
    params = lid1(cscd(disk, 0x00, block_length=512), b2b, list_id=3)
    xcopy = xcopy_cdb(len(params))
    status, _, sense = ini.command(xcopy, lun=0, data=params)
    assert status == 0x02 and sense[2] & 0x0F == 0x0A
    sample = metrics(port)
    assert sample[f'targetd_copy_operations_total{{{labels},result="failed"}}'] == "1"
    client.close()


def test_a_lun_added_by_sighup_takes_part_in_extended_copy(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(CONFIG)
    client = BlockClient(daemon.port, IQN, (0,))
    image = bytes(range(256)) * 4096  # 1 MiB
    client.write(0, 0, image)
    assert daemon.config is not None
    daemon.config.write_text(CONFIG + '[[target.lun]]\nlun = 3\nsize = "2MiB"\n')
    os.kill(daemon.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while "lun 3 added" not in daemon.stderr:
        assert time.monotonic() < deadline, daemon.stderr
        time.sleep(0.1)
    ini = client.ini
    ini.clear_unit_attentions(3)
    status, inquiry, _ = ini.command(bytes([0x12, 0, 0, 0, 36, 0]), lun=3, read=36)
    assert status == 0 and inquiry[5] & 0x08  # 3PC
    disk, new = naa_of(ini, 0), naa_of(ini, 3)
    # Block to block, LUN 0 -> the new LUN 3, sent to LUN 3 itself.
    b2b = seg_b2b(0, 1, 2048, 0, 0)
    params = lid1(
        cscd(disk, 0x00, block_length=512) + cscd(new, 0x00, block_length=512), b2b, list_id=4
    )
    xcopy = xcopy_cdb(len(params))
    status, _, sense = ini.command(xcopy, lun=3, data=params)
    assert (status, sense) == (0, b"")
    assert client.read(3, 0, MiB) == image
    client.close()
