"""librbd copies every write's data (``rbd_disable_zero_copy_writes = true``, set by the
daemon even when ceph.conf says otherwise). Without the copy librbd completes a write
only once the messenger has let go of its buffer, and a write to a dead OSD then waits
far past ``osd_op_timeout`` (docs/rbd.md, "Performance"; test_rbd_faults.py checks the
bounded failure)."""

from __future__ import annotations

import asyncio
import ctypes
from pathlib import Path

from ceph_fixtures import ImageFactory, ceph_cluster, new_image
from cluster import CephCluster

from backing.rbd_image import RbdImage, RbdSpec
from backing.rbd_lib import lib

__all__ = ["ceph_cluster", "new_image"]


def test_writes_are_copied_even_when_ceph_conf_asks_for_zero_copy(
    ceph_cluster: CephCluster, new_image: ImageFactory, tmp_path: Path
) -> None:
    conf = tmp_path / "ceph.conf"
    conf.write_text(
        ceph_cluster.conf.read_text() + "\n[client]\nrbd_disable_zero_copy_writes = false\n"
    )
    spec = RbdSpec(ceph_cluster.pool, new_image("8M"), ceph_conf=str(conf))

    async def setting() -> str:
        img = RbdImage(spec)
        try:
            await img.write(0, b"\x5a" * 4096)
            assert img._cluster is not None
            out = ctypes.create_string_buffer(16)
            name = b"rbd_disable_zero_copy_writes"
            assert lib().rados_conf_get(img._cluster.handle, name, out, len(out)) == 0
            return out.value.decode()
        finally:
            img.close()

    assert asyncio.run(setting()) == "true"
