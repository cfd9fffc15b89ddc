"""COPY ABORTED: how a copy that started (or was about to) reports its failure.

SPC-4 6.4.5: the sense key is COPY ABORTED; INFORMATION holds the residue of the failed
segment (blocks for block segments, bytes otherwise); byte 8 and 9 of COMMAND-SPECIFIC
INFORMATION give the offsets of the source's and destination's own sense data when it is
appended (we append the copy target's sense when the failure came from one); bytes 10-11
are the index of the failed segment; the sense-key-specific field is a segment pointer
(SD set: the field pointer is a byte of that segment descriptor). In descriptor format
the copy target's answer travels in a forwarded sense data descriptor (0Ch): whether
the copy source or destination gave it, its status (RESERVATION CONFLICT, CHECK
CONDITION) and its sense data.
"""

from __future__ import annotations

from scsi.sense import Reason, build_sense


class CopyAborted(Exception):
    """A segment failed: the whole copy ends with COPY ABORTED."""

    def __init__(
        self,
        reason: Reason,
        segment: int,
        *,
        residue: int = 0,
        field: int = 0,
        target_sense: bytes | None = None,
        from_destination: bool = True,
        target_status: int | None = None,
        message: str = "",
    ) -> None:
        super().__init__(message or reason.name)
        self.reason = reason
        self.segment = segment
        self.residue = residue
        self.field = field
        self.target_sense = target_sense
        self.from_destination = from_destination
        # The status the copy target answered with, when it refused (None: no answer).
        self.target_status = target_status

    def sense(self, descriptor_format: bool = False) -> bytes:
        segment_pointer = bytes([0x80 | 0x20]) + (self.field & 0xFFFF).to_bytes(2, "big")
        if descriptor_format:
            sense = bytearray(
                build_sense(
                    self.reason,
                    information=self.residue,
                    sks=segment_pointer,
                    descriptor_format=True,
                )
            )
            command = bytes([0x01, 0x0A, 0, 0]) + bytes(6) + self.segment.to_bytes(2, "big")
            sense += command + self._forwarded()
            sense[7] = min(0xFF, len(sense) - 8)
            return bytes(sense[: 8 + sense[7]])
        sense = bytearray(
            build_sense(self.reason, information=self.residue & 0xFFFFFFFF, sks=segment_pointer)
        )
        sense[10:12] = (self.segment & 0xFFFF).to_bytes(2, "big")
        if self.target_sense:
            appended = self.target_sense[:200]
            sense[8 if not self.from_destination else 9] = len(sense)
            sense += appended
            sense[7] = len(sense) - 8
        return bytes(sense)

    def _forwarded(self) -> bytes:
        """SPC-4 forwarded sense data descriptor: SENSE DATA SOURCE 1 (copy source) or
        2 (copy destination), FORWARDED STATUS, then the copy target's sense."""
        if self.target_status is None and not self.target_sense:
            return b""
        status = self.target_status if self.target_status is not None else 0x02
        forwarded = (self.target_sense or b"")[:200]
        source = 2 if self.from_destination else 1
        return bytes([0x0C, 2 + len(forwarded), source, status]) + forwarded


def lba_out_of_range_sense() -> bytes:
    """What the copy target itself would have said about a range past its end."""
    return build_sense(Reason.LBA_OUT_OF_RANGE)
