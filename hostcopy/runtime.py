"""What every ``targetd-copy`` command shares: its exit statuses, the :class:`Failure`
that ends it, and opening a device with the ``--command-timeout`` it was given."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType

from hostcopy import ops
from hostcopy.device import DEFAULT_TIMEOUT_S, Device, open_device

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# --command-timeout, set once by main() for every device the command opens.
command_timeout = DEFAULT_TIMEOUT_S


class Failure(Exception):
    """Ends the command with exit status 1 and this message."""


@contextmanager
def opened(spec: str) -> Iterator[Device]:
    device = open_device(spec, command_timeout)
    try:
        ops.clear_unit_attentions(device)
        yield device
    finally:
        device.close()


def utc(ms: int | None = None) -> str:
    when = datetime.now(UTC) if ms is None else datetime.fromtimestamp(ms / 1000, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def first_interrupt_only(signum: int, frame: FrameType | None) -> None:
    """SIGINT's handler: the first Ctrl-C stops the command (KeyboardInterrupt); the ones
    after it are ignored, so a second press cannot cut short what the first set going
    (COPY OPERATION ABORT, then the file mark that closes a partial backup)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt
