"""Fixtures for every test folder: small tmpfs mounts, so tmpfs behaviour (no RWF_NOWAIT
reads) and a full file system are tested on the real kernel, not imitated.

This is the only conftest.py besides tests/conftest.py: integration tests import helpers
from that one by the name ``conftest``, and pytest keeps one module of that name, the last
conftest it loaded. A conftest.py in another tests/ folder would take the name over.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TmpfsFactory = Callable[..., Path]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[TmpfsFactory]:
    """``tmpfs(size="16m") -> Path``: a fresh tmpfs mounted under tmp_path (needs root, as
    the test run has), unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str = "16m") -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs (the tests run as root): {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)
