"""The ordering rule a consistency group's split must keep, as a checker over a history.

Sessions write one at a time (each write is sent after the session's previous write was
acknowledged), each to blocks only it writes, on any LUN of the group. Every write has a
``sent`` and an ``acked`` time on one clock, and so does the split. The images a group
split may leave on the secondaries are those of a set IN of writes such that:

1. every write acknowledged before the split was sent is in IN;
2. no write sent after the split was acknowledged is in IN;
3. if B is in IN and A was acknowledged before B was sent, A is in IN (dependent writes).

Since a session's writes depend on each other in turn, IN holds a *prefix* of each
session's writes; :func:`check` finds each session's prefix on the secondaries (every
write's data is unique) and checks the three rules across sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BLOCK = 512


@dataclass(slots=True)
class Write:
    session: int
    lun: int
    block: int
    data: bytes
    sent: int = 0
    acked: int = 0


@dataclass(slots=True)
class History:
    sessions: int
    writes: list[list[Write]] = field(default_factory=list)  # per session, in order
    split_sent: int = 0
    split_acked: int = 0
    clock: int = 0

    def __post_init__(self) -> None:
        self.writes = [[] for _ in range(self.sessions)]

    def tick(self) -> int:
        self.clock += 1
        return self.clock


def image_of(initial: list[bytes], writes: list[Write], blocks: set[tuple[int, int]]) -> dict:
    """The content of ``blocks`` ((lun, block) pairs) after ``writes`` on ``initial``."""
    out = {(lun, b): initial[lun][b * BLOCK : (b + 1) * BLOCK] for lun, b in blocks}
    for w in writes:
        out[(w.lun, w.block)] = w.data
    return out


def prefix_on(initial: list[bytes], secondaries: list[bytes], writes: list[Write]) -> int | None:
    """The k such that the session's blocks on the secondaries are the image of its first
    k writes; None if no prefix gives them (an image no rule allows)."""
    blocks = {(w.lun, w.block) for w in writes}
    seen = {(lun, b): secondaries[lun][b * BLOCK : (b + 1) * BLOCK] for lun, b in blocks}
    current = image_of(initial, [], blocks)
    if current == seen:
        return 0
    for k, w in enumerate(writes, 1):
        current[(w.lun, w.block)] = w.data
        if current == seen:
            return k
    return None


def check(history: History, initial: list[bytes], secondaries: list[bytes]) -> list[int]:
    """Raise AssertionError unless the secondaries are an image the rule allows; returns
    each session's prefix length (how many of its writes are in)."""
    prefixes = []
    for s, writes in enumerate(history.writes):
        k = prefix_on(initial, secondaries, writes)
        assert k is not None, f"session {s}: the secondaries hold no prefix of its writes"
        prefixes.append(k)
    for s, writes in enumerate(history.writes):
        k = prefixes[s]
        for i, w in enumerate(writes):
            if w.acked < history.split_sent:
                assert i < k, f"session {s} write {i} acked before the split is missing"
            if w.sent > history.split_acked:
                assert i >= k, f"session {s} write {i} sent after the split's answer is in"
        if not k:
            continue
        last_in = writes[k - 1]
        for t, others in enumerate(history.writes):
            needed = sum(1 for a in others if a.acked < last_in.sent)
            assert prefixes[t] >= needed, (
                f"session {s} write {k - 1} is in, but session {t}'s write {needed - 1},"
                " acknowledged before it was sent, is not (dependent-write order broken)"
            )
    return prefixes


__all__ = ["BLOCK", "History", "Write", "check", "image_of", "prefix_on"]
