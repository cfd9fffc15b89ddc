"""What a tape knows about its objects (records and file marks) without reading them: one
set of answers for every tape store (the local image, an S3 bucket), kept in memory.

A store keeps ``_lengths`` (a record's payload length, or -1 for a file mark, per object)
and ``_filemarks`` (the object numbers of its file marks, ascending), and says how much of
the medium is used before an object (``used``, ``used_at``); SPACE, LOCATE and READ
POSITION are answered from these alone.
"""

from __future__ import annotations

import bisect
from array import array


class RecordIndex:
    _lengths: array[int]
    _filemarks: array[int]
    capacity: int
    early_warning: int

    @property
    def used(self) -> int:
        raise NotImplementedError

    def used_at(self, position: int) -> int:
        raise NotImplementedError

    def in_early_warning(self, position: int | None = None) -> bool:
        """True when ``position`` (default: end of data) lies in the early-warning zone."""
        used = self.used if position is None else self.used_at(position)
        return used >= self.capacity - self.early_warning

    def length(self, index: int) -> int | None:
        """Payload length of record ``index``, or None for a file mark."""
        n = self._lengths[index]
        return None if n < 0 else n

    def is_filemark(self, index: int) -> bool:
        return self._lengths[index] < 0

    def filemarks_before(self, position: int) -> int:
        """File marks among objects ``0 .. position-1``: the file number at ``position``."""
        return bisect.bisect_left(self._filemarks, position)

    def filemark_count(self) -> int:
        return len(self._filemarks)

    def filemark_index(self, n: int) -> int:
        """Object number of the ``n``-th file mark (0-based)."""
        return self._filemarks[n]

    def next_filemark(self, position: int) -> int | None:
        """Object number of the first file mark at or after ``position``, or None."""
        n = bisect.bisect_left(self._filemarks, position)
        return self._filemarks[n] if n < len(self._filemarks) else None

    def previous_filemark(self, position: int) -> int | None:
        """Object number of the last file mark before ``position``, or None."""
        n = bisect.bisect_left(self._filemarks, position)
        return self._filemarks[n - 1] if n else None
