"""Configuration: what targets, portals, LUNs, ACLs and CHAP secrets the daemon serves.

This is the one import point for the configuration. ``load_config`` turns a TOML file
into the dataclasses of :mod:`targetd.config_model` and says which key is wrong when one
is; ``default_config`` is what ``targetd serve`` runs with no file. The file's tables are
read by :mod:`targetd.config_targets` (portals, port groups, CHAP, limits, targets),
:mod:`targetd.config_luns` (LUNs), :mod:`targetd.config_daemon` (``[gateway]``,
``[pairs]``, ``[server]``, ``[metrics]``) and :mod:`targetd.pair_config` (``[[pair]]``,
``[[group]]``), all with the helpers of :mod:`targetd.config_table`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from targetd.config_daemon import (
    MAX_WORKERS,
    read_gateway,
    read_metrics,
    read_pairs,
    read_server,
    resolve_workers,
)
from targetd.config_luns import (
    BLOCK_SIZES,
    LUN_KINDS,
    MAX_LIBRARY_DRIVES,
    MAX_LIBRARY_SLOTS,
    MAX_LUN,
    MAX_MAIL_SLOTS,
)
from targetd.config_model import (
    ALUA_STATES,
    BACKUP_POLICIES,
    BACKUP_PRIORITIES,
    DEFAULT_BUFFERS_PER_SESSION,
    DEFAULT_BUFFERS_TOTAL,
    DEFAULT_FIRST_BURST_LENGTH,
    DEFAULT_MAX_BURST_LENGTH,
    DEFAULT_PORT,
    DEFAULT_STATE_DIR,
    DEFAULT_TAPE_CAPACITY,
    DEFAULT_TARGET,
    MIN_TAPE_CAPACITY,
    PAIR_CHUNK_RANGE,
    RBD_CACHE_MODES,
    ChapSecret,
    Config,
    GatewayConfig,
    GiB,
    GroupDecl,
    LibraryConfig,
    LunConfig,
    PairConfig,
    PairDecl,
    PeerPortal,
    Portal,
    PortGroupConfig,
    RbdConfig,
    TapeStoreConfig,
    TargetConfig,
    default_config,
)
from targetd.config_table import (
    MAX_NAME_BYTES,
    ConfigError,
    Table,
    is_valid_iscsi_name,
    parse_hostport,
    parse_size,
    type_name,
)
from targetd.config_targets import (
    MAX_CHAP_SECRET,
    MIN_CHAP_SECRET,
    check_port_groups,
    check_unique,
    mutual_chap,
    read_limits,
    read_port_group,
    read_portal,
    read_target,
)

# targetd.pair_config reads ``[[pair]]`` and ``[[group]]`` with these, as it did when they
# lived here.
_Table = Table
_type_name = type_name

__all__ = [
    "ALUA_STATES",
    "BACKUP_POLICIES",
    "BACKUP_PRIORITIES",
    "BLOCK_SIZES",
    "DEFAULT_BUFFERS_PER_SESSION",
    "DEFAULT_BUFFERS_TOTAL",
    "DEFAULT_FIRST_BURST_LENGTH",
    "DEFAULT_MAX_BURST_LENGTH",
    "DEFAULT_PORT",
    "DEFAULT_STATE_DIR",
    "DEFAULT_TAPE_CAPACITY",
    "DEFAULT_TARGET",
    "LUN_KINDS",
    "MAX_CHAP_SECRET",
    "MAX_LIBRARY_DRIVES",
    "MAX_LIBRARY_SLOTS",
    "MAX_LUN",
    "MAX_MAIL_SLOTS",
    "MAX_NAME_BYTES",
    "MAX_WORKERS",
    "MIN_CHAP_SECRET",
    "MIN_TAPE_CAPACITY",
    "PAIR_CHUNK_RANGE",
    "RBD_CACHE_MODES",
    "ChapSecret",
    "Config",
    "ConfigError",
    "GatewayConfig",
    "GiB",
    "GroupDecl",
    "LibraryConfig",
    "LunConfig",
    "PairConfig",
    "PairDecl",
    "PeerPortal",
    "PortGroupConfig",
    "Portal",
    "RbdConfig",
    "TapeStoreConfig",
    "TargetConfig",
    "_Table",
    "_type_name",
    "check_images",
    "default_config",
    "is_valid_iscsi_name",
    "load_config",
    "parse_config",
    "parse_hostport",
    "parse_size",
    "resolve_workers",
]


def parse_config(data: dict[str, Any], *, base_dir: Path, state_dir: Path | None = None) -> Config:
    """Validate a TOML document (already parsed) into a :class:`Config`.

    ``state_dir`` overrides the file's ``state_dir``; a relative ``state_dir`` in the file is
    taken relative to ``base_dir`` (the config file's directory), and relative LUN paths are
    taken relative to the state dir. The state dir and every LUN path come out absolute
    (a relative one against the working directory now), so nothing joins them twice and
    what ``targetctl status`` shows is where the files are.
    """
    root = Table(data, "")
    file_state_dir = root.take("state_dir", str, "")
    if state_dir is None:
        state_dir = base_dir / file_state_dir if file_state_dir else DEFAULT_STATE_DIR
    state_dir = Path(state_dir).absolute()
    portals = root.take_list("portal", read_portal) or (Portal(),)
    endpoints = [(p.listen_host, p.listen_port) for p in portals]
    for i, endpoint in enumerate(endpoints):
        if endpoints.index(endpoint) != i:
            raise ConfigError(f"portal[{i}].listen", "the same address is listed twice")
    port_groups = root.take_list("port_group", read_port_group)
    check_port_groups(portals, port_groups)
    discovery_chap = discovery_mutual = None
    if "discovery" in root.data:
        discovery = Table(root.take_raw("discovery"), "discovery")
        discovery_chap, discovery_mutual = mutual_chap(discovery, "chap", "mutual_chap")
        discovery.done()
    limits = read_limits(root)
    gateway_table = root.take_raw("gateway")
    metrics_listen = read_metrics(root)
    pairs = read_pairs(root)
    workers_raw, worker_start_timeout = read_server(root)
    targets = root.take_list("target", lambda v, k: read_target(v, k, state_dir))
    raw_pairs, raw_groups = root.data.pop("pair", []), root.data.pop("group", [])
    root.done()
    if not targets:
        raise ConfigError("target", "at least one [[target]] is required")
    check_unique(targets)
    gateway = read_gateway(gateway_table, portals, port_groups, targets)
    from targetd.pair_config import parse_declarations  # it builds on this module

    declared_pairs, declared_groups = parse_declarations(raw_pairs, raw_groups, targets)
    workers = resolve_workers(workers_raw, len(targets), "server.workers")
    if workers > 1 and gateway is not None:
        raise ConfigError("server.workers", "worker processes and [gateway] cannot be combined")
    return Config(
        workers=workers,
        worker_start_timeout=worker_start_timeout,
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


def check_images(config: Config) -> None:
    """Before serving: a writable LUN's file is made when missing, but a read-only LUN
    whose image is missing has nothing to serve. Raises :class:`ConfigError` naming it."""
    for t, target in enumerate(config.targets):
        for n, lun in enumerate(target.luns):
            if lun.read_only and lun.changer is None and not lun.path.exists():
                raise ConfigError(
                    f"target[{t}].lun[{n}].path", f"read-only LUN image {lun.path} does not exist"
                )


def read_config(path: Path) -> bytes:
    """The text of a configuration file; raises :class:`ConfigError` if it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror or e}") from e


def parse_config_text(
    data: bytes,
    path: Path,
    *,
    state_dir: Path | None = None,
    extra_targets: Iterable[dict[str, Any]] = (),
) -> Config:
    """Validate the text of the file ``path`` (relative paths in it are from its folder),
    with ``extra_targets`` (``[[target]]`` tables) in place of its own targets of the same
    names, or after them."""
    path = Path(path)
    try:
        parsed = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError("config", f"{path} is not valid TOML: {e}") from e
    extra = list(extra_targets)
    if extra:
        names = {t.get("name") for t in extra}
        listed = parsed.get("target", [])
        listed = listed if isinstance(listed, list) else [listed]
        own = [t for t in listed if not (isinstance(t, dict) and t.get("name") in names)]
        parsed["target"] = [*own, *extra]
    return parse_config(parsed, base_dir=path.parent, state_dir=state_dir)


def load_config(path: Path, *, state_dir: Path | None = None) -> Config:
    """Read and validate a TOML configuration file; raises :class:`ConfigError`."""
    return parse_config_text(read_config(path), path, state_dir=state_dir)
