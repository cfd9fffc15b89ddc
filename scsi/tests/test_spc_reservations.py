"""PERSISTENT RESERVE IN/OUT, RESERVE/RELEASE (6) and the reservation conflict check."""

from __future__ import annotations

import asyncio

import pytest

from scsi.command import Nexus, ScsiCommand, ScsiResult, Status
from scsi.logical_unit import Identity, LogicalUnit
from scsi.opcodes import OpcodeTable
from scsi.reservations import PrType
from scsi.sense import parse_sense
from scsi.spc import SPC_TABLE
from scsi.transport_id import TransportId

TABLE = OpcodeTable("test", SPC_TABLE)


@TABLE.command(0x28, "READ(10)", bytes([0x28] + [0xFF] * 8 + [0x07]))
async def read10(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    return ScsiResult(data=b"r")


@TABLE.command(0x2A, "WRITE(10)", bytes([0x2A] + [0xFF] * 8 + [0x07]))
async def write10(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    return ScsiResult()


class Unit(LogicalUnit):
    table = TABLE


A = Nexus("iqn.a,i,0x1", "iqn.t,t,0x1")
B = Nexus("iqn.b,i,0x1", "iqn.t,t,0x1")
C = Nexus("iqn.c,i,0x1", "iqn.t,t,0x1", 2)
READ = bytes([0x28] + [0] * 9)
WRITE = bytes([0x2A] + [0] * 9)
TUR = bytes(6)


def make_lu() -> Unit:
    lu = Unit(Identity("pr"))
    for nexus in (A, B, C):
        lu.nexus_established(nexus)
        lu.pop_unit_attention(nexus)
    return lu


def run(lu: LogicalUnit, nexus: Nexus, cdb: bytes, data: bytes | None = None) -> ScsiResult:
    out = memoryview(data) if data is not None else None
    return asyncio.run(lu.execute(ScsiCommand(cdb, 0, nexus, data_out=out)))


def prout(lu, nexus, sa, key=0, sa_key=0, pr_type=0, flags=0, length=24) -> ScsiResult:
    params = key.to_bytes(8, "big") + sa_key.to_bytes(8, "big") + bytes([0] * 4 + [flags] + [0] * 3)
    cdb = bytes([0x5F, sa, pr_type, 0, 0]) + length.to_bytes(4, "big") + b"\0"
    return run(lu, nexus, cdb, params[:length])


def prin(lu, nexus, sa, alloc=1024) -> bytes:
    result = run(lu, nexus, bytes([0x5E, sa, 0, 0, 0, 0, 0]) + alloc.to_bytes(2, "big") + b"\0")
    assert result.status == Status.GOOD
    return bytes(result.data)


def status(result: ScsiResult) -> Status:
    return result.status


def ua(lu: LogicalUnit, nexus: Nexus) -> tuple[int, int, int] | None:
    result = run(lu, nexus, TUR)
    return parse_sense(result.sense) if result.status == Status.CHECK_CONDITION else None


REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_ABORT, REG_IGNORE = range(7)


def test_register_read_keys_and_generation() -> None:
    lu = make_lu()
    assert prin(lu, A, 0) == bytes(8)
    assert status(prout(lu, A, REGISTER, sa_key=0x1111)) == Status.GOOD
    assert status(prout(lu, B, REG_IGNORE, key=0x99, sa_key=0x2222)) == Status.GOOD
    assert prin(lu, A, 0) == bytes([0, 0, 0, 2, 0, 0, 0, 16]) + (0x1111).to_bytes(8, "big") + (
        0x2222
    ).to_bytes(8, "big")
    # Wrong current key: conflict, nothing changes.
    assert status(prout(lu, A, REGISTER, key=0x5, sa_key=0x7)) == Status.RESERVATION_CONFLICT
    assert status(prout(lu, C, REGISTER, key=0x5, sa_key=0x7)) == Status.RESERVATION_CONFLICT
    assert status(prout(lu, A, REGISTER, key=0x1111, sa_key=0)) == Status.GOOD
    assert prin(lu, B, 0, alloc=12) == bytes([0, 0, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0])


def test_prout_parameter_checks() -> None:
    lu = make_lu()
    result = prout(lu, A, REGISTER, sa_key=1, length=20)
    assert parse_sense(result.sense) == (5, 0x1A, 0)
    # SPEC_I_PT needs the TransportID list's length after the 24 bytes.
    assert parse_sense(prout(lu, A, REGISTER, sa_key=1, flags=0x08).sense) == (5, 0x1A, 0)
    # APTPL on a LU that cannot keep it.
    result = prout(lu, A, REGISTER, sa_key=1, flags=0x01)
    assert parse_sense(result.sense) == (5, 0x26, 0)
    assert result.sense[15:18] == bytes([0x88, 0, 20])
    prout(lu, A, REGISTER, sa_key=1)
    result = prout(lu, A, RESERVE, key=1, pr_type=2)
    assert parse_sense(result.sense) == (5, 0x24, 0)
    result = prout(lu, A, RESERVE, key=1, pr_type=0x11)
    assert parse_sense(result.sense) == (5, 0x24, 0)


def test_reserve_read_reservation_and_release() -> None:
    lu = make_lu()
    prout(lu, A, REGISTER, sa_key=0xA)
    assert status(prout(lu, A, RESERVE, key=0xA, pr_type=3)) == Status.GOOD
    assert status(prout(lu, A, RESERVE, key=0xA, pr_type=3)) == Status.GOOD
    assert status(prout(lu, A, RESERVE, key=0xA, pr_type=1)) == Status.RESERVATION_CONFLICT
    expected = bytes([0, 0, 0, 1, 0, 0, 0, 16]) + (0xA).to_bytes(8, "big") + bytes(5)
    assert prin(lu, B, 1) == expected + bytes([3, 0, 0])
    result = prout(lu, A, RELEASE, key=0xA, pr_type=1)
    assert parse_sense(result.sense) == (5, 0x26, 0x04)
    assert status(prout(lu, A, RELEASE, key=0xA, pr_type=3)) == Status.GOOD
    assert prin(lu, B, 1) == bytes([0, 0, 0, 1, 0, 0, 0, 0])


def test_report_capabilities() -> None:
    assert prin(make_lu(), A, 2) == bytes([0, 8, 0x1C, 0x80, 0xEA, 0x01, 0, 0])


def test_read_full_status() -> None:
    lu = make_lu()
    prout(lu, C, REGISTER, sa_key=0xC)
    prout(lu, C, RESERVE, key=0xC, pr_type=1)
    data = prin(lu, A, 3)
    tid = TransportId("iqn.c", "1").encode()  # format 01b: the port registered
    descriptor = (
        (0xC).to_bytes(8, "big")
        + bytes(4)
        + bytes([1, 1])
        + bytes(4)
        + bytes([0, 2])
        + len(tid).to_bytes(4, "big")
        + tid
    )
    assert data == bytes([0, 0, 0, 1]) + len(descriptor).to_bytes(4, "big") + descriptor


# (type, registered B can read, can write, unregistered B can read, can write)
ACCESS = [
    (PrType.WRITE_EXCLUSIVE, True, False, True, False),
    (PrType.EXCLUSIVE_ACCESS, False, False, False, False),
    (PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, True, True, True, False),
    (PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY, True, True, False, False),
    (PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, True, True, True, False),
    (PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS, True, True, False, False),
]


@pytest.mark.parametrize(("pr_type", "reg_r", "reg_w", "unreg_r", "unreg_w"), ACCESS)
def test_access_under_each_type(pr_type, reg_r, reg_w, unreg_r, unreg_w) -> None:
    lu = make_lu()
    prout(lu, A, REG_IGNORE, sa_key=1)
    prout(lu, B, REG_IGNORE, sa_key=2)
    assert status(prout(lu, A, RESERVE, key=1, pr_type=pr_type)) == Status.GOOD
    assert status(run(lu, A, READ)) == status(run(lu, A, WRITE)) == Status.GOOD

    def allowed(cdb: bytes) -> bool:
        return status(run(lu, B, cdb)) == Status.GOOD

    assert (allowed(READ), allowed(WRITE)) == (reg_r, reg_w)
    assert status(prout(lu, B, REGISTER, key=2)) == Status.GOOD
    assert (allowed(READ), allowed(WRITE)) == (unreg_r, unreg_w)
    # Always allowed for anyone: INQUIRY, TEST UNIT READY, PRIN, REPORT LUNS.
    assert allowed(bytes([0x12, 0, 0, 0, 36, 0])) and allowed(TUR)
    assert allowed(bytes([0xA0] + [0] * 7 + [1, 0, 0, 0]))
    assert prin(lu, B, 0)


def test_unregistering_holder_releases_registrants_only_with_ua() -> None:
    lu = make_lu()
    prout(lu, A, REG_IGNORE, sa_key=1)
    prout(lu, B, REG_IGNORE, sa_key=2)
    prout(lu, A, RESERVE, key=1, pr_type=PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
    prout(lu, A, REGISTER, key=1)
    assert prin(lu, A, 1)[4:8] == bytes(4)
    assert ua(lu, B) == (6, 0x2A, 0x04)
    assert ua(lu, C) is None


def test_all_registrants_survives_holder_unregistering() -> None:
    lu = make_lu()
    prout(lu, A, REG_IGNORE, sa_key=1)
    prout(lu, B, REG_IGNORE, sa_key=2)
    prout(lu, A, RESERVE, key=1, pr_type=PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)
    prout(lu, A, REGISTER, key=1)
    assert prin(lu, A, 1)[7:] == bytes([16]) + bytes(13) + bytes([8, 0, 0])
    assert status(prout(lu, B, RELEASE, key=2, pr_type=8)) == Status.GOOD
    assert prin(lu, A, 1)[4:8] == bytes(4)


def test_preempt_removes_registration_and_bumps_generation() -> None:
    lu = make_lu()
    prout(lu, A, REG_IGNORE, sa_key=1)
    prout(lu, B, REG_IGNORE, sa_key=2)
    generation = int.from_bytes(prin(lu, A, 0)[:4], "big")
    assert status(prout(lu, B, PREEMPT, key=2, sa_key=1, pr_type=3)) == Status.GOOD
    data = prin(lu, B, 0)
    assert int.from_bytes(data[:4], "big") == generation + 1
    assert data[4:] == bytes([0, 0, 0, 8]) + (2).to_bytes(8, "big")
    assert ua(lu, A) == (6, 0x2A, 0x05)
    assert ua(lu, B) is None
    # Nothing matches a key nobody holds.
    assert status(prout(lu, B, PREEMPT, key=2, sa_key=9, pr_type=3)) == Status.RESERVATION_CONFLICT
    result = prout(lu, B, PREEMPT, key=2, sa_key=0, pr_type=3)
    assert parse_sense(result.sense) == (5, 0x26, 0)


def test_preempt_reservation_holder() -> None:
    lu = make_lu()
    prout(lu, A, REG_IGNORE, sa_key=1)
    prout(lu, B, REG_IGNORE, sa_key=2)
    prout(lu, C, REG_IGNORE, sa_key=3)
    prout(lu, A, RESERVE, key=1, pr_type=PrType.WRITE_EXCLUSIVE)
    assert status(prout(lu, B, PREEMPT_ABORT, key=2, sa_key=1, pr_type=3)) == Status.GOOD
    assert ua(lu, C) == (6, 0x2A, 0x04)  # type changed: the other registrant is told
    assert ua(lu, A) == (6, 0x2A, 0x05)
    assert prin(lu, C, 1)[8:] == (2).to_bytes(8, "big") + bytes(5) + bytes([3, 0, 0])
    assert status(run(lu, A, READ)) == Status.RESERVATION_CONFLICT


def test_preempt_all_registrants_with_zero_key() -> None:
    lu = make_lu()
    prout(lu, A, REG_IGNORE, sa_key=1)
    prout(lu, B, REG_IGNORE, sa_key=2)
    prout(lu, A, RESERVE, key=1, pr_type=PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS)
    assert status(prout(lu, B, PREEMPT, key=2, sa_key=0, pr_type=1)) == Status.GOOD
    assert prin(lu, B, 0)[8:] == (2).to_bytes(8, "big")
    assert prin(lu, B, 1)[8:] == (2).to_bytes(8, "big") + bytes(5) + bytes([1, 0, 0])


def test_clear() -> None:
    lu = make_lu()
    prout(lu, A, REG_IGNORE, sa_key=1)
    prout(lu, B, REG_IGNORE, sa_key=2)
    prout(lu, A, RESERVE, key=1, pr_type=3)
    assert status(prout(lu, C, CLEAR, key=3)) == Status.RESERVATION_CONFLICT
    assert status(prout(lu, B, CLEAR, key=2)) == Status.GOOD
    assert ua(lu, A) == (6, 0x2A, 0x03)
    assert prin(lu, A, 0)[4:] == bytes(4)
    assert prin(lu, A, 1)[4:] == bytes(4)
    assert ua(lu, B) is None


def test_reserve6_conflict_and_release() -> None:
    lu = make_lu()
    reserve6, release6 = bytes([0x16, 0, 0, 0, 0, 0]), bytes([0x17, 0, 0, 0, 0, 0])
    mode_sense = bytes([0x1A, 0, 0x3F, 0, 255, 0])
    assert status(run(lu, A, reserve6)) == Status.GOOD
    assert status(run(lu, A, reserve6)) == Status.GOOD
    assert status(run(lu, B, reserve6)) == Status.RESERVATION_CONFLICT
    assert status(run(lu, B, release6)) == Status.GOOD  # not the holder: no effect
    assert status(run(lu, A, mode_sense)) == Status.GOOD
    assert status(run(lu, B, mode_sense)) == Status.RESERVATION_CONFLICT
    assert status(run(lu, B, bytes([0x12, 0, 0, 0, 36, 0]))) == Status.GOOD
    assert status(run(lu, A, release6)) == Status.GOOD
    assert status(run(lu, B, reserve6)) == Status.GOOD
    # RESERVE(6) holds until a LUN reset, which tells the other nexuses.
    lu.reset(A)
    assert status(run(lu, C, reserve6)) != Status.RESERVATION_CONFLICT
    lu.nexus_lost(C)
    # Every nexus, the resetting one too, first hears of the reset.
    assert ua(lu, A) == (6, 0x29, 0x03)
    assert status(run(lu, A, reserve6)) == Status.GOOD
    assert ua(lu, B) == (6, 0x29, 0x03)


def test_reserve6_against_persistent_reservation() -> None:
    lu = make_lu()
    prout(lu, A, REG_IGNORE, sa_key=1)
    prout(lu, A, RESERVE, key=1, pr_type=1)
    assert status(run(lu, B, bytes([0x16, 0, 0, 0, 0, 0]))) == Status.RESERVATION_CONFLICT
    assert status(run(lu, A, bytes([0x16, 0, 0, 0, 0, 0]))) == Status.GOOD
    assert lu.reservations.legacy is None


class HeldLock:
    """A gateway's image lock the other gateway still holds (targetd/gateway.py): a write
    waits in ``enter`` until the holder lets it go."""

    def __init__(self) -> None:
        self.free = asyncio.Event()

    async def enter(self, nexus: Nexus, cdb: bytes) -> bool:
        if cdb[0] == 0x2A:
            await self.free.wait()
        return True

    def leave(self, entered: bool) -> None:
        pass

    def fenced(self, error: Exception) -> bool:
        return False


def test_a_write_that_waited_for_the_lock_meets_a_reservation_taken_meanwhile() -> None:
    """B's write passed the reservation check and waits for the image's lock; A reserves
    meanwhile (WRITE EXCLUSIVE, B not registered). Once the lock comes, B's write must not
    run: it would land after the reservation that shuts B out was granted."""

    async def scenario() -> tuple[ScsiResult, ScsiResult]:
        lu = make_lu()
        lock = lu.access_gate = HeldLock()  # type: ignore[assignment]

        def command(nexus: Nexus, cdb: bytes, data: bytes | None = None) -> asyncio.Task:
            out = memoryview(data) if data is not None else None
            return asyncio.ensure_future(lu.execute(ScsiCommand(cdb, 0, nexus, data_out=out)))

        write = command(B, WRITE)
        await asyncio.sleep(0.01)
        params = bytes(8) + (0xA).to_bytes(8, "big") + bytes(8)
        assert (
            await command(A, bytes([0x5F, REGISTER, 0, 0, 0, 0, 0, 0, 24, 0]), params)
        ).status == Status.GOOD
        params = (0xA).to_bytes(8, "big") + bytes(16)
        assert (
            await command(
                A, bytes([0x5F, RESERVE, PrType.WRITE_EXCLUSIVE, 0, 0, 0, 0, 0, 24, 0]), params
            )
        ).status == Status.GOOD
        assert not write.done()
        lock.free.set()
        return await write, await command(A, WRITE)

    late, holder = asyncio.run(scenario())
    assert late.status == Status.RESERVATION_CONFLICT
    assert holder.status == Status.GOOD
