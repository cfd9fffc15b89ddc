"""CHAP and mutual CHAP in the security stage, driven through the login machine."""

from __future__ import annotations

import base64
import hashlib

import pytest
from test_login_helpers import (
    INITIATOR,
    chap_target,
    login_request,
    machine,
    make_config,
    normal_keys,
    only,
    text,
)

from targetd.iscsi.chap import ChapError, decode_binary
from targetd.iscsi.settings import Secret

OUR_ID = 1  # the helper's random source yields 1, 2, 3 ...
OUR_CHALLENGE = bytes(range(2, 18))


def md5(identifier: int, secret: str, challenge: bytes) -> bytes:
    return hashlib.md5(bytes([identifier]) + secret.encode() + challenge).digest()


def start_chap(secret: str = "initiator-secret", mutual: str | None = None, **config):
    login, binder = machine(make_config(targets=(chap_target(secret, mutual),), **config))
    reply = only(login.receive(login_request(normal_keys(AuthMethod="CHAP,None"))).replies)
    assert (reply.status, reply.transit, reply.csg) == (0, False, 0)
    assert reply.keys["AuthMethod"] == "CHAP"
    reply = only(login.receive(login_request(text(CHAP_A="7,5"), transit=False)).replies)
    assert reply.pairs == [
        ("CHAP_A", "5"),
        ("CHAP_I", str(OUR_ID)),
        ("CHAP_C", "0x" + OUR_CHALLENGE.hex()),
    ]
    return login, binder


def test_chap_success_then_operational() -> None:
    login, _ = start_chap()
    response = md5(OUR_ID, "initiator-secret", OUR_CHALLENGE)
    step = login.receive(login_request(text(CHAP_N="alice", CHAP_R="0x" + response.hex())))
    reply = only(step.replies)
    assert (reply.status, reply.transit, reply.csg, reply.nsg, reply.pairs) == (0, True, 0, 1, [])
    step = login.receive(login_request(b"", csg=1, nsg=3))
    assert step.done is not None and step.done.authenticated_user == "alice"


def test_chap_response_in_base64() -> None:
    login, _ = start_chap()
    response = base64.b64encode(md5(OUR_ID, "initiator-secret", OUR_CHALLENGE)).decode()
    step = login.receive(login_request(text(CHAP_N="alice", CHAP_R="0b" + response)))
    assert only(step.replies).status == 0 and not step.close


@pytest.mark.parametrize(
    "name,secret", [("alice", "wrong-secret"), ("mallory", "initiator-secret")]
)
def test_chap_wrong_secret_or_name_fails_authentication(name: str, secret: str) -> None:
    login, binder = start_chap()
    response = md5(OUR_ID, secret, OUR_CHALLENGE)
    step = login.receive(login_request(text(CHAP_N=name, CHAP_R="0x" + response.hex())))
    assert step.close and only(step.replies).status == 0x0201 and binder.calls == []


def test_chap_required_but_only_none_offered() -> None:
    login, _ = machine(make_config(targets=(chap_target(),)))
    step = login.receive(login_request(normal_keys(AuthMethod="None")))
    assert step.close and only(step.replies).status == 0x0201


def test_chap_required_but_security_stage_skipped() -> None:
    login, _ = machine(make_config(targets=(chap_target(),)))
    step = login.receive(login_request(normal_keys(), csg=1, nsg=3))
    assert step.close and only(step.replies).status == 0x0201


def test_chap_required_but_transit_without_authmethod() -> None:
    login, _ = machine(make_config(targets=(chap_target(),)))
    step = login.receive(login_request(normal_keys()))
    assert step.close and only(step.replies).status == 0x0201


def test_no_md5_in_chap_a_fails() -> None:
    login, _ = machine(make_config(targets=(chap_target(),)))
    login.receive(login_request(normal_keys(AuthMethod="CHAP")))
    step = login.receive(login_request(text(CHAP_A="6,7"), transit=False))
    assert step.close and only(step.replies).status == 0x0201


def test_transit_before_chap_finishes_is_held() -> None:
    login, _ = machine(make_config(targets=(chap_target(),)))
    reply = only(login.receive(login_request(normal_keys(AuthMethod="CHAP"))).replies)
    assert not reply.transit  # the initiator asked to move on; we are not done yet


def test_mutual_chap_answers_initiator_challenge() -> None:
    login, _ = start_chap(mutual="target-secret-1")
    ours = md5(OUR_ID, "initiator-secret", OUR_CHALLENGE)
    their_challenge = bytes(range(100, 116))
    step = login.receive(
        login_request(
            text(
                CHAP_N="alice",
                CHAP_R="0x" + ours.hex(),
                CHAP_I="77",
                CHAP_C="0x" + their_challenge.hex(),
            )
        )
    )
    reply = only(step.replies)
    assert reply.status == 0 and reply.transit
    expected = md5(77, "target-secret-1", their_challenge)
    assert reply.pairs == [("CHAP_N", "target-user"), ("CHAP_R", "0x" + expected.hex())]


def test_mutual_chap_refuses_reflected_challenge() -> None:
    login, _ = start_chap(mutual="target-secret-1")
    ours = md5(OUR_ID, "initiator-secret", OUR_CHALLENGE)
    step = login.receive(
        login_request(
            text(
                CHAP_N="alice",
                CHAP_R="0x" + ours.hex(),
                CHAP_I="1",
                CHAP_C="0x" + OUR_CHALLENGE.hex(),
            )
        )
    )
    assert step.close and only(step.replies).status == 0x0201


def test_mutual_chap_without_mutual_secret_fails() -> None:
    login, _ = start_chap()
    ours = md5(OUR_ID, "initiator-secret", OUR_CHALLENGE)
    step = login.receive(
        login_request(
            text(CHAP_N="alice", CHAP_R="0x" + ours.hex(), CHAP_I="3", CHAP_C="0x0102030405")
        )
    )
    assert step.close and only(step.replies).status == 0x0201


def test_discovery_chap() -> None:
    config = make_config(discovery_chap=Secret("disc", "discovery-secret"))
    login, _ = machine(config)
    data = text(InitiatorName=INITIATOR, SessionType="Discovery", AuthMethod="None,CHAP")
    assert only(login.receive(login_request(data)).replies).keys["AuthMethod"] == "CHAP"
    login.receive(login_request(text(CHAP_A="5"), transit=False))
    response = md5(OUR_ID, "discovery-secret", OUR_CHALLENGE)
    step = login.receive(login_request(text(CHAP_N="disc", CHAP_R="0x" + response.hex()), nsg=3))
    assert step.done is not None and step.done.authenticated_user == "disc"
    assert step.done.target is None


def test_chap_keys_after_security_stage_fail() -> None:
    login, _ = machine()
    login.receive(login_request(normal_keys(AuthMethod="None")))
    step = login.receive(login_request(text(CHAP_A="5"), csg=1, nsg=3))
    assert step.close and only(step.replies).status == 0x0200


def test_decode_binary() -> None:
    assert decode_binary("0xABC") == b"\x0a\xbc"
    assert decode_binary("0B" + base64.b64encode(b"hello").decode()) == b"hello"
    for bad in ("abcd", "0xzz", "0b!!"):
        with pytest.raises(ChapError):
            decode_binary(bad)
