"""Tape LUN keys in the configuration: capacity as another name for size, its minimum."""

from __future__ import annotations

from pathlib import Path

import pytest

from targetd.config import ConfigError, load_config

TARGET = '[[target]]\nname = "iqn.2026-11.org.example:t"\n[[target.lun]]\nlun = 0\nkind = "tape"\n'


def load(tmp_path: Path, extra: str):
    path = tmp_path / "c.toml"
    path.write_text(TARGET + extra)
    return load_config(path)


def test_tape_capacity_key_and_default(tmp_path: Path) -> None:
    assert load(tmp_path, 'capacity = "2GiB"\n').targets[0].luns[0].size == 2 << 30
    assert load(tmp_path, 'size = "1MiB"\n').targets[0].luns[0].size == 1 << 20
    assert load(tmp_path, "").targets[0].luns[0].size == 8 << 30


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ('capacity = "1GiB"\nsize = "1GiB"\n', "target[0].lun[0].capacity", "not both"),
        ('capacity = "4KiB"\n', "target[0].lun[0].size", "at least 65536"),
        ('capacity = "1GB"\n', "target[0].lun[0].size", "expected a size"),
    ],
)
def test_bad_tape_capacity(tmp_path: Path, extra: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, extra)
    assert err.value.key == key and problem in err.value.problem
