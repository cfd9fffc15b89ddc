"""A deliberately small iSCSI initiator over a plain socket, for tests that must send
what real initiators never do: truncated, oversized and garbage PDUs, wrong-phase
opcodes, odd CmdSNs. Real-client tests use libiscsi, QEMU and pyscsi instead.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import crc32c

from targetd.iscsi.pdu import BHS_LEN, Op, new_header, padded, put_u32

ISID = bytes([0x40, 0, 0, 0, 0x12, 0x34])


@dataclass
class Response:
    bhs: bytes
    data: bytes

    @property
    def opcode(self) -> int:
        return self.bhs[0] & 0x3F

    def u32(self, offset: int) -> int:
        return struct.unpack_from(">I", self.bhs, offset)[0]


def _digest(data: bytes | bytearray) -> bytes:
    return crc32c.crc32c(data).to_bytes(4, "little")


def encode_keys(keys: dict[str, str]) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in keys.items())


def decode_keys(data: bytes) -> dict[str, str]:
    out = {}
    for item in data.split(b"\0"):
        if item:
            k, _, v = item.decode().partition("=")
            out[k] = v
    return out


class RawInitiator:
    def __init__(self, port: int, *, name: str = "iqn.2026-11.org.targetd.test:raw") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.name = name
        self.cmdsn = 1
        self.expstatsn = 0
        self.itt = 0x100
        self.negotiated: dict[str, str] = {}
        # CRC32C digests, once a login has negotiated them (RFC 7143 11.1.1).
        self.header_digest = False
        self.data_digest = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawInitiator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- wire ----------------------------------------------------------------------
    def send(self, hdr: bytes | bytearray, data: bytes = b"") -> None:
        body = data + bytes(padded(len(data)) - len(data))
        head = bytes(hdr) + (_digest(hdr) if self.header_digest else b"")
        tail = _digest(body) if self.data_digest and data else b""
        self.sock.sendall(head + body + tail)

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("target closed the connection")
            buf += chunk
        return bytes(buf)

    def recv(self) -> Response:
        bhs = self.recv_exact(BHS_LEN)
        if self.header_digest:
            assert self.recv_exact(4) == _digest(bhs), "bad header digest"
        dlen = int.from_bytes(bhs[5:8], "big")
        body = self.recv_exact(padded(dlen))
        if self.data_digest and dlen:
            assert self.recv_exact(4) == _digest(body), "bad data digest"
        data = body[:dlen]
        op = bhs[0] & 0x3F
        if op in (
            Op.SCSI_RESPONSE,
            Op.NOP_IN,
            Op.LOGIN_RESPONSE,
            Op.TEXT_RESPONSE,
            Op.TASK_MGMT_RESPONSE,
            Op.LOGOUT_RESPONSE,
            Op.REJECT,
        ) or (op == Op.DATA_IN and bhs[1] & 0x01):
            stat_sn = struct.unpack_from(">I", bhs, 24)[0]
            # RFC 7143 11.19: a NOP-In with the reserved ITT (a ping) carries the next StatSN
            # without consuming it.
            consumed = not (op == Op.NOP_IN and bhs[16:20] == b"\xff\xff\xff\xff")
            self.expstatsn = (stat_sn + consumed) & 0xFFFFFFFF
        return Response(bhs, data)

    def closed_by_target(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionError, OSError):
            return True
        except TimeoutError:
            return False

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    # -- login ---------------------------------------------------------------------
    def login(self, target: str | None, **extra: str) -> Response:
        """Security-less login straight to full-feature phase; returns the last response."""
        keys = {"InitiatorName": self.name}
        if target is None:
            keys["SessionType"] = "Discovery"
        else:
            keys["TargetName"] = target
        keys.update(
            {
                "HeaderDigest": "None",
                "DataDigest": "None",
                "MaxRecvDataSegmentLength": "262144",
                "ImmediateData": "Yes",
                "InitialR2T": "No",
                "MaxBurstLength": "1048576",
                "FirstBurstLength": "262144",
                "ErrorRecoveryLevel": "0",
            }
        )
        keys.update(extra)
        # CSG=1 (operational), NSG=3 (full feature), T=1
        resp = self.login_pdu(keys, flags=0x80 | (1 << 2) | 3)
        if resp.bhs[1] & 0x80 and resp.bhs[36] == 0:  # in full feature phase now
            self.header_digest = self.negotiated.get("HeaderDigest") == "CRC32C"
            self.data_digest = self.negotiated.get("DataDigest") == "CRC32C"
        return resp

    def login_pdu(self, keys: dict[str, str], *, flags: int, tsih: int = 0) -> Response:
        self.send_login_pdu(keys, flags=flags, tsih=tsih)
        resp = self.recv()
        self.negotiated.update(decode_keys(resp.data))
        return resp

    def send_login_pdu(self, keys: dict[str, str], *, flags: int, tsih: int = 0) -> None:
        """A Login Request, its response not read (``recv`` it)."""
        data = encode_keys(keys)
        hdr = new_header(Op.LOGIN_REQUEST | 0x40, flags, itt=self.next_itt(), data_length=len(data))
        hdr[8:14] = ISID
        hdr[14:16] = tsih.to_bytes(2, "big")
        put_u32(hdr, 24, self.cmdsn)
        put_u32(hdr, 28, self.expstatsn)
        self.send(hdr, data)

    # -- full feature ----------------------------------------------------------------
    def scsi_header(
        self,
        cdb: bytes,
        *,
        lun: int = 0,
        read: int = 0,
        write: int = 0,
        data_len: int = 0,
        immediate: bool = False,
        attr: int = 1,
    ) -> bytearray:
        """A SCSI Command header; ``attr`` is the task attribute (RFC 7143 11.3.1: 0
        untagged, 1 simple, 2 ordered, 3 head of queue, 4 ACA)."""
        flags = 0x80 | (0x40 if read else 0) | (0x20 if write else 0) | (attr & 0x07)
        op = Op.SCSI_COMMAND | (0x40 if immediate else 0)
        hdr = new_header(op, flags, itt=self.next_itt(), data_length=data_len)
        hdr[9] = lun
        put_u32(hdr, 20, read or write)
        put_u32(hdr, 24, self.cmdsn)
        put_u32(hdr, 28, self.expstatsn)
        hdr[32 : 32 + len(cdb)] = cdb
        if not immediate:
            self.cmdsn += 1
        return hdr

    def command(
        self, cdb: bytes, *, lun: int = 0, read: int = 0, data: bytes = b""
    ) -> tuple[int, bytes, bytes]:
        """Run one command with immediate data (writes up to FirstBurstLength).

        Returns (status, data-in, sense).
        """
        self.send(
            self.scsi_header(cdb, lun=lun, read=read, write=len(data), data_len=len(data)), data
        )
        data_in = bytearray()
        while True:
            resp = self.recv()
            if resp.opcode == Op.DATA_IN:
                data_in += resp.data
                if resp.bhs[1] & 0x01:
                    return resp.bhs[3], bytes(data_in), b""
            elif resp.opcode == Op.SCSI_RESPONSE:
                sense = (
                    resp.data[2 : 2 + int.from_bytes(resp.data[:2], "big")] if resp.data else b""
                )
                return resp.bhs[3], bytes(data_in), sense
            elif resp.opcode == Op.NOP_IN and resp.u32(20) != 0xFFFFFFFF:
                self.answer_ping(resp)  # a keepalive of a session left idle a while
            else:
                raise AssertionError(f"unexpected opcode {resp.opcode:#x}")

    def clear_unit_attentions(self, lun: int = 0) -> None:
        """TEST UNIT READY until the power-on unit attention of a new nexus is consumed."""
        for _ in range(5):
            status, _, _ = self.command(bytes(6), lun=lun)
            if status == 0:
                return
        raise AssertionError("unit attention does not clear")

    def answer_ping(self, ping: Response) -> None:
        """Answer the target's NOP-In ping (RFC 7143 11.18.2: ITT reserved, its TTT echoed)."""
        hdr = new_header(Op.NOP_OUT | 0x40, 0x80, itt=0xFFFFFFFF, data_length=len(ping.data))
        put_u32(hdr, 20, ping.u32(20))
        put_u32(hdr, 24, self.cmdsn)
        put_u32(hdr, 28, self.expstatsn)
        self.send(hdr, ping.data)

    def nop(self, payload: bytes = b"") -> Response:
        hdr = new_header(Op.NOP_OUT | 0x40, 0x80, itt=self.next_itt(), data_length=len(payload))
        put_u32(hdr, 20, 0xFFFFFFFF)
        put_u32(hdr, 24, self.cmdsn)
        put_u32(hdr, 28, self.expstatsn)
        self.send(hdr, payload)
        return self.recv()

    def logout(self) -> Response:
        hdr = new_header(Op.LOGOUT_REQUEST | 0x40, 0x80, itt=self.next_itt())
        put_u32(hdr, 24, self.cmdsn)
        put_u32(hdr, 28, self.expstatsn)
        self.send(hdr)
        return self.recv()
