"""The synchronous small write (and read) a store may offer beside its coroutines.

A 4 KiB write to a sparse file completes inline (one ``pwrite``), yet as a coroutine it
took a frame at every layer it passed (the block LU's write gate, the pair volume, the
file). A store whose class has ``write_now(offset, data) -> bool`` promises that it
either writes ``data`` at ``offset`` at once, as ``write(offset, data)`` without FUA would,
and returns True, or does nothing and returns False (the caller then uses ``write``).
Nothing can run between its start and its end, so the bookkeeping a write that may wait
needs (in-flight counts, the gate's list of ranges being written) is not needed for it.
``read_now(offset, buf) -> bool`` is the same for ``read_into``: ``buf`` filled at once (from
the page cache) and True, or False and the caller awaits ``read_into``, which fills it all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

WriteNow = Callable[[int, memoryview], bool]
ReadNow = Callable[[int, memoryview], bool]


def write_now_of(store: object) -> WriteNow | None:
    """``store.write_now``, if it is the fast path of the ``write`` the store has: a class
    that overrides ``write`` without ``write_now`` (a test's failing or checking store)
    gets None, so every write still reaches its override."""
    return _fast_path_of(store, "write", "write_now")


def read_now_of(store: object) -> ReadNow | None:
    """``store.read_now`` (a READ filled at once from the page cache, or not at all), on the
    same terms as :func:`write_now_of` for ``read_into``."""
    return _fast_path_of(store, "read_into", "read_now")


def _fast_path_of(store: object, method: str, fast: str) -> Any:
    for klass in type(store).__mro__:
        if method in vars(klass):
            if fast in vars(klass) and method not in getattr(store, "__dict__", {}):
                return getattr(store, fast)
            return None
    return None
