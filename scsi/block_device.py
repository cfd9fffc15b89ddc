"""The block logical unit (peripheral device type 0): a store, a block size, a WP flag.

SBC command handlers live in scsi.sbc; this class holds the state they share, the SBC
VPD pages (B0h Block Limits, B1h Block Device Characteristics, B2h Logical Block
Provisioning), the caching mode page, and the write gate that makes COMPARE AND WRITE
and ORWRITE atomic against other writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from construct import Int8ub, Int16ub, Int32ub, Int64ub, Padding, Struct

from backing.block_store import BlockStore
from backing.pairs.states import Phase
from backing.pairs.volume import PairVolume, Role
from backing.sparse_file import SparseFile
from backing.write_now import read_now_of, write_now_of
from scsi.command import FileRange
from scsi.kernel_file import KernelFile
from scsi.logical_unit import NO_SERVICES, Identity, LogicalUnit, Services
from scsi.mode import ModePage
from scsi.pair_commands import PairControl  # also registers PAIR IN/OUT in SBC_TABLE
from scsi.sbc import SBC_TABLE
from scsi.sense import Reason

MiB = 1 << 20
# Block Limits, in bytes so both block sizes get the same byte limits.
MAX_TRANSFER_BYTES = 8 * MiB
OPTIMAL_TRANSFER_BYTES = 1 * MiB
MAX_WRITE_SAME_BYTES = 16 * MiB
# Punching is cheap at any size: no limit on blocks, but a bounded descriptor list.
MAX_UNMAP_BLOCKS = 0xFFFFFFFF
MAX_UNMAP_DESCRIPTORS = 256
MAX_COMPARE_AND_WRITE_BLOCKS = 255
# The file system's allocation unit: what a punch can really deallocate.
ALLOCATION_UNIT = 4096

BLOCK_SIZES = (512, 1024, 2048, 4096)


_BlockLimits = Struct(
    "wsnz" / Int8ub,
    "max_compare_and_write" / Int8ub,
    "optimal_granularity" / Int16ub,
    "max_transfer" / Int32ub,
    "optimal_transfer" / Int32ub,
    "max_prefetch" / Int32ub,
    "max_unmap_lba_count" / Int32ub,
    "max_unmap_descriptors" / Int32ub,
    "optimal_unmap_granularity" / Int32ub,
    "unmap_granularity_alignment" / Int32ub,  # bit 31: UGAVALID
    "max_write_same" / Int64ub,
    "max_atomic_transfer" / Int32ub,
    "atomic_alignment" / Int32ub,
    "atomic_granularity" / Int32ub,
    "max_atomic_with_boundary" / Int32ub,
    "max_atomic_boundary" / Int32ub,
)

_Characteristics = Struct(
    "rotation_rate" / Int16ub,  # 0001h: non-rotating medium
    "product_type" / Int8ub,
    "form_factor" / Int8ub,  # WABEREQ, WACEREQ, NOMINAL FORM FACTOR (0: not reported)
    "flags" / Int8ub,  # ZONED, FUAB, VBULS
    Padding(55),
)

_Provisioning = Struct(
    "threshold_exponent" / Int8ub,
    "flags" / Int8ub,  # LBPU, LBPWS, LBPWS10, LBPRZ(3 bits), ANC_SUP, DP
    "provisioning_type" / Int8ub,  # low 3 bits: 010b thin
    "threshold_percentage" / Int8ub,
)
LBPU, LBPWS, LBPWS10, LBPRZ = 0x80, 0x40, 0x20, 0x04
THIN_PROVISIONED = 0x02

WCE = 0x04  # caching page byte 2


class BlockDevice(LogicalUnit):
    """A direct-access block device over a :class:`BlockStore`."""

    table = SBC_TABLE
    device_type = 0x00
    supports_software_write_protect = True

    def __init__(
        self,
        identity: Identity,
        store: BlockStore,
        *,
        block_size: int = 512,
        read_only: bool = False,
        services: Services = NO_SERVICES,
        pair_control: PairControl | None = None,
    ) -> None:
        if block_size not in BLOCK_SIZES:
            raise ValueError(f"block size {block_size} is not one of {BLOCK_SIZES}")
        if store.size < block_size:
            raise ValueError("the store is smaller than one block")
        super().__init__(identity, services)
        self.store = store
        # The daemon's volume pairs, for the vendor pair commands (None: not offered).
        self.pair_control = pair_control
        self.block_size = block_size
        self._read_only = read_only
        self.num_blocks = store.size // block_size
        self.max_transfer_blocks = MAX_TRANSFER_BYTES // block_size
        self.max_write_same_blocks = MAX_WRITE_SAME_BYTES // block_size
        self.max_compare_and_write_blocks = MAX_COMPARE_AND_WRITE_BLOCKS
        self.max_unmap_blocks = MAX_UNMAP_BLOCKS
        self.max_unmap_descriptors = MAX_UNMAP_DESCRIPTORS
        # Caching page WCE: with the write cache off every write is forced to media.
        self.write_cache = True
        # The write gate: byte ranges held by atomic commands and ranges being written.
        self._held: dict[int, tuple[int, int]] = {}
        self._writing: dict[int, tuple[int, int]] = {}
        self._gate_changed: asyncio.Event | None = None
        self._next_key = 0
        self._store_write_now = write_now_of(store)
        # The store's synchronous cached read, if it has one (None: await read_into).
        self.read_now = read_now_of(store)

    def grow(self, size: int) -> None:
        """Grow the LU to ``size`` bytes while hosts use it (a reload with a larger
        ``size``). Commands already running checked their range against the old end and
        stay inside it; later ones may reach the new end. Every nexus learns of it from
        CAPACITY DATA HAS CHANGED (SPC-4 6.6: a change to READ CAPACITY's data). Only
        growing: a LU that shrinks under a host loses what lay past its new end, so that is
        refused (ValueError), as is a store that cannot grow."""
        now = self.num_blocks * self.block_size
        if size % self.block_size:
            raise ValueError(f"{size} bytes is not a multiple of the block size")
        if size < now:
            raise ValueError(
                f"it would shrink from {now} to {size} bytes, losing the data past the new end"
            )
        if size == now:
            return
        grow = getattr(self.store, "grow", None)
        if grow is None:
            raise ValueError("its store cannot grow")
        grow(size)
        self.num_blocks = size // self.block_size
        self.raise_unit_attention(Reason.CAPACITY_DATA_CHANGED)

    @property
    def read_only(self) -> bool:
        """Writes are refused: configured read-only, a mirrored pair target, or software
        write protect (control mode page SWP) set by an initiator."""
        return self._read_only or self.software_write_protect

    @read_only.setter
    def read_only(self, value: bool) -> None:
        self._read_only = value

    @property
    def hardware_read_only(self) -> bool:
        """Read-only whatever an initiator sets (configuration or pair state)."""
        return self._read_only

    @classmethod
    def from_file(
        cls,
        identity: Identity,
        path: Path,
        size: int,
        *,
        block_size: int = 512,
        read_only: bool = False,
        services: Services = NO_SERVICES,
    ) -> BlockDevice:
        """A block LU over a sparse file, created on demand."""
        return cls(
            identity,
            SparseFile(path, size, read_only=read_only),
            block_size=block_size,
            read_only=read_only,
            services=services,
        )

    # -- the write path ----------------------------------------------------------------
    def write_now(self, offset: int, data: memoryview, fua: bool) -> bool:
        """A small write made at once, when nothing holds the gate and the store offers
        one (backing/write_now.py): True when written, False to go through
        :meth:`write_bytes`. Nothing can start between its start and its end, so it needs
        no place among the ranges being written."""
        if fua or self._held or not self.write_cache:
            return False
        store_write_now = self._store_write_now
        return store_write_now is not None and store_write_now(offset, data)

    async def write_bytes(self, offset: int, data: memoryview | bytes, fua: bool) -> None:
        """Write through the gate: wait while an atomic command holds the range."""
        end = offset + len(data)
        if self._held:
            await self._wait_until_clear(offset, end, self._held)
        key = self._next_key = self._next_key + 1
        self._writing[key] = (offset, end)
        try:
            await self.store.write(offset, data, fua=fua or not self.write_cache)
        finally:
            del self._writing[key]
            if self._gate_changed is not None:
                self._open_gate()

    async def write_with(self, offset: int, length: int, op: Callable[[], Awaitable[None]]) -> None:
        """Like :meth:`write_bytes` for a write that ``op`` makes by other means (a kernel
        copy into the store's file): through the gate, and on stable storage before
        returning when the write cache is off."""
        end = offset + length
        if self._held:
            await self._wait_until_clear(offset, end, self._held)
        key = self._next_key = self._next_key + 1
        self._writing[key] = (offset, end)
        try:
            await op()
            if not self.write_cache:
                await self.store.flush()
        finally:
            del self._writing[key]
            if self._gate_changed is not None:
                self._open_gate()

    # -- reads sent straight from the file (sendfile) -------------------------------------
    def file_range(self, offset: int, length: int) -> FileRange | None:
        """``[offset, offset+length)`` as a range of the plain file READ reads it from, for
        the transport to send with sendfile(2); None when it must be read into a buffer.

        Only where a READ is a plain read of the live volume's file: a sparse file, alone
        or as a pair volume that is unpaired or a pair's source outside a reverse resync.
        Never a pair's target: sendfile reads the pages when the socket takes them, later
        than the READ ran, and the copy engine writes a target's file behind the host's
        back (a resync, a merged read's chunks held only while they are read), so a split
        image could show bytes written after it was taken. A source's reads race only the
        host's own writes, which SCSI leaves unordered against a READ in flight; the copy
        engine reads the source for copy-before-write with its own reads. And only when the
        pages are all in the page cache, as the buffered path's RWF_NOWAIT read requires:
        sendfile would block the event loop on the disk.
        """
        store = self.store
        if isinstance(store, PairVolume):
            volume = store
            if volume.pairs and (volume.role is not Role.SOURCE or volume.fenced_by() is not None):
                return None
            base = volume.base
            if not isinstance(base, SparseFile) or not base.cached(offset, length):
                return None
            # The volume learns of the READ until the initiator has its bytes: a pair
            # attached (a creation copy) or a reverse resync begun meanwhile writes the
            # range only after that.
            return FileRange(base, offset, length, partial(volume.sending, offset, length))
        if not isinstance(store, SparseFile) or not store.cached(offset, length):
            return None
        return FileRange(store, offset, length)

    # -- kernel copies (EXTENDED COPY) ---------------------------------------------------
    def kernel_readable(self) -> KernelFile | None:
        """The plain file whose bytes, at the same offsets, are what READ returns now, for
        the kernel to copy from; None when reads are not plain file reads (a pair's target
        volume before its split image is complete, a store of another kind)."""
        store = self.store
        if isinstance(store, SparseFile):
            return KernelFile(store.fd)
        if isinstance(store, PairVolume) and isinstance(store.base, SparseFile):
            pair = store.pair
            if store.role is Role.SOURCE:
                # A source being restored (reverse resync) reads chunks from its target.
                plain = store.fenced_by() is None
            else:
                plain = pair is None or pair.phase is Phase.SPLIT
            if plain:
                return KernelFile(store.base.fd)
        return None

    def kernel_writable(self) -> bool:
        """Whether :meth:`write_from_file` can take a kernel copy into this LU."""
        return self._kernel_target() is not None

    def _kernel_target(
        self,
    ) -> (
        tuple[KernelFile, Callable[[int, int, Callable[[], Awaitable[None]]], Awaitable[None]]]
        | None
    ):
        store = self.store
        if isinstance(store, SparseFile):
            return KernelFile(store.fd), _plain_write
        if isinstance(store, PairVolume) and isinstance(store.base, SparseFile):
            return KernelFile(store.base.fd), store.write_by
        return None

    async def write_from_file(
        self, offset: int, length: int, copy: Callable[[KernelFile], Awaitable[None]]
    ) -> None:
        """Write ``[offset, offset+length)`` with bytes the kernel copies into this LU's
        file (``copy(file)``), as a WRITE would: through the write gate, through the
        store's write hook (a pair volume marks its bitmaps and copies before), and on
        stable storage before returning when the write cache is off."""
        target = self._kernel_target()
        if target is None:
            raise ValueError(f"{self.identity.device_id} takes no kernel copies")
        file, hook = target

        async def op() -> None:
            await copy(file)

        def hooked() -> Awaitable[None]:
            return hook(offset, length, op)

        await self.write_with(offset, length, hooked)

    async def deallocate(self, offset: int, length: int, *, punch: bool) -> None:
        """Make a range read as zeros (punching a hole, or zeroing it), through the gate."""
        end = offset + length
        if self._held:
            await self._wait_until_clear(offset, end, self._held)
        key = self._next_key = self._next_key + 1
        self._writing[key] = (offset, end)
        try:
            if punch:
                await self.store.punch_hole(offset, length)
            else:
                await self.store.write_zeroes(offset, length)
            if not self.write_cache:
                await self.store.flush()
        finally:
            del self._writing[key]
            if self._gate_changed is not None:
                self._open_gate()

    @asynccontextmanager
    async def exclusive(self, offset: int, length: int) -> AsyncIterator[None]:
        """Hold ``[offset, offset+length)``: no other write to it starts or is still running
        inside the block. The holder writes with ``store.write`` directly."""
        end = offset + length
        while _overlaps(self._held, offset, end) or _overlaps(self._writing, offset, end):
            await self._gate_event().wait()
        key = self._next_key = self._next_key + 1
        self._held[key] = (offset, end)
        try:
            yield
        finally:
            del self._held[key]
            self._open_gate()

    async def _wait_until_clear(
        self, offset: int, end: int, ranges: dict[int, tuple[int, int]]
    ) -> None:
        while _overlaps(ranges, offset, end):
            await self._gate_event().wait()

    def _gate_event(self) -> asyncio.Event:
        if self._gate_changed is None:
            self._gate_changed = asyncio.Event()
        return self._gate_changed

    def _open_gate(self) -> None:
        event, self._gate_changed = self._gate_changed, None
        if event is not None:
            event.set()

    # -- VPD pages -----------------------------------------------------------------------
    def vpd_pages(self) -> dict[int, Callable[[], bytes]]:
        return {
            0xB0: self.block_limits_page,
            0xB1: self.characteristics_page,
            0xB2: self.provisioning_page,
        }

    def _vpd(self, code: int, body: bytes) -> bytes:
        return bytes([self.device_type, code]) + len(body).to_bytes(2, "big") + body

    @property
    def allocation_blocks(self) -> int:
        """Logical blocks per file-system allocation unit: the useful unmap granularity."""
        return max(1, ALLOCATION_UNIT // self.block_size)

    def block_limits_page(self) -> bytes:
        body = _BlockLimits.build(
            {
                "wsnz": 0,  # WRITE SAME with 0 blocks: to the end of the medium
                "max_compare_and_write": self.max_compare_and_write_blocks,
                "optimal_granularity": self.allocation_blocks,
                "max_transfer": self.max_transfer_blocks,
                "optimal_transfer": OPTIMAL_TRANSFER_BYTES // self.block_size,
                "max_prefetch": self.max_transfer_blocks,
                "max_unmap_lba_count": self.max_unmap_blocks,
                "max_unmap_descriptors": self.max_unmap_descriptors,
                "optimal_unmap_granularity": self.allocation_blocks,
                "unmap_granularity_alignment": 0x80000000,  # UGAVALID, alignment 0
                "max_write_same": self.max_write_same_blocks,
                "max_atomic_transfer": 0,
                "atomic_alignment": 0,
                "atomic_granularity": 0,
                "max_atomic_with_boundary": 0,
                "max_atomic_boundary": 0,
            }
        )
        return self._vpd(0xB0, body)

    def characteristics_page(self) -> bytes:
        body = _Characteristics.build(
            {"rotation_rate": 0x0001, "product_type": 0, "form_factor": 0, "flags": 0}
        )
        return self._vpd(0xB1, body)

    def provisioning_page(self) -> bytes:
        body = _Provisioning.build(
            {
                "threshold_exponent": 0,
                "flags": LBPU | LBPWS | LBPWS10 | LBPRZ,
                "provisioning_type": THIN_PROVISIONED,
                "threshold_percentage": 0,
            }
        )
        return self._vpd(0xB2, body)

    # -- mode parameters ------------------------------------------------------------------
    def mode_pages(self) -> dict[int, ModePage]:
        """The caching page 08h: WCE on (the page cache is a write-back cache that
        SYNCHRONIZE CACHE and FUA flush) and changeable; turning it off forces every
        write to stable storage."""
        default = bytearray(20)
        default[2] = WCE
        changeable = bytearray(20)
        changeable[2] = WCE

        def follow_wce(page: ModePage) -> None:
            self.write_cache = page.bit(2, WCE)

        return {0x08: ModePage(0x08, bytes(default), bytes(changeable), on_change=follow_wce)}

    def mode_device_specific(self) -> int:
        return (0x80 if self.read_only else 0) | 0x10  # WP, DPOFUA

    def block_descriptor(self) -> bytes:
        """SBC short LBA descriptor: NUMBER OF LOGICAL BLOCKS (FFFFFFFFh when it does not
        fit), a reserved byte, LOGICAL BLOCK LENGTH."""
        blocks = min(self.num_blocks, 0xFFFFFFFF)
        return blocks.to_bytes(4, "big") + b"\0" + self.block_size.to_bytes(3, "big")

    def long_block_descriptor(self) -> bytes:
        return self.num_blocks.to_bytes(8, "big") + bytes(4) + self.block_size.to_bytes(4, "big")

    def leave_loop(self) -> None:
        """On the event loop, before :meth:`close` runs on a worker thread (a daemon's
        stop): what the store has bound to the loop leaves it."""
        leave = getattr(self.store, "leave_loop", None)
        if leave is not None:
            leave()

    def close(self) -> None:
        close = getattr(self.store, "close", None)
        if close is not None:
            close()
        if self.reservations.store is not None:
            self.reservations.store.close()
        records = getattr(self, "copy_records", None)
        if records is not None:
            records.close()


async def _plain_write(offset: int, length: int, op: Callable[[], Awaitable[None]]) -> None:
    await op()


def _overlaps(ranges: dict[int, tuple[int, int]], start: int, end: int) -> bool:
    return any(s < end and start < e for s, e in ranges.values())
