"""Backups of a pair's target volume that equal the source at the split instant.

When the source of a copy is the *target* volume of a volume pair, the reader factory
here hands the copy a :class:`SplitImageReader`, which sees the pair only through the
pair service's :class:`~backing.pairs.SplitImage` (never the pair's insides). What it may
read depends on the pair:

- SPLIT: the target holds the split image; it is read as it is.
- SPLIT-PENDING: part of the split image is still on the source (the chunks of the
  split-instant set). The backup policy says what to do, per copy:

  1. REFLECT_FIRST: each range is reflected to the target (``SplitImage.reflect``)
     just before it is read, ahead of the background copy, then read from the target.
  2. WAIT: the copy waits until the pair is SPLIT, then reads the target.
  3. MERGE: pending chunks are read from wherever their split-instant content is (the
     source, under the engine's copy-before-write protection) and merged into the
     stream, without writing the target first (``PairVolume.read_into`` does this for a
     SPLIT-PENDING target).
- DUPLEX, DUPLEX-PENDING, RESYNC, SUSPENDED: there is no split image; the copy is
  refused (COPY ABORTED, 80h/02h) unless an earlier SPLIT PAIR segment of the same copy
  list split the pair, or the pair's policy is 4. SPLIT_AND_BACKUP: a mirroring pair
  (not a SUSPENDED one) is split by the copy itself before its IMMED answer, then read
  reflect-first. A pair already split keeps its split instant.

The policy of a copy: its SPLIT PAIR segment's, else the pair's own (PAIR OUT SET BACKUP
POLICY, ``targetctl pair policy``; kept in the pair file), else the configured one.

The pair must stay split while the copy reads: if it leaves SPLIT/SPLIT-PENDING (resync,
delete, a copy error), the image the backup started from is gone and the copy ends with
COPY ABORTED, 80h/10h, never with a mix of two images. The extent map a reader reports
counts a pending chunk as data even where the target still has a hole, so a sparse-aware
block destination does not punch what the source still has to deliver.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from backing.pairs.service import PairService, SplitImage
from backing.pairs.states import BackupPolicy, ErrorCode, PairError
from backing.pairs.volume import PairVolume
from backing.sparse_file import Extent
from scsi.block_device import BlockDevice
from scsi.command import Nexus
from scsi.kernel_file import KernelFile
from scsi.pair_commands import NexusAccess
from scsi.sense import Reason
from xcopy.params import SPLIT_PAIR, CopyList
from xcopy.readers import DirectReader, ReaderFactory, SourceReader, SourceUnavailable

# Values of the SPLIT PAIR segment's policy byte (0: the pair's own policy), of PAIR OUT
# SET BACKUP POLICY and of the PAIR IN status data: one enum, kept with the pair.
Policy = BackupPolicy


class Named(Protocol):
    """What a policy lookup is told of a pair (its :class:`backing.pairs.PairStatus`)."""

    @property
    def name(self) -> str: ...


PolicyLookup = Callable[[Named], Policy]


def default_policy(pair: Named) -> Policy:
    return Policy.REFLECT_FIRST


def volume_of(lu: BlockDevice) -> tuple[PairService, str] | None:
    """The pair service (the one entry point of pair operations, found through the LU's
    pair control) and the volume id of ``lu``; None if the LU is no pair volume."""
    store = lu.store
    control = lu.pair_control
    if not isinstance(store, PairVolume) or control is None:
        return None
    return control.service, store.volume_id


def in_pair(lu: BlockDevice) -> bool:
    found = volume_of(lu)
    return found is not None and found[0].status_of(found[1]) is not None


class SplitImageReader:
    """Reads a pair's target volume as it was at the split instant (see the module doc),
    through the pair service's :class:`SplitImage` and the LU's own store."""

    def __init__(self, lu: BlockDevice, image: SplitImage) -> None:
        self.lu = lu
        self.volume = lu.store  # what READ reads: merged while chunks are still pending
        self.image = image
        self.policy = image.policy

    def check(self) -> None:
        image = self.image
        if not image.intact():
            raise SourceUnavailable(
                Reason.COPY_SPLIT_IMAGE_LOST,
                f"pair {image.name} left the split state ({image.state}):"
                " the split-instant image is gone",
            )

    async def prepare(self, offset: int, length: int) -> None:
        self.check()
        if self.policy is Policy.WAIT and not self.image.reflected:
            await self.image.wait_reflected()
            self.check()

    async def read_into(self, offset: int, buf: memoryview) -> None:
        self.check()
        if self.policy is Policy.REFLECT_FIRST and not self.image.reflected:
            await self.image.reflect(offset, len(buf))
        await self.volume.read_into(offset, buf)  # merged while chunks are still pending
        self.check()  # a read that overlapped a resync may mix two images

    def kernel_source(self) -> KernelFile | None:
        """Once the pair is SPLIT no chunk is pending: the LU reads as a plain file, which
        the kernel may copy from (the LU says which). The engine calls :meth:`check` after
        every kernel copy, as after every read, so a resync that overlapped one aborts
        the copy."""
        if not self.image.reflected:
            return None
        return self.lu.kernel_readable()

    def extents(self, offset: int, length: int) -> list[Extent]:
        return self.image.extents(offset, length)

    async def close(self) -> None:
        return None


def split_policy(copy_list: CopyList) -> Policy | None:
    """The policy a SPLIT PAIR segment of the list asks for, if any."""
    for seg in copy_list.segments:
        if seg.type_code == SPLIT_PAIR and seg.policy:
            return Policy(seg.policy)
    return None


async def split_for_copy(lu: BlockDevice, nexus: Nexus) -> None:
    """Split the pair of ``lu``'s volume for a copy sent by ``nexus`` (its SPLIT PAIR
    segment), through the pair service (the one entry point of pair operations) with that
    nexus's access: a split writes the pair's target volume (the split-instant set is
    reflected onto it), so a reservation another nexus holds on either volume refuses it
    (PairError RESERVATION_CONFLICT) and nothing changes. A pair already split keeps its
    split instant."""
    store = lu.store
    control = lu.pair_control
    if not isinstance(store, PairVolume) or control is None or lu.lun_map is None:
        raise PairError(ErrorCode.UNKNOWN_VOLUME, f"{lu.identity.device_id} is in no pair")
    access = NexusAccess(nexus, control, lu.lun_map)
    await control.service.split(volume=store.volume_id, access=access, keep_split=True)


def pair_aware_readers(policy_for: PolicyLookup = default_policy) -> ReaderFactory:
    """The reader factory the daemon uses: split-image readers for pair target volumes,
    direct readers for everything else."""

    async def factory(lu: BlockDevice, copy_list: CopyList, nexus: Nexus) -> SourceReader:
        found = volume_of(lu)
        if found is None:
            return DirectReader(lu)
        service, volume_id = found
        status = service.status_of(volume_id)
        if status is None or status.target != volume_id:  # a pair's source reads as it is
            return DirectReader(lu)
        policy = split_policy(copy_list)
        if policy is None:
            policy = status.backup_policy if status.backup_policy_set else policy_for(status)
        control = lu.pair_control
        if control is None or lu.lun_map is None:
            raise PairError(ErrorCode.UNKNOWN_VOLUME, f"{lu.identity.device_id} is in no pair")
        # SPLIT_AND_BACKUP splits a mirroring pair now (before IMMED answers), as this
        # nexus: the split writes the target, so another nexus's reservation refuses it.
        access = NexusAccess(nexus, control, lu.lun_map)
        try:
            image = await service.split_image(volume_id, policy, access=access)
        except PairError as err:
            if err.code is not ErrorCode.WRONG_STATE:
                raise
            raise SourceUnavailable(Reason.COPY_SOURCE_PAIR_NOT_SPLIT, str(err)) from err
        return SplitImageReader(lu, image)

    return factory
