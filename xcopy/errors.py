"""COPY ABORTED: how a copy that started (or was about to) reports its failure.

SPC-4 6.4.5: the sense key is COPY ABORTED; INFORMATION holds the residue of the failed
segment (blocks for block segments, bytes otherwise); byte 8 and 9 of COMMAND-SPECIFIC
INFORMATION give the offsets of the source's and destination's own sense data when it is
appended (we append the copy target's sense when the failure came from one); bytes 10-11
are the index of the failed segment; the sense-key-specific field is a segment pointer
(SD set: the field pointer is a byte of that segment descriptor).
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
        message: str = "",
    ) -> None:
        super().__init__(message or reason.name)
        self.reason = reason
        self.segment = segment
        self.residue = residue
        self.field = field
        self.target_sense = target_sense
        self.from_destination = from_destination

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
            sense += command
            sense[7] += len(command)
            return bytes(sense)
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


def lba_out_of_range_sense() -> bytes:
    """What the copy target itself would have said about a range past its end."""
    return build_sense(Reason.LBA_OUT_OF_RANGE)
