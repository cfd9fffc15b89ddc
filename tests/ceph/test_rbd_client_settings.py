"""What the daemon sets in its librbd client, whatever ceph.conf says (backing/rbd_cluster.py).

librbd copies every write's data (``rbd_disable_zero_copy_writes = true``, set by the
daemon even when ceph.conf says otherwise). Without the copy librbd completes a write
only once the messenger has let go of its buffer, and a write to a dead OSD then waits
far past ``osd_op_timeout`` (docs/rbd-performance.md; test_rbd_faults.py checks the
bounded failure). And librbd's I/O scheduler is off (``rbd_io_scheduler = none``): it held
a write back while another one to the same object was in flight."""

from __future__ import annotations

import asyncio
import ctypes
from pathlib import Path

from ceph_fixtures import ImageFactory
from cluster import CephCluster

from backing.rbd_image import RbdImage, RbdSpec
from backing.rbd_lib import lib


def test_writes_are_copied_and_unscheduled_whatever_ceph_conf_says(
    ceph_cluster: CephCluster, new_image: ImageFactory, tmp_path: Path
) -> None:
    conf = tmp_path / "ceph.conf"
    conf.write_text(
        ceph_cluster.conf.read_text()
        + "\n[client]\nrbd_disable_zero_copy_writes = false\nrbd_io_scheduler = simple\n"
    )
    spec = RbdSpec(ceph_cluster.pool, new_image("8M"), ceph_conf=str(conf))

    async def settings() -> dict[str, str]:
        img = RbdImage(spec)
        try:
            await img.write(0, b"\x5a" * 4096)
            assert img._cluster is not None
            seen = {}
            for name in ("rbd_disable_zero_copy_writes", "rbd_io_scheduler"):
                out = ctypes.create_string_buffer(16)
                handle = img._cluster.handle
                assert lib().rados_conf_get(handle, name.encode(), out, len(out)) == 0
                seen[name] = out.value.decode()
            return seen
        finally:
            img.close()

    assert asyncio.run(settings()) == {
        "rbd_disable_zero_copy_writes": "true",
        "rbd_io_scheduler": "none",
    }
