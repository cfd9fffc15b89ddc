"""Which byte ranges of an RBD image hold data: a sorted set of disjoint intervals.

GET LBA STATUS, the pair engine and EXTENDED COPY ask a store for its extents with a plain
(synchronous) call on the event loop. For an RBD image the answer lives in the cluster
(``diff_iterate``, served from the object map with fast-diff), and asking it is a network
round trip that must not block the loop. So the image's allocation is read once with
``diff_iterate`` when it is opened, and kept current from then on by this daemon's own
writes and deallocations. That is exact while this daemon is the image's only writer,
which RBD's exclusive lock makes it; a gateway that takes the lock over from another one
reads the allocation again (``RbdImage.reload_allocation``).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from backing.sparse_file import Extent


class Allocation:
    """Disjoint, non-adjacent ``[start, end)`` intervals, kept in two sorted lists."""

    __slots__ = ("_ends", "_starts", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __len__(self) -> int:
        return len(self._starts)

    def intervals(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def mapped_bytes(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def add(self, start: int, end: int) -> None:
        """Mark ``[start, end)`` as holding data (merging with touching intervals)."""
        if start >= end:
            return
        starts, ends = self._starts, self._ends
        # Intervals that overlap or touch [start, end): ends >= start and starts <= end.
        i = bisect_left(ends, start)
        j = bisect_right(starts, end)
        if i < j:
            start = min(start, starts[i])
            end = max(end, ends[j - 1])
        starts[i:j] = [start]
        ends[i:j] = [end]

    def remove(self, start: int, end: int) -> None:
        """Mark ``[start, end)`` as deallocated."""
        if start >= end:
            return
        starts, ends = self._starts, self._ends
        i = bisect_right(ends, start)  # first interval ending after start
        j = bisect_left(starts, end)  # intervals from j on start at or after end
        if i >= j:
            return
        new_starts: list[int] = []
        new_ends: list[int] = []
        if starts[i] < start:
            new_starts.append(starts[i])
            new_ends.append(start)
        if ends[j - 1] > end:
            new_starts.append(end)
            new_ends.append(ends[j - 1])
        starts[i:j] = new_starts
        ends[i:j] = new_ends

    def extents(self, offset: int, length: int) -> list[Extent]:
        """The mapped and unmapped runs covering ``[offset, offset+length)``, clipped to
        the image, in order, alternating."""
        end = min(offset + length, max(self.size, offset))
        result: list[Extent] = []
        pos = offset
        starts, ends = self._starts, self._ends
        i = bisect_right(ends, pos)
        while pos < end:
            if i < len(starts) and starts[i] <= pos:
                stop = min(ends[i], end)
                result.append(Extent(pos, stop - pos, True))
                i += 1
            else:
                stop = min(starts[i], end) if i < len(starts) else end
                result.append(Extent(pos, stop - pos, False))
            pos = stop
        return result
