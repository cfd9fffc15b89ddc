"""The login and text keys of RFC 7143 section 13 as a declared table, and how we answer them.

Each :class:`KeySpec` says how a key is negotiated (its :class:`Rule`), its legal range,
where it may appear and which :class:`SessionParams` field its outcome sets. The
:class:`Negotiator` applies an initiator's key=value pairs to a ``SessionParams`` and
returns our answers; nothing about a particular key is decided outside the table except
the FirstBurstLength <= MaxBurstLength clamp, which ties two keys together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, auto

from targetd.iscsi.params import SessionParams
from targetd.iscsi.pdu import LoginStatus
from targetd.iscsi.settings import Settings

NOT_UNDERSTOOD = "NotUnderstood"
IRRELEVANT = "Irrelevant"
REJECT = "Reject"
_ANSWER_VALUES = frozenset({NOT_UNDERSTOOD, IRRELEVANT, REJECT})

MAX_KEY_NAME = 63  # RFC 7143 6.1
MAX_VALUE = 8192  # the longest value any key may carry (CHAP binaries); most stay under 255
SEGMENT_LIMIT = (1 << 24) - 1


class Rule(Enum):
    AND = auto()  # boolean; outcome is offer AND ours
    OR = auto()  # boolean; outcome is offer OR ours
    MIN = auto()  # numerical; outcome is the smaller
    MAX = auto()  # numerical; outcome is the larger
    LIST = auto()  # the first of the offered values we support
    DECLARE = auto()  # the sender states its own value; nobody answers
    FIXED = auto()  # keys RFC 7143 13.26 made obsolete: a constant answer
    SECURITY = auto()  # AuthMethod and CHAP_*: the login machine's security stage
    SEND_TARGETS = auto()  # full-feature phase only: the text machine answers it


class Stage(Enum):
    SECURITY = auto()
    OPERATIONAL = auto()
    FULL_FEATURE = auto()


@dataclass(frozen=True, slots=True)
class KeySpec:
    name: str
    rule: Rule
    field: str | None = None  # the SessionParams attribute the outcome sets
    low: int = 0
    high: int = 0
    values: tuple[str, ...] = ()  # LIST: what we support; FIXED: (answer,)
    ours: str = ""  # our side of AND/OR/MIN/MAX
    limit: str | None = None  # the Settings attribute that is our side instead
    leading_only: bool = True  # LO in RFC 7143: only on the session's first connection
    initiator_sends: bool = True  # False: a target declaration the initiator must not send
    in_login: bool = True
    in_ffp: bool = False  # may be (re)declared by a Text Request in full-feature phase
    in_discovery: bool = True  # False: Irrelevant in a discovery session


def _num(name: str, rule: Rule, field: str | None, low: int, high: int, **kw: object) -> KeySpec:
    return KeySpec(name, rule, field, low, high, **kw)  # type: ignore[arg-type]


KEYS: dict[str, KeySpec] = {
    spec.name: spec
    for spec in (
        KeySpec("AuthMethod", Rule.SECURITY, leading_only=False),
        *(
            KeySpec(name, Rule.SECURITY, leading_only=False)
            for name in ("CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R")
        ),
        KeySpec(
            "HeaderDigest",
            Rule.LIST,
            "header_digest",
            values=("CRC32C", "None"),
            leading_only=False,
        ),
        KeySpec(
            "DataDigest", Rule.LIST, "data_digest", values=("CRC32C", "None"), leading_only=False
        ),
        _num(
            "MaxConnections",
            Rule.MIN,
            "max_connections",
            1,
            65535,
            limit="max_connections_per_session",
            in_discovery=False,
        ),
        KeySpec("SendTargets", Rule.SEND_TARGETS, in_login=False, in_ffp=True, leading_only=False),
        KeySpec("TargetName", Rule.DECLARE, "target_name"),
        KeySpec("InitiatorName", Rule.DECLARE, "initiator_name"),
        KeySpec("TargetAlias", Rule.DECLARE, initiator_sends=False, leading_only=False),
        KeySpec("InitiatorAlias", Rule.DECLARE, "initiator_alias", leading_only=False, in_ffp=True),
        KeySpec("TargetAddress", Rule.DECLARE, initiator_sends=False, leading_only=False),
        KeySpec("TargetPortalGroupTag", Rule.DECLARE, initiator_sends=False),
        KeySpec("InitialR2T", Rule.OR, "initial_r2t", ours="No", in_discovery=False),
        KeySpec("ImmediateData", Rule.AND, "immediate_data", ours="Yes", in_discovery=False),
        _num(
            "MaxRecvDataSegmentLength",
            Rule.DECLARE,
            "initiator_max_recv_data_segment_length",
            512,
            SEGMENT_LIMIT,
            leading_only=False,
            in_ffp=True,
        ),
        _num(
            "MaxBurstLength",
            Rule.MIN,
            "max_burst_length",
            512,
            SEGMENT_LIMIT,
            limit="max_burst_length",
            in_discovery=False,
        ),
        _num(
            "FirstBurstLength",
            Rule.MIN,
            "first_burst_length",
            512,
            SEGMENT_LIMIT,
            limit="first_burst_length",
            in_discovery=False,
        ),
        _num("DefaultTime2Wait", Rule.MAX, "default_time2wait", 0, 3600, ours="2"),
        _num("DefaultTime2Retain", Rule.MIN, "default_time2retain", 0, 3600, ours="20"),
        _num(
            "MaxOutstandingR2T",
            Rule.MIN,
            "max_outstanding_r2t",
            1,
            65535,
            limit="max_outstanding_r2t",
            in_discovery=False,
        ),
        # We deliver data in order and want it so: OR with our Yes always gives Yes.
        KeySpec("DataPDUInOrder", Rule.OR, "data_pdu_in_order", ours="Yes", in_discovery=False),
        KeySpec(
            "DataSequenceInOrder", Rule.OR, "data_sequence_in_order", ours="Yes", in_discovery=False
        ),
        _num("ErrorRecoveryLevel", Rule.MIN, "error_recovery_level", 0, 2, ours="0"),
        KeySpec("SessionType", Rule.DECLARE, "session_type"),
        KeySpec("TaskReporting", Rule.LIST, values=("RFC3720",)),
        _num("iSCSIProtocolLevel", Rule.MIN, None, 0, 31, ours="1"),
        KeySpec("RDMAExtensions", Rule.AND, ours="No"),
        # RFC 7143 13.26: markers are obsolete; "No" is allowed for the booleans and
        # keeps RFC 3720 initiators happy, the intervals MUST be rejected.
        KeySpec("IFMarker", Rule.FIXED, values=("No",), leading_only=False),
        KeySpec("OFMarker", Rule.FIXED, values=("No",), leading_only=False),
        KeySpec("IFMarkInt", Rule.FIXED, values=(REJECT,), leading_only=False),
        KeySpec("OFMarkInt", Rule.FIXED, values=(REJECT,), leading_only=False),
    )
}


class TextFormatError(ValueError):
    """Text that is not a sequence of NUL-terminated key=value pairs."""


class NegotiationError(Exception):
    """A key exchange that must fail the login with ``status``."""

    def __init__(self, status: LoginStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_pairs(data: bytes | bytearray | memoryview) -> list[tuple[str, str]]:
    """Split a data segment into (key, value) pairs, in order, duplicates kept."""
    text = bytes(data)
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextFormatError("text is not UTF-8") from exc
    pairs = []
    for item in decoded.split("\0"):
        if not item:
            continue  # the terminator of the last pair, or padding an initiator left in
        key, sep, value = item.partition("=")
        if not sep or not key or len(key) > MAX_KEY_NAME:
            raise TextFormatError(f"malformed key=value {item[:80]!r}")
        if len(value) > MAX_VALUE:
            raise TextFormatError(f"value of {key} too long")
        pairs.append((key, value))
    return pairs


def encode_pairs(pairs: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(f"{key}={value}\0".encode() for key, value in pairs)


def parse_number(value: str) -> int:
    """An RFC 7143 5.1 numerical value: decimal, or hex with a 0x prefix."""
    if value[:2].lower() == "0x" and len(value) > 2:
        return int(value[2:], 16)
    if value.isdigit() and value.isascii():
        return int(value)
    raise ValueError(f"not a number: {value!r}")


def parse_bool(value: str) -> bool:
    if value == "Yes":
        return True
    if value == "No":
        return False
    raise ValueError(f"not Yes or No: {value!r}")


def _bool_text(value: bool) -> str:
    return "Yes" if value else "No"


def _typed(params: SessionParams, field: str, value: str) -> object:
    """The outcome string as the SessionParams field holds it."""
    current = getattr(params, field)
    if isinstance(current, bool):
        return value not in ("No", "None")  # Yes/No booleans and CRC32C/None digests
    if isinstance(current, int):
        return parse_number(value)
    return value


class Negotiator:
    """Our side of the key exchange for one connection's login, then its Text Requests.

    ``leading`` is False for a connection joining an existing session: leading-only keys
    are then Irrelevant, since the session already settled them.
    """

    def __init__(self, config: Settings, params: SessionParams, *, leading: bool = True) -> None:
        self._config = config
        self._params = params
        self._leading = leading
        self._seen: dict[str, str] = {}

    def negotiate(self, pairs: Iterable[tuple[str, str]], stage: Stage) -> list[tuple[str, str]]:
        """Apply the initiator's pairs; return our answers in the order of the offers.

        Raises :class:`NegotiationError` (login only) for a key offered again with another
        value, a bad declaration, or a key that has no place in the login phase.
        """
        answers: list[tuple[str, str]] = []
        first_burst_answered = False
        for key, value in pairs:
            answer = self._one(key, value, stage)
            if answer is not None:
                answers.append((key, answer))
                first_burst_answered |= key == "FirstBurstLength" and answer != REJECT
        self._clamp_first_burst(answers if first_burst_answered else None)
        return answers

    def _one(self, key: str, value: str, stage: Stage) -> str | None:
        spec = KEYS.get(key)
        if spec is None:
            return NOT_UNDERSTOOD  # includes the X- and X# extension keys we do not use
        login = stage is not Stage.FULL_FEATURE
        if login:
            # RFC 7143 6.2 lets a target refuse any repeated key; libiscsi repeats
            # InitiatorName and TargetName in every stage, so a repeat with the same value
            # is taken as harmless (as LIO and tgt do) and only a changed value refused.
            if self._seen.setdefault(key, value) != value:
                raise NegotiationError(LoginStatus.INITIATOR_ERROR, f"{key} sent twice")
            if not spec.in_login:
                raise NegotiationError(LoginStatus.INVALID_DURING_LOGIN, f"{key} during login")
            if spec.rule is Rule.SECURITY and stage is not Stage.SECURITY:
                raise NegotiationError(LoginStatus.INITIATOR_ERROR, f"{key} after security")
        elif not spec.in_ffp:
            return REJECT  # RFC 7143 13: its Use is IO/LO, settled at login
        if value in _ANSWER_VALUES:
            return None  # an answer to a declaration of ours; nothing to say back
        if not spec.initiator_sends:
            return IRRELEVANT
        if spec.rule is Rule.DECLARE:
            # Names and types are declared on every connection; nobody answers them.
            self._declare(spec, value, login)
            return None
        if (spec.leading_only and not self._leading) or (
            not spec.in_discovery and self._params.discovery
        ):
            return IRRELEVANT
        if spec.rule is Rule.FIXED:
            return spec.values[0]
        outcome = self._outcome(spec, value)
        if outcome != REJECT and spec.field is not None:
            setattr(self._params, spec.field, _typed(self._params, spec.field, outcome))
        return outcome

    def _declare(self, spec: KeySpec, value: str, login: bool) -> None:
        if spec.field is None:
            return
        if spec.high:
            try:
                number = parse_number(value)
            except ValueError:
                number = -1
            if not spec.low <= number <= spec.high:
                if login:
                    raise NegotiationError(LoginStatus.INITIATOR_ERROR, f"bad {spec.name}")
                return
            setattr(self._params, spec.field, number)
        else:
            setattr(self._params, spec.field, value)

    def _ours(self, spec: KeySpec) -> str:
        if spec.limit is not None:
            return str(min(int(getattr(self._config, spec.limit)), spec.high))
        return spec.ours

    def _outcome(self, spec: KeySpec, value: str) -> str:
        try:
            if spec.rule is Rule.LIST:
                offered = value.split(",")
                return next((v for v in offered if v in spec.values), REJECT)
            if spec.rule in (Rule.AND, Rule.OR):
                theirs, ours = parse_bool(value), parse_bool(self._ours(spec))
                return _bool_text(theirs and ours if spec.rule is Rule.AND else theirs or ours)
            number = parse_number(value)
        except ValueError:
            return REJECT
        if not spec.low <= number <= spec.high:
            return REJECT
        ours_n = int(self._ours(spec))
        return str(min(number, ours_n) if spec.rule is Rule.MIN else max(number, ours_n))

    def _clamp_first_burst(self, answers: list[tuple[str, str]] | None) -> None:
        """RFC 7143 13.14: FirstBurstLength MUST NOT exceed MaxBurstLength."""
        params = self._params
        if params.first_burst_length <= params.max_burst_length:
            return
        params.first_burst_length = params.max_burst_length
        if answers is not None:
            i = next(i for i, (k, _) in enumerate(answers) if k == "FirstBurstLength")
            answers[i] = ("FirstBurstLength", str(params.max_burst_length))
