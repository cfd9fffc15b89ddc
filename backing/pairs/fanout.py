"""A host write to a primary that has several secondaries (1:N, at most three pairs).

Each pair keeps its own phase, bitmaps, copy workers and pair file; a host write to the
primary passes through every pair, one inside the other, always in the same order (by pair
name): pair 1 marks its bitmap (and copies before writing if it is
split), then pair 2 does, ..., then the write itself runs once. Because every write takes
the pairs in the same order, and a pair only ever waits for pairs after it in that order
(or for writes already past all of them), two writes can never wait for each other.

**One read for every split sibling.** When several pairs are SPLIT-PENDING and a chunk
the write touches is still in more than one of their split sets, the chunk's old content
is read from the primary once and written to each of those secondaries, before the write
passes through the pairs (which then find nothing left to copy). The pairs' own
copy-before-write stays the rule that keeps each split image right: this is only the
read shared, and whatever it did not cover (a race with a background copy) the pair
copies itself as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backing.pairs.engine import Pair


async def primary_write(
    pairs: Sequence[Pair], offset: int, length: int, op: Callable[[], Awaitable[None]]
) -> None:
    """Run the host write ``op`` on ``[offset, offset + length)`` of the primary of
    ``pairs`` (in the volume's order): refused as a whole if a reverse resync fences the
    primary, else through every pair's bookkeeping, then once."""
    for pair in pairs:
        pair.check_source_writable()
    for c in pairs[0].chunk_range(offset, length):
        await copy_once(pairs, c)
    run = op
    for pair in reversed(pairs):
        run = _through(pair, offset, length, run)
    await run()


def _through(
    pair: Pair, offset: int, length: int, inner: Callable[[], Awaitable[None]]
) -> Callable[[], Awaitable[None]]:
    def step() -> Awaitable[None]:
        return pair.source_write(offset, length, inner)

    return step


async def copy_once(pairs: Sequence[Pair], c: int) -> None:
    """Copy chunk ``c``'s split-instant content to every pair that still needs it before
    the primary's chunk is overwritten, reading it from the primary once. Each pair's
    copy ticket is taken in the volume's order (the write's own), each waiting, as a
    pair's own copy-before-write does, for that pair's writers of the chunk."""
    need = [p for p in pairs if p.cow_pending(c)]
    if len(need) < 2:
        return
    async with contextlib.AsyncExitStack() as stack:
        held = []
        for pair in need:
            ticket = await stack.enter_async_context(pair.hold_chunk(c))
            held.append((pair, ticket))
        live = [(p, t) for p, t in held if p.cow_pending(c)]
        if not live:
            return
        data = await live[0][0].read_split_chunk(c)
        for pair, ticket in live:
            await pair.deliver_chunk(c, ticket, data)


__all__ = ["copy_once", "primary_write"]
