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

from sortedcontainers import SortedDict

from backing.sparse_file import Extent

# Past this many intervals the map moves from plain lists to a sorted container.
SORTED_ABOVE = 65_536


class _Lists:
    """The intervals in two plain sorted lists: the fastest while they are short."""

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


class _Sorted:
    """The intervals in a ``SortedDict`` (ends by start): found by value, never by
    position, so a new interval costs a search and an insert into one chunk of keys."""

    __slots__ = ("_ends", "size")

    def __init__(self, size: int, intervals: list[tuple[int, int]]) -> None:
        self.size = size
        self._ends: SortedDict[int, int] = SortedDict(intervals)

    def __len__(self) -> int:
        return len(self._ends)

    def intervals(self) -> list[tuple[int, int]]:
        return list(self._ends.items())

    def mapped_bytes(self) -> int:
        return sum(e - s for s, e in self._ends.items())

    def add(self, start: int, end: int) -> None:
        """Mark ``[start, end)`` as holding data (merging with touching intervals)."""
        if start >= end:
            return
        ends = self._ends
        if ends:
            # At or after the last interval (an in-order fill from diff_iterate, a stream
            # at the end): no search.
            last, last_end = ends.peekitem(-1)
            if start > last_end:
                ends[start] = end
                return
            if start >= last:
                ends[last] = max(end, last_end)
                return
        before = next(ends.irange(maximum=start, reverse=True), None)
        if before is not None and ends[before] >= start:
            if ends[before] >= end:
                return  # already inside one interval (a rewrite): nothing changes
            start = before
        # Every later interval starting in (start, end] overlaps or touches: one with the
        # new (whose start, if it was an interval's, keeps its place in the sorted keys).
        for key in list(ends.irange(start, end, inclusive=(False, True))):
            end = max(end, ends.pop(key))
        ends[start] = end

    def remove(self, start: int, end: int) -> None:
        """Mark ``[start, end)`` as deallocated."""
        if start >= end:
            return
        ends = self._ends
        before = next(ends.irange(maximum=start, inclusive=(True, False), reverse=True), None)
        if before is not None and ends[before] > start:
            stop = ends[before]
            ends[before] = start
            if stop > end:
                ends[end] = stop
                return
        for key in list(ends.irange(start, end, inclusive=(True, False))):
            stop = ends.pop(key)
            if stop > end:
                ends[end] = stop

    def extents(self, offset: int, length: int) -> list[Extent]:
        """The mapped and unmapped runs covering ``[offset, offset+length)``, clipped to
        the image, in order, alternating."""
        end = min(offset + length, max(self.size, offset))
        result: list[Extent] = []
        if end <= offset:
            return result
        ends = self._ends
        pos = offset
        before = next(ends.irange(maximum=pos, inclusive=(True, False), reverse=True), None)
        if before is not None and ends[before] > pos:
            pos = min(ends[before], end)
            result.append(Extent(offset, pos - offset, True))
        for start in ends.irange(pos, end, inclusive=(True, False)):
            if start > pos:
                result.append(Extent(pos, start - pos, False))
            stop = min(ends[start], end)
            result.append(Extent(start, stop - start, True))
            pos = stop
        if pos < end:
            result.append(Extent(pos, end - pos, False))
        return result


class Allocation:
    """Disjoint, non-adjacent ``[start, end)`` intervals.

    Up to ``sorted_above`` intervals they are two plain sorted lists; past that, a
    ``SortedDict``. A write that makes a new interval moves every later interval of a plain
    list: 1 us at one interval, 6 at 25,000, 50-130 at 250,000 and 0.2-0.8 ms at a million
    (a thin image written at random in 4 KiB), in the event loop. The sorted container's
    cost hardly grows (9-25 us at those sizes) but starts higher (about 2.5x the lists'
    below 50,000 intervals): docs/rbd.md, "Random 4 KiB writes: where the CPU goes".
    """

    __slots__ = ("_map", "size", "sorted_above")

    def __init__(self, size: int, *, sorted_above: int = SORTED_ABOVE) -> None:
        self.size = size
        self.sorted_above = sorted_above
        self._map: _Lists | _Sorted = _Lists(size)

    def __len__(self) -> int:
        return len(self._map)

    def grow(self, size: int) -> None:
        """The image grew to ``size`` bytes: the new range holds no data yet."""
        self.size = self._map.size = size

    def intervals(self) -> list[tuple[int, int]]:
        return self._map.intervals()

    def mapped_bytes(self) -> int:
        return self._map.mapped_bytes()

    def add(self, start: int, end: int) -> None:
        """Mark ``[start, end)`` as holding data (merging with touching intervals)."""
        intervals = self._map
        intervals.add(start, end)
        if type(intervals) is _Lists and len(intervals) > self.sorted_above:
            self._map = _Sorted(self.size, intervals.intervals())

    def remove(self, start: int, end: int) -> None:
        """Mark ``[start, end)`` as deallocated."""
        self._map.remove(start, end)

    def extents(self, offset: int, length: int) -> list[Extent]:
        """The mapped and unmapped runs covering ``[offset, offset+length)``, clipped to
        the image, in order, alternating."""
        return self._map.extents(offset, length)
