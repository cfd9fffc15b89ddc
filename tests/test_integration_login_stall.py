"""A loaded host: time the daemon itself could not run is not an initiator's silence.

The login timers (5 s between login requests, 15 s for the whole login; keepalive) drop an
initiator that says nothing. On a host with far more runnable processes than cores the daemon
may not run for seconds; a login request that arrived meanwhile was stamped with the clock of
the tick before the stall, and the next tick closed the connection (reset, the initiator's
next request being unread) as "login not completed in time".
"""

from __future__ import annotations

import os
import signal
import time

from conftest import DEFAULT_IQN, Daemon
from raw_initiator import RawInitiator

STALL = 6.5  # more than the 5 s allowed between login requests


def stalled(daemon: Daemon, seconds: float) -> None:
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)


def test_a_login_request_sent_while_the_daemon_could_not_run_is_answered(
    targetd: Daemon,
) -> None:
    """Security step sent during a stall longer than the login step timer, then the
    operational step: the login completes, and the daemon logs no timeout."""
    with RawInitiator(targetd.port) as ini:
        time.sleep(1.0)  # accepted: the connection's timers run from here
        keys = {"InitiatorName": ini.name, "TargetName": DEFAULT_IQN, "SessionType": "Normal",
                "AuthMethod": "None"}  # fmt: skip
        assert targetd.proc is not None
        os.kill(targetd.proc.pid, signal.SIGSTOP)
        try:
            # CSG=0 (security), NSG=1 (operational), T=1: sent, not read until SIGCONT.
            ini.send_login_pdu(keys, flags=0x80 | (0 << 2) | 1)
            time.sleep(STALL)
        finally:
            os.kill(targetd.proc.pid, signal.SIGCONT)
        first = ini.recv()
        assert (first.bhs[36], first.bhs[37]) == (0, 0)
        time.sleep(1.5)  # a tick or two after the stall, before the next request
        # CSG=1 (operational), NSG=3 (full feature), T=1.
        last = ini.login_pdu({"MaxRecvDataSegmentLength": "262144"}, flags=0x80 | (1 << 2) | 3)
        assert (last.bhs[36], last.bhs[37]) == (0, 0)
        assert last.bhs[1] & 0x83 == 0x83  # T=1, NSG=3: full feature phase
    assert "login not completed in time" not in targetd.stderr, targetd.stderr


def test_a_silent_login_is_still_closed_after_a_stall(targetd: Daemon) -> None:
    """The stall is not counted, but silence after it is: a connection that never sends a
    login request is closed within the login step timer once the daemon runs again."""
    with RawInitiator(targetd.port) as ini:
        time.sleep(1.0)
        stalled(targetd, STALL)
        started = time.monotonic()
        assert ini.closed_by_target(timeout=10.0)
        assert time.monotonic() - started < 8.0
    assert "login not completed in time" in targetd.stderr, targetd.stderr
