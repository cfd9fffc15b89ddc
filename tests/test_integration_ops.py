"""What an operator relies on: clean SIGTERM, SIGHUP reload, the admin socket, metrics,
systemd readiness, and logs that never carry a CHAP secret."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from clients import run
from conftest import REPO, Daemon, DaemonFactory, free_port
from raw_initiator import ISID, RawInitiator

from targetd.iscsi.pdu import Op

IQN = "iqn.2026-11.org.targetd.test:ops"
WRITE_BYTES = 256 * 1024  # one command's immediate data: FirstBurstLength of RawInitiator
LUN_CONFIG = f"""
[[target]]
name = "{IQN}"
[[target.lun]]
lun = 0
size = "64MiB"
"""


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "targetd.ctl", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )


def logged_in(daemon: Daemon, name: str = "iqn.2026-11.org.targetd.test:ops-host") -> RawInitiator:
    ini = RawInitiator(daemon.port, name=name)
    resp = ini.login(daemon.iqn)
    assert resp.bhs[36:38] == b"\0\0", resp.bhs.hex()
    ini.clear_unit_attentions()
    return ini


# -- SIGTERM -----------------------------------------------------------------------------------
def test_sigterm_with_writes_in_flight_keeps_every_acknowledged_write(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(LUN_CONFIG)
    ini = logged_in(daemon)
    count = 100  # inside the CmdSN window, so the target takes them all
    payloads = {}
    headers = []
    for i in range(count):
        lba = i * (WRITE_BYTES // 512)
        cdb = bytes([0x2A, 0x08]) + lba.to_bytes(4, "big") + bytes([0]) + (512).to_bytes(2, "big")
        cdb += bytes(1)  # WRITE(10), FUA: each write goes through the executor, so it waits
        hdr = ini.scsi_header(cdb, write=WRITE_BYTES, data_len=WRITE_BYTES)
        itt = struct.unpack_from(">I", hdr, 16)[0]
        payloads[itt] = (lba, os.urandom(16) * (WRITE_BYTES // 16))
        headers.append((hdr, payloads[itt][1]))

    def sender() -> None:
        try:
            for hdr, data in headers:
                ini.send(hdr, data)
        except OSError:
            pass  # the target stopped reading and closed: the rest were never acknowledged

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    acknowledged: list[int] = []
    after_signal = 0
    signalled = False
    ini.sock.settimeout(20)
    try:
        while True:
            resp = ini.recv()
            if resp.opcode == Op.ASYNC_MESSAGE:  # the shutdown's logout request
                assert signalled and resp.bhs[36] == 1
                continue
            assert resp.opcode == Op.SCSI_RESPONSE, hex(resp.opcode)
            assert resp.bhs[3] == 0, f"status {resp.bhs[3]:#x}"
            acknowledged.append(resp.u32(16))
            after_signal += signalled
            if len(acknowledged) == 10:
                os.kill(daemon.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
                signalled = True
    except ConnectionError:
        pass
    thread.join(10)
    assert daemon.proc.wait(20) == 0, daemon.stderr  # type: ignore[union-attr]
    assert len(acknowledged) >= 10
    # The drain answered commands that were running when the signal came.
    assert after_signal >= 1, daemon.stderr
    assert "event=drained abandoned_commands=0" in daemon.stderr, daemon.stderr
    image = daemon.state_dir / f"{IQN.replace(':', '_')}/lun0.img"
    with image.open("rb") as f:
        for itt in acknowledged:
            lba, data = payloads[itt]
            f.seek(lba * 512)
            assert f.read(WRITE_BYTES) == data, f"acknowledged write itt {itt:#x} lost"


# -- admin socket -------------------------------------------------------------------------------
def test_targetctl_status_json_against_a_running_daemon(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(LUN_CONFIG)
    sock = daemon.state_dir / "admin.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    with logged_in(daemon) as ini:
        status = daemon.targetctl_json("status")
        text = daemon.targetctl("status")
        ini.logout()
    assert status["listening"] == [daemon.portal]
    (session,) = status["sessions"]
    assert session["initiator"] == ini.name
    assert session["isid"] == ISID.hex()
    assert session["target"] == IQN
    assert session["tsih"] >= 1
    assert [c["commands_in_flight"] for c in session["connections"]] == [0]
    assert session["connections"][0]["peer"].startswith("127.0.0.1:")
    (lun,) = status["luns"]
    assert lun["type"] == "block" and lun["size"] == 64 << 20 and lun["block_size"] == 512
    assert lun["path"].endswith("lun0.img")
    assert lun["stats"]["other_ops"] >= 1  # the TEST UNIT READYs
    assert status["pairs"] == [] and status["copy_operations"] == []
    assert text.returncode == 0, text.stderr
    assert f"tsih {session['tsih']} {ini.name}" in text.stdout, text.stdout


def test_targetctl_without_a_daemon_says_so(tmp_path: Path) -> None:
    proc = ctl("status", "--state-dir", str(tmp_path))
    assert proc.returncode == 1
    assert "no daemon listening" in proc.stderr


# -- metrics -----------------------------------------------------------------------------------
def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return resp.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{re.escape(name)}{{{re.escape(want)}}} (\S+)$", text, re.M)
    assert match, f"{name}{{{want}}} not in:\n{text}"
    return float(match.group(1))


def test_metrics_endpoint_reports_the_bytes_a_client_wrote(
    targetd_factory: DaemonFactory,
) -> None:
    port = free_port()
    daemon = targetd_factory(LUN_CONFIG + f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    run("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 3M", "-c", "read 0 1M", daemon.url(0))
    text = scrape(port)
    lun = {"target": IQN, "lun": "0"}
    assert sample(text, "targetd_lun_bytes_total", **lun, op="write") == 3 << 20
    assert sample(text, "targetd_lun_bytes_total", **lun, op="read") >= 1 << 20
    writes = sample(text, "targetd_lun_operations_total", **lun, op="write")
    assert writes >= 1
    assert sample(text, "targetd_lun_latency_seconds_count", **lun, op="write") == writes
    assert (
        sample(text, "targetd_lun_latency_seconds_bucket", **lun, op="write", le="+Inf") == writes
    )
    assert sample(text, "targetd_sessions", type="normal") == 0  # qemu-io logged out
    # The event loop's own lag, probed while the endpoint serves.
    probes = float(re.search(r"^targetd_event_loop_lag_seconds_count (\S+)$", text, re.M)[1])
    assert probes >= 1
    assert sample(text, "targetd_event_loop_lag_seconds_bucket", le="+Inf") == probes


def test_the_first_command_unit_attention_is_not_an_error(
    targetd_factory: DaemonFactory,
) -> None:
    """``iscsi-ls -s`` gets the POWER ON/RESET unit attention on its first command to the
    LUN: status and metrics show it as a unit attention, and errors stay 0 until a command
    really fails."""
    port = free_port()
    daemon = targetd_factory(LUN_CONFIG + f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    run("iscsi-ls", "-s", daemon.url(None))
    (lun,) = daemon.targetctl_json("status")["luns"]
    assert (lun["stats"]["errors"], lun["stats"]["attentions"]) == (0, 1)
    assert "errors 0, unit attentions 1" in daemon.targetctl("status").stdout
    labels = {"target": IQN, "lun": "0"}
    text = scrape(port)
    assert sample(text, "targetd_lun_errors_total", **labels) == 0
    assert sample(text, "targetd_lun_unit_attentions_total", **labels) == 1
    with logged_in(daemon) as ini:  # one more unit attention, cleared
        beyond_the_end = bytes([0x28, 0]) + (1 << 20).to_bytes(4, "big") + bytes([0, 0, 1, 0])
        assert sense_of(ini.command(beyond_the_end, read=512)) == (2, (0x5, 0x21, 0x00))
        ini.logout()
    text = scrape(port)
    assert sample(text, "targetd_lun_errors_total", **labels) == 1
    assert sample(text, "targetd_lun_unit_attentions_total", **labels) == 2


def test_metrics_are_off_by_default(targetd: Daemon) -> None:
    assert "metrics" not in targetd.stderr.replace("targetd.metrics", "")


# -- SIGHUP ------------------------------------------------------------------------------------
def test_sighup_adds_a_lun_and_reports_what_it_cannot_apply(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(LUN_CONFIG)
    assert daemon.config is not None
    daemon.config.write_text(
        LUN_CONFIG + '[[target.lun]]\nlun = 1\nsize = "8MiB"\n' + "[limits]\nmax_sessions = 8\n"
    )
    os.kill(daemon.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while "reload not applied" not in daemon.stderr and time.monotonic() < deadline:
        time.sleep(0.1)
    log = daemon.stderr
    assert f'event="reload applied" change="target {IQN}: lun 1 added"' in log, log
    assert 'event="reload not applied" change="max_sessions changed: needs a restart"' in log, log
    out = run("iscsi-inq", daemon.url(1)).stdout
    assert "Peripheral Device Type:DIRECT_ACCESS" in out
    status = daemon.targetctl_json("status")
    assert [(lun["lun"], lun["size"]) for lun in status["luns"]] == [(0, 64 << 20), (1, 8 << 20)]
    # The portal the daemon listens on did not move.
    assert status["listening"] == [daemon.portal]


def test_targetctl_reload_prints_its_outcome_even_when_nothing_changed(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(LUN_CONFIG)
    assert daemon.config is not None
    # The same file: a user who runs `targetctl reload` gets an answer, not silence.
    same = daemon.targetctl("reload")
    assert (same.returncode, same.stdout) == (0, "reload: nothing changed\n"), same.stderr
    daemon.config.write_text(LUN_CONFIG + '[[target.lun]]\nlun = 1\nsize = "8MiB"\n')
    added = daemon.targetctl("reload")
    assert (added.returncode, added.stdout) == (0, f"applied: target {IQN}: lun 1 added\n")
    # A file that does not parse is refused whole: exit 1, so `reload && ...` stops (it
    # exited 0 with "not applied: bad configuration"); the daemon keeps what it runs.
    daemon.config.write_text(LUN_CONFIG + "garbage [\n")
    for json_too in ((), ("--json",)):
        broken = daemon.targetctl("reload", *json_too)
        assert broken.returncode == 1, (broken.stdout, broken.stderr)
        assert "bad configuration: config: " in broken.stdout
    assert daemon.targetctl("status").returncode == 0


def test_sighup_and_targetctl_reload_report_the_declared_pairs_alike(
    targetd_factory: DaemonFactory,
) -> None:
    """Whichever way a reload comes, its whole outcome (the declared pairs created or found
    not to match too) is logged and shown by ``targetctl status``; ``targetctl reload``
    also prints it."""
    four = LUN_CONFIG + lun(1, "64MiB") + lun(2, "64MiB") + lun(3, "64MiB")
    daemon = targetd_factory(four)
    assert daemon.config is not None and daemon.proc is not None
    assert "Last reload: none since the start" in daemon.targetctl("status").stdout
    created = "pair[0] 'p0': created, LUN 0 -> LUN 1"
    daemon.config.write_text(four + '[[pair]]\nname = "p0"\nsource_lun = 0\ntarget_lun = 1\n')
    os.kill(daemon.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while (last := daemon.targetctl_json("status")["last_reload"]) is None:
        assert time.monotonic() < deadline, daemon.stderr
        time.sleep(0.1)
    assert (last["trigger"], last["applied"], last["refused"]) == ("SIGHUP", [created], [])
    text = daemon.targetctl("status").stdout
    assert re.search(r"^Last reload: SIGHUP at [-0-9]+ [0-9:]+ UTC: 1 applied, 0 not applied$",
                     text, re.M), text  # fmt: skip
    assert f"\n  applied: {created}\n" in text, text
    assert 'event="reload finished" trigger=SIGHUP applied=1 not_applied=0' in daemon.stderr
    # The same file declaring p0 on other LUNs: refused alike by both ways.
    daemon.config.write_text(four + '[[pair]]\nname = "p0"\nsource_lun = 0\ntarget_lun = 2\n')
    mismatch = "pair[0] 'p0': declared LUN 0 -> LUN 2, but the existing pair is"
    answer = daemon.targetctl("reload")
    (line,) = answer.stdout.splitlines()
    assert line.startswith(f"not applied: {mismatch}"), answer.stdout
    last = daemon.targetctl_json("status")["last_reload"]
    assert (last["trigger"], last["applied"]) == ("targetctl reload", [])
    assert last["refused"] == [line.removeprefix("not applied: ")]
    os.kill(daemon.proc.pid, signal.SIGHUP)
    while daemon.targetctl_json("status")["last_reload"]["trigger"] != "SIGHUP":
        assert time.monotonic() < deadline + 30, daemon.stderr
        time.sleep(0.1)
    by_signal = daemon.targetctl_json("status")["last_reload"]
    assert (by_signal["applied"], by_signal["refused"]) == ([], last["refused"])
    assert daemon.stderr.count(f'change="{mismatch}') == 2, daemon.stderr


def reload_with(daemon: Daemon, text: str, marker: str) -> str:
    """Write the new configuration, SIGHUP, and return the log once ``marker`` is in it."""
    assert daemon.config is not None and daemon.proc is not None
    daemon.config.write_text(text)
    os.kill(daemon.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while marker not in daemon.stderr and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker in daemon.stderr, daemon.stderr
    return daemon.stderr


def lun(n: int, size: str = "8MiB") -> str:
    return f'[[target.lun]]\nlun = {n}\nsize = "{size}"\n'


def target(name: str, *luns: int, acl: tuple[str, ...] = ()) -> str:
    allowed = f"allowed_initiators = {json.dumps(list(acl))}\n" if acl else ""
    return f'[[target]]\nname = "{name}"\n{allowed}' + "".join(lun(n) for n in luns)


def async_logout_request(ini: RawInitiator) -> None:
    """The next PDU is an Async Message asking the initiator to log out (AsyncEvent 1)."""
    ini.sock.settimeout(5)
    resp = ini.recv()
    assert (resp.opcode, resp.bhs[36]) == (Op.ASYNC_MESSAGE, 1), resp.bhs.hex()


TUR = bytes(6)
READ10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0])
LUN_NOT_SUPPORTED = (0x5, 0x25, 0x00)


def sense_of(result: tuple[int, bytes, bytes]) -> tuple[int, tuple[int, int, int] | None]:
    status, _, sense = result
    return status, (sense[2] & 0xF, sense[12], sense[13]) if sense else None


def test_a_lun_added_by_sighup_can_be_paired(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(target(IQN, 0))
    ini = logged_in(daemon)
    ini.command(bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 8, 0]), data=b"\x5a" * 4096)
    reload_with(daemon, target(IQN, 0, 1), f"target {IQN}: lun 1 added")
    assert sense_of(ini.command(TUR)) == (0x02, (0x6, 0x3F, 0x0E))  # REPORTED LUNS CHANGED
    # PAIR OUT CREATE, source LUN 0, target LUN 1 (added by the reload), sent to LUN 0.
    create = bytes([0xC4, 0x01, 0, 0, 0, 1]) + bytes(10)
    assert sense_of(ini.command(create)) == (0, None)
    state = daemon.targetctl("pair", "wait", "lun0-lun1", "--state", "DUPLEX", "--timeout", "20")
    assert state.returncode == 0, state.stderr
    ini.clear_unit_attentions(1)
    status, data, _ = ini.command(bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0]), lun=1, read=4096)
    assert (status, data) == (0, b"\x5a" * 4096)


def test_a_lun_removed_by_sighup_is_gone_and_its_sessions_asked_to_log_out(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(target(IQN, 0, 1))
    ini = logged_in(daemon)
    ini.clear_unit_attentions(1)
    log = reload_with(
        daemon, target(IQN, 0), f"target {IQN}: lun 1 removed: its sessions are asked to log out"
    )
    assert 'event="reload applied"' in log
    async_logout_request(ini)
    assert sense_of(ini.command(READ10, lun=1, read=512)) == (0x02, LUN_NOT_SUPPORTED)
    # LUN 0 still serves this session until it logs out (after a unit attention).
    assert sense_of(ini.command(TUR)) == (0x02, (0x6, 0x3F, 0x0E))
    assert sense_of(ini.command(TUR)) == (0, None)
    again = logged_in(daemon, "iqn.2026-11.org.targetd.test:other")
    status, data, _ = again.command(bytes([0xA0]) + bytes(5) + (64).to_bytes(4, "big") + bytes(2),
                                    read=64)  # fmt: skip
    assert status == 0 and data[:4] == (8).to_bytes(4, "big")  # one LUN left
    status = daemon.targetctl_json("status")
    assert [entry["lun"] for entry in status["luns"]] == [0]


def test_a_paired_lun_is_not_removed_by_sighup(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(target(IQN, 0, 1))
    created = daemon.targetctl("pair", "create", "db", "0", "1")
    assert created.returncode == 0, created.stderr
    ini = logged_in(daemon)
    ini.clear_unit_attentions(1)
    log = reload_with(daemon, target(IQN, 0), "reload not applied")
    message = f"target {IQN}: lun 1 removed: it is in pair db (delete the pair first): still served"
    assert f'event="reload not applied" change="{message}"' in log
    assert sense_of(ini.command(READ10, lun=1, read=512)) == (0, None)
    # Once the pair is deleted, the same reload removes it.
    assert daemon.targetctl("pair", "delete", "db").returncode == 0
    reload_with(daemon, target(IQN, 0), f"target {IQN}: lun 1 removed")
    async_logout_request(ini)
    assert sense_of(ini.command(READ10, lun=1, read=512)) == (0x02, LUN_NOT_SUPPORTED)


OTHER = "iqn.2026-11.org.targetd.test:ops-other"


def test_a_target_removed_by_sighup_logs_its_sessions_out(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(target(IQN, 0) + target(OTHER, 0))
    gone = RawInitiator(daemon.port)
    assert gone.login(OTHER).bhs[36] == 0
    gone.clear_unit_attentions()
    stays = logged_in(daemon)
    reload_with(daemon, target(IQN, 0), f"target {OTHER} removed: its sessions are logged out")
    async_logout_request(gone)
    # From the reload on, the session reaches no LU; it is closed if it does not log out.
    assert sense_of(gone.command(READ10, read=512)) == (0x02, LUN_NOT_SUPPORTED)
    assert gone.closed_by_target(timeout=8)
    again = RawInitiator(daemon.port)
    assert again.login(OTHER).bhs[36:38] == b"\x02\x03"  # NOT FOUND
    assert sense_of(stays.command(READ10, read=512)) == (0, None)


def test_an_initiator_removed_from_the_acl_by_sighup_loses_its_session(
    targetd_factory: DaemonFactory,
) -> None:
    host, keeper = "iqn.2026-11.org.test:host", "iqn.2026-11.org.test:keeper"
    daemon = targetd_factory(target(IQN, 0, acl=(host, keeper)))
    dropped, kept = logged_in(daemon, host), logged_in(daemon, keeper)
    reload_with(daemon, target(IQN, 0, acl=(keeper,)), f"target {IQN}: allowed_initiators updated")
    async_logout_request(dropped)
    assert sense_of(dropped.command(READ10, read=512)) == (0x02, LUN_NOT_SUPPORTED)
    write = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])
    assert sense_of(dropped.command(write, data=bytes(512))) == (0x02, LUN_NOT_SUPPORTED)
    assert sense_of(kept.command(READ10, read=512)) == (0, None)
    assert dropped.closed_by_target(timeout=8)
    assert RawInitiator(daemon.port, name=host).login(IQN).bhs[36:38] == b"\x02\x02"
    assert sense_of(kept.command(READ10, read=512)) == (0, None)
    assert "access revoked" in daemon.stderr


# -- logs --------------------------------------------------------------------------------------
USER, SECRET = "ops-user", "ops-secret-never-logged"
NEW_SECRET = "ops-rotated-secret-2"


def test_chap_secrets_never_appear_in_the_logs(targetd_factory: DaemonFactory) -> None:
    chap = f'chap = {{ user = "{USER}", secret = "{SECRET}" }}\n'
    text = LUN_CONFIG.replace("[[target.lun]]", chap + "[[target.lun]]")
    daemon = targetd_factory(text)
    good = run("iscsi-inq", daemon.url(0, user=USER, secret=SECRET), check=False)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = run("iscsi-inq", daemon.url(0, user=USER, secret="wrong-secret-xyz"), check=False)
    assert bad.returncode != 0
    assert daemon.config is not None
    daemon.config.write_text(text.replace(SECRET, NEW_SECRET))
    os.kill(daemon.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while "CHAP updated" not in daemon.stderr and time.monotonic() < deadline:
        time.sleep(0.1)
    rotated = run("iscsi-inq", daemon.url(0, user=USER, secret=NEW_SECRET), check=False)
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert daemon.stop() == 0
    log = daemon.stderr
    assert "CHAP updated" in log and "event=login" in log, log
    for secret in (SECRET, NEW_SECRET, "wrong-secret-xyz"):
        assert secret not in log
    # One event per line, each a key=value record.
    for line in log.splitlines():
        assert line.startswith("ts="), line


# -- systemd -----------------------------------------------------------------------------------
def test_ready_watchdog_and_stopping_reach_notify_socket(
    targetd_factory: DaemonFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(path))
        notify.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "200000")
        daemon = targetd_factory(LUN_CONFIG)
        messages = [notify.recv(4096).decode() for _ in range(3)]
        assert messages[0] == "WATCHDOG=1" or messages[0].startswith("READY=1")
        assert any(m.startswith("READY=1") for m in messages), messages
        assert messages.count("WATCHDOG=1") >= 1, messages
        assert daemon.stop() == 0
        rest = []
        while not any(m.startswith("STOPPING=1") for m in rest):
            rest.append(notify.recv(4096).decode())


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed: run scripts/install-test-deps.sh")
    unit = (REPO / "systemd/targetd.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "Restart=on-failure" in unit
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in unit
    # verify checks that ExecStart's program exists: point it at the targetd of the Python
    # running the tests (the checkout's .venv/bin/targetd), or one on PATH; where none is
    # installed (tests run from the checkout by an interpreter without it), at a stand-in
    # that runs the checkout's.
    beside = Path(sys.executable).parent
    installed = shutil.which("targetd", path=os.pathsep.join([str(beside), os.environ["PATH"]]))
    if installed is None:
        stand_in = tmp_path / "targetd"
        stand_in.write_text(f'#!/bin/sh\ncd {REPO} && exec {sys.executable} -m targetd "$@"\n')
        stand_in.chmod(0o755)
        installed = str(stand_in)
    copy = tmp_path / "targetd.service"
    copy.write_text(unit.replace("/usr/local/bin/targetd", installed))
    proc = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 even for unknown keys; every complaint names the file, so none may.
    complaints = [line for line in proc.stderr.splitlines() if str(copy) in line]
    assert proc.returncode == 0 and not complaints, proc.stderr
