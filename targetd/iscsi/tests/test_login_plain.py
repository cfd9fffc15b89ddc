"""Login without authentication: stages, header fields, refusals, continuation."""

from __future__ import annotations

from test_login_helpers import (
    INITIATOR,
    ISID,
    TARGET,
    FakeBinder,
    login_request,
    machine,
    make_config,
    normal_keys,
    only,
    pairs_text,
    parse_response,
    text,
)

from targetd.iscsi.login import LoginRefused
from targetd.iscsi.pdu import Op, Pdu, new_header
from targetd.iscsi.settings import TargetSettings


def test_security_then_operational_then_full_feature() -> None:
    login, binder = machine()
    step = login.receive(login_request(normal_keys(AuthMethod="None"), exp_statsn=5))
    first = only(step.replies)
    assert step.done is None and not step.close
    assert (first.opcode, first.status, first.version_max, first.version_active) == (
        Op.LOGIN_RESPONSE,
        0,
        0,
        0,
    )
    assert (first.transit, first.more, first.csg, first.nsg) == (True, False, 0, 1)
    assert (first.isid, first.tsih, first.itt) == (ISID, 0, 0x1000)
    assert (first.stat_sn, first.exp_cmdsn, first.max_cmdsn) == (5, 7, 7 + 127)
    assert first.pairs == [
        ("AuthMethod", "None"),
        ("TargetPortalGroupTag", "1"),
        ("TargetAlias", "disk"),
    ]

    step = login.receive(
        login_request(
            text(HeaderDigest="None", MaxRecvDataSegmentLength=65536), csg=1, nsg=3, exp_statsn=6
        )
    )
    final = only(step.replies)
    assert (final.transit, final.csg, final.nsg, final.status) == (True, 1, 3, 0)
    assert final.tsih == 0x77 and final.stat_sn == 6
    assert final.pairs == [("HeaderDigest", "None"), ("MaxRecvDataSegmentLength", "262144")]
    done = step.done
    assert done is not None
    assert (done.isid, done.tsih, done.cid, done.exp_cmdsn, done.stat_sn) == (ISID, 0x77, 1, 7, 7)
    assert done.target is not None and done.target.name == TARGET
    assert done.authenticated_user is None
    p = done.params
    assert (p.initiator_name, p.target_name, p.session_type) == (INITIATOR, TARGET, "Normal")
    assert p.initiator_max_recv_data_segment_length == 65536
    assert p.target_max_recv_data_segment_length == 262144
    assert binder.calls == [
        dict(
            initiator_name=INITIATOR,
            isid=ISID,
            tsih=0,
            target_name=TARGET,
            session_type="Normal",
            cid=1,
        )
    ]


def test_skip_security_stage_when_no_auth_needed() -> None:
    login, _ = machine()
    step = login.receive(login_request(normal_keys(), csg=1, nsg=3, cmdsn=100, exp_statsn=0))
    reply = only(step.replies)
    assert (reply.status, reply.transit, reply.csg, reply.nsg, reply.tsih) == (0, True, 1, 3, 0x77)
    assert reply.keys["MaxRecvDataSegmentLength"] == "262144"
    assert step.done is not None and step.done.exp_cmdsn == 100 and step.done.stat_sn == 1


def test_security_straight_to_full_feature_declares_nothing_operational() -> None:
    login, _ = machine()
    step = login.receive(login_request(normal_keys(AuthMethod="None"), csg=0, nsg=3))
    reply = only(step.replies)
    assert (reply.transit, reply.csg, reply.nsg) == (True, 0, 3)
    assert "MaxRecvDataSegmentLength" not in reply.keys
    assert step.done is not None
    # We never declared ours, so the initiator keeps to the 8192 default.
    assert step.done.params.target_max_recv_data_segment_length == 8192


def test_operational_stage_without_transit_stays() -> None:
    login, _ = machine()
    login.receive(login_request(normal_keys(AuthMethod="None")))
    reply = only(
        login.receive(login_request(text(ImmediateData="No"), csg=1, transit=False)).replies
    )
    assert (reply.transit, reply.csg, reply.nsg) == (False, 1, 0)
    assert reply.pairs == [("ImmediateData", "No"), ("MaxRecvDataSegmentLength", "262144")]
    reply = only(login.receive(login_request(b"", csg=1, nsg=3)).replies)
    assert reply.pairs == [] and reply.transit  # declared once only


def refusal(pdu: Pdu, config=None, binder=None) -> tuple[int, bytes]:
    login, _ = machine(config, binder)
    step = login.receive(pdu)
    assert step.close and step.done is None
    reply = only(step.replies)
    assert reply.opcode == Op.LOGIN_RESPONSE and reply.data == b"" and not reply.transit
    assert login.receive(pdu).replies == []  # a refused login says nothing more
    return reply.status, reply.isid


def test_unsupported_version() -> None:
    assert refusal(login_request(normal_keys(), version_max=2, version_min=1)) == (0x0205, ISID)


def test_unknown_target_not_found() -> None:
    data = text(InitiatorName=INITIATOR, TargetName="iqn.2026-11.org.targetd:nope")
    assert refusal(login_request(data))[0] == 0x0203


def test_acl_refuses_unlisted_initiator() -> None:
    config = make_config(targets=(TargetSettings(TARGET, allowed_initiators=("iqn.x:other",)),))
    assert refusal(login_request(normal_keys()), config)[0] == 0x0202


def test_acl_admits_listed_initiator() -> None:
    config = make_config(targets=(TargetSettings(TARGET, allowed_initiators=(INITIATOR,)),))
    login, _ = machine(config)
    assert only(login.receive(login_request(normal_keys(AuthMethod="None"))).replies).status == 0


def test_missing_initiator_name_and_target_name() -> None:
    assert refusal(login_request(text(TargetName=TARGET)))[0] == 0x0207
    assert refusal(login_request(text(InitiatorName=INITIATOR)))[0] == 0x0207


def test_unsupported_session_type() -> None:
    data = text(InitiatorName=INITIATOR, SessionType="Bogus")
    assert refusal(login_request(data))[0] == 0x0209


def test_binder_refusal_becomes_login_reject() -> None:
    binder = FakeBinder(refuse=LoginRefused(0x02, 0x0A, "no such session"))
    status, _ = refusal(login_request(normal_keys(), csg=1, nsg=3, tsih=9), binder=binder)
    assert status == 0x020A
    assert binder.calls[0]["tsih"] == 9


def test_other_opcode_during_login_is_invalid() -> None:
    hdr = new_header(Op.SCSI_COMMAND, itt=3)
    assert refusal(Pdu(bytes(hdr)))[0] == 0x020B


def test_key_sent_twice_is_initiator_error() -> None:
    data = pairs_text(
        [
            ("InitiatorName", INITIATOR),
            ("TargetName", TARGET),
            ("MaxBurstLength", "4096"),
            ("MaxBurstLength", "8192"),
        ]
    )
    assert refusal(login_request(data, csg=1, nsg=3))[0] == 0x0200


def test_key_sent_again_with_another_value_in_a_later_request_is_initiator_error() -> None:
    login, _ = machine()
    login.receive(login_request(normal_keys(MaxBurstLength=4096), csg=1, transit=False))
    step = login.receive(login_request(text(MaxBurstLength=8192), csg=1, nsg=3))
    assert step.close and only(step.replies).status == 0x0200


def test_bad_transitions() -> None:
    assert refusal(login_request(normal_keys(), csg=1, nsg=1))[0] == 0x0200  # no way back
    assert refusal(login_request(normal_keys(), csg=3, nsg=3))[0] == 0x0200
    assert refusal(login_request(normal_keys(), transit=True, more=True))[0] == 0x0200


def test_stage_mismatch_and_changed_isid() -> None:
    login, _ = machine()
    login.receive(login_request(normal_keys(AuthMethod="None"), transit=False))
    step = login.receive(login_request(b"", csg=1, nsg=3))  # we never moved to stage 1
    assert step.close and only(step.replies).status == 0x0200
    login, _ = machine()
    login.receive(login_request(normal_keys(AuthMethod="None"), transit=False))
    step = login.receive(login_request(b"", isid=bytes(6), transit=False))
    assert step.close and only(step.replies).status == 0x0200


def test_send_targets_is_invalid_during_login() -> None:
    assert refusal(login_request(normal_keys(SendTargets="All"), csg=1, nsg=3))[0] == 0x020B


def test_request_continued_over_several_pdus() -> None:
    login, _ = machine()
    data = normal_keys(AuthMethod="None", InitiatorAlias="host one")
    cut1, cut2 = 10, 50  # split inside a key and inside a value
    replies = []
    for i, (piece, more) in enumerate(
        ((data[:cut1], True), (data[cut1:cut2], True), (data[cut2:], False))
    ):
        step = login.receive(login_request(piece, more=more, transit=not more, exp_statsn=i))
        replies.append(only(step.replies))
    assert [(r.transit, r.more, r.data) for r in replies[:2]] == [(False, False, b"")] * 2
    assert [r.stat_sn for r in replies] == [0, 1, 2]
    assert replies[2].keys["AuthMethod"] == "None" and replies[2].transit
    step = login.receive(login_request(b"", csg=1, nsg=3))
    assert step.done is not None and step.done.params.initiator_alias == "host one"


def test_long_response_split_with_continuation() -> None:
    login, binder = machine()
    unknown = [(f"X-com.example.key-{i:04d}-" + "p" * 20, "v") for i in range(400)]
    data = normal_keys() + pairs_text(unknown)
    step = login.receive(login_request(data, csg=1, nsg=3))
    parts = [only(step.replies)]
    while parts[-1].more:
        assert step.done is None and binder.calls == []
        step = login.receive(login_request(b"", csg=1, nsg=3))
        parts.append(only(step.replies))
    assert len(parts) == 3
    assert all(p.data_length == 8192 and not p.transit and p.tsih == 0 for p in parts[:-1])
    assert parts[-1].transit and parts[-1].tsih == 0x77 and not parts[-1].more
    whole = parse_response(bytes(48), b"".join(p.data for p in parts))
    assert whole.pairs[:400] == [(k, "NotUnderstood") for k, _ in unknown]
    assert whole.pairs[400:] == [
        ("TargetPortalGroupTag", "1"),
        ("TargetAlias", "disk"),
        ("MaxRecvDataSegmentLength", "262144"),
    ]
    assert step.done is not None and len(binder.calls) == 1


def test_text_sent_while_our_response_continues_is_refused() -> None:
    login, _ = machine()
    unknown = pairs_text([(f"X-k{i:05d}" + "q" * 30, "v") for i in range(300)])
    step = login.receive(login_request(normal_keys() + unknown, csg=1, nsg=3))
    assert only(step.replies).more
    step = login.receive(login_request(text(MaxBurstLength=512), csg=1, nsg=3))
    assert step.close and only(step.replies).status == 0x0200


def test_discovery_login_has_no_target() -> None:
    login, binder = machine()
    data = text(InitiatorName=INITIATOR, SessionType="Discovery", MaxBurstLength=4096)
    step = login.receive(login_request(data, csg=1, nsg=3))
    reply = only(step.replies)
    assert reply.pairs == [("MaxBurstLength", "Irrelevant"), ("MaxRecvDataSegmentLength", "262144")]
    assert step.done is not None and step.done.target is None
    assert step.done.params.session_type == "Discovery"
    assert binder.calls[0]["target_name"] is None
    assert binder.calls[0]["session_type"] == "Discovery"


def test_leading_only_key_on_added_connection_is_irrelevant() -> None:
    login, binder = machine()
    step = login.receive(
        login_request(
            normal_keys(MaxBurstLength=4096, HeaderDigest="None"), csg=1, nsg=3, tsih=0x77
        )
    )
    assert only(step.replies).pairs[:2] == [
        ("MaxBurstLength", "Irrelevant"),
        ("HeaderDigest", "None"),
    ]
    assert binder.calls[0]["tsih"] == 0x77


def test_a_declaration_repeated_with_the_same_value_is_accepted() -> None:
    # libiscsi with CHAP credentials, against a target without CHAP, repeats InitiatorName
    # and TargetName in the operational stage; LIO and tgt accept that.
    login, _ = machine()
    step = login.receive(login_request(normal_keys(AuthMethod="CHAP,None"), transit=True))
    assert only(step.replies).status == 0 and not step.close
    step = login.receive(login_request(normal_keys(MaxBurstLength=4096), csg=1, nsg=3))
    reply = only(step.replies)
    assert reply.status == 0 and reply.transit and step.done is not None
    assert ("MaxBurstLength", "4096") in reply.pairs


def test_a_repeated_key_that_changes_its_value_is_refused() -> None:
    login, _ = machine()
    login.receive(login_request(normal_keys(AuthMethod="None"), transit=True))
    data = text(InitiatorName="iqn.2026-11.org.example:someone-else", TargetName=TARGET)
    step = login.receive(login_request(data, csg=1, nsg=3))
    assert step.close and only(step.replies).status == 0x0200
