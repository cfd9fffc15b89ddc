"""SIGHUP planning: what a changed configuration may change in a running daemon."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from targetd.config import ChapSecret, Config, LunConfig, PairConfig, Portal, TargetConfig
from targetd.operations import Operations
from targetd.reload import plan
from targetd.server import TargetServer
from xcopy import pacing

A = "iqn.2026-11.org.x:a"
B = "iqn.2026-11.org.x:b"


def config(*targets: TargetConfig, **kw: object) -> Config:
    return Config(targets=targets, state_dir=Path("/s"), **kw)  # type: ignore[arg-type]


def target(name: str, *luns: int, **kw: object) -> TargetConfig:
    return TargetConfig(name, luns=tuple(LunConfig(n, path=Path(f"/s/{n}")) for n in luns), **kw)  # type: ignore[arg-type]


def test_acl_chap_and_additions_apply() -> None:
    old = config(target(A, 0))
    new = config(
        target(
            A, 0, 1, allowed_initiators=("iqn.2026-11.org.x:h",), chap=ChapSecret("u", "s" * 12)
        ),
        target(B, 0),
    )
    result = plan(old, new)
    assert result.applied == [
        f"target {A}: allowed_initiators updated",
        f"target {A}: CHAP updated",
        f"target {A}: lun 1 added",
        f"target {B} added",
    ]
    assert result.refused == []
    assert [t.name for t in result.new_targets] == [B]
    assert [(name, lun.lun) for name, lun in result.new_luns] == [(A, 1)]
    assert result.config == new


def test_unsafe_changes_keep_running_values() -> None:
    old = config(target(A, 0, 1), target(B, 0))
    resized = replace(old.targets[0].luns[0], path=Path("/s/moved"))
    new = config(
        replace(old.targets[0], luns=(resized,)),
        portals=(Portal("127.0.0.1", 3261),),
        max_sessions=4,
        buffers_per_session=128 << 20,
    )
    result = plan(old, new)
    assert result.refused == [
        "portals changed: needs a restart",
        "max_sessions changed: needs a restart",
        "buffers_per_session changed: needs a restart",
        f"target {A}: lun 0 changed: needs a restart",
    ]
    assert result.applied == [
        f"target {A}: lun 1 removed: its sessions are asked to log out",
        f"target {B} removed: its sessions are logged out",
    ]
    assert (result.removed_luns, result.removed_targets) == ([(A, 1)], [B])
    assert result.config.portals == old.portals
    assert result.config.max_sessions == old.max_sessions
    assert result.config.targets == (replace(old.targets[0], luns=old.targets[0].luns[:1]),)


def test_a_larger_size_grows_a_block_lun_and_nothing_else_does() -> None:
    old = config(target(A, 0, 1, 2, 3), target(B, 0, 1))
    luns = old.targets[0].luns
    tape = LunConfig(4, kind="tape", path=Path("/s/4"), size=8 << 30)
    old = config(replace(old.targets[0], luns=(*luns, tape)), old.targets[1])
    grown = replace(luns[0], size=2 << 30)
    shrunk = replace(luns[1], size=512 << 20)
    grown_and_moved = replace(luns[2], size=2 << 30, path=Path("/s/moved"))
    paired = replace(luns[3], size=2 << 30)
    new = config(
        replace(
            old.targets[0],
            luns=(grown, shrunk, grown_and_moved, paired, replace(tape, size=16 << 30)),
        ),
        replace(old.targets[1], luns=(replace(old.targets[1].luns[0], size=3 << 30),)),
    )
    result = plan(old, new, lambda t, lun: "db" if (t, lun) == (A, 3) else None)
    assert result.applied == [
        f"target {A}: lun 0 grown from 1073741824 to 2147483648 bytes",
        f"target {B}: lun 0 grown from 1073741824 to 3221225472 bytes",
        f"target {B}: lun 1 removed: its sessions are asked to log out",
    ]
    assert result.refused == [
        f"target {A}: lun 1: size 536870912 bytes is smaller than the running 1073741824: a"
        " LUN only grows (shrinking would lose the data past the new end under the hosts);"
        " still 1073741824 bytes",
        f"target {A}: lun 2 changed: needs a restart",
        f"target {A}: lun 3: size changed: it is in pair db, whose volumes keep equal sizes"
        " (delete the pair, grow both LUNs, create it again); still 1073741824 bytes",
        f"target {A}: lun 4: size changed: a tape's capacity is the one its image was made"
        " with; still 8589934592 bytes",
    ]
    assert result.grown == [(A, grown), (B, new.targets[1].luns[0])]
    assert result.config.targets[0].luns == (grown, luns[1], luns[2], luns[3], tape)


def test_a_paired_lun_and_its_target_stay() -> None:
    old = config(target(A, 0, 1, 2), target(B, 0, 1))
    new = config(target(A, 0))
    in_pair = {(A, 1): "db", (B, 0): "logs"}
    result = plan(old, new, lambda t, lun: in_pair.get((t, lun)))
    assert result.refused == [
        f"target {A}: lun 1 removed: it is in pair db (delete the pair first): still served",
        f"target {B} removed: its lun 0 is in pair logs (delete the pair first): still served",
    ]
    assert result.applied == [f"target {A}: lun 2 removed: its sessions are asked to log out"]
    assert (result.removed_luns, result.removed_targets) == ([(A, 2)], [])
    assert [(t.name, [lun.lun for lun in t.luns]) for t in result.config.targets] == [
        (A, [0, 1]),
        (B, [0, 1]),
    ]


@pytest.fixture
def restore_priority() -> Iterator[None]:
    yield
    pacing.set_priority("background")


@pytest.mark.usefixtures("restore_priority")
def test_backup_priority_applies_at_start_and_on_reload() -> None:
    normal = config(pairs=PairConfig(backup_priority="normal"))
    background = config()
    loaded = [background]

    async def run() -> list[tuple[dict[str, list[str]], str]]:
        ops = Operations(TargetServer(normal, {}), loader=lambda: loaded[0])
        assert pacing.priority() == "normal"  # at start
        first = (ops.reload(), pacing.priority())
        loaded[0] = normal
        return [first, (ops.reload(), pacing.priority())]

    assert asyncio.run(run()) == [
        (
            {
                "applied": ["pairs.backup_priority: background (each copy job from now on)"],
                "refused": [],
            },
            "background",
        ),
        (
            {
                "applied": ["pairs.backup_priority: normal (each copy job from now on)"],
                "refused": [],
            },
            "normal",
        ),
    ]


def test_every_pairs_setting_is_applied_by_a_reload_and_said_so() -> None:
    old = config(pairs=PairConfig())
    new = config(
        pairs=PairConfig(
            chunk_size=128 * 1024,
            copy_workers=4,
            copy_rate=1 << 20,
            backup_policy="wait",
            backup_policies=(("db", "merge"),),
            rbd_snapshot_split=False,
            clear_delay_ms=1000,
        )
    )
    result = plan(old, new)
    assert result.config.pairs == new.pairs
    assert result.refused == []
    assert result.applied == [
        "pairs.chunk_size: 131072 (pairs created from now on; an existing pair keeps its own)",
        "pairs.copy_workers: 4 (every pair's copy workers)",
        "pairs.copy_rate: 1048576 (every pair's background copy)",
        "pairs.backup_policy: wait (backups of pairs with no backup policy of their own)",
        "pairs.backup_policies: db = merge (backups of pairs with no backup policy of their own)",
        "pairs.rbd_snapshot_split: False (splits from now on)",
        "pairs.clear_delay_ms: 1000 (every pair's lazy clearing)",
    ]
