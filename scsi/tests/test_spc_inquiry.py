"""INQUIRY (standard and VPD), REQUEST SENSE, REPORT LUNS and RSOC against SPC_TABLE."""

from __future__ import annotations

import asyncio

from scsi.command import Nexus, ScsiCommand, ScsiResult, Status
from scsi.logical_unit import Identity, LogicalUnit
from scsi.sense import Reason, parse_sense
from scsi.spc import SPC_TABLE
from scsi.target import ScsiTarget

NEXUS = Nexus("iqn.2024-01.org.example:host,i,0x400001", "iqn.2024-01.org.example:tgt,t,0x1", 3)


class SpcUnit(LogicalUnit):
    table = SPC_TABLE

    def vpd_pages(self):
        return {0xB0: lambda: bytes([0, 0xB0, 0, 4, 1, 2, 3, 4])}


def make_lu() -> SpcUnit:
    return SpcUnit(Identity("iqn.2024-01.org.example:tgt/lun0"))


def run(lu: LogicalUnit, cdb: bytes, nexus: Nexus = NEXUS) -> ScsiResult:
    return asyncio.run(lu.execute(ScsiCommand(cdb, 0, nexus)))


def check(result: ScsiResult) -> tuple[int, int, int, bytes]:
    assert result.status == Status.CHECK_CONDITION
    assert result.sense is not None
    return (*parse_sense(result.sense), result.sense[15:18])


def inquiry(evpd: int, page: int, alloc: int) -> bytes:
    return bytes([0x12, evpd, page]) + alloc.to_bytes(2, "big") + b"\0"


def test_standard_inquiry_layout() -> None:
    data = bytes(run(make_lu(), inquiry(0, 0, 255)).data)
    assert len(data) == 96
    assert data[0:8] == bytes([0x00, 0x00, 0x06, 0x12, 91, 0x10, 0x00, 0x02])  # TPGS 01b
    assert data[8:16] == b"TARGETD "
    assert data[16:32] == b"VIRTUAL-DISK    "
    assert data[32:36] == b"0001"
    assert data[58:66] == bytes.fromhex("00a00960046004c0")
    assert data[66:] == bytes(30)


def test_standard_inquiry_removable_tape_and_truncation() -> None:
    lu = make_lu()
    lu.device_type, lu.removable = 0x01, True
    data = bytes(run(lu, inquiry(0, 0, 64)).data)
    assert len(data) == 64
    assert data[0:2] == bytes([0x01, 0x80])
    assert data[58:64] == bytes.fromhex("00a009600460")
    assert bytes(run(make_lu(), inquiry(0, 0, 5)).data) == bytes([0, 0, 6, 0x12, 91])


def test_inquiry_page_code_without_evpd_is_invalid_field() -> None:
    assert check(run(make_lu(), inquiry(0, 1, 255))) == (5, 0x24, 0, bytes([0xC0, 0, 2]))


def test_unknown_vpd_page_points_at_byte_2() -> None:
    assert check(run(make_lu(), inquiry(1, 0xC7, 255))) == (5, 0x24, 0, bytes([0xC0, 0, 2]))


def test_vpd_supported_pages_sorted_with_device_pages() -> None:
    data = bytes(run(make_lu(), inquiry(1, 0x00, 255)).data)
    assert data == bytes([0, 0, 0, 5, 0x00, 0x80, 0x83, 0x86, 0xB0])


def test_vpd_device_page_and_serial() -> None:
    lu = make_lu()
    assert bytes(run(lu, inquiry(1, 0xB0, 255)).data) == bytes([0, 0xB0, 0, 4, 1, 2, 3, 4])
    data = bytes(run(lu, inquiry(1, 0x80, 255)).data)
    assert data == bytes([0, 0x80, 0, 16]) + lu.identity.serial.encode()


def test_vpd_device_identification_designators() -> None:
    lu = make_lu()
    data = bytes(run(lu, inquiry(1, 0x83, 0xFFFF)).data)
    assert data[0:2] == bytes([0, 0x83])
    assert int.from_bytes(data[2:4], "big") == len(data) - 4
    naa = data[4:24]
    assert naa[:4] == bytes([0x01, 0x03, 0x00, 0x10]) and naa[4:] == lu.identity.naa
    assert naa[4] >> 4 == 6
    t10 = data[24:52]
    assert t10[:4] == bytes([0x02, 0x01, 0x00, 24])
    assert t10[4:] == b"TARGETD " + lu.identity.serial.encode()
    rtp = data[52:60]
    assert rtp == bytes([0x51, 0x94, 0x00, 0x04, 0, 0, 0, 3])
    name = b"iqn.2024-01.org.example:tgt,t,0x1\0"
    name += bytes(-len(name) % 4)
    assert data[60:64] == bytes([0x53, 0x98, 0x00, len(name)])
    assert data[64 : 64 + len(name)] == name
    # Target port group designator (type 5h, target port, PIV): port 3 is in group 1.
    assert data[64 + len(name) :] == bytes([0x51, 0x95, 0x00, 0x04, 0, 0, 0, 1])


def test_vpd_truncated_to_allocation_length() -> None:
    data = bytes(run(make_lu(), inquiry(1, 0x83, 10)).data)
    assert data == bytes([0, 0x83, 0, 104, 0x01, 0x03, 0x00, 0x10]) + make_lu().identity.naa[:2]


def test_unit_attention_then_request_sense() -> None:
    lu = make_lu()
    lu.nexus_established(NEXUS)
    tur = bytes(6)
    assert check(run(lu, tur))[:3] == (6, 0x29, 0x00)
    assert run(lu, tur).status == Status.GOOD
    lu.nexus_lost(NEXUS)
    lu.nexus_established(NEXUS)
    # INQUIRY does not consume the unit attention; REQUEST SENSE reports and clears it.
    assert run(lu, inquiry(0, 0, 36)).status == Status.GOOD
    data = bytes(run(lu, bytes([0x03, 0, 0, 0, 252, 0])).data)
    assert data[0] == 0x70 and data[2] == 6 and data[12:14] == bytes([0x29, 0])
    data = bytes(run(lu, bytes([0x03, 1, 0, 0, 252, 0])).data)
    assert data == bytes([0x72, 0, 0, 0, 0, 0, 0, 0])
    assert run(lu, tur).status == Status.GOOD


def test_unit_attentions_raised_after_every_queue_emptied_reach_each_nexus_in_order() -> None:
    # A LU with no unit attention pending skips the per-command lookup; what is queued later
    # must still arrive, to each nexus it was queued for, once and in order.
    other = Nexus("iqn.2024-01.org.example:other,i,0x1", NEXUS.target_port, 3)
    lu = make_lu()
    tur = bytes(6)
    for nexus in (NEXUS, other):
        lu.nexus_established(nexus)
        assert check(run(lu, tur, nexus))[:3] == (6, 0x29, 0x00)
        assert run(lu, tur, nexus).status == Status.GOOD
    lu.raise_unit_attention(Reason.BUS_DEVICE_RESET, except_nexus=other)
    lu.queue_unit_attention(NEXUS, Reason.MODE_PARAMETERS_CHANGED)
    assert run(lu, tur, other).status == Status.GOOD
    assert check(run(lu, tur))[:3] == (6, 0x29, 0x03)
    assert check(run(lu, tur))[:3] == (6, 0x2A, 0x01)
    assert run(lu, tur).status == Status.GOOD
    lu.queue_unit_attention(other, Reason.MODE_PARAMETERS_CHANGED)
    assert run(lu, tur).status == Status.GOOD
    assert check(run(lu, tur, other))[:3] == (6, 0x2A, 0x01)


def test_report_luns_from_target() -> None:
    lu0, lu5 = make_lu(), make_lu()
    ScsiTarget({0: lu0, 5: lu5})
    cdb = bytes([0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])
    data = bytes(run(lu5, cdb).data)
    assert data == bytes([0, 0, 0, 16, 0, 0, 0, 0]) + bytes(8) + bytes([0, 5]) + bytes(6)
    cdb = bytes([0xA0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0])
    assert bytes(run(lu5, cdb).data) == bytes(8)


def test_report_luns_bad_fields() -> None:
    lu = make_lu()
    short = bytes([0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0])
    assert check(run(lu, short)) == (5, 0x24, 0, bytes([0xC0, 0, 6]))
    bad_select = bytes([0xA0, 0, 7, 0, 0, 0, 0, 0, 1, 0, 0, 0])
    assert check(run(lu, bad_select)) == (5, 0x24, 0, bytes([0xC0, 0, 2]))


def rsoc(options: int, opcode: int = 0, sa: int = 0, alloc: int = 8192) -> bytes:
    return (
        bytes([0xA3, 0x0C, options, opcode])
        + sa.to_bytes(2, "big")
        + alloc.to_bytes(4, "big")
        + bytes(2)
    )


def test_rsoc_all_commands_matches_table() -> None:
    lu = make_lu()
    data = bytes(run(lu, rsoc(0)).data)
    body = data[4:]
    assert int.from_bytes(data[:4], "big") == len(body) == 8 * len(SPC_TABLE)
    descriptors = [body[i : i + 8] for i in range(0, len(body), 8)]
    assert descriptors[0] == bytes([0x00, 0, 0, 0, 0, 0, 0, 6])  # TEST UNIT READY
    assert bytes([0x5F, 0, 0, 6, 0, 1, 0, 10]) in descriptors  # PROUT REGISTER AND IGNORE
    assert bytes([0xA3, 0, 0, 0x0C, 0, 1, 0, 12]) in descriptors
    for d in descriptors:
        assert (d[5] & 1) or d[2:4] == b"\0\0"


def test_rsoc_rctd_adds_timeout_descriptors() -> None:
    data = bytes(run(make_lu(), rsoc(0x80)).data)
    assert int.from_bytes(data[:4], "big") == 20 * len(SPC_TABLE)
    assert data[4:24] == bytes([0, 0, 0, 0, 0, 0x02, 0, 6, 0, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 30])


def test_rsoc_one_command() -> None:
    lu = make_lu()
    assert bytes(run(lu, rsoc(1, 0x12)).data) == bytes(
        [0, 0x03, 0, 6, 0x12, 0x01, 0xFF, 0xFF, 0xFF, 0x07]
    )
    assert bytes(run(lu, rsoc(1, 0x28)).data) == bytes([0, 0x01, 0, 0])
    assert check(run(lu, rsoc(1, 0x5E)))[:3] == (5, 0x24, 0)
    assert check(run(lu, rsoc(2, 0x12)))[:3] == (5, 0x24, 0)
    data = bytes(run(lu, rsoc(2, 0x5E, 0x02)).data)
    assert data == bytes([0, 0x03, 0, 10, 0x5E, 0x02, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07])
    assert bytes(run(lu, rsoc(3, 0x00)).data)[:4] == bytes([0, 0x03, 0, 6])
    assert check(run(lu, rsoc(4)))[:3] == (5, 0x24, 0)


def test_report_supported_tmfs() -> None:
    cdb = bytes([0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0])
    assert bytes(run(make_lu(), cdb).data) == bytes([0xDA, 0, 0, 0])


def test_unknown_service_action_and_opcode() -> None:
    lu = make_lu()
    prin_bad = bytes([0x5E, 0x04, 0, 0, 0, 0, 0, 0, 0xFF, 0])
    assert check(run(lu, prin_bad)) == (5, 0x24, 0, bytes([0xCC, 0, 1]))
    assert check(run(lu, bytes([0x28] + [0] * 9)))[:3] == (5, 0x20, 0)
