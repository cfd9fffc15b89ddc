"""A chunk bitmap: one bit per chunk, stored in pages that exist only where a bit is set.

A 64 TiB pair at 256 KiB chunks has 2**28 chunks: 32 MiB of bits if every chunk were
dirty, and a few KiB when, as usual, the differential is small. Pages are the unit the
write-intent file stores and rewrites, so the bitmap also remembers which pages changed
since they were last written out.
"""

from __future__ import annotations

from collections.abc import Iterator

PAGE_BYTES = 4096
PAGE_BITS = PAGE_BYTES * 8
_ZERO_PAGE = bytes(PAGE_BYTES)
_POPCOUNT = bytes(bin(i).count("1") for i in range(256))


class ChunkBitmap:
    """Bits ``0 .. nbits-1``; absent pages read as zero."""

    def __init__(self, nbits: int) -> None:
        self.nbits = nbits
        self.npages = (nbits + PAGE_BITS - 1) // PAGE_BITS
        self._pages: dict[int, bytearray] = {}
        self._counts: dict[int, int] = {}
        self.count = 0
        # Pages changed since the last ``take_changed_pages``.
        self.changed: set[int] = set()

    # -- single bits -------------------------------------------------------------------
    def test(self, bit: int) -> bool:
        page = self._pages.get(bit // PAGE_BITS)
        if page is None:
            return False
        i = bit % PAGE_BITS
        return bool(page[i >> 3] & (1 << (i & 7)))

    __contains__ = test

    def set(self, bit: int) -> bool:
        """Set ``bit``; True if it was clear."""
        p, i = divmod(bit, PAGE_BITS)
        page = self._pages.get(p)
        if page is None:
            page = self._pages[p] = bytearray(PAGE_BYTES)
            self._counts[p] = 0
        mask = 1 << (i & 7)
        if page[i >> 3] & mask:
            return False
        page[i >> 3] |= mask
        self._counts[p] += 1
        self.count += 1
        self.changed.add(p)
        return True

    def clear(self, bit: int) -> bool:
        """Clear ``bit``; True if it was set."""
        p, i = divmod(bit, PAGE_BITS)
        page = self._pages.get(p)
        mask = 1 << (i & 7)
        if page is None or not page[i >> 3] & mask:
            return False
        page[i >> 3] &= ~mask & 0xFF
        self.count -= 1
        self.changed.add(p)
        self._counts[p] -= 1
        if not self._counts[p]:
            del self._pages[p], self._counts[p]
        return True

    # -- ranges and sets ---------------------------------------------------------------
    def set_range(self, start: int, stop: int) -> None:
        """Set bits ``start .. stop-1``, a page at a time (extent scans set long runs)."""
        stop = min(stop, self.nbits)
        while start < stop:
            p = start // PAGE_BITS
            lo = start - p * PAGE_BITS
            hi = min(stop - p * PAGE_BITS, PAGE_BITS)
            mask = ((1 << (hi - lo)) - 1) << lo
            self._or_page(p, mask)
            start = p * PAGE_BITS + hi

    def set_all(self) -> None:
        for p in range(self.npages):
            lo = p * PAGE_BITS
            hi = min(lo + PAGE_BITS, self.nbits)
            page = bytearray(PAGE_BYTES)
            full, rest = divmod(hi - lo, 8)
            page[:full] = b"\xff" * full
            if rest:
                page[full] = (1 << rest) - 1
            self._load_page(p, page)

    def clear_all(self) -> None:
        self.changed.update(self._pages)
        self._pages.clear()
        self._counts.clear()
        self.count = 0

    def update(self, other: ChunkBitmap) -> None:
        """``self |= other``."""
        for p, theirs in list(other._pages.items()):
            self._or_page(p, int.from_bytes(theirs, "little"))

    def _or_page(self, p: int, mask: int) -> None:
        mine = self._pages.get(p)
        value = mask | (int.from_bytes(mine, "little") if mine is not None else 0)
        self._load_page(p, bytearray(value.to_bytes(PAGE_BYTES, "little")))

    def __iter__(self) -> Iterator[int]:
        """Set bits in ascending order."""
        yield from self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[int]:
        """Set bits ``>= start``, ascending; tolerates changes between steps."""
        p = start // PAGE_BITS
        while p < self.npages:
            page = self._pages.get(p)
            if page is not None:
                base = p * PAGE_BITS
                i = max(0, start - base)
                while i < PAGE_BITS:
                    # Skip zero bytes at C speed, then look at one byte's bits.
                    byte_index = i >> 3
                    rest = page[byte_index:]
                    skipped = len(rest) - len(rest.lstrip(b"\0"))
                    if skipped == len(rest):
                        break
                    byte_index += skipped
                    i = max(i, byte_index * 8)
                    value = page[byte_index]
                    while i < (byte_index + 1) * 8:
                        if value & (1 << (i & 7)):
                            yield base + i
                            page = self._pages.get(p)
                            if page is None:
                                break
                        i += 1
                    if page is None:
                        break
            p += 1

    def first_from(self, start: int) -> int | None:
        """The first set bit at or after ``start``, else None."""
        return next(self.iter_from(start), None)

    # -- pages, for the write-intent file -----------------------------------------------
    def page_bytes(self, p: int) -> bytes:
        page = self._pages.get(p)
        return _ZERO_PAGE if page is None else bytes(page)

    def page_numbers(self) -> list[int]:
        """The pages that hold a set bit."""
        return list(self._pages)

    def has_page(self, p: int) -> bool:
        return p in self._pages

    def take_changed_pages(self) -> dict[int, bytes]:
        """The pages changed since the last call, as they are now."""
        changed, self.changed = self.changed, set()
        return {p: self.page_bytes(p) for p in sorted(changed)}

    def load_page(self, p: int, data: bytes) -> None:
        """Install a page read back from disk (not marked changed)."""
        self._load_page(p, bytearray(data[:PAGE_BYTES]), mark=False)

    def _load_page(self, p: int, page: bytearray, *, mark: bool = True) -> None:
        old = self._counts.get(p, 0)
        last = self.nbits - p * PAGE_BITS
        if last < PAGE_BITS:  # bits past the end are never set
            full, rest = divmod(last, 8)
            if rest:
                page[full] &= (1 << rest) - 1
                full += 1
            page[full:] = bytes(PAGE_BYTES - full)
        count = sum(page.translate(_POPCOUNT)) if any(page) else 0
        if count:
            self._pages[p] = page
            self._counts[p] = count
        else:
            self._pages.pop(p, None)
            self._counts.pop(p, None)
        self.count += count - old
        if mark:
            self.changed.add(p)

    @property
    def memory_bytes(self) -> int:
        return len(self._pages) * PAGE_BYTES
