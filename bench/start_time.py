"""From exec to listening: what one ``targetd serve`` start costs, per tree.

The integration tier starts a daemon for nearly every test, so a start's CPU is paid a few
hundred times a CI run. For each tree and configuration this starts ``python -m targetd
serve`` (cwd = the tree, so ``import targetd`` resolves to that tree) and polls its port
every 2 ms; when it accepts, the daemon's CPU so far (the sum of its threads'
``/proc/PID/task/*/schedstat`` run time) and the wall time since exec are taken, then it is
stopped with SIGTERM. Trees take turns start by start (interleaved, so load changes hit both
alike); medians, and the ratio to the first tree. A tree runs from its .pyc files when it has
them: with PYTHONDONTWRITEBYTECODE set a tree never compiled (``python3 -m compileall``, as
tests/conftest.py does) compiles every module at every start, about half a start's CPU.

    python3 bench/start_time.py main=/work/main new=.          # 20 starts each
    python3 bench/start_time.py new=. --starts 40
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A typical integration test's configuration: one target, two file LUNs (test_integration_xcopy).
TEST_CONFIG = """\
[[target]]
name = "iqn.2026-11.org.targetd:bench"
[[target.lun]]
lun = 0
path = "a.img"
size = "64MiB"
[[target.lun]]
lun = 1
path = "b.img"
size = "64MiB"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def start_once(tree: Path, config: str | None, work: Path) -> tuple[float, float]:
    """(wall, cpu) seconds from exec to the port accepting a connection."""
    port = free_port()
    state = Path(tempfile.mkdtemp(dir=work))
    argv = [sys.executable, "-m", "targetd", "serve", "--listen", f"127.0.0.1:{port}"]
    argv += ["--state-dir", str(state)]
    if config is not None:
        path = state / "targetd.toml"
        path.write_text(config)
        argv += ["--config", str(path)]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=tree, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise SystemExit(f"{tree}: targetd exited {proc.returncode}:\n{err}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    wall = time.monotonic() - t0
                    return wall, cpu_seconds(proc.pid)
            except OSError:
                time.sleep(0.002)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trees", nargs="+", help="NAME=PATH, the first is the reference")
    ap.add_argument("--starts", type=int, default=20, help="starts per tree and configuration")
    args = ap.parse_args()
    trees = [(n, Path(p).resolve()) for n, p in (t.split("=", 1) for t in args.trees)]
    configs = {"default": None, "test (2 file LUNs)": TEST_CONFIG}
    print(f"load average {os.getloadavg()[0]:.1f}, {args.starts} starts each, interleaved")
    print(f"{'configuration':20s} {'tree':10s} {'wall ms':>8s} {'cpu ms':>8s} {'cpu ratio':>9s}")
    with tempfile.TemporaryDirectory(prefix="start-time-") as tmp:
        for label, config in configs.items():
            walls: dict[str, list[float]] = {n: [] for n, _ in trees}
            cpus: dict[str, list[float]] = {n: [] for n, _ in trees}
            for _ in range(args.starts):
                for name, tree in trees:
                    wall, cpu = start_once(tree, config, Path(tmp))
                    walls[name].append(wall)
                    cpus[name].append(cpu)
            ref = statistics.median(cpus[trees[0][0]])
            for name, _ in trees:
                w, c = statistics.median(walls[name]), statistics.median(cpus[name])
                print(f"{label:20s} {name:10s} {w * 1000:8.0f} {c * 1000:8.0f} {c / ref:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
