"""Wire helpers the login, CHAP and text tests share: build requests, read responses."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from targetd.iscsi.login import LoginMachine, LoginRefused
from targetd.iscsi.pdu import RESERVED_TAG, Op, Pdu, new_header, put_u16, put_u32
from targetd.iscsi.settings import PortalSettings, Secret, Settings, TargetSettings

ISID = bytes.fromhex("400001370000")
INITIATOR = "iqn.1994-05.com.example:host1"
TARGET = "iqn.2026-11.org.targetd:disk"
PORTAL = PortalSettings(tpgt=1, advertised="127.0.0.1:3260")


def make_config(**changes: object) -> Settings:
    target = TargetSettings(TARGET, alias="disk")
    values: dict[str, object] = {"portals": (PORTAL,), "targets": (target,)}
    values.update(changes)
    return Settings(**values)  # type: ignore[arg-type]


def chap_target(secret: str = "initiator-secret", mutual: str | None = None) -> TargetSettings:
    return TargetSettings(
        TARGET,
        chap=Secret("alice", secret),
        mutual_chap=Secret("target-user", mutual) if mutual else None,
    )


def text(**pairs: object) -> bytes:
    return b"".join(f"{k}={v}\0".encode() for k, v in pairs.items())


def pairs_text(pairs: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}={v}\0".encode() for k, v in pairs)


def login_request(
    data: bytes = b"",
    *,
    csg: int = 0,
    nsg: int = 1,
    transit: bool = True,
    more: bool = False,
    isid: bytes = ISID,
    tsih: int = 0,
    itt: int = 0x1000,
    cid: int = 1,
    cmdsn: int = 7,
    exp_statsn: int = 0,
    version_max: int = 0,
    version_min: int = 0,
    opcode: int = Op.LOGIN_REQUEST,
) -> Pdu:
    flags = (0x80 if transit else 0) | (0x40 if more else 0) | csg << 2 | (nsg if transit else 0)
    hdr = new_header(opcode | 0x40, flags, itt=itt, data_length=len(data))
    hdr[2], hdr[3] = version_max, version_min
    hdr[8:14] = isid
    put_u16(hdr, 14, tsih)
    put_u16(hdr, 20, cid)
    put_u32(hdr, 24, cmdsn)
    put_u32(hdr, 28, exp_statsn)
    return Pdu(bytes(hdr), b"", data)


def text_request(
    data: bytes = b"",
    *,
    final: bool = True,
    more: bool = False,
    itt: int = 0x2000,
    ttt: int = RESERVED_TAG,
    cmdsn: int = 7,
) -> Pdu:
    flags = (0x80 if final else 0) | (0x40 if more else 0)
    hdr = new_header(Op.TEXT_REQUEST, flags, itt=itt, data_length=len(data))
    put_u32(hdr, 20, ttt)
    put_u32(hdr, 24, cmdsn)
    return Pdu(bytes(hdr), b"", data)


@dataclass
class Response:
    """A Login or Text Response taken apart."""

    opcode: int
    transit: bool  # the F bit for a Text Response
    more: bool
    csg: int
    nsg: int
    version_max: int
    version_active: int
    data_length: int
    isid: bytes
    tsih: int
    itt: int
    ttt: int
    stat_sn: int
    exp_cmdsn: int
    max_cmdsn: int
    status: int
    data: bytes
    pairs: list[tuple[str, str]] = field(default_factory=list)

    @property
    def keys(self) -> dict[str, str]:
        return dict(self.pairs)


def parse_response(raw: bytes, data: bytes | None = None) -> Response:
    bhs = raw[:48]
    length = int.from_bytes(bhs[5:8], "big")
    if data is None:
        data = raw[48 : 48 + length]
        assert len(raw) == 48 + (length + 3) // 4 * 4, "PDU is not BHS + padded data"
        assert raw[48 + length :] == bytes(len(raw) - 48 - length)
    stat_sn, exp_cmdsn, max_cmdsn = struct.unpack_from(">III", bhs, 24)
    items = [item for item in data.decode().split("\0") if item]
    return Response(
        opcode=bhs[0] & 0x3F,
        transit=bool(bhs[1] & 0x80),
        more=bool(bhs[1] & 0x40),
        csg=(bhs[1] >> 2) & 3,
        nsg=bhs[1] & 3,
        version_max=bhs[2],
        version_active=bhs[3],
        data_length=length,
        isid=bytes(bhs[8:14]),
        tsih=struct.unpack_from(">H", bhs, 14)[0],
        itt=struct.unpack_from(">I", bhs, 16)[0],
        ttt=struct.unpack_from(">I", bhs, 20)[0],
        stat_sn=stat_sn,
        exp_cmdsn=exp_cmdsn,
        max_cmdsn=max_cmdsn,
        status=bhs[36] << 8 | bhs[37],
        data=bytes(data),
        pairs=[tuple(item.split("=", 1)) for item in items],  # type: ignore[misc]
    )


class FakeBinder:
    """Records bind() calls; hands out TSIH 0x77 or raises ``refuse``."""

    def __init__(self, tsih: int = 0x77, refuse: LoginRefused | None = None) -> None:
        self.tsih = tsih
        self.refuse = refuse
        self.calls: list[dict[str, object]] = []

    def bind(self, **kwargs: object) -> int:
        self.calls.append(kwargs)
        if self.refuse is not None:
            raise self.refuse
        return self.tsih


def machine(
    config: Settings | None = None, binder: FakeBinder | None = None, random: bytes | None = None
) -> tuple[LoginMachine, FakeBinder]:
    binder = binder or FakeBinder()
    source = iter(random if random is not None else bytes(range(1, 200)))

    def random_bytes(n: int) -> bytes:
        return bytes(next(source) for _ in range(n))

    return LoginMachine(config or make_config(), PORTAL, binder, random_bytes=random_bytes), binder


def only(step_replies: list[bytes]) -> Response:
    assert len(step_replies) == 1
    return parse_response(step_replies[0])


def normal_keys(**extra: object) -> bytes:
    return text(InitiatorName=INITIATOR, TargetName=TARGET, SessionType="Normal", **extra)
