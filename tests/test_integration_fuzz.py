"""Over-the-wire bad input under load (docs/design.md, the promises), bounded in count and time.

Several raw connections send random garbage, random login requests and random malformed
PDUs after logging in, while one healthy session keeps writing and reading back verified
data. Afterwards the daemon is alive, the healthy session never saw an error, a fresh
login works, and the daemon's log holds no Traceback.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time

from conftest import Daemon
from raw_initiator import ISID, RawInitiator, encode_keys

from targetd.iscsi.pdu import BHS_LEN, Op, new_header, padded, put_u32

ATTACKERS = 3
ROUNDS = 12  # connections per attacker
DEADLINE = 25.0  # seconds for the whole attack
HEALTHY_BLOCKS = 8  # 4 KiB per write


def _write10(lba: int, blocks: int) -> bytes:
    return bytes([0x2A, 0]) + lba.to_bytes(4, "big") + b"\0" + blocks.to_bytes(2, "big") + b"\0"


def _read10(lba: int, blocks: int) -> bytes:
    return bytes([0x28, 0]) + lba.to_bytes(4, "big") + b"\0" + blocks.to_bytes(2, "big") + b"\0"


def _drain(sock: socket.socket, seconds: float) -> None:
    """Read what the target sends back until it goes quiet or closes."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def _random_pdu(rng: random.Random, cmdsn: int) -> bytes:
    hdr = bytearray(rng.randbytes(BHS_LEN))
    hdr[0] = rng.choice([0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x10, 0x03, rng.randrange(64)])
    hdr[0] |= rng.choice([0, 0x40])
    hdr[4] = rng.choice([0, 0, 0, 1, 2])
    dlen = rng.choice([0, 0, 1, 48, 512, 4096, rng.randrange(70000)])
    hdr[5:8] = dlen.to_bytes(3, "big")
    hdr[8:16] = rng.choice([bytes(8), bytes([0, 1]) + bytes(6), bytes(hdr[8:16])])
    put_u32(hdr, 24, rng.choice([cmdsn, cmdsn + 1, cmdsn - 1, rng.getrandbits(32)]))
    if rng.random() < 0.5:
        hdr[32:48] = rng.choice(
            [
                _write10(rng.randrange(64), 1),
                _read10(0, 1),
                bytes(6),
                bytes([0x12, 1, 0x83, 0, 255, 0]),
            ]
        ).ljust(16, b"\0")
    ahs = rng.randbytes(hdr[4] * 4)
    return bytes(hdr) + ahs + rng.randbytes(dlen) + bytes(padded(dlen) - dlen)


def _random_login(rng: random.Random, iqn: str) -> bytes:
    keys = {
        "InitiatorName": rng.choice(["iqn.2026-11.org.targetd.test:fuzz", "", "x" * 300]),
        "TargetName": rng.choice([iqn, "iqn.2026-11.org.nope:x", ""]),
        rng.choice(["AuthMethod", "MaxBurstLength", "HeaderDigest", "CHAP_A", "X-y"]): rng.choice(
            ["None", "CHAP", "0x", "99999999999999999999", "CRC32C,None", "", "Reject"]
        ),
    }
    data = encode_keys(keys) + (rng.randbytes(rng.randrange(40)) if rng.random() < 0.3 else b"")
    hdr = new_header(Op.LOGIN_REQUEST | 0x40, rng.randrange(256), itt=1, data_length=len(data))
    hdr[2], hdr[3] = rng.choice([(0, 0), (1, 1), (0xFF, 0)])
    hdr[8:14] = ISID
    return bytes(hdr) + data + bytes(padded(len(data)) - len(data))


def _attack(port: int, iqn: str, seed: int, stop_at: float, errors: list[str]) -> None:
    rng = random.Random(seed)
    for round_ in range(ROUNDS):
        if time.monotonic() > stop_at:
            return
        kind = round_ % 3
        try:
            if kind == 0:  # garbage straight away
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.sendall(rng.randbytes(rng.choice([1, 47, 48, 200, 5000])))
                    _drain(s, 0.5)
            elif kind == 1:  # a random login request
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.sendall(_random_login(rng, iqn))
                    _drain(s, 0.5)
            else:  # log in properly, then malformed PDUs
                with RawInitiator(port, name=f"iqn.2026-11.org.targetd.test:fuzz{seed}") as ini:
                    resp = ini.login(iqn)
                    if resp.bhs[36] != 0:
                        errors.append(f"attacker login refused: {resp.bhs[36:38].hex()}")
                        continue
                    stream = b"".join(
                        _random_pdu(rng, ini.cmdsn) for _ in range(rng.randrange(1, 6))
                    )
                    if rng.random() < 0.3:
                        stream = stream[: rng.randrange(len(stream) + 1)]
                    ini.sock.sendall(stream)
                    _drain(ini.sock, 0.5)
        except OSError:
            pass  # the target closing on us is a fine answer


def test_garbage_and_bad_pdus_leave_a_healthy_session_alone(targetd: Daemon) -> None:
    errors: list[str] = []
    stop_at = time.monotonic() + DEADLINE
    with RawInitiator(targetd.port, name="iqn.2026-11.org.targetd.test:healthy") as good:
        resp = good.login(targetd.iqn)
        assert resp.opcode == Op.LOGIN_RESPONSE and resp.bhs[36] == 0
        good.clear_unit_attentions()
        threads = [
            threading.Thread(
                target=_attack, args=(targetd.port, targetd.iqn, seed, stop_at, errors), daemon=True
            )
            for seed in range(ATTACKERS)
        ]
        for t in threads:
            t.start()
        rounds = 0
        # Keep the healthy session busy for as long as the attack lasts (and a few rounds).
        while rounds < 5 or any(t.is_alive() for t in threads):
            lba = 1024 + (rounds % 64) * HEALTHY_BLOCKS
            payload = os.urandom(512 * HEALTHY_BLOCKS)
            status, _, sense = good.command(_write10(lba, HEALTHY_BLOCKS), data=payload)
            assert status == 0, f"healthy write failed: {sense.hex()}"
            status, data, sense = good.command(_read10(lba, HEALTHY_BLOCKS), read=len(payload))
            assert status == 0 and data == payload, f"healthy read back failed: {sense.hex()}"
            rounds += 1
            assert time.monotonic() < stop_at + 30, "attack threads do not finish"
        for t in threads:
            t.join(5)
        assert good.nop(b"ping").opcode == Op.NOP_IN
    assert not errors, errors
    assert targetd.proc is not None and targetd.proc.poll() is None, "the daemon died"
    with RawInitiator(targetd.port, name="iqn.2026-11.org.targetd.test:after") as after:
        assert after.login(targetd.iqn).bhs[36] == 0
    assert "Traceback" not in targetd.stderr, targetd.stderr[-4000:]
