"""Text Requests in full-feature phase (RFC 7143 6.1, 11.10, 11.11), SendTargets above all.

:meth:`TextMachine.receive` turns one Text Request into the Text Responses to send, as
(header, data) pairs whose StatSN/ExpCmdSN/MaxCmdSN (offsets 24/28/32) the connection
stamps. Long answers go out in parts of the initiator's MaxRecvDataSegmentLength with the
C bit and a Target Transfer Tag; the initiator fetches each next part with an empty
request carrying that tag. A request continued with the C bit is gathered first.
"""

from __future__ import annotations

from targetd.iscsi.keys import (
    Negotiator,
    Stage,
    TextFormatError,
    encode_pairs,
    parse_pairs,
)
from targetd.iscsi.params import SessionParams
from targetd.iscsi.pdu import RESERVED_TAG, Op, Pdu, RejectReason, new_header, put_u32
from targetd.iscsi.receiver import IscsiProtocolError
from targetd.iscsi.settings import PortalSettings, Settings, TargetSettings

FLAG_FINAL = 0x80
FLAG_CONTINUE = 0x40
# A request's text that grows past this is abuse, not negotiation.
MAX_REQUEST_TEXT = 64 * 1024

Response = tuple[bytearray, bytes]


class TextMachine:
    def __init__(
        self,
        config: Settings,
        portal: PortalSettings,
        params: SessionParams,
        target: TargetSettings | None,
    ) -> None:
        self._config = config
        self._portal = portal
        self._params = params
        self._target = target
        self._negotiator = Negotiator(config, params)
        self._incoming = bytearray()
        self._outgoing: list[bytes] = []  # parts of a long response not yet fetched
        self._final_flags = FLAG_FINAL
        # The exchange in progress: the ITT and the TTT we handed out for it.
        self._itt: int | None = None
        self._ttt = RESERVED_TAG
        self._next_ttt = 1

    def receive(self, pdu: Pdu) -> list[Response]:
        if pdu.opcode != Op.TEXT_REQUEST:
            raise IscsiProtocolError(
                f"opcode {pdu.opcode:#x} is no Text Request",
                RejectReason.PROTOCOL_ERROR,
                bhs=bytes(pdu.bhs),
            )
        final, more = pdu.final, bool(pdu.flags & FLAG_CONTINUE)
        if final and more:
            raise self._error(pdu, "Text Request with F and C both set")
        self._match_exchange(pdu)
        if self._outgoing:
            if pdu.data_length:
                raise self._error(pdu, "text while our response continues")
            return [self._next_part(pdu)]
        self._incoming += pdu.data
        if len(self._incoming) > MAX_REQUEST_TEXT:
            self._reset()
            raise IscsiProtocolError(
                "text request too long", RejectReason.OUT_OF_RESOURCES, bhs=bytes(pdu.bhs)
            )
        if more:
            # RFC 7143 11.10.2: an empty response with a tag asks for the rest.
            return [self._header(pdu, b"", 0, self._new_ttt(pdu))]
        try:
            pairs = parse_pairs(self._incoming)
        except TextFormatError as exc:
            self._reset()
            raise self._error(pdu, str(exc)) from exc
        self._incoming.clear()
        text = encode_pairs(self._answers(pairs))
        size = max(self._params.initiator_max_recv_data_segment_length, 512)
        self._outgoing = [text[i : i + size] for i in range(0, len(text), size)] or [b""]
        # RFC 7143 11.11.1: F=1 answers only F=1; an open negotiation keeps a tag.
        self._final_flags = FLAG_FINAL if final else 0
        return [self._next_part(pdu)]

    def _match_exchange(self, pdu: Pdu) -> None:
        """A tagged request must continue the exchange that tag belongs to."""
        if pdu.ttt == RESERVED_TAG:
            if pdu.itt != self._itt or self._outgoing:
                self._reset()  # RFC 7143 11.10.4: an untagged request starts afresh
            self._itt = pdu.itt
            return
        if pdu.ttt != self._ttt or pdu.itt != self._itt:
            self._reset()
            raise IscsiProtocolError(
                f"unexpected Target Transfer Tag {pdu.ttt:#x}",
                RejectReason.INVALID_PDU_FIELD,
                bhs=bytes(pdu.bhs),
            )

    def _next_part(self, pdu: Pdu) -> Response:
        part = self._outgoing.pop(0)
        if self._outgoing:
            return self._header(pdu, part, FLAG_CONTINUE, self._new_ttt(pdu))
        if self._final_flags & FLAG_FINAL:
            self._ttt = RESERVED_TAG
            self._itt = None
            return self._header(pdu, part, FLAG_FINAL, RESERVED_TAG)
        return self._header(pdu, part, 0, self._new_ttt(pdu))

    def _answers(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        answers: list[tuple[str, str]] = []
        rest = []
        for key, value in pairs:
            if key == "SendTargets":
                answers += self._send_targets(value)
            else:
                rest.append((key, value))
        return answers + self._negotiator.negotiate(rest, Stage.FULL_FEATURE)

    def _send_targets(self, value: str) -> list[tuple[str, str]]:
        """RFC 7143 Appendix C: the targets this initiator may reach, and their portals."""
        if self._params.discovery:
            if value == "All":
                targets = [t for t in self._config.targets if self._visible(t)]
            else:
                named = self._config.target(value) if value else None
                targets = [named] if named is not None and self._visible(named) else []
        elif value in ("", "All") or (self._target is not None and value == self._target.name):
            targets = [self._target] if self._target is not None else []
        else:
            named = self._config.target(value)
            targets = [named] if named is not None and self._visible(named) else []
        pairs = []
        for target in targets:
            pairs.append(("TargetName", target.name))
            pairs += [
                ("TargetAddress", f"{portal.advertised},{portal.tpgt}")
                for portal in self._config.portals
            ]
        return pairs

    def _visible(self, target: TargetSettings) -> bool:
        allowed = target.allowed_initiators
        return not allowed or self._params.initiator_name in allowed

    def _new_ttt(self, pdu: Pdu) -> int:
        self._itt = pdu.itt
        self._ttt = self._next_ttt
        self._next_ttt = self._next_ttt % 0xFFFFFFFE + 1  # never 0 nor the reserved tag
        return self._ttt

    def _header(self, pdu: Pdu, data: bytes, flags: int, ttt: int) -> Response:
        hdr = new_header(
            Op.TEXT_RESPONSE, flags, itt=pdu.itt, lun=bytes(pdu.lun), data_length=len(data)
        )
        put_u32(hdr, 20, ttt)
        return hdr, data

    def _reset(self) -> None:
        self._incoming.clear()
        self._outgoing = []
        self._itt = None
        self._ttt = RESERVED_TAG

    @staticmethod
    def _error(pdu: Pdu, message: str) -> IscsiProtocolError:
        return IscsiProtocolError(message, RejectReason.PROTOCOL_ERROR, bhs=bytes(pdu.bhs))
