"""``targetd serve`` as an operator meets it: logs, exit codes, signals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, Daemon, free_port

EXIT_CONFIG = 2


def serve(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run a daemon that is expected to give up at once."""
    argv = [sys.executable, "-m", "targetd", "serve", "--state-dir", str(tmp_path / "state")]
    return subprocess.run(
        [*argv, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=20,
        check=False,
    )


def test_logs_target_and_portal(targetd: Daemon) -> None:
    assert targetd.iqn in targetd.stderr
    assert f"127.0.0.1:{targetd.port}" in targetd.stderr


def test_sigterm_stops_cleanly(targetd: Daemon) -> None:
    assert targetd.stop() == 0, targetd.stderr


def test_default_luns_are_sparse_files_in_the_state_dir(targetd: Daemon) -> None:
    images = sorted(p for p in targetd.state_dir.rglob("*") if p.is_file() and p.stat().st_size)
    sizes = [p.stat().st_size for p in images]
    assert sizes.count(1 << 30) == 2, images
    for image in images:
        if image.stat().st_size == 1 << 30:
            assert image.stat().st_blocks * 512 < 1 << 20, f"{image} is not sparse"


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[[target]]\nname = "iqn.2026-11.Org.Bad"\n[[target.lun]]\nlun = 0\n', "target[0].name"),
        (
            '[[target]]\nname = "iqn.2026-11.org.x:t"\n[[target.lun]]\nlun = 0\nsize = "lots"\n',
            "target[0].lun[0].size",
        ),
        ('colour = "blue"\n', "colour"),
        ("[[target]\n", "config"),  # not TOML at all
    ],
)
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    proc = serve("--config", str(config), "--listen", f"127.0.0.1:{free_port()}", tmp_path=tmp_path)
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert key in proc.stderr, proc.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    proc = serve("--config", str(tmp_path / "absent.toml"), tmp_path=tmp_path)
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert "absent.toml" in proc.stderr, proc.stderr


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:99999", "127.0.0.1:port", "127.0.0.1:"])
def test_bad_listen_exits_2(tmp_path: Path, listen: str) -> None:
    proc = serve("--listen", listen, tmp_path=tmp_path)
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert "--listen" in proc.stderr, proc.stderr


def test_port_in_use_fails_with_a_message(targetd: Daemon, tmp_path: Path) -> None:
    proc = serve("--listen", targetd.portal, tmp_path=tmp_path)
    assert proc.returncode != 0
    assert str(targetd.port) in proc.stderr, proc.stderr
