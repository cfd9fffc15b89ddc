"""Where an RBD image is and how to reach it: the LUN's spec, and the rados clients that
images share (one per conf, client, keyring and options), each with its budget of
requests in flight.

The budget keeps every request under the objecter's own throttles: librbd dispatches in
the calling thread (the event loop, ``rbd_non_blocking_aio = false``), where a full
throttle would block the loop.
"""

from __future__ import annotations

import asyncio
import threading
from ctypes import byref, c_void_p
from dataclasses import dataclass

from backing import rbd_previous
from backing.malloc_threshold import LIBRBD_THRESHOLD, fix_mmap_threshold
from backing.rbd_lib import check, client_address, lib, mon_command

CACHE_MODES = ("none", "writearound", "writeback")
# Requests in flight per rados client, below the objecter's own throttles
# (objecter_inflight_ops 1024, objecter_inflight_op_bytes 100 MiB) with room for a request
# that spans several objects: over those, librbd would block the event loop.
MAX_IN_FLIGHT_OPS = 256
MAX_IN_FLIGHT_BYTES = 64 << 20
WRITEAROUND_INFLIGHT_OPS = 65536


@dataclass(frozen=True, slots=True)
class RbdSpec:
    """Where an image is and how to reach it (the ``kind = "rbd"`` LUN keys)."""

    pool: str
    image: str
    namespace: str = ""
    ceph_conf: str = "/etc/ceph/ceph.conf"
    client: str = "client.admin"  # a bare "admin" means client.admin
    keyring: str = ""  # empty: what ceph.conf says
    create_size: int | None = None  # create the image with this size if it is absent
    cache: str = "none"
    osd_op_timeout: float = 30.0  # seconds before an OSD operation fails (0: never)
    connect_timeout: float = 30.0  # seconds to reach the monitors at start
    snapshot: str = ""  # open the image as it is in this snapshot (read-only)
    # A rados client of its own, not shared with other images: a gateway's image can be
    # fenced (its client blocklisted) and reopened without touching any other image.
    private_client: bool = False

    @property
    def name(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.pool}/{ns}{self.image}"

    @property
    def client_name(self) -> str:
        return self.client if "." in self.client else f"client.{self.client}"


class Cluster:
    """One rados client and its budget of requests in flight (see ``admit``)."""

    def __init__(self, key: tuple[object, ...], spec: RbdSpec) -> None:
        self.key = key
        self.refs = 0
        self.in_flight_ops = 0
        self.in_flight_bytes = 0
        self._waiters: list[asyncio.Future[None]] = []
        handle = c_void_p()
        check(
            lib().rados_create2(byref(handle), b"ceph", spec.client_name.encode(), 0),
            "rados_create2",
        )
        self.handle = handle
        try:
            check(
                lib().rados_conf_read_file(handle, spec.ceph_conf.encode()),
                f"reading {spec.ceph_conf}",
            )
            options = {
                "client_mount_timeout": f"{spec.connect_timeout:g}",
                "rados_mon_op_timeout": f"{spec.connect_timeout:g}",
                "rados_osd_op_timeout": f"{spec.osd_op_timeout:g}",
                "rbd_cache": "false" if spec.cache == "none" else "true",
                # Pacific's default policy is writearound: only what was asked, from the
                # first write on (the initiator sees a volatile cache, WCE = 1).
                "rbd_cache_policy": "writethrough" if spec.cache == "none" else spec.cache,
                "rbd_cache_writethrough_until_flush": "false",
                # A discard must zero exactly what it covers (thin provisioning reports
                # LBPRZ): librbd would otherwise skip the parts of objects it cannot free.
                "rbd_skip_partial_discard": "false",
                # Requests are dispatched in the calling thread (the event loop), about 8 us
                # each, instead of being handed to librbd's queue thread: the hand-off
                # halved 4 KiB IOPS here. The objecter's throttles could then block the
                # caller; ``admit`` keeps every request under them.
                "rbd_non_blocking_aio": "false",
                # librbd copies a write's data (a 1 MiB memcpy on the event loop, 12% of its
                # time in 1 MiB writes). Without the copy (false), 1 MiB writes went 1.22x
                # faster, but librbd then completes a write only once the messenger has let
                # go of the caller's buffer: a write to a dead OSD stayed queued with it and
                # hung far past osd_op_timeout instead of failing. Set here, so a ceph.conf
                # cannot turn it off (docs/rbd.md, "Performance").
                "rbd_disable_zero_copy_writes": "true",
                # librbd's "simple" scheduler holds a write back while another write to the
                # same object is in flight, to merge adjacent ones: the store already merges
                # the adjacent requests of a loop turn, and random 4 KiB writes at QD32 cost
                # 0.86x the CPU at 1.13x the IOPS without it (docs/rbd.md, "Performance").
                "rbd_io_scheduler": "none",
                "log_to_stderr": "false",
                "err_to_stderr": "false",
            }
            if spec.cache == "writearound":
                # Writes complete once sent, so up to rbd_cache_max_dirty (24 MiB) of them
                # may be in flight beyond ``admit``'s budget: even in 512-byte writes they
                # must not reach the objecter's op throttle, which would block the loop.
                options["objecter_inflight_ops"] = str(WRITEAROUND_INFLIGHT_OPS)
            if spec.keyring:
                options["keyring"] = spec.keyring
            for name, value in options.items():
                check(lib().rados_conf_set(handle, name.encode(), value.encode()), name)
            check(lib().rados_connect(handle), "connecting to the monitors")
            self.address = client_address(handle)
            rbd_previous.record(self.address)  # before it opens an image (a kill -9 later)
            # librbd allocates a buffer per request: from the heap, not mapped apart each time.
            fix_mmap_threshold(LIBRBD_THRESHOLD)
        except BaseException:
            lib().rados_shutdown(handle)
            raise

    def mon_command(self, command: dict[str, object]) -> str:
        """One monitor command (blocking); its status text."""
        return mon_command(self.handle, command)

    async def admit(self, data_bytes: int) -> None:
        """Wait until one more request of ``data_bytes`` fits the budget."""
        while self.in_flight_ops >= MAX_IN_FLIGHT_OPS or (
            self.in_flight_bytes and self.in_flight_bytes + data_bytes > MAX_IN_FLIGHT_BYTES
        ):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.in_flight_ops += 1
        self.in_flight_bytes += data_bytes

    def release(self, data_bytes: int) -> None:
        self.in_flight_ops -= 1
        self.in_flight_bytes -= data_bytes
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


_clusters: dict[tuple[object, ...], Cluster] = {}
_clusters_lock = threading.Lock()


def acquire_cluster(spec: RbdSpec) -> Cluster:
    key: tuple[object, ...] = (
        spec.ceph_conf,
        spec.client_name,
        spec.keyring,
        spec.cache,
        spec.osd_op_timeout,
        spec.connect_timeout,
    )
    if spec.private_client:
        key = (*key, object())  # never found again: a client of its own
    with _clusters_lock:
        cluster = _clusters.get(key)
        if cluster is None:
            cluster = _clusters[key] = Cluster(key, spec)
        cluster.refs += 1
        return cluster


def release_cluster(cluster: Cluster) -> None:
    with _clusters_lock:
        cluster.refs -= 1
        if cluster.refs:
            return
        del _clusters[cluster.key]
    lib().rados_shutdown(cluster.handle)
