"""backing/durable.py: a file replaced whole, with the mode asked for and no temporary left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from backing.durable import replace_file, sync_directory


def test_a_replaced_file_holds_the_new_bytes_and_no_temporary_is_left(tmp_path: Path) -> None:
    path = tmp_path / "groups.json"
    path.write_bytes(b"old contents, longer than the new")
    replace_file(path, b"new", mode=0o600)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["groups.json"]


def test_the_mode_is_less_the_umask_and_the_temporary_may_be_named(tmp_path: Path) -> None:
    path = tmp_path / "inventory.json"
    old = os.umask(0o022)
    try:
        replace_file(path, b"{}" * 100_000, mode=0o666, tmp=path.with_suffix(".json.tmp"))
    finally:
        os.umask(old)
    assert path.read_bytes() == b"{}" * 100_000
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inventory.json"]
    sync_directory(tmp_path)  # a directory syncs; a file is refused
    with pytest.raises(NotADirectoryError):
        sync_directory(path)
