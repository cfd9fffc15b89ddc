"""Configuration: what targets, portals, LUNs, ACLs and CHAP secrets the daemon serves.

The dataclasses here are the one shape every part of the daemon reads. ``load_config``
turns a TOML file into them and says which key is wrong when one is; ``default_config``
is what ``targetd serve`` runs with no file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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


class ConfigError(Exception):
    """A bad configuration: names the key and the problem (``targetd serve`` exits 2)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


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


# -- loading ---------------------------------------------------------------------------------
# RFC 3720 3.2.6.3 name forms. ``iqn.`` names are lowercase after stringprep (RFC 3722), so a
# name with capitals would never match what an initiator sends: we refuse it here instead.
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_IQN = re.compile(rf"iqn\.\d{{4}}-(?:0[1-9]|1[0-2])\.{_LABEL}(?:\.{_LABEL})*(?::[^\sA-Z]*)?")
_EUI = re.compile(r"eui\.[0-9A-Fa-f]{16}")
_NAA = re.compile(r"naa\.(?:[0-9A-Fa-f]{16}|[0-9A-Fa-f]{32})")
MAX_NAME_BYTES = 223  # RFC 3720 3.2.6.1

# CHAP secrets: RFC 3720 8.2.1 wants at least 96 bits of secret, i.e. 12 octets; 255 is the
# longest a CHAP key value may sensibly be. Windows initiators accept at most 16.
MIN_CHAP_SECRET = 12
MAX_CHAP_SECRET = 255

BLOCK_SIZES = (512, 4096)
# A bucket name (S3's rules: 3-63 lower-case letters, digits, dots, hyphens), then a prefix.
_S3_STORE = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?")
LUN_KINDS = ("block", "tape", "filesink", "rbd", "changer")
# A library's element address ranges (scsi.smc_elements; config does not import scsi).
MAX_LIBRARY_SLOTS = 0xFC00
MAX_MAIL_SLOTS = 0x200
MAX_LIBRARY_DRIVES = 0x100
_BARCODE = re.compile(r"[!-~]{1,32}")
MAX_LUN = 16383  # flat space addressing, the widest single-level LUN we encode
_SIZE = re.compile(r"\s*(\d+)\s*(B|KiB|MiB|GiB|TiB)?\s*")
_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
# RFC 7143 13.12-13.14: the data-length keys range over 512..2**24-1.
_LENGTH_RANGE = (512, (1 << 24) - 1)

_T = TypeVar("_T")


def is_valid_iscsi_name(name: str) -> bool:
    """True for an RFC 3720 ``iqn.``, ``eui.`` or RFC 3980 ``naa.`` name."""
    if len(name.encode()) > MAX_NAME_BYTES:
        return False
    return any(p.fullmatch(name) for p in (_IQN, _EUI, _NAA))


def parse_size(value: object, key: str) -> int:
    """A byte count: an integer, or a string such as ``"1GiB"``, ``"512MiB"``, ``"4096"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value)):
        number = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ConfigError(key, f"expected a size like 1GiB, 512MiB or a byte count, got {value!r}")
    if number <= 0:
        raise ConfigError(key, f"size must be positive, got {value!r}")
    return number


def parse_hostport(value: str, key: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, or a bare host (default port) -> (host, port)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"expected HOST:PORT, got {value!r}")
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(key, f"expected [IPV6]:PORT, got {value!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ConfigError(key, f"an IPv6 address needs brackets: [{text}]:PORT")
    else:
        host, port_text = text, None
    if not host or any(c.isspace() for c in host):
        raise ConfigError(key, f"missing or malformed host in {value!r}")
    if port_text is None:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(key, f"port must be 1..65535, got {port_text!r}")
    return host, int(port_text)


class _Table:
    """One TOML table being read: knows its key path and complains about leftovers."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, f"expected a table, got {_type_name(data)}")
        self.data = dict(data)
        self.path = path

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def take(self, name: str, kind: type[_T], default: _T) -> _T:
        if name not in self.data:
            return default
        value = self.data.pop(name)
        # bool is an int in Python, never in a config file.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                self.key(name), f"expected {kind.__name__}, got {_type_name(value)} {value!r}"
            )
        return value

    def take_int(self, name: str, default: int, low: int, high: int) -> int:
        value = self.take(name, int, default)
        if not low <= value <= high:
            raise ConfigError(self.key(name), f"must be {low}..{high}, got {value}")
        return value

    def take_raw(self, name: str) -> object:
        return self.data.pop(name, None)

    def take_list(self, name: str, item: Callable[[object, str], _T]) -> tuple[_T, ...]:
        value = self.data.pop(name, [])
        if not isinstance(value, list):
            raise ConfigError(self.key(name), f"expected an array, got {_type_name(value)}")
        return tuple(item(v, f"{self.key(name)}[{i}]") for i, v in enumerate(value))

    def done(self) -> None:
        if self.data:
            unknown = sorted(self.data)[0]
            raise ConfigError(self.key(unknown), "unknown key")


def _type_name(value: object) -> str:
    return {dict: "table", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _name(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected an iSCSI name string, got {_type_name(value)}")
    if not is_valid_iscsi_name(value):
        raise ConfigError(
            key,
            f"{value!r} is not an iSCSI name (iqn.YYYY-MM.reversed.domain[:id] in lowercase,"
            " eui.<16 hex>, or naa.<16 or 32 hex>)",
        )
    return value


def _chap(value: object, key: str) -> ChapSecret | None:
    if value is None:
        return None
    table = _Table(value, key)
    user = table.take("user", str, "")
    secret = table.take("secret", str, "")
    table.done()
    if not user or len(user.encode()) > 255 or any(c.isspace() for c in user):
        raise ConfigError(table.key("user"), "must be 1..255 bytes without whitespace")
    length = len(secret.encode())
    if not MIN_CHAP_SECRET <= length <= MAX_CHAP_SECRET:
        raise ConfigError(
            table.key("secret"),
            f"must be {MIN_CHAP_SECRET}..{MAX_CHAP_SECRET} bytes (RFC 3720 8.2.1), got {length}",
        )
    return ChapSecret(user, secret)


def _mutual_pair(
    table: _Table, chap_key: str, mutual_key: str
) -> tuple[ChapSecret | None, ChapSecret | None]:
    chap = _chap(table.take_raw(chap_key), table.key(chap_key))
    mutual = _chap(table.take_raw(mutual_key), table.key(mutual_key))
    if mutual is not None and chap is None:
        raise ConfigError(table.key(mutual_key), f"needs {table.key(chap_key)} as well")
    if chap is not None and mutual is not None and chap.secret == mutual.secret:
        # RFC 3720 8.2.1: one secret MUST NOT serve both directions.
        raise ConfigError(table.key(f"{mutual_key}.secret"), "must differ from the CHAP secret")
    return chap, mutual


def _portal(value: object, key: str) -> Portal:
    table = _Table(value, key)
    if "listen" not in table.data:
        raise ConfigError(table.key("listen"), "missing (HOST:PORT to listen on)")
    host, port = parse_hostport(table.take("listen", str, ""), table.key("listen"))
    advertise = table.take("advertise", str, "") or None
    if advertise is not None:
        # Validate the form, keep the text: SendTargets sends it as written.
        parse_hostport(advertise, table.key("advertise"))
    tpgt = table.take_int("tpgt", 1, 1, 65535)
    port_group = table.take_int("port_group", 1, 1, 65535)
    table.done()
    return Portal(host, port, advertise, tpgt, port_group)


def _port_group(value: object, key: str) -> PortGroupConfig:
    table = _Table(value, key)
    if "id" not in table.data:
        raise ConfigError(table.key("id"), "missing (the target port group number)")
    number = table.take_int("id", 1, 1, 65535)
    state = table.take("state", str, "active/optimized")
    if state not in ALUA_STATES:
        raise ConfigError(table.key("state"), f"must be one of {', '.join(ALUA_STATES)}")
    preferred = table.take("preferred", bool, False)
    table.done()
    return PortGroupConfig(number, state, preferred)


def _check_port_groups(portals: tuple[Portal, ...], groups: tuple[PortGroupConfig, ...]) -> None:
    ids = [g.id for g in groups]
    for i, number in enumerate(ids):
        if ids.index(number) != i:
            raise ConfigError(f"port_group[{i}].id", f"group {number} is declared twice")
    # Portals with one TPGT are one iSCSI target port: it is in one group only.
    group_of: dict[int, int] = {}
    for i, portal in enumerate(portals):
        if group_of.setdefault(portal.tpgt, portal.port_group) != portal.port_group:
            raise ConfigError(
                f"portal[{i}].port_group",
                f"tpgt {portal.tpgt} is already in port group {group_of[portal.tpgt]}",
            )


def _peer(value: object, key: str) -> PeerPortal:
    table = _Table(value, key)
    for name in ("portal", "tpgt", "port_group"):
        if name not in table.data:
            raise ConfigError(table.key(name), "missing (a peer portal names its address, tpgt"
                              " and port_group)")  # fmt: skip
    address = table.take("portal", str, "")
    parse_hostport(address, table.key("portal"))
    tpgt = table.take_int("tpgt", 1, 1, 65535)
    port_group = table.take_int("port_group", 1, 1, 65535)
    table.done()
    return PeerPortal(address.strip(), tpgt, port_group)


def _gateway(
    value: object,
    portals: tuple[Portal, ...],
    groups: tuple[PortGroupConfig, ...],
    targets: tuple[TargetConfig, ...],
) -> GatewayConfig | None:
    """``[gateway]``: this daemon and one peer export the same RBD images; the holder of
    an image's exclusive lock is active/optimized (docs/alua.md)."""
    if value is None:
        return None
    table = _Table(value, "gateway")
    hold_ms = table.take_int("hold_ms", 1000, 0, 60000)
    takeover_ms = table.take_int("takeover_ms", 3000, 500, 60000)
    unit_attention = table.take("unit_attention", bool, True)
    peers = table.take_list("peer", _peer)
    table.done()
    if not peers:
        raise ConfigError("gateway.peer", "missing: declare the other gateway's portals")
    own_groups = {p.port_group for p in portals}
    if len(own_groups) != 1:
        raise ConfigError(
            "portal", "a gateway's portals are one target port group: give them one port_group"
        )
    own_group = own_groups.pop()
    own_tpgts = {p.tpgt for p in portals}
    peer_group = peers[0].port_group
    for i, peer in enumerate(peers):
        key = f"gateway.peer[{i}]"
        if peer.port_group != peer_group:
            raise ConfigError(
                f"{key}.port_group", "the peer's portals are one port group (two gateways)"
            )
        if peer.port_group == own_group:
            raise ConfigError(
                f"{key}.port_group", f"group {own_group} is this gateway's own (its portals')"
            )
        if peer.tpgt in own_tpgts:
            raise ConfigError(
                f"{key}.tpgt",
                f"tpgt {peer.tpgt} is this gateway's: relative target port ids must differ",
            )
    for i, group in enumerate(groups):
        if group.id in (own_group, peer_group) and group.state != "active/optimized":
            raise ConfigError(
                f"port_group[{i}].state",
                "a gateway's groups follow the image's lock; their state is not configured",
            )
    for t, target in enumerate(targets):
        for n, lun in enumerate(target.luns):
            key = f"target[{t}].lun[{n}]"
            if lun.rbd is None:
                raise ConfigError(
                    f"{key}.kind", f"a gateway serves rbd LUNs only (lun {lun.lun} is {lun.kind})"
                )
            if lun.rbd.cache != "none":
                raise ConfigError(
                    f"{key}.cache",
                    f'a gateway needs cache = "none": with "{lun.rbd.cache}" librbd acknowledges '
                    "writes before the OSDs have them, and a read through the other gateway, "
                    "which reads the cluster, would miss them (docs/rbd.md)",
                )
    return GatewayConfig(peers, hold_ms, takeover_ms, unit_attention)


def _lun(value: object, key: str, target_name: str, state_dir: Path) -> LunConfig:
    table = _Table(value, key)
    if "lun" not in table.data:
        raise ConfigError(table.key("lun"), "missing (the LUN number)")
    number = table.take_int("lun", 0, 0, MAX_LUN)
    kind = table.take("kind", str, "block")
    if kind not in LUN_KINDS:
        raise ConfigError(table.key("kind"), f"must be one of {', '.join(LUN_KINDS)}")
    block_size = table.take("block_size", int, 512)
    if block_size not in BLOCK_SIZES:
        raise ConfigError(table.key("block_size"), f"must be 512 or 4096, got {block_size}")
    if kind in ("tape", "filesink", "changer") and "capacity" in table.data:
        # A tape's size is its capacity; either key names it, not both.
        if "size" in table.data:
            raise ConfigError(table.key("capacity"), "give either size or capacity, not both")
        table.data["size"] = table.data.pop("capacity")
    # A file sink's size is its capacity too: the bytes its directory may hold.
    default_size = DEFAULT_TAPE_CAPACITY if kind in ("tape", "filesink", "changer") else GiB
    changer = None
    if kind == "tape" and "changer" in table.data:
        # A library drive: its cartridges come from the changer, so it has no file.
        changer = table.take_int("changer", 0, 0, MAX_LUN)
        for name in ("path", "size"):
            if name in table.data:
                raise ConfigError(table.key(name), "a library drive has none (see changer)")
    size_given = "size" in table.data
    size = parse_size(table.data.pop("size", default_size), table.key("size"))
    if kind in ("tape", "changer") and size < MIN_TAPE_CAPACITY:
        raise ConfigError(table.key("size"), f"a tape holds at least {MIN_TAPE_CAPACITY} bytes")
    if kind in ("block", "rbd") and size % block_size:
        raise ConfigError(table.key("size"), f"{size} is not a multiple of block_size")
    rbd = _rbd(table) if kind == "rbd" else None
    if rbd is not None and size_given != rbd.create:
        raise ConfigError(
            table.key("size"),
            "give size with create = true (it sizes the new image; an existing image keeps its"
            " own size)"
            if size_given
            else "create = true needs the size of the image to make",
        )
    default_path = f"{target_name.replace(':', '_')}/lun{number}.img"
    if kind == "filesink":  # a directory: one plain file per backup (tape file)
        default_path = f"{target_name.replace(':', '_')}/lun{number}-sink"
    if kind == "changer":  # a directory: one tape image per cartridge
        default_path = f"{target_name.replace(':', '_')}/lun{number}-library"
    library = _library(table) if kind == "changer" else None
    store = None
    if kind == "changer" or (kind == "tape" and changer is None):
        store = _tape_store(table, named=kind == "tape")
    if kind == "tape" and store is not None:  # a directory: the tape's local spool
        default_path = f"{target_name.replace(':', '_')}/lun{number}-spool"
    path_text = table.take("path", str, default_path)
    if not path_text.strip():
        raise ConfigError(table.key("path"), "must not be empty")
    path = Path(path_text)
    read_only = table.take("read_only", bool, False)
    product = table.take("product", str, "") or None
    if product is not None and (len(product) > 16 or not product.isascii()):
        raise ConfigError(table.key("product"), "INQUIRY product id is at most 16 ASCII chars")
    table.done()
    return LunConfig(
        number,
        kind,
        state_dir / path,
        size,
        block_size,
        read_only,
        product,
        rbd,
        library,
        changer,
        store,
    )


def _library(table: _Table) -> LibraryConfig:
    slots = table.take_int("slots", 20, 1, MAX_LIBRARY_SLOTS)
    mail_slots = table.take_int("mail_slots", 1, 0, MAX_MAIL_SLOTS)

    def barcode(value: object, key: str) -> str:
        if not isinstance(value, str) or not _BARCODE.fullmatch(value) or "/" in value:
            raise ConfigError(key, f"a barcode is 1-32 printable ASCII characters, got {value!r}")
        return value

    tapes = table.take_list("tapes", barcode)
    if len(set(tapes)) != len(tapes):
        raise ConfigError(table.key("tapes"), "a barcode is listed twice")
    if len(tapes) > slots:
        raise ConfigError(table.key("tapes"), f"{len(tapes)} tapes do not fit {slots} slots")
    return LibraryConfig(slots, mail_slots, tapes)


def _tape_store(table: _Table, *, named: bool) -> TapeStoreConfig | None:
    """``store`` (with ``s3_endpoint``, ``s3_region``) of a changer or a tape LUN; a
    tape's address names the tape itself, so it has a name after the bucket."""
    store = table.take("store", str, "") or None
    if store is not None and not _S3_STORE.fullmatch(store):
        raise ConfigError(table.key("store"), f"an s3://bucket/prefix address, got {store!r}")
    if store is not None and named and not store[len("s3://") :].rstrip("/").count("/"):
        raise ConfigError(table.key("store"), f"s3://bucket/NAME names the tape, got {store!r}")
    endpoint = table.take("s3_endpoint", str, "") or None
    region = table.take("s3_region", str, "") or None
    if store is None and (endpoint or region):
        raise ConfigError(table.key("s3_endpoint" if endpoint else "s3_region"), "needs store")
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(table.key("s3_endpoint"), f"an http(s):// URL, got {endpoint!r}")
    return None if store is None else TapeStoreConfig(store, endpoint, region)


def _rbd(table: _Table) -> RbdConfig:
    """The keys of an RBD LUN: the image lives in Ceph, not under ``path``."""
    for name in ("pool", "image"):
        if name not in table.data:
            raise ConfigError(table.key(name), "missing (an rbd LUN names its pool and image)")
    if "path" in table.data:
        raise ConfigError(table.key("path"), "an rbd LUN has no path (its image is in Ceph)")
    texts = {}
    for name in ("pool", "image", "namespace", "ceph_conf", "client", "keyring"):
        texts[name] = table.take(name, str, "").strip()
    for name in ("pool", "image"):
        if not texts[name] or "/" in texts[name] or "@" in texts[name]:
            raise ConfigError(table.key(name), f"must be a plain name, got {texts[name]!r}")
    cache = table.take("cache", str, "none")
    if cache not in RBD_CACHE_MODES:
        raise ConfigError(table.key("cache"), f"must be one of {', '.join(RBD_CACHE_MODES)}")
    return RbdConfig(
        pool=texts["pool"],
        image=texts["image"],
        namespace=texts["namespace"],
        ceph_conf=texts["ceph_conf"] or "/etc/ceph/ceph.conf",
        client=texts["client"] or "admin",
        keyring=texts["keyring"],
        create=table.take("create", bool, False),
        cache=cache,
        osd_op_timeout=table.take_int("osd_op_timeout", 30, 0, 3600),
        connect_timeout=table.take_int("connect_timeout", 30, 1, 3600),
    )


def _target(value: object, key: str, state_dir: Path) -> TargetConfig:
    table = _Table(value, key)
    if "name" not in table.data:
        raise ConfigError(table.key("name"), "missing (the target's iSCSI name)")
    name = _name(table.take_raw("name"), table.key("name"))
    alias = table.take("alias", str, "")
    initiators = table.take_list("allowed_initiators", _name)
    chap, mutual = _mutual_pair(table, "chap", "mutual_chap")
    luns = table.take_list("lun", lambda v, k: _lun(v, k, name, state_dir))
    table.done()
    if not luns:
        raise ConfigError(table.key("lun"), "a target needs at least one [[target.lun]]")
    seen: dict[int, int] = {}
    for i, lun in enumerate(luns):
        if lun.lun in seen:
            first = f"{key}.lun[{seen[lun.lun]}]"
            raise ConfigError(f"{key}.lun[{i}].lun", f"LUN {lun.lun} already defined by {first}")
        seen[lun.lun] = i
    _check_libraries(luns, key)
    return TargetConfig(name, alias, luns, initiators, chap, mutual)


def _check_libraries(luns: tuple[LunConfig, ...], key: str) -> None:
    """Every library drive names a changer LUN of its own target."""
    changers = {lun.lun for lun in luns if lun.kind == "changer"}
    drives: dict[int, int] = {}
    for i, lun in enumerate(luns):
        if lun.changer is None:
            continue
        if lun.changer not in changers:
            raise ConfigError(
                f"{key}.lun[{i}].changer", f"LUN {lun.changer} is not a changer of this target"
            )
        drives[lun.changer] = drives.get(lun.changer, 0) + 1
        if drives[lun.changer] > MAX_LIBRARY_DRIVES:
            raise ConfigError(f"{key}.lun[{i}].changer", "too many drives in one library")


# The per-session floor lets the largest command (a 64 MiB write) run alone.
_MEMORY_RANGES = {
    "buffers_total": (64 << 20, 1 << 40),
    "buffers_per_session": (64 << 20, 1 << 40),
    "buffer_pool": (0, 1 << 40),
}


def _limits(config: _Table) -> dict[str, int]:
    if "limits" not in config.data:
        return {}
    table = _Table(config.take_raw("limits"), config.key("limits"))
    low, high = _LENGTH_RANGE
    out: dict[str, int] = {}
    for name in ("max_recv_data_segment_length", "max_burst_length", "first_burst_length"):
        if name in table.data:
            out[name] = parse_size(table.take_raw(name), table.key(name))
            if not low <= out[name] <= high:
                raise ConfigError(table.key(name), f"must be {low}..{high} bytes (RFC 7143)")
    for name, (low_size, high_size) in _MEMORY_RANGES.items():
        if name in table.data:
            out[name] = parse_size(table.take_raw(name), table.key(name))
            if not low_size <= out[name] <= high_size:
                raise ConfigError(table.key(name), f"must be {low_size}..{high_size} bytes")
    for name, high_int in (
        ("max_sessions", 65535),
        ("max_connections_per_session", 65535),
        ("max_pending_logins", 65535),
        ("max_outstanding_r2t", 65535),
    ):
        if name in table.data:
            out[name] = table.take_int(name, 1, 1, high_int)
    table.done()
    first = out.get("first_burst_length", DEFAULT_FIRST_BURST_LENGTH)
    most = out.get("max_burst_length", DEFAULT_MAX_BURST_LENGTH)
    if first > most:
        raise ConfigError(table.key("first_burst_length"), "must not exceed max_burst_length")
    total = out.get("buffers_total", DEFAULT_BUFFERS_TOTAL)
    session = out.get("buffers_per_session", DEFAULT_BUFFERS_PER_SESSION)
    if session > total:
        raise ConfigError(table.key("buffers_per_session"), "must not exceed buffers_total")
    return out


def parse_config(data: dict[str, Any], *, base_dir: Path, state_dir: Path | None = None) -> Config:
    """Validate a TOML document (already parsed) into a :class:`Config`.

    ``state_dir`` overrides the file's ``state_dir``; a relative ``state_dir`` in the file is
    taken relative to ``base_dir`` (the config file's directory), and relative LUN paths are
    taken relative to the state dir. The state dir and every LUN path come out absolute
    (a relative one against the working directory now), so nothing joins them twice and
    what ``targetctl status`` shows is where the files are.
    """
    root = _Table(data, "")
    file_state_dir = root.take("state_dir", str, "")
    if state_dir is None:
        state_dir = base_dir / file_state_dir if file_state_dir else DEFAULT_STATE_DIR
    state_dir = Path(state_dir).absolute()
    portals = root.take_list("portal", _portal) or (Portal(),)
    endpoints = [(p.listen_host, p.listen_port) for p in portals]
    for i, endpoint in enumerate(endpoints):
        if endpoints.index(endpoint) != i:
            raise ConfigError(f"portal[{i}].listen", "the same address is listed twice")
    port_groups = root.take_list("port_group", _port_group)
    _check_port_groups(portals, port_groups)
    discovery_chap = discovery_mutual = None
    if "discovery" in root.data:
        discovery = _Table(root.take_raw("discovery"), "discovery")
        discovery_chap, discovery_mutual = _mutual_pair(discovery, "chap", "mutual_chap")
        discovery.done()
    limits = _limits(root)
    gateway_table = root.take_raw("gateway")
    metrics_listen = _metrics(root)
    pairs = _pairs(root)
    workers_raw = _server(root)
    targets = root.take_list("target", lambda v, k: _target(v, k, state_dir))
    raw_pairs, raw_groups = root.data.pop("pair", []), root.data.pop("group", [])
    root.done()
    if not targets:
        raise ConfigError("target", "at least one [[target]] is required")
    _check_unique(targets)
    gateway = _gateway(gateway_table, portals, port_groups, targets)
    from targetd.pair_config import parse_declarations  # it builds on this module

    declared_pairs, declared_groups = parse_declarations(raw_pairs, raw_groups, targets)
    workers = resolve_workers(workers_raw, len(targets), "server.workers")
    if workers > 1 and gateway is not None:
        raise ConfigError("server.workers", "worker processes and [gateway] cannot be combined")
    return Config(
        workers=workers,
        portals=portals,
        port_groups=port_groups,
        gateway=gateway,
        targets=targets,
        state_dir=state_dir,
        discovery_chap=discovery_chap,
        discovery_mutual_chap=discovery_mutual,
        metrics_listen=metrics_listen,
        pairs=pairs,
        declared_pairs=declared_pairs,
        declared_groups=declared_groups,
        **limits,  # type: ignore[arg-type]
    )


MAX_WORKERS = 256


def _server(config: _Table) -> object:
    """``[server]``: ``workers``, a count or "auto" (resolved once the targets are known)."""
    if "server" not in config.data:
        return 1
    table = _Table(config.take_raw("server"), config.key("server"))
    workers = table.take_raw("workers") if "workers" in table.data else 1
    table.done()
    return workers


def resolve_workers(value: object, targets: int, key: str) -> int:
    """A worker count from the file or ``--workers``: 1..MAX_WORKERS, or "auto", one per
    CPU this process may run on, but no more than there are targets to spread."""
    if value == "auto":
        return max(1, min(targets, len(os.sched_getaffinity(0))))
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f'expected a count or "auto", got {value!r}')
    if not 1 <= value <= MAX_WORKERS:
        raise ConfigError(key, f"must be 1..{MAX_WORKERS}, got {value}")
    return value


def _pairs(config: _Table) -> PairConfig:
    if "pairs" not in config.data:
        return PairConfig()
    table = _Table(config.take_raw("pairs"), config.key("pairs"))
    default = PairConfig()
    chunk = default.chunk_size
    if "chunk_size" in table.data:
        chunk = parse_size(table.take_raw("chunk_size"), table.key("chunk_size"))
        low, high = PAIR_CHUNK_RANGE
        if not low <= chunk <= high or chunk & (chunk - 1):
            raise ConfigError(table.key("chunk_size"), "must be a power of two, 64KiB..1MiB")
    workers = table.take_int("copy_workers", default.copy_workers, 1, 64)
    rate = 0
    if "copy_rate" in table.data:
        raw = table.take_raw("copy_rate")
        rate = 0 if raw in (0, "0") else parse_size(raw, table.key("copy_rate"))
    policy = _backup_policy(table.take("backup_policy", str, default.backup_policy), table, "")
    per_pair: list[tuple[str, str]] = []
    if "backup_policies" in table.data:
        named = _Table(table.take_raw("backup_policies"), table.key("backup_policies"))
        for name in sorted(named.data):
            value = named.take(name, str, "")
            per_pair.append((name, _backup_policy(value, named, name)))
        named.done()
    snapshot_split = table.take("rbd_snapshot_split", bool, default.rbd_snapshot_split)
    clear_delay = table.take_int("clear_delay_ms", default.clear_delay_ms, 100, 600_000)
    table.done()
    return PairConfig(
        chunk, workers, rate, policy, tuple(per_pair), rbd_snapshot_split=snapshot_split,
        clear_delay_ms=clear_delay,
    )  # fmt: skip


def _backup_policy(value: str, table: _Table, name: str) -> str:
    if value not in BACKUP_POLICIES:
        key = table.key(name or "backup_policy")
        raise ConfigError(key, f"must be one of {', '.join(BACKUP_POLICIES)}, got {value!r}")
    return value


def _metrics(config: _Table) -> tuple[str, int] | None:
    if "metrics" not in config.data:
        return None
    table = _Table(config.take_raw("metrics"), config.key("metrics"))
    listen = table.take("listen", str, "")
    table.done()
    if not listen:
        raise ConfigError(table.key("listen"), "missing (HOST:PORT, e.g. 127.0.0.1:9363)")
    if ":" not in listen:
        raise ConfigError(table.key("listen"), f"expected HOST:PORT, got {listen!r}")
    return parse_hostport(listen, table.key("listen"))


def _check_unique(targets: tuple[TargetConfig, ...]) -> None:
    names: dict[str, int] = {}
    paths: dict[Path, str] = {}
    for t, target in enumerate(targets):
        if target.name in names:
            first = f"target[{names[target.name]}]"
            raise ConfigError(f"target[{t}].name", f"{target.name!r} already defined by {first}")
        names[target.name] = t
        for i, lun in enumerate(target.luns):
            # Two LUNs on one file would corrupt each other silently.
            where = f"target[{t}].lun[{i}].path"
            resolved = Path(lun.path).resolve()
            label = str(lun.path)
            if lun.rbd is not None:  # one Ceph image, one LUN, too
                r = lun.rbd
                where = f"target[{t}].lun[{i}].image"
                label = f"rbd image {r.pool}/{r.namespace + '/' if r.namespace else ''}{r.image}"
                resolved = Path("/rbd:", r.ceph_conf.replace("/", "_"), r.pool, r.namespace or "-")
                resolved /= r.image
            if resolved in paths:
                raise ConfigError(where, f"{label} is already used by {paths[resolved]}")
            paths[resolved] = where


def check_images(config: Config) -> None:
    """Before serving: a writable LUN's file is made when missing, but a read-only LUN
    whose image is missing has nothing to serve. Raises :class:`ConfigError` naming it."""
    for t, target in enumerate(config.targets):
        for n, lun in enumerate(target.luns):
            if lun.read_only and lun.changer is None and not lun.path.exists():
                raise ConfigError(
                    f"target[{t}].lun[{n}].path", f"read-only LUN image {lun.path} does not exist"
                )


def load_config(path: Path, *, state_dir: Path | None = None) -> Config:
    """Read and validate a TOML configuration file; raises :class:`ConfigError`."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path} is not valid TOML: {e}") from e
    return parse_config(data, base_dir=path.parent, state_dir=state_dir)
