"""Worker processes (docs/workers.md) against what they are given at a (re)start: CHAP
credentials from the environment's secret file, which the portal reads once per load and
hands to every worker; and a worker whose start hangs, killed after ``[server]
worker_start_timeout``; a worker started before a reload and serving only after it, given
that reload before it serves."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from clients import run
from conftest import Daemon, DaemonFactory
from raw_initiator import RawInitiator
from test_integration_workers import (
    CONFIG,
    A,
    B,
    login_status,
    redirect,
    restarted,
    status,
    target,
    worker_port,
)

from targetd.admin import request

FIRST, SECOND = "alice:first-secret-1", "alice:second-secret"


def chap_login(port: int, name: str, secret: str) -> bool:
    """Whether libiscsi logs in to LUN 0 of ``name`` straight at a worker's port as alice
    with ``secret``."""
    return run("iscsi-inq", f"iscsi://alice%{secret}@127.0.0.1:{port}/{name}/0", check=False
               ).returncode == 0  # fmt: skip


def test_workers_use_the_chap_file_as_the_portal_read_it(
    targetd_factory: DaemonFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file changes and no reload follows: a worker started again after a crash keeps
    the secret its portal and siblings serve with (it once read the file itself, and then
    one target wanted the new secret and the other the old). The reload brings the new
    one to every worker."""
    secret_file = tmp_path / "chap"
    secret_file.write_text(FIRST)
    monkeypatch.setenv("TARGETD_CHAP_FILE", str(secret_file))
    daemon = targetd_factory(CONFIG)
    _, port_a = worker_port(daemon, A)
    pid_b, _ = worker_port(daemon, B)
    secret_file.write_text(SECOND)  # not reloaded
    port_b = restarted(daemon, B, pid_b)
    for port, name in ((port_a, A), (port_b, B)):
        assert chap_login(port, name, "first-secret-1"), name
        assert not chap_login(port, name, "second-secret"), name
    reloaded = daemon.targetctl_json("reload")
    assert f"target {A}: CHAP updated" in reloaded["applied"], reloaded
    for port, name in ((port_a, A), (port_b, B)):
        assert chap_login(port, name, "second-secret"), name
        assert not chap_login(port, name, "first-secret-1"), name
    secret_file.write_text(FIRST)  # again not reloaded: a restart keeps the reloaded one
    port_b = restarted(daemon, B, worker_port(daemon, B)[0])
    assert chap_login(port_b, B, "second-secret")
    assert "second-secret" not in daemon.stderr and "first-secret" not in daemon.stderr


def test_a_worker_that_does_not_serve_in_time_is_killed_and_tried_again(
    targetd_factory: DaemonFactory, tmp_path: Path
) -> None:
    """B's read-only LUN is a FIFO with no writer: opening it blocks, so B's worker never
    serves. After worker_start_timeout (5 s here: a worker's Python start on a loaded machine
    can take a second or two) the portal kills it, says why, and starts it again; A is
    served meanwhile and B's logins are answered "service unavailable"."""
    fifo = tmp_path / "b.img"
    os.mkfifo(fifo)
    lun_b = target(B).replace('size = "64MiB"', f'path = "{fifo}"\nread_only = true')
    started = time.monotonic()
    daemon = targetd_factory("[server]\nworkers = 2\nworker_start_timeout = 5\n" + target(A)
                             + lun_b)  # fmt: skip
    assert time.monotonic() - started < 60  # not the 120 s default
    worker_port(daemon, A)
    deadline = time.monotonic() + 60
    while (worker := status(daemon)["workers"][1])["start_failures"] < 2:
        assert time.monotonic() < deadline, worker
        time.sleep(0.2)
    assert worker["error"] == "did not serve within 5 s" and worker["ports"] == []
    assert redirect(daemon, B) == (0x0301, {})
    assert redirect(daemon, A)[0] == 0x0101
    shown = daemon.targetctl("status").stdout
    assert "    down: did not serve within 5 s" in shown, shown
    assert daemon.stop() == 0  # the hung worker does not hold the stop up


def test_a_target_kept_for_its_pair_is_served_again_after_its_workers_restart(
    targetd_factory: DaemonFactory,
) -> None:
    """B is removed from the file and reloaded while its LUN is in a pair: its worker keeps
    serving it (the reload says so). That worker then dies: the one started in its place
    serves B again, with its pair, as before (it once started from the file's text alone,
    without B, so B's logins found no target and its pair stopped)."""
    two_luns = target(B) + '[[target.lun]]\nlun = 1\nsize = "64MiB"\n'
    daemon = targetd_factory("[server]\nworkers = 2\n" + target(A) + two_luns)
    assert daemon.config is not None
    sock = daemon.state_dir / "admin.sock"
    request(sock, "pair.create", {"name": "p", "target": B, "source_lun": 0, "target_lun": 1})
    daemon.config.write_text("[server]\nworkers = 2\n" + target(A))
    reloaded = daemon.targetctl_json("reload")
    kept = f"target {B} removed: its lun 0 is in pair p (delete the pair first): still served"
    assert reloaded["refused"] == [kept], reloaded
    pid_b, _ = worker_port(daemon, B)
    port_b = restarted(daemon, B, pid_b)
    assert login_status(port_b, B) == 0
    assert redirect(daemon, B) == (0x0101, {"TargetAddress": f"127.0.0.1:{port_b},1"})
    (pair,) = request(sock, "pair.list", {"target": B})
    assert pair["source"] == f"{B}/lun0"
    # A reload that still leaves B out keeps it, again; once the pair is gone, it goes.
    assert daemon.targetctl_json("reload")["refused"] == [kept]
    request(sock, "pair.delete", {"name": "p", "target": B})
    reloaded = daemon.targetctl_json("reload")
    assert f"target {B} removed: its sessions are logged out" in reloaded["applied"], reloaded
    assert redirect(daemon, B)[0] == 0x0203


def report_luns(port: int, name: str) -> list[int]:
    """REPORT LUNS straight at a worker's port."""
    with RawInitiator(port) as ini:
        assert ini.login(name).bhs[36:38] == b"\0\0"
        status, data, _ = ini.command(bytes([0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]), read=256)
    assert status == 0
    count = int.from_bytes(data[:4], "big") // 8
    return [int.from_bytes(data[8 + 8 * i : 10 + 8 * i], "big") & 0x3FFF for i in range(count)]


def test_a_lun_kept_for_its_pair_is_served_again_after_its_workers_restart(
    targetd_factory: DaemonFactory,
) -> None:
    """As above for one LUN: B's LUN 1, the pair's target, is removed from the file while
    paired; B's worker keeps it, and so does the worker started after it dies."""
    lun1 = '[[target.lun]]\nlun = 1\nsize = "64MiB"\n'
    daemon = targetd_factory("[server]\nworkers = 2\n" + target(A) + target(B) + lun1)
    assert daemon.config is not None
    sock = daemon.state_dir / "admin.sock"
    request(sock, "pair.create", {"name": "p", "target": B, "source_lun": 0, "target_lun": 1})
    daemon.config.write_text("[server]\nworkers = 2\n" + target(A) + target(B))
    reloaded = daemon.targetctl_json("reload")
    kept = f"target {B}: lun 1 removed: it is in pair p (delete the pair first): still served"
    assert reloaded["refused"] == [kept], reloaded
    pid_b, port_b = worker_port(daemon, B)
    assert report_luns(port_b, B) == [0, 1]
    port_b = restarted(daemon, B, pid_b)
    assert report_luns(port_b, B) == [0, 1]
    (pair,) = request(sock, "pair.list", {"target": B})
    assert (pair["source"], pair["target"]) == (f"{B}/lun0", f"{B}/lun1")
    request(sock, "pair.delete", {"name": "p", "target": B})
    daemon.targetctl_json("reload")
    assert report_luns(port_b, B) == [0]


def children(pid: int) -> set[int]:
    """The processes ``pid`` has started (from any of its threads), as /proc lists them."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.update(int(c) for c in (task / "children").read_text().split())
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
    return found


def hold_starting(daemon: Daemon, name: str, index: int) -> int:
    """Kill the worker of ``name`` and stop (SIGSTOP) its successor before it serves; its
    pid. Stopped too early (before the portal's spawn of it has returned, which waits for
    the child to get past its fork), the portal would stall: then it is let go a moment and
    stopped again. A worker's Python start takes far longer than that."""
    assert daemon.proc is not None
    pid, _ = worker_port(daemon, name)
    before = children(daemon.proc.pid)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while not (new := children(daemon.proc.pid) - before - {pid}):
        assert time.monotonic() < deadline, f"{name}'s worker was not started again"
        time.sleep(0.002)
    (successor,) = new
    sock = daemon.state_dir / "admin.sock"
    while True:
        os.kill(successor, signal.SIGSTOP)
        try:
            state = request(sock, "status", {}, timeout=1.0)["workers"][index]["state"]
        except (OSError, TimeoutError):
            state = "portal stalled"
        if state != "portal stalled":
            assert state != "serving", state
            return successor
        assert time.monotonic() < deadline, "the portal stalls while the worker is stopped"
        os.kill(successor, signal.SIGCONT)
        time.sleep(0.01)


def test_a_worker_starting_during_a_reload_is_given_it_before_it_serves(
    targetd_factory: DaemonFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B's worker is killed, and its successor is held (SIGSTOP) before it serves: it was
    spawned with the credentials of before the reload that now changes them, and that
    reload's request to it is refused (*starting*). Let go, it is sent the reload it missed
    before any login is routed to it, so it serves with the new secret as its sibling does
    (docs/workers.md)."""
    secret_file = tmp_path / "chap"
    secret_file.write_text(FIRST)
    monkeypatch.setenv("TARGETD_CHAP_FILE", str(secret_file))
    daemon = targetd_factory(CONFIG)
    _, port_a = worker_port(daemon, A)
    successor = hold_starting(daemon, B, 1)
    try:
        secret_file.write_text(SECOND)
        reloaded = daemon.targetctl_json("reload")
        assert "worker 1: worker 1 is starting; try again" in reloaded["refused"], reloaded
    finally:
        os.kill(successor, signal.SIGCONT)
    pid, port_b = worker_port(daemon, B)
    assert pid == successor
    for port, name in ((port_a, A), (port_b, B)):
        assert chap_login(port, name, "second-secret"), name
        assert not chap_login(port, name, "first-secret-1"), name
    assert "worker given the reload it missed" in daemon.stderr
