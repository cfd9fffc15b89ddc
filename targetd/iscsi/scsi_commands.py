"""SCSI commands on a connection: taking a command in, its memory, its write data (immediate,
unsolicited, R2T-solicited Data-Out), and handing it to the SCSI layer once it can start."""

from __future__ import annotations

import struct

from scsi.buffers import POOL_MIN_SIZE, Leases
from scsi.command import ScsiCommand, ScsiResult, Status, TaskAttribute
from scsi.sense import Reason, build_sense
from scsi.target import decode_lun
from targetd.iscsi import pdu as P
from targetd.iscsi.connection_state import Task
from targetd.iscsi.datapath import Burst
from targetd.iscsi.events import ExecuteCommand
from targetd.iscsi.pdu import Op, Pdu, RejectReason, put_u32
from targetd.iscsi.receiver import IscsiProtocolError
from targetd.iscsi.replies import Replies

# Task attributes 5-7 are reserved: served as SIMPLE. A table, not an Enum call per command.
_ATTRIBUTES = tuple(TaskAttribute(a) if a <= 4 else TaskAttribute.SIMPLE for a in range(8))
# A SCSI Command's header fields, in one unpack: opcode byte, flags, LUN, ITT, expected
# data transfer length, CmdSN.
_SCSI_COMMAND = struct.Struct(">BB6x8sIII").unpack_from
# What placing a SCSI Command's immediate data needs: flags, data segment length (high byte,
# low 16 bits), ITT, expected data transfer length.
_PLACEMENT_FIELDS = struct.Struct(">xB3xBH8xII").unpack_from
_BAD_FIELD = RejectReason.INVALID_PDU_FIELD


class ScsiCommands(Replies):
    def _placement(self, bhs: bytes) -> memoryview | None:
        """Where the data segment of the PDU with header ``bhs`` should land."""
        op = bhs[0] & 0x3F
        if op == Op.SCSI_COMMAND:
            flags, dlen_high, dlen_low, itt, edtl = _PLACEMENT_FIELDS(bhs)
            dlen = dlen_high << 16 | dlen_low
            if not flags & P.FLAG_WRITE or dlen > edtl or edtl > self._max_command:
                return None
            if itt in self._write_buffers:
                self._drop_staged(itt)
            if edtl < POOL_MIN_SIZE:  # small: not counted (the hot path of 4 KiB writes)
                buf = bytearray(edtl)
                self._write_buffers[itt] = (buf, None)
                return memoryview(buf)[:dlen]
            staged = self._write_buffer(edtl)
            if staged is None:
                return None  # no room: the immediate data is copied, the rest waits
            self._write_buffers[itt] = staged
            return memoryview(staged[0])[:dlen]
        if op == Op.DATA_OUT:
            dlen = P.data_segment_length(bhs)
            # Only a Data-Out that continues its burst exactly may land in the command's
            # buffer: a stray one must be refused without having overwritten data already
            # received. (A command still in this same batch of PDUs is not known yet: its
            # Data-Out takes the copying path and is checked in _on_data_out.)
            task = self.tasks.get(int.from_bytes(bhs[16:20], "big"))
            if task is None or task.buffer is None:
                return None
            burst = task.bursts.get(int.from_bytes(bhs[20:24], "big"))
            offset = int.from_bytes(bhs[40:44], "big")
            if burst is None or not burst.takes(offset, dlen):
                return None
            return memoryview(task.buffer)[offset : offset + dlen]
        return None

    def _on_scsi_command(self, pdu: Pdu) -> None:
        if self.is_discovery:
            self._drop_staged(pdu.itt)
            raise IscsiProtocolError("SCSI command in a discovery session", bhs=pdu.bhs)
        bhs = pdu.bhs
        op, flags, lun_raw, itt, edtl, cmdsn = _SCSI_COMMAND(bhs)
        write = bool(flags & P.FLAG_WRITE)
        read = bool(flags & P.FLAG_READ)
        dlen = len(pdu.data)
        if dlen and (
            not write or dlen > edtl or not self.immediate_data or dlen > self.first_burst
        ):
            self._drop_staged(itt)
            raise IscsiProtocolError("bad immediate data", bhs=bhs)
        self._failed_itts.pop(itt, None)
        if itt in self.tasks:
            self._drop_staged(itt)
            raise IscsiProtocolError("ITT already in use", RejectReason.TASK_IN_PROGRESS, bhs=bhs)
        cdb = bhs[32:48]
        if pdu.ahs:
            cdb += _extended_cdb(pdu.ahs)
        # By position (Task's fields: itt, lun, lun_raw, cdb, cmdsn, edtl, read, write,
        # attribute), as ScsiCommand in _maybe_start.
        task = Task(
            itt,
            decode_lun(lun_raw),
            lun_raw,
            cdb,
            cmdsn,
            edtl,
            read,
            write,
            _ATTRIBUTES[flags & P.ATTR_MASK],
        )
        if write and edtl:
            # The unsolicited part: immediate data plus Data-Out with TTT 0xffffffff.
            if not self.initial_r2t and not flags & P.FLAG_FINAL:
                task.unsolicited_end = min(edtl, self.first_burst)
                task.bursts[P.RESERVED_TAG] = Burst(dlen, task.unsolicited_end)
            else:
                task.unsolicited_end = dlen
            task.next_r2t_offset = task.unsolicited_end
            staged = self._write_buffers.pop(itt, None)
            if staged is None:
                if edtl > self._max_command:
                    self._sequence(pdu, lambda: self._refuse_oversized(task))
                    return
                staged = self._write_buffer(edtl) if not self._starved else None
                if staged is None and task.unsolicited_end:
                    # No room for the whole write yet: the unsolicited part (at most
                    # FirstBurstLength, and the command window bounds how many) is
                    # kept apart until it has; nothing beyond it is solicited before.
                    staged = (bytearray(task.unsolicited_end), None)
            if staged is not None:
                task.buffer, task.leases = staged
                if dlen and not (isinstance(pdu.data, memoryview) and pdu.data.obj is task.buffer):
                    task.buffer[:dlen] = pdu.data
            task.received = dlen
        self.tasks[itt] = task
        immediate = bool(op & 0x40)
        session = self.session
        assert session is not None
        if immediate or session.next_in_order(cmdsn):  # nearly every command: no callback
            self._deliver(task, immediate)
        elif not session.sequence(cmdsn, False, lambda: self._deliver(task, False)):
            del self.tasks[itt]
            if task.leases is not None:
                task.leases.release(reuse=False)

    def _deliver(self, task: Task, immediate: bool) -> None:
        """CmdSN order has reached ``task``: it goes on when it has the memory it needs."""
        task.delivered = True
        if task.aborted:  # failed while it waited for its CmdSN
            return
        if not immediate:
            # The window follows the commands in flight: MaxCmdSN moves on as they end.
            task.windowed = True
            self.session.in_flight += 1  # type: ignore[union-attr]
        if self._starved or not self._admit(task):
            self._starved.append(task)
            return
        if task.write:
            self._solicit(task)
        self._maybe_start(task)

    def _forget(self, task: Task) -> None:
        """``task`` ends before all its data came: Data-Out still in flight for it is
        dropped without a Reject (libiscsi drops the whole session on one)."""
        task.aborted = True
        self._end(task)
        self._drop_staged(task.itt)
        if task.leases is not None:
            # A thread may still fill or read it, or the receiver fill it: not lent again.
            task.leases.release(reuse=False)
        if task.write and task.received < task.edtl:
            if len(self._failed_itts) >= 1024:
                del self._failed_itts[next(iter(self._failed_itts))]
            self._failed_itts[task.itt] = None

    def _write_buffer(self, size: int) -> tuple[bytearray, Leases | None] | None:
        """A write buffer of ``size`` bytes if the account has room, else None."""
        if size < POOL_MIN_SIZE:
            # Small writes are not counted: the command window bounds them.
            return bytearray(size), None
        if not self.account.fits(size):
            return None
        leases = Leases(self.pool, self.account)
        return leases.take(size), leases

    def _admit(self, task: Task) -> bool:
        """Give ``task`` the memory it needs to go on, or False if the account has none."""
        if task.write:
            buffer = task.buffer
            if (buffer is not None and len(buffer) == task.edtl) or not task.edtl:
                return True
            staged = self._write_buffer(task.edtl)
            if staged is None:
                return False
            buf, leases = staged
            if task.buffer is not None:  # the unsolicited part received so far
                buf[: len(task.buffer)] = task.buffer
            task.buffer, task.leases = buf, leases
            return True
        if task.read and task.edtl >= POOL_MIN_SIZE:
            need = min(task.edtl, self._max_command)
            if not self.account.fits(need):
                return False
            task.leases = Leases(self.pool, self.account, need)
        return True

    def _proceed(self, task: Task) -> None:
        if task.write:
            self._solicit(task)
        self._maybe_start(task)

    def _retry(self) -> None:
        """Commands waiting for memory go on, in order, while there is room."""
        starved = self._starved
        while starved:
            task = starved[0]
            if task.aborted or self.tasks.get(task.itt) is not task:
                starved.popleft()
                continue
            if not self._admit(task):
                return
            starved.popleft()
            self._proceed(task)

    def _fail_task(self, task: Task, reason: Reason) -> None:
        """End a command that has not started with CHECK CONDITION; drop its data."""
        self._forget(task)
        self._respond(task, ScsiResult(Status.CHECK_CONDITION, sense=build_sense(reason)))

    def _refuse_oversized(self, task: Task) -> None:
        self._end(task)
        self._respond(
            task,
            ScsiResult(Status.CHECK_CONDITION, sense=build_sense(Reason.INVALID_FIELD_IN_CDB)),
        )

    def _solicit(self, task: Task) -> None:
        """Send R2Ts for the solicited part, up to MaxOutstandingR2T at a time."""
        if task.buffer is None or len(task.buffer) < task.edtl:
            return  # waits in _starved for its buffer
        while (
            task.next_r2t_offset < task.edtl
            and sum(1 for t in task.bursts if t != P.RESERVED_TAG) < self.max_outstanding_r2t
        ):
            offset = task.next_r2t_offset
            length = min(self.max_burst, task.edtl - offset)
            ttt = self._new_ttt()
            task.bursts[ttt] = Burst(offset, offset + length)
            task.next_r2t_offset = offset + length
            hdr = P.new_header(Op.R2T, 0x80, itt=task.itt, lun=task.lun_raw)
            put_u32(hdr, 20, ttt)
            put_u32(hdr, 36, task.r2tsn)
            put_u32(hdr, 40, offset)
            put_u32(hdr, 44, length)
            task.r2tsn += 1
            self._send(hdr, advance_statsn=False)

    def _on_data_out(self, pdu: Pdu) -> None:
        task = self.tasks.get(pdu.itt)
        if task is None and pdu.itt in self._failed_itts:
            return  # the rest of a command already ended with CHECK CONDITION
        if task is None or not task.write or task.buffer is None:
            raise IscsiProtocolError("Data-Out for no write command", _BAD_FIELD, bhs=pdu.bhs)
        ttt = pdu.ttt
        offset = pdu.u32(40)
        burst = task.bursts.get(ttt)
        dlen = len(pdu.data)
        if burst is None or not burst.takes(offset, dlen):
            raise IscsiProtocolError("Data-Out outside its burst", _BAD_FIELD, bhs=pdu.bhs)
        if pdu.u32(36) != burst.datasn:
            # A Data-Out sequence error: with ErrorRecoveryLevel 0 there is no recovering the
            # data, but the connection and the other commands on it need not die with it
            # (as dropping the connection would make them). The command ends with ABORTED
            # COMMAND / DATA PHASE ERROR and the initiator retries; its Data-Out still in
            # flight is discarded quietly (a Reject makes libiscsi drop the session).
            self._fail_task(task, Reason.DATA_PHASE_ERROR)
            return
        burst.datasn += 1
        if not isinstance(pdu.data, memoryview) or pdu.data.obj is not task.buffer:
            task.buffer[offset : offset + dlen] = pdu.data
        burst.offset += dlen
        task.received += dlen
        if burst.done or pdu.final:
            del task.bursts[ttt]
            if ttt != P.RESERVED_TAG and not burst.done:
                raise IscsiProtocolError(
                    "short Data-Out burst", RejectReason.PROTOCOL_ERROR, bhs=pdu.bhs
                )
            if task.delivered:
                self._solicit(task)
        self._maybe_start(task)

    def _maybe_start(self, task: Task) -> None:
        if task.started or not task.delivered:
            return
        # A write starts with all its data in (so in a buffer of its full length).
        if task.write and task.received < task.edtl:
            return
        task.started = True
        data_out = memoryview(task.buffer) if task.buffer is not None else None
        # By position, in the order of ScsiCommand's fields (cdb, lun, nexus, data_out,
        # data_in_length, attribute, tag, buffers, file_data_in): on every command, and
        # CPython 3.11 takes a dataclass's keyword arguments at twice the cost.
        cmd = ScsiCommand(
            task.cdb,
            task.lun,
            self.nexus,  # type: ignore[arg-type]
            data_out,
            task.edtl if task.read else 0,
            task.attribute,
            task.itt,
            task.leases,
            task.read and self.sends_files and not self.data_digest,
        )
        self._events.append(ExecuteCommand(task, cmd))


def _extended_cdb(ahs: bytes) -> bytes:
    """CDB bytes beyond 16 from an Extended CDB AHS (type 1), RFC 7143 11.3.1.2."""
    pos = 0
    while pos + 4 <= len(ahs):
        length = int.from_bytes(ahs[pos : pos + 2], "big")
        if ahs[pos + 2] == 1:
            return bytes(ahs[pos + 4 : pos + 3 + length])
        pos += 3 + length + (-(3 + length) % 4)
    return b""
