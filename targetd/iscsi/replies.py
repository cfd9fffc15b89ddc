"""What a connection sends: PDUs stamped with StatSN, ExpCmdSN and MaxCmdSN, and a SCSI
command's Data-In and status (the status collapsed into the last Data-In when it can be)."""

from __future__ import annotations

import struct

from scsi.command import FileRange, ScsiResult, Status
from targetd.iscsi import datapath
from targetd.iscsi import pdu as P
from targetd.iscsi.connection_state import ConnectionState, Output, Task
from targetd.iscsi.crc import crc32c
from targetd.iscsi.pdu import Op, RejectReason, put_u32

_SEQUENCE_NUMBERS = struct.Struct(">III")


class Replies(ConnectionState):
    def _send(
        self,
        hdr: bytearray,
        data: Output = b"",
        *,
        advance_statsn: bool = True,
        stamp_statsn: bool = True,
    ) -> None:
        session = self.session
        if stamp_statsn:
            stat_sn = self.stat_sn
            if advance_statsn:
                self.stat_sn = (stat_sn + 1) & 0xFFFFFFFF
            if session is not None:  # StatSN, ExpCmdSN, MaxCmdSN: one pack, not three
                _SEQUENCE_NUMBERS.pack_into(
                    hdr, 24, stat_sn, session.exp_cmdsn & 0xFFFFFFFF, session.max_cmdsn & 0xFFFFFFFF
                )
                self._emit(hdr, data)
                return
            put_u32(hdr, 24, stat_sn)
        if session is not None:
            put_u32(hdr, 28, session.exp_cmdsn)
            put_u32(hdr, 32, session.max_cmdsn)
        self._emit(hdr, data)

    def _emit(self, hdr: bytearray, data: Output = b"") -> None:
        out = self._output
        out.append(hdr)
        if self.header_digest:
            out.append(crc32c.crc32c(hdr).to_bytes(4, "little"))
        n = len(data)
        if n:
            out.append(data)
            pad = -n & 3
            if pad:
                out.append(bytes(pad))
            if self.data_digest:
                assert not isinstance(data, FileRange)  # never asked for (_maybe_start)
                crc = crc32c.crc32c(data)
                if pad:
                    crc = crc32c.crc32c(bytes(pad), crc)
                out.append(crc.to_bytes(4, "little"))

    def _reject(self, bhs: bytes, reason: RejectReason) -> None:
        hdr = P.new_header(Op.REJECT, 0x80, data_length=P.BHS_LEN)
        hdr[2] = reason
        put_u32(hdr, 16, P.RESERVED_TAG)
        self._send(hdr, bhs[: P.BHS_LEN].ljust(P.BHS_LEN, b"\0"))

    def _respond(self, task: Task, result: ScsiResult) -> None:
        """Data-In (with status collapsed into the last one when it can) and status."""
        data = result.data
        if (
            task.write
            and not task.read
            and data is None
            and result.status == Status.GOOD
            and result.sense is None
            and result.data_out_used in (None, task.edtl)
        ):
            # The common write: all its data used, nothing to report in residuals. Its whole
            # header (with StatSN, ExpCmdSN and MaxCmdSN) in one pack, not through _send.
            session = self.session
            if session is None:
                self._send(_good_response(task.itt))
                return
            stat_sn = self.stat_sn
            self.stat_sn = (stat_sn + 1) & 0xFFFFFFFF
            hdr = bytearray(P.BHS_LEN)
            _GOOD_STATUS(
                hdr, 0, Op.SCSI_RESPONSE, 0x80, task.itt, stat_sn,
                session.exp_cmdsn & 0xFFFFFFFF, session.max_cmdsn & 0xFFFFFFFF,
            )  # fmt: skip
            self._output.append(hdr)
            if self.header_digest:
                self._output.append(crc32c.crc32c(hdr).to_bytes(4, "little"))
            return
        if data is not None and task.read and not task.write and len(data) == task.edtl:
            flags = residual = 0  # the common read: what was expected, no residual
            n = task.edtl
        else:
            flags, residual, n = datapath.residual(
                task.read,
                task.write,
                task.edtl,
                None if data is None else len(data),
                result.data_out_used,
                result.status == Status.GOOD,
            )
        collapse = result.status == Status.GOOD and result.sense is None
        if n:
            view: memoryview | FileRange
            if type(data) is FileRange:
                self.file_output = True
                view = data[:n]
            else:
                view = memoryview(data)[:n]  # type: ignore[arg-type]
            if n <= self.max_send_data and n <= self.max_burst:
                if collapse:
                    flags |= 0x80 | P.DATAIN_STATUS
                    # By position (length, lun, itt, flags, status, residual): per read.
                    hdr = datapath.single_data_in(
                        n, task.lun_raw, task.itt, flags, result.status, residual
                    )
                    self._send(hdr, view)
                    return
                hdr = datapath.single_data_in(n, task.lun_raw, task.itt)
                self._send(hdr, view, stamp_statsn=False)
            else:
                pdus = datapath.data_in_pdus(
                    view,
                    lun=task.lun_raw,
                    itt=task.itt,
                    max_segment=self.max_send_data,
                    max_burst=self.max_burst,
                )
                for hdr, segment, last in pdus:
                    if last and collapse:
                        hdr[1] |= P.DATAIN_STATUS | flags
                        hdr[3] = result.status
                        put_u32(hdr, 44, residual)
                        self._send(hdr, segment)
                        return
                    self._send(hdr, segment, stamp_statsn=False)
        hdr = P.new_header(Op.SCSI_RESPONSE, 0x80 | flags, itt=task.itt)
        hdr[3] = result.status
        put_u32(hdr, 44, residual)
        payload = b""
        if result.sense:
            payload = len(result.sense).to_bytes(2, "big") + result.sense
            P.set_data_length(hdr, len(payload))
        self._send(hdr, payload)


_GOOD_RESPONSE = struct.Struct(">BB14xI").pack_into
# The same with StatSN, ExpCmdSN and MaxCmdSN (bytes 24-35) as _send stamps them.
_GOOD_STATUS = struct.Struct(">BB14xI4xIII").pack_into


def _good_response(itt: int) -> bytearray:
    """A SCSI Response with GOOD status, no residual and no data: what
    ``P.new_header(Op.SCSI_RESPONSE, 0x80, itt=itt)`` builds, in one pack."""
    hdr = bytearray(P.BHS_LEN)
    _GOOD_RESPONSE(hdr, 0, Op.SCSI_RESPONSE, 0x80, itt)
    return hdr
