"""The lock policy of two gateways (targetd/gateway.py): when the holder lets go, and the
ALUA states each gateway reports. The lock itself is exercised in tests/ceph/."""

from __future__ import annotations

import pytest

from scsi.alua import AccessState, needs_ownership
from targetd.gateway import MIN_WAIT, HoldPolicy, states

AO, ANO = AccessState.ACTIVE_OPTIMIZED, AccessState.ACTIVE_NON_OPTIMIZED


def test_holder_keeps_the_lock_while_it_saw_io_within_the_hold_time() -> None:
    policy = HoldPolicy(1.0)
    assert policy.answer(now=10.0, last_io=9.7, in_flight=0) == pytest.approx(0.7)
    assert policy.answer(now=10.0, last_io=9.0, in_flight=0) == 0.0
    assert policy.answer(now=10.0, last_io=0.0, in_flight=1) == 1.0  # busy right now
    assert HoldPolicy(0.0).answer(now=10.0, last_io=10.0, in_flight=0) == 0.0
    assert HoldPolicy(0.0).answer(now=10.0, last_io=10.0, in_flight=2) == MIN_WAIT


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
