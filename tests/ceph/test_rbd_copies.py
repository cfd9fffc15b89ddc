"""Volume pairs and EXTENDED COPY with RBD LUNs on either side: RBD to RBD, RBD to a sparse
file and back, RBD to tape and to a file sink. The split image stays exact."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from ceph_fixtures import ImageFactory, export_image, rbd_lun_toml, target_toml
from cluster import CephCluster
from conftest import DaemonFactory
from pair_scsi import DELETE, RESYNC, SPLIT, BlockClient, pair_out
from test_integration_xcopy import (
    GOOD,
    extended_copy,
    four_record_backup,
    four_records_back,
    naa_of,
    read10,
    session,
    write10,
)
from xcopy_lists import cscd, lid1, seg_b2b, seg_b2s, seg_filemarks

IQN = "iqn.2026-11.org.targetd:rbd"
MiB = 1 << 20
SIZE = 8 * MiB
BLOCK = 512
RBD_A, RBD_B, FILE, TAPE, SINK = 0, 1, 2, 3, 4


def config(cluster: CephCluster, image_a: str, image_b: str) -> str:
    return '[pairs]\nchunk_size = "64KiB"\ncopy_rate = "2MiB"\n\n' + target_toml(
        rbd_lun_toml(cluster, image_a, lun=RBD_A, create_size="8MiB"),
        rbd_lun_toml(cluster, image_b, lun=RBD_B, create_size="8MiB"),
        f'[[target.lun]]\nlun = {FILE}\npath = "file.img"\nsize = "8MiB"\n',
        f'[[target.lun]]\nlun = {TAPE}\nkind = "tape"\npath = "tape.img"\nsize = "64MiB"\n',
        f'[[target.lun]]\nlun = {SINK}\nkind = "filesink"\npath = "sink"\ncapacity = "64MiB"\n',
        iqn=IQN,
    )


@pytest.mark.parametrize(
    ("source", "target"),
    [(RBD_A, RBD_B), (RBD_A, FILE), (FILE, RBD_B)],
    ids=["rbd-to-rbd", "rbd-to-file", "file-to-rbd"],
)
def test_split_image_is_exact_and_resync_catches_up(
    ceph_cluster: CephCluster,
    new_image: ImageFactory,
    targetd_factory: DaemonFactory,
    tmp_path: Path,
    source: int,
    target: int,
) -> None:
    rng = random.Random(f"{source}-{target}")
    image_a, image_b = new_image(create=False), new_image(create=False)
    daemon = targetd_factory(config(ceph_cluster, image_a, image_b))
    client = BlockClient(daemon.port, IQN, luns=(RBD_A, RBD_B, FILE))
    model = bytearray(SIZE)
    client.random_writes(source, model, rng, 15)
    client.create(source, target, b"vol")
    client.random_writes(source, model, rng, 15)  # while the initial copy runs
    split_image = bytes(model)
    client.ok(pair_out(SPLIT, target), lun=source)
    client.random_writes(source, model, rng, 15)  # after the split: not in the target
    client.wait("SPLIT", timeout=60, lun=source)
    assert client.read(target, 0, SIZE) == split_image
    assert client.read(source, 0, SIZE) == model
    if target == RBD_B:  # the cluster holds the split image, not only the daemon
        assert export_image(ceph_cluster, image_b, tmp_path / "b") == split_image
    client.ok(pair_out(RESYNC), lun=source)
    client.wait("DUPLEX", timeout=60, lun=source)
    assert client.read(target, 0, SIZE) == model
    client.ok(pair_out(DELETE), lun=source)
    client.close()


def test_extended_copy_from_rbd_to_tape_file_sink_and_sparse_file(
    ceph_cluster: CephCluster,
    new_image: ImageFactory,
    targetd_factory: DaemonFactory,
    tmp_path: Path,
) -> None:
    image_a, image_b = new_image(create=False), new_image(create=False)
    daemon = targetd_factory(config(ceph_cluster, image_a, image_b))
    data = random.Random(7).randbytes(512 * 1024)
    with session(daemon.port, IQN, (RBD_A, RBD_B, FILE, TAPE, SINK)) as ini:
        for n in range(0, len(data), 128 * 1024):
            write10(ini, n // BLOCK, data[n : n + 128 * 1024])
        disk, other = naa_of(ini, RBD_A), naa_of(ini, RBD_B)
        file, tape, sink = naa_of(ini, FILE), naa_of(ini, TAPE), naa_of(ini, SINK)
        # RBD to tape, read back with READ(6) after REWIND.
        assert extended_copy(ini, TAPE, four_record_backup(disk, tape, list_id=1)) == (GOOD, b"")
        assert four_records_back(ini, TAPE) == data
        # RBD to a file sink: one plain file holding exactly the bytes.
        assert extended_copy(ini, RBD_A, four_record_backup(disk, sink, list_id=2)) == (GOOD, b"")
        # Block to block (segment 02h): RBD to the sparse file, and the sparse file to RBD.
        for list_id, (src, src_lba, dst, dst_lun) in enumerate(
            [(disk, 0, file, FILE), (file, 2048, other, RBD_B)], start=3
        ):
            b2b = seg_b2b(0, 1, 1024, src_lba, 2048)
            params = lid1(cscd(src, 0x00, block_length=512) + cscd(dst, 0x00), b2b, list_id=list_id)
            assert extended_copy(ini, dst_lun, params) == (GOOD, b"")
            assert b"".join(read10(ini, dst_lun, 2048 + n, 256) for n in range(0, 1024, 256)) == (
                data
            )
    assert (daemon.state_dir / "sink" / "file-0000.bin").read_bytes() == data
    exported = export_image(ceph_cluster, image_b, tmp_path / "b")
    assert exported[2048 * BLOCK : 2048 * BLOCK + len(data)] == data
