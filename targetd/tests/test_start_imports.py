"""What a daemon start imports: modules only some configurations need load with their first
use, and a missing dependency still fails at import (docs/performance.md, start time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from targetd.iscsi.crc import lazy_module

REPO = Path(__file__).resolve().parents[2]

# Loaded by the first tape, changer or file sink LUN built (targetd.luns), never before.
CONFIG_ONLY = (
    "backing.tape_image",
    "backing.tape_library",
    "backing.tape_s3",
    "backing.tape_s3_store",
    "backing.s3_client",
    "scsi.tape_device",
    "scsi.changer_device",
    "scsi.file_sink",
)


def _loaded_after(code: str) -> dict[str, str]:
    """Each module of interest that ``code`` leaves in sys.modules, with its type's name."""
    names = [*CONFIG_ONLY, "crc32c", "importlib.metadata"]
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps({{n: type(sys.modules[n]).__name__ for n in {names!r} "
        "if n in sys.modules}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    return dict(json.loads(done.stdout))


def test_the_daemon_imports_no_tape_module_and_runs_no_crc32c_code() -> None:
    loaded = _loaded_after("import targetd.cli")
    assert [n for n in CONFIG_ONLY if n in loaded] == []
    # Found (a host without it fails here) but not run: its import reads package metadata.
    assert loaded["crc32c"] == "_LazyModule"
    assert "importlib.metadata" not in loaded


def test_the_first_digest_runs_the_crc32c_package() -> None:
    loaded = _loaded_after(
        "from targetd.iscsi.crc import crc32c\nassert crc32c.crc32c(b'123456789') == 0xE3069283"
    )
    assert loaded["crc32c"] == "module"


def test_a_tape_lun_loads_the_tape_modules(tmp_path: Path) -> None:
    code = (
        "from pathlib import Path\n"
        "from targetd.config import parse_config_text\n"
        "from targetd.luns import build_targets\n"
        f"text = b'''state_dir = \"{tmp_path}\"\n"
        "[[target]]\nname = \"iqn.2026-11.org.targetd:t\"\n"
        "[[target.lun]]\nlun = 0\nkind = \"tape\"\npath = \"t.img\"\nsize = \"1MiB\"\n'''\n"
        f"build_targets(parse_config_text(text, Path('{tmp_path}/c.toml')))"
    )
    loaded = _loaded_after(code)
    assert "scsi.tape_device" in loaded and "backing.tape_image" in loaded


def test_a_missing_module_fails_at_import_not_at_first_use() -> None:
    with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
        lazy_module("no_such_module_here")
