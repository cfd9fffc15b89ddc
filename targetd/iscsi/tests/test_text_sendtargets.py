"""Text Requests in full-feature phase: SendTargets, long answers, continued requests."""

from __future__ import annotations

import pytest
from test_login_helpers import (
    INITIATOR,
    PORTAL,
    TARGET,
    login_request,
    machine,
    make_config,
    parse_response,
    text,
    text_request,
)

from targetd.iscsi.params import SessionParams
from targetd.iscsi.pdu import RESERVED_TAG, Op, RejectReason
from targetd.iscsi.receiver import IscsiProtocolError
from targetd.iscsi.settings import PortalSettings, Settings, TargetSettings
from targetd.iscsi.text import TextMachine

SECOND = PortalSettings(tpgt=2, advertised="storage.example:3261")


def discovery(config: Settings, segment: int = 8192) -> TextMachine:
    params = SessionParams(
        initiator_name=INITIATOR,
        session_type="Discovery",
        initiator_max_recv_data_segment_length=segment,
    )
    return TextMachine(config, PORTAL, params, None)


def answer(responses: list) -> tuple[object, list[tuple[str, str]]]:
    assert len(responses) == 1
    hdr, data = responses[0]
    assert len(hdr) == 48 and hdr[24:36] == bytes(12)  # the connection stamps these
    reply = parse_response(bytes(hdr), data)
    assert reply.opcode == Op.TEXT_RESPONSE and reply.data_length == len(data)
    return reply, reply.pairs


def test_discovery_login_then_send_targets_all_respects_acls() -> None:
    targets = (
        TargetSettings(TARGET),
        TargetSettings("iqn.2026-11.org.targetd:private", allowed_initiators=("iqn.x:other",)),
        TargetSettings("iqn.2026-11.org.targetd:shared", allowed_initiators=(INITIATOR,)),
    )
    config = make_config(targets=targets, portals=(PORTAL, SECOND))
    login, _ = machine(config)
    data = text(InitiatorName=INITIATOR, SessionType="Discovery")
    step = login.receive(login_request(data, csg=1, nsg=3))
    assert step.done is not None
    texts = TextMachine(config, PORTAL, step.done.params, step.done.target)
    reply, pairs = answer(texts.receive(text_request(text(SendTargets="All"), itt=0x55)))
    assert (reply.transit, reply.more, reply.itt, reply.ttt) == (True, False, 0x55, RESERVED_TAG)
    assert pairs == [
        ("TargetName", TARGET),
        ("TargetAddress", "127.0.0.1:3260,1"),
        ("TargetAddress", "storage.example:3261,2"),
        ("TargetName", "iqn.2026-11.org.targetd:shared"),
        ("TargetAddress", "127.0.0.1:3260,1"),
        ("TargetAddress", "storage.example:3261,2"),
    ]


def test_send_targets_by_name_and_hidden_names() -> None:
    targets = (
        TargetSettings(TARGET),
        TargetSettings("iqn.x:private", allowed_initiators=("iqn.x:other",)),
    )
    texts = discovery(make_config(targets=targets))
    _, pairs = answer(texts.receive(text_request(text(SendTargets=TARGET))))
    assert pairs == [("TargetName", TARGET), ("TargetAddress", "127.0.0.1:3260,1")]
    for name in ("iqn.x:private", "iqn.x:absent", ""):
        reply, pairs = answer(texts.receive(text_request(text(SendTargets=name))))
        assert pairs == [] and reply.transit


def test_normal_session_sees_its_own_target() -> None:
    config = make_config(targets=(TargetSettings(TARGET), TargetSettings("iqn.x:other")))
    params = SessionParams(initiator_name=INITIATOR, target_name=TARGET)
    texts = TextMachine(config, PORTAL, params, config.targets[0])
    for value in ("All", ""):
        _, pairs = answer(texts.receive(text_request(text(SendTargets=value))))
        assert pairs == [("TargetName", TARGET), ("TargetAddress", "127.0.0.1:3260,1")]


def test_long_send_targets_split_and_fetched_with_ttt() -> None:
    targets = tuple(TargetSettings(f"iqn.2026-11.org.targetd:lun{i:03d}") for i in range(100))
    config = make_config(targets=targets)
    texts = discovery(config, segment=1024)
    responses = texts.receive(text_request(text(SendTargets="All"), itt=9))
    parts = []
    while True:
        reply, _ = answer(responses)
        parts.append(reply)
        if not reply.more:
            break
        assert reply.ttt not in (0, RESERVED_TAG) and not reply.transit
        responses = texts.receive(text_request(b"", itt=9, ttt=reply.ttt))
    assert [p.data_length for p in parts[:-1]] == [1024] * (len(parts) - 1)
    assert len(parts) > 4 and parts[-1].transit and parts[-1].ttt == RESERVED_TAG
    whole = parse_response(bytes(48), b"".join(p.data for p in parts))
    assert [v for k, v in whole.pairs if k == "TargetName"] == [t.name for t in targets]
    assert len(whole.pairs) == 200


def test_unexpected_ttt_is_a_protocol_error() -> None:
    texts = discovery(make_config())
    with pytest.raises(IscsiProtocolError) as err:
        texts.receive(text_request(b"", ttt=0x1234))
    assert err.value.reason is RejectReason.INVALID_PDU_FIELD


def test_new_untagged_request_abandons_a_long_answer() -> None:
    targets = tuple(TargetSettings(f"iqn.2026-11.org.targetd:t{i:03d}") for i in range(40))
    texts = discovery(make_config(targets=targets), segment=512)
    first, _ = answer(texts.receive(text_request(text(SendTargets="All"), itt=1)))
    assert first.more
    reply, pairs = answer(texts.receive(text_request(text(SendTargets=targets[0].name), itt=2)))
    assert reply.transit and pairs[0] == ("TargetName", targets[0].name)
    with pytest.raises(IscsiProtocolError):
        texts.receive(text_request(b"", itt=1, ttt=first.ttt))


def test_request_continued_with_c_bit() -> None:
    params = SessionParams(initiator_name=INITIATOR, session_type="Discovery")
    texts = TextMachine(make_config(), PORTAL, params, None)
    data = text(InitiatorAlias="somebody", SendTargets="All")
    reply, pairs = answer(texts.receive(text_request(data[:12], final=False, more=True, itt=4)))
    assert pairs == [] and not reply.transit and not reply.more and reply.ttt != RESERVED_TAG
    reply, pairs = answer(texts.receive(text_request(data[12:], itt=4, ttt=reply.ttt)))
    assert reply.transit and pairs == [
        ("TargetName", TARGET),
        ("TargetAddress", "127.0.0.1:3260,1"),
    ]
    assert params.initiator_alias == "somebody"


def test_other_keys_in_full_feature_phase() -> None:
    params = SessionParams(initiator_name=INITIATOR, target_name=TARGET)
    texts = TextMachine(make_config(), PORTAL, params, None)
    data = text(MaxRecvDataSegmentLength=32768, HeaderDigest="CRC32C", X_thing="1")
    _, pairs = answer(texts.receive(text_request(data)))
    assert pairs == [("HeaderDigest", "Reject"), ("X_thing", "NotUnderstood")]
    assert params.initiator_max_recv_data_segment_length == 32768
    assert params.header_digest is False


def test_open_negotiation_keeps_a_tag() -> None:
    texts = discovery(make_config())
    reply, _ = answer(texts.receive(text_request(text(Bogus="1"), final=False, itt=6)))
    assert not reply.transit and reply.ttt != RESERVED_TAG
    reply, pairs = answer(
        texts.receive(text_request(text(SendTargets=TARGET), itt=6, ttt=reply.ttt))
    )
    assert reply.transit and reply.ttt == RESERVED_TAG and pairs[0] == ("TargetName", TARGET)


@pytest.mark.parametrize(
    "data,flags", [(b"junk-without-equals\0", {}), (b"", {"final": True, "more": True})]
)
def test_malformed_requests(data: bytes, flags: dict) -> None:
    texts = discovery(make_config())
    with pytest.raises(IscsiProtocolError) as err:
        texts.receive(text_request(data, **flags))
    assert err.value.reason is RejectReason.PROTOCOL_ERROR
