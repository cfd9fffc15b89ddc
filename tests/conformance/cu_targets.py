"""Starts and stops the targets the conformance tier runs against: targetd, and tgt as the peer.

Each launcher owns one process on a loopback port it picked, serves one disk LUN, and is a
context manager, so a test or a script cannot leave a daemon behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGETD_IQN = "iqn.2026-11.org.targetd:default"
TGT_IQN = "iqn.2026-11.org.targetd:tgt-peer"
MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"target exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _control_free(n: int) -> bool:
    """tgtd holds a POSIX lock on socket.N.lock while it runs; stale files stay after it exits."""
    lock = Path(f"/var/run/tgtd/socket.{n}.lock")
    if not lock.exists():
        return True
    with open(lock, "ab") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.lockf(f, fcntl.LOCK_UN)
        return True


class Target:
    """Common shape: ``url`` to hand to iscsi-test-cu, ``name`` for reports, ``alive()``."""

    name = "target"
    url = ""
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path
    _own_workdir = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class TargetdTarget(Target):
    """``python3 -m targetd serve`` on a free loopback port with a fresh state directory."""

    def __init__(self, config: Path | None = None, lun: int = 0, workdir: Path | None = None):
        self.config = config
        self.lun = lun
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="targetd-conf-"))
        self.port = free_port()
        self.name = "targetd"
        self.url = f"iscsi://127.0.0.1:{self.port}/{TARGETD_IQN}/{lun}"
        self.log_path = self.workdir / "targetd.log"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "targetd", "serve", "--listen", f"127.0.0.1:{self.port}"]
        cmd += ["--state-dir", str(self.workdir / "state")]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_listening(self.port, self.proc, 20)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


class TgtdTarget(Target):
    """tgt 1.0.x (``tgtd -f``) with one sparse-file LUN; tgt's LUN 0 is its controller."""

    def __init__(self, size: int = 1024 * MiB, workdir: Path | None = None):
        self.size = size
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="tgtd-conf-"))
        self.port = free_port()
        # tgtd's management socket is /var/run/tgtd/socket.N; pick an N no other tgtd uses.
        self.control = next(
            n
            for n in range(1000 + self.port % 5000, 10000)
            if not Path(f"/var/run/tgtd/socket.{n}").exists()
        )
        self.name = "tgt"
        self.url = f"iscsi://127.0.0.1:{self.port}/{TGT_IQN}/1"
        self.log_path = self.workdir / "tgtd.log"

    def _adm(self, *args: str) -> None:
        subprocess.run(
            ["tgtadm", "-C", str(self.control), *args],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def start(self) -> None:
        image = self.workdir / "tgt-lun1.img"
        with open(image, "wb") as f:
            f.truncate(self.size)
        cmd = ["tgtd", "-f", "-C", str(self.control), "--iscsi", f"portal=127.0.0.1:{self.port}"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(self.port, self.proc, 20)
            self._adm(
                "--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "1", "-T", TGT_IQN
            )
            self._adm(
                "--lld",
                "iscsi",
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--tid",
                "1",
                "--lun",
                "1",
                "-b",
                str(image),
            )
            self._adm(
                "--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            # tgtd ignores SIGTERM: ask it to exit, then make sure by PID.
            # tgtd refuses to leave while it has targets, so they go first.
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._adm(
                    "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1", "--force"
                )
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._adm("--op", "delete", "--mode", "system")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    @staticmethod
    def version() -> str:
        out = subprocess.run(["tgtd", "-V"], capture_output=True, text=True, check=False)
        return (out.stdout or out.stderr).strip()


def make_target(kind: str, config: Path | None = None) -> Target:
    if kind == "tgt":
        return TgtdTarget()
    if kind == "targetd":
        return TargetdTarget(config=config)
    raise ValueError(f"unknown target kind {kind!r} (targetd or tgt)")
