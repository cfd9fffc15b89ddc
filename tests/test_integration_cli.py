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
    # One line a person reads, besides the log's event (which may be going to the journal).
    said = [line for line in proc.stderr.splitlines() if line.startswith("targetd: ")]
    assert said == [
        "targetd: cannot listen: error while attempting to bind on address "
        f"('127.0.0.1', {targetd.port}): address already in use (another target, targetd or "
        "tgtd, on that port? --listen HOST:PORT picks another)"
    ], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_second_daemon_on_the_same_state_dir_is_refused(targetd: Daemon) -> None:
    """Two daemons on one state directory would serve the same LUN files and pair bitmaps,
    and the second took the first's admin socket away (its stop removed it)."""
    argv = [sys.executable, "-m", "targetd", "serve", "--state-dir", str(targetd.state_dir)]
    proc = subprocess.run(
        [*argv, "--listen", f"127.0.0.1:{free_port()}"],
        cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=20,
    )  # fmt: skip
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert targetd.proc is not None
    assert proc.stderr == (
        f"targetd: state directory {targetd.state_dir} is in use by another targetd (pid "
        f"{targetd.proc.pid}): stop it, or give this one its own --state-dir\n"
    )
    # The first daemon still answers on its admin socket.
    assert targetd.targetctl("status").returncode == 0


def test_a_state_dir_that_cannot_be_one_is_a_one_line_message(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a directory\n")
    for state_dir, why in [
        (a_file, "exists and is not a directory"),
        (a_file / "below", "Not a directory"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "targetd", "serve", "--state-dir", str(state_dir)],
            cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=20,
        )  # fmt: skip
        assert proc.returncode == EXIT_CONFIG, proc.stderr
        assert proc.stderr == f"targetd: state directory {state_dir}: {why}\n"


def test_the_lock_goes_with_the_daemon(targetd: Daemon, tmp_path: Path) -> None:
    """kill -9 leaves no stale lock: the next daemon on the directory starts."""
    assert targetd.proc is not None
    targetd.proc.kill()
    targetd.proc.wait(timeout=10)
    assert (targetd.state_dir / "targetd.lock").read_text() == f"{targetd.proc.pid}\n"
    targetd.start()
    assert targetd.targetctl("status").returncode == 0


def test_status_shows_each_default_lun_as_a_user_reads_it(targetd: Daemon) -> None:
    """Disks show their block size; the tape shows its capacity (it had '512-byte blocks',
    a size a variable-block tape does not have)."""
    done = targetd.targetctl("status")
    assert done.returncode == 0, done.stderr
    state = targetd.state_dir.resolve()
    shown = [line for line in done.stdout.splitlines() if line.startswith(f"  {targetd.iqn} lun")]
    assert shown == [
        f"  {targetd.iqn} lun 0: block 1 GiB (512-byte blocks) {state}/lun0.img",
        f"  {targetd.iqn} lun 1: block 1 GiB (512-byte blocks) {state}/lun1.img",
        f"  {targetd.iqn} lun 2: tape 8 GiB (capacity) {state}/tape0.img",
    ]
