"""Running the real initiator tools (libiscsi utilities, QEMU) from integration tests.

A missing tool is a failure that says how to install it, never a skip: a skipped client
test would read as a passed one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

TOOL_TIMEOUT = 60.0
REPO = Path(__file__).resolve().parent.parent


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run scripts/install-test-deps.sh")
    return path


def run(
    *argv: str,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    timeout: float = TOOL_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run a client tool; with ``check`` a non-zero exit fails the test with its output."""
    require(argv[0])
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        errors="replace",  # iscsi-inq prints binary designators raw
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def targetd_copy(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The host tool, ``targetd-copy ARGS``, from the checkout; with ``check`` it must exit
    0 (the failure shows its output)."""
    proc = subprocess.run(
        [sys.executable, "-m", "hostcopy", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, f"{args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc
