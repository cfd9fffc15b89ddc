"""The synchronous small write a store may offer beside its ``write`` coroutine.

A 4 KiB write to a sparse file completes inline (one ``pwrite``), yet as a coroutine it
took a frame at every layer it passed (the block LU's write gate, the pair volume, the
file). A store whose class has ``write_now(offset, data) -> bool`` promises that it
either writes ``data`` at ``offset`` at once, as ``write(offset, data)`` without FUA would,
and returns True, or does nothing and returns False (the caller then uses ``write``).
Nothing can run between its start and its end, so the bookkeeping a write that may wait
needs (in-flight counts, the gate's list of ranges being written) is not needed for it.
"""

from __future__ import annotations

from collections.abc import Callable

WriteNow = Callable[[int, memoryview], bool]


def write_now_of(store: object) -> WriteNow | None:
    """``store.write_now``, if it is the fast path of the ``write`` the store has: a class
    that overrides ``write`` without ``write_now`` (a test's failing or checking store)
    gets None, so every write still reaches its override."""
    for klass in type(store).__mro__:
        if "write" in vars(klass):
            if "write_now" in vars(klass) and "write" not in getattr(store, "__dict__", {}):
                return getattr(store, "write_now")  # noqa: B009
            return None
    return None
