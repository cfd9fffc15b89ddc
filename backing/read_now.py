"""The synchronous small read a store may offer beside its ``read_into`` coroutine.

A 4 KiB read from the page cache completes inline (one ``preadv``), yet as a coroutine it
took a frame and an ``await`` at the store. A store whose class has ``read_now(offset, buf)
-> bool`` promises that it either fills ``buf`` with the bytes at ``offset`` at once, as
``read_into(offset, buf)`` would, and returns True, or returns False (``buf`` may then hold
anything; the caller uses ``read_into``, which fills all of it).
"""

from __future__ import annotations

from collections.abc import Callable

ReadNow = Callable[[int, memoryview], bool]


def read_now_of(store: object) -> ReadNow | None:
    """``store.read_now``, if it is the fast path of the ``read_into`` the store has: a class
    that overrides ``read_into`` without ``read_now`` (a test's failing or counting store)
    gets None, so every read still reaches its override."""
    for klass in type(store).__mro__:
        if "read_into" in vars(klass):
            if "read_now" in vars(klass) and "read_into" not in getattr(store, "__dict__", {}):
                return getattr(store, "read_now")  # noqa: B009
            return None
    return None
