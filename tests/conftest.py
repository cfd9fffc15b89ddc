"""Integration fixtures: a real ``targetd serve`` subprocess per test, on a free loopback port.

Every daemon gets its own port and its own state directory, so tests share nothing and can
run in any order. Teardown stops the daemon by PID: SIGTERM first, SIGKILL if it lingers.
"""

from __future__ import annotations

import compileall
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The Ceph tier's cluster and images (tests/ceph/ceph_fixtures.py), offered to its test
# modules from here rather than imported into each.
from ceph_fixtures import ceph_cluster as ceph_cluster
from ceph_fixtures import new_image as new_image
from s3_server import ENV as S3_ENV
from s3_server import S3Server

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IQN = "iqn.2026-11.org.targetd:default"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
# A refused connect costs next to nothing; each start waits half of this on average, and a
# run starts hundreds of daemons.
START_POLL = 0.02


def hostcopy_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH has a ``targetd-copy`` running this checkout's hostcopy, as
    the docs' shell examples call it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "targetd-copy"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m hostcopy "$@"\n')
    shim.chmod(0o755)
    return dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", PYTHONPATH=str(REPO))


def free_port() -> int:
    """A TCP port nothing listens on right now (the daemon binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_level() -> list[str]:
    """``--log-level`` for the daemons from TARGETD_TEST_LOG_LEVEL (DEBUG to chase a failure
    seen once under load; the log stays under the test's tmp_path, see --basetemp)."""
    level = os.environ.get("TARGETD_TEST_LOG_LEVEL", "")
    return ["--log-level", level] if level else []


class Daemon:
    """A running ``targetd serve``; ``url(lun)`` gives the libiscsi URL of one of its LUNs."""

    def __init__(
        self, port: int, state_dir: Path, config: Path | None, iqn: str, log: Path
    ) -> None:
        self.port = port
        self.state_dir = state_dir
        self.config = config
        self.iqn = iqn
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def portal(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, lun: int | None = 0, *, user: str = "", secret: str = "") -> str:
        auth = f"{user}%{secret}@" if user else ""
        base = f"iscsi://{auth}127.0.0.1:{self.port}"
        return base if lun is None else f"{base}/{self.iqn}/{lun}"

    @property
    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "targetd", "serve", *log_level(), "--listen", self.portal]
        argv += ["--state-dir", str(self.state_dir)]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        return argv

    def start(self) -> Daemon:
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"targetd exited with status {self.proc.returncode} before listening:\n"
                    f"{self.stderr}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    STARTS.append(time.monotonic() - (deadline - START_TIMEOUT))
                    return self
            except OSError:
                time.sleep(START_POLL)
        self.stop()
        pytest.fail(
            f"targetd did not listen on {self.portal} within {START_TIMEOUT}s:\n{self.stderr}"
        )

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; returns the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                KILLED_AT_STOP.append(self.log)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL (a crash: none of the daemon's shutdown runs), and reap it."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> Daemon:
        self.stop()
        return self.start()

    def targetctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``targetctl ARGS`` over this daemon's admin socket (found in its state dir)."""
        return subprocess.run(
            [sys.executable, "-m", "targetd.ctl", *args, "--state-dir", str(self.state_dir)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def targetctl_json(self, *args: str) -> Any:
        """The answer of ``targetctl ARGS --json``, which must succeed."""
        done = self.targetctl(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


DaemonFactory = Callable[..., Daemon]

# The daemons that did not stop within STOP_TIMEOUT of SIGTERM (their logs): each cost the
# run that long, and may be a stop that hangs. Listed at the end of the run.
KILLED_AT_STOP: list[Path] = []
# Seconds from exec to listening of each daemon Daemon.start started: how many starts a run
# pays for and what they cost (docs/performance.md, bench/start_time.py).
STARTS: list[float] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if STARTS:
        terminalreporter.section("daemon starts")
        terminalreporter.write_line(
            f"{len(STARTS)} daemon starts, {sum(STARTS):.1f} s from exec to listening, "
            f"median {statistics.median(STARTS) * 1000:.0f} ms"
        )
    if KILLED_AT_STOP:
        terminalreporter.section("daemons killed at stop")
        terminalreporter.write_line(
            f"{len(KILLED_AT_STOP)} daemon(s) did not stop within {STOP_TIMEOUT:g} s of SIGTERM "
            "and were killed (each cost that long); their logs:"
        )
        for log in KILLED_AT_STOP:
            terminalreporter.write_line(f"  {log}")


# The daemons a test started, for its failure report (pytest_runtest_makereport).
DAEMONS = pytest.StashKey[list[list[Daemon]]]()
LOG_TAIL = 40


def dump_stacks(daemons: Iterable[Daemon]) -> None:
    """Have each daemon still running log its threads' stacks and its asyncio tasks grouped
    by where they wait (SIGUSR1, SIGUSR2: targetd/stack_dump.py): a test that found it hung
    calls this before its report, which then names what it waits for."""
    running = [d.proc for d in daemons if d.proc is not None and d.proc.poll() is None]
    for proc in running:
        os.kill(proc.pid, signal.SIGUSR1)
        os.kill(proc.pid, signal.SIGUSR2)
    if running:
        time.sleep(1.0)


def report_daemons(node: pytest.Item, daemons: list[Daemon]) -> None:
    """Show the end of the logs of the daemons in ``daemons`` (a fixture's list, filled as
    it starts them) if the test ``node`` fails: a failure seen once on a loaded machine is
    diagnosed from them, or not at all."""
    node.stash.setdefault(DAEMONS, []).append(daemons)


def _signal_name(code: int) -> str:
    if code >= 0:
        return ""
    try:
        return f" ({signal.Signals(-code).name})"
    except ValueError:
        return ""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and report.when == "call":
        for daemon in (d for daemons in item.stash.get(DAEMONS, []) for d in daemons):
            lines = daemon.stderr.splitlines()[-LOG_TAIL:]
            title = f"{daemon.log.name} (port {daemon.port}), its last {len(lines)} lines"
            code = daemon.proc.poll() if daemon.proc is not None else None
            if code is not None:  # it died during the test: a crash closes its sockets silently
                title += f"; it exited with status {code}{_signal_name(code)}"
            report.sections.append((title, "\n".join(lines)))
    return report


@pytest.fixture
def targetd_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DaemonFactory]:
    """``factory(config_toml=None, *, state_dir=None, start=True) -> Daemon``.

    With ``config_toml`` (the text of a TOML file) the daemon runs that configuration and
    ``.iqn`` is its first target's name; without, it serves the default configuration.
    """
    daemons: list[Daemon] = []
    report_daemons(request.node, daemons)

    def factory(
        config_toml: str | None = None, *, state_dir: Path | None = None, start: bool = True
    ) -> Daemon:
        n = len(daemons)
        state = state_dir or tmp_path / f"state{n}"
        state.mkdir(parents=True, exist_ok=True)
        config = None
        iqn = DEFAULT_IQN
        if config_toml is not None:
            config = tmp_path / f"targetd{n}.toml"
            config.write_text(config_toml)
            targets = tomllib.loads(config_toml).get("target", [])
            if targets:
                iqn = targets[0]["name"]
        daemon = Daemon(free_port(), state, config, iqn, tmp_path / f"targetd{n}.log")
        daemons.append(daemon)
        return daemon.start() if start else daemon

    yield factory
    for daemon in daemons:
        daemon.stop()


# The packages every daemon and tool the tests start imports afresh.
PACKAGES = ("targetd", "scsi", "backing", "xcopy", "hostcopy")


@pytest.fixture(scope="session", autouse=True)
def bytecode() -> None:
    """The repository's modules compiled once for the session. With PYTHONDONTWRITEBYTECODE
    set (as in some CI and sandbox environments) no process writes a .pyc, so every daemon
    start compiled about 140 modules from source: half its CPU, a few hundred times a run
    (docs/performance.md, start time). An up-to-date .pyc is left as it is."""
    for package in PACKAGES:
        assert compileall.compile_dir(REPO / package, quiet=1), f"{package} does not compile"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS ``weed mini``, tests/s3_server.py) with the bucket
    ``tapes``, for the session. Its dummy credentials go into the environment, where
    boto3 and every daemon started after find them, as an operator's would be."""
    saved = {k: os.environ.get(k) for k in (*S3_ENV, "AWS_EC2_METADATA_DISABLED")}
    os.environ.update(S3_ENV, AWS_EC2_METADATA_DISABLED="true")
    server = S3Server(tmp_path_factory.mktemp("s3"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def targetd(targetd_factory: DaemonFactory) -> Daemon:
    """A daemon serving the default configuration (LUN 0 and LUN 1, 1 GiB each)."""
    return targetd_factory()
