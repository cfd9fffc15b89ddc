"""The two targets under comparison, each started on its own loopback port and stopped by PID.

A ``Target`` owns one server process and knows the address of the LUN that the clients hit.
Both start in a scratch directory that the caller deletes afterwards.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
GiB = 1 << 30
TGTD_IQN = "iqn.2026-11.org.targetd.bench:tgtd"
TARGETD_IQN = "iqn.2026-11.org.targetd:default"
# Where tgtd keeps its management sockets, one pair per control port.
TGTD_SOCKET_DIR = Path("/var/run/tgtd")
TGTD_MAX_CONTROL_PORT = 32767


class TargetError(RuntimeError):
    """A target would not start, or would not accept a login."""


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it, so parallel runs do not collide)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TargetError(f"exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TargetError(f"not listening on {LOOPBACK}:{port} after {timeout:.0f}s")


def check_login(portal: str, timeout: float = 15.0) -> str:
    """Log in with libiscsi's iscsi-ls and return its listing (proves the target serves LUNs)."""
    done = subprocess.run(
        ["iscsi-ls", "-s", f"iscsi://{portal}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0 or "Lun:" not in done.stdout:
        raise TargetError(f"iscsi-ls login failed: {done.stdout}{done.stderr}".strip())
    return done.stdout


def stop_pid(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds: only ever the one process we started."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


@dataclass
class Target:
    name: str
    iqn: str
    lun: int
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def portal(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"iscsi://{self.portal}/{self.iqn}/{self.lun}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        stop_pid(self.proc)


@dataclass
class TgtdTarget(Target):
    """STGT's tgtd with one target whose LUN 1 is a sparse file (LUN 0 is tgt's controller)."""

    control_port: int = 0

    @classmethod
    def start(cls, workdir: Path, lun_size: int = GiB) -> TgtdTarget:
        lun_file = workdir / "tgtd-lun1.img"
        with lun_file.open("wb") as f:
            f.truncate(lun_size)
        port = free_port()
        control_port = _free_control_port()
        log_path = workdir / "tgtd.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                ["tgtd", "-f", "-C", str(control_port), "--iscsi", f"portal={LOOPBACK}:{port}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        target = cls("tgtd", TGTD_IQN, 1, port, proc, log_path, control_port)
        try:
            wait_for_port(port, proc, timeout=15)
            target._admin("--op new --mode target --tid 1 -T", TGTD_IQN)
            target._admin("--op new --mode logicalunit --tid 1 --lun 1 -b", str(lun_file))
            target._admin("--op bind --mode target --tid 1 -I ALL")
            check_login(target.portal)
        except BaseException as exc:
            target.stop()
            raise _with_log(exc, target) from exc
        return target

    def _admin(self, options: str, value: str | None = None) -> None:
        """tgtadm on our control port: ``options`` split on spaces, then ``value`` whole."""
        argv = ["tgtadm", "-C", str(self.control_port), "--lld", "iscsi", *options.split()]
        if value is not None:
            argv.append(value)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
        if done.returncode != 0:
            raise TargetError(f"{' '.join(argv)}: {done.stdout}{done.stderr}".strip())

    def stop(self) -> None:
        # tgtd ignores SIGTERM; it exits on a system delete, which it refuses while a target
        # exists. Fall back to signals by PID if the control channel does not answer.
        if self.alive():
            for options in (
                "--op delete --force --mode target --tid 1",
                "--op delete --mode system",
            ):
                try:
                    self._admin(options)
                except (TargetError, subprocess.TimeoutExpired):
                    break
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        stop_pid(self.proc, grace=3)
        for suffix in ("", ".lock"):
            (TGTD_SOCKET_DIR / f"socket.{self.control_port}{suffix}").unlink(missing_ok=True)


def start_configured(
    workdir: Path, name: str, config: str, port: int
) -> subprocess.Popen[bytes]:
    """A targetd daemon on its own configuration file and state dir in ``workdir``, its log
    in ``NAME.log``; returns once it accepts connections on ``port``."""
    path = workdir / f"{name}.toml"
    path.write_text(config)
    argv = [sys.executable, "-m", "targetd", "serve", "--config", str(path)]
    argv += ["--state-dir", str(workdir / f"{name}-state")]
    with (workdir / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(argv, cwd=Path(__file__).resolve().parent.parent,
                                stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
    wait_for_port(port, proc, timeout=60)
    return proc


def _with_log(exc: BaseException, target: Target) -> BaseException:
    """A start failure worth reading: what went wrong plus the end of the server's log."""
    if isinstance(exc, TargetError | subprocess.TimeoutExpired):
        log = f"--- {target.log_path.name} ---\n{target.log_tail()}"
        return TargetError(f"{target.name}: {exc}\n{log}")
    return exc


def _free_control_port() -> int:
    """A control port whose management socket no other tgtd (ours or the system's) holds.

    It names a Unix socket, not a TCP port, and tgtd accepts only 0..32767; low numbers are
    left to hand-started instances and the system's (0).
    """
    while True:
        port = random.randint(10_000, TGTD_MAX_CONTROL_PORT)
        if not (TGTD_SOCKET_DIR / f"socket.{port}").exists():
            return port


class TargetdTarget(Target):
    """targetd with its default configuration: LUN 0 of the default target, 1 GiB sparse."""

    @classmethod
    def start(cls, workdir: Path, repo_root: Path, python: str = sys.executable) -> TargetdTarget:
        port = free_port()
        state_dir = workdir / "targetd-state"
        state_dir.mkdir()
        log_path = workdir / "targetd.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(repo_root), env.get("PYTHONPATH", "")) if p
        )
        argv = [python, "-m", "targetd", "serve", "--listen", f"{LOOPBACK}:{port}"]
        argv += ["--state-dir", str(state_dir)]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv,
                cwd=repo_root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        target = cls("targetd", TARGETD_IQN, 0, port, proc, log_path)
        try:
            wait_for_port(port, proc, timeout=30)
            check_login(target.portal)
        except BaseException as exc:
            target.stop()
            raise _with_log(exc, target) from exc
        return target
