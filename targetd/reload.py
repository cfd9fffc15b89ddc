"""SIGHUP: which parts of a changed configuration can be applied to a running daemon.

:func:`plan` is pure: given the running and the newly read configuration (and which LUNs
are in a pair) it returns the configuration to run from now on, the targets and LUNs to
build and to remove, the targets whose ACL changed, and what it applied and refused, in
words for the log. Applied: ACLs, CHAP secrets, aliases, ALUA port group states, new
targets and LUNs, and removed
targets and LUNs (their sessions are asked to log out; docs/operations.md), and a block
LUN's larger ``size`` (it grows online). A LUN in a pair is not removed nor grown, nor the
target that holds it removed: the pair must be deleted first. Anything else that would
change storage or a portal under a live session (shrinking, moving a LUN's file, portals,
state_dir, limits) is refused and keeps its running value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

from targetd.config import Config, LunConfig, PairConfig, TargetConfig

# Running values that only a restart changes.
_RESTART_ONLY = (
    "portals",
    "gateway",  # the peer and the lock policy of two gateways (docs/rbd.md)
    "state_dir",
    "max_sessions",
    "max_connections_per_session",
    "max_pending_logins",
    "max_recv_data_segment_length",
    "max_burst_length",
    "first_burst_length",
    "max_outstanding_r2t",
    # The daemon's buffer pool and memory budget are built once, at start.
    "buffers_total",
    "buffers_per_session",
    "buffer_pool",
    "workers",  # the processes and which targets each serves (docs/workers.md)
)


# Every [pairs] setting a reload applies, and what it then reaches (docs/config.md). A
# setting missing here is reported as needing a restart, never dropped silently.
_PAIR_SETTINGS = {
    "chunk_size": "pairs created from now on; an existing pair keeps its own",
    "copy_workers": "every pair's copy workers",
    "copy_rate": "every pair's background copy",
    "backup_policy": "backups of pairs with no backup policy of their own",
    "backup_policies": "backups of pairs with no backup policy of their own",
    "backup_priority": "each copy job from now on",
    "rbd_snapshot_split": "splits from now on",
    "clear_delay_ms": "every pair's lazy clearing",
}


@dataclass
class ReloadPlan:
    config: Config
    new_targets: list[TargetConfig] = field(default_factory=list)
    new_luns: list[tuple[str, LunConfig]] = field(default_factory=list)
    removed_targets: list[str] = field(default_factory=list)
    removed_luns: list[tuple[str, int]] = field(default_factory=list)
    acl_changed: list[str] = field(default_factory=list)  # targets whose ACL changed
    grown: list[tuple[str, LunConfig]] = field(default_factory=list)  # a larger size
    applied: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


# The name of the pair a LUN (target, lun) is in, or None.
PairedLun = Callable[[str, int], str | None]


def plan(old: Config, new: Config, paired: PairedLun = lambda target, lun: None) -> ReloadPlan:
    result = ReloadPlan(old)
    keep = {}
    for name in _RESTART_ONLY:
        if getattr(old, name) != getattr(new, name):
            result.refused.append(f"{name} changed: needs a restart")
            keep[name] = getattr(old, name)
    if old.port_groups != new.port_groups:
        result.applied.append("ALUA port group states updated")
    if (old.discovery_chap, old.discovery_mutual_chap) != (
        new.discovery_chap,
        new.discovery_mutual_chap,
    ):
        result.applied.append("discovery CHAP updated")
    pair_config = _pair_settings(old.pairs, new.pairs, result)
    targets: list[TargetConfig] = []
    for target in new.targets:
        running = old.target(target.name)
        if running is None:
            result.new_targets.append(target)
            result.applied.append(f"target {target.name} added")
            targets.append(target)
        else:
            targets.append(_merge_target(running, target, result, paired))
    for target in old.targets:
        if new.target(target.name) is None:
            pairs = [(lun.lun, p) for lun in target.luns if (p := paired(target.name, lun.lun))]
            if pairs:
                lun, pair = pairs[0]
                result.refused.append(
                    f"target {target.name} removed: its lun {lun} is in pair {pair}"
                    " (delete the pair first): still served"
                )
                targets.append(target)
            else:
                result.removed_targets.append(target.name)
                result.applied.append(f"target {target.name} removed: its sessions are logged out")
    result.config = replace(new, targets=tuple(targets), pairs=pair_config, **keep)
    return result


def _pair_settings(old: PairConfig, new: PairConfig, result: ReloadPlan) -> PairConfig:
    """The ``[pairs]`` table to run with: each changed setting applied (and said so, with
    what it reaches), or kept at its running value if only a restart can change it."""
    kept = {}
    for f in fields(PairConfig):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before == after:
            continue
        reach = _PAIR_SETTINGS.get(f.name)
        if reach is None:
            result.refused.append(f"pairs.{f.name} changed: needs a restart")
            kept[f.name] = before
        else:
            result.applied.append(f"pairs.{f.name}: {_shown(after)} ({reach})")
    return replace(new, **kept)


def _shown(value: object) -> str:
    if isinstance(value, tuple):  # backup_policies: (name, policy) pairs
        return ", ".join(f"{k} = {v}" for k, v in value) or "none"
    return str(value)


def _resized(
    name: str, running: LunConfig, lun: LunConfig, result: ReloadPlan, paired: PairedLun
) -> LunConfig:
    """The LUN to run when its configuration changed: with a larger ``size`` and nothing
    else changed, a block LUN grows online (the hosts are told, docs/operations.md); any
    other change keeps the running LUN until a restart."""
    where = f"target {name}: lun {lun.lun}"
    if replace(running, size=lun.size) != lun:
        result.refused.append(f"{where} changed: needs a restart")
        return running
    before, after = running.size, lun.size
    if running.kind != "block":
        why = {
            "rbd": "an RBD LUN's size is its image's (grow the image with rbd resize: the"
            " LUN grows with it; docs/rbd.md)",
            "tape": "a tape's capacity is the one its image was made with",
        }.get(running.kind, "needs a restart")
        result.refused.append(f"{where}: size changed: {why}; still {before} bytes")
        return running
    if after < before:
        result.refused.append(
            f"{where}: size {after} bytes is smaller than the running {before}: a LUN only"
            f" grows (shrinking would lose the data past the new end under the hosts);"
            f" still {before} bytes"
        )
        return running
    pair = paired(name, lun.lun)
    if pair is not None:
        result.refused.append(
            f"{where}: size changed: it is in pair {pair}, whose volumes keep equal sizes"
            f" (delete the pair, grow both LUNs, create it again); still {before} bytes"
        )
        return running
    result.grown.append((name, lun))
    result.applied.append(f"{where} grown from {before} to {after} bytes")
    return lun


def _merge_target(
    old: TargetConfig, new: TargetConfig, result: ReloadPlan, paired: PairedLun
) -> TargetConfig:
    name = old.name
    if old.allowed_initiators != new.allowed_initiators:
        result.applied.append(f"target {name}: allowed_initiators updated")
        result.acl_changed.append(name)
    if (old.chap, old.mutual_chap) != (new.chap, new.mutual_chap):
        result.applied.append(f"target {name}: CHAP updated")
    if old.alias != new.alias:
        result.applied.append(f"target {name}: alias updated")
    old_luns = {lun.lun: lun for lun in old.luns}
    new_luns = {lun.lun: lun for lun in new.luns}
    luns: list[LunConfig] = []
    for number, lun in new_luns.items():
        running = old_luns.get(number)
        if running is None:
            result.new_luns.append((name, lun))
            result.applied.append(f"target {name}: lun {number} added")
            luns.append(lun)
        elif running != lun:
            luns.append(_resized(name, running, lun, result, paired))
        else:
            luns.append(running)
    for number, lun in old_luns.items():
        if number not in new_luns:
            pair = paired(name, number)
            if pair is not None:
                result.refused.append(
                    f"target {name}: lun {number} removed: it is in pair {pair}"
                    " (delete the pair first): still served"
                )
                luns.append(lun)
            else:
                result.removed_luns.append((name, number))
                result.applied.append(
                    f"target {name}: lun {number} removed: its sessions are asked to log out"
                )
    return replace(new, luns=tuple(sorted(luns, key=lambda lun: lun.lun)))
