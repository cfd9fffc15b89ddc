"""What the tool asks of a device, one SCSI exchange or a short loop each: identity and
size, the copy manager's limits, sending a list and following it, positioning a stream
device and reading its label."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from hostcopy import commands as c
from hostcopy.device import CHECK_CONDITION, GOOD, Device, Result, ScsiError, execute, run
from hostcopy.label import LABEL_SIZE, EndLabel, Label, decode, decode_end
from hostcopy.sense import describe, parse

POLL_INTERVAL = 0.1
READ_THROUGH = 8 << 20  # bytes per READ(6) when a device cannot SPACE


class CopyFailed(Exception):
    """A copy ended other than completed; ``str()`` has the sense in words. ``refused``:
    the EXTENDED COPY itself was refused, so the target moved nothing (it checks every
    segment before any byte moves)."""

    def __init__(self, message: str, *, refused: bool = False, sense: bytes = b"") -> None:
        super().__init__(message)
        self.refused = refused
        self.list_index = 0  # which of a run's lists (set by the caller that sent several)
        parsed = parse(sense) if sense else None
        # The ASC/ASCQ of a copy that ended COPY ABORTED (what went wrong, for the caller).
        aborted = parsed is not None and parsed.key == 0x0A
        self.asc = parsed.asc if aborted and parsed else None
        self.ascq = parsed.ascq if aborted and parsed else None


@dataclass(frozen=True, slots=True)
class Info:
    device_type: int
    designator: c.Designator
    capacity: c.Capacity | None  # block devices only


def clear_unit_attentions(device: Device) -> None:
    """A fresh session starts with a unit attention (power on, reset): take it with TEST
    UNIT READY so it does not fail the first real command."""
    for _ in range(4):
        if device.execute(bytes(6)).status == GOOD:
            return


def info(device: Device) -> Info:
    std = run(device, "INQUIRY", c.inquiry(None, 96), read=96)
    vpd83 = run(device, "INQUIRY VPD 83h", c.inquiry(0x83), read=0xFFFF)
    device_type = std[0] & 0x1F
    cap = None
    if device_type == c.BLOCK:
        cap = c.capacity(run(device, "READ CAPACITY(16)", c.read_capacity16(), read=32))
    return Info(device_type, c.lu_designator(vpd83), cap)


def limits(device: Device) -> c.CopyLimits:
    data = run(
        device,
        "RECEIVE COPY OPERATING PARAMETERS",
        c.receive_copy_results(c.OPERATING_PARAMETERS, allocation=1024),
        read=1024,
    )
    found = c.operating_parameters(data)
    vpd = execute(device, c.inquiry(0x8F), read=0xFFFF)
    if vpd.status == GOOD:
        found = c.narrow_by_vpd8f(found, vpd.data)
    return found


def copy_status(device: Device, list_id: int) -> c.CopyStatus:
    data = run(
        device,
        "RECEIVE COPY STATUS(LID4)",
        c.receive_copy_results(c.COPY_STATUS_LID4, list_id, 1024),
        read=1024,
    )
    return c.copy_status_lid4(data)


def abort(device: Device, list_id: int) -> None:
    """COPY OPERATION ABORT (83h/1Ch): the target stops the copy between chunks."""
    execute(device, c.copy_operation_abort(list_id))


def stop(device: Device, list_id: int, seen: ListRun) -> c.CopyStatus | None:
    """A list cut short by Ctrl-C: aborted if the target took it and it may still run;
    how it ended (None: not sent, or no longer known to the target)."""
    if not seen.accepted or seen.final is not None:
        return seen.final
    abort(device, list_id)
    try:
        status = copy_status(device, list_id)
    except ScsiError:
        return None
    return None if status.running else status


@dataclass(slots=True)
class ListRun:
    """How far one list got, as the tool saw it: what is left to do when a Ctrl-C cuts
    :func:`send_list` short (a list the target took may have ended meanwhile)."""

    accepted: bool = False  # the target took the EXTENDED COPY
    final: c.CopyStatus | None = None  # its last status, once it was no longer running


def send_list(
    device: Device,
    params: bytes,
    list_id: int,
    on_progress: Callable[[int], None] = lambda _done: None,
    seen: ListRun | None = None,
) -> c.CopyStatus:
    """EXTENDED COPY(LID4) with IMMED, then RECEIVE COPY STATUS until it ends; ``seen``
    follows it."""
    seen = seen if seen is not None else ListRun()
    result = execute(device, c.extended_copy_lid4(len(params)), data_out=params)
    if result.status != GOOD:
        raise CopyFailed(
            f"EXTENDED COPY refused: {_words(result)}", refused=True, sense=result.sense or b""
        )
    seen.accepted = True
    while True:
        status = copy_status(device, list_id)
        if not status.running:
            seen.final = status
        on_progress(status.transferred)
        if not status.running:
            break
        time.sleep(POLL_INTERVAL)
    if status.state != 0x01:
        why = describe(status.sense) if status.sense else "no sense data"
        raise CopyFailed(f"the copy {status.words}: {why}", sense=status.sense)
    return status


def _words(result: Result) -> str:
    if result.status == CHECK_CONDITION and result.sense:
        return describe(result.sense)
    return f"SCSI status {result.status:#04x}"


# -- stream devices ---------------------------------------------------------------------------

FILEMARK_OR_END = "filemark-or-end"


def _read6(device: Device, length: int, *, sili: bool) -> tuple[bytes, str | None]:
    """(data, event): event is None, "filemark", "end" (end of data) or "short"."""
    result = execute(device, c.read6_variable(length, sili), read=length)
    if result.status == GOOD:
        return result.data, None
    sense = parse(result.sense) if result.status == CHECK_CONDITION else None
    if sense is None:
        raise ScsiError("READ(6)", result)
    # The ASC/ASCQ as well as the FILEMARK and ILI bits: libiscsi hands over only the
    # former (hostcopy.libiscsi), SG_IO both.
    code = (sense.key, sense.asc, sense.ascq)
    if sense.filemark or code == (0x00, 0x00, 0x01):
        return result.data, "filemark"
    if sense.key == 0x08 or code[1:] == (0x00, 0x05):
        return result.data, "end"
    if sense.key == 0x00 and (sense.ili or code == (0x00, 0x00, 0x00)):
        return result.data, "short"
    raise ScsiError("READ(6)", result)


def _skip_by_reading(device: Device, files: int | None) -> None:
    """Past ``files`` file marks (None: to end of data) by reading: for a device that
    cannot SPACE (a file sink), at the price of the data crossing the network."""
    passed = 0
    while files is None or passed < files:
        _data, event = _read6(device, READ_THROUGH, sili=True)
        if event == "filemark":
            passed += 1
        elif event == "end":
            if files is None:
                return
            raise CopyFailed(f"{device.name} holds only {passed} backups")


def _space(device: Device, code: int, count: int) -> bool:
    """SPACE(6); False when the device does not have the command (INVALID OPCODE)."""
    result = execute(device, c.space6(code, count))
    if result.status == GOOD:
        return True
    sense = parse(result.sense) if result.status == CHECK_CONDITION else None
    if sense is not None and (sense.key, sense.asc) == (0x05, 0x20):
        return False
    if (
        sense is not None
        and code == c.SPACE_FILEMARKS
        and (sense.key, sense.asc, sense.ascq)
        in (
            (0x08, 0x00, 0x05),
            (0x03, 0x14, 0x00),
        )
    ):
        raise CopyFailed(f"{device.name} holds fewer than {count} backups")
    raise ScsiError("SPACE(6)", result)


def _space_sense(device: Device, code: int, count: int) -> tuple[int, int, int] | None:
    """SPACE(6) whose stop (a file mark, the beginning, end of data) is an answer, not a
    failure: None when it moved all the way, else (key, ASC, ASCQ), or (5, 0x20, 0) when
    the device has no SPACE."""
    result = execute(device, c.space6(code, count))
    if result.status == GOOD:
        return None
    sense = parse(result.sense) if result.status == CHECK_CONDITION else None
    if sense is None:
        raise ScsiError("SPACE(6)", result)
    if sense.filemark:
        return (0x00, 0x00, 0x01)
    return (sense.key, sense.asc, sense.ascq)


def can_space(device: Device) -> bool:
    return _space_sense(device, c.SPACE_BLOCKS, 0) != (0x05, 0x20, 0x00)


def close_open_file(device: Device) -> bool:
    """At the end of data of a tape: when the last object is a record, not a file mark (a
    backup the target stopped writing when its daemon died), write a file mark so what
    comes next is a tape file of its own. True when it did. A file sink ends every file."""
    back = _space_sense(device, c.SPACE_BLOCKS, -1)
    if back == (0x05, 0x20, 0x00):
        return False
    _space(device, c.SPACE_END_OF_DATA, 0)
    if back is not None:  # stopped at a file mark or the beginning: nothing is open
        return False
    write_filemark(device)
    return True


def read_end_label(device: Device) -> EndLabel | None:
    """From just past a backup's head label: its end label (the last record before the
    file mark), or None when it has none. Leaves the position past that file mark, or at
    end of data when the file has no mark (a backup cut off). A tape spaces to it; a file
    sink, which cannot, is read through (those bytes cross the network)."""
    if not can_space(device):
        tail = b""
        while True:
            data, event = _read6(device, READ_THROUGH, sili=True)
            tail = (tail + data)[-LABEL_SIZE:]
            if event == "filemark":
                return decode_end(tail)
            if event == "end":
                return None
    if _space_sense(device, c.SPACE_FILEMARKS, 1) is not None:
        return None  # end of data before a file mark: the file was never closed
    _space(device, c.SPACE_FILEMARKS, -1)
    if _space_sense(device, c.SPACE_BLOCKS, -1) is not None:
        _space(device, c.SPACE_FILEMARKS, 1)
        return None  # an empty file
    data, _event = _read6(device, LABEL_SIZE, sili=True)
    _space(device, c.SPACE_FILEMARKS, 1)
    return decode_end(data)


def end_label_behind(device: Device) -> EndLabel | None:
    """The end label just behind the position (after the target checked it), read again
    to print it; None on a device that cannot space back (a file sink)."""
    if _space_sense(device, c.SPACE_BLOCKS, -1) is not None:
        return None
    data, _event = _read6(device, LABEL_SIZE, sili=True)
    return decode_end(data)


def write_filemark(device: Device) -> None:
    run(device, "WRITE FILEMARKS(6)", c.write_filemarks6(1))


def rewind(device: Device) -> None:
    run(device, "REWIND", c.rewind())


def to_end_of_data(device: Device) -> None:
    rewind(device)
    if not _space(device, c.SPACE_END_OF_DATA, 0):
        _skip_by_reading(device, None)


def to_file(device: Device, number: int) -> None:
    rewind(device)
    if number and not _space(device, c.SPACE_FILEMARKS, number):
        _skip_by_reading(device, number)


def read_label(device: Device) -> tuple[Label | None, str | None]:
    """The label at the position (which moves past it): (label or None, event)."""
    data, event = _read6(device, LABEL_SIZE, sili=True)
    if event in ("filemark", "end"):
        return None, event
    return decode(data), event


def read_record(device: Device, length: int) -> tuple[bytes, str | None]:
    return _read6(device, length, sili=False)


def skip_file(device: Device) -> None:
    """To just past the next file mark."""
    if not _space(device, c.SPACE_FILEMARKS, 1):
        _skip_by_reading(device, 1)


def read_blocks(device: Device, lba: int, length: int, block_size: int) -> bytes:
    return run(device, "READ(16)", c.read16(lba, length // block_size), read=length)
