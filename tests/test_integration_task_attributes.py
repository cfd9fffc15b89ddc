"""Task attributes through the daemon: an ORDERED command waits for an older one that is
still running, HEAD OF QUEUE does not. SYNCHRONIZE CACHE runs fdatasync on a thread, so
it is still running when TEST UNIT READYs sent in the same segment arrive: a SIMPLE one is
answered first, an ORDERED one only after it."""

from __future__ import annotations

from conftest import Daemon
from raw_initiator import RawInitiator

from targetd.iscsi.pdu import Op

SYNCHRONIZE_CACHE_10 = bytes([0x35]) + bytes(9)
TEST_UNIT_READY = bytes(6)
SIMPLE, ORDERED, HEAD_OF_QUEUE = 1, 2, 3


def logged_in(d: Daemon) -> RawInitiator:
    ini = RawInitiator(d.port)
    assert ini.login(d.iqn).bhs[36] == 0
    ini.clear_unit_attentions()
    return ini


def answer_order(ini: RawInitiator, commands: list[tuple[str, bytes, int]]) -> list[str]:
    """Send ``commands`` (name, CDB, attribute) in one segment; the names in the order
    their responses came back, each with its status."""
    names: dict[int, str] = {}
    segment = b""
    for name, cdb, attr in commands:
        hdr = ini.scsi_header(cdb, attr=attr)
        names[int.from_bytes(hdr[16:20], "big")] = name
        segment += bytes(hdr)
    ini.sock.sendall(segment)
    order = []
    while len(order) < len(commands):
        resp = ini.recv()
        assert resp.opcode == Op.SCSI_RESPONSE, hex(resp.opcode)
        assert resp.bhs[3] == 0, f"status {resp.bhs[3]:#x}"
        order.append(names[resp.u32(16)])
    return order


def test_ordered_waits_for_the_older_command_and_head_of_queue_does_not(
    targetd: Daemon,
) -> None:
    with logged_in(targetd) as ini:
        # The control: the SYNCHRONIZE CACHE is still running when a SIMPLE one arrives.
        assert answer_order(
            ini, [("sync", SYNCHRONIZE_CACHE_10, SIMPLE), ("tur", TEST_UNIT_READY, SIMPLE)]
        ) == ["tur", "sync"]
        assert answer_order(
            ini, [("sync", SYNCHRONIZE_CACHE_10, SIMPLE), ("tur", TEST_UNIT_READY, ORDERED)]
        ) == ["sync", "tur"]
        assert answer_order(
            ini,
            [
                ("sync", SYNCHRONIZE_CACHE_10, SIMPLE),
                ("ordered", TEST_UNIT_READY, ORDERED),
                ("simple", TEST_UNIT_READY, SIMPLE),
                ("head", TEST_UNIT_READY, HEAD_OF_QUEUE),
            ],
        ) == ["head", "sync", "ordered", "simple"]
