"""The lock policy of two gateways (targetd/gateway.py): when the holder lets go, and the
ALUA states each gateway reports. The lock itself is exercised in tests/ceph/."""

from __future__ import annotations

import pytest

from scsi.alua import AccessState, needs_ownership
from targetd.gateway import HoldPolicy, Silence, states

AO, ANO = AccessState.ACTIVE_OPTIMIZED, AccessState.ACTIVE_NON_OPTIMIZED


def test_holder_keeps_the_lock_while_it_saw_io_within_the_hold_time() -> None:
    policy = HoldPolicy(1.0)
    assert policy.answer(now=10.0, last_io=9.7, in_flight=0) == pytest.approx(0.7)
    assert policy.answer(now=10.0, last_io=9.0, in_flight=0) == 0.0
    assert policy.answer(now=10.0, last_io=0.0, in_flight=1) == 1.0  # busy right now
    assert HoldPolicy(0.0).answer(now=10.0, last_io=10.0, in_flight=0) == 0.0
    # No hold time: given up even while busy (the holder drains first), or a path that
    # always has a command in flight would keep it for as long as its stream lasts.
    assert HoldPolicy(0.0).answer(now=10.0, last_io=10.0, in_flight=2) == 0.0


def test_a_holder_is_fenced_only_after_takeover_ms_of_silence() -> None:
    """A notify comes back at once when the holder is not watching (its watch is being
    re-established): that alone must not fence a live holder."""
    silence = Silence(3.0)
    assert not silence.unanswered("h1", asked_at=10.0, now=10.01)  # not watching
    assert not silence.unanswered("h1", asked_at=10.06, now=10.07)
    assert not silence.unanswered("h1", asked_at=12.0, now=12.9)
    assert silence.unanswered("h1", asked_at=13.0, now=13.01)  # 3 s since the first ask
    silence.answered()
    # A holder that watches and does not answer: its notify took takeover_ms.
    assert silence.unanswered("h1", asked_at=20.0, now=23.0)
    silence.answered()
    assert not silence.unanswered("h1", asked_at=30.0, now=30.01)
    silence.answered()  # it answered: counted again from the next silence
    assert not silence.unanswered("h1", asked_at=40.0, now=40.01)
    # Another holder's silence starts its own count.
    assert not silence.unanswered("h2", asked_at=42.5, now=42.51)
    assert silence.unanswered("h2", asked_at=45.0, now=45.6)


def test_states_follow_the_lock_and_never_standby() -> None:
    assert states(holding=True, peer_holds=False, fenced=False) == (AO, ANO)
    assert states(holding=False, peer_holds=True, fenced=False) == (ANO, AO)
    assert states(holding=False, peer_holds=False, fenced=False) == (ANO, ANO)
    assert states(holding=False, peer_holds=True, fenced=True) == (AccessState.TRANSITIONING, AO)


@pytest.mark.parametrize(
    ("cdb", "needed"),
    [
        (bytes([0x2A]) + bytes(9), True),  # WRITE(10)
        (bytes([0x89]) + bytes(15), True),  # COMPARE AND WRITE
        (bytes([0x42]) + bytes(9), True),  # UNMAP
        (bytes([0x9E, 0x12]) + bytes(14), True),  # GET LBA STATUS
        (bytes([0x28]) + bytes(9), False),  # READ(10): the cluster has every write
        (bytes([0x9E, 0x10]) + bytes(14), False),  # READ CAPACITY(16)
        (bytes([0x35]) + bytes(9), False),  # SYNCHRONIZE CACHE: nothing cached
        (bytes(6), False),  # TEST UNIT READY
    ],
)
def test_which_commands_need_the_lock(cdb: bytes, needed: bool) -> None:
    assert needs_ownership(cdb) is needed
