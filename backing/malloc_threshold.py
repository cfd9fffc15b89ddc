"""glibc's mmap threshold: one setting for the whole process, fixed by the daemon at start and
raised when librbd is in use.

glibc maps every allocation at or above the threshold apart (``mmap``) and unmaps it when
it is freed. The daemon fixes it at 128 KiB (glibc would otherwise raise it as large buffers
are freed), so the buffers its pool lets go of go back to the system (docs/iscsi.md,
"Memory"). librbd, though, allocates a fresh buffer for every request's data, in this
process: the copy of each write, and the messenger's buffer for each read reply. Mapped
apart, each of those costs page faults, zeroed pages and an unmap, per request: half of
the daemon's CPU for 1 MiB RBD writes here (docs/rbd.md). So an RBD LUN raises the threshold
above the largest such buffer, and freed buffers are reused from the heap.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
DEFAULT_THRESHOLD = 128 * 1024
# Above the largest buffer librbd allocates for a request: a command moves at most 8 MiB
# (scsi.block_device.MAX_TRANSFER_BYTES), and a read reply at most one object of that.
LIBRBD_THRESHOLD = 16 << 20

_threshold = DEFAULT_THRESHOLD


def fix_mmap_threshold(at_least: int = 0) -> int:
    """Set the threshold to the highest asked for so far (at least ``at_least``, and never
    below the daemon's 128 KiB): raising it for librbd survives the daemon's own fixing at
    start, in either order. Returns the threshold now set."""
    global _threshold
    _threshold = max(_threshold, at_least)
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: nothing to fix
        return _threshold
    mallopt(M_MMAP_THRESHOLD, _threshold)
    return _threshold
