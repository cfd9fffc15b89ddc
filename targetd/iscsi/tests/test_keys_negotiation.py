"""The key table's negotiation rules, one rule at a time, and key=value text parsing."""

from __future__ import annotations

import pytest
from test_login_helpers import login_request, machine, make_config, normal_keys, only, text

from targetd.iscsi.keys import (
    NegotiationError,
    Negotiator,
    Stage,
    TextFormatError,
    encode_pairs,
    parse_number,
    parse_pairs,
)
from targetd.iscsi.params import SessionParams
from targetd.iscsi.pdu import LoginStatus
from targetd.iscsi.settings import Settings


def negotiate(
    *pairs: tuple[str, str], config: Settings | None = None, params: SessionParams | None = None
) -> tuple[list[tuple[str, str]], SessionParams]:
    params = params or SessionParams()
    answers = Negotiator(config or Settings(), params).negotiate(pairs, Stage.OPERATIONAL)
    return answers, params


@pytest.mark.parametrize(
    "offer,answer,value",
    [
        ("CRC32C,None", "CRC32C", True),
        ("None,CRC32C", "None", False),
        ("None", "None", False),
        ("MD5,CRC32C", "CRC32C", True),
        ("MD5", "Reject", False),
    ],
)
def test_digest_lists_take_first_supported(offer: str, answer: str, value: bool) -> None:
    answers, params = negotiate(("HeaderDigest", offer), ("DataDigest", offer))
    assert answers == [("HeaderDigest", answer), ("DataDigest", answer)]
    assert (params.header_digest, params.data_digest) == (value, value)


def test_numerical_min_against_config_limits() -> None:
    config = Settings(
        max_burst_length=1 << 20, max_outstanding_r2t=4, max_connections_per_session=2
    )
    answers, p = negotiate(
        ("MaxBurstLength", "16776192"),
        ("MaxOutstandingR2T", "16"),
        ("MaxConnections", "8"),
        ("ErrorRecoveryLevel", "2"),
        config=config,
    )
    assert answers == [
        ("MaxBurstLength", "1048576"),
        ("MaxOutstandingR2T", "4"),
        ("MaxConnections", "2"),
        ("ErrorRecoveryLevel", "0"),
    ]
    assert (
        p.max_burst_length,
        p.max_outstanding_r2t,
        p.max_connections,
        p.error_recovery_level,
    ) == (1 << 20, 4, 2, 0)
    answers, p = negotiate(("MaxBurstLength", "0x1000"), config=config)
    assert answers == [("MaxBurstLength", "4096")] and p.max_burst_length == 4096


def test_time2wait_max_and_time2retain_min() -> None:
    answers, p = negotiate(("DefaultTime2Wait", "0"), ("DefaultTime2Retain", "0"))
    assert answers == [("DefaultTime2Wait", "2"), ("DefaultTime2Retain", "0")]
    answers, p = negotiate(("DefaultTime2Wait", "10"), ("DefaultTime2Retain", "60"))
    assert answers == [("DefaultTime2Wait", "10"), ("DefaultTime2Retain", "20")]
    assert (p.default_time2wait, p.default_time2retain) == (10, 20)


@pytest.mark.parametrize("offer,immediate,initial_r2t", [("Yes", "Yes", "Yes"), ("No", "No", "No")])
def test_immediate_data_and_initial_r2t(offer: str, immediate: str, initial_r2t: str) -> None:
    answers, p = negotiate(("ImmediateData", offer), ("InitialR2T", offer))
    assert answers == [("ImmediateData", immediate), ("InitialR2T", initial_r2t)]
    assert p.immediate_data is (immediate == "Yes")
    assert p.initial_r2t is (initial_r2t == "Yes")


def test_in_order_keys_always_yes() -> None:
    answers, p = negotiate(("DataPDUInOrder", "No"), ("DataSequenceInOrder", "No"))
    assert answers == [("DataPDUInOrder", "Yes"), ("DataSequenceInOrder", "Yes")]
    assert p.data_pdu_in_order and p.data_sequence_in_order


def test_first_burst_clamped_to_max_burst() -> None:
    answers, p = negotiate(("FirstBurstLength", "262144"), ("MaxBurstLength", "65536"))
    assert answers == [("FirstBurstLength", "65536"), ("MaxBurstLength", "65536")]
    assert (p.first_burst_length, p.max_burst_length) == (65536, 65536)
    # MaxBurstLength alone below the default FirstBurstLength still clamps the value.
    answers, p = negotiate(("MaxBurstLength", "16384"))
    assert answers == [("MaxBurstLength", "16384")] and p.first_burst_length == 16384


def test_first_burst_min_with_config() -> None:
    answers, p = negotiate(
        ("FirstBurstLength", "16777215"), config=Settings(first_burst_length=8192)
    )
    assert answers == [("FirstBurstLength", "8192")] and p.first_burst_length == 8192


@pytest.mark.parametrize(
    "key,value",
    [
        ("MaxBurstLength", "100"),
        ("MaxBurstLength", "16777216"),
        ("MaxBurstLength", "lots"),
        ("ErrorRecoveryLevel", "3"),
        ("ImmediateData", "yes"),
        ("InitialR2T", "1"),
        ("MaxConnections", "0"),
        ("DefaultTime2Wait", "3601"),
    ],
)
def test_bad_values_are_rejected(key: str, value: str) -> None:
    before = SessionParams()
    answers, params = negotiate((key, value))
    assert answers == [(key, "Reject")] and params == before


def test_unknown_and_extension_keys_not_understood() -> None:
    answers, _ = negotiate(
        ("FavouriteColour", "blue"), ("X-com.example.thing", "1"), ("X#vendor", "2")
    )
    assert answers == [
        ("FavouriteColour", "NotUnderstood"),
        ("X-com.example.thing", "NotUnderstood"),
        ("X#vendor", "NotUnderstood"),
    ]


def test_obsolete_marker_keys() -> None:
    answers, _ = negotiate(
        ("IFMarker", "Yes"), ("OFMarker", "No"), ("OFMarkInt", "1~65535"), ("IFMarkInt", "2048")
    )
    assert answers == [
        ("IFMarker", "No"),
        ("OFMarker", "No"),
        ("OFMarkInt", "Reject"),
        ("IFMarkInt", "Reject"),
    ]


def test_target_only_keys_from_initiator_are_irrelevant() -> None:
    answers, _ = negotiate(("TargetPortalGroupTag", "3"), ("TargetAddress", "10.0.0.1:3260,1"))
    assert answers == [("TargetPortalGroupTag", "Irrelevant"), ("TargetAddress", "Irrelevant")]


def test_declarations_get_no_answer() -> None:
    answers, p = negotiate(("MaxRecvDataSegmentLength", "131072"), ("InitiatorAlias", "h"))
    assert answers == [] and p.initiator_max_recv_data_segment_length == 131072
    assert p.initiator_alias == "h"


def test_bad_declaration_fails_login() -> None:
    with pytest.raises(NegotiationError) as err:
        negotiate(("MaxRecvDataSegmentLength", "100"))
    assert err.value.status is LoginStatus.INITIATOR_ERROR


def test_full_feature_phase_rejects_login_only_keys() -> None:
    params = SessionParams()
    negotiator = Negotiator(Settings(), params)
    answers = negotiator.negotiate(
        [("MaxBurstLength", "4096"), ("MaxRecvDataSegmentLength", "16384"), ("Bogus", "1")],
        Stage.FULL_FEATURE,
    )
    assert answers == [("MaxBurstLength", "Reject"), ("Bogus", "NotUnderstood")]
    assert params.max_burst_length == 262144
    assert params.initiator_max_recv_data_segment_length == 16384


def test_negotiation_through_login() -> None:
    login, _ = machine(make_config(max_burst_length=1 << 20))
    data = normal_keys(
        HeaderDigest="CRC32C,None",
        DataDigest="None",
        MaxBurstLength=16776192,
        FirstBurstLength=2 << 20,
        ImmediateData="Yes",
        InitialR2T="No",
        MaxOutstandingR2T=1,
        Unknown="1",
    )
    step = login.receive(login_request(data, csg=1, nsg=3))
    reply = only(step.replies)
    assert reply.pairs == [
        ("HeaderDigest", "CRC32C"),
        ("DataDigest", "None"),
        ("MaxBurstLength", "1048576"),
        ("FirstBurstLength", "262144"),
        ("ImmediateData", "Yes"),
        ("InitialR2T", "No"),
        ("MaxOutstandingR2T", "1"),
        ("Unknown", "NotUnderstood"),
        ("TargetPortalGroupTag", "1"),
        ("TargetAlias", "disk"),
        ("MaxRecvDataSegmentLength", "262144"),
    ]
    assert step.done is not None
    p = step.done.params
    assert (p.header_digest, p.data_digest, p.max_burst_length, p.first_burst_length) == (
        True,
        False,
        1 << 20,
        262144,
    )


def test_parse_and_encode_pairs() -> None:
    data = text(A="1", B="x=y", C="")
    assert parse_pairs(data) == [("A", "1"), ("B", "x=y"), ("C", "")]
    assert encode_pairs(parse_pairs(data)) == data
    assert parse_pairs(b"A=1\0\0\0") == [("A", "1")]
    for bad in (b"novalue\0", b"=1\0", b"\xff=1\0", ("K" * 64 + "=1\0").encode()):
        with pytest.raises(TextFormatError):
            parse_pairs(bad)


def test_parse_number() -> None:
    assert parse_number("0x1F") == 31 and parse_number("512") == 512
    for bad in ("", "0x", "-1", "1e3", "\u0661"):
        with pytest.raises(ValueError):
            parse_number(bad)
