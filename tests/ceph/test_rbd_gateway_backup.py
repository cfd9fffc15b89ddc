"""A gateway's own backup target beside the RBD LUNs both gateways share (docs/rbd.md, "A
gateway's own tapes and file sinks"): a backup from the shared image to gateway A's tape,
cut by A's death, reads as failed through RECEIVE COPY RESULTS on both paths; the tapes of
two gateways are two LUs, never one LU on two paths."""

from __future__ import annotations

import time

from ceph_fixtures import ImageFactory
from cluster import CephCluster
from gateways import IQN, PairFactory, gateway_pair
from test_integration_xcopy import GOOD, copy_status_lid4, naa_of, session
from test_rbd_gateways import RTPG, copy_status, states
from xcopy_lists import cscd, lid4, seg_b2s, xcopy_cdb

from scsi.sense import parse_sense

__all__ = ["gateway_pair"]

MiB = 1 << 20
TAPE = 1


def tape_lun(name: str) -> str:
    return f'[[target.lun]]\nlun = {TAPE}\nkind = "tape"\npath = "{name}.img"\nsize = "512MiB"\n'


def test_a_backup_to_a_gateways_own_tape_cut_by_its_death_reads_as_failed_on_both_paths(
    ceph_cluster: CephCluster, new_image: ImageFactory, gateway_pair: PairFactory
) -> None:
    """Each gateway serves a tape of its own at LUN 1 beside the shared image at LUN 0.
    An IMMED backup of the image to A's tape is running when A is killed with SIGKILL:
    RECEIVE COPY STATUS through B reports it failed (COPY ABORTED, 0Dh/02h, from the
    record in the cluster) and, once A is restarted, through A too (29h/00h, from A's
    journal), each with no more progress than landed, never completed nor unknown."""
    source = new_image("128M")
    ceph_cluster.rbd("bench", "--io-type", "write", "--io-size", "4M", "--io-total", "128M",
                     "--io-pattern", "seq", f"{ceph_cluster.pool}/{source}")  # fmt: skip
    pair = gateway_pair(source, own_luns={"a": tape_lun("tape-a"), "b": tape_lun("tape-b")})
    with (
        session(pair.a.port, IQN, (0, TAPE)) as ini_a,
        session(pair.b.port, IQN, (0, TAPE)) as ini_b,
    ):
        # One LU at LUN 0 on two paths; two LUs at LUN 1, one on each path.
        assert naa_of(ini_a, 0) == naa_of(ini_b, 0)
        assert naa_of(ini_a, TAPE) != naa_of(ini_b, TAPE)
        # Each tape reports its gateway's group alone, active/optimized, with its one port.
        for ini, group in ((ini_a, 1), (ini_b, 2)):
            status, data, _ = ini.command(RTPG, lun=TAPE, read=256)
            assert status == GOOD
            assert int.from_bytes(data[:4], "big") == 12, data.hex()  # one group, one port
            assert (data[4] & 0x0F, data[6:8], data[11]) == (0, group.to_bytes(2, "big"), 1)
            assert data[14:16] == group.to_bytes(2, "big"), data.hex()  # relative port id
    with session(pair.a.port, IQN, (0, TAPE)) as ini_a:
        disk, tape = naa_of(ini_a, 0), naa_of(ini_a, TAPE)
        # 128 MiB as 16 records of 8 MiB: A is killed once one has landed.
        segments = b"".join(seg_b2s(0, 1, 8 * MiB, 16384, n * 16384) for n in range(16))
        params = lid4(
            cscd(disk, 0x00, block_length=512) + cscd(tape, 0x01), segments, list_id=9, immed=True
        )
        status, _, sense = ini_a.command(xcopy_cdb(len(params), 0x01), lun=TAPE, data=params)
        assert (status, sense) == (GOOD, b"")
        deadline = time.monotonic() + 60
        while int.from_bytes(copy_status_lid4(ini_a, TAPE, 9)[16:24], "big") < 8 * MiB:
            assert time.monotonic() < deadline, "the backup does not progress"
            time.sleep(0.01)
        running = copy_status_lid4(ini_a, TAPE, 9)
        pair.kill(pair.a)
    assert running[5] == 0x12, running.hex()  # in progress in the background when killed
    with session(pair.b.port, IQN, (0,)) as ini_b:
        assert states(ini_b) == {1: 1, 2: 1}  # nobody wrote the image: no lock taken
        status, data, sense = copy_status(ini_b, 9)
        assert (status, sense) == (GOOD, None), sense
        assert data[5] == 0x02, data.hex()  # failed
        assert (data[32 + 2] & 0x0F, data[32 + 12], data[32 + 13]) == (0x0A, 0x0D, 0x02)
        through_b = int.from_bytes(data[24:26], "big")
        assert int.from_bytes(data[16:24], "big") == through_b * 8 * MiB and through_b < 16
    pair.a.start()
    with session(pair.a.port, IQN, (0, TAPE)) as ini_a:  # same initiator and ISID
        data = copy_status_lid4(ini_a, TAPE, 9)
        assert data[5] == 0x02, data.hex()  # failed: the restart aborted it
        assert (data[32 + 2] & 0x0F, data[32 + 12], data[32 + 13]) == (0x0A, 0x29, 0x00)
        landed = int.from_bytes(data[24:26], "big")
        assert int.from_bytes(data[16:24], "big") == landed * 8 * MiB and landed < 16
        # What the tape holds: as many 8 MiB records as reported (one more if the kill fell
        # between a record and its record-keeping), never fewer.
        assert ini_a.command(bytes([0x01, 0, 0, 0, 0, 0]), lun=TAPE)[0] == GOOD  # REWIND
        assert ini_a.command(bytes([0x11, 0x03, 0, 0, 0, 0]), lun=TAPE)[0] == GOOD  # to EOD
        status, position, sense = ini_a.command(bytes([0x34]) + bytes(9), lun=TAPE, read=20)
        assert status == GOOD, parse_sense(sense)
        on_tape = int.from_bytes(position[4:8], "big")
        assert on_tape - 1 <= landed <= on_tape, (landed, on_tape)
