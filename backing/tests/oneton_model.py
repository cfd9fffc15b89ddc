"""What a primary with several secondaries (1:N) must hold, as a model over a history.

Each secondary is either *mirroring* (created or resynced, not split since) or *split*.
A split secondary's image is the primary as it was at that secondary's own split instant,
plus whatever hosts wrote to the secondary since; a mirroring one must equal the primary
once its copying is done. Splitting, resyncing or writing one secondary changes nothing
for the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Secondary:
    split: bytearray | None = None  # the image since its split; None while mirroring
    splits: int = 0


@dataclass(slots=True)
class FanoutModel:
    size: int
    count: int
    primary: bytearray = field(init=False)
    secondaries: list[Secondary] = field(init=False)

    def __post_init__(self) -> None:
        self.primary = bytearray(self.size)
        self.secondaries = [Secondary() for _ in range(self.count)]

    def write_primary(self, offset: int, data: bytes) -> None:
        self.primary[offset : offset + len(data)] = data

    def split(self, i: int) -> None:
        s = self.secondaries[i]
        assert s.split is None, "only a mirroring secondary splits"
        s.split = bytearray(self.primary)
        s.splits += 1

    def resync(self, i: int) -> None:
        self.secondaries[i].split = None

    def write_secondary(self, i: int, offset: int, data: bytes) -> None:
        image = self.secondaries[i].split
        assert image is not None, "a mirroring secondary is write-protected"
        image[offset : offset + len(data)] = data

    def is_split(self, i: int) -> bool:
        return self.secondaries[i].split is not None

    def expected(self, i: int) -> bytes:
        """Secondary ``i`` as hosts must read it now (a mirroring one: once converged)."""
        image = self.secondaries[i].split
        return bytes(self.primary if image is None else image)


def first_difference(a: bytes, b: bytes, block: int = 512) -> int | None:
    """The first block where ``a`` and ``b`` differ, for a readable failure."""
    if a == b:
        return None
    for at in range(0, len(a), block):
        if a[at : at + block] != b[at : at + block]:
            return at // block
    return len(a) // block


__all__ = ["FanoutModel", "Secondary", "first_difference"]
