"""Adjacent reads and writes asked of an RBD store in one turn of the event loop go to
librbd as one vectored request (a sequential stream of 4 KiB commands: one OSD operation
instead of one per command), and each command still gets exactly its own bytes."""

from __future__ import annotations

import asyncio
import os

from ceph_fixtures import ImageFactory, export_image
from cluster import CephCluster

from backing import rbd_requests
from backing.rbd_image import RbdImage, RbdSpec

KiB, MiB = 1 << 10, 1 << 20


def test_adjacent_requests_in_one_turn_are_merged_and_exact(
    ceph_cluster: CephCluster, new_image: ImageFactory, tmp_path: object
) -> None:
    name = new_image("8M")
    spec = RbdSpec(ceph_cluster.pool, name, ceph_conf=str(ceph_cluster.conf))
    blocks = [os.urandom(4 * KiB) for _ in range(40)]
    # 0..31 adjacent, then a gap (block 33 left out), then 34..39 adjacent again.
    offsets = [i * 4 * KiB for i in range(32)] + [i * 4 * KiB for i in range(34, 40)]

    async def scenario() -> tuple[int, int, list[bytes]]:
        img = RbdImage(spec)
        try:
            await asyncio.gather(*(img.write(at, blocks[at // (4 * KiB) % 40]) for at in offsets))
            merged_writes = img.merged_requests
            bufs = [bytearray(4 * KiB) for _ in range(40)]
            await asyncio.gather(
                *(img.read_into(i * 4 * KiB, memoryview(bufs[i])) for i in range(40))
            )
            return merged_writes, img.merged_requests - merged_writes, [bytes(b) for b in bufs]
        finally:
            img.close()

    merged_writes, merged_reads, back = asyncio.run(scenario())
    assert merged_writes == 32 + 6  # two runs: 0..31 and 34..39
    assert merged_reads == 40  # one run of 40 adjacent reads (the hole reads as zeros)
    expected = [blocks[i] if i not in (32, 33) else bytes(4 * KiB) for i in range(40)]
    assert back == expected
    image = export_image(ceph_cluster, name, tmp_path / "img")  # type: ignore[operator]
    assert [image[i * 4 * KiB : (i + 1) * 4 * KiB] for i in range(40)] == expected


def test_merging_stops_at_its_limits_and_between_reads_and_writes(
    ceph_cluster: CephCluster, new_image: ImageFactory
) -> None:
    spec = RbdSpec(ceph_cluster.pool, new_image("8M"), ceph_conf=str(ceph_cluster.conf))
    big = rbd_requests.MERGE_MAX_BYTES // 2

    async def scenario() -> tuple[int, list[int], bytes]:
        img = RbdImage(spec)
        try:
            sizes: list[int] = []
            real_completion = img._completion

            # One completion per librbd request (made on the loop, whichever thread then
            # gives the request to librbd: large writes go by the submit thread).
            def completion(group: list[object], keep: object, callback: bool) -> object:
                sizes.append(len(group))
                return real_completion(group, keep, callback)  # type: ignore[arg-type]

            img._completion = completion  # type: ignore[method-assign,assignment]
            data = os.urandom(3 * big)
            await asyncio.gather(
                # three halves of the byte limit: two merge, the third starts a new request
                *(img.write(i * big, data[i * big : (i + 1) * big]) for i in range(3)),
            )
            # a write then a read of the next block: different kinds are not merged
            out = bytearray(4 * KiB)
            await asyncio.gather(
                img.write(3 * big, b"\x11" * 4 * KiB),
                img.read_into(3 * big + 4 * KiB, memoryview(out)),
            )
            # more adjacent requests than one vectored request takes
            n = rbd_requests.MERGE_MAX_REQUESTS + 1
            await asyncio.gather(*(img.write(4 * MiB + i * 512, b"\x22" * 512) for i in range(n)))
            back = bytearray(3 * big)
            await img.read_into(0, memoryview(back))
            assert back == data
            return img.merged_requests, sizes, bytes(out)
        finally:
            img.close()

    merged, sizes, out = asyncio.run(scenario())
    assert sizes[0:2] == [2, 1]  # two halves merged, the third alone
    assert sizes[2:4] == [1, 1]  # the write and the read, apart
    assert sizes[4:6] == [rbd_requests.MERGE_MAX_REQUESTS, 1]
    assert merged == 2 + rbd_requests.MERGE_MAX_REQUESTS
    assert out == bytes(4 * KiB)
