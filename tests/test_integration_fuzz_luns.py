"""The CDB fuzz of scsi/tests/test_fuzz_cdb.py against the daemon's own LUs.

``targetd.luns.build_targets`` attaches what scsi/ may not import: the pair commands'
control (backing.pairs) and EXTENDED COPY / RECEIVE COPY RESULTS (xcopy). The tests are
the same functions; only the ``world`` fixture differs.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_fuzz_cdb import (
    BLOCK,
    BLOCK_4K,
    CHANGER,
    DRIVE,
    EMPTY_DRIVE,
    NEXUS,
    OTHER,
    SINK,
    TAPE,
    MiB,
    World,
    _cancel_leftovers,
    errors,
    test_absent_luns,
    test_any_opcode,
    test_block_lu_cdbs,
    test_changer_cdbs,
    test_file_sink_cdbs,
    test_parameter_lists,
    test_tape_lu_cdbs,
)

from backing.pairs import PairManager, PairService
from scsi.buffers import BufferPool
from scsi.changer_device import MediaChanger
from targetd.config import Config, LibraryConfig, LunConfig, TargetConfig
from targetd.luns import build_targets, close_targets

IQN = "iqn.2026-11.org.targetd:fuzz"
__all__ = [
    "errors",
    "test_absent_luns",
    "test_any_opcode",
    "test_block_lu_cdbs",
    "test_changer_cdbs",
    "test_file_sink_cdbs",
    "test_parameter_lists",
    "test_tape_lu_cdbs",
]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    state = Path(tempfile.mkdtemp(prefix="targetd-fuzz-luns-"))
    luns = (
        LunConfig(BLOCK, "block", state / "lun0.img", 4 * MiB),
        LunConfig(BLOCK_4K, "block", state / "lun1.img", 4 * MiB, block_size=4096),
        LunConfig(TAPE, "tape", state / "tape.img", MiB),
        LunConfig(SINK, "filesink", state / "sink", 4 * MiB),
        LunConfig(4, "block", state / "lun4.img", 4 * MiB),
        # A tape library as the daemon builds it: the changer and two drives, one loaded.
        LunConfig(
            CHANGER,
            "changer",
            state / "vtl",
            MiB,
            library=LibraryConfig(slots=3, mail_slots=1, tapes=("F1", "F2")),
        ),
        LunConfig(DRIVE, "tape", state / "drive0.img", MiB, changer=CHANGER),
        LunConfig(EMPTY_DRIVE, "tape", state / "drive1.img", MiB, changer=CHANGER),
    )
    config = Config(targets=(TargetConfig(IQN, luns=luns),), state_dir=state)
    loop = asyncio.new_event_loop()
    pairs = PairService(PairManager(state))
    targets = build_targets(config, pairs)
    loop.run_until_complete(pairs.start())
    target = targets[IQN]
    changer = target.luns[CHANGER]
    assert isinstance(changer, MediaChanger)
    slot, drive = changer.elements.get(0x0400), changer.elements.get(0x0100)
    loop.run_until_complete(changer.move(slot, drive))  # F1 into DRIVE
    for nexus in (NEXUS, OTHER):
        target.nexus_established(nexus)
    try:
        yield World(loop, target, BufferPool())
    finally:
        loop.run_until_complete(pairs.stop())
        loop.run_until_complete(_cancel_leftovers())
        close_targets(targets)
        loop.close()
        shutil.rmtree(state, ignore_errors=True)
