"""``[[pair]]`` and ``[[group]]``: each bad declaration is an error naming the entry."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from targetd.config import ConfigError, GroupDecl, PairDecl, parse_config

IQN = "iqn.2026-11.org.targetd:cfg"
TARGET = f"""
[[target]]
name = "{IQN}"
[[target.lun]]
lun = 0
size = "8MiB"
[[target.lun]]
lun = 1
size = "8MiB"
[[target.lun]]
lun = 2
size = "8MiB"
[[target.lun]]
lun = 3
size = "4MiB"
[[target.lun]]
lun = 4
kind = "tape"
[[target.lun]]
lun = 5
size = "8MiB"
[[target.lun]]
lun = 6
size = "8MiB"
"""


def parse(text: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    return parse_config(tomllib.loads(TARGET + text), base_dir=tmp_path, state_dir=tmp_path)


def test_pairs_and_groups_are_read(tmp_path: Path) -> None:
    config = parse(
        """
[[pair]]
name = "data"
source_lun = 0
target_lun = 1
backup_policy = "merge"
[[group]]
name = "db"
pairs = ["data"]
""",
        tmp_path,
    )
    assert config.declared_pairs == (PairDecl("data", IQN, 0, 1, "merge", "pair[0]"),)
    assert config.declared_groups == (GroupDecl("db", IQN, ("data",), "group[0]"),)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[[pair]]\nname = "a b"\nsource_lun = 0\ntarget_lun = 1\n', "pair[0].name", "pair name"),
        ('[[pair]]\nname = "a"\ntarget_lun = 1\n', "pair[0].source_lun", "missing"),
        ('[[pair]]\nname = "a"\nsource_lun = 0\ntarget_lun = 9\n', "pair[0].target_lun",
         "LUN 9 is no block LUN"),
        ('[[pair]]\nname = "a"\nsource_lun = 0\ntarget_lun = 4\n', "pair[0].target_lun",
         "LUN 4 is no block LUN"),
        ('[[pair]]\nname = "a"\nsource_lun = 0\ntarget_lun = 0\n', "pair[0].target_lun",
         "the same LUN"),
        ('[[pair]]\nname = "a"\nsource_lun = 0\ntarget_lun = 3\n', "pair[0].target_lun",
         "sizes differ"),
        ('[[pair]]\nname = "a"\nsource_lun = 0\ntarget_lun = 1\ntarget = "iqn.2026-11.x:y"\n',
         "pair[0].target", "no [[target]] named"),
        ('[[pair]]\nname = "a"\nsource_lun = 0\ntarget_lun = 1\nbackup_policy = "fast"\n',
         "pair[0].backup_policy", "must be one of"),
        ('[[pair]]\nname = "a"\nsource_lun = 0\ntarget_lun = 1\ncolour = 1\n', "pair[0].colour",
         "unknown key"),
        ('[[pair]]\nname = "a"\nsource_lun = 0\ntarget_lun = 1\n'
         '[[pair]]\nname = "a"\nsource_lun = 2\ntarget_lun = 0\n', "pair[1].name",
         "already declared by pair[0]"),
        ('[[pair]]\nname = "a"\nsource_lun = 0\ntarget_lun = 1\n'
         '[[pair]]\nname = "b"\nsource_lun = 2\ntarget_lun = 1\n', "pair[1].target_lun",
         "LUN 1 is already in pair[0]"),
        ('[[pair]]\nname = "a"\nsource_lun = 0\ntarget_lun = 1\n'
         '[[pair]]\nname = "b"\nsource_lun = 1\ntarget_lun = 2\n', "pair[1].source_lun",
         "LUN 1 is already in pair[0]"),
        ('[[pair]]\nname = "a"\nsource_lun = 0\ntarget_lun = 1\n'
         '[[pair]]\nname = "b"\nsource_lun = 2\ntarget_lun = 0\n', "pair[1].target_lun",
         "LUN 0 is already in pair[0]"),
        ('[[pair]]\nname = "a"\nsource_lun = 0\ntarget_lun = 1\n'
         '[[pair]]\nname = "b"\nsource_lun = 0\ntarget_lun = 2\n'
         '[[pair]]\nname = "c"\nsource_lun = 0\ntarget_lun = 5\n'
         '[[pair]]\nname = "d"\nsource_lun = 0\ntarget_lun = 6\n', "pair[3].source_lun",
         "LUN 0 is the source of 3 pairs already (pair[0], pair[1], pair[2]):"
         " at most 3 secondaries per primary"),
        ('[[group]]\nname = "g"\npairs = ["x"]\n', "group[0].pairs", "'x' is no [[pair]]"),
        ('[[group]]\nname = "g"\npairs = []\n', "group[0].pairs", "non-empty"),
        ('[[pair]]\nname = "a"\nsource_lun = 0\ntarget_lun = 1\n'
         '[[group]]\nname = "g"\npairs = ["a"]\n[[group]]\nname = "h"\npairs = ["a"]\n',
         "group[1].pairs", "pair 'a' is already in group[0]"),
    ],
)  # fmt: skip
def test_a_bad_declaration_names_its_entry(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse(text, tmp_path)
    assert err.value.key == key
    assert problem in err.value.problem


@pytest.mark.parametrize(
    ("text", "expected"), [("", True), ("rbd_snapshot_split = false\n", False)]
)
def test_rbd_snapshot_split_reaches_the_engine(tmp_path: Path, text: str, expected: bool) -> None:
    from targetd.pairs import pair_settings

    config = parse("[pairs]\n" + text, tmp_path)
    assert config.pairs.rbd_snapshot_split is expected
    assert pair_settings(config).snapshot_split is expected


def test_rbd_snapshot_split_must_be_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse('[pairs]\nrbd_snapshot_split = "yes"\n', tmp_path)
    assert err.value.key == "pairs.rbd_snapshot_split"


@pytest.mark.parametrize(("text", "expected"), [("", 5.0), ("clear_delay_ms = 200\n", 0.2)])
def test_clear_delay_reaches_the_engine(tmp_path: Path, text: str, expected: float) -> None:
    from targetd.pairs import pair_settings

    assert pair_settings(parse("[pairs]\n" + text, tmp_path)).clear_delay == expected


@pytest.mark.parametrize("value", ["99", "600001", '"5s"'])
def test_clear_delay_out_of_range_names_the_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(f"[pairs]\nclear_delay_ms = {value}\n", tmp_path)
    assert err.value.key == "pairs.clear_delay_ms"
