"""Large READs sent from a volume's file (sendfile) against the pair engine writing that file:
a READ answered before a reverse resync began (its source is restored) or before a pair
attached its volume as a target (the creation copy) carries the bytes the volume held when
the READ ran, however slowly the initiator takes them. The engine's writes to the range wait
until the initiator has acknowledged the READ (docs/pairs.md, "READs still being sent")."""

from __future__ import annotations

import socket
import time

from conftest import DaemonFactory
from pair_scsi import BLOCK, CREATE, SPLIT, BlockClient, pair_config, pair_out, read16
from raw_initiator import RawInitiator

from targetd.iscsi.pdu import Op

MiB = 1 << 20
SIZE = 8 * MiB
IQN = "iqn.2026-11.org.targetd:pair-sendfile"
REVERSE = 0x06
# Larger than loopback's socket buffers take: part of the READ's data is still to be read
# from the file when the engine runs, part is already referenced by the socket.
READ_LENGTH = 4 * MiB


def fill(byte: int) -> bytes:
    return bytes([byte]) * SIZE


def slow_read(port: int, lun: int) -> RawInitiator:
    """A second session that sends a READ of the first READ_LENGTH bytes of ``lun`` and takes
    only its first byte (so the READ has run, and its data waits in a full socket)."""
    ini = RawInitiator(port, name="iqn.2026-11.org.targetd.test:slow-reader")
    resp = ini.login(IQN)
    assert resp.bhs[36] == 0
    ini.clear_unit_attentions(lun)
    ini.send(ini.scsi_header(read16(0, READ_LENGTH // BLOCK), lun=lun, read=READ_LENGTH))
    ini.sock.settimeout(10)
    assert ini.sock.recv(1, socket.MSG_PEEK)
    return ini


def take_read(ini: RawInitiator) -> bytes:
    """The READ's data and GOOD status, then a NOP-Out whose ExpStatSN acknowledges it."""
    data = bytearray()
    while True:
        resp = ini.recv()
        assert resp.opcode in (Op.DATA_IN, Op.SCSI_RESPONSE), hex(resp.opcode)
        if resp.opcode == Op.DATA_IN:
            data += resp.data
        if resp.bhs[1] & 0x01 or resp.opcode == Op.SCSI_RESPONSE:
            assert resp.bhs[3] == 0
            break
    assert ini.nop().opcode == Op.NOP_IN
    return bytes(data)


def begin(client: BlockClient, cdb: bytes, data: bytes = b"") -> None:
    """Send a command and take no answer yet (a pair operation that may wait for the READ
    in flight: the engine writes the volume's file only once the READ is acknowledged)."""
    ini = client.ini
    ini.send(ini.scsi_header(cdb, write=len(data), data_len=len(data)), data)


def finish(client: BlockClient) -> None:
    """The GOOD status of the command :func:`begin` sent."""
    client.ini.sock.settimeout(10)
    resp = client.ini.recv()
    assert (resp.opcode, resp.bhs[3]) == (Op.SCSI_RESPONSE, 0), resp.bhs.hex()


def test_a_read_in_flight_is_not_torn_by_a_reverse_resync(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(pair_config(IQN, "1GiB"))
    client = BlockClient(daemon.port, IQN)
    client.write(0, 0, fill(0x11))
    client.create(0, 1, b"db")
    client.wait("DUPLEX")
    client.ok(pair_out(SPLIT))
    client.wait("SPLIT")
    client.write(0, 0, fill(0x22))  # the source changes after the split (cached pages)
    assert client.read(0, 0, READ_LENGTH) == fill(0x22)[:READ_LENGTH]
    reader = slow_read(daemon.port, 0)
    try:
        begin(client, pair_out(REVERSE))  # restores the split image (0x11) onto the source
        time.sleep(1.0)  # time enough to restore every chunk, were nothing waiting
        got = take_read(reader)
        finish(client)
        assert got == fill(0x22)[:READ_LENGTH], (
            f"the READ shows {len(got) - got.count(0x22)} bytes the reverse resync wrote"
            " after it ran"
        )
    finally:
        reader.close()
    client.wait("DUPLEX")
    assert client.read(0, 0, SIZE) == fill(0x11)
    client.close()


def test_a_read_in_flight_of_a_new_target_is_not_torn_by_the_creation_copy(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(pair_config(IQN, "1GiB"))
    client = BlockClient(daemon.port, IQN)
    client.write(0, 0, fill(0x33))
    client.write(1, 0, fill(0x44))
    assert client.read(1, 0, READ_LENGTH) == fill(0x44)[:READ_LENGTH]
    reader = slow_read(daemon.port, 1)
    try:
        # Punches LUN 1 whole, then copies LUN 0 onto it.
        begin(client, pair_out(CREATE, 0, 1, 2), b"db")
        time.sleep(1.0)
        got = take_read(reader)
        finish(client)
        assert got == fill(0x44)[:READ_LENGTH], (
            f"the READ shows {len(got) - got.count(0x44)} bytes the creation copy wrote"
            " after it ran"
        )
    finally:
        reader.close()
    client.wait("DUPLEX")
    assert client.read(1, 0, SIZE) == fill(0x33)
    client.close()
