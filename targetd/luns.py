"""Builds the SCSI targets and their logical units from the configuration."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import xcopy
from backing.block_store import BlockStore
from backing.pairs import PairService, PairVolume
from backing.sparse_file import SparseFile
from scsi.alua import STATE_NAMES, PortGroup, PortGroups
from scsi.block_device import BlockDevice
from scsi.logical_unit import Identity, LogicalUnit, Services
from scsi.pr_cluster import ClusterPrStore, gateway_key
from scsi.pr_file import PrFile
from scsi.sense import Reason, build_sense
from scsi.target import ScsiTarget
from targetd import logs
from targetd.config import Config, ConfigError, LunConfig, TapeStoreConfig, TargetConfig
from targetd.pairs import TargetPairs, volume_id
from targetd.stopping import NOTHING_AT_RISK, Stopping, at_risk
from xcopy import Policy, PolicyLookup
from xcopy.shared import SharedCopies

if TYPE_CHECKING:
    from backing.rados_object import RadosObject
    from backing.rbd_image import RbdImage
    from backing.tape_library import TapeDirectory
    from backing.tape_s3 import S3Tape
    from scsi.changer_device import TapeLibrary
    from scsi.tape_device import TapeDevice
    from targetd.config import RbdConfig
    from targetd.gateway import LockGate

log = logging.getLogger("targetd")


def copy_services(
    config: Config, target: str, current: Callable[[], Config] | None = None
) -> Services:
    """The copy services (EXTENDED COPY) of one target, given to each of its LUs as it is
    built; copy results are kept under the state dir and survive a restart. A backup's
    configured policy is looked up in ``current()`` (the running configuration, which a
    reload changes) when given, else in ``config``."""
    copies = config.state_dir / "xcopy" / target.replace(":", "_")
    if current is None:
        return xcopy.services(backup_policy_lookup(config), state_dir=copies)
    return xcopy.services(lambda pair: backup_policy_lookup(current())(pair), state_dir=copies)


# How long a PERSISTENT RESERVE command waits on the cluster before it fails (docs/rbd.md).
RESERVATIONS_TIMEOUT = 10.0


def reservations_object(image: str) -> str:
    """The RADOS object, beside the image (same pool and namespace), that holds an RBD
    LUN's persistent reservations."""
    return f"targetd.pr.{image}"


def copies_object(image: str) -> str:
    """The RADOS object beside the image with the records of the copies that name it, read
    by every gateway that exports it (xcopy/shared.py)."""
    return f"targetd.copies.{image}"


def pair_object(image: str) -> str:
    """The RADOS object beside a pair's target image with the pair's record (state and
    bitmaps), run by whichever gateway holds the source's lock (backing/pairs/shared.py)."""
    return f"targetd.pair.{image}"


def _rados_object(r: RbdConfig, oid: str) -> RadosObject:
    """A small RADOS object beside an RBD LU's image, reached as that LU's client."""
    from backing.rados_object import RadosObject

    return RadosObject(
        ceph_conf=r.ceph_conf,
        client=r.client if "." in r.client else f"client.{r.client}",
        keyring=r.keyring,
        pool=r.pool,
        namespace=r.namespace,
        oid=oid,
        timeout=RESERVATIONS_TIMEOUT,
    )


def reservations_path(config: Config, target: str, lun: int) -> Path:
    """Where a LUN's persistent reservations are kept while APTPL is on."""
    return config.state_dir / "reservations" / f"{target.replace(':', '_')}-lun{lun}.json"


def alua_groups(config: Config) -> list[PortGroup]:
    """The ALUA target port groups of the configuration: every group a portal names or
    ``[[port_group]]`` declares, with its state and the target ports (TPGTs) in it."""
    declared = {g.id: g for g in config.port_groups}
    ids = sorted(set(declared) | {p.port_group for p in config.portals})
    groups = []
    for number in ids:
        ports = sorted({p.tpgt for p in config.portals if p.port_group == number})
        spec = declared.get(number)
        state = STATE_NAMES[spec.state] if spec else STATE_NAMES["active/optimized"]
        groups.append(PortGroup(number, state, tuple(ports), bool(spec and spec.preferred)))
    return groups


class Builder:
    """The one build path for LUs and targets, at start and at SIGHUP reload.

    A LU receives its services when it is built: its target's copy services (one copy
    manager per target), and for a block LU its target's :class:`TargetPairs` (the vendor
    pair commands), its store registered with the :class:`PairService`; so a LUN added by
    a reload is served and can be paired like any other.
    """

    def __init__(self, config: Config, pairs: PairService | None = None) -> None:
        self.config = config
        self.pairs = pairs
        self.controls: dict[str, TargetPairs] = {}  # per target name
        self.copies: dict[str, Services] = {}  # per target name
        # One ALUA table for every LU: a reload's new states reach them all at once.
        self.port_groups = PortGroups(alua_groups(config))
        # Gateways: each LU's side of its image's lock (targetd/gateway.py).
        self.gates: list[LockGate] = []
        # Each RBD LU's fencing of the other gateway's watches of its shared objects.
        self.peer_fences: list[tuple[LogicalUnit, Callable[[], Awaitable[None]]]] = []
        # Tape libraries, per (target name, changer LUN): the changer and its drives share one.
        self.libraries: dict[tuple[str, int], TapeLibrary] = {}

    def _services(self, target: str) -> Services:
        services = self.copies.get(target)
        if services is None:
            services = self.copies[target] = copy_services(self.config, target, lambda: self.config)
        return services

    def _control(self, target: str) -> TargetPairs | None:
        if self.pairs is None:
            return None
        control = self.controls.get(target)
        if control is None:
            control = self.controls[target] = TargetPairs(self.pairs, target)
        return control

    def lun(self, target: TargetConfig, lun: LunConfig) -> LogicalUnit:
        config = self.config
        path = lun.path if lun.path.is_absolute() else config.state_dir / lun.path
        path.parent.mkdir(parents=True, exist_ok=True)
        # The designator follows the LU's name, not its file: moving the state dir keeps it.
        device_id = f"{target.name}/lun{lun.lun}"
        local = config.gateway is not None and lun.kind != "rbd"
        if local:
            # A gateway's own LU (a tape, a file sink): the other gateway may serve another
            # device at the same LUN, and a host must not take the two for one LU on two
            # paths (dm-multipath groups paths by the NAA designator).
            device_id += f"@port-group-{config.portals[0].port_group}"
        identity = Identity(device_id=device_id, product=lun.product or "VIRTUAL-DISK")
        lu = self._build(target, lun, identity, path, self._services(target.name))
        # A gateway's own LU reports the static groups: this gateway's, active/optimized.
        lu.port_groups = self.port_groups
        if config.gateway is not None and not local:
            gate = _gate(lu, config, f"{target.name}/lun{lun.lun}")
            self.gates.append(gate)
            self._share_pairs(lu, lun, gate)
        if lun.kind == "rbd":
            # An RBD LUN's reservations live in the cluster, shared by every gateway.
            shared = self._cluster_reservations(target, lun, lu)
            lu.reservations.store = shared
            if config.gateway is not None:
                # So are the records of the copies that name it, when there are gateways to
                # share them: any gateway reports them. They are keyed by initiator name, not
                # I_T nexus, so a lone daemon keeps copy results per I_T nexus (SPC-4) in its
                # own journal instead, and opens no second RADOS client for them.
                copies = lu.copy_records = self._cluster_copies(target, lun, lu)
                peer = gateway_key(tuple(p.tpgt for p in config.gateway.peers))

                async def fence_peer() -> None:  # both of its watches (scsi/watch_fence.py)
                    await asyncio.gather(shared.fence_peer(peer), copies.fence_peer(peer))

                self.peer_fences.append((lu, fence_peer))
                gate.on_peer_fenced = self.peer_fenced
                # A change the other gateway did not confirm is answered once it is fenced.
                shared.on_silent = gate.fence_silent_holder
                gate.after_acquire = shared.reread
        else:
            # APTPL on LUNs whose data is local: the reservations' file sits in the state
            # dir beside them.
            store = PrFile(reservations_path(config, target.name, lun.lun))
            lu.reservations.store = store
            if store.load_into(lu.reservations):
                log.info(
                    "persistent reservations restored",
                    extra=logs.fields(target=target.name, lun=lun.lun),
                )
        return lu

    async def peer_fenced(self) -> None:
        """A gateway broke the other's lock of one LU's image: the cluster blocklisted the
        other's image client, so it is dead (or stalled, and rejoins as new clients). Its
        watches of every LU's shared objects are fenced, not that LU's only: a copy's records
        live in the object of each LU it names, and a question through an LU whose lock
        nobody took over would otherwise wait for the dead watch until the OSDs expire it.
        Its image clients of every LU are fenced alike (LockGate.fence_peer): their
        watches of the image headers held this gateway's close for 10 s an image. Each
        fencing still probes first and leaves a watch that answers alone."""
        await asyncio.gather(*(fence() for _, fence in self.peer_fences),
                             *(gate.fence_peer() for gate in self.gates))  # fmt: skip

    def _share_pairs(self, lu: LogicalUnit, lun: LunConfig, gate: LockGate) -> None:
        """Two gateways: a pair of this LU's image keeps its record in the cluster and
        runs on the gateway holding its source's lock (docs/rbd.md)."""
        volume = getattr(lu, "store", None)
        if self.pairs is None or not isinstance(volume, PairVolume) or lun.rbd is None:
            return

        r = lun.rbd
        pairs, volume_id = self.pairs, volume.volume_id

        def record_object() -> RadosObject:
            return _rados_object(r, pair_object(r.image))

        volume.record_object = record_object
        volume.take_lock = gate.take
        volume.lost = gate.is_fencing_error
        gate.on_acquired = lambda: pairs.run_here(volume_id)
        gate.on_release = lambda: pairs.hand_over(volume_id)
        gate.keeps = lambda why: pairs.holds(volume_id, why)
        gate.before_acquire = lambda: pairs.follow_target(volume_id)

    def _cluster_reservations(
        self, target: TargetConfig, lun: LunConfig, lu: LogicalUnit
    ) -> ClusterPrStore:

        r = lun.rbd
        assert r is not None
        where = f"target {target.name} lun {lun.lun}"

        def connect() -> RadosObject:
            return _rados_object(r, reservations_object(r.image))

        try:
            obj = connect()
        except OSError as exc:
            close = getattr(lu, "close", None)
            if close is not None:
                close()
            raise ConfigError(where, f"persistent reservations: {exc}") from exc
        # This daemon's relative target ports name it in the record (docs/rbd.md).
        store = ClusterPrStore(obj, frozenset(p.tpgt for p in self.config.portals), connect)
        try:
            restored = store.open(lu)
        except (OSError, ValueError) as exc:
            obj.close()
            close = getattr(lu, "close", None)
            if close is not None:
                close()
            raise ConfigError(where, f"persistent reservations in {obj.name}: {exc}") from exc
        if restored:
            log.info(
                "persistent reservations restored",
                extra=logs.fields(target=target.name, lun=lun.lun, object=obj.name),
            )
        return store

    def _cluster_copies(
        self, target: TargetConfig, lun: LunConfig, lu: LogicalUnit
    ) -> SharedCopies:

        r = lun.rbd
        assert r is not None

        def connect() -> RadosObject:
            return _rados_object(r, copies_object(r.image))

        try:
            # This daemon's relative target ports name it in the object, as in the
            # reservations' record.
            me = gateway_key(frozenset(p.tpgt for p in self.config.portals))
            lost = build_sense(Reason.COPY_TARGET_DEVICE_NOT_REACHABLE)
            return SharedCopies(connect(), lost, me, connect)
        except OSError as exc:
            close = getattr(lu, "close", None)
            if close is not None:
                close()
            where = f"target {target.name} lun {lun.lun}"
            raise ConfigError(where, f"copy records: {exc}") from exc

    def _build(
        self,
        target: TargetConfig,
        lun: LunConfig,
        identity: Identity,
        path: Path,
        services: Services,
    ) -> LogicalUnit:
        build = _BUILDERS.get(lun.kind)
        if build is None:
            raise ConfigError(
                f"target {target.name} lun {lun.lun}", f"unsupported type {lun.kind!r}"
            )
        if lun.kind in _PRODUCT:
            identity = replace(identity, product=lun.product or _PRODUCT[lun.kind])
        return build(self, target, lun, identity, path, services)

    def _changer(
        self, target: TargetConfig, lun: LunConfig, identity: Identity, _path: Path,
        services: Services,
    ) -> LogicalUnit:  # fmt: skip
        from scsi.changer_device import MediaChanger

        return MediaChanger(identity, self._library(target, lun.lun), services=services)

    def _tape(
        self, target: TargetConfig, lun: LunConfig, identity: Identity, path: Path,
        services: Services,
    ) -> LogicalUnit:  # fmt: skip
        """A library's drive, a cartridge in a bucket, or an image file."""
        # Tape modules load with the first tape LUN: most configurations have none, and
        # every daemon start would pay for their import (docs/performance.md).
        from backing.tape_image import TapeImageError
        from backing.tape_library import LibraryError
        from scsi.tape_device import TapeDevice

        if lun.changer is not None:
            return self._drive(target, lun, identity, services)
        if lun.store is not None:
            try:
                tape = _s3_tape(path, lun.size, lun.store, lun.read_only)
            except (OSError, LibraryError, TapeImageError, ValueError) as err:
                raise ConfigError(f"target {target.name} lun {lun.lun}", str(err)) from err
            return TapeDevice(identity, tape, read_only=lun.read_only, services=services)
        # The image keeps the capacity it was made with; ``size`` only sizes a new one.
        return TapeDevice.from_file(
            identity, path, lun.size, read_only=lun.read_only, services=services
        )

    def _filesink(
        self, target: TargetConfig, lun: LunConfig, identity: Identity, path: Path,
        services: Services,
    ) -> LogicalUnit:  # fmt: skip
        # A directory of plain files, one per backup: EXTENDED COPY's file destination.
        from scsi.file_sink import FileSinkDevice

        return FileSinkDevice.from_directory(
            identity, path, lun.size, read_only=lun.read_only, services=services
        )

    def _library(self, target: TargetConfig, changer: int) -> TapeLibrary:
        """The library of ``target``'s changer LUN, made when its first LU is built."""
        from backing.tape_library import LibraryError
        from scsi.changer_device import TapeLibrary

        library = self.libraries.get((target.name, changer))
        if library is not None:
            return library
        config = next(lun for lun in target.luns if lun.lun == changer)
        assert config.library is not None
        drives = [lun.lun for lun in target.luns if lun.changer == changer]
        path = config.path if config.path.is_absolute() else self.config.state_dir / config.path
        try:
            library = TapeLibrary(
                _tape_store(path, config.size, config.store),
                slots=config.library.slots,
                mail_slots=config.library.mail_slots,
                drives=len(drives),
                tapes=config.library.tapes,
            )
        except (OSError, LibraryError, ValueError) as err:
            raise ConfigError(f"target {target.name} lun {changer}", str(err)) from err
        self.libraries[(target.name, changer)] = library
        return library

    def _drive(
        self, target: TargetConfig, lun: LunConfig, identity: Identity, services: Services
    ) -> TapeDevice:
        """A library drive: empty until the changer (or the inventory) puts a cartridge in."""
        from backing.tape_library import LibraryError
        from scsi.tape_device import TapeDevice

        assert lun.changer is not None
        library = self._library(target, lun.changer)
        drives = [n.lun for n in target.luns if n.changer == lun.changer]
        index = drives.index(lun.lun)
        if index >= len(library.drives) or library.drives[index] is not None:
            raise ConfigError(
                f"target {target.name} lun {lun.lun}", "a library's drives change only at a restart"
            )
        drive = TapeDevice(identity, None, read_only=lun.read_only, services=services)
        try:
            library.attach_drive(index, drive)
        except (OSError, LibraryError) as err:
            raise ConfigError(f"target {target.name} lun {lun.lun}", str(err)) from err
        return drive

    def _block(
        self,
        target: TargetConfig,
        lun: LunConfig,
        identity: Identity,
        path: Path,
        services: Services,
    ) -> BlockDevice:
        store = _block_store(target, lun, path, private_client=self.config.gateway is not None)
        control = self._control(target.name)
        if control is None or self.pairs is None:
            plain = BlockDevice(
                identity,
                store,
                block_size=lun.block_size,
                read_only=lun.read_only,
                services=services,
            )
            _follow_image(plain, f"target {target.name}: lun {lun.lun}")
            return plain
        # Every block LUN can join a pair: its store goes through a PairVolume.
        volume = PairVolume(volume_id(target.name, lun.lun), store, read_only=lun.read_only)
        lu = BlockDevice(
            identity,
            volume,
            block_size=lun.block_size,
            read_only=lun.read_only,
            services=services,
            pair_control=control,
        )

        def follow_pair() -> None:  # a mirrored target volume is write-protected
            lu.read_only = lun.read_only or volume.write_protected

        volume.on_change = follow_pair
        self.pairs.register_volume(volume)
        control.luns.add(lun.lun)
        _follow_image(lu, f"target {target.name}: lun {lun.lun}")
        return lu

    def target(self, target: TargetConfig) -> ScsiTarget:
        return ScsiTarget({lun.lun: self.lun(target, lun) for lun in target.luns})

    def targets(self) -> dict[str, ScsiTarget]:
        return {t.name: self.target(t) for t in self.config.targets}

    def forget_lun(self, target: str, lun: int, lu: LogicalUnit) -> None:
        """A LUN removed by a reload: it leaves its target's pair view and the service.
        Raises PairError (VOLUME_IN_PAIR) while it is in a pair; nothing changes then."""
        # Not loaded: no changer was ever built here (the tape modules load lazily).
        changers = sys.modules.get("scsi.changer_device")
        if changers is not None and isinstance(lu, changers.MediaChanger):
            self.libraries.pop((target, lun), None)
        self.gates = [gate for gate in self.gates if gate.lu is not lu]
        self.peer_fences = [(other, fence) for other, fence in self.peer_fences if other is not lu]
        control = self.controls.get(target)
        if control is not None and self.pairs is not None and isinstance(lu, BlockDevice):
            self.pairs.unregister_volume(volume_id(target, lun))
            control.luns.discard(lun)


def _gate(lu: LogicalUnit, config: Config, name: str) -> LockGate:
    """One of two gateways: the LU's ALUA states follow its image's lock (docs/rbd.md)."""
    from backing.rbd_image import RbdImage
    from targetd.gateway import Layout, LockGate

    store = getattr(lu, "store", None)
    image = getattr(store, "base", store)
    assert isinstance(image, RbdImage) and config.gateway is not None
    try:
        return LockGate(
            lu,
            image,
            Layout.of(config),
            hold_ms=config.gateway.hold_ms,
            takeover_ms=config.gateway.takeover_ms,
            unit_attention=config.gateway.unit_attention,
            name=name,
        )
    except OSError as exc:
        image.close()
        raise ConfigError(name, f"cannot watch the gateway object: {exc}") from exc


# Each kind of LU, built by its Builder method; the product INQUIRY reports unless the
# configuration names one (a block LU's comes from the block device).
_BUILDERS: dict[str, Callable[..., LogicalUnit]] = {
    "block": Builder._block,
    "rbd": Builder._block,
    "changer": Builder._changer,
    "tape": Builder._tape,
    "filesink": Builder._filesink,
}
_PRODUCT = {"changer": "VIRTUAL-CHANGER", "tape": "VIRTUAL-TAPE", "filesink": "FILE-SINK"}


def _block_store(
    target: TargetConfig, lun: LunConfig, path: Path, *, private_client: bool = False
) -> BlockStore:
    """A block LUN's store: a sparse file, or an RBD image (docs/rbd.md)."""
    if lun.rbd is None:
        return SparseFile(path, lun.size, read_only=lun.read_only)
    # librbd is loaded only when a LUN is on Ceph.
    from backing.rbd_image import RbdImage, RbdSpec
    from backing.rbd_lib import RbdUnavailable

    r = lun.rbd
    spec = RbdSpec(
        pool=r.pool,
        image=r.image,
        namespace=r.namespace,
        ceph_conf=r.ceph_conf,
        client=r.client,
        keyring=r.keyring,
        create_size=lun.size if r.create else None,
        cache=r.cache,
        osd_op_timeout=r.osd_op_timeout,
        connect_timeout=r.connect_timeout,
        private_client=private_client,
    )
    try:
        image = RbdImage(spec, read_only=lun.read_only)
    except (OSError, RbdUnavailable) as exc:
        raise ConfigError(f"target {target.name} lun {lun.lun}", str(exc)) from exc
    if image.size < lun.block_size:
        image.close()
        raise ConfigError(
            f"target {target.name} lun {lun.lun}", f"rbd image {spec.name} is smaller than a block"
        )
    return image


def _follow_image(lu: BlockDevice, where: str) -> None:
    """An RBD LU grows when its image does (``rbd resize``, docs/rbd.md, "Growing an RBD
    LUN"): librbd tells of the header's change, and every nexus is told in turn."""
    image = rbd_image_of(lu)
    if image is None:
        return

    def grown(size: int) -> None:
        size -= size % lu.block_size
        before = lu.num_blocks * lu.block_size
        if size <= before:
            return
        try:
            lu.grow(size)
        except ValueError as err:
            log.warning("lun not grown with its image", extra=logs.fields(
                lun=where, image_size=size, error=str(err)))  # fmt: skip
        else:
            log.info("lun grown with its image", extra=logs.fields(
                lun=where, before=before, after=size))  # fmt: skip

    image.follow_size(grown)


def rbd_image_of(lu: LogicalUnit) -> RbdImage | None:
    """The RBD image a LU serves (through its pair volume or not), if any."""
    rbd = sys.modules.get("backing.rbd_image")  # not loaded: no LUN is on Ceph
    if rbd is None:
        return None
    store = getattr(lu, "store", None)
    image = getattr(store, "base", store)
    return image if isinstance(image, rbd.RbdImage) else None


def paired_volume(lu: LogicalUnit) -> str | None:
    """The name of the pair a LU's volume is in, if any (a primary's pairs: their names,
    comma-separated)."""
    store = getattr(lu, "store", None)
    if isinstance(store, PairVolume) and store.pairs:
        return ", ".join(p.name for p in store.pairs)
    return None


def _tape_store(path: Path, capacity: int, store: TapeStoreConfig | None) -> TapeDirectory:
    """Where a library's cartridges live: image files in ``path``, or objects in a bucket
    (``path`` then keeps the inventory and the spool of the tapes being written)."""
    from backing.s3_client import S3Location
    from backing.tape_library import TapeDirectory
    from backing.tape_s3_store import S3TapeStore

    if store is None:
        return TapeDirectory(path, capacity)
    _need_boto3()
    return S3TapeStore(path, capacity, S3Location.parse(store.url, store.endpoint, store.region))


def _need_boto3() -> None:
    """S3 stores need boto3, an optional dependency: a configuration that names one on a
    host without it is refused with the way to get it, not a traceback."""
    if importlib.util.find_spec("boto3") is None:
        from backing.tape_library import LibraryError

        raise LibraryError("an S3 store needs boto3: pip install 'targetd[s3]'")


def _s3_tape(path: Path, capacity: int, store: TapeStoreConfig, read_only: bool) -> S3Tape:
    """A tape LUN's one tape in a bucket: ``s3://bucket/prefix/NAME`` is the cartridge
    NAME of a store at ``s3://bucket/prefix``, made blank when it does not exist."""
    from backing.s3_client import S3Location
    from backing.tape_s3_store import S3TapeStore

    _need_boto3()
    prefix, _, name = store.url.rstrip("/").rpartition("/")
    location = S3Location.parse(prefix, store.endpoint, store.region)
    tapes = S3TapeStore(path, capacity, location, spool_dir=path)
    if not tapes.exists(name):
        tapes.create(name)
    return tapes.open(name, read_only=read_only)


def build_targets(config: Config, pairs: PairService | None = None) -> dict[str, ScsiTarget]:
    return Builder(config, pairs).targets()


async def stop_gates(targets: dict[str, ScsiTarget], stopping: Stopping | None = None) -> None:
    """Stop every gateway LU's lock work (targetd/gateway.py, LockGate.stop): each returns
    once its librbd calls in flight have ended, so the images may close next. ``stopping``
    names the LUs still stopping and bounds the wait for those with nothing acknowledged
    depending on it (targetd/stopping.py)."""
    stopping = Stopping() if stopping is None else stopping

    async def one(name: str, lu: LogicalUnit, stop: Callable[[], Awaitable[None]]) -> None:
        await stopping.step(name, lu, "lock release", stop())

    stops = []
    for t, target in targets.items():
        for n, lu in target.luns.items():
            stop = getattr(lu.access_gate, "stop", None)
            if stop is not None:
                stops.append(one(f"{t}/lun{n}", lu, stop))
    await asyncio.gather(*stops)


def close_targets(targets: dict[str, ScsiTarget]) -> None:
    for target in targets.values():
        for lu in target.luns.values():
            gate = getattr(lu.access_gate, "close", None)
            if gate is not None:  # stop watching before the image closes
                gate()
            close = getattr(lu, "close", None)
            if close is not None:
                close()


async def flush_targets(targets: dict[str, ScsiTarget], stopping: Stopping | None = None) -> int:
    """fdatasync every LUN's backing store (SIGTERM, before the state is persisted), side
    by side (an RBD LUN's flush may wait for an unreachable cluster). A LUN whose flush
    fails is logged and the others are still flushed; returns how many failed (an RBD LUN
    with cache none does not count: nothing acknowledged depended on it). ``stopping``
    names the LUNs still flushing and bounds the wait for those with nothing acknowledged
    depending on it (targetd/stopping.py)."""
    stopping = Stopping() if stopping is None else stopping

    async def one(name: str, lu: LogicalUnit) -> int:
        flush = getattr(lu, "flush", None) or getattr(getattr(lu, "store", None), "flush", None)
        if flush is None:
            return 0
        try:
            await stopping.step(name, lu, "flush", flush())
        except OSError as err:
            risk = at_risk(lu)
            log.error("flush failed at shutdown", extra=logs.fields(
                lu=lu.identity.device_id, error=str(err),
                **({} if risk is None else {"at_risk": risk})))  # fmt: skip
            # With cache none (a fenced gateway's ESHUTDOWN, say) nothing acknowledged
            # depended on it: not a failure of the stop.
            return 0 if risk == NOTHING_AT_RISK else 1
        return 0

    failed = await asyncio.gather(*(one(f"{t}/lun{n}", lu) for t, target in targets.items()
                                    for n, lu in target.luns.items()))  # fmt: skip
    return sum(failed)


def backup_policy_lookup(config: Config) -> PolicyLookup:
    """The backup policy of a pair (by name) from the ``[pairs]`` table; a policy set on
    the pair itself (PAIR OUT, targetctl) comes before it."""
    default = Policy.parse(config.pairs.backup_policy)
    per_pair = {name: Policy.parse(value) for name, value in config.pairs.backup_policies}
    return lambda pair: per_pair.get(pair.name, default)
