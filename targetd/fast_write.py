"""Small WRITEs served as they are parsed: a run of plain 4 KiB writes without the layers
they cross.

Eight sessions writing 4 KiB at queue depth 32 bring about thirty SCSI Command PDUs per
socket read, each a WRITE whose data came with it (ImmediateData). The full path turns each
into a ``Pdu``, a ``Task``, a ``ScsiCommand``, an event, an eager coroutine through the SCSI
target, the LU's checks, the opcode table, SBC's ``_write``, the write gate, the volume and
the file, then a status: about 11 us of Python per write besides its ``pwrite``
(docs/performance.md, "Eight sessions of 4 KiB random writes: a fast path for small
WRITEs"). :func:`serve` walks the PDUs in the receive buffer and, for each one that is the
plain case, makes the ``pwrite`` straight from the receive buffer and queues its GOOD
status; it stops at the first PDU that is not, leaving it and everything after it to the
full path. The plain case, all read from the live state of every object the full path
would consult:

- the PDU: a whole SCSI Command with all its data in the buffer (no AHS, no digests, not
  immediate, F and W set, R clear, SIMPLE or untagged), the data segment exactly the
  expected data transfer length, ImmediateData negotiated and the data within
  FirstBurstLength and MaxRecvDataSegmentLength; a WRITE(10) or WRITE(16) with no
  WRPROTECT and no FUA (DPO is a hint the full path ignores too), the CDB's length equal
  to the data's, under 16 KiB (a larger segment the receiver
  takes out of line, straight into its command's buffer);
- the connection: as :func:`targetd.fast_read.quiet` says (nothing queued, held, waiting or
  closing), nothing staged for a partly received write, the ITT free, the CmdSN next in
  order;
- the LU: a plain ``BlockDevice`` whose WRITE rows are SBC's, over a ``SparseFile`` (alone
  or in an unpaired ``PairVolume``), as :func:`targetd.fast_read.lu_quiet` says (no task-set
  gate, no unit attention, no ALUA restriction, no reservation, no shared-LU gate, no pair:
  so no copy-before-write and no split or suspend in progress), not write protected, its
  write cache on, no COMPARE AND WRITE or ORWRITE holding any range (the write gate), the
  range within the medium and the transfer limit;
- the write: the ``pwrite`` succeeds. On an error (ENOSPC, EIO) the run stops before that
  PDU and the full path makes the write again and answers it with its sense.

A write made here is what ``BlockDevice.write_now`` makes for the full path (one
``pwrite``, nothing can start between its start and its end), with the same state changes:
receiver consumed, ExpCmdSN and StatSN advanced, the keepalive clock, the failed-ITT list,
the activity counter, the LUN's metrics. The statuses are built once the run is over with
the ExpCmdSN and MaxCmdSN the full path would stamp on them after the same batch, and
written in one call before anything the full path makes of the rest.
``TARGETD_FAST_WRITE=0`` turns it off.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, Any

from backing.pairs import PairVolume
from backing.sparse_file import SparseFile, _pwrite_all
from scsi import sbc
from scsi.activity import COMMANDS
from scsi.block_device import BlockDevice
from targetd.fast_read import (
    _BHS,
    _COMMAND,
    _HEADER,
    _READ10,
    _READ16,
    _SCSI_COMMAND,
    _clock,
    lu_quiet,
    lun_number,
    quiet,
    send,
)
from targetd.iscsi.pdu import Op
from targetd.iscsi.receiver import DIRECT_THRESHOLD
from targetd.iscsi.replies import _GOOD_STATUS

if TYPE_CHECKING:
    from targetd.server import IscsiConnection

_pwrite = os.pwrite
_SCSI_RESPONSE = int(Op.SCSI_RESPONSE)
_WRITE10 = 0x2A
_WRITE16 = 0x8A
_FUA = 0x08
# F and W set, R clear (the ATTR bits are looked at apart).
_FINAL_WRITE = 0xA0
_SMALLEST = _BHS + 512  # one block of 512 bytes: nothing shorter can be a plain write
# TotalAHSLength, DataSegmentLength (high byte, low 16 bits).
_LENGTHS = struct.Struct(">4xBBH").unpack_from

# Per LU: (the store the LU writes, the plain file, the volume or None), or None when the
# LU is not a plain block LU over a file.
Plan = tuple[Any, SparseFile, PairVolume | None] | None


def plan_for(lu: object) -> Plan:
    """What :func:`serve` may rely on for ``lu`` for as long as ``lu.store`` is the same
    object: its type, its WRITE rows and its store's shape (the synchronous small write
    of backing/write_now.py all the way down to the file)."""
    if type(lu) is not BlockDevice:
        return None
    for opcode, handler in ((_WRITE10, sbc.write10), (_WRITE16, sbc.write16)):
        spec = lu.table.lookup(bytes([opcode]))
        if spec is None or spec.handler is not handler or spec.ua_exempt:
            return None
    store = lu.store
    store_write_now = lu._store_write_now
    if type(store) is PairVolume:
        base = store.base
        if type(base) is not SparseFile or store_write_now != store.write_now:
            return None
        if store._base_write_now != base.write_now:
            return None
        return (store, base, store)
    if type(store) is SparseFile and store_write_now == store.write_now:
        return (store, store, None)
    return None


def _writable(lu: Any, plan: Plan) -> bool:
    """The LU-wide half of the plain case (see the module's docstring)."""
    if plan is None or lu.store is not plan[0]:
        return False
    return lu_quiet(lu, plan[2]) and not lu.read_only and lu.write_cache and not lu._held


_TASK_MANAGEMENT = int(Op.TASK_MGMT_REQUEST)
_ITT = struct.Struct(">I").unpack_from


def _after_run(buf: bytearray, pos: int, end: int, first_of: dict[int, int]) -> int | None:
    """The index in the run of the first command that a whole PDU between ``pos`` and
    ``end`` concerns (its ITT, or any task management request: the run's start), or None."""
    cut: int | None = None
    while end - pos >= _BHS:
        if buf[pos] & 0x3F == _TASK_MANAGEMENT:
            return 0
        index = first_of.get(_ITT(buf, pos + 16)[0])
        if index is not None and (cut is None or index < cut):
            cut = index
        ahs, high, low = _LENGTHS(buf, pos)
        pos += _BHS + ahs * 4 + (((high << 16 | low) + 3) & ~3)
    return cut


def serve(shell: IscsiConnection, nbytes: int) -> int:
    """Serve the plain WRITEs at the head of what ``nbytes`` just completed in the receive
    buffer (see the module's docstring). Returns how many of the ``nbytes`` the full path
    is still to be given (all of them when nothing was served: nothing changed then), or
    -1 when every byte was served."""
    conn = shell.conn
    rx = conn.receiver
    if rx._state is not _HEADER:
        return nbytes
    start = rx._start
    end = rx._end + nbytes
    if end - start < _SMALLEST or rx.header_digest or conn.data_digest:
        return nbytes
    buf = rx._buf
    # The first PDU's opcode and CDB opcode before anything else: reads, Data-Out and the
    # rest go their way after two byte reads.
    if buf[start] != _SCSI_COMMAND or buf[start + 32] not in (_WRITE10, _WRITE16):
        return nbytes
    if conn._write_buffers or not conn.immediate_data or not quiet(shell, conn):
        return nbytes
    session: Any = conn.session  # set: quiet() said so
    runtime: Any = shell.runtime
    luns = runtime.scsi.luns
    plans = shell._fast_write_plans
    first_burst = conn.first_burst
    max_data = rx.max_data_length
    max_command = conn._max_command
    tasks = conn.tasks
    view = rx._view
    exp_cmdsn = session.exp_cmdsn
    lun_raw_seen = None
    lu: Any = None
    lun = 0
    fd = -1
    # The run of plain writes at the head of the buffer, checked before anything is written:
    # (where its data starts, ITT, LUN, CDB opcode, descriptor, offset, length).
    run: list[tuple[int, int, int, int, int, int, int]] = []
    first_of: dict[int, int] = {}  # ITT -> its index in the run
    pos = start
    while end - pos >= _SMALLEST:
        op, flags, lengths, lun_raw, itt, edtl, cmdsn, _, cdb0 = _COMMAND(buf, pos)
        if (
            op != _SCSI_COMMAND
            or flags & 0xE0 != _FINAL_WRITE
            or flags & 0x02  # ORDERED, HEAD OF QUEUE
            or lengths != edtl  # no AHS; all the data immediate
            or pos + _BHS + edtl > end
            or edtl > first_burst
            or edtl > max_data
            or edtl > max_command
            or edtl >= DIRECT_THRESHOLD  # the full path receives it out of line
            or cmdsn != exp_cmdsn
            or itt in tasks
        ):
            break
        if cdb0 == _WRITE10:
            cdb_flags, lba, blocks = _READ10(buf, pos + 33)
        elif cdb0 == _WRITE16:
            cdb_flags, lba, blocks = _READ16(buf, pos + 33)
        else:
            break
        if cdb_flags & 0xE0 or cdb_flags & _FUA:
            break
        if lun_raw != lun_raw_seen:
            lun = lun_number(lun_raw)
            lu = luns.get(lun)  # None (no such LUN) has no plan
            try:
                plan = plans[lu]
            except KeyError:
                plan = plans[lu] = plan_for(lu)
            if not _writable(lu, plan):
                if plan is not None and lu.store is not plan[0]:
                    del plans[lu]
                break
            fd = plan[1]._fd  # type: ignore[index]
            lun_raw_seen = lun_raw
        block_size = lu.block_size
        if (
            blocks > lu.max_transfer_blocks
            or lba + blocks > lu.num_blocks
            or blocks * block_size != edtl
        ):
            break
        if itt in first_of:
            break  # the full path refuses it (the first in flight): _after_run cuts both
        first_of[itt] = len(run)
        run.append((pos + _BHS, itt, lun, cdb0, fd, lba * block_size, edtl))
        exp_cmdsn = (cmdsn + 1) & 0xFFFFFFFF
        pos += _BHS + edtl
    if run and end - pos >= _BHS:
        # What follows in this read the full path dispatches before any command of it has
        # run: a PDU naming one of the run's ITTs (reused, a Data-Out for it) would meet the
        # command still in flight, a task management request could abort one. Such a read
        # is the full path's from the first command concerned.
        cut = _after_run(buf, pos, end, first_of)
        if cut is not None:
            del run[cut:]
    if not run:
        return nbytes
    served: list[tuple[int, int, int, int, memoryview]] = []  # itt, ns, lun, cdb0, data
    for d0, itt, lun, cdb0, fd, offset, edtl in run:
        data = view[d0 : d0 + edtl]
        started = _clock()
        try:
            n = _pwrite(fd, data, offset)
            if n < edtl:
                _pwrite_all(fd, data[n:], offset + n)
        except OSError:
            break  # the full path writes it again and answers with the error's sense
        served.append((itt, _clock() - started, lun, cdb0, data))
    if not served:
        return nbytes
    count = len(served)
    if count < len(run):
        pos = run[count][0] - _BHS
    exp_cmdsn = (session.exp_cmdsn + count) & 0xFFFFFFFF
    # Committed: what the full path changes for the same PDUs, in its order.
    if pos == end:
        rx._start = rx._end = end
        left = -1
    else:
        rx._start = pos
        left = nbytes
    rx._header_only = False
    now = conn.now = shell.server.now
    conn.last_heard = now
    conn._ping_sent_at = None
    session.exp_cmdsn = exp_cmdsn
    failed = conn._failed_itts
    stats = runtime.stats
    COMMANDS.started += count
    # MaxCmdSN as the full path stamps it: every command of the batch delivered first, so
    # the i-th status is sent while the count-i-1 after it still hold their CmdSN slots.
    room = session.window - session.in_flight
    stat_sn = conn.stat_sn
    replies = []
    for i, (itt, elapsed, lun, cdb0, data) in enumerate(served):
        if failed:
            failed.pop(itt, None)
        lun_stats = stats.get(lun)
        if lun_stats is not None:
            lun_stats.record(cdb0, data, None, elapsed, 0, None)
        slots = room - (count - i - 1)
        hdr = bytearray(_BHS)
        _GOOD_STATUS(
            hdr, 0, _SCSI_RESPONSE, 0x80, itt, stat_sn, exp_cmdsn,
            (exp_cmdsn + (slots if slots > 0 else 0) - 1) & 0xFFFFFFFF,
        )  # fmt: skip
        stat_sn = (stat_sn + 1) & 0xFFFFFFFF
        replies.append(hdr)
    conn.stat_sn = stat_sn
    send(shell, shell.transport, replies)
    return left


# TARGETD_FAST_WRITE=0: every WRITE takes the full path (to compare the two, or to rule
# this out).
SERVE: Any = None if os.environ.get("TARGETD_FAST_WRITE", "1") == "0" else serve
