"""Worker processes (docs/workers.md): a portal redirects each login to the process serving
its target, with real clients (libiscsi's tools and QEMU follow the redirect)."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from clients import run
from conftest import Daemon, DaemonFactory, free_port
from raw_initiator import RawInitiator, decode_keys

from targetd.admin import AdminError, request

A = "iqn.2026-11.org.targetd.test:wa"
B = "iqn.2026-11.org.targetd.test:wb"
C = "iqn.2026-11.org.targetd.test:wc"


def target(name: str) -> str:
    return f'[[target]]\nname = "{name}"\n[[target.lun]]\nlun = 0\nsize = "64MiB"\n'


CONFIG = "[server]\nworkers = 2\n" + target(A) + target(B)


def status(daemon: Daemon) -> dict:
    return daemon.targetctl_json("status")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def redirect(daemon: Daemon, name: str) -> tuple[int, dict[str, str]]:
    """A login at the portal: its status and keys."""
    with RawInitiator(daemon.port) as ini:
        resp = ini.login(name)
        return int.from_bytes(resp.bhs[36:38], "big"), decode_keys(resp.data)


def worker_port(daemon: Daemon, name: str) -> tuple[int, int]:
    """(pid, port) of the worker serving ``name``, once it serves."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for w in status(daemon)["workers"]:
            if name in w["targets"] and w["state"] == "serving":
                return w["pid"], w["ports"][0]
        time.sleep(0.1)
    pytest.fail(f"no worker serves {name}:\n{daemon.stderr}")


def session_on_worker(port: int, name: str, initiator: str) -> RawInitiator:
    ini = RawInitiator(port, name=initiator)
    resp = ini.login(name)
    assert resp.bhs[36:38] == b"\0\0", resp.bhs.hex()
    return ini


def test_each_target_is_served_by_its_own_worker_process(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(CONFIG)
    assert daemon.proc is not None
    workers = status(daemon)["workers"]
    assert [w["targets"] for w in workers] == [[A], [B]]
    pids = [w["pid"] for w in workers]
    assert len(set(pids)) == 2 and daemon.proc.pid not in pids
    assert [parent_of(pid) for pid in pids] == [daemon.proc.pid] * 2
    # A worker asked directly (targetctl --socket) names the port it listens on, not 0.
    alone = request(daemon.state_dir / "worker0.sock", "status", {})
    assert alone["portals"][0]["listen"] == f"127.0.0.1:{workers[0]['ports'][0]}"
    # The portal redirects (RFC 7143 0101h) to the address the initiator dialled.
    for name, worker in ((A, workers[0]), (B, workers[1])):
        code, keys = redirect(daemon, name)
        assert code == 0x0101
        assert keys == {"TargetAddress": f"127.0.0.1:{worker['ports'][0]},1"}
    # Real clients follow it: data written through the portal reads back, per target.
    for name, pattern in ((A, "0x5a"), (B, "0xa5")):
        url = f"iscsi://127.0.0.1:{daemon.port}/{name}/0"
        run("qemu-io", "-f", "raw", "-c", f"write -P {pattern} 0 1M", url)
    for name, pattern in ((A, "0x5a"), (B, "0xa5")):
        url = f"iscsi://127.0.0.1:{daemon.port}/{name}/0"
        out = run("qemu-io", "-f", "raw", "-c", f"read -P {pattern} 0 1M", url).stdout
        assert "Pattern verification failed" not in out and "read 1048576/1048576" in out
    # Each worker's log lines name it (they share the portal's standard error).
    logins = [line for line in daemon.stderr.splitlines() if " event=login " in line]
    assert any("worker=0 " in line and f"target={A}" in line for line in logins)
    assert any("worker=1 " in line and f"target={B}" in line for line in logins)
    assert not any("worker=0 " in line and f"target={B}" in line for line in logins)
    listing = run("iscsi-ls", "-s", f"iscsi://127.0.0.1:{daemon.port}").stdout
    assert f"Target:{A} Portal:127.0.0.1:{daemon.port},1" in listing  # discovery: the portal
    assert listing.count("Lun:0    Type:DIRECT_ACCESS") == 2  # and a login to each worker
    # A session lives in its target's worker, as `targetctl status` shows.
    with session_on_worker(workers[0]["ports"][0], A, "iqn.2026-11.org.targetd.test:h1"):
        sessions = status(daemon)["sessions"]
        assert [(s["target"], s["worker"]) for s in sessions] == [(A, 0)]


def test_unit_attentions_and_reservations_stay_exact_and_a_killed_worker_comes_back(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(CONFIG)
    pid_a, port_a = worker_port(daemon, A)
    pid_b, port_b = worker_port(daemon, B)
    h1, h2 = "iqn.2026-11.org.targetd.test:h1", "iqn.2026-11.org.targetd.test:h2"
    one = session_on_worker(port_a, A, h1)
    two = session_on_worker(port_a, A, h2)
    other = session_on_worker(port_b, B, h1)
    try:
        # A new I_T nexus sees POWER ON OCCURRED (29h/00h) once, then nothing.
        for ini in (one, two, other):
            code, _, sense = ini.command(bytes(6))
            assert (code, sense[2] & 0x0F, sense[12], sense[13]) == (2, 6, 0x29, 0x00)
            assert ini.command(bytes(6))[0] == 0
        # RESERVE(6) by h1 on A: h2 gets RESERVATION CONFLICT; h1's nexus to B is free.
        assert one.command(bytes([0x16, 0, 0, 0, 0, 0]))[0] == 0
        assert two.command(bytes(6))[0] == 0x18
        assert other.command(bytes([0x16, 0, 0, 0, 0, 0]))[0] == 0  # B is another LU
        # Worker B dies: A's sessions go on, B's login is "service unavailable" (0301h)
        # until the portal has started B's worker again, then redirected to the new one.
        os.kill(pid_b, signal.SIGKILL)
        assert other.closed_by_target()
        assert one.command(bytes(6))[0] == 0 and two.command(bytes(6))[0] == 0x18
        new_pid, new_port = worker_port(daemon, B)
        assert new_pid != pid_b and parent_of(new_pid) == daemon.proc.pid  # type: ignore[union-attr]
        code, keys = redirect(daemon, B)
        assert (code, keys) == (0x0101, {"TargetAddress": f"127.0.0.1:{new_port},1"})
        # The new process is a power-on for B's LU: the reservation is gone, UA once.
        with session_on_worker(new_port, B, h2) as again:
            code, _, sense = again.command(bytes(6))
            assert (code, sense[12], sense[13]) == (2, 0x29, 0x00)
            assert again.command(bytes(6))[0] == 0
        assert [w["restarts"] for w in status(daemon)["workers"]] == [0, 1]
        assert alive(pid_a)
    finally:
        for ini in (one, two, other):
            ini.close()


def test_a_restarting_worker_answers_service_unavailable(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(CONFIG)
    pid_b, _ = worker_port(daemon, B)
    os.kill(pid_b, signal.SIGKILL)
    deadline = time.monotonic() + 20
    seen = []
    while time.monotonic() < deadline and 0x0101 not in seen[1:]:
        code, _ = redirect(daemon, B)
        if not seen or seen[-1] != code:
            seen.append(code)
    # Redirected before the kill was noticed, unavailable while a new process starts
    # (it takes a Python start, far longer than a login), then redirected again.
    assert seen in ([0x0101, 0x0301, 0x0101], [0x0301, 0x0101]), seen
    assert redirect(daemon, A)[0] == 0x0101


def test_a_worker_that_cannot_start_is_tried_again_and_its_target_is_unavailable_meanwhile(
    targetd_factory: DaemonFactory, tmp_path: Path
) -> None:
    blocker = tmp_path / "b-luns"
    blocker.write_text("a file where the directory of B's LUN should be")
    lun_b = target(B).replace('size = "64MiB"', f'size = "16MiB"\npath = "{blocker}/b.img"')
    port = free_port()
    daemon = targetd_factory(
        "[server]\nworkers = 2\n" + target(A) + lun_b + f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )  # the portal serves although worker 1 cannot open B's LUN
    deadline = time.monotonic() + 30
    while (worker := status(daemon)["workers"][1])["start_failures"] < 2:
        assert time.monotonic() < deadline, worker  # it is started again, and again
        time.sleep(0.2)
    assert worker["ports"] == [] and worker["error"] == "exited with status 2 before serving"
    assert worker["state"] in ("failed", "starting")  # waiting for the next start, or in it
    # B's logins: "service unavailable" (0301h) at once, as long as it fails; A is served.
    assert redirect(daemon, B) == (0x0301, {})
    assert redirect(daemon, A)[0] == 0x0101
    shown = daemon.targetctl("status").stdout
    assert "    down: exited with status 2 before serving" in shown, shown
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'targetd_worker_up{worker="0"} 1\n' in text
    assert 'targetd_worker_up{worker="1"} 0\n' in text
    assert 'targetd_worker_start_failures_total{worker="1"} ' in text, text
    assert "cannot open a LUN: [Errno 17] File exists" in daemon.stderr
    assert "Traceback" not in daemon.stderr
    # Once the LUN can be opened, a later start serves it, and B is redirected there.
    blocker.unlink()
    _, port_b = worker_port(daemon, B)
    assert redirect(daemon, B) == (0x0101, {"TargetAddress": f"127.0.0.1:{port_b},1"})
    run("iscsi-inq", f"iscsi://127.0.0.1:{daemon.port}/{B}/0")
    assert status(daemon)["workers"][1]["error"] is None


def test_the_redirect_a_reconnecting_initiator_gets_is_an_rfc_7143_login_response(
    targetd_factory: DaemonFactory,
) -> None:
    """What libiscsi 1.19 is answered when it reconnects after a worker restart (see "libiscsi
    before 1.20.1" in docs/workers.md): one Login Response, field by field as RFC 7143 11.13
    wants it for a failed login of a new session, then the target closes the connection."""
    daemon = targetd_factory(CONFIG)
    old_pid, _ = worker_port(daemon, B)
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while (worker := worker_port(daemon, B))[0] == old_pid:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with RawInitiator(daemon.port) as ini:
        resp = ini.login(B)
        bhs = resp.bhs
        assert bhs[0] == 0x23  # Login Response
        assert bhs[1] == 0x00  # T=0, C=0: no stage is left, nothing continues
        assert (bhs[2], bhs[3]) == (0, 0)  # Version-max, Version-active
        assert bhs[4] == 0 and int.from_bytes(bhs[5:8], "big") == len(resp.data)
        assert bhs[8:14] == bytes([0x40, 0, 0, 0, 0x12, 0x34])  # the ISID, echoed
        assert bhs[14:16] == b"\0\0"  # TSIH: a new session gets one only on success
        assert resp.u32(16) == ini.itt  # the ITT of the request
        assert resp.u32(28) == ini.cmdsn  # ExpCmdSN: the request's CmdSN
        assert resp.u32(32) >= resp.u32(28) - 1  # MaxCmdSN: a window, not a closed one
        assert (bhs[36], bhs[37]) == (0x01, 0x01)  # target moved temporarily
        # The one key, TargetAddress=domainname[:port][,portal-group-tag] (13.8), NUL-ended.
        assert resp.data == f"TargetAddress=127.0.0.1:{worker[1]},1\0".encode()
        assert ini.closed_by_target()  # Status-Class not 0: the connection is closed
    with RawInitiator(worker[1]) as ini:  # and the address given is where B is served
        resp = ini.login(B)
        assert (resp.bhs[36], resp.bhs[37]) == (0, 0) and resp.bhs[14:16] != b"\0\0"


def port_gone(port: int) -> None:
    """Wait until connecting to ``port`` fails, as for an initiator its worker's death
    dropped (refused, or reset while the dying listener closes)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except ConnectionError:
            return
        except TimeoutError:
            continue
    pytest.fail(f"port {port} still accepts")


def test_an_initiator_a_worker_death_dropped_is_never_sent_to_the_dead_port(
    targetd_factory: DaemonFactory,
) -> None:
    """The initiator sees the worker's sockets close and logs in again at the portal at
    once; the portal stops routing to that worker as the worker dies, not once its exit is
    reaped: the login is answered 0301h, not redirected to the port that is gone (it was,
    in 6 of 10 tries)."""
    daemon = targetd_factory(CONFIG)
    for _ in range(4):
        pid, port = worker_port(daemon, B)
        os.kill(pid, signal.SIGKILL)
        port_gone(port)
        assert redirect(daemon, B) == (0x0301, {})


def test_sigterm_stops_every_worker_and_a_killed_portal_leaves_no_orphan(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(CONFIG)
    pids = [w["pid"] for w in status(daemon)["workers"]]
    assert daemon.stop() == 0
    assert not any(alive(pid) for pid in pids)
    daemon.start()
    pids = [w["pid"] for w in status(daemon)["workers"]]
    daemon.kill()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids), "a worker outlived its portal"


def test_reload_adds_and_removes_targets_across_workers(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(CONFIG)
    assert daemon.config is not None
    daemon.config.write_text("[server]\nworkers = 2\n" + target(A) + target(C))
    result = daemon.targetctl_json("reload")
    assert f"target {C} added" in result["applied"]
    assert f"target {B} removed: its sessions are logged out" in result["applied"]
    assert result["refused"] == []
    workers = status(daemon)["workers"]
    assert [w["targets"] for w in workers] == [[A], [C]]  # C takes the worker B left
    code, keys = redirect(daemon, C)
    assert (code, keys) == (0x0101, {"TargetAddress": f"127.0.0.1:{workers[1]['ports'][0]},1"})
    assert redirect(daemon, B)[0] == 0x0203  # not found, at the portal
    run("iscsi-inq", f"iscsi://127.0.0.1:{daemon.port}/{C}/0")


def test_a_sighup_reports_the_declared_pairs_its_workers_created(
    targetd_factory: DaemonFactory,
) -> None:
    """The portal's reload waits for each worker's declared pairs: their outcome is in
    ``targetctl status`` after a SIGHUP, as after ``targetctl reload``."""
    two = target(A) + '[[target.lun]]\nlun = 1\nsize = "64MiB"\n'
    daemon = targetd_factory("[server]\nworkers = 2\n" + two + target(B))
    assert daemon.config is not None and daemon.proc is not None
    pair = f'[[pair]]\nname = "p"\ntarget = "{A}"\nsource_lun = 0\ntarget_lun = 1\n'
    daemon.config.write_text("[server]\nworkers = 2\n" + two + target(B) + pair)
    os.kill(daemon.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while (last := status(daemon)["last_reload"]) is None:
        assert time.monotonic() < deadline, daemon.stderr
        time.sleep(0.1)
    assert last["trigger"] == "SIGHUP"
    assert (last["applied"], last["refused"]) == (["pair[0] 'p': created, LUN 0 -> LUN 1"], [])


def test_metrics_gather_every_worker(targetd_factory: DaemonFactory) -> None:
    port = free_port()
    daemon = targetd_factory(CONFIG + f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    for name, size in ((A, "1M"), (B, "2M")):
        run("qemu-io", "-f", "raw", "-c", f"write 0 {size}", f"iscsi://{daemon.portal}/{name}/0")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for name, worker, size in ((A, "0", 1 << 20), (B, "1", 2 << 20)):
        want = f'targetd_lun_bytes_total{{target="{name}",lun="0",op="write",worker="{worker}"}}'
        assert f"{want} {size}\n" in text, text
    assert text.count("# TYPE targetd_lun_bytes_total counter") == 1


def test_chap_is_checked_by_the_worker_after_the_redirect(targetd_factory: DaemonFactory) -> None:
    secret = 'chap = { user = "alice", secret = "a-secret-of-12+" }\n'
    chap_b = target(B).replace("[[target.lun]]", secret + "[[target.lun]]", 1)
    daemon = targetd_factory("[server]\nworkers = 2\n" + target(A) + chap_b)
    right = f"iscsi://alice%a-secret-of-12+@{daemon.portal}/{B}/0"
    assert "Peripheral Device Type:DIRECT_ACCESS" in run("iscsi-inq", right).stdout
    wrong = run("iscsi-inq", f"iscsi://alice%not-the-secret@{daemon.portal}/{B}/0", check=False)
    assert wrong.returncode != 0
    assert "Authentication failure" in wrong.stdout + wrong.stderr
    # Refused by B's worker, which logged it; the portal only redirected.
    assert any("worker=1 " in line and 'reason="login refused: AUTHENTICATION_FAILURE' in line
               for line in daemon.stderr.splitlines()), daemon.stderr  # fmt: skip


def two_luns(name: str) -> str:
    return target(name) + '[[target.lun]]\nlun = 1\nsize = "64MiB"\n'


def test_pair_commands_reach_the_worker_of_their_target(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory("[server]\nworkers = 2\n" + two_luns(A) + two_luns(B))
    sock = daemon.state_dir / "admin.sock"
    for name in (A, B):
        made = request(sock, "pair.create", {"name": "p", "target": name, "source_lun": 0,
                                             "target_lun": 1})  # fmt: skip
        assert made["name"] == "p"
    # Without a target a query goes to every worker and their answers are joined...
    listed = request(sock, "pair.list", {})
    assert sorted(p["source"] for p in listed) == [f"{A}/lun0", f"{B}/lun0"]
    # ...and a change is refused: each worker would take its own target and act.
    with pytest.raises(AdminError) as err:
        request(sock, "pair.split", {"name": "p"})
    assert (err.value.code, str(err.value)) == (
        "bad_request",
        "several targets, served by worker processes: name one with --target",
    )
    split = request(sock, "pair.split", {"name": "p", "target": B})
    assert split["source"] == f"{B}/lun0" and split["split_time"] is not None
    (kept,) = [p for p in request(sock, "pair.list", {}) if p["source"] == f"{A}/lun0"]
    assert kept["split_time"] is None  # the other worker's pair of that name is untouched
    assert [p["worker"] for p in status(daemon)["pairs"]] == [0, 1]


def test_workers_1_is_one_process(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(target(A) + target(B))
    snapshot = status(daemon)
    assert "workers" not in snapshot
    assert redirect(daemon, A)[0] == 0  # logs in right here


def login_status(port: int, name: str) -> int:
    """A login straight to a worker's port, without CHAP: its status (0 or 0201h)."""
    with RawInitiator(port) as ini:
        return int.from_bytes(ini.login(name).bhs[36:38], "big")


def restarted(daemon: Daemon, name: str, pid: int) -> int:
    """Kill the worker of ``name`` (``pid``) with SIGKILL; its successor's port."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        new_pid, port = worker_port(daemon, name)
        if new_pid != pid:
            return port
        time.sleep(0.1)
    pytest.fail(f"the worker of {name} was not started again:\n{daemon.stderr}")


def test_a_restarted_worker_serves_the_loaded_configuration_not_an_unloaded_edit(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(CONFIG)
    assert daemon.config is not None
    pid_a, _ = worker_port(daemon, A)
    pid_b, port_b = worker_port(daemon, B)
    # The file is edited, not reloaded: CHAP on both targets, and B's LUN shrunk (which a
    # reload refuses: it would lose data under the hosts).
    secret = 'chap = { user = "alice", secret = "a-secret-of-12+" }\n'
    edit = "".join(t.replace("[[target.lun]]", secret + "[[target.lun]]", 1)
                   for t in (target(A), target(B).replace("64MiB", "32MiB")))  # fmt: skip
    daemon.config.write_text("[server]\nworkers = 2\n" + edit)
    port_a = restarted(daemon, A, pid_a)
    # A's new worker serves what the portal loaded (no CHAP), as B's worker does and as
    # `targetctl status` says; not the edit, which no reload has put in force.
    assert login_status(port_a, A) == 0
    assert login_status(port_b, B) == 0
    # The reload puts the edit in force everywhere, and a worker started after it keeps it.
    refused = daemon.targetctl_json("reload")["refused"]
    assert refused == [
        f"target {B}: lun 0: size 33554432 bytes is smaller than the running 67108864: a LUN"
        " only grows (shrinking would lose the data past the new end under the hosts);"
        " still 67108864 bytes"
    ]
    assert login_status(port_a, A) == 0x0201
    assert login_status(port_b, B) == 0x0201
    # A worker started after the reload takes what it applied, CHAP, and keeps what it
    # refused, the size, as its running sibling and the portal do.
    port_b = restarted(daemon, B, pid_b)
    assert login_status(port_b, B) == 0x0201
    url = f"iscsi://alice%a-secret-of-12+@{daemon.portal}/{B}/0"
    assert f"Total size:{64 << 20}\n" in run("iscsi-readcapacity16", url).stdout
