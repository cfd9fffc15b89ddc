"""Property-based bad CDBs and Data-Out against real LUs (docs/design.md, the promises).

Every opcode of every device table (block, tape, file sink)
gets random CDB bytes, lengths and Data-Out buffers. The answer is always a ScsiResult
with GOOD, CHECK CONDITION, CONDITION MET or RESERVATION CONFLICT, and never the
INTERNAL TARGET FAILURE (HARDWARE ERROR 44/00) the dispatcher gives when a handler crashed.
The LUs live on temp files; tests/test_integration_fuzz_luns.py runs these same tests
against the daemon's own LUs (pairs and EXTENDED COPY attached), which scsi/ may not import.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backing.tape_image import TapeImage, create
from backing.tape_library import TapeDirectory
from scsi.block_device import BlockDevice
from scsi.buffers import BufferPool
from scsi.changer_device import MediaChanger, TapeLibrary
from scsi.command import Nexus, ScsiCommand, ScsiResult, Status
from scsi.file_sink import FileSinkDevice
from scsi.logical_unit import Identity, LogicalUnit
from scsi.opcodes import SERVICE_ACTION_OPCODES
from scsi.sense import SenseKey, parse_sense
from scsi.tape_device import TapeDevice
from scsi.target import ScsiTarget

settings.register_profile(
    "fuzz-cdb",
    max_examples=int(os.environ.get("TARGETD_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("fuzz-cdb")

MiB = 1 << 20
IQN = "iqn.2026-11.org.targetd:fuzz"
NEXUS = Nexus(
    "iqn.2026-11.test:fuzz,i,0x400000000007", f"{IQN},t,0x0001", 1, "iqn.2026-11.test:fuzz"
)
OTHER = Nexus(
    "iqn.2026-11.test:other,i,0x400000000008", f"{IQN},t,0x0001", 1, "iqn.2026-11.test:other"
)
ALLOWED = {Status.GOOD, Status.CHECK_CONDITION, Status.CONDITION_MET, Status.RESERVATION_CONFLICT}
# A command that waits on something (a pair to split) may not answer at once; none of the
# fuzzed ones should wait this long.
COMMAND_TIMEOUT = 10.0
BLOCK, BLOCK_4K, TAPE, SINK = 0, 1, 2, 3
CHANGER, DRIVE, EMPTY_DRIVE = 5, 6, 7


@dataclass
class World:
    loop: asyncio.AbstractEventLoop
    target: ScsiTarget
    buffers: BufferPool

    def run(self, cmd: ScsiCommand) -> ScsiResult:
        return self.loop.run_until_complete(
            asyncio.wait_for(self.target.execute(cmd), COMMAND_TIMEOUT)
        )


def scsi_only_luns(state: Path) -> dict[int, LogicalUnit]:
    """The device types as scsi/ builds them (the daemon's own, with pairs and EXTENDED
    COPY, are fuzzed the same way by tests/test_integration_fuzz_luns.py)."""
    create(state / "tape.img", MiB)
    library = TapeLibrary(
        TapeDirectory(state / "vtl", MiB), slots=3, mail_slots=1, drives=2, tapes=("F1", "F2")
    )
    drives = [TapeDevice(Identity(f"fuzz/drive{i}"), None) for i in range(2)]
    for i, drive in enumerate(drives):
        library.attach_drive(i, drive)
    # The changer's moves are fuzzed too: a cartridge may come and go under DRIVE's feet.
    library.elements.move(library.elements.get(0x400), library.elements.get(0x100))
    drives[0].insert(library.directory.open("F1"), "F1")
    return {
        CHANGER: MediaChanger(Identity("fuzz/changer"), library),
        DRIVE: drives[0],
        EMPTY_DRIVE: drives[1],
        BLOCK: BlockDevice.from_file(Identity("fuzz/lun0"), state / "lun0.img", 4 * MiB),
        BLOCK_4K: BlockDevice.from_file(
            Identity("fuzz/lun1"), state / "lun1.img", 4 * MiB, block_size=4096
        ),
        TAPE: TapeDevice(Identity("fuzz/tape"), TapeImage(state / "tape.img")),
        SINK: FileSinkDevice.from_directory(Identity("fuzz/sink"), state / "sink", 4 * MiB),
        4: BlockDevice.from_file(Identity("fuzz/lun4"), state / "lun4.img", 4 * MiB),
    }


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    state = Path(tempfile.mkdtemp(prefix="targetd-fuzz-cdb-"))
    loop = asyncio.new_event_loop()
    target = ScsiTarget(scsi_only_luns(state))
    for nexus in (NEXUS, OTHER):
        target.nexus_established(nexus)
    try:
        yield World(loop, target, BufferPool())
    finally:
        loop.run_until_complete(_cancel_leftovers())
        for lu in target.luns.values():
            lu.close()  # type: ignore[attr-defined]
        loop.close()
        shutil.rmtree(state, ignore_errors=True)


async def _cancel_leftovers() -> None:
    me = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


class ErrorLog(logging.Handler):
    """Collects the ERROR records the dispatcher logs when a handler raises."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def errors() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


def _rows(lu: LogicalUnit) -> list[tuple[int, int | None, int]]:
    return [(s.opcode, s.service_action, s.cdb_length) for s in lu.table]


@st.composite
def cdbs(draw: st.DrawFn, rows: list[tuple[int, int | None, int]]) -> bytes:
    opcode, action, length = draw(st.sampled_from(rows))
    size = draw(st.one_of(st.just(length), st.just(16), st.integers(1, 32)))
    body = bytearray(draw(st.binary(min_size=size, max_size=size)))
    if draw(st.integers(0, 2)):  # mostly small numbers: they pass the range checks
        for i in range(1, size):
            body[i] = draw(st.sampled_from([0, 0, 0, 1, 2, 8, 0x10, 0xFF])) if i > 1 else body[i]
    body[0] = opcode
    if action is not None and size > 1:
        body[1] = (body[1] & 0xE0) | action
    return bytes(body)


data_outs = st.one_of(
    st.none(),
    st.just(b""),
    st.binary(max_size=64),
    st.integers(0, 9000).map(lambda n: bytes([n & 0xFF]) * n),
    st.sampled_from([512, 4096, 8192]).map(bytes),
)


def check(result: object, cmd: ScsiCommand) -> None:
    assert isinstance(result, ScsiResult), result
    assert result.status in ALLOWED, (cmd.cdb.hex(), result)
    if result.status == Status.CHECK_CONDITION:
        assert result.sense, cmd.cdb.hex()
        key, asc, ascq = parse_sense(result.sense)
        assert (key, asc, ascq) != (SenseKey.HARDWARE_ERROR, 0x44, 0x00), (
            f"handler crashed on cdb {cmd.cdb.hex()} data_out "
            f"{None if cmd.data_out is None else len(cmd.data_out)}"
        )


def _fuzz_lu(world: World, lun: int, data: st.DataObject, errors: ErrorLog) -> None:
    lu = world.target.luns[lun]
    rows = _rows(lu)
    for _ in range(data.draw(st.integers(1, 4))):
        cdb = data.draw(cdbs(rows))
        out = data.draw(data_outs)
        cmd = ScsiCommand(
            cdb=cdb,
            lun=lun,
            nexus=data.draw(st.sampled_from([NEXUS, NEXUS, OTHER])),
            data_out=None if out is None else memoryview(bytearray(out)),
            data_in_length=data.draw(st.sampled_from([0, 18, 255, 4096, 1 << 20])),
            tag=data.draw(st.integers(0, 0xFFFFFFFF)),
            buffers=world.buffers,
        )
        errors.records.clear()
        result = world.run(cmd)
        check(result, cmd)
        assert not errors.records, [r.getMessage() for r in errors.records]


@FUZZ
@given(data=st.data())
def test_block_lu_cdbs(world: World, data: st.DataObject, errors: ErrorLog) -> None:
    _fuzz_lu(world, data.draw(st.sampled_from([BLOCK, BLOCK_4K, 4])), data, errors)


@FUZZ
@given(data=st.data())
def test_tape_lu_cdbs(world: World, data: st.DataObject, errors: ErrorLog) -> None:
    _fuzz_lu(world, data.draw(st.sampled_from([TAPE, DRIVE, EMPTY_DRIVE])), data, errors)


@FUZZ
@given(data=st.data())
def test_changer_cdbs(world: World, data: st.DataObject, errors: ErrorLog) -> None:
    _fuzz_lu(world, CHANGER, data, errors)


@FUZZ
@given(data=st.data())
def test_file_sink_cdbs(world: World, data: st.DataObject, errors: ErrorLog) -> None:
    _fuzz_lu(world, SINK, data, errors)


@FUZZ
@given(
    opcode=st.integers(0, 255),
    rest=st.binary(min_size=0, max_size=31),
    out=data_outs,
    lun=st.sampled_from([BLOCK, TAPE, SINK, CHANGER, EMPTY_DRIVE]),
)
def test_any_opcode(world: World, opcode: int, rest: bytes, out: bytes | None, lun: int) -> None:
    """Opcodes outside the tables and service actions nobody registered."""
    cmd = ScsiCommand(
        bytes([opcode]) + rest,
        lun,
        NEXUS,
        data_out=None if out is None else memoryview(bytearray(out)),
        data_in_length=4096,
        buffers=world.buffers,
    )
    result = world.run(cmd)
    check(result, cmd)
    table = world.target.luns[lun].table
    if table.lookup(cmd.cdb) is None:
        assert result.status == Status.CHECK_CONDITION
        key, asc, _ = parse_sense(result.sense)  # type: ignore[arg-type]
        assert key == SenseKey.ILLEGAL_REQUEST
        assert asc == (
            0x24 if opcode in SERVICE_ACTION_OPCODES and table.has_opcode(opcode) else 0x20
        )


@FUZZ
@given(
    lun=st.one_of(st.integers(EMPTY_DRIVE + 1, 0x3FFF), st.just(0xFFFF)),
    cdb=st.binary(min_size=1, max_size=16),
    opcode=st.sampled_from([0x00, 0x03, 0x12, 0x28, 0xA0, 0x2A]),
)
def test_absent_luns(world: World, lun: int, cdb: bytes, opcode: int) -> None:
    cdb = bytes([opcode]) + cdb[1:].ljust(15, b"\0")
    cmd = ScsiCommand(cdb, lun, NEXUS, data_in_length=4096, buffers=world.buffers)
    result = world.run(cmd)
    check(result, cmd)
    if opcode not in (0x03, 0x12, 0xA0) or (opcode == 0x12 and cdb[1] & 1):
        assert result.status == Status.CHECK_CONDITION
        assert parse_sense(result.sense)[:2] == (SenseKey.ILLEGAL_REQUEST, 0x25)  # type: ignore[arg-type]


# -- parameter lists: valid seeds, mutated, with the CDB's length naming them ------------
def _mode_select10(n: int) -> bytes:
    return bytes([0x55, 0x10]) + bytes(5) + n.to_bytes(2, "big") + b"\0"


def _pr_out(n: int) -> bytes:
    return bytes([0x5F, 0x00, 0]) + bytes(2) + n.to_bytes(4, "big") + b"\0"


def _unmap(n: int) -> bytes:
    return bytes([0x42, 0]) + bytes(5) + n.to_bytes(2, "big") + b"\0"


def _xcopy(n: int) -> bytes:
    return bytes([0x83, 0x00]) + bytes(8) + n.to_bytes(4, "big") + bytes(2)


def _mode_select6(n: int) -> bytes:
    return bytes([0x15, 0x10, 0, 0, n & 0xFF, 0])


CACHING = bytes([0x08, 0x12, 0x04]) + bytes(17)
CONTROL = bytes([0x0A, 0x0A]) + bytes(10)
SEEDS: list[tuple[object, bytes, tuple[int, ...]]] = [
    (_mode_select10, bytes(8) + CACHING + CONTROL, (BLOCK, TAPE, SINK)),
    (_mode_select6, bytes([0, 0, 0, 8]) + bytes(5) + bytes([0, 2, 0]) + CONTROL, (BLOCK, TAPE)),
    (_pr_out, bytes(8) + (0x1234).to_bytes(8, "big") + bytes(8), (BLOCK, TAPE)),
    (
        _unmap,
        bytes([0, 22, 0, 16]) + bytes(4) + bytes(8) + (8).to_bytes(4, "big") + bytes(4),
        (BLOCK,),
    ),
    (
        _xcopy,
        struct.pack(">BBH4xII", 1, 0, 64, 28, 0)
        + (bytes([0xE4, 0, 0, 0, 1, 3, 0, 16]) + bytes(16) + bytes(4) + bytes([0, 0, 2, 0])) * 2
        + struct.pack(">BBHHH2xHQQ", 0x02, 0, 0x18, 0, 1, 8, 0, 0),
        (BLOCK, TAPE),
    ),
]


def _current_mode_data(world: World, lun: int) -> bytes:
    """What MODE SENSE(10) reports, made into a MODE SELECT(10) list that is accepted."""
    sense = bytes([0x5A, 0, 0x3F]) + bytes(4) + (4096).to_bytes(2, "big") + b"\0"
    result = world.run(ScsiCommand(sense, lun, NEXUS, data_in_length=4096, buffers=world.buffers))
    if result.status != Status.GOOD or not result.data:
        return bytes(8)
    raw = bytearray(bytes(result.data))
    raw[0:2] = b"\0\0"  # MODE DATA LENGTH is reserved in MODE SELECT
    pos = 8 + int.from_bytes(raw[6:8], "big")
    while pos + 1 < len(raw):
        raw[pos] &= 0x7F  # PS is reserved in MODE SELECT
        pos += (
            2 + raw[pos + 1]
            if not raw[pos] & 0x40
            else 4 + int.from_bytes(raw[pos + 2 : pos + 4], "big")
        )
    return bytes(raw)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 5))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "extend"]))
        if op == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(
                st.sampled_from([0, 1, 0x3F, 0x80, 0xE4, 0xFF])
            )
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        else:
            data += draw(st.binary(max_size=48))
    return bytes(data)


@FUZZ
@given(data=st.data())
def test_parameter_lists(world: World, data: st.DataObject, errors: ErrorLog) -> None:
    build, seed, luns = data.draw(st.sampled_from(SEEDS))
    lun = data.draw(st.sampled_from(luns))
    if build is _mode_select10 and data.draw(st.booleans()):
        seed = _current_mode_data(world, lun)
    body = data.draw(mutated(seed))
    length = data.draw(st.one_of(st.just(len(body)), st.integers(0, len(body) + 64)))
    cdb = build(length)  # type: ignore[operator]
    cmd = ScsiCommand(
        cdb,
        lun,
        NEXUS,
        data_out=memoryview(bytearray(body)),
        data_in_length=0,
        buffers=world.buffers,
    )
    errors.records.clear()
    result = world.run(cmd)
    check(result, cmd)
    assert not errors.records, [r.getMessage() for r in errors.records]


# -- regressions the fuzz found ----------------------------------------------------------
def _fresh(lu: LogicalUnit, cdb: bytes) -> ScsiResult:
    """Run ``cdb`` on a new LU (its power-on unit attention consumed first)."""
    lu.nexus_established(NEXUS)
    lu.pop_unit_attention(NEXUS)
    return asyncio.run(lu.execute(ScsiCommand(cdb, 0, NEXUS)))


def test_tape_write_filemarks_beyond_iov_max(tmp_path: Path) -> None:
    """2000 marks in one command: pwritev of 2000 parts failed with EINVAL (IOV_MAX)."""
    create(tmp_path / "tape.img", MiB)
    tape = TapeDevice(Identity("fuzz/tape"), TapeImage(tmp_path / "tape.img"))
    try:
        result = _fresh(tape, bytes([0x10, 0]) + (2000).to_bytes(3, "big") + b"\0")
        assert result.status == Status.GOOD, result
        assert tape.position == 2000  # type: ignore[attr-defined]
    finally:
        tape.close()


def test_file_sink_refuses_millions_of_filemarks(tmp_path: Path) -> None:
    """Every mark is a file: 2**24 - 1 of them is VOLUME OVERFLOW, not 16M files."""
    sink = FileSinkDevice.from_directory(Identity("fuzz/sink"), tmp_path / "sink", MiB)
    try:
        result = _fresh(sink, bytes([0x10, 0, 0xFF, 0xFF, 0xFF, 0]))
        assert result.status == Status.CHECK_CONDITION
        assert parse_sense(result.sense)[:3] == (SenseKey.VOLUME_OVERFLOW, 0x00, 0x02)  # type: ignore[arg-type]
        assert list((tmp_path / "sink").iterdir()) == []
        assert _fresh(sink, bytes([0x10, 0, 0, 0, 3, 0])).status == Status.GOOD
        assert len(list((tmp_path / "sink").iterdir())) == 3
    finally:
        sink.close()
