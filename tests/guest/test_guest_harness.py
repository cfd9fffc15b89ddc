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


DEADLINE = 20


def test_guest_that_hangs_is_killed_at_the_deadline(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(start=False)
    started = time.monotonic()
    # The deadline leaves a guest under software emulation on a busy machine time to boot and
    # print its line (a 10 s deadline was seen to pass before the console said anything).
    with pytest.raises(pytest.fail.Exception) as failure:
        run_guest("echo hanging-now\nsleep 600\n", daemon, timeout=DEADLINE)
    elapsed = time.monotonic() - started
    message = str(failure.value)
    assert f"the guest did not finish within {DEADLINE}s" in message
    assert "hanging-now" in message
    # QEMU is killed at the deadline, not waited for.
    assert elapsed < DEADLINE + 3
