"""What the daemon serves and where: portals, ALUA port groups, CHAP secrets, ``[limits]``
and ``[[target]]`` (its LUNs are read by :mod:`targetd.config_luns`)."""

from __future__ import annotations

from pathlib import Path

from targetd.config_luns import check_libraries, read_lun
from targetd.config_model import (
    ALUA_STATES,
    DEFAULT_BUFFERS_PER_SESSION,
    DEFAULT_BUFFERS_TOTAL,
    DEFAULT_FIRST_BURST_LENGTH,
    DEFAULT_MAX_BURST_LENGTH,
    ChapSecret,
    Portal,
    PortGroupConfig,
    TargetConfig,
)
from targetd.config_table import (
    ConfigError,
    Table,
    is_valid_iscsi_name,
    parse_hostport,
    parse_size,
    type_name,
)

# CHAP secrets: RFC 3720 8.2.1 wants at least 96 bits of secret, i.e. 12 octets; 255 is the
# longest a CHAP key value may sensibly be. Windows initiators accept at most 16.
MIN_CHAP_SECRET = 12
MAX_CHAP_SECRET = 255
# RFC 7143 13.12-13.14: the data-length keys range over 512..2**24-1.
_LENGTH_RANGE = (512, (1 << 24) - 1)


def iscsi_name(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected an iSCSI name string, got {type_name(value)}")
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
    table = Table(value, key)
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


def mutual_chap(
    table: Table, chap_key: str, mutual_key: str
) -> tuple[ChapSecret | None, ChapSecret | None]:
    chap = _chap(table.take_raw(chap_key), table.key(chap_key))
    mutual = _chap(table.take_raw(mutual_key), table.key(mutual_key))
    if mutual is not None and chap is None:
        raise ConfigError(table.key(mutual_key), f"needs {table.key(chap_key)} as well")
    if chap is not None and mutual is not None and chap.secret == mutual.secret:
        # RFC 3720 8.2.1: one secret MUST NOT serve both directions.
        raise ConfigError(table.key(f"{mutual_key}.secret"), "must differ from the CHAP secret")
    return chap, mutual


def read_portal(value: object, key: str) -> Portal:
    table = Table(value, key)
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


def read_port_group(value: object, key: str) -> PortGroupConfig:
    table = Table(value, key)
    if "id" not in table.data:
        raise ConfigError(table.key("id"), "missing (the target port group number)")
    number = table.take_int("id", 1, 1, 65535)
    state = table.take("state", str, "active/optimized")
    if state not in ALUA_STATES:
        raise ConfigError(table.key("state"), f"must be one of {', '.join(ALUA_STATES)}")
    preferred = table.take("preferred", bool, False)
    table.done()
    return PortGroupConfig(number, state, preferred)


def check_port_groups(portals: tuple[Portal, ...], groups: tuple[PortGroupConfig, ...]) -> None:
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


def read_target(value: object, key: str, state_dir: Path) -> TargetConfig:
    table = Table(value, key)
    if "name" not in table.data:
        raise ConfigError(table.key("name"), "missing (the target's iSCSI name)")
    name = iscsi_name(table.take_raw("name"), table.key("name"))
    alias = table.take("alias", str, "")
    initiators = table.take_list("allowed_initiators", iscsi_name)
    chap, mutual = mutual_chap(table, "chap", "mutual_chap")
    luns = table.take_list("lun", lambda v, k: read_lun(v, k, name, state_dir))
    table.done()
    if not luns:
        raise ConfigError(table.key("lun"), "a target needs at least one [[target.lun]]")
    seen: dict[int, int] = {}
    for i, lun in enumerate(luns):
        if lun.lun in seen:
            first = f"{key}.lun[{seen[lun.lun]}]"
            raise ConfigError(f"{key}.lun[{i}].lun", f"LUN {lun.lun} already defined by {first}")
        seen[lun.lun] = i
    check_libraries(luns, key)
    return TargetConfig(name, alias, luns, initiators, chap, mutual)


# The per-session floor lets the largest command (a 64 MiB write) run alone.
_MEMORY_RANGES = {
    "buffers_total": (64 << 20, 1 << 40),
    "buffers_per_session": (64 << 20, 1 << 40),
    "buffer_pool": (0, 1 << 40),
}


def read_limits(config: Table) -> dict[str, int]:
    if "limits" not in config.data:
        return {}
    table = Table(config.take_raw("limits"), config.key("limits"))
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


def check_unique(targets: tuple[TargetConfig, ...]) -> None:
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
