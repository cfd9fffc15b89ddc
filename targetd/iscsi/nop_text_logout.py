"""The requests of full-feature phase that are not SCSI: NOP-Out, Text, Logout, and the
ones refused there (SNACK, Login)."""

from __future__ import annotations

from targetd.iscsi import pdu as P
from targetd.iscsi.connection_state import Phase
from targetd.iscsi.events import CloseConnection
from targetd.iscsi.pdu import Op, Pdu, RejectReason, put_u32
from targetd.iscsi.receiver import IscsiProtocolError
from targetd.iscsi.replies import Replies


class NopTextLogout(Replies):
    def _on_nop_out(self, pdu: Pdu) -> None:
        if pdu.itt == P.RESERVED_TAG:
            if not pdu.immediate:
                raise IscsiProtocolError("NOP-Out without ITT must be immediate", bhs=pdu.bhs)
            return  # the answer to our ping; last_heard already updated
        if pdu.ttt != P.RESERVED_TAG:
            raise IscsiProtocolError("NOP-Out with both ITT and TTT", bhs=pdu.bhs)

        def answer() -> None:
            data = bytes(pdu.data[: self.max_send_data])
            hdr = P.new_header(Op.NOP_IN, 0x80, itt=pdu.itt, lun=pdu.lun, data_length=len(data))
            put_u32(hdr, 20, P.RESERVED_TAG)
            self._send(hdr, data)

        self._sequence(pdu, answer)

    def _on_text(self, pdu: Pdu) -> None:
        assert self.text is not None

        def deliver() -> None:
            assert self.text is not None
            for hdr, data in self.text.receive(pdu):
                self._send(hdr, data)
            # A Text exchange may re-declare MaxRecvDataSegmentLength (RFC 7143 13.12).
            if self.session is not None and self.session.params is not None:
                self.max_send_data = self.session.params.initiator_max_recv_data_segment_length

        self._sequence(pdu, deliver)

    def _on_logout(self, pdu: Pdu) -> None:
        def deliver() -> None:
            self._pending_logout = pdu
            self._maybe_finish_logout()

        self._sequence(pdu, deliver)

    def _maybe_finish_logout(self) -> None:
        pdu = self._pending_logout
        if pdu is None or self.tasks:
            return
        self._pending_logout = None
        reason = pdu.flags & 0x7F
        hdr = P.new_header(Op.LOGOUT_RESPONSE, 0x80, itt=pdu.itt)
        if reason == 2:  # remove the connection for recovery: ERL 0 has none
            hdr[2] = 2
        else:
            hdr[2] = 0
        P.put_u16(hdr, 40, 0)  # Time2Wait
        P.put_u16(hdr, 42, 0)  # Time2Retain
        self._send(hdr)
        self.phase = Phase.LOGGED_OUT
        self._events.append(CloseConnection("logout"))

    def _on_snack(self, pdu: Pdu) -> None:
        # ErrorRecoveryLevel 0: SNACK is not supported (RFC 7143 11.16).
        raise IscsiProtocolError(
            "SNACK at ErrorRecoveryLevel 0", RejectReason.COMMAND_NOT_SUPPORTED, bhs=pdu.bhs
        )

    def _on_login_in_ffp(self, pdu: Pdu) -> None:
        raise IscsiProtocolError("Login Request in full-feature phase", bhs=pdu.bhs)
