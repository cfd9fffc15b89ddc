"""Pairs and consistency groups declared in the configuration: ``[[pair]]`` and ``[[group]]``.

:func:`parse_declarations` validates them with the rest of the file (a bad entry is a
:class:`ConfigError` naming it). :func:`apply` makes the daemon hold them, at start and
after each reload: a declared pair or group that does not exist is created; one that
exists as declared is left alone; one that exists otherwise (other LUNs, other members)
is reported and left as it is, never changed silently. The configuration only creates:
a pair or group taken out of the file stays until ``targetctl pair delete`` /
``targetctl group delete`` (a reload says so). See docs/config.md.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Container, Sequence

from backing.pairs import MAX_SECONDARIES, UNCHECKED, BackupPolicy, PairError, PairService
from targetd import logs
from targetd.config import (
    BACKUP_POLICIES,
    Config,
    ConfigError,
    GroupDecl,
    PairDecl,
    TargetConfig,
    _Table,
    _type_name,
)
from targetd.pairs import volume_id

log = logging.getLogger("targetd.pairs")

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


def _target_of(table: _Table, targets: tuple[TargetConfig, ...]) -> TargetConfig:
    name = table.take("target", str, "")
    if not name:
        if len(targets) != 1:
            raise ConfigError(table.key("target"), "several targets: name the pair's target")
        return targets[0]
    for t in targets:
        if t.name == name:
            return t
    raise ConfigError(table.key("target"), f"no [[target]] named {name!r}")


def _name(table: _Table, what: str) -> str:
    name = table.take("name", str, "")
    if not NAME.fullmatch(name):
        raise ConfigError(
            table.key("name"), f"{what} name {name!r}: [A-Za-z0-9][A-Za-z0-9._-], up to 32"
        )
    return name


def _pair(value: object, key: str, targets: tuple[TargetConfig, ...]) -> PairDecl:
    table = _Table(value, key)
    name = _name(table, "pair")
    target = _target_of(table, targets)
    luns = {lun.lun: lun for lun in target.luns}
    numbers = []
    for field in ("source_lun", "target_lun"):
        if field not in table.data:
            raise ConfigError(table.key(field), "missing (a block LUN number of the target)")
        number = table.take_int(field, 0, 0, 0x3FFF)
        lun = luns.get(number)
        if lun is None or lun.kind not in ("block", "rbd"):
            raise ConfigError(table.key(field), f"LUN {number} is no block LUN of {target.name}")
        numbers.append(number)
    source, dest = (luns[n] for n in numbers)
    if source.lun == dest.lun:
        raise ConfigError(table.key("target_lun"), "the same LUN as source_lun")
    if dest.read_only:
        raise ConfigError(table.key("target_lun"), f"LUN {dest.lun} is read-only")
    if source.kind == dest.kind == "block" and source.size != dest.size:
        raise ConfigError(
            table.key("target_lun"),
            f"LUN {dest.lun} is {dest.size} bytes, LUN {source.lun} {source.size}: sizes differ",
        )
    policy = table.take("backup_policy", str, "") or None
    if policy is not None and policy not in BACKUP_POLICIES:
        raise ConfigError(
            table.key("backup_policy"),
            f"must be one of {', '.join(BACKUP_POLICIES)}, got {policy!r}",
        )
    table.done()
    return PairDecl(name, target.name, source.lun, dest.lun, policy, key)


def _group(value: object, key: str, targets: tuple[TargetConfig, ...]) -> GroupDecl:
    table = _Table(value, key)
    name = _name(table, "group")
    target = _target_of(table, targets)
    members = table.take("pairs", list, [])
    if not members or not all(isinstance(m, str) for m in members):
        raise ConfigError(table.key("pairs"), "a non-empty array of [[pair]] names is required")
    table.done()
    return GroupDecl(name, target.name, tuple(members), key)


def parse_declarations(
    raw_pairs: object, raw_groups: object, targets: tuple[TargetConfig, ...]
) -> tuple[tuple[PairDecl, ...], tuple[GroupDecl, ...]]:
    """The ``[[pair]]`` and ``[[group]]`` arrays, checked against the targets and each
    other: a target LUN in two pairs, a fourth pair of one source LUN, a name twice on one
    target, a group naming a pair that is not declared (or one already in another group)
    are errors naming the entry."""
    for key, raw in (("pair", raw_pairs), ("group", raw_groups)):
        if not isinstance(raw, list):
            raise ConfigError(
                key, f"expected an array of tables ([[{key}]]), got {_type_name(raw)}"
            )
    assert isinstance(raw_pairs, list) and isinstance(raw_groups, list)
    pairs = tuple(_pair(v, f"pair[{i}]", targets) for i, v in enumerate(raw_pairs))
    names: dict[tuple[str, str], str] = {}
    luns: dict[tuple[str, int], str] = {}  # target LUNs
    primaries: dict[tuple[str, int], list[str]] = {}  # source LUNs: their pairs
    for p in pairs:
        if (p.target, p.name) in names:
            raise ConfigError(
                f"{p.key}.name", f"{p.name!r} already declared by {names[(p.target, p.name)]}"
            )
        names[(p.target, p.name)] = p.key
        # A target LUN (secondary) is in one pair; a source LUN (primary) is the source of
        # up to MAX_SECONDARIES pairs and no pair's target.
        if (p.target, p.target_lun) in luns or (p.target, p.target_lun) in primaries:
            other = luns.get((p.target, p.target_lun)) or primaries[(p.target, p.target_lun)][0]
            raise ConfigError(f"{p.key}.target_lun", f"LUN {p.target_lun} is already in {other}")
        if (p.target, p.source_lun) in luns:
            raise ConfigError(
                f"{p.key}.source_lun",
                f"LUN {p.source_lun} is already in {luns[(p.target, p.source_lun)]}",
            )
        mine = primaries.setdefault((p.target, p.source_lun), [])
        if len(mine) >= MAX_SECONDARIES:
            raise ConfigError(
                f"{p.key}.source_lun",
                f"LUN {p.source_lun} is the source of {len(mine)} pairs already"
                f" ({', '.join(mine)}): at most {MAX_SECONDARIES} secondaries per primary",
            )
        mine.append(p.key)
        luns[(p.target, p.target_lun)] = p.key
    groups = tuple(_group(v, f"group[{i}]", targets) for i, v in enumerate(raw_groups))
    group_names: dict[tuple[str, str], str] = {}
    member_of: dict[tuple[str, str], str] = {}
    for g in groups:
        if (g.target, g.name) in group_names:
            raise ConfigError(
                f"{g.key}.name", f"{g.name!r} already declared by {group_names[(g.target, g.name)]}"
            )
        group_names[(g.target, g.name)] = g.key
        for member in g.pairs:
            if (g.target, member) not in names:
                raise ConfigError(f"{g.key}.pairs", f"{member!r} is no [[pair]] of {g.target}")
            if (g.target, member) in member_of:
                raise ConfigError(
                    f"{g.key}.pairs",
                    f"pair {member!r} is already in {member_of[(g.target, member)]}",
                )
            member_of[(g.target, member)] = g.key
    return pairs, groups


def _policy(name: str | None) -> BackupPolicy | None:
    return None if name is None else BackupPolicy.parse(name)


async def apply(
    service: PairService, config: Config, previous: Config | None = None
) -> dict[str, list[str]]:
    """Create what the configuration declares and does not exist yet; report (log, and
    return as messages: ``applied`` and ``refused``, as a reload answers) every
    declaration that does not match what exists, and every pair or group a reload took
    out of the file. Never deletes; the one change made to an existing pair is a reload's
    new ``backup_policy`` of its ``[[pair]]``, and only while the pair still has the
    policy the file gave it before (one set since by targetctl or PAIR OUT wins)."""
    messages: dict[str, list[str]] = {"applied": [], "refused": []}

    def report(level: int, message: str) -> None:
        messages["applied" if level <= logging.INFO else "refused"].append(message)
        log.log(level, "declared pairs", extra=logs.fields(change=message))

    manager = service.manager
    before = {} if previous is None else {(p.target, p.name): p for p in previous.declared_pairs}
    for p in config.declared_pairs:
        source, dest = volume_id(p.target, p.source_lun), volume_id(p.target, p.target_lun)
        existing = manager.pairs.get((p.target, p.name))
        where = f"{p.key} {p.name!r}"
        if existing is not None:
            if (existing.source.volume_id, existing.target.volume_id) != (source, dest):
                report(
                    logging.ERROR,
                    f"{where}: declared LUN {p.source_lun} -> LUN {p.target_lun}, but the existing"
                    f" pair is {existing.source.volume_id} -> {existing.target.volume_id};"
                    " left as it is (delete it to have the declared one)",
                )
                continue
            old = before.get((p.target, p.name))
            if old is not None and old.backup_policy != p.backup_policy:
                await _reload_policy(service, report, where, existing.backup_policy, old, p)
            continue
        # A primary may have up to 3 secondaries (the 4th is refused by create, below);
        # a volume that is a pair's secondary is in no other pair.
        others = [
            (v, o)
            for v in (source, dest)
            if (o := service.pair_of(v)) is not None and (v == dest or o.target.volume_id == v)
        ]
        if others:
            volume, other = others[0]
            report(logging.ERROR, f"{where}: not created: {volume} is in pair {other.name!r}")
            continue
        policy = None if p.backup_policy is None else BackupPolicy.parse(p.backup_policy)
        try:
            await service.create(p.name, source, dest, policy, access=UNCHECKED)
        except PairError as err:
            report(logging.ERROR, f"{where}: not created: {err}")
            continue
        report(logging.INFO, f"{where}: created, LUN {p.source_lun} -> LUN {p.target_lun}")
    for g in config.declared_groups:
        where = f"{g.key} {g.name!r}"
        current = manager.groups.get((g.target, g.name))
        if current is not None:
            if tuple(current) != g.pairs:
                report(
                    logging.ERROR,
                    f"{where}: declared with pairs {', '.join(g.pairs)}, but the existing group"
                    f" has {', '.join(current) or 'none'}; left as it is"
                    " (targetctl group add/remove changes it)",
                )
            continue
        try:
            await service.create_group(g.name, g.target, g.pairs, access=UNCHECKED)
        except PairError as err:
            report(logging.ERROR, f"{where}: not created: {err}")
            continue
        report(logging.INFO, f"{where}: created with pairs {', '.join(g.pairs)}")
    if previous is not None:
        _undeclared(report, "pair", previous.declared_pairs, config.declared_pairs, manager.pairs)
        _undeclared(
            report, "group", previous.declared_groups, config.declared_groups, manager.groups
        )
    return messages


def _undeclared(
    report: Callable[[int, str], None],
    kind: str,
    before: Sequence[PairDecl | GroupDecl],
    now: Sequence[PairDecl | GroupDecl],
    existing: Container[tuple[str, str]],
) -> None:
    """A pair or group the file declared before this reload and no longer does is left as
    it is (the configuration only creates); say so."""
    kept = {(d.target, d.name) for d in now}
    for d in before:
        if (d.target, d.name) not in kept and (d.target, d.name) in existing:
            report(
                logging.WARNING,
                f"{kind} {d.name!r} is no longer declared: left as it is"
                f" (targetctl {kind} delete ends it)",
            )


async def _reload_policy(
    service: PairService,
    report: Callable[[int, str], None],
    where: str,
    current: BackupPolicy | None,
    old: PairDecl,
    new: PairDecl,
) -> None:
    """A reload changed a declared pair's ``backup_policy``: the pair takes it, unless its
    policy was changed since the file last set it."""
    shown = new.backup_policy or "none of its own (the [pairs] one)"
    if current != _policy(old.backup_policy):
        label = "none" if current is None else current.label
        report(
            logging.WARNING,
            f"{where}: backup_policy {shown} not applied: the pair's policy was set to"
            f" {label} since (targetctl pair policy changes it)",
        )
        return
    try:
        await service.set_backup_policy(
            _policy(new.backup_policy), access=UNCHECKED, name=new.name, scope=new.target
        )
    except (PairError, OSError) as err:
        report(logging.ERROR, f"{where}: backup_policy {shown} not applied: {err}")
        return
    report(logging.INFO, f"{where}: backup_policy {shown}")


__all__ = ["apply", "parse_declarations"]
