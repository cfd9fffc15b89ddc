"""Large READs sent from a volume's file (sendfile) against the pair engine writing that file:
a READ answered before a reverse resync began (its source is restored) or before a pair
attached its volume as a target (the creation copy) carries the bytes the volume held when
the READ ran, however slowly the initiator takes them. The engine's writes to the range wait
until the initiator has acknowledged the READ (docs/pairs.md, "READs still being sent")."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable

import pytest
from conftest import Daemon, DaemonFactory
from pair_scsi import BLOCK, CREATE, SPLIT, BlockClient, pair_config, pair_out, read16
from raw_initiator import RawInitiator

from targetd.iscsi.pdu import BHS_LEN, Op, new_header, padded, put_u32

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


def split_then_read_the_source(port: int) -> tuple[BlockClient, RawInitiator]:
    """LUN 0 (0x11) paired with LUN 1 and split, then changed to 0x22 (cached pages) and
    read by a slow reader whose READ waits in the sockets."""
    client = BlockClient(port, IQN)
    client.write(0, 0, fill(0x11))
    client.create(0, 1, b"db")
    client.wait("DUPLEX")
    client.ok(pair_out(SPLIT))
    client.wait("SPLIT")
    client.write(0, 0, fill(0x22))  # the source changes after the split (cached pages)
    assert client.read(0, 0, READ_LENGTH) == fill(0x22)[:READ_LENGTH]
    return client, slow_read(port, 0)


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


def read_survives(
    client: BlockClient, reader: RawInitiator, byte: int, what: str, cdb: bytes, data: bytes = b""
) -> None:
    """Start the pair operation ``cdb`` while ``reader``'s READ waits, give it time to write
    every chunk (were nothing waiting), then take the READ: it carries ``byte``, what the
    volume held when it ran, not what ``what`` wrote after."""
    begin(client, cdb, data)
    time.sleep(1.0)
    got = take_read(reader)
    finish(client)
    assert got == fill(byte)[:READ_LENGTH], (
        f"the READ shows {len(got) - got.count(byte)} bytes the {what} wrote after it ran"
    )


def test_a_read_in_flight_is_not_torn_by_a_reverse_resync(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(pair_config(IQN, "1GiB"))
    client, reader = split_then_read_the_source(daemon.port)
    try:
        # Restores the split image (0x11) onto the source.
        read_survives(client, reader, 0x22, "reverse resync", pair_out(REVERSE))
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
        read_survives(client, reader, 0x44, "creation copy", pair_out(CREATE, 0, 1, 2), b"db")
    finally:
        reader.close()
    client.wait("DUPLEX")
    assert client.read(1, 0, SIZE) == fill(0x33)
    client.close()


def cold_reset(client: BlockClient, port: int) -> BlockClient:
    """TARGET COLD RESET from ``client``'s session: answered, then the target closes every
    connection to it (RFC 7143 11.5.1), the slow reader's among them. The restorer's new
    session, logged in after it."""
    ini = client.ini
    tmf = new_header(Op.TASK_MGMT_REQUEST | 0x40, 0x80 | 7, itt=ini.next_itt())
    put_u32(tmf, 20, 0xFFFFFFFF)
    put_u32(tmf, 24, ini.cmdsn)
    put_u32(tmf, 28, ini.expstatsn)
    ini.send(tmf)
    resp = ini.recv()
    assert (resp.opcode, resp.bhs[2]) == (Op.TASK_MGMT_RESPONSE, 0), resp.bhs.hex()
    assert ini.closed_by_target()
    client.close()
    return BlockClient(port, IQN, name="iqn.2026-11.org.targetd.test:restorer")


def read_to_eof(ini: RawInitiator) -> bytes:
    """What the socket gives until its end (a FIN, or a reset)."""
    ini.sock.settimeout(10)
    stream = bytearray()
    try:
        while chunk := ini.sock.recv(1 << 20):
            stream += chunk
    except ConnectionResetError:
        pass
    return bytes(stream)


def parse_read(stream: bytes) -> tuple[bytes, int | None]:
    """The READ's data and its status (None if it never came) in what the socket gave."""
    data = bytearray()
    pos = 0
    while len(stream) - pos >= BHS_LEN:
        bhs = stream[pos : pos + BHS_LEN]
        dlen = int.from_bytes(bhs[5:8], "big")
        end = pos + BHS_LEN + padded(dlen)
        if end > len(stream):
            break
        op = bhs[0] & 0x3F
        if op == Op.DATA_IN:
            data += stream[pos + BHS_LEN : pos + BHS_LEN + dlen]
            if bhs[1] & 0x01:
                return bytes(data), bhs[3]
        elif op == Op.SCSI_RESPONSE:
            return bytes(data), bhs[3]
        pos = end
    return bytes(data), None


def test_a_read_in_flight_on_a_connection_the_target_closes_is_not_torn(
    targetd_factory: DaemonFactory,
) -> None:
    """The target closes the reader's connection (another host's TARGET COLD RESET) while
    the READ's bytes still wait in the sockets: the initiator still reads them, status and
    all, after the close, so the reverse resync must wait until it has closed its end."""
    daemon = targetd_factory(pair_config(IQN, "1GiB"))
    client, reader = split_then_read_the_source(daemon.port)
    try:
        client = cold_reset(client, daemon.port)
        begin(client, pair_out(REVERSE))
        # Enough for the daemon to hand the rest of the READ to its socket (and close it);
        # most of the READ still waits in the two sockets' buffers, referencing the file.
        head = reader.recv_exact(512 * 1024)
        time.sleep(1.0)  # time enough to restore every chunk, were nothing waiting
        stream = head + read_to_eof(reader)
    finally:
        reader.close()
    finish(client)
    data, status = parse_read(stream)
    assert status == 0, f"the READ's status did not arrive ({len(data)} bytes of data did)"
    assert data == fill(0x22)[:READ_LENGTH], (
        f"the READ shows {len(data) - data.count(0x22)} bytes the reverse resync wrote"
        " after the target closed its connection"
    )
    client.wait("DUPLEX")
    assert client.read(0, 0, SIZE) == fill(0x11)
    client.close()


def test_an_initiator_that_keeps_a_closed_connection_unread_is_reset_after_a_bound(
    targetd_factory: DaemonFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target closes the reader's connection, and the reader neither reads nor closes
    its end: the reverse resync waits, but only CLOSE_WAIT (2 s here); then the
    connection is reset, and what the reader finds in its socket never ends with the READ's
    status, so it cannot take the restored bytes for the READ's."""
    monkeypatch.setenv("TARGETD_CLOSE_WAIT", "2")
    daemon = targetd_factory(pair_config(IQN, "1GiB"))
    client, reader = split_then_read_the_source(daemon.port)
    try:
        client = cold_reset(client, daemon.port)
        client.ok(pair_out(REVERSE))
        head = reader.recv_exact(512 * 1024)  # the daemon hands the rest to its socket
        time.sleep(1.0)
        assert client.status().source == "REVERSE-COPY"  # waits for the reader
        client.wait("DUPLEX", timeout=10)
        stream = head + read_to_eof(reader)
    finally:
        reader.close()
    _, status = parse_read(stream)
    assert status is None, "the READ's status arrived after the restore"
    assert client.read(0, 0, SIZE) == fill(0x11)
    client.close()


# -- the other closes the target makes ------------------------------------------------------
# Far longer than any step below: a restore that ends during these tests was released by
# the initiator's close, not by the bound.
LONG_CLOSE_WAIT = "120"
RAW_NAME = "iqn.2026-11.org.targetd.test:raw"  # BlockClient's initiator name


def busy(client: BlockClient, seconds: float) -> None:
    """Let ``seconds`` pass with ``client``'s session talking (a short keepalive never
    drops it)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.status()
        time.sleep(0.2)


def wait_for_log(daemon: Daemon, client: BlockClient, marker: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while marker not in daemon.stderr:
        assert time.monotonic() < deadline, f"no {marker!r} in the log:\n{daemon.stderr}"
        busy(client, 0.2)


def reinstate(daemon: Daemon, client: BlockClient, reader: RawInitiator) -> RawInitiator:
    """A new login with the reader's initiator name and ISID: the target ends the reader's
    session and closes its connection (RFC 7143 6.3.5)."""
    again = RawInitiator(daemon.port, name=reader.name)
    assert again.login(IQN).bhs[36] == 0
    wait_for_log(daemon, client, "reinstating session")
    return again


def revoke(daemon: Daemon, client: BlockClient, reader: RawInitiator) -> None:
    """A reload takes the reader's initiator out of the target's ACL: its session is asked
    to log out, and closed when it has not (LOGOUT_WITHIN + LOGOUT_WAIT later)."""
    assert daemon.config is not None and daemon.proc is not None
    acl = f'name = "{IQN}"\nallowed_initiators = ["{RAW_NAME}"]\n'
    daemon.config.write_text(pair_config(IQN, "1GiB").replace(f'name = "{IQN}"\n', acl))
    os.kill(daemon.proc.pid, signal.SIGHUP)
    wait_for_log(daemon, client, "access revoked")
    wait_for_log(daemon, client, "revoked, no logout")


def keepalive(daemon: Daemon, client: BlockClient, reader: RawInitiator) -> None:
    """The reader answers nothing, so not the keepalive's NOP-In either (2 s of silence,
    then 2 s to answer, here): the target closes its connection."""
    wait_for_log(daemon, client, "initiator did not answer NOP-In")


@pytest.mark.parametrize("close", [reinstate, revoke, keepalive])
def test_a_read_on_a_connection_the_target_closes_holds_until_the_initiator_closes(
    targetd_factory: DaemonFactory,
    monkeypatch: pytest.MonkeyPatch,
    close: Callable[[Daemon, BlockClient, RawInitiator], object],
) -> None:
    """As for the cold reset above, for the target's other closes (docs/pairs.md, "A
    connection the target closes"): a session reinstatement, a reload that revokes the
    session's access, a keepalive timeout. The reverse resync that follows waits while the
    reader has not closed its end (even once it has read everything), the READ arrives
    whole with its GOOD status and none of the restored bytes, and the restore ends as
    soon as the reader closes, long before CLOSE_WAIT."""
    monkeypatch.setenv("TARGETD_CLOSE_WAIT", LONG_CLOSE_WAIT)
    if close is keepalive:
        monkeypatch.setenv("TARGETD_NOP_INTERVAL", "2")
        monkeypatch.setenv("TARGETD_NOP_TIMEOUT", "2")
    daemon = targetd_factory(pair_config(IQN, "1GiB"))
    client, reader = split_then_read_the_source(daemon.port)
    other = None
    try:
        other = close(daemon, client, reader)
        client.ok(pair_out(REVERSE))  # restores the split image (0x11) onto the source
        # Enough for the daemon to hand the rest of the READ to its socket (and shut it);
        # most of the READ still waits in the two sockets' buffers, referencing the file.
        head = reader.recv_exact(512 * 1024)
        busy(client, 1.0)  # time enough to restore every chunk, were nothing waiting
        waiting = [client.status().source]
        stream = head + read_to_eof(reader)  # every byte, the status, the target's FIN
        busy(client, 0.5)
        waiting.append(client.status().source)  # the initiator has not closed its end
    finally:
        reader.close()
        if isinstance(other, RawInitiator):
            other.close()
    began = time.monotonic()
    client.wait("DUPLEX", timeout=20)
    released_in = time.monotonic() - began
    data, status = parse_read(stream)
    assert status == 0, f"the READ's status did not arrive ({len(data)} bytes of data did)"
    assert data == fill(0x22)[:READ_LENGTH], (
        f"the READ shows {len(data) - data.count(0x22)} bytes the reverse resync wrote"
        " after the target closed its connection"
    )
    assert waiting == ["REVERSE-COPY", "REVERSE-COPY"], waiting
    assert released_in < 15, f"the restore ended {released_in:.1f} s after the reader closed"
    assert client.read(0, 0, SIZE) == fill(0x11)
    client.close()
