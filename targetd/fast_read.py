"""A small READ served in one call: the common QD1 command without the layers it crosses.

At queue depth 1 nothing batches, and a 4 KiB READ crosses about sixty Python calls between
the socket and its Data-In (receiver, CmdSN window, task, event, eager start, SCSI target,
LU checks, opcode table, CDB decode, store, metrics, reply): about 30 us with the caches
cold, against 5 us of C in tgtd (docs/performance.md, "QD1: one call per small READ").
:func:`serve` does what that path does for the one case that needs none of its generality,
reading the live state of every object the path would consult and giving up (returning
False, having changed nothing) whenever any of them would make the answer differ:

- the PDU: exactly one SCSI Command in the receive buffer, no AHS, no data segment, no
  digests, not immediate, a READ(10) or READ(16) with no protection field, SIMPLE or
  untagged (not ORDERED or HEAD OF QUEUE), of a length equal to the expected data transfer
  length, under the pool's and sendfile's thresholds and within one Data-In segment;
- the connection: in full-feature phase, in a normal session, nothing queued to send or
  hold, no command waiting for memory or CmdSN order, the ITT free, the CmdSN next in order,
  no logout or close pending, access not revoked;
- the LU: a plain ``BlockDevice`` whose READ rows are SBC's, over a ``SparseFile`` (alone or
  in an unpaired ``PairVolume``), no task-set gate, no unit attention pending for anyone, no
  ALUA restriction, no reservation, no shared-LU gate, the range within the medium and the
  transfer limit;
- the read: the whole range from the page cache (``RWF_NOWAIT``, or a memory file system).

Then it makes the same changes (receiver consumed, CmdSN and StatSN advanced, the command
counted in the LUN's metrics and the activity counter) and writes the same bytes: one
Data-In with the status, as :meth:`Replies._respond` collapses a GOOD READ. Anything else
takes the full path, which answers it as before. ``TARGETD_FAST_READ=0`` turns it off.

A socket read that brings several whole SCSI Command PDUs and nothing else (an initiator
with more than one command in flight) goes to :func:`serve_several`, which makes the same
checks for each, reads every range, and only then commits them all as the full path does a
batch: every command taken in before the first is answered, so each answer carries the
ExpCmdSN past the last of them and a MaxCmdSN one slot wider than the answer before it.
One READ that is not plain (or an ITT twice, or a CmdSN gap, or a range not cached) sends
the whole socket read the full way. :func:`serve` keeps its own straight-line copy of the
header check and the read for the one PDU of QD1, where the loop cost about 0.4 us per
READ (docs/performance.md, "Several READs of one socket read"); the tests feed every case
to both functions.
"""

from __future__ import annotations

import os
import struct
import time
from typing import TYPE_CHECKING, Any

from backing import sparse_file
from backing.pairs import PairVolume
from backing.sparse_file import SparseFile
from scsi import sbc
from scsi.activity import COMMANDS
from scsi.block_device import BlockDevice
from scsi.buffers import POOL_MIN_SIZE
from targetd.iscsi.connection import Phase
from targetd.iscsi.receiver import _State
from targetd.shell_limits import WRITE_BUFFER_HIGH

if TYPE_CHECKING:
    from targetd.server import IscsiConnection

_HEADER = _State.HEADER
_FULL_FEATURE = Phase.FULL_FEATURE
_NOWAIT = sparse_file._NOWAIT
_INLINE = sparse_file._INLINE
_RWF_NOWAIT = os.RWF_NOWAIT
_preadv = os.preadv
_clock = time.perf_counter_ns
# The largest READ served here: below the pool's lent buffers and sendfile's threshold.
MAX_LENGTH = min(POOL_MIN_SIZE, sbc.FILE_DATA_IN_MIN) - 1
# Opcode, flags, TotalAHSLength and DataSegmentLength (one word), LUN, ITT, expected data
# transfer length, CmdSN, ExpStatSN, then the CDB's opcode.
_COMMAND = struct.Struct(">BBxxI8sIIIIB").unpack_from
_OPCODE_AND_LENGTHS = struct.Struct(">BxxxI").unpack_from
_READ10 = struct.Struct(">BIxH").unpack_from  # at CDB byte 1: flags, LBA, blocks
_READ16 = struct.Struct(">BQI").unpack_from
# A Data-In that carries the whole read and its GOOD status (what datapath.single_data_in
# builds, then Replies._send stamps): opcode, flags F|S, length, LUN, ITT, TTT, StatSN,
# ExpCmdSN, MaxCmdSN.
_DATA_IN = struct.Struct(">BBxxI8sIIIII12x").pack_into
_DATA_IN_OPCODE = 0x25
_SCSI_COMMAND = 0x01
_BHS = 48

# Per LU (held weakly by the LU's identity): (the store whose file READ reads, the plain
# file, the volume or None), or None when the LU is not a plain block LU over a file.
Plan = tuple[Any, SparseFile, PairVolume | None] | None


def plan_for(lu: object) -> Plan:
    """What :func:`serve` may rely on for ``lu`` for as long as ``lu.store`` is the same
    object: its type, its READ rows and its store's shape."""
    if type(lu) is not BlockDevice:
        return None
    for opcode, handler in ((0x28, sbc.read10), (0x88, sbc.read16)):
        spec = lu.table.lookup(bytes([opcode]))
        if spec is None or spec.handler is not handler or spec.ua_exempt:
            return None
    store = lu.store
    if type(store) is PairVolume:
        base = store.base
        if type(base) is not SparseFile or lu.read_now != store.read_now:
            return None
        if store._base_read_now != base.read_now:
            return None
        return (store, base, store)
    if type(store) is SparseFile and lu.read_now == store.read_now:
        return (store, store, None)
    return None


def quiet(shell: IscsiConnection, conn: Any) -> bool:
    """Whether nothing on ``shell``'s connection, its session or its transport stands
    between a command taken in CmdSN order now and its answer written now: full-feature
    phase, no output queued or held, nothing waiting for memory or for CmdSN order, no
    logout or close pending, access not revoked, not inside the shell's own ``_pump``.
    When True, ``conn.session``, ``shell.runtime`` and ``shell.transport`` are set."""
    if (
        conn.phase is not _FULL_FEATURE
        or conn._holds
        or conn._events
        or conn._output
        or conn._room
        or conn._starved
        or conn._sending
        or conn._in_transport
        or conn.file_output
        or conn._pending_logout is not None
        or conn.nexus is None
    ):
        return False
    session = conn.session
    if session is None or session._waiting:
        return False
    if (
        shell.runtime is None
        or shell.revoked is not None
        or shell._close_requested
        or shell._half_closed
        or shell._pumping
        or shell._output.queued
    ):
        return False
    transport = shell.transport
    return transport is not None and not transport.is_closing()


def lu_quiet(lu: Any, volume: PairVolume | None) -> bool:
    """Whether nothing about the LU could change a command's answer or order: no task-set
    gate (ORDERED, HEAD OF QUEUE), no unit attention pending for any nexus, no ALUA state
    that refuses anything, no reservation of either kind, no shared-LU gate, its volume (if
    any) in no pair."""
    reservations = lu.reservations
    return not (
        lu.task_set.gated
        or lu._unit_attentions
        or lu.port_groups.restricted
        or reservations.legacy is not None
        or reservations.reservation is not None
        or lu.access_gate is not None
        or (volume is not None and volume.pairs)
    )


def lun_number(lun_raw: bytes) -> int:
    """scsi.target.decode_lun, inline."""
    method = lun_raw[0] >> 6
    return ((lun_raw[0] & 0x3F) << 8) | lun_raw[1] if method < 2 else 0xFFFF


def _readable(
    plans: dict[Any, Plan], lu: Any, lba: int, blocks: int, edtl: int
) -> tuple[SparseFile, int] | None:
    """The LU's half of the plain case for one READ (its plan, nothing about the LU in the
    way, the range): the file to read and the ``preadv2`` flags, or None."""
    try:
        plan = plans[lu]
    except KeyError:
        plan = plans[lu] = plan_for(lu)
    if plan is None:
        return None
    store, file, volume = plan
    if lu.store is not store:
        del plans[lu]
        return None
    if (
        not lu_quiet(lu, volume)
        or blocks > lu.max_transfer_blocks
        or lba + blocks > lu.num_blocks
        or blocks * lu.block_size != edtl
    ):
        return None
    mode = file._read_mode
    if mode is _NOWAIT:
        return file, _RWF_NOWAIT
    if mode is _INLINE:
        return file, 0
    return None


def send(shell: IscsiConnection, transport: Any, out: list[Any]) -> None:
    """Write a fast path's replies, then what _pump does after its write (nothing was
    queued or lent): stop reading from a client that does not take its answers."""
    transport.writelines(out)
    if transport.get_write_buffer_size() > WRITE_BUFFER_HIGH and not shell._backpressure:
        shell._backpressure = True
        transport.pause_reading()


def serve(shell: IscsiConnection, nbytes: int) -> bool:
    """Serve the READ that ``nbytes`` just completed in the receive buffer, if it is the
    plain case (see the module's docstring); False, with nothing changed, otherwise. More
    than one PDU: :func:`serve_several`."""
    conn = shell.conn
    rx = conn.receiver
    if rx._state is not _HEADER:
        return False
    start = rx._start
    end = rx._end + nbytes
    if end - start != _BHS:
        # Several whole headers (READs sent together), or anything else: not one READ.
        return not (end - start) % _BHS and serve_several(shell, nbytes)
    if rx.header_digest or conn.data_digest:
        return False
    buf = rx._buf
    op, flags, lengths, lun_raw, itt, edtl, cmdsn, _, cdb0 = _COMMAND(buf, start)
    if op != _SCSI_COMMAND or lengths or flags & 0x60 != 0x40 or (flags & 0x06) == 0x02:
        return False
    if cdb0 == 0x88:
        cdb_flags, lba, blocks = _READ16(buf, start + 33)
    elif cdb0 == 0x28:
        cdb_flags, lba, blocks = _READ10(buf, start + 33)
    else:
        return False
    if cdb_flags & 0xE0 or not blocks or edtl > MAX_LENGTH:
        return False
    if (
        edtl > conn.max_send_data
        or edtl > conn.max_burst
        or itt in conn.tasks
        or not quiet(shell, conn)
    ):
        return False
    session: Any = conn.session  # set: quiet() said so
    if cmdsn != session.exp_cmdsn:
        return False
    runtime: Any = shell.runtime
    transport: Any = shell.transport
    lun = lun_number(lun_raw)
    # A BlockDevice once its plan says so (Any: no cast call on the hot path).
    lu: Any = runtime.scsi.luns.get(lun)
    if lu is None:
        return False
    readable = _readable(shell._fast_plans, lu, lba, blocks, edtl)
    if readable is None:
        return False
    file, flags_io = readable
    started = _clock()
    data = bytearray(edtl)
    try:
        if _preadv(file._fd, [data], lba * lu.block_size, flags_io) != edtl:
            return False
    except OSError:
        return False  # a miss, or an error: the full path reads again and answers it
    # Committed: what the full path changes, in its order.
    rx._start = rx._end = end
    rx._header_only = False
    now = conn.now = shell.server.now
    conn.last_heard = now
    conn._ping_sent_at = None
    if conn._failed_itts:
        conn._failed_itts.pop(itt, None)
    exp_cmdsn = session.exp_cmdsn = (cmdsn + 1) & 0xFFFFFFFF
    COMMANDS.started += 1
    lun_stats = runtime.stats.get(lun)
    if lun_stats is not None:
        lun_stats.record(cdb0, None, data, _clock() - started, 0, None)
    stat_sn = conn.stat_sn
    conn.stat_sn = (stat_sn + 1) & 0xFFFFFFFF
    hdr = bytearray(_BHS)
    _DATA_IN(
        hdr, 0, _DATA_IN_OPCODE, 0x81, edtl, lun_raw, itt, 0xFFFFFFFF,
        stat_sn, exp_cmdsn, session.max_cmdsn,
    )  # fmt: skip
    send(shell, transport, [hdr, data])
    return True


def serve_several(shell: IscsiConnection, nbytes: int) -> bool:
    """Serve the READs that ``nbytes`` just completed in the receive buffer, if they are all
    the plain case (see the module's docstring); False, with nothing changed, otherwise.

    They are served as the full path serves such a batch: every command is taken in
    (ExpCmdSN past all of them, each counted in flight) before the first is answered, and
    each answer is stamped as it is built (StatSN one more each, MaxCmdSN a slot wider
    each)."""
    conn = shell.conn
    rx = conn.receiver
    if rx._state is not _HEADER:
        return False
    start = rx._start
    end = rx._end + nbytes
    if (end - start) % _BHS or rx.header_digest or conn.data_digest:
        return False
    buf = rx._buf
    # A run of WRITEs can fill whole headers' worth too: they stop here, before the checks.
    if _OPCODE_AND_LENGTHS(buf, start) != (_SCSI_COMMAND, 0) or not quiet(shell, conn):
        return False
    session: Any = conn.session  # set: quiet() said so
    runtime: Any = shell.runtime
    luns = runtime.scsi.luns
    plans = shell._fast_plans
    limit = min(conn.max_send_data, conn.max_burst, MAX_LENGTH)
    tasks = conn.tasks
    cmdsn = session.exp_cmdsn
    # Each READ as (ITT, LUN field, LUN, opcode, length, data, time its read took), read
    # before anything changes: one miss sends the whole socket read the full way.
    reads: list[tuple[int, bytes, int, int, int, bytearray, int]] = []
    for at in range(start, end, _BHS):
        op, flags, lengths, lun_raw, itt, edtl, pdu_cmdsn, _, cdb0 = _COMMAND(buf, at)
        if op != _SCSI_COMMAND or lengths or flags & 0x60 != 0x40 or (flags & 0x06) == 0x02:
            return False
        if cdb0 == 0x88:
            cdb_flags, lba, blocks = _READ16(buf, at + 33)
        elif cdb0 == 0x28:
            cdb_flags, lba, blocks = _READ10(buf, at + 33)
        else:
            return False
        if cdb_flags & 0xE0 or not blocks or edtl > limit or itt in tasks or pdu_cmdsn != cmdsn:
            return False
        cmdsn = (cmdsn + 1) & 0xFFFFFFFF
        lun = lun_number(lun_raw)
        lu: Any = luns.get(lun)
        if lu is None:
            return False
        readable = _readable(plans, lu, lba, blocks, edtl)
        if readable is None:
            return False
        file, flags_io = readable
        started = _clock()
        data = bytearray(edtl)
        try:
            if _preadv(file._fd, [data], lba * lu.block_size, flags_io) != edtl:
                return False
        except OSError:
            return False  # a miss, or an error: the full path reads again and answers it
        reads.append((itt, lun_raw, lun, cdb0, edtl, data, _clock() - started))
    count = len(reads)
    if len({read[0] for read in reads}) != count:
        return False  # an ITT twice: the full path refuses the second as in use
    # Committed: what the full path changes, in its order.
    rx._start = rx._end = end
    rx._header_only = False
    now = conn.now = shell.server.now
    conn.last_heard = now
    conn._ping_sent_at = None
    failed = conn._failed_itts
    if failed:
        for read in reads:
            failed.pop(read[0], None)
    exp_cmdsn = session.exp_cmdsn = cmdsn
    # Taken in, all of them, before the first is answered: each holds a slot of the window
    # until its answer (Session.max_cmdsn), as the full path counts them.
    session.in_flight += count
    stats = runtime.stats
    stat_sn = conn.stat_sn
    out: list[bytearray] = []
    for itt, lun_raw, lun, cdb0, edtl, data, took in reads:
        COMMANDS.started += 1
        lun_stats = stats.get(lun)
        if lun_stats is not None:
            lun_stats.record(cdb0, None, data, took, 0, None)
        session.in_flight -= 1
        hdr = bytearray(_BHS)
        _DATA_IN(
            hdr, 0, _DATA_IN_OPCODE, 0x81, edtl, lun_raw, itt, 0xFFFFFFFF,
            stat_sn, exp_cmdsn, session.max_cmdsn,
        )  # fmt: skip
        stat_sn = (stat_sn + 1) & 0xFFFFFFFF
        out += (hdr, data)
    conn.stat_sn = stat_sn
    send(shell, shell.transport, out)
    return True


# TARGETD_FAST_READ=0: every READ takes the full path (to compare the two, or to rule this
# out).
SERVE: Any = None if os.environ.get("TARGETD_FAST_READ", "1") == "0" else serve
