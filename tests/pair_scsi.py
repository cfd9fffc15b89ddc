"""Helpers for the pair integration tests: the vendor pair CDBs, READ(16) and WRITE(16), and
a small block client over :class:`RawInitiator` (one session, LUN-addressed reads and
writes)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from raw_initiator import RawInitiator

from scsi.sense import parse_sense

BLOCK = 512
ADDRESSED = 0xFFFF
# CDBs and sense (key, ASC, ASCQ) the capacity tests share.
TUR = bytes(6)
READ_CAPACITY_16 = bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + bytes(2)
CAPACITY_DATA_HAS_CHANGED = (0x6, 0x2A, 0x09)
LBA_OUT_OF_RANGE = (0x5, 0x21, 0x00)
CREATE, SPLIT, RESYNC, DELETE = 0x01, 0x02, 0x03, 0x04
STATES = {
    0: "SIMPLEX",
    1: "DUPLEX-PENDING",
    2: "DUPLEX",
    3: "SPLIT-PENDING",
    4: "SPLIT",
    5: "SUSPENDED",
    6: "RESYNC",
    7: "DELETE",
    8: "REVERSE-COPY",
}


def pair_config(iqn: str, rate: str) -> str:
    """A target with two 8 MiB LUNs (a pair) and a 4 MiB one, copying at ``rate``."""
    return f"""
[pairs]
chunk_size = "64KiB"
copy_rate = "{rate}"

[[target]]
name = "{iqn}"
[[target.lun]]
lun = 0
size = "8MiB"
[[target.lun]]
lun = 1
size = "8MiB"
[[target.lun]]
lun = 2
size = "4MiB"
"""


def read16(lba: int, blocks: int) -> bytes:
    return bytes([0x88, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + bytes(2)


def write16(lba: int, blocks: int, fua: bool = False) -> bytes:
    flags = 0x08 if fua else 0
    return bytes([0x8A, flags]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + bytes(2)


def pair_out(action: int, lun: int = ADDRESSED, other: int = 0, length: int = 0) -> bytes:
    return (
        bytes([0xC4, action])
        + lun.to_bytes(2, "big")
        + other.to_bytes(2, "big")
        + bytes(4)
        + length.to_bytes(4, "big")
        + bytes(2)
    )


def pair_in(lun: int = ADDRESSED, allocation: int = 96) -> bytes:
    return (
        bytes([0xC5, 0x00]) + lun.to_bytes(2, "big") + bytes(6) + allocation.to_bytes(4, "big")
    ) + bytes(2)


@dataclass
class Status:
    source: str
    target: str
    reason: int
    percent: int
    source_lun: int
    target_lun: int
    chunk_size: int
    chunks: int
    dirty: int
    changed: int
    rate: int
    copied: int
    split_ms: int
    name: str
    group: str = ""
    secondaries: int = 0  # pairs of the primary (bytes 128-135; only read past 128)
    secondary_luns: tuple[int, ...] = ()

    @classmethod
    def parse(cls, d: bytes) -> Status:
        u = lambda a, b: int.from_bytes(d[a:b], "big")  # noqa: E731
        assert u(0, 2) == 134 and len(d) in (96, 128, 136)
        count = d[128] if len(d) > 128 else 0
        return cls(
            STATES[d[2]],
            STATES[d[3]],
            d[4],
            d[5],
            u(6, 8),
            u(8, 10),
            u(12, 16),
            u(16, 24),
            u(24, 32),
            u(32, 40),
            u(40, 48),
            u(48, 56),
            u(56, 64),
            d[64:96].rstrip(b"\0").decode(),
            d[96:128].rstrip(b"\0").decode(),
            count,
            tuple(u(130 + 2 * i, 132 + 2 * i) for i in range(count)),
        )


class BlockClient:
    """One logged-in session; raises AssertionError with the sense on CHECK CONDITION."""

    def __init__(
        self, port: int, iqn: str, luns: tuple[int, ...] = (0, 1), *, name: str | None = None
    ) -> None:
        self.ini = RawInitiator(port) if name is None else RawInitiator(port, name=name)
        resp = self.ini.login(iqn)
        assert resp.bhs[36] == 0, resp.bhs.hex()
        for lun in luns:
            self.ini.clear_unit_attentions(lun)

    def close(self) -> None:
        self.ini.close()

    def run(
        self, cdb: bytes, *, lun: int = 0, read: int = 0, data: bytes = b""
    ) -> tuple[int, bytes, tuple[int, int, int] | None]:
        status, data_in, sense = self.ini.command(cdb, lun=lun, read=read, data=data)
        return status, data_in, parse_sense(sense) if sense else None

    def ok(self, cdb: bytes, *, lun: int = 0, read: int = 0, data: bytes = b"") -> bytes:
        status, data_in, sense = self.run(cdb, lun=lun, read=read, data=data)
        assert status == 0, f"status {status:#x} sense {sense}"
        return data_in

    def write(self, lun: int, offset: int, data: bytes) -> None:
        for pos in range(0, len(data), 256 * 1024):
            piece = data[pos : pos + 256 * 1024]
            cdb = write16((offset + pos) // BLOCK, len(piece) // BLOCK)
            self.ok(cdb, lun=lun, data=piece)

    def random_writes(self, lun: int, model: bytearray, rng: random.Random, count: int) -> None:
        """``count`` writes of 1 to 128 blocks at random places of ``lun``, each made to
        ``model`` too (what the LUN should hold, as long as the LUN)."""
        for _ in range(count):
            blocks = rng.randrange(1, 129)
            lba = rng.randrange(len(model) // BLOCK - blocks)
            data = rng.randbytes(blocks * BLOCK)
            self.write(lun, lba * BLOCK, data)
            model[lba * BLOCK : (lba + blocks) * BLOCK] = data

    def read(self, lun: int, offset: int, length: int) -> bytes:
        out = bytearray()
        for pos in range(0, length, 1 << 20):
            n = min(1 << 20, length - pos)
            out += self.ok(read16((offset + pos) // BLOCK, n // BLOCK), lun=lun, read=n)
        return bytes(out)

    def create(self, source: int, target: int, name: bytes = b"") -> None:
        self.ok(pair_out(CREATE, source, target, len(name)), data=name)

    def status(self, lun: int = ADDRESSED, *, via: int = 0) -> Status:
        return Status.parse(self.ok(pair_in(lun), lun=via, read=96))

    def wait(self, state: str, timeout: float = 30.0, lun: int = 0) -> Status:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(lun)
            if st.source == state and st.target == state:
                return st
            assert time.monotonic() < deadline, f"still {st}"
            time.sleep(0.05)
