"""One device abstraction over two transports: a CDB in, status, data and sense out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hostcopy.sense import describe

GOOD, CHECK_CONDITION = 0x00, 0x02
# How long one command may go unanswered before the tool gives up on the target. Every
# command the tool sends answers at once (copies are IMMED lists, polled), so a minute
# without an answer is a target that is gone or hung, not a slow one.
DEFAULT_TIMEOUT_S = 60


@dataclass(frozen=True, slots=True)
class Result:
    status: int
    data: bytes = b""
    # Raw sense bytes where the transport hands them over (SG_IO); libiscsi 1.19 keeps only
    # the decoded key/ASC/ASCQ, so its sense is rebuilt as fixed format from those.
    sense: bytes = b""


class ScsiError(Exception):
    """A command ended with a status other than GOOD; ``str()`` says it in words."""

    def __init__(self, what: str, result: Result) -> None:
        self.what = what
        self.result = result
        if result.status == CHECK_CONDITION and result.sense:
            text = describe(result.sense)
        else:
            text = f"SCSI status {result.status:#04x}"
        super().__init__(f"{what}: {text}")


class TransportError(Exception):
    """The device could not be opened, or the transport failed (not a SCSI status)."""


class Device(Protocol):
    name: str

    def execute(
        self, cdb: bytes, *, data_out: bytes = b"", read: int = 0, timeout: int | None = None
    ) -> Result: ...

    def close(self) -> None: ...


UNIT_ATTENTION = 0x6
# A unit attention reports an event (a reset, a reservation or capacity change, a target
# restart) and means the command was not run: sending it again is safe, as the kernel's sd
# driver does. More than a few in a row is not an event but a loop.
UA_RETRIES = 3


def _unit_attention(result: Result) -> bool:
    s = result.sense
    if result.status != CHECK_CONDITION or len(s) < 3:
        return False
    key = s[1] & 0x0F if s[0] & 0x7F in (0x72, 0x73) else s[2] & 0x0F
    return key == UNIT_ATTENTION


def execute(device: Device, cdb: bytes, *, data_out: bytes = b"", read: int = 0) -> Result:
    """``device.execute``, sent again after a unit attention."""
    for _ in range(UA_RETRIES):
        result = device.execute(cdb, data_out=data_out, read=read)
        if not _unit_attention(result):
            return result
    return result


def run(device: Device, what: str, cdb: bytes, *, data_out: bytes = b"", read: int = 0) -> bytes:
    """:func:`execute`, raising :class:`ScsiError` unless the status is GOOD."""
    result = execute(device, cdb, data_out=data_out, read=read)
    if result.status != GOOD:
        raise ScsiError(what, result)
    return result.data


def open_device(spec: str, timeout: int = DEFAULT_TIMEOUT_S) -> Device:
    """``iscsi://[user%secret@]HOST[:PORT]/IQN/LUN`` through libiscsi, anything else as a
    SCSI generic or block device node through SG_IO. ``timeout``: seconds one command may
    go unanswered before :class:`TransportError`."""
    if spec.startswith("iscsi://"):
        from hostcopy.libiscsi import IscsiDevice

        return IscsiDevice(spec, timeout=timeout)
    from hostcopy.sgio import SgDevice

    return SgDevice(spec, timeout=timeout)
