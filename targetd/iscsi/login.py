"""The login phase of one connection (RFC 7143 6, 11.12, 11.13) as a sans-I/O machine.

Every PDU that arrives before full-feature phase goes to :meth:`LoginMachine.receive`,
which answers with the Login Response PDUs to send and, once the final response is among
them, a :class:`LoginDone` that hands the connection over to full-feature phase. A login
that fails gets one reject response and ``close``.

Stages run SECURITY (0) -> OPERATIONAL (1) -> FULL_FEATURE (3); the initiator may skip
the security stage when neither the target nor discovery asks for CHAP.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from targetd.iscsi.chap import ChapAuthenticator, ChapError
from targetd.iscsi.keys import (
    KEYS,
    NegotiationError,
    Negotiator,
    Rule,
    Stage,
    TextFormatError,
    encode_pairs,
    parse_pairs,
)
from targetd.iscsi.params import SessionParams
from targetd.iscsi.pdu import LoginStatus, Op, Pdu, new_header, padded, put_u16, put_u32
from targetd.iscsi.session import COMMAND_WINDOW, LoginRefusedError
from targetd.iscsi.settings import PortalSettings, Secret, Settings, TargetSettings

# One exception type for "refuse this login with this status", shared with the session
# table that raises it from bind().
LoginRefused = LoginRefusedError

SECURITY, OPERATIONAL, FULL_FEATURE = 0, 1, 3
_STAGE_NAMES = {SECURITY: Stage.SECURITY, OPERATIONAL: Stage.OPERATIONAL}
FLAG_TRANSIT = 0x80
FLAG_CONTINUE = 0x40
VERSION = 0x00
# RFC 7143 13.12: until MaxRecvDataSegmentLength is declared, login PDUs carry at most
# the default 8192 bytes of text either way.
LOGIN_SEGMENT = 8192
# A login request's text that grows past this is abuse, not negotiation.
MAX_LOGIN_TEXT = 64 * 1024
SESSION_TYPES = ("Normal", "Discovery")


def refused(status: LoginStatus, message: str = "") -> LoginRefusedError:
    return LoginRefusedError(status.status_class, status.status_detail, message or status.name)


class SessionBinder(Protocol):
    def bind(
        self,
        *,
        initiator_name: str,
        isid: bytes,
        tsih: int,
        target_name: str | None,
        session_type: str,
        cid: int,
    ) -> int:
        """Called once, just before the final login response; returns the TSIH to send,
        or raises LoginRefused."""
        ...


@dataclass
class LoginDone:
    params: SessionParams
    isid: bytes
    tsih: int
    cid: int
    target: TargetSettings | None  # None for discovery
    exp_cmdsn: int  # the ExpCmdSN to continue with in full-feature phase
    stat_sn: int  # the next StatSN to use in full-feature phase
    authenticated_user: str | None


@dataclass
class LoginStep:
    replies: list[bytes]  # complete PDUs (BHS + padded data; no digests during login)
    done: LoginDone | None = None  # set when replies hold the final response
    close: bool = False  # login failed: send replies, then close the connection
    redirected: str | None = None  # the login was sent to this TargetAddress instead
    refusal: str = ""  # why a login failed, for the log: status, cause, initiator, target


@dataclass(frozen=True, slots=True)
class _Request:
    """The Login Request BHS fields, RFC 7143 11.12."""

    transit: bool
    more: bool
    csg: int
    nsg: int
    version_max: int
    version_min: int
    isid: bytes
    tsih: int
    itt: int
    cid: int
    cmdsn: int
    exp_statsn: int

    @classmethod
    def parse(cls, pdu: Pdu) -> _Request:
        flags = pdu.flags
        return cls(
            transit=bool(flags & FLAG_TRANSIT),
            more=bool(flags & FLAG_CONTINUE),
            csg=(flags >> 2) & 3,
            nsg=flags & 3,
            version_max=pdu.bhs[2],
            version_min=pdu.bhs[3],
            isid=bytes(pdu.bhs[8:14]),
            tsih=pdu.u16(14),
            itt=pdu.itt,
            cid=pdu.u16(20),
            cmdsn=pdu.cmdsn,
            exp_statsn=pdu.expstatsn,
        )


class _Moved(Exception):
    """The target is served at another address: answer "moved temporarily" with it."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address


class LoginMachine:
    def __init__(
        self,
        config: Settings,
        portal: PortalSettings,
        binder: SessionBinder,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        local_host: str = "",
    ) -> None:
        self._config = config
        self._portal = portal
        # The address the initiator reached us at (the socket's own address): a redirect
        # sends it to the same address, another port, so it works for whatever route the
        # initiator took to get here. The shell sets it once the socket is connected.
        self.local_host = local_host
        self._binder = binder
        self._random = random_bytes
        self._params = SessionParams()
        self._negotiator: Negotiator | None = None  # made when we know if leading
        self._first: _Request | None = None
        self._stage = SECURITY
        self._stat_sn = 0
        self._exp_cmdsn = 0
        self._incoming = bytearray()  # request text continued with the C bit
        self._outgoing: list[tuple[bytes, int]] = []  # queued (text, flags) response parts
        self._target: TargetSettings | None = None
        self._secret: Secret | None = None
        self._chap: ChapAuthenticator | None = None
        self._authenticated = False
        self._method_chosen = False
        self._declared_operational = False
        self._closed = False
        self._done = False
        self._who: dict[str, str] = {}  # initiator and target, once the login names them

    def receive(self, pdu: Pdu) -> LoginStep:
        if self._closed:
            return LoginStep([], close=True)
        if self._done:
            raise RuntimeError("login already complete: full-feature phase owns the connection")
        try:
            return self._receive(pdu)
        except LoginRefusedError as exc:
            self._closed = True
            status = (exc.status_class << 8) | exc.status_detail
            return LoginStep(
                [self._reject(pdu, status)], close=True, refusal=self._why(status, exc)
            )
        except _Moved as moved:
            # RFC 7143 11.13.5: status 0101h with the TargetAddress to log in at instead;
            # the initiator keeps using this portal for later logins ("temporarily").
            self._closed = True
            text = encode_pairs([("TargetAddress", moved.address)])
            reply = self._reject(pdu, LoginStatus.TARGET_MOVED_TEMPORARILY, text)
            return LoginStep([reply], close=True, redirected=moved.address)

    def _why(self, status: int, exc: LoginRefusedError) -> str:
        """What an operator reads in the log: the status the initiator got, the cause, and
        who asked for what (the initiator only sees the status)."""
        try:
            name = LoginStatus(status).name
        except ValueError:
            name = f"{status:04x}"
        who = [f"{key} {value}" for key, value in self._who.items() if value not in str(exc)]
        return f"{name}: {exc}" + (f" ({', '.join(who)})" if who else "")

    # -- request handling ------------------------------------------------------------

    def _receive(self, pdu: Pdu) -> LoginStep:
        if pdu.opcode != Op.LOGIN_REQUEST:
            raise refused(LoginStatus.INVALID_DURING_LOGIN, f"opcode {pdu.opcode:#x}")
        req = _Request.parse(pdu)
        self._check_header(req)
        self._exp_cmdsn = req.cmdsn
        if self._outgoing:
            # The initiator fetches each further part with an empty request; we let its T
            # bit be, as initiators differ in whether they repeat it.
            if pdu.data_length or req.more:
                raise refused(LoginStatus.INITIATOR_ERROR, "text while our response continues")
            return self._send_next(req)
        self._incoming += pdu.data
        if len(self._incoming) > MAX_LOGIN_TEXT:
            raise refused(LoginStatus.INITIATOR_ERROR, "login text too long")
        if req.more:
            # RFC 7143 11.12.2: an empty response asks for the rest of the text.
            return LoginStep([self._response(req, b"", self._stage << 2)])
        try:
            pairs = parse_pairs(self._incoming)
        except TextFormatError as exc:
            raise refused(LoginStatus.INITIATOR_ERROR, str(exc)) from exc
        self._incoming.clear()
        first_text = self._negotiator is None
        if first_text:
            self._begin(req, dict(pairs))
        answers = self._negotiate(req, pairs, first_text)
        return self._answer(req, answers)

    def _check_header(self, req: _Request) -> None:
        if self._first is None:
            if req.version_min > VERSION:
                raise refused(LoginStatus.UNSUPPORTED_VERSION, f"version {req.version_min}")
            if req.csg not in (SECURITY, OPERATIONAL):
                raise refused(LoginStatus.INITIATOR_ERROR, f"login starts in stage {req.csg}")
            self._first = req
            self._stage = req.csg
            self._stat_sn = req.exp_statsn
        elif (req.isid, req.tsih, req.cid) != (self._first.isid, self._first.tsih, self._first.cid):
            raise refused(LoginStatus.INITIATOR_ERROR, "ISID, TSIH or CID changed in login")
        elif req.csg != self._stage:
            raise refused(LoginStatus.INITIATOR_ERROR, f"CSG {req.csg} in stage {self._stage}")
        if req.transit and req.more:
            raise refused(LoginStatus.INITIATOR_ERROR, "T and C both set")
        if req.transit and (req.nsg not in (OPERATIONAL, FULL_FEATURE) or req.nsg <= req.csg):
            raise refused(LoginStatus.INITIATOR_ERROR, f"transit {req.csg} -> {req.nsg}")

    def _begin(self, req: _Request, keys: dict[str, str]) -> None:
        """The first complete request names the initiator, the session type and target."""
        session_type = keys.get("SessionType", "Normal")
        if session_type not in SESSION_TYPES:
            raise refused(LoginStatus.SESSION_TYPE_NOT_SUPPORTED, session_type)
        initiator = keys.get("InitiatorName")
        if not initiator:
            raise refused(LoginStatus.MISSING_PARAMETER, "no InitiatorName")
        self._who["initiator"] = initiator
        if session_type == "Discovery":
            self._who["session"] = "discovery"
        else:
            self._who["target"] = keys.get("TargetName", "")
        self._params.session_type = session_type
        if session_type == "Discovery":
            self._secret = self._config.discovery_chap
        else:
            name = keys.get("TargetName")
            if not name:
                raise refused(LoginStatus.MISSING_PARAMETER, "no TargetName")
            target = self._config.target(name)
            if target is None:
                raise refused(LoginStatus.NOT_FOUND, name)
            if target.allowed_initiators and initiator not in target.allowed_initiators:
                raise refused(LoginStatus.AUTHORIZATION_FAILURE, f"{initiator} not allowed")
            self._redirect(name)
            self._target = target
            self._secret = target.chap
        if self._secret is not None and req.csg != SECURITY:
            raise refused(LoginStatus.AUTHENTICATION_FAILURE, "skipped required security")
        self._authenticated = self._secret is None
        self._negotiator = Negotiator(self._config, self._params, leading=req.tsih == 0)

    def _redirect(self, target: str) -> None:
        """A target another process serves: send the initiator there, before any security
        exchange (that process authenticates it, with the same secrets)."""
        port = self._portal.moved_port(target)
        if port is None:
            return
        if port == 0:
            raise refused(LoginStatus.SERVICE_UNAVAILABLE, f"{target} is restarting")
        host = (
            self._portal.redirect_host
            or self.local_host
            or self._portal.advertised.rsplit(":", 1)[0]
        )
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address (RFC 7143 13.8)
        raise _Moved(f"{host}:{port},{self._portal.tpgt}")

    def _negotiate(
        self, req: _Request, pairs: list[tuple[str, str]], first_text: bool
    ) -> list[tuple[str, str]]:
        assert self._negotiator is not None
        security = {k: v for k, v in pairs if _is_security(k)}
        others = [(k, v) for k, v in pairs if not _is_security(k)]
        answers = []
        try:
            if self._stage == SECURITY:
                answers += self._security(req, security, pairs)
            # Security keys reach the negotiator too: it refuses them outside the
            # security stage and catches any key sent twice.
            answers += self._negotiator.negotiate(
                others if self._stage == SECURITY else pairs, _STAGE_NAMES[self._stage]
            )
        except NegotiationError as exc:
            raise refused(exc.status, str(exc)) from exc
        if first_text and self._target is not None:
            # RFC 7143 13.9: the first login response names the portal group.
            answers.append(("TargetPortalGroupTag", str(self._portal.tpgt)))
            if self._target.alias:
                answers.append(("TargetAlias", self._target.alias))
        return answers

    def _security(
        self, req: _Request, keys: dict[str, str], pairs: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        assert self._negotiator is not None
        seen = [k for k, _ in pairs if _is_security(k)]
        if len(seen) != len(set(seen)):
            raise refused(LoginStatus.INITIATOR_ERROR, "security key sent twice")
        answers = []
        if "AuthMethod" in keys:
            if self._method_chosen:
                raise refused(LoginStatus.INITIATOR_ERROR, "AuthMethod sent twice")
            self._method_chosen = True
            answers.append(("AuthMethod", self._choose_method(keys.pop("AuthMethod"))))
        if keys:
            if self._chap is None:
                raise refused(LoginStatus.AUTHENTICATION_FAILURE, "CHAP keys without CHAP")
            try:
                answers += self._chap.receive(keys)
            except ChapError as exc:
                raise refused(LoginStatus.AUTHENTICATION_FAILURE, str(exc)) from exc
            self._authenticated = self._chap.done
        elif req.transit and not self._authenticated and self._chap is None:
            raise refused(LoginStatus.AUTHENTICATION_FAILURE, "no AuthMethod offered")
        return answers

    def _choose_method(self, offered: str) -> str:
        methods = offered.split(",")
        if self._secret is not None and "CHAP" in methods:
            mutual = (
                self._config.discovery_mutual_chap
                if self._target is None
                else self._target.mutual_chap
            )
            self._chap = ChapAuthenticator(self._secret, mutual, self._random)
            return "CHAP"
        if self._secret is None and "None" in methods:
            self._authenticated = True
            return "None"
        # A Reject answer cannot travel with a failure status; the status says it all.
        raise refused(LoginStatus.AUTHENTICATION_FAILURE, f"no acceptable AuthMethod {offered}")

    # -- responses --------------------------------------------------------------------

    def _answer(self, req: _Request, answers: list[tuple[str, str]]) -> LoginStep:
        transit = req.transit and (self._stage != SECURITY or self._authenticated)
        if self._stage == OPERATIONAL:
            answers += self._operational_declarations()
        flags = self._stage << 2 | ((FLAG_TRANSIT | req.nsg) if transit else 0)
        text = encode_pairs(answers)
        parts = [text[i : i + LOGIN_SEGMENT] for i in range(0, len(text), LOGIN_SEGMENT)]
        parts = parts or [b""]
        # RFC 7143 11.13.2: a response continued with C keeps T=0 until its last part.
        self._outgoing = [(part, FLAG_CONTINUE | self._stage << 2) for part in parts[:-1]]
        self._outgoing.append((parts[-1], flags))
        return self._send_next(req)

    def _send_next(self, req: _Request) -> LoginStep:
        text, flags = self._outgoing.pop(0)
        final = not self._outgoing and flags & FLAG_TRANSIT and flags & 3 == FULL_FEATURE
        if not final:
            if not self._outgoing and flags & FLAG_TRANSIT:
                self._stage = flags & 3
            return LoginStep([self._response(req, text, flags)])
        tsih = self._bind(req)
        reply = self._response(req, text, flags, tsih=tsih)
        self._done = True
        if self._target is not None:
            self._params.target_name = self._target.name
        done = LoginDone(
            params=self._params,
            isid=req.isid,
            tsih=tsih,
            cid=req.cid,
            target=self._target,
            exp_cmdsn=req.cmdsn,
            stat_sn=self._stat_sn,
            authenticated_user=self._chap.user if self._chap is not None else None,
        )
        return LoginStep([reply], done=done)

    def _bind(self, req: _Request) -> int:
        return self._binder.bind(
            initiator_name=self._params.initiator_name,
            isid=req.isid,
            tsih=req.tsih,
            target_name=None if self._target is None else self._target.name,
            session_type=self._params.session_type,
            cid=req.cid,
        )

    def _operational_declarations(self) -> list[tuple[str, str]]:
        if self._declared_operational:
            return []
        self._declared_operational = True
        limit = KEYS["MaxRecvDataSegmentLength"].high
        ours = min(self._config.max_recv_data_segment_length, limit)
        self._params.target_max_recv_data_segment_length = ours
        return [("MaxRecvDataSegmentLength", str(ours))]

    def _response(
        self,
        req: _Request,
        text: bytes,
        flags: int,
        *,
        tsih: int | None = None,
        status: int = 0,
    ) -> bytes:
        hdr = new_header(Op.LOGIN_RESPONSE, flags, itt=req.itt, data_length=len(text))
        hdr[2] = VERSION  # Version-max
        hdr[3] = VERSION  # Version-active
        hdr[8:14] = req.isid
        put_u16(hdr, 14, req.tsih if tsih is None else tsih)
        put_u32(hdr, 24, self._stat_sn)
        put_u32(hdr, 28, self._exp_cmdsn)
        put_u32(hdr, 32, self._exp_cmdsn + COMMAND_WINDOW - 1)
        hdr[36] = status >> 8
        hdr[37] = status & 0xFF
        self._stat_sn = (self._stat_sn + 1) & 0xFFFFFFFF
        return bytes(hdr) + text + bytes(padded(len(text)) - len(text))

    def _reject(self, pdu: Pdu, status: int, text: bytes = b"") -> bytes:
        if len(pdu.bhs) < 48 or pdu.opcode != Op.LOGIN_REQUEST:
            req = _Request(False, False, 0, 0, 0, 0, bytes(6), 0, pdu.itt, 0, 0, 0)
        else:
            req = _Request.parse(pdu)
        if self._first is None:
            self._stat_sn = req.exp_statsn
        return self._response(req, text, 0, status=status)


def _is_security(key: str) -> bool:
    spec = KEYS.get(key)
    return spec is not None and spec.rule is Rule.SECURITY
