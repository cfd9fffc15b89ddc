"""The configuration's shape: the dataclasses every part of the daemon reads, their
defaults, and ``default_config`` (what ``targetd serve`` runs with no file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 3260
DEFAULT_TARGET = "iqn.2026-11.org.targetd:default"
GiB = 1 << 30
# A tape image only grows as it is written, so its capacity costs nothing up front.
DEFAULT_TAPE_CAPACITY = 8 * GiB
MIN_TAPE_CAPACITY = 64 << 10  # backing.tape_image.MIN_CAPACITY (config may not import backing)


# RFC 7143 caps MaxBurstLength at 2**24 - 1; the default keeps it 512-aligned under that.
DEFAULT_MAX_BURST_LENGTH = 16776192
DEFAULT_FIRST_BURST_LENGTH = 262144
DEFAULT_BUFFERS_TOTAL = 1 << 30
DEFAULT_BUFFERS_PER_SESSION = 64 << 20


@dataclass(frozen=True, slots=True)
class ChapSecret:
    user: str
    secret: str

    def __repr__(self) -> str:  # secrets never reach a log line
        return f"ChapSecret(user={self.user!r}, secret=<hidden>)"


@dataclass(frozen=True, slots=True)
class Portal:
    """A listening address, and the address SendTargets advertises for it."""

    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_PORT
    advertise: str | None = None  # "HOST:PORT" initiators should dial; None = the listen address
    tpgt: int = 1
    port_group: int = 1  # the ALUA target port group its target port belongs to

    @property
    def advertised(self) -> str:
        if self.advertise:
            return self.advertise
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


ALUA_STATES = (
    "active/optimized",
    "active/non-optimized",
    "standby",
    "unavailable",
    "transitioning",
)


@dataclass(frozen=True, slots=True)
class PortGroupConfig:
    """An ALUA target port group's declared state (docs/alua.md)."""

    id: int
    state: str = "active/optimized"
    preferred: bool = False


@dataclass(frozen=True, slots=True)
class PeerPortal:
    """A portal of the other gateway that serves the same RBD images (docs/rbd.md)."""

    address: str  # "HOST:PORT", as SendTargets advertises it
    tpgt: int
    port_group: int


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Two gateways, one image: this one's peer and how the lock moves between them."""

    peers: tuple[PeerPortal, ...]
    hold_ms: int = 1000  # the holder keeps the lock while it saw I/O this recently
    takeover_ms: int = 3000  # a holder silent this long is fenced and its lock taken
    # ASYMMETRIC ACCESS STATE CHANGED when the lock moves (SPC-4); off for hosts that do
    # not retry a unit attention (libiscsi's test suite).
    unit_attention: bool = True

    @property
    def peer_group(self) -> int:
        return self.peers[0].port_group


@dataclass(frozen=True, slots=True)
class LunConfig:
    lun: int
    kind: str = "block"  # "block" | "tape" | "filesink" | "rbd" | "changer"
    path: Path = Path("lun.img")
    size: int = GiB  # a changer's: the capacity of the blank cartridges it makes
    block_size: int = 512
    read_only: bool = False
    product: str | None = None
    rbd: RbdConfig | None = None  # kind = "rbd": the image (docs/rbd.md)
    library: LibraryConfig | None = None  # kind = "changer": its slots (docs/tape.md)
    changer: int | None = None  # a tape drive of a library: the changer's LUN
    store: TapeStoreConfig | None = None  # a changer's cartridges or a tape: in S3


@dataclass(frozen=True, slots=True)
class LibraryConfig:
    """A ``kind = "changer"`` LUN's library: its cartridges live in ``path`` (a
    directory, one image per barcode); the drives are the LUNs that name this changer."""

    slots: int = 20
    mail_slots: int = 1
    tapes: tuple[str, ...] = ()  # barcodes of blank cartridges made at the first start


@dataclass(frozen=True, slots=True)
class TapeStoreConfig:
    """Tapes in an S3 bucket instead of image files (docs/tape.md): a changer's
    cartridges under ``url`` (``s3://bucket/prefix``), or a tape LUN's one tape at
    ``url`` (``s3://bucket/prefix/NAME``); ``path`` then keeps the local spool (and a
    changer's inventory). Credentials are never here: the usual AWS variables or file."""

    url: str
    endpoint: str | None = None  # e.g. http://127.0.0.1:8333; None: AWS by region
    region: str | None = None


RBD_CACHE_MODES = ("none", "writearound", "writeback")


@dataclass(frozen=True, slots=True)
class RbdConfig:
    """Where a ``kind = "rbd"`` LUN's image lives and how to reach it (docs/rbd.md)."""

    pool: str
    image: str
    namespace: str = ""
    ceph_conf: str = "/etc/ceph/ceph.conf"
    client: str = "admin"
    keyring: str = ""
    create: bool = False  # make the image with the LUN's ``size`` when it does not exist
    cache: str = "none"  # librbd's cache: "none", "writearound" or "writeback"
    osd_op_timeout: int = 30  # seconds
    connect_timeout: int = 30  # seconds


@dataclass(frozen=True, slots=True)
class TargetConfig:
    name: str
    alias: str = ""
    luns: tuple[LunConfig, ...] = ()
    # Initiator names allowed to log in; empty means any initiator.
    allowed_initiators: tuple[str, ...] = ()
    chap: ChapSecret | None = None  # the initiator must authenticate with this
    mutual_chap: ChapSecret | None = None  # the target authenticates itself with this


@dataclass(frozen=True, slots=True)
class PairConfig:
    """The volume pair engine's settings (docs/pairs.md)."""

    chunk_size: int = 256 * 1024  # bytes per differential bit; a power of two
    copy_workers: int = 2
    copy_rate: int = 0  # background copy bytes per second; 0: unlimited
    # How EXTENDED COPY backs up a split-pending pair's target (docs/xcopy.md): the default,
    # and per pair name.
    backup_policy: str = "reflect-first"
    backup_policies: tuple[tuple[str, str], ...] = ()
    # EXTENDED COPY's kernel copies and digests: "background" (nice 19, pausing while hosts
    # send commands) or "normal" (the daemon's priority, no pauses) (docs/xcopy.md).
    backup_priority: str = "background"
    # A split of an RBD source reads the split set from an RBD snapshot (docs/rbd.md).
    rbd_snapshot_split: bool = True
    # While mirroring, a copied chunk's bit stays set in the pair file (or record) for one
    # to two of these periods (docs/pairs.md, "Lazy clearing").
    clear_delay_ms: int = 5000


@dataclass(frozen=True, slots=True)
class PairDecl:
    """A ``[[pair]]`` of the configuration: created at start (and reload) if absent."""

    name: str
    target: str  # the target's name (IQN)
    source_lun: int
    target_lun: int
    backup_policy: str | None = None
    key: str = "pair"  # where it is in the file, for messages


@dataclass(frozen=True, slots=True)
class GroupDecl:
    """A ``[[group]]`` of the configuration: its pairs are ``[[pair]]`` names."""

    name: str
    target: str
    pairs: tuple[str, ...]
    key: str = "group"


PAIR_CHUNK_RANGE = (64 * 1024, 1 << 20)
BACKUP_POLICIES = ("reflect-first", "wait", "merge", "split-and-backup")
BACKUP_PRIORITIES = ("background", "normal")


@dataclass(frozen=True, slots=True)
class Config:
    portals: tuple[Portal, ...] = (Portal(),)
    # ALUA states of the target port groups the portals name (reloadable); a group not
    # declared here is active/optimized.
    port_groups: tuple[PortGroupConfig, ...] = ()
    # One of two gateways serving the same RBD images (None: a lone daemon).
    gateway: GatewayConfig | None = None
    targets: tuple[TargetConfig, ...] = ()
    state_dir: Path = Path("var/targetd")
    discovery_chap: ChapSecret | None = None
    discovery_mutual_chap: ChapSecret | None = None
    max_sessions: int = 64
    max_connections_per_session: int = 1
    # Connections not logged in yet; beyond this the oldest of the busiest address goes.
    max_pending_logins: int = 32
    # Limits we declare at login and enforce on the wire.
    max_recv_data_segment_length: int = 262144
    max_burst_length: int = DEFAULT_MAX_BURST_LENGTH
    first_burst_length: int = DEFAULT_FIRST_BURST_LENGTH
    max_outstanding_r2t: int = 8
    # Memory for command data (docs/iscsi.md, "Memory"): all sessions together, one
    # session, and the free buffers kept for reuse.
    buffers_total: int = DEFAULT_BUFFERS_TOTAL
    buffers_per_session: int = DEFAULT_BUFFERS_PER_SESSION
    buffer_pool: int = 64 << 20
    extras: dict[str, object] = field(default_factory=dict)
    # Prometheus metrics endpoint (HOST, PORT); None: off.
    metrics_listen: tuple[str, int] | None = None
    pairs: PairConfig = field(default_factory=lambda: PairConfig())
    # Pairs and consistency groups declared in the file (targetd/pair_config.py).
    declared_pairs: tuple[PairDecl, ...] = ()
    declared_groups: tuple[GroupDecl, ...] = ()
    # Worker processes (docs/workers.md): 1 serves every target in this process; more
    # make this process a portal that redirects each login to the worker owning its target.
    workers: int = 1
    # Seconds a worker may take to serve before its portal kills it and starts it again.
    worker_start_timeout: float = 120.0
    # The CHAP credentials the environment gave at this load (targetd.chap_env), on every
    # target without its own: a portal hands these to its workers, which never read the
    # secret file themselves.
    env_chap: ChapSecret | None = None

    def target(self, name: str) -> TargetConfig | None:
        return next((t for t in self.targets if t.name == name), None)


DEFAULT_STATE_DIR = Path("var/targetd")


def default_config(state_dir: Path = DEFAULT_STATE_DIR) -> Config:
    """One target: LUN 0 and LUN 1 are 1 GiB sparse block LUNs (a future pair), LUN 2 a
    virtual tape of DEFAULT_TAPE_CAPACITY (the backup destination)."""
    state_dir = Path(state_dir).absolute()
    luns = (
        LunConfig(0, "block", state_dir / "lun0.img", GiB),
        LunConfig(1, "block", state_dir / "lun1.img", GiB),
        LunConfig(
            2, "tape", state_dir / "tape0.img", DEFAULT_TAPE_CAPACITY, product="VIRTUAL-TAPE"
        ),
    )
    return Config(
        targets=(TargetConfig(DEFAULT_TARGET, alias="targetd", luns=luns),),
        state_dir=state_dir,
    )
