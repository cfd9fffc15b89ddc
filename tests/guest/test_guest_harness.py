"""The guest harness itself: a failing script, a host action, a hung guest."""

from __future__ import annotations

import time

import pytest
from conftest import DaemonFactory
from guest_vm import run_guest


def test_guest_failure_carries_console_and_host_actions_run(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(start=False)  # the script never dials it
    calls: list[str] = []
    script = """. ./lib.sh
echo before-the-failure
host mark
host no-such-action
echo unreachable
"""
    with pytest.raises(pytest.fail.Exception) as failure:
        run_guest(script, daemon, actions={"mark": lambda: calls.append("mark")})
    message = str(failure.value)
    assert calls == ["mark"]
    assert "the guest script exited with status 1" in message
    assert "before-the-failure" in message
    assert "FAIL: host action 'no-such-action' failed: error no host action 'no-such-action'" in (
        message
    )
    assert "unreachable" not in message


DEADLINES = (20, 60)


def test_guest_that_hangs_is_killed_at_the_deadline(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(start=False)
    # A guest under software emulation on a busy machine can take longer than the first
    # deadline just to boot (20 s was seen to pass at load 15 before the console said
    # anything); then the same check runs once more with a longer deadline. Either way the
    # guest must be killed at the deadline and its console must reach the report.
    for deadline in DEADLINES:
        started = time.monotonic()
        with pytest.raises(pytest.fail.Exception) as failure:
            run_guest("echo hanging-now\nsleep 600\n", daemon, timeout=deadline)
        elapsed = time.monotonic() - started
        message = str(failure.value)
        assert f"the guest did not finish within {deadline}s" in message
        # QEMU is killed at the deadline, not waited for (the guest would sleep 600 s); the
        # margin covers building the initrd, which the deadline does not count and which took
        # 8 s on a machine at load 15.
        assert elapsed < deadline + 20
        if "hanging-now" in message:
            break
    assert "hanging-now" in message
