"""A failing integration test's report ends with the last lines of the logs of the daemons
it started (tests/conftest.py, ``pytest_runtest_makereport``): a failure seen once on a
loaded machine is diagnosed from them, or not at all."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, Daemon, dump_stacks

# What conftest.py imports from: the tests' helpers, the Ceph tier's fixtures, the repo.
PYTHONPATH = ":".join(str(p) for p in (REPO / "tests", REPO / "tests" / "ceph", REPO))

INNER = """
from conftest import Daemon


def test_fails(targetd: Daemon) -> None:
    assert targetd.targetctl("status").returncode == 0
    assert False, "failing on purpose"


def test_passes(targetd: Daemon) -> None:
    assert targetd.targetctl("status").returncode == 0
"""


def test_a_failed_test_reports_its_daemons_log_and_a_passed_one_does_not(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rA",
         "--basetemp", str(tmp_path / "base"), "--rootdir", str(tmp_path),
         str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": PYTHONPATH},
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "1 failed, 1 passed" in out, out
    failures = out.split("= FAILURES =", 1)[1].split("= PASSES =", 1)[0]
    assert "test_fails" in failures and "test_passes" not in failures, out
    section = failures.split("targetd0.log (port ", 1)[1]
    assert "event=serving" in section, out
    assert out.count("targetd0.log (port ") == 1, out  # not for the test that passed


CRASHING = """
import os
import signal

from conftest import Daemon


def test_its_daemon_crashes(targetd: Daemon) -> None:
    os.kill(targetd.proc.pid, signal.SIGSEGV)
    targetd.proc.wait()
    assert False, "failing on purpose"
"""


def test_a_daemon_that_crashed_is_reported_with_its_signal_and_its_stacks(
    tmp_path: Path,
) -> None:
    """A daemon killed by a fault in a C library (librados) leaves no log line of its own:
    its initiators saw their connections closed, and nothing said why. The daemon's log
    ends with its threads' stacks (faulthandler) and the report says how it ended."""
    (tmp_path / "test_inner.py").write_text(CRASHING)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path / "base"), "--rootdir", str(tmp_path),
         str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": PYTHONPATH},
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "targetd0.log (port " in out, out
    section = out.split("targetd0.log (port ", 1)[1]
    assert "lines; it exited with status -11 (SIGSEGV)" in section, out
    assert "Fatal Python error: Segmentation fault" in section, out
    assert "in main" in section, out  # the main thread's stack


def test_a_hung_daemon_can_be_asked_for_its_stacks(targetd: Daemon) -> None:
    """``dump_stacks`` (what a test that found a daemon hung calls before its report): the
    daemon's log gets every thread's stack (SIGUSR1, faulthandler) and its asyncio tasks
    grouped by where they wait (SIGUSR2), and the daemon serves on."""
    dump_stacks([targetd])
    log = targetd.stderr
    assert "Current thread" in log  # faulthandler's header of the thread it interrupted
    assert "asyncio tasks" in log
    assert re.search(r"event=tasks count=\d+ one=\S+ stack=", log), log[-3000:]
    assert targetd.targetctl("status").returncode == 0
