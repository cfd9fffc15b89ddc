"""A planned shutdown asks logged-in initiators to log out (RFC 7143 11.9.1, AsyncEvent 1)."""

from __future__ import annotations

import os
import signal

from conftest import Daemon
from raw_initiator import RawInitiator

from targetd.iscsi.pdu import Op


def test_sigterm_sends_async_logout_request_and_accepts_the_logout(targetd: Daemon) -> None:
    with RawInitiator(targetd.port) as ini:
        assert ini.login(targetd.iqn).bhs[36] == 0
        ini.clear_unit_attentions()
        assert targetd.proc is not None
        os.kill(targetd.proc.pid, signal.SIGTERM)
        msg = ini.recv()
        assert msg.opcode == Op.ASYNC_MESSAGE
        assert msg.bhs[36] == 1  # target requests logout
        assert int.from_bytes(msg.bhs[42:44], "big") > 0  # seconds to do it in
        resp = ini.logout()
        assert resp.opcode == Op.LOGOUT_RESPONSE and resp.bhs[2] == 0
        assert ini.closed_by_target()
    assert targetd.proc.wait(15) == 0
