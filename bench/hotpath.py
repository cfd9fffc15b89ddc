#!/usr/bin/env python3
"""The CPU cost of one 4 KiB command inside targetd, by stage, with no socket and no client.

Builds the daemon's own objects (default configuration, pairs, the asyncio shell
``IscsiConnection`` under uvloop) around a transport that only counts what it is given, logs
in, and feeds batches of 32 READ(16) or WRITE(16) PDUs (4 KiB, immediate data) into the
connection as a socket would, letting the loop flush the replies after each batch. What it
measures is the daemon's process CPU time per command: receive and parse, dispatch, backing
I/O (real preadv/pwritev on a sparse file), reply build, and the shell's send path up to
``writelines``. The kernel's socket work is not in it (see docs/performance.md for that share,
from py-spy on a real run). CPU time, not wall time, so a busy machine disturbs it far less
than an end-to-end benchmark: the tool for keeping or dropping a hot-path change.

    python3 bench/hotpath.py [--commands 200000] [--batch 32] [--stages] [--profile FILE]

``--stages`` times each stage with wrappers (adding ~1 us per command, shown apart);
``--profile FILE`` writes a cProfile of the run. The cyclic garbage collector is set as the
daemon sets it once started (``targetd.gc_tuning``): with Python's default thresholds an
allocating change would show collector passes that the daemon does not make.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import random
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import uvloop  # noqa: E402

from backing import sparse_file  # noqa: E402
from backing.pairs import PairManager, PairService  # noqa: E402
from targetd import eager, fast_write, gc_tuning  # noqa: E402
from targetd.config import Portal, default_config  # noqa: E402
from targetd.iscsi.connection import Connection  # noqa: E402
from targetd.iscsi.pdu import Op, new_header, put_u32  # noqa: E402
from targetd.luns import build_targets, close_targets  # noqa: E402
from targetd.pairs import pair_settings  # noqa: E402
from targetd.server import IscsiConnection, TargetServer  # noqa: E402

BATCH = 32
BLOCK = 4096
SECTORS = BLOCK // 512  # the default LUN's logical block is 512 bytes
FLAG_FINAL, FLAG_READ, FLAG_WRITE = 0x80, 0x40, 0x20
REGION_BLOCKS = (256 << 20) // BLOCK


class CountingTransport:
    """Stands in for uvloop's transport: takes the replies and counts their bytes."""

    def __init__(self) -> None:
        self.bytes = 0
        self.pdus: list[bytes] = []
        self.keep = False

    def writelines(self, out: list[Any]) -> None:
        for buf in out:
            self.bytes += len(buf)
        if self.keep:
            self.pdus.append(b"".join(bytes(b) for b in out))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def set_write_buffer_limits(self, high: int = 0, low: int = 0) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def close(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def keys(**kv: str) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in kv.items())


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def feed(protocol: IscsiConnection, raw: bytes) -> None:
    """Hand ``raw`` to the protocol the way uvloop does: into the buffer it asks for."""
    view = memoryview(raw)
    while view:
        buf = protocol.get_buffer(-1)
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        view = view[n:]
        protocol.buffer_updated(n)


def login(protocol: IscsiConnection, transport: CountingTransport, target: str) -> None:
    text = keys(
        InitiatorName="iqn.2026-11.org.targetd.bench:hotpath",
        TargetName=target,
        SessionType="Normal",
        HeaderDigest="None",
        DataDigest="None",
        MaxRecvDataSegmentLength="262144",
        ImmediateData="Yes",
        InitialR2T="No",
        FirstBurstLength="262144",
        MaxBurstLength="16776192",
    )
    hdr = new_header(Op.LOGIN_REQUEST | 0x40, 0x87, itt=1, data_length=len(text))
    hdr[8:14] = bytes([0x40, 0, 0, 0, 0, 1])
    put_u32(hdr, 24, 1)
    transport.keep = True
    feed(protocol, bytes(hdr) + pad(text))
    reply = transport.pdus[-1]
    transport.keep = False
    if reply[0] & 0x3F != Op.LOGIN_RESPONSE or reply[36] != 0:
        raise SystemExit(f"login refused: status {reply[36:38].hex()}")


def batch(write: bool, first_cmdsn: int, first_itt: int, blocks: list[int]) -> bytes:
    """One SCSI Command PDU per block (READ(16) or WRITE(16) of 4 KiB, LUN 0)."""
    out = bytearray()
    payload = b"\xa5" * BLOCK
    for i, lba in enumerate(blocks):
        flags = FLAG_FINAL | (FLAG_WRITE if write else FLAG_READ) | 1  # SIMPLE
        hdr = new_header(
            Op.SCSI_COMMAND, flags, itt=first_itt + i, data_length=BLOCK if write else 0
        )
        put_u32(hdr, 20, BLOCK)
        put_u32(hdr, 24, first_cmdsn + i)
        cdb = struct.pack(">BBQIBB", 0x8A if write else 0x88, 0, lba * SECTORS, SECTORS, 0, 0)
        hdr[32:48] = cdb
        out += hdr
        if write:
            out += payload
    return bytes(out)


async def _fill(protocol: IscsiConnection, picks: list[int]) -> None:
    """Write every block the reads will touch (CmdSN and ITT from 1 and 2, untimed)."""
    for i in range(0, len(picks), BATCH):
        feed(protocol, batch(True, 1 + i, 2 + i, picks[i : i + BATCH]))
        await asyncio.sleep(0)


class Stages:
    """Per-stage time, taken by wrapping the functions that begin and end each stage."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = {}
        self.undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        original = getattr(owner, name)
        clock = time.thread_time_ns  # CPU time: other processes' load does not count
        totals = self.ns
        totals.setdefault(stage, 0)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return original(*args, **kwargs)
            finally:
                totals[stage] += clock() - started

        setattr(owner, name, timed)
        self.undo.append(lambda: setattr(owner, name, original))

    def install(self, protocol: IscsiConnection) -> None:
        # Nested: execute contains backing I/O and reply build; subtracted below.
        self.wrap(Connection, "data_received", "receive and parse")
        # Small WRITEs that targetd.fast_write serves never reach the stages above: its
        # pwrite counts as backing I/O, its status send as send, the rest apart.
        if protocol._fast_write is not None:
            self.wrap(protocol, "_fast_write", "fast WRITE (all)")
        self.wrap(fast_write, "_pwrite", "backing I/O")
        self.wrap(eager, "start", "execute (all)")
        self.wrap(sparse_file, "_pwrite_all", "backing I/O")
        # A small write's one pwrite (SparseFile.write_now is bound before this installs).
        self.wrap(sparse_file.os, "pwrite", "backing I/O")
        self.wrap(sparse_file.SparseFile, "_read_nowait", "backing I/O")
        self.wrap(sparse_file, "_pread_all", "backing I/O")
        self.wrap(Connection, "scsi_done", "reply build")
        self.wrap(CountingTransport, "writelines", "send (writelines)")

    def remove(self) -> None:
        for undo in reversed(self.undo):
            undo()

    def per_command(self, commands: int) -> dict[str, float]:
        us = {k: v / commands / 1000 for k, v in self.ns.items()}
        execute = us.pop("execute (all)")
        fast = us.pop("fast WRITE (all)", 0.0)
        if fast:
            # All but its pwrite and its send (the run's writes being the only ones made).
            us["fast WRITE: parse, checks, statuses"] = (
                fast - us["backing I/O"] - us["send (writelines)"]
            )
            us["dispatch"] = execute - us["reply build"]
        else:
            us["dispatch"] = execute - us["backing I/O"] - us["reply build"]
        return us


async def run(args: argparse.Namespace, state_dir: Path) -> dict[str, float]:
    config = default_config(state_dir)
    pairs = PairService(PairManager(config.state_dir, pair_settings(config)))
    targets = build_targets(config, pairs)
    await pairs.start()
    server = TargetServer(config, targets)
    # As the daemon does once started, before its first connection (targetd.cli).
    gc_tuning.tune()
    protocol = IscsiConnection(server, config.portals[0] if config.portals else Portal())
    transport = CountingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    login(protocol, transport, config.targets[0].name)
    # The writes come first and touch every block the reads then read: data, not holes.
    picks = random.Random(1).choices(range(REGION_BLOCKS), k=BATCH * 64)
    results: dict[str, float] = {}
    cmdsn, itt = 1, 2
    for phase in ("write", "read"):
        write = phase == "write"
        if phase == "read" and args.only == "write":
            break
        if args.only == "read" and write:
            # The reads still need the data the writes put there, just not timed.
            await _fill(protocol, picks)
            cmdsn, itt = cmdsn + len(picks), itt + len(picks)
            continue
        size = args.batch
        batches = [batch(write, 0, 0, picks[i : i + size]) for i in range(0, len(picks), size)]
        rounds = max(1, args.commands // size)
        timings: list[float] = []
        gc_passes: list[float] = []
        stages = Stages() if args.stages else None
        profiler = cProfile.Profile() if args.profile else None
        for repeat in range(args.repeat + 1):  # the first round warms up
            if stages is not None and repeat == args.repeat:
                stages.install(protocol)
            if profiler is not None and repeat == args.repeat:
                profiler.enable()
            passes = sum(g["collections"] for g in gc.get_stats())
            started = time.process_time()
            for r in range(rounds):
                raw = bytearray(batches[r % len(batches)])
                # Stamp CmdSN and ITT the way an initiator numbers them.
                step = 48 + (BLOCK if write else 0)
                for i in range(size):
                    struct.pack_into(">I", raw, i * step + 16, itt + i)
                    struct.pack_into(">I", raw, i * step + 24, cmdsn + i)
                cmdsn += size
                itt += size
                feed(protocol, bytes(raw))
                await asyncio.sleep(0)  # the loop runs the flush, as after a socket read
            elapsed = time.process_time() - started
            passes = sum(g["collections"] for g in gc.get_stats()) - passes
            if profiler is not None and repeat == args.repeat:
                profiler.disable()
                profiler.dump_stats(f"{args.profile}.{phase}")
            if stages is not None and repeat == args.repeat:
                stages.remove()
                for name, us in stages.per_command(rounds * size).items():
                    results[f"{phase} {name}"] = us
                results[f"{phase} total, timed"] = 1e6 * elapsed / (rounds * size)
            elif repeat:
                timings.append(1e6 * elapsed / (rounds * size))
                gc_passes.append(1000 * passes / (rounds * size))
        results[f"{phase} total"] = statistics.median(timings)
        results[f"{phase} gc passes per 1,000 commands"] = statistics.median(gc_passes)
    results["bytes written per command"] = transport.bytes / (cmdsn - 1)
    results["gc young-generation threshold"] = gc.get_threshold()[0]
    await pairs.stop()
    close_targets(targets)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=100_000, help="per round")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (median)")
    parser.add_argument("--stages", action="store_true")
    parser.add_argument(
        "--batch", type=int, default=BATCH, help="PDUs per socket read (1: a client at QD1)"
    )
    parser.add_argument("--only", choices=("read", "write"), help="measure one direction")
    parser.add_argument("--profile", help="cProfile output prefix (.write/.read appended)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="targetd-hotpath-") as tmp:
        results = uvloop.run(run(args, Path(tmp)))
    print("stage | us per command")
    print("--- | ---:")
    for name, us in results.items():
        print(f"{name} | {us:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
