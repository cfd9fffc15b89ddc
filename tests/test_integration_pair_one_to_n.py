"""One primary, three secondaries (1:N) through a real daemon and real clients: a declared
``[[pair]]``, a PAIR OUT CREATE and a ``targetd-copy create`` onto one source LUN; the
fourth refused with its sense (and by the tool, in words); PAIR IN's list of secondaries;
a split of one pair by its secondary's LUN while the others keep mirroring; a primary
named alone refused; reverse resync refused while a sibling mirrors; kill -9 with one pair
split and the others mirroring."""

from __future__ import annotations

import random
import time

from clients import targetd_copy as tool
from conftest import Daemon, DaemonFactory
from pair_scsi import (
    CREATE,
    SPLIT,
    BlockClient,
    Status,
    pair_in,
    pair_out,
)

MiB = 1 << 20
SIZE = 8 * MiB
IQN = "iqn.2026-11.org.targetd:oneton"
ILLEGAL = 0x5
REVERSE = 0x06
PRIMARY, S0, S1, S2, EXTRA = 0, 1, 2, 3, 4
CONFIG = f"""
[pairs]
chunk_size = "64KiB"
copy_rate = "16MiB"

[[target]]
name = "{IQN}"
{"".join(f'[[target.lun]]{chr(10)}lun = {n}{chr(10)}size = "8MiB"{chr(10)}' for n in range(5))}
[[pair]]
name = "s0"
source_lun = 0
target_lun = 1
"""


def status(c: BlockClient, lun: int) -> Status:
    return Status.parse(c.ok(pair_in(lun, 136), read=136))


def converged(c: BlockClient, lun: int, timeout: float = 30) -> None:
    """Until the pair of ``lun`` is DUPLEX with nothing left to copy."""
    deadline = time.monotonic() + timeout
    while True:
        st = status(c, lun)
        if (st.source, st.target, st.dirty) == ("DUPLEX", "DUPLEX", 0):
            return
        assert time.monotonic() < deadline, f"LUN {lun}: still {st}"
        time.sleep(0.05)


def sense_of(c: BlockClient, cdb: bytes, data: bytes = b"") -> tuple[int, int, int] | None:
    status_byte, _, s = c.run(cdb, data=data)
    assert status_byte == (2 if s else 0)
    return s


def three_secondaries(factory: DaemonFactory) -> tuple[Daemon, BlockClient]:
    daemon = factory(CONFIG)
    c = BlockClient(daemon.port, IQN, tuple(range(5)))
    c.create(PRIMARY, S1, b"s1")  # the vendor command
    tool("create", daemon.url(PRIMARY), daemon.url(S2), "--name", "s2")  # the host tool
    for lun in (S0, S1, S2):
        converged(c, lun)
    return daemon, c


def test_three_secondaries_and_the_fourth_refused(targetd_factory: DaemonFactory) -> None:
    daemon, c = three_secondaries(targetd_factory)
    # The fourth: PAIR TOO MANY SECONDARIES (80h/09h), and nothing is created.
    assert sense_of(c, pair_out(CREATE, PRIMARY, EXTRA, 2), b"s3") == (ILLEGAL, 0x80, 0x09)
    assert status(c, EXTRA).target == "SIMPLEX"
    refused = tool("create", daemon.url(PRIMARY), daemon.url(EXTRA), "--name", "s3", check=False)
    assert refused.returncode == 1
    assert "PAIR TOO MANY SECONDARIES" in refused.stderr, refused.stderr
    # PAIR IN: the old 128 bytes unchanged for the pair of the secondary named; bytes
    # 128-135 list the primary's secondaries (by pair name).
    st = status(c, S1)
    assert (st.name, st.source_lun, st.target_lun) == ("s1", PRIMARY, S1)
    assert (st.secondaries, st.secondary_luns) == (3, (S0, S1, S2))
    old = c.ok(pair_in(S1, 128), read=128)
    assert old == c.ok(pair_in(S1, 136), read=136)[:128]
    assert status(c, PRIMARY).name == "s0"  # a primary alone: its first pair by name
    # A pair named by its primary alone is ambiguous: PAIR LUN must name the secondary.
    assert sense_of(c, pair_out(SPLIT)) == (ILLEGAL, 0x80, 0x0A)
    assert sense_of(c, pair_out(SPLIT, PRIMARY)) == (ILLEGAL, 0x80, 0x0A)
    for lun in (S0, S1, S2):
        assert status(c, lun).target == "DUPLEX"
    c.close()


def test_one_split_leaves_the_others_mirroring(targetd_factory: DaemonFactory) -> None:
    daemon, c = three_secondaries(targetd_factory)
    rng = random.Random(3)
    model = bytearray(c.read(PRIMARY, 0, SIZE))

    c.random_writes(PRIMARY, model, rng, 20)
    image1 = bytes(model)
    c.ok(pair_out(SPLIT, S1))  # s1 by its secondary's LUN, sent to the primary
    c.random_writes(PRIMARY, model, rng, 20)
    image2 = bytes(model)
    # s2 by targetd-copy naming the primary and, with --secondary, the pair meant.
    out = tool("split", daemon.url(PRIMARY), "--secondary", daemon.url(S2), "--wait").stdout
    assert "pair s2:" in out and "SPLIT" in out, out
    c.random_writes(PRIMARY, model, rng, 20)
    assert c.read(S1, 0, SIZE) == image1
    assert c.read(S2, 0, SIZE) == image2
    converged(c, S0)
    assert status(c, S0).target == "DUPLEX"
    assert c.read(S0, 0, SIZE) == bytes(model)
    # Reverse resync from s1 while s0 still mirrors the primary: refused, nothing changes.
    s = c.ini.command(pair_out(REVERSE, S1))
    assert s[0] == 2
    raw = s[2]
    assert (raw[2] & 0xF, raw[12], raw[13]) == (ILLEGAL, 0x80, 0x02)
    assert raw[3:7] == (0x0202).to_bytes(4, "big")  # INFORMATION: the sibling's states
    assert status(c, S1).target == "SPLIT"
    # With every other pair split, s1 restores the primary to its own split instant.
    c.ok(pair_out(SPLIT, S0))
    c.wait("SPLIT", lun=S0)
    c.wait("SPLIT", lun=S2)
    c.ok(pair_out(REVERSE, S1))
    c.wait("DUPLEX", lun=S1)
    assert c.read(PRIMARY, 0, SIZE) == image1
    assert c.read(S2, 0, SIZE) == image2  # the siblings keep their images
    tool("resync", daemon.url(S2), "--wait")
    converged(c, S2)
    assert c.read(S2, 0, SIZE) == image1
    c.close()


def test_kill9_keeps_each_pair_of_a_primary(targetd_factory: DaemonFactory) -> None:
    daemon, c = three_secondaries(targetd_factory)
    c.write(PRIMARY, 0, b"\x01" * MiB)
    converged(c, S0)
    c.ok(pair_out(SPLIT, S1))
    c.write(PRIMARY, 0, b"\x02" * MiB)
    c.close()
    daemon.kill()
    daemon.start()
    c = BlockClient(daemon.port, IQN, tuple(range(5)))
    assert status(c, S1).source == "SPLIT"
    assert c.read(S1, 0, MiB) == b"\x01" * MiB
    for lun in (S0, S2):
        converged(c, lun)
        assert c.read(lun, 0, MiB) == b"\x02" * MiB
    assert status(c, S1).secondary_luns == (S0, S1, S2)
    c.close()
