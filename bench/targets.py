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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

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
    # Every (IQN, LUN) the clients may use, when there is more than one target; a case that
    # spreads its sessions over N targets gives session i the (i mod N)-th.
    luns: tuple[tuple[str, int], ...] = ()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lun_of(self, session: int, spread: int = 1) -> tuple[str, int]:
        luns = self.luns or ((self.iqn, self.lun),)
        if spread > len(luns):
            raise TargetError(f"{self.name} serves {len(luns)} target(s), the case needs {spread}")
        return luns[session % spread]

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
    def start(cls, workdir: Path, lun_size: int = GiB, targets: int = 1) -> TgtdTarget:
        """``targets`` targets (tid 1..N), each with LUN 1 on a sparse file of its own."""
        files = [workdir / f"tgtd-t{tid}-lun1.img" for tid in range(1, targets + 1)]
        for lun_file in files:
            with lun_file.open("wb") as f:
                f.truncate(lun_size)
        iqns = [TGTD_IQN if tid == 1 else f"{TGTD_IQN}-{tid}" for tid in range(1, targets + 1)]
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
        luns = tuple((iqn, 1) for iqn in iqns)
        target = cls("tgtd", TGTD_IQN, 1, port, proc, log_path, luns, control_port)

        def configure() -> None:
            for tid, (iqn, lun_file) in enumerate(zip(iqns, files, strict=True), start=1):
                target._admin(f"--op new --mode target --tid {tid} -T", iqn)
                target._admin(f"--op new --mode logicalunit --tid {tid} --lun 1 -b", str(lun_file))
                target._admin(f"--op bind --mode target --tid {tid} -I ALL")

        return ready(target, timeout=15, configure=configure)

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
            tids = range(1, max(1, len(self.luns)) + 1)
            for options in (
                *(f"--op delete --force --mode target --tid {tid}" for tid in tids),
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


def start_configured(workdir: Path, name: str, config: str, port: int) -> subprocess.Popen[bytes]:
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


T = TypeVar("T", bound=Target)


def ready(target: T, timeout: float, configure: Callable[[], None] | None = None) -> T:
    """``target`` once it listens (within ``timeout`` s), is configured and accepts a login;
    if it does not, it is stopped and the error carries the end of its log."""
    try:
        wait_for_port(target.port, target.proc, timeout=timeout)
        if configure is not None:
            configure()
        check_login(target.portal)
    except BaseException as exc:
        target.stop()
        raise _with_log(exc, target) from exc
    return target


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
    def start(
        cls,
        workdir: Path,
        repo_root: Path,
        python: str = sys.executable,
        *,
        targets: int = 1,
        workers: int = 1,
        lun_size: int = GiB,
        name: str = "targetd",
    ) -> TargetdTarget:
        """The default configuration; or ``targets`` targets of one LUN each, served by
        ``workers`` worker processes (docs/workers.md). The code is ``repo_root``'s: it is
        the daemon's working directory and first on its ``PYTHONPATH``."""
        port = free_port()
        state_dir = workdir / "targetd-state"
        state_dir.mkdir()
        iqns = [TARGETD_IQN if t == 1 else f"{TARGETD_IQN}-{t}" for t in range(1, targets + 1)]
        log_path = workdir / "targetd.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(repo_root), env.get("PYTHONPATH", "")) if p
        )
        argv = [python, "-m", "targetd", "serve", "--listen", f"{LOOPBACK}:{port}"]
        argv += ["--state-dir", str(state_dir)]
        if workers != 1:  # one is the default; and code older than --workers starts too
            argv += ["--workers", str(workers)]
        if targets > 1:
            config = workdir / "targetd.toml"
            config.write_text("".join(
                f'[[target]]\nname = "{iqn}"\n[[target.lun]]\nlun = 0\n'
                f'path = "t{t}-lun0.img"\nsize = {lun_size}\n'
                for t, iqn in enumerate(iqns, start=1)
            ))  # fmt: skip
            argv += ["--config", str(config)]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv,
                cwd=repo_root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        luns = tuple((iqn, 0) for iqn in iqns)
        target = cls(name, TARGETD_IQN, 0, port, proc, log_path, luns)
        return ready(target, timeout=60)
