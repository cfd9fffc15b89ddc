"""Boots a small Linux guest under QEMU with a shell script, against a targetd on loopback.

The guest (built by build-image.sh, cached in .cache/guest/) runs open-iscsi, sg3_utils, mt-st
and e2fsprogs. QEMU's user network makes the host's 127.0.0.1:PORT reachable from the guest as
10.0.2.2:PORT, so a daemon started with ``start_for_guest`` advertises that
address in SendTargets.

``run_guest(script, daemon)`` boots the guest, runs the script and returns the serial console
output; it fails the test with that output if the script exits non-zero, the guest dies, or the
time runs out. A script can ask the host to act mid-run with ``host ACTION`` (lib.sh); the
harness runs ``actions[ACTION]()`` and answers the guest when it is done.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

import pytest
from conftest import REPO, Daemon

GUEST_DIR = Path(__file__).resolve().parent
CACHE = REPO / ".cache" / "guest"
# The address QEMU's user network gives the host, as the guest sees it.
HOST_FROM_GUEST = "10.0.2.2"
GUEST_TIMEOUT = 90.0
# What a failure message quotes of the console: the end, where the failing step is.
FAILURE_TAIL_LINES = 120

EXIT_RE = re.compile(r"@@guest-exit (\d+)")
HOST_RE = re.compile(r"@@host (.+)")


DEFAULT_TARGETS = """\
[[target]]
name = "iqn.2026-11.org.targetd:default"
[[target.lun]]
lun = 0
[[target.lun]]
lun = 1
"""


def guest_config(port: int, targets_toml: str = DEFAULT_TARGETS) -> str:
    """A configuration whose portal listens on loopback and advertises the guest's view of it.

    ``targets_toml`` holds the ``[[target]]`` tables; by default the built-in target with two
    1 GiB LUNs.
    """
    portal = f'[[portal]]\nlisten = "127.0.0.1:{port}"\nadvertise = "{HOST_FROM_GUEST}:{port}"\n'
    return f"{portal}\n{targets_toml}"


def start_for_guest(factory: Callable[..., Daemon], targets_toml: str = DEFAULT_TARGETS) -> Daemon:
    """Starts a daemon (with conftest's ``targetd_factory``) that a guest can discover."""
    # The port is the factory's choice, so the file is rewritten once the daemon has one.
    daemon = factory(guest_config(0, targets_toml), start=False)
    assert daemon.config is not None
    daemon.config.write_text(guest_config(daemon.port, targets_toml))
    return daemon.start()


@functools.cache
@functools.cache
def guest_image() -> tuple[Path, Path]:
    """(kernel, initramfs), built once per test run; build-image.sh keeps its own cache
    across runs. Asked once per run, not per boot: even a cache hit costs build-image.sh
    2-6 s (apt-cache and dpkg-query for its stamp), and a run boots the guest 16-17 times."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is missing: run scripts/install-test-deps.sh")
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(GUEST_DIR / "build-image.sh"), str(CACHE)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    if proc.returncode != 0:
        pytest.fail(f"building the guest image failed:\n{proc.stdout}\n{proc.stderr}")
    print(f"guest image ready in {time.monotonic() - started:.1f}s")
    return CACHE / "vmlinuz", CACHE / "initramfs.cpio.gz"


def _payload_cpio(files: Mapping[str, str], workdir: Path) -> Path:
    """An uncompressed newc archive of /guest/NAME for each file (mode 0755)."""
    root = workdir / "payload"
    (root / "guest").mkdir(parents=True)
    for name, text in files.items():
        path = root / "guest" / name
        path.write_text(text)
        path.chmod(0o755)
    names = ["guest"] + [f"guest/{name}" for name in sorted(files)]
    archive = workdir / "payload.cpio"
    with archive.open("wb") as out:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"],
            cwd=root,
            input="\n".join(names).encode() + b"\n",
            stdout=out,
            check=True,
        )
    return archive


def _initrd(payload: Path, base: Path, workdir: Path) -> Path:
    # The uncompressed archive goes first: the kernel does not find an archive that follows
    # a gzip stream unless that stream's length happens to be padded just right.
    initrd = workdir / "initrd"
    with initrd.open("wb") as out:
        for part in (payload, base):
            with part.open("rb") as src:
                shutil.copyfileobj(src, out)
    return initrd


def qemu_command(kernel: Path, initrd: Path) -> list[str]:
    return [
        "qemu-system-x86_64",
        # KVM aborts or hangs here with a stock kernel; TCG with one CPU leaves the other
        # host core to the target.
        "-accel", "tcg", "-cpu", "max", "-M", "pc", "-smp", "1", "-m", "256",
        "-nodefaults", "-display", "none", "-no-reboot",
        "-serial", "stdio",
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", "console=ttyS0 loglevel=4 panic=-1",
        "-netdev", "user,id=net0",
        "-device", "virtio-net-pci,netdev=net0",
    ]  # fmt: skip


def run_guest(
    script: str | Path,
    daemon: Daemon,
    *,
    env: Mapping[str, str] | None = None,
    actions: Mapping[str, Callable[[], object]] | None = None,
    timeout: float = GUEST_TIMEOUT,
) -> str:
    """Boots the guest with ``script`` (text, or a path to a .sh file) and returns its console.

    ``env`` adds variables to /guest/env beside TARGET_PORTAL and TARGET_IQN. ``actions``
    adds host actions to the default "restart-target" (``daemon.restart``).
    """
    kernel, base = guest_image()
    text = script.read_text() if isinstance(script, Path) else script
    variables = {
        "TARGET_PORTAL": f"{HOST_FROM_GUEST}:{daemon.port}",
        "TARGET_IQN": daemon.iqn,
        **(env or {}),
    }
    host_actions: dict[str, Callable[[], object]] = {"restart-target": daemon.restart}
    host_actions.update(actions or {})
    with tempfile.TemporaryDirectory(prefix="targetd-guest-") as tmp:
        workdir = Path(tmp)
        files = {
            "test.sh": text,
            "lib.sh": (GUEST_DIR / "lib.sh").read_text(),
            "env": "".join(f"{k}={shlex.quote(v)}\n" for k, v in variables.items()),
        }
        initrd = _initrd(_payload_cpio(files, workdir), base, workdir)
        return _boot(qemu_command(kernel, initrd), host_actions, timeout, daemon)


def _boot(
    argv: list[str],
    actions: Mapping[str, Callable[[], object]],
    timeout: float,
    daemon: Daemon,
) -> str:
    lines: list[str] = []
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdin is not None and proc.stdout is not None
    # A reader thread turns the console into a queue, so the deadline holds even when the
    # guest prints nothing.
    console: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, console), daemon=True)
    reader.start()
    status: int | None = None
    problem = ""
    try:
        deadline = started + timeout
        while status is None:
            try:
                line = console.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                problem = f"the guest did not finish within {timeout:.0f}s"
                break
            if line is None:
                problem = f"QEMU exited ({proc.wait()}) before the script finished"
                break
            lines.append(line)
            if m := EXIT_RE.search(line):
                status = int(m.group(1))
            elif m := HOST_RE.search(line):
                reply = _host_action(actions, m.group(1).strip())
                proc.stdin.write(reply.encode() + b"\n")
                proc.stdin.flush()
    finally:
        if proc.poll() is None and status is not None:
            # The guest reboots right after its exit line, and -no-reboot makes QEMU exit.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(5)
    output = "\n".join(lines)
    elapsed = time.monotonic() - started
    if status == 0:
        print(f"guest run took {elapsed:.1f}s")
        return output
    if not problem:
        problem = f"the guest script exited with status {status}"
    tail = "\n".join(lines[-FAILURE_TAIL_LINES:])
    pytest.fail(
        f"{problem} after {elapsed:.1f}s; guest console (last {FAILURE_TAIL_LINES} lines):\n"
        f"{tail}\n--- targetd log (last 40 lines):\n" + "\n".join(daemon.stderr.splitlines()[-40:]),
        pytrace=False,
    )


def _host_action(actions: Mapping[str, Callable[[], object]], name: str) -> str:
    action = actions.get(name)
    if action is None:
        return f"error no host action {name!r}"
    try:
        action()
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):
            raise
        return f"error {type(err).__name__}: {err}".replace("\n", " ")
    return "ok"


def _read_lines(stream: IO[bytes], console: queue.Queue[str | None]) -> None:
    for raw in stream:
        console.put(raw.decode(errors="replace").rstrip("\r\n"))
    console.put(None)
