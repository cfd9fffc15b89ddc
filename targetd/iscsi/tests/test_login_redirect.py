"""Login redirection (RFC 7143 11.13.5): a portal answers a normal-session login for a
target another process serves with "target moved temporarily" and that process's address."""

from __future__ import annotations

from test_login_helpers import (
    INITIATOR,
    TARGET,
    FakeBinder,
    login_request,
    make_config,
    normal_keys,
    only,
    text,
)

from targetd.iscsi.login import LoginMachine
from targetd.iscsi.pdu import LoginStatus
from targetd.iscsi.settings import PortalSettings, Secret, TargetSettings

MOVED = PortalSettings(tpgt=3, advertised="192.0.2.1:3260", moved=((TARGET, 40123),))


def redirecting(
    portal: PortalSettings = MOVED, local_host: str = "127.0.0.1", **config: object
) -> tuple[LoginMachine, FakeBinder]:
    binder = FakeBinder()
    machine = LoginMachine(make_config(**config), portal, binder, local_host=local_host)
    return machine, binder


def test_login_for_a_moved_target_is_redirected_to_the_address_the_initiator_dialled() -> None:
    login, binder = redirecting()
    step = login.receive(login_request(normal_keys(AuthMethod="None"), exp_statsn=9))
    reply = only(step.replies)
    assert reply.status == LoginStatus.TARGET_MOVED_TEMPORARILY == 0x0101
    assert reply.pairs == [("TargetAddress", "127.0.0.1:40123,3")]
    assert (reply.transit, reply.tsih, reply.itt, reply.stat_sn) == (False, 0, 0x1000, 9)
    assert step.close and step.done is None
    assert step.redirected == "127.0.0.1:40123,3"
    assert binder.calls == []  # no session was made here
    # The connection is over: whatever comes next is not answered.
    assert login.receive(login_request(normal_keys())).replies == []


def test_ipv6_address_is_bracketed() -> None:
    login, _ = redirecting(local_host="::1")
    reply = only(login.receive(login_request(normal_keys(AuthMethod="None"))).replies)
    assert reply.pairs == [("TargetAddress", "[::1]:40123,3")]


def test_an_advertised_host_is_the_host_of_the_redirect() -> None:
    # Initiators behind an address translation (QEMU's user network, NAT) dial the
    # advertised address; the same host reaches the worker's port.
    portal = PortalSettings(tpgt=1, moved=((TARGET, 40123),), redirect_host="10.0.2.2")
    login, _ = redirecting(portal)
    reply = only(login.receive(login_request(normal_keys(AuthMethod="None"))).replies)
    assert reply.pairs == [("TargetAddress", "10.0.2.2:40123,1")]


def test_redirect_comes_before_chap_and_the_acl_still_applies_at_the_portal() -> None:
    target = TargetSettings(TARGET, chap=Secret("alice", "initiator-secret"))
    login, _ = redirecting(targets=(target,))
    reply = only(login.receive(login_request(normal_keys(AuthMethod="CHAP,None"))).replies)
    assert reply.status == 0x0101 and "CHAP_A" not in reply.keys
    closed = TargetSettings(TARGET, allowed_initiators=("iqn.1994-05.com.example:other",))
    login, _ = redirecting(targets=(closed,))
    reply = only(login.receive(login_request(normal_keys(AuthMethod="None"))).replies)
    assert reply.status == LoginStatus.AUTHORIZATION_FAILURE and reply.pairs == []


def test_target_whose_process_is_restarting_is_service_unavailable() -> None:
    portal = PortalSettings(tpgt=1, moved=((TARGET, 0),))
    login, _ = redirecting(portal)
    step = login.receive(login_request(normal_keys(AuthMethod="None")))
    reply = only(step.replies)
    assert reply.status == LoginStatus.SERVICE_UNAVAILABLE == 0x0301
    assert step.close and step.redirected is None


def test_discovery_and_targets_not_moved_log_in_here() -> None:
    other = TargetSettings("iqn.2026-11.org.targetd:other")
    portal = PortalSettings(tpgt=1, moved=(("iqn.2026-11.org.targetd:other", 40000),))
    login, _ = redirecting(portal, targets=(TargetSettings(TARGET), other))
    reply = only(login.receive(login_request(normal_keys(), csg=1, nsg=3)).replies)
    assert (reply.status, reply.transit, reply.nsg) == (0, True, 3)
    login, _ = redirecting()
    discovery = text(InitiatorName=INITIATOR, SessionType="Discovery")
    reply = only(login.receive(login_request(discovery, csg=1, nsg=3)).replies)
    assert reply.status == 0 and reply.transit
