"""The one seam every block source read goes through.

A copy asks its :class:`ReaderFactory` once for a :class:`SourceReader` per source LU;
the reader decides where the bytes come from. :class:`DirectReader` reads the LU's store
as it is now. The pair-aware backup policies (reflect-first, wait, merge,
split-and-backup) are readers too: a source that is the target volume of a pair still
SPLIT-PENDING gets a reader whose ``prepare`` reflects the range first (or waits for
SPLIT), or whose ``read_into`` merges chunks read as of the split instant, so the bytes
that reach the destination equal the volume at the split instant whatever the policy.
A reader that cannot promise that raises :class:`SourceUnavailable` and the copy ends
with COPY ABORTED saying why, never with silently wrong data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from backing.sparse_file import Extent
from scsi.kernel_file import KernelFile
from scsi.sense import Reason

if TYPE_CHECKING:
    from scsi.block_device import BlockDevice
    from scsi.command import Nexus
    from xcopy.params import CopyList


class SourceUnavailable(Exception):
    """The source cannot deliver the range as the copy needs it: ``reason`` is the
    COPY ABORTED sense the copy ends with, the message says why."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SourceReader(Protocol):
    async def prepare(self, offset: int, length: int) -> None:
        """Called once per segment before its range is read (reflect first, or wait)."""

    async def read_into(self, offset: int, buf: memoryview) -> None: ...

    def extents(self, offset: int, length: int) -> list[Extent]:
        """Mapped and hole runs of the range as the reader will deliver it."""
        ...

    async def close(self) -> None: ...


# (the source LU, the copy list, the I_T nexus the copy acts for) -> its reader
ReaderFactory = Callable[["BlockDevice", "CopyList", "Nexus"], Awaitable[SourceReader]]


class DirectReader:
    """The LU's store as it is: what a READ would return."""

    def __init__(self, lu: BlockDevice) -> None:
        self.lu = lu

    async def prepare(self, offset: int, length: int) -> None:
        return None

    async def read_into(self, offset: int, buf: memoryview) -> None:
        await self.lu.store.read_into(offset, buf)

    def extents(self, offset: int, length: int) -> list[Extent]:
        return self.lu.store.extents(offset, length)

    def kernel_source(self) -> KernelFile | None:
        """The file the LU says holds, at the same offsets, what ``read_into`` returns, so
        the kernel can copy it (copy_file_range) without a trip through user space; None
        when reads are not plain file reads."""
        return self.lu.kernel_readable()

    async def close(self) -> None:
        return None


async def direct_reader(lu: BlockDevice, copy_list: CopyList, nexus: Nexus) -> SourceReader:
    return DirectReader(lu)
