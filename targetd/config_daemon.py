"""The daemon-wide tables: ``[gateway]`` (two gateways, one RBD image), ``[pairs]`` (the
pair engine), ``[server]`` (worker processes) and ``[metrics]``."""

from __future__ import annotations

import os

from targetd.config_model import (
    BACKUP_POLICIES,
    BACKUP_PRIORITIES,
    PAIR_CHUNK_RANGE,
    GatewayConfig,
    PairConfig,
    PeerPortal,
    Portal,
    PortGroupConfig,
    TargetConfig,
)
from targetd.config_table import ConfigError, Table, parse_hostport, parse_size


def _peer(value: object, key: str) -> PeerPortal:
    table = Table(value, key)
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


# LUNs a gateway may serve beside its RBD LUNs, as its own: backup targets (tapes, a
# library, file sinks) that the other gateway does not export. They get an identity of
# this gateway's (targetd/luns.py), so a host never takes them for one LU on two paths.
GATEWAY_LOCAL_KINDS = frozenset({"tape", "changer", "filesink"})


def read_gateway(
    value: object,
    portals: tuple[Portal, ...],
    groups: tuple[PortGroupConfig, ...],
    targets: tuple[TargetConfig, ...],
) -> GatewayConfig | None:
    """``[gateway]``: this daemon and one peer export the same RBD images; the holder of
    an image's exclusive lock is active/optimized (docs/alua.md)."""
    if value is None:
        return None
    table = Table(value, "gateway")
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
                if lun.kind in GATEWAY_LOCAL_KINDS:
                    continue  # this gateway's own, not shared (docs/rbd.md)
                raise ConfigError(
                    f"{key}.kind",
                    f'a disk on a gateway is kind = "rbd" (lun {lun.lun} is {lun.kind}): '
                    "both gateways must serve the same data; only tape, changer and filesink "
                    "LUNs may be one gateway's own",
                )
            if lun.rbd.cache != "none":
                raise ConfigError(
                    f"{key}.cache",
                    f'a gateway needs cache = "none": with "{lun.rbd.cache}" librbd acknowledges '
                    "writes before the OSDs have them, and a read through the other gateway, "
                    "which reads the cluster, would miss them (docs/rbd.md)",
                )
    return GatewayConfig(peers, hold_ms, takeover_ms, unit_attention)


MAX_WORKERS = 256
# Seconds a worker process may take to open its LUNs and listen before its portal kills it
# and tries again (an RBD cluster that does not answer can hold a start that long).
WORKER_START_TIMEOUT = 120


def read_server(config: Table) -> tuple[object, float]:
    """``[server]``: ``workers``, a count or "auto" (resolved once the targets are known),
    and ``worker_start_timeout``, the seconds a worker may take to serve."""
    if "server" not in config.data:
        return 1, WORKER_START_TIMEOUT
    table = Table(config.take_raw("server"), config.key("server"))
    workers = table.take_raw("workers") if "workers" in table.data else 1
    timeout = table.take_int("worker_start_timeout", WORKER_START_TIMEOUT, 1, 3600)
    table.done()
    return workers, float(timeout)


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


def read_pairs(config: Table) -> PairConfig:
    if "pairs" not in config.data:
        return PairConfig()
    table = Table(config.take_raw("pairs"), config.key("pairs"))
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
        named = Table(table.take_raw("backup_policies"), table.key("backup_policies"))
        for name in sorted(named.data):
            value = named.take(name, str, "")
            per_pair.append((name, _backup_policy(value, named, name)))
        named.done()
    priority = table.take("backup_priority", str, default.backup_priority)
    if priority not in BACKUP_PRIORITIES:
        raise ConfigError(
            table.key("backup_priority"),
            f"must be one of {', '.join(BACKUP_PRIORITIES)}, got {priority!r}",
        )
    snapshot_split = table.take("rbd_snapshot_split", bool, default.rbd_snapshot_split)
    clear_delay = table.take_int("clear_delay_ms", default.clear_delay_ms, 100, 600_000)
    table.done()
    return PairConfig(
        chunk, workers, rate, policy, tuple(per_pair), priority,
        rbd_snapshot_split=snapshot_split, clear_delay_ms=clear_delay,
    )  # fmt: skip


def _backup_policy(value: str, table: Table, name: str) -> str:
    if value not in BACKUP_POLICIES:
        key = table.key(name or "backup_policy")
        raise ConfigError(key, f"must be one of {', '.join(BACKUP_POLICIES)}, got {value!r}")
    return value


def read_metrics(config: Table) -> tuple[str, int] | None:
    if "metrics" not in config.data:
        return None
    table = Table(config.take_raw("metrics"), config.key("metrics"))
    listen = table.take("listen", str, "")
    table.done()
    if not listen:
        raise ConfigError(table.key("listen"), "missing (HOST:PORT, e.g. 127.0.0.1:9363)")
    if ":" not in listen:
        raise ConfigError(table.key("listen"), f"expected HOST:PORT, got {listen!r}")
    return parse_hostport(listen, table.key("listen"))
