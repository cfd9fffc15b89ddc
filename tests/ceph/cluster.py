"""A one-monitor, one-OSD Ceph cluster on loopback in a directory, from Debian's packages.

No pytest here: the Ceph tests' fixture (tests/ceph/conftest.py) and bench/compare_rbd.py
both start clusters with it. Authentication is off (``auth_*_required = none``) and the pool
keeps one copy, so one OSD is a healthy cluster; no manager daemon runs, as RBD I/O needs
none. The daemons run in the foreground as children of this process and are stopped by PID.

The OSD's store is ``memstore`` (in memory, up in about 7 s; its memory grows with the data
written, so keep images small) or ``bluestore`` on a sparse file (about 9 s; for benchmarks).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
TOOLS = ("ceph-mon", "ceph-osd", "ceph", "rbd", "monmaptool", "ceph-authtool")


class ClusterError(RuntimeError):
    pass


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the process that started it dies, so a
    killed test run leaves no Ceph daemon behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class CephCluster:
    """``start()`` makes and starts the cluster; ``stop()`` ends its daemons by PID."""

    directory: Path
    objectstore: str = "memstore"
    pool: str = "rbd"
    # BlueStore's file, or memstore's ceiling on data held in memory.
    store_bytes: int = 4 << 30
    port: int = 0
    fsid: str = field(default_factory=lambda: str(uuid.uuid4()))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.directory / "ceph.conf"

    @property
    def mon_host(self) -> str:
        return f"v2:127.0.0.1:{self.port}"

    def log(self, name: str) -> Path:
        return self.directory / "log" / f"{name}.log"

    # -- set-up --------------------------------------------------------------------
    def _write_conf(self) -> None:
        d = self.directory
        self.conf.write_text(
            f"""[global]
fsid = {self.fsid}
mon_host = {self.mon_host}
public_addr = 127.0.0.1
ms_bind_msgr1 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_crush_chooseleaf_type = 0
run_dir = {d}/run
admin_socket = {d}/run/$name.$pid.asok
log_file = {d}/log/$name.log
pid_file = {d}/run/$name.pid
keyring = {d}/keyring
mon_data = {d}/mon/$id
osd_data = {d}/osd/$id
osd_objectstore = {self.objectstore}
memstore_device_bytes = {self.store_bytes}
bluestore_block_path = {d}/osd/$id.block
bluestore_block_size = {self.store_bytes}
bluestore_block_create = true
bluestore_block_db_create = false
bluestore_block_wal_create = false
osd_memory_target = 939524096
bluestore_cache_autotune = false
bluestore_cache_size = 134217728
# The client gives up on an OSD operation after this long (see docs/rbd.md: it must exceed
# the OSD heartbeat grace and interval, or a slow but live OSD fails commands).
rados_osd_op_timeout = 30
osd_heartbeat_grace = 20
mon_osd_down_out_interval = 0
# A client killed with SIGKILL keeps its watch (and so RBD's exclusive lock) this long;
# the default 30 s would stall every test that restarts a daemon after kill -9.
osd_client_watch_timeout = 5
# Clients ping their watches once per objecter tick (5 s by default): as long as the
# timeout above, a ping late by a moment on a loaded host lost a live client its watch
# (ENOTCONN, watched again a little later), and the peer gateway of a holder caught without
# one took it for dead. Every second keeps live watches well inside the timeout.
objecter_tick_interval = 1
""",
            encoding="ascii",
        )

    def _run(self, *argv: str, timeout: float = 60.0) -> str:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise ClusterError(
                f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        return done.stdout

    def ceph(self, *args: str, timeout: float = 60.0) -> str:
        return self._run(
            "ceph", "-c", str(self.conf), "--connect-timeout", "30", *args, timeout=timeout
        )

    def rbd(self, *args: str, timeout: float = 120.0) -> str:
        return self._run("rbd", "-c", str(self.conf), *args, timeout=timeout)

    def _spawn(self, name: str, argv: list[str]) -> None:
        with (self.directory / "log" / f"{name}.stderr").open("ab") as out:
            self.procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def start(self) -> CephCluster:
        missing = missing_tools()
        if missing:
            raise ClusterError(f"Ceph tools missing: {', '.join(missing)}")
        d = self.directory
        for sub in ("run", "log", "mon/a", "osd/0"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = _free_port()
        self._write_conf()
        conf = str(self.conf)
        try:
            self._run(
                "ceph-authtool",
                "--create-keyring",
                str(d / "keyring"),
                "--gen-key",
                "-n",
                "mon.",
                "--cap",
                "mon",
                "allow *",
            )
            self._run(
                "monmaptool",
                "--create",
                "--fsid",
                self.fsid,
                "--addv",
                "a",
                f"[{self.mon_host}]",
                str(d / "monmap"),
            )
            self._run(
                "ceph-mon",
                "-c",
                conf,
                "--mkfs",
                "-i",
                "a",
                "--monmap",
                str(d / "monmap"),
                "--keyring",
                str(d / "keyring"),
            )
            self._spawn("mon.a", ["ceph-mon", "-c", conf, "-i", "a", "-f"])
            osd_uuid = str(uuid.uuid4())
            osd_id = self.ceph("osd", "new", osd_uuid).strip()
            if osd_id != "0":
                raise ClusterError(f"the first OSD got id {osd_id!r}")
            self._run(
                "ceph-osd",
                "-c",
                conf,
                "-i",
                "0",
                "--mkfs",
                "--osd-uuid",
                osd_uuid,
                timeout=120.0,
            )
            self._spawn("osd.0", ["ceph-osd", "-c", conf, "-i", "0", "-f"])
            self.ceph("osd", "pool", "create", self.pool, "8")
            self.ceph("osd", "pool", "application", "enable", self.pool, "rbd")
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Until the pool takes a write: the OSD is up and its placement groups are active."""
        deadline = time.monotonic() + START_TIMEOUT
        probe = f"ready-{uuid.uuid4().hex[:8]}"
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise ClusterError(
                        f"{name} exited with status {proc.returncode}; see {self.log(name)}"
                    )
            try:
                self.rbd("create", "--size", "1M", f"{self.pool}/{probe}", timeout=20.0)
                self.rbd("rm", "--no-progress", f"{self.pool}/{probe}", timeout=20.0)
                return
            except (ClusterError, subprocess.TimeoutExpired) as exc:
                if time.monotonic() > deadline:
                    raise ClusterError(f"the cluster did not become ready: {exc}") from exc
                time.sleep(0.3)

    # -- daemons ---------------------------------------------------------------------
    def kill_osd(self) -> None:
        """SIGKILL the OSD (a crash), for fault tests."""
        proc = self.procs.get("osd.0")
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def kill_mon(self) -> None:
        """SIGKILL the monitor (with the OSD: the cluster gone), for fault tests."""
        proc = self.procs.get("mon.a")
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart_osd(self) -> None:
        self.kill_osd()
        self._spawn("osd.0", ["ceph-osd", "-c", str(self.conf), "-i", "0", "-f"])

    def stop(self) -> None:
        """SIGTERM each daemon (OSD first), SIGKILL any that lingers; by PID only."""
        for name in sorted(self.procs, key=lambda n: not n.startswith("osd")):
            proc = self.procs[name]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()

    def __enter__(self) -> CephCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
