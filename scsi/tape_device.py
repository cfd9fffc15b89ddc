"""The sequential-access logical unit (peripheral device type 1): a tape image and a head.

SSC command handlers live in scsi.ssc; this class holds what they share (the handlers run
the image's blocking calls on the LU's I/O thread, see scsi.stream_device): the image, the
logical position (an object number: records and file marks count alike, as SSC's logical
object identifiers do), the block size (0: variable-length mode), the medium's loaded
and prevent-removal state, the mode block descriptor and the device configuration page.

A drive of a tape library (scsi.changer_device) starts without a cartridge: the media
changer inserts and ejects images, and every medium command of an empty drive answers
NOT READY, MEDIUM NOT PRESENT.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from backing.tape_image import CorruptRecord, TapeImage
from backing.tape_library import Tape
from scsi.kernel_file import KernelFile
from scsi.logical_unit import NO_SERVICES, Identity, Services
from scsi.mode import ModePage
from scsi.sense import CheckCondition, FieldPointer, Reason
from scsi.ssc import DENSITY_CODE, MAX_BLOCK_LENGTH, SSC_TABLE
from scsi.stream_device import SerializedMedium

WP = 0x80
BUFFERED_MODE = 0x10  # writes reach the page cache; durable at file marks and rewind


class TapeDevice(SerializedMedium):
    """A tape drive with its cartridge (the image) in it, unless unloaded; a library
    drive (``image`` None at construction) until the changer inserts one."""

    table = SSC_TABLE
    device_type = 0x01
    removable = True

    def __init__(
        self,
        identity: Identity,
        image: Tape | None,
        *,
        read_only: bool = False,
        services: Services = NO_SERVICES,
    ) -> None:
        super().__init__(identity, services)
        self._image = image
        self.configured_read_only = read_only
        self.read_only = read_only or (image is not None and image.read_only)
        self.position = 0
        self.block_size = 0
        self.density = DENSITY_CODE
        self.loaded = image is not None
        self.removal_prevented = False
        self.barcode: str | None = None  # the cartridge's, in a library drive

    @property
    def image(self) -> Tape:
        """The cartridge in the drive; NOT READY, MEDIUM NOT PRESENT when there is none."""
        if self._image is None:
            raise CheckCondition(Reason.MEDIUM_NOT_PRESENT)
        return self._image

    @property
    def has_cartridge(self) -> bool:
        return self._image is not None

    # -- the changer's side (under medium_lock; eject blocks: on the drive's I/O thread) --
    def insert(self, image: Tape, barcode: str | None = None) -> None:
        """A cartridge the changer put in: loaded, head at the beginning, mode kept."""
        if self._image is not None:
            raise ValueError("the drive already holds a cartridge")
        self._image = image
        self.barcode = barcode
        self.read_only = self.configured_read_only or image.read_only
        self.loaded = True
        self.position = 0
        # Every initiator learns that the medium changed before its next command.
        self.raise_unit_attention(Reason.MEDIUM_MAY_HAVE_CHANGED)

    def eject(self) -> Tape | None:
        """The cartridge taken out by the changer, written out and closed."""
        image, self._image = self._image, None
        self.barcode = None
        self.loaded = False
        self.position = 0
        if image is not None:
            image.close()
        return image

    @classmethod
    def from_file(
        cls,
        identity: Identity,
        path: Path,
        capacity: int,
        *,
        read_only: bool = False,
        services: Services = NO_SERVICES,
    ) -> TapeDevice:
        """A tape LU over ``path``, a blank image of ``capacity`` made if it is absent."""
        return cls(
            identity,
            TapeImage.open_or_create(path, capacity, read_only=read_only),
            read_only=read_only,
            services=services,
        )

    # -- checks the handlers share ----------------------------------------------------
    def require_medium(self) -> None:
        if not self.loaded or self._image is None:
            raise CheckCondition(Reason.MEDIUM_NOT_PRESENT)

    def require_writable(self) -> None:
        self.require_medium()
        if self.read_only:
            raise CheckCondition(Reason.WRITE_PROTECTED)

    def read_record(self, index: int) -> bytes:
        try:
            return self.image.read(index)
        except CorruptRecord as err:
            raise CheckCondition(Reason.UNRECOVERED_READ_ERROR, message=str(err)) from err

    # -- records for a copy manager (blocking: on the LU's I/O thread or a copy thread) --
    def append_record(self, payload: bytes | memoryview) -> None:
        """One record at the head, as a variable-length WRITE(6) writes it."""
        if not self.image.fits(len(payload)):
            raise CheckCondition(Reason.VOLUME_OVERFLOW, information=1, eom=True)
        self.image.append_record(payload)
        self.position += 1

    def append_record_from(
        self,
        source: KernelFile,
        offset: int,
        length: int,
        *,
        step: int = 0,
        between: Callable[[], None] | None = None,
        observe: Callable[[bytes], None] | None = None,
    ) -> None:
        """One record whose payload the kernel copies from ``source`` at ``offset``;
        ``observe`` gets the payload as the image reads it back for its checksum."""
        if not self.image.fits(length):
            raise CheckCondition(Reason.VOLUME_OVERFLOW, information=1, eom=True)
        self.image.append_record_from(
            source.fd, offset, length, step=step, between=between, observe=observe
        )
        self.position += 1

    def next_record(self, expected: int) -> bytes:
        """The record at the head, which must be ``expected`` bytes long: CheckCondition
        with FILEMARK, END OF DATA or ILI otherwise, as a READ(6) would report."""
        self.require_medium()
        pos = self.position
        if pos >= len(self.image):
            raise CheckCondition(Reason.END_OF_DATA_DETECTED, information=expected)
        if self.image.is_filemark(pos):
            self.position = pos + 1
            raise CheckCondition(Reason.FILEMARK_DETECTED, information=expected, filemark=True)
        record = self.read_record(pos)
        self.position = pos + 1
        if len(record) != expected:
            raise CheckCondition(Reason.NO_SENSE, information=expected - len(record), ili=True)
        return record

    def begin_write(self) -> None:
        """Writing here makes this the end of data, as a drive overwrites what follows."""
        self.image.truncate(self.position)

    @property
    def at_early_warning(self) -> bool:
        return self.image.in_early_warning(self.position)

    # -- mode parameters ----------------------------------------------------------------
    def mode_pages(self) -> dict[int, ModePage]:
        """Device configuration page 10h: EOD generation and sync at early warning on;
        nothing changeable, since the image already behaves that way. Data compression
        page 0Fh: the drive does not compress (DCC 0, DCE 0, DDE 0; tapeinfo and backup
        software read it to learn so). And page 0."""
        default = bytearray(16)
        default[10] = 0x10 | 0x08  # EEG, SEW
        return {
            # st asks MODE SENSE for page 0 just to get the header and block descriptor
            # (density, block size, write protect); an empty vendor page 0 answers it.
            0x00: ModePage(0x00, bytes(2), bytes(2)),
            0x0F: ModePage(0x0F, bytes(16), bytes(16)),
            0x10: ModePage(0x10, bytes(default), bytes(16)),
        }

    def mode_device_specific(self) -> int:
        return (WP if self.read_only else 0) | BUFFERED_MODE

    def block_descriptor(self) -> bytes:
        """DENSITY CODE, NUMBER OF BLOCKS (0: the rest of the medium), BLOCK LENGTH (0:
        variable)."""
        return bytes([self.density, 0, 0, 0, 0]) + self.block_size.to_bytes(3, "big")

    def select_block_descriptor(self, raw: bytes) -> None:
        """MODE SELECT's descriptor switches fixed/variable mode through BLOCK LENGTH."""
        if len(raw) != 8:
            raise CheckCondition(
                Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(3, in_cdb=False)
            )
        if raw[0] not in (0, self.density):
            raise CheckCondition(
                Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(4, in_cdb=False)
            )
        length = int.from_bytes(raw[5:8], "big")
        if length > MAX_BLOCK_LENGTH:
            raise CheckCondition(
                Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(9, in_cdb=False)
            )
        self.block_size = length

    def sync_medium(self) -> None:
        if self._image is not None:
            self._image.flush()

    def close_medium(self) -> None:
        if self._image is not None:
            self._image.close()
