"""Reusable data buffers for large transfers.

A fresh ``bytearray`` of 1 MiB costs more than reading 1 MiB from the page cache into it
(it is zero-filled, often on newly mapped pages), so the transport lends buffers to the
commands it runs and takes them back once the data is gone: a write's buffer when its
command completes, a read's buffer when the socket has taken the bytes.

Only buffers this pool lent are taken back, so a handler that returns a buffer it keeps
(a mode page, say) can never have it recycled under it. A lent buffer holds old data:
whoever takes one must fill every byte it hands on.
"""

from __future__ import annotations

# Below this, allocating is cheap and pooling not worth the bookkeeping.
POOL_MIN_SIZE = 64 * 1024


class BufferPool:
    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._free: dict[int, list[bytearray]] = {}
        self._free_bytes = 0
        self._lent: set[int] = set()

    def take(self, size: int) -> bytearray:
        """A buffer of exactly ``size`` bytes, contents undefined."""
        if size < POOL_MIN_SIZE:
            return bytearray(size)
        free = self._free.get(size)
        if free:
            buf = free.pop()
            self._free_bytes -= size
        else:
            buf = bytearray(size)
        self._lent.add(id(buf))
        return buf

    def give(self, buf: object) -> None:
        """Return a buffer; anything this pool did not lend is ignored."""
        if not isinstance(buf, bytearray) or id(buf) not in self._lent:
            return
        self._lent.discard(id(buf))
        size = len(buf)
        if self._free_bytes + size <= self.max_bytes:
            self._free.setdefault(size, []).append(buf)
            self._free_bytes += size

    @property
    def lent(self) -> int:
        return len(self._lent)
