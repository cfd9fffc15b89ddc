"""Large writes reach librbd from the image's submit thread (backing/rbd_requests.py,
``Submitter``), and every request keeps its place in line: one asked for after a large
write, while that write may still be queued on the thread, reaches librbd after it."""

from __future__ import annotations

import asyncio

from ceph_fixtures import ImageFactory, export_image
from cluster import CephCluster

from backing.rbd_image import RbdImage, RbdSpec

KiB, MiB = 1 << 10, 1 << 20


def test_large_writes_go_by_the_submit_thread_and_keep_their_order(
    ceph_cluster: CephCluster, new_image: ImageFactory, tmp_path: object
) -> None:
    name = new_image("8M")
    spec = RbdSpec(ceph_cluster.pool, name, ceph_conf=str(ceph_cluster.conf))

    async def scenario() -> tuple[bool, int, bytes]:
        img = RbdImage(spec)
        try:
            await img.write(6 * MiB, b"\x01" * 4 * KiB)
            small_only = img._submitter is None
            for round_ in range(8):
                # One loop turn: a large write, then an overlapping small one and a flush
                # asked for while the large one may still be queued on the thread.
                await asyncio.gather(
                    img.write(0, bytes([0xA0 + round_]) * MiB),
                    img.write(4 * KiB, bytes([0xB0 + round_]) * 4 * KiB),
                    img.flush(),
                )
            assert img._submitter is not None
            made = img._submitter.done
            out = bytearray(12 * KiB)
            await img.read_into(0, memoryview(out))
            return small_only, made, bytes(out)
        finally:
            img.close()

    small_only, made, back = asyncio.run(scenario())
    assert small_only  # a 4 KiB write alone stays on the loop
    assert made >= 8  # the eight large writes, and what queued behind them
    expected = b"\xa7" * 4 * KiB + b"\xb7" * 4 * KiB + b"\xa7" * 4 * KiB
    assert back == expected
    image = export_image(ceph_cluster, name, tmp_path / "img")  # type: ignore[operator]
    assert image[: 12 * KiB] == expected
