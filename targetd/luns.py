"""Builds the SCSI targets and their logical units from the configuration."""

from __future__ import annotations

from dataclasses import replace

import xcopy
from backing.pairs import PairManager, PairVolume
from backing.sparse_file import SparseFile
from scsi.block_device import BlockDevice
from scsi.file_sink import FileSinkDevice
from scsi.logical_unit import NO_SERVICES, Identity, LogicalUnit, Services
from scsi.tape_device import TapeDevice
from scsi.target import ScsiTarget
from targetd.config import Config, ConfigError, LunConfig, TargetConfig
from targetd.pairs import TargetPairs, volume_id
from xcopy import Policy, PolicyLookup


def copy_services(config: Config, target: str) -> Services:
    """The copy services (EXTENDED COPY) of one target, given to each of its LUs as it is
    built; copy results are kept under the state dir and survive a restart."""
    copies = config.state_dir / "xcopy" / target.replace(":", "_")
    return xcopy.services(backup_policy_lookup(config), state_dir=copies)


def build_lun(
    target: TargetConfig,
    lun: LunConfig,
    config: Config,
    pairs: PairManager | None = None,
    services: Services = NO_SERVICES,
) -> LogicalUnit:
    path = lun.path if lun.path.is_absolute() else config.state_dir / lun.path
    path.parent.mkdir(parents=True, exist_ok=True)
    # The designator follows the LU's name, not its file, so moving the state dir keeps it.
    identity = Identity(
        device_id=f"{target.name}/lun{lun.lun}", product=lun.product or "VIRTUAL-DISK"
    )
    if lun.kind == "block":
        store = SparseFile(path, lun.size, read_only=lun.read_only)
        if pairs is None:
            return BlockDevice(
                identity,
                store,
                block_size=lun.block_size,
                read_only=lun.read_only,
                services=services,
            )
        # Every block LUN can join a pair: its store goes through a PairVolume.
        volume = PairVolume(volume_id(target.name, lun.lun), store, read_only=lun.read_only)
        lu = BlockDevice(
            identity,
            volume,
            block_size=lun.block_size,
            read_only=lun.read_only,
            services=services,
        )

        def follow_pair() -> None:  # a mirrored target volume is write-protected
            lu.read_only = lun.read_only or volume.write_protected

        volume.on_change = follow_pair
        pairs.register_volume(volume)
        return lu
    if lun.kind == "tape":
        # The image keeps the capacity it was made with; ``size`` only sizes a new one.
        return TapeDevice.from_file(
            replace(identity, product=lun.product or "VIRTUAL-TAPE"),
            path,
            lun.size,
            read_only=lun.read_only,
            services=services,
        )
    if lun.kind == "filesink":
        # A directory of plain files, one per backup: EXTENDED COPY's file destination.
        return FileSinkDevice.from_directory(
            replace(identity, product=lun.product or "FILE-SINK"),
            path,
            lun.size,
            read_only=lun.read_only,
            services=services,
        )
    raise ConfigError(f"target {target.name} lun {lun.lun}", f"unsupported type {lun.kind!r}")


def build_targets(config: Config, pairs: PairManager | None = None) -> dict[str, ScsiTarget]:
    targets = {}
    for t in config.targets:
        # EXTENDED COPY among the LUs this target shows: one copy manager per target.
        services = copy_services(config, t.name)
        luns = {lun.lun: build_lun(t, lun, config, pairs, services) for lun in t.luns}
        if pairs is not None:
            block = {n for n, lu in luns.items() if isinstance(lu, BlockDevice)}
            control = TargetPairs(pairs, t.name, block)
            for n in block:
                luns[n].pair_control = control  # type: ignore[attr-defined]
        targets[t.name] = ScsiTarget(luns)
    return targets


def close_targets(targets: dict[str, ScsiTarget]) -> None:
    for target in targets.values():
        for lu in target.luns.values():
            close = getattr(lu, "close", None)
            if close is not None:
                close()


async def flush_targets(targets: dict[str, ScsiTarget]) -> None:
    """fdatasync every LUN's backing store (SIGTERM, before the state is persisted)."""
    for target in targets.values():
        for lu in target.luns.values():
            flush = getattr(lu, "flush", None) or getattr(getattr(lu, "store", None), "flush", None)
            if flush is not None:
                await flush()


def backup_policy_lookup(config: Config) -> PolicyLookup:
    """The backup policy of a pair (by name) from the ``[pairs]`` table; a policy set on
    the pair itself (PAIR OUT, targetctl) comes before it."""
    default = Policy.parse(config.pairs.backup_policy)
    per_pair = {name: Policy.parse(value) for name, value in config.pairs.backup_policies}
    return lambda pair: per_pair.get(pair.name, default)
