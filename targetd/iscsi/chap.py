"""CHAP (RFC 1994) as iSCSI uses it, RFC 7143 12.1.3: the target's side, mutual included.

The target challenges (CHAP_I, CHAP_C), checks the initiator's CHAP_N/CHAP_R, and when
the initiator sends a challenge of its own answers it with the mutual secret. MD5 is the
only algorithm (CHAP_A=5) every iSCSI implementation has; it is the one we take.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from enum import Enum, auto

from targetd.iscsi.settings import Secret

CHAP_MD5 = 5
CHALLENGE_LEN = 16
# RFC 7143 12.1.3 bounds what an initiator may send us to chew on.
MAX_BINARY_LEN = 1024


class ChapError(Exception):
    """Authentication failed; the login ends with status 0x0201."""


def decode_binary(value: str) -> bytes:
    """An RFC 7143 5.1 binary value: 0x/0X hex or 0b/0B base64."""
    prefix, body = value[:2].lower(), value[2:]
    try:
        if prefix == "0x":
            if len(body) % 2:
                body = "0" + body  # RFC 7143 5.1 allows an odd number of hex digits
            return bytes.fromhex(body)
        if prefix == "0b":
            return base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ChapError(f"bad binary value {value[:40]!r}") from exc
    raise ChapError(f"binary value without 0x/0b prefix: {value[:40]!r}")


def encode_hex(data: bytes) -> str:
    return "0x" + data.hex()


def chap_response(identifier: int, secret: bytes, challenge: bytes) -> bytes:
    """RFC 1994 4.1: MD5 over the identifier octet, the secret and the challenge."""
    return hashlib.md5(bytes([identifier]) + secret + challenge).digest()


def _parse_identifier(value: str) -> int:
    try:
        number = int(value[2:], 16) if value[:2].lower() == "0x" else int(value, 10)
    except ValueError as exc:
        raise ChapError(f"bad CHAP_I {value!r}") from exc
    if not 0 <= number <= 255:
        raise ChapError(f"CHAP_I {number} out of range")
    return number


class _State(Enum):
    AWAIT_ALGORITHM = auto()
    AWAIT_RESPONSE = auto()
    DONE = auto()


class ChapAuthenticator:
    """One CHAP exchange. ``user`` holds the authenticated name once it succeeded."""

    def __init__(
        self,
        secret: Secret,
        mutual: Secret | None,
        random_bytes: Callable[[int], bytes],
    ) -> None:
        self._secret = secret
        self._mutual = mutual
        self._random = random_bytes
        self._state = _State.AWAIT_ALGORITHM
        self._identifier = 0
        self._challenge = b""
        self.user: str | None = None

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def receive(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        """Take the CHAP_* keys of one login request; return the CHAP_* keys to answer."""
        if self._state is _State.AWAIT_ALGORITHM:
            if set(keys) != {"CHAP_A"}:
                raise ChapError(f"expected CHAP_A, got {sorted(keys)}")
            return self._challenge_keys(keys["CHAP_A"])
        if self._state is _State.AWAIT_RESPONSE:
            return self._verify(keys)
        raise ChapError(f"CHAP keys after authentication: {sorted(keys)}")

    def _challenge_keys(self, offered: str) -> list[tuple[str, str]]:
        if str(CHAP_MD5) not in offered.split(","):
            raise ChapError(f"no supported CHAP_A in {offered!r}")
        self._identifier = self._random(1)[0]
        self._challenge = self._random(CHALLENGE_LEN)
        self._state = _State.AWAIT_RESPONSE
        return [
            ("CHAP_A", str(CHAP_MD5)),
            ("CHAP_I", str(self._identifier)),
            ("CHAP_C", encode_hex(self._challenge)),
        ]

    def _verify(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        allowed = {"CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C"}
        if not {"CHAP_N", "CHAP_R"} <= set(keys) <= allowed:
            raise ChapError(f"expected CHAP_N and CHAP_R, got {sorted(keys)}")
        if ("CHAP_I" in keys) != ("CHAP_C" in keys):
            raise ChapError("mutual CHAP needs both CHAP_I and CHAP_C")
        response = decode_binary(keys["CHAP_R"])
        expected = chap_response(self._identifier, self._secret.secret.encode(), self._challenge)
        name_ok = hmac.compare_digest(keys["CHAP_N"].encode(), self._secret.user.encode())
        if not (hmac.compare_digest(response, expected) and name_ok):
            raise ChapError(f"CHAP response for {keys['CHAP_N']!r} does not verify")
        self.user = keys["CHAP_N"]
        self._state = _State.DONE
        if "CHAP_I" not in keys:
            return []
        return self._answer_mutual(keys["CHAP_I"], keys["CHAP_C"])

    def _answer_mutual(self, identifier_text: str, challenge_text: str) -> list[tuple[str, str]]:
        if self._mutual is None:
            raise ChapError("initiator asks for mutual CHAP but no mutual secret is set")
        identifier = _parse_identifier(identifier_text)
        challenge = decode_binary(challenge_text)
        if not challenge or len(challenge) > MAX_BINARY_LEN:
            raise ChapError(f"mutual challenge of {len(challenge)} bytes")
        # RFC 7143 12.1.3: answering our own challenge would let a reflection attack in.
        if challenge == self._challenge:
            raise ChapError("initiator reflected our challenge")
        if self._mutual.secret == self._secret.secret:
            # RFC 7143 12.1.3: the same secret both ways makes reflection trivial.
            raise ChapError("mutual secret equals the initiator's secret")
        answer = chap_response(identifier, self._mutual.secret.encode(), challenge)
        return [("CHAP_N", self._mutual.user), ("CHAP_R", encode_hex(answer))]
