"""Volume pairs through the real iSCSI path: the vendor commands, the split image, resync,
their documented refusals, and kill -9 at every copying phase."""

from __future__ import annotations

import random

import pytest
from conftest import Daemon, DaemonFactory
from pair_scsi import (
    ADDRESSED,
    CREATE,
    DELETE,
    RESYNC,
    SPLIT,
    BlockClient,
    pair_config,
    pair_in,
    pair_out,
)

MiB = 1 << 20
SIZE = 8 * MiB
IQN = "iqn.2026-11.org.targetd:pairs"
ILLEGAL = 0x5


def start(factory: DaemonFactory, rate: str = "1MiB") -> Daemon:
    return factory(pair_config(IQN, rate))


@pytest.mark.parametrize("seed", [1, 2])
def test_split_image_and_resync_follow_the_model(targetd_factory: DaemonFactory, seed: int) -> None:
    rng = random.Random(seed)
    daemon = start(targetd_factory)
    client = BlockClient(daemon.port, IQN)
    model = bytearray(SIZE)
    client.random_writes(0, model, rng, 20)
    client.create(0, 1, b"db")
    st = client.status(0)
    assert (st.source, st.target, st.name) == ("DUPLEX-PENDING", "DUPLEX-PENDING", "db")
    assert (st.source_lun, st.target_lun, st.chunk_size, st.chunks) == (0, 1, 65536, 128)
    client.random_writes(0, model, rng, 20)
    image = bytes(model)
    client.ok(pair_out(SPLIT, 1))  # by the target's LUN, sent to LUN 0
    st = client.status(1, via=1)
    assert (st.source, st.target) == ("SPLIT", "SPLIT-PENDING") and st.dirty > 0
    assert st.split_ms > 0
    # At once: writes to the source; the target is a writable point-in-time copy.
    client.random_writes(0, model, rng, 20)
    target_model = bytearray(image)
    client.random_writes(1, target_model, rng, 5)
    assert client.read(1, 0, SIZE) == target_model  # merged with the pending chunks
    client.wait("SPLIT")
    assert client.read(1, 0, SIZE) == target_model
    assert client.read(0, 0, SIZE) == model
    st = client.status()
    assert st.dirty == 0 and st.changed > 0
    client.ok(pair_out(RESYNC))
    client.wait("DUPLEX")
    assert client.read(1, 0, SIZE) == model
    status, _, sense = client.run(
        bytes([0x8A, 0]) + bytes(8) + b"\0\0\0\x01\0\0", lun=1, data=bytes(512)
    )
    assert status == 2 and sense == (0x7, 0x27, 0x00)  # a mirror is write-protected
    client.ok(pair_out(DELETE))
    st = client.status()
    assert (st.source, st.target, st.name) == ("SIMPLEX", "SIMPLEX", "")
    client.write(1, 0, bytes(512))  # writable again
    client.close()


def test_refusals_get_their_documented_sense(targetd_factory: DaemonFactory) -> None:
    daemon = start(targetd_factory, "0")
    c = BlockClient(daemon.port, IQN, (0, 1, 2))

    def sense(cdb: bytes, data: bytes = b"", lun: int = 0) -> tuple[int, int, int] | None:
        status, _, s = c.run(cdb, data=data, lun=lun)
        assert status == (2 if s else 0)
        return s

    assert sense(pair_out(SPLIT)) == (ILLEGAL, 0x80, 0x01)  # not in a pair
    assert sense(pair_out(CREATE, 0, 2)) == (ILLEGAL, 0x80, 0x03)  # sizes differ
    assert sense(pair_out(CREATE, 0, 0)) == (ILLEGAL, 0x80, 0x06)  # one LUN
    assert sense(pair_out(CREATE, 0, 9)) == (ILLEGAL, 0x24, 0x00)  # no LUN 9
    assert sense(pair_out(CREATE, 0, 1, 40), b"x" * 40) == (ILLEGAL, 0x24, 0x00)  # name > 32
    assert sense(pair_out(CREATE, 0, 1, 4), b"a b!") == (ILLEGAL, 0x26, 0x00)
    assert sense(pair_out(CREATE, 0, 1, 8), b"abc") == (ILLEGAL, 0x1A, 0x00)  # short data
    assert sense(pair_out(0x09)) == (ILLEGAL, 0x24, 0x00)  # no such service action
    assert sense(pair_out(SPLIT)[:6] + b"\x01" + pair_out(SPLIT)[7:]) == (ILLEGAL, 0x24, 0x00)
    assert sense(pair_out(CREATE, 0, 1, 1), b"p") is None
    assert sense(pair_out(CREATE, 2, 1)) == (ILLEGAL, 0x80, 0x04)  # LUN 1 is paired
    assert sense(pair_out(CREATE, 0, 1, 1), b"p") == (ILLEGAL, 0x80, 0x05)  # name in use
    c.wait("DUPLEX")
    assert sense(pair_out(RESYNC)) == (ILLEGAL, 0x80, 0x02)  # not split
    _, _, raw = c.ini.command(pair_out(RESYNC))
    assert raw[0] == 0xF0 and raw[3:7] == (0x0202).to_bytes(4, "big")  # INFORMATION: states
    assert sense(pair_out(SPLIT)) is None
    assert sense(pair_out(SPLIT)) == (ILLEGAL, 0x80, 0x02)
    c.wait("SPLIT")  # nothing to reflect, but SPLIT follows a bitmap sync
    # Short allocation length: the status is cut, not refused.
    status, data, _ = c.run(pair_in(ADDRESSED, 4), read=4)
    assert status == 0 and data == bytes([0, 134, 4, 4])
    st = c.status(2, via=2)
    assert (st.source, st.target, st.source_lun) == ("SIMPLEX", "SIMPLEX", 2)
    # The data is untouched and the daemon still serves.
    c.write(2, 0, b"\x11" * 4096)
    assert c.read(2, 0, 4096) == b"\x11" * 4096
    c.close()


def test_kill9_during_creation_copy_resumes(targetd_factory: DaemonFactory) -> None:
    rng = random.Random(7)
    daemon = start(targetd_factory, "1MiB")
    c = BlockClient(daemon.port, IQN)
    model = bytearray(rng.randbytes(SIZE))
    c.write(0, 0, bytes(model))
    c.create(0, 1)
    c.random_writes(0, model, rng, 10)
    assert c.status().source == "DUPLEX-PENDING"
    c.close()
    daemon.kill()
    daemon.start()
    c = BlockClient(daemon.port, IQN)
    assert c.status().source in ("DUPLEX-PENDING", "DUPLEX")
    assert c.read(0, 0, SIZE) == model  # no acknowledged write lost
    c.random_writes(0, model, rng, 10)
    c.wait("DUPLEX", timeout=30)
    assert c.read(1, 0, SIZE) == model
    c.close()


def test_kill9_during_split_pending_keeps_the_split_image(targetd_factory: DaemonFactory) -> None:
    rng = random.Random(8)
    daemon = start(targetd_factory, "1MiB")
    c = BlockClient(daemon.port, IQN)
    model = bytearray(SIZE)
    c.random_writes(0, model, rng, 10)
    c.create(0, 1)
    c.write(0, 0, rng.randbytes(4 * MiB))
    model[: 4 * MiB] = c.read(0, 0, 4 * MiB)
    image = bytes(model)
    c.ok(pair_out(SPLIT))
    c.random_writes(0, model, rng, 30)  # copy-before-write for many of these
    assert c.status().target == "SPLIT-PENDING"
    c.close()
    daemon.kill()
    daemon.start()
    c = BlockClient(daemon.port, IQN)
    assert c.read(1, 0, SIZE) == image
    c.wait("SPLIT", timeout=30)
    assert c.read(1, 0, SIZE) == image
    assert c.read(0, 0, SIZE) == model
    c.close()


def test_kill9_during_resync_converges(targetd_factory: DaemonFactory) -> None:
    rng = random.Random(9)
    daemon = start(targetd_factory, "1MiB")
    c = BlockClient(daemon.port, IQN)
    model = bytearray(SIZE)
    c.create(0, 1)
    c.wait("DUPLEX")
    c.ok(pair_out(SPLIT))
    c.wait("SPLIT")
    c.write(0, 0, rng.randbytes(6 * MiB))
    model[: 6 * MiB] = c.read(0, 0, 6 * MiB)
    c.write(1, 7 * MiB, b"\x55" * MiB)  # the target's own change is undone by resync
    c.ok(pair_out(RESYNC))
    c.random_writes(0, model, rng, 10)
    assert c.status().source == "RESYNC"
    c.close()
    daemon.kill()
    daemon.start()
    c = BlockClient(daemon.port, IQN)
    assert c.status().source in ("RESYNC", "DUPLEX")
    c.wait("DUPLEX", timeout=30)
    assert c.read(0, 0, SIZE) == model
    assert c.read(1, 0, SIZE) == model
    c.close()
