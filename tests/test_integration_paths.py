"""Where the daemon's files go, seen as an operator starts it from a shell: the default
configuration and a relative --state-dir put each LUN file in one place, and the paths
``targetctl status`` prints are files that exist. targetctl's global options go before or
after the subcommand. A read-only LUN whose image is missing is a configuration error."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, free_port

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


class Shell:
    """Commands run from one working directory, as a user at a prompt would."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.daemons: list[subprocess.Popen[bytes]] = []

    def serve(self, *args: str) -> int:
        port = free_port()
        argv = [sys.executable, "-m", "targetd", "serve", "--listen", f"127.0.0.1:{port}"]
        log = (self.cwd / f"targetd{len(self.daemons)}.log").open("wb")
        proc = subprocess.Popen(
            [*argv, *args], cwd=self.cwd, env=ENV, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        self.daemons.append(proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"targetd exited {proc.returncode}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return port
            except OSError:
                time.sleep(0.1)
        pytest.fail("targetd did not listen")

    def targetctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "targetd.ctl", *args],
            cwd=self.cwd,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def stop(self) -> None:
        for proc in self.daemons:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    sh = Shell(tmp_path)
    yield sh
    sh.stop()


def status_paths(sh: Shell, *args: str) -> list[Path]:
    proc = sh.targetctl(*args)
    assert proc.returncode == 0, proc.stderr
    return [Path(lun["path"]) for lun in json.loads(proc.stdout)["luns"]]


def test_default_configuration_names_files_that_exist(shell: Shell) -> None:
    shell.serve()
    paths = status_paths(shell, "status", "--json", "--state-dir", "var/targetd")
    state = shell.cwd / "var/targetd"
    assert sorted(paths) == [state / "lun0.img", state / "lun1.img", state / "tape0.img"]
    assert all(p.is_file() for p in paths), paths
    assert not (state / "var").exists()
    # docs/tape.md lists the tape with this very path, from the directory the daemon ran in.
    proc = subprocess.run(
        [sys.executable, "-m", "targetd.ctl", "tape", "list", "var/targetd/tape0.img"],
        cwd=shell.cwd, env=ENV, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_relative_state_dir_is_applied_once(shell: Shell) -> None:
    config = shell.cwd / "targetd.toml"
    config.write_text(
        '[[target]]\nname = "iqn.2026-11.org.test:paths"\n'
        '[[target.lun]]\nlun = 0\npath = "a.img"\nsize = "16MiB"\n'
    )
    shell.serve("--config", "targetd.toml", "--state-dir", "st")
    assert (shell.cwd / "st/a.img").is_file()
    assert not (shell.cwd / "st/st").exists()
    # Global options before the subcommand, as git and kubectl take them.
    assert status_paths(shell, "--state-dir", "st", "--json", "status") == [shell.cwd / "st/a.img"]
    proc = shell.targetctl("--state-dir", "st", "pair", "status", "--json")
    assert (proc.returncode, json.loads(proc.stdout)) == (0, []), proc.stderr
    proc = shell.targetctl("--socket", "st/admin.sock", "pair", "status")
    assert proc.returncode == 0, proc.stderr
    # Where both are given, the subcommand's own option wins.
    proc = shell.targetctl("--state-dir", "nowhere", "status", "--state-dir", "st")
    assert proc.returncode == 0, proc.stderr


def test_global_option_for_a_command_without_it_is_refused(shell: Shell) -> None:
    proc = shell.targetctl("--state-dir", "st", "tape", "list", "x.img")
    assert proc.returncode == 2
    assert "--state-dir does not apply" in proc.stderr


def test_read_only_lun_without_its_image_exits_2_naming_the_key(shell: Shell) -> None:
    config = shell.cwd / "targetd.toml"
    config.write_text(
        '[[target]]\nname = "iqn.2026-11.org.test:ro"\n'
        '[[target.lun]]\nlun = 0\nsize = "16MiB"\n'
        '[[target.lun]]\nlun = 1\npath = "missing.img"\nread_only = true\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "targetd", "serve", "--config", "targetd.toml",
         "--listen", f"127.0.0.1:{free_port()}"],
        cwd=shell.cwd, env=ENV, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "target[0].lun[1].path" in proc.stderr
    assert "missing.img" in proc.stderr
    assert "Traceback" not in proc.stderr
