"""Persistent reservations of an RBD LUN, shared by two gateways (tests/ceph/gateways.py:
two `targetd serve` processes, one target IQN, one image, TPGT 1 and 2): taken through
gateway A, they are seen (READ KEYS, READ RESERVATION, READ FULL STATUS) and enforced
(RESERVATION CONFLICT, the lock moving for the write) through gateway B; a PREEMPT
through B raises REGISTRATIONS PREEMPTED on A's nexus; with APTPL they survive a restart
of both gateways, without it only a restart of one (docs/rbd.md, "Persistent
reservations"). RESERVE(6) is kept in the same record: taken through A, it is enforced
through B. A gateway killed with SIGKILL and restarted while no other serves the LU forgets
what a power loss forgets, although the cluster still keeps its dead predecessor's watch."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ceph_fixtures import ImageFactory, export_image, rbd_lun_toml, target_toml
from cluster import CephCluster
from conftest import DaemonFactory
from gateways import IQN, GatewayPair, PairFactory, gateway_pair
from gateways import ConfigDaemon as Gateway
from raw_initiator import RawInitiator

from scsi.sense import parse_sense
from scsi.transport_id import TransportId

HOLDER = "iqn.2026-11.org.test:holder"
OTHER = "iqn.2026-11.org.test:other"
STRANGER = "iqn.2026-11.org.test:stranger"
ISID = "400000001234"  # raw_initiator's
GOOD, CHECK_CONDITION, RESERVATION_CONFLICT = 0x00, 0x02, 0x18
WE, EA, WERO = 0x1, 0x3, 0x5
REGISTER, RESERVE, RELEASE, PREEMPT, PREEMPT_AND_ABORT = 0x00, 0x01, 0x02, 0x04, 0x05
K_HOLDER, K_OTHER = 0xAAAA_0000_0000_0001, 0xBBBB_0000_0000_0002
WRITE10 = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])
READ10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0])
READ_KEYS = bytes([0x5E, 0x00, 0, 0, 0, 0, 0, 4, 0, 0])
READ_RESERVATION = bytes([0x5E, 0x01, 0, 0, 0, 0, 0, 1, 0, 0])
REPORT_CAPABILITIES = bytes([0x5E, 0x02, 0, 0, 0, 0, 0, 0, 8, 0])
READ_FULL_STATUS = bytes([0x5E, 0x03, 0, 0, 0, 0, 0, 4, 0, 0])
TUR = bytes(6)
RESERVE6, RELEASE6 = bytes([0x16, 0, 0, 0, 0, 0]), bytes([0x17, 0, 0, 0, 0, 0])
INQUIRY = bytes([0x12, 0, 0, 0, 36, 0])


@pytest.fixture
def gateways(
    gateway_pair: PairFactory, new_image: ImageFactory
) -> Iterator[tuple[Gateway, Gateway]]:
    """A and B (TPGT 1 and 2) with the lock following the writes (hold 0) and no unit
    attention of their own when it moves, so each sense checked here is the reservations'."""
    pair = gateway_pair(new_image("16M"), hold_ms=0, unit_attention=False)
    yield pair.a, pair.b


def login(gateway: Gateway, name: str) -> RawInitiator:
    ini = RawInitiator(gateway.port, name=name)
    assert ini.login(IQN).bhs[36:38] == b"\0\0"
    ini.clear_unit_attentions()
    return ini


def prout(ini: RawInitiator, action: int, key: int, sa_key: int = 0, type_: int = 0,
          aptpl: bool = False) -> tuple[int, tuple[int, int, int] | None]:  # fmt: skip
    cdb = bytes([0x5F, action, type_, 0, 0]) + (24).to_bytes(4, "big") + bytes(1)
    params = (
        key.to_bytes(8, "big") + sa_key.to_bytes(8, "big") + bytes([0, 0, 0, 0, aptpl, 0, 0, 0])
    )
    status, _, sense = ini.command(cdb, data=params)
    return status, parse_sense(sense) if status == CHECK_CONDITION else None


def read_keys(ini: RawInitiator) -> tuple[int, list[int]]:
    status, data, _ = ini.command(READ_KEYS, read=1024)
    assert status == GOOD
    length = int.from_bytes(data[4:8], "big")
    keys = [int.from_bytes(data[8 + i : 16 + i], "big") for i in range(0, length, 8)]
    return int.from_bytes(data[:4], "big"), keys


def read_reservation(ini: RawInitiator) -> tuple[int, int] | None:
    status, data, _ = ini.command(READ_RESERVATION, read=256)
    assert status == GOOD
    if int.from_bytes(data[4:8], "big") == 0:
        return None
    return int.from_bytes(data[8:16], "big"), data[21] & 0x0F


def full_status(ini: RawInitiator) -> dict[bytes, tuple[int, int, int]]:
    """TransportID -> (key, flags byte: R_HOLDER/ALL_TG_PT, relative target port)."""
    status, data, _ = ini.command(READ_FULL_STATUS, read=1024)
    assert status == GOOD
    out, at = {}, 8
    while at < 8 + int.from_bytes(data[4:8], "big"):
        length = int.from_bytes(data[at + 20 : at + 24], "big")
        tid = bytes(data[at + 24 : at + 24 + length])
        out[tid] = (int.from_bytes(data[at : at + 8], "big"), data[at + 12],
                    int.from_bytes(data[at + 18 : at + 20], "big"))  # fmt: skip
        at += 24 + length
    return out


def sense_of(ini: RawInitiator, cdb: bytes) -> tuple[int, int, int] | None:
    status, _, sense = ini.command(cdb)
    return parse_sense(sense) if status == CHECK_CONDITION else None


# (type, OTHER registered through B may write, STRANGER through B may read)
TYPES = [(WE, False, True), (EA, False, False), (WERO, True, True)]


@pytest.mark.parametrize(("pr_type", "registrant_writes", "stranger_reads"), TYPES)
def test_a_reservation_taken_through_a_is_seen_and_enforced_through_b(
    gateways: tuple[Gateway, Gateway], pr_type: int, registrant_writes: bool,
    stranger_reads: bool,
) -> None:  # fmt: skip
    a, b = gateways
    holder = login(a, HOLDER)
    other, stranger = login(b, OTHER), login(b, STRANGER)
    assert prout(holder, REGISTER, 0, K_HOLDER) == (GOOD, None)
    assert prout(other, REGISTER, 0, K_OTHER) == (GOOD, None)
    assert prout(holder, RESERVE, K_HOLDER, type_=pr_type) == (GOOD, None)
    # Seen through B.
    assert read_keys(stranger) == (2, [K_HOLDER, K_OTHER])
    assert read_reservation(stranger) == (K_HOLDER, pr_type)
    assert full_status(stranger) == {
        TransportId(HOLDER, ISID).encode(): (K_HOLDER, 0x01, 1),  # R_HOLDER, through TPGT 1
        TransportId(OTHER, ISID).encode(): (K_OTHER, 0x00, 2),
    }
    caps = stranger.command(REPORT_CAPABILITIES, read=8)[1]
    assert caps[2] & 0x01 and caps[3] & 0x01 == 0  # PTPL_C: APTPL can be kept; not on now
    # Enforced through B.
    assert stranger.command(WRITE10, data=bytes(512))[0] == RESERVATION_CONFLICT
    assert stranger.command(READ10, read=512)[0] == (GOOD if stranger_reads
                                                     else RESERVATION_CONFLICT)  # fmt: skip
    assert other.command(WRITE10, data=bytes(512))[0] == (GOOD if registrant_writes
                                                          else RESERVATION_CONFLICT)  # fmt: skip
    # A RESERVE through B by a registrant that does not hold it: RESERVATION CONFLICT.
    assert prout(other, RESERVE, K_OTHER, type_=pr_type)[0] == RESERVATION_CONFLICT
    # Released through A: a registrants-only release tells B's registrant.
    assert prout(holder, RELEASE, K_HOLDER, type_=pr_type) == (GOOD, None)
    if pr_type == WERO:
        assert sense_of(other, TUR) == (6, 0x2A, 0x04)  # RESERVATIONS RELEASED
    assert sense_of(other, TUR) is None
    assert stranger.command(WRITE10, data=bytes(512))[0] == GOOD
    for ini in (holder, other, stranger):
        ini.close()


def test_a_preempt_through_b_reaches_the_holder_on_a(gateways: tuple[Gateway, Gateway]) -> None:
    a, b = gateways
    holder, other = login(a, HOLDER), login(b, OTHER)
    assert prout(holder, REGISTER, 0, K_HOLDER) == (GOOD, None)
    assert prout(holder, RESERVE, K_HOLDER, type_=WE) == (GOOD, None)
    assert prout(other, REGISTER, 0, K_OTHER) == (GOOD, None)
    assert prout(other, PREEMPT, K_OTHER, K_HOLDER, type_=EA) == (GOOD, None)
    # A's nexus learns it lost its registration before anything else, and is now shut out.
    assert sense_of(holder, TUR) == (6, 0x2A, 0x05)  # REGISTRATIONS PREEMPTED
    assert holder.command(READ10, read=512)[0] == RESERVATION_CONFLICT
    assert read_reservation(other) == (K_OTHER, EA)
    assert read_keys(other) == (3, [K_OTHER])
    # Through A, too, once it asks.
    assert prout(holder, REGISTER, K_HOLDER, 0)[0] == RESERVATION_CONFLICT
    assert other.command(WRITE10, data=bytes(512))[0] == GOOD
    holder.close()
    other.close()


def test_aptpl_survives_a_restart_of_both_gateways_and_without_it_only_of_one(
    gateways: tuple[Gateway, Gateway],
) -> None:
    a, b = gateways
    holder = login(a, HOLDER)
    assert prout(holder, REGISTER, 0, K_HOLDER, aptpl=True) == (GOOD, None)
    assert prout(holder, RESERVE, K_HOLDER, type_=WE) == (GOOD, None)
    holder.close()
    a.stop()
    b.stop()
    b.start()
    a.start()
    other = login(b, OTHER)
    assert read_reservation(other) == (K_HOLDER, WE)
    assert other.command(REPORT_CAPABILITIES, read=8)[1][3] & 0x01  # PTPL_A
    assert other.command(WRITE10, data=bytes(512))[0] == RESERVATION_CONFLICT
    # APTPL off (the holder registers again without it): a restart of one gateway while
    # the other serves the LU keeps the reservation ...
    holder = login(a, HOLDER)
    assert prout(holder, REGISTER, K_HOLDER, K_HOLDER) == (GOOD, None)
    holder.close()
    a.restart()
    assert read_reservation(other) == (K_HOLDER, WE)
    other.close()
    # ... but when neither serves it, the LU lost power: the reservation is gone.
    a.stop()
    b.stop()
    a.start()
    b.start()
    other = login(b, OTHER)
    assert read_keys(other)[1] == [] and read_reservation(other) is None
    assert other.command(WRITE10, data=bytes(512))[0] == GOOD
    other.close()


def test_aptpl_survives_a_power_loss_of_both_gateways(gateways: tuple[Gateway, Gateway]) -> None:
    """A power loss is kill -9 of both (nothing is given up, the dead watches stay in the
    cluster): with APTPL the registrations and the reservation are there after it."""
    a, b = gateways
    holder = login(a, HOLDER)
    assert prout(holder, REGISTER, 0, K_HOLDER, aptpl=True) == (GOOD, None)
    assert prout(holder, RESERVE, K_HOLDER, type_=WERO) == (GOOD, None)
    holder.close()
    for gateway in (a, b):
        os.kill(gateway.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
        gateway.proc.wait()  # type: ignore[union-attr]
    b.start()
    a.start()
    other = login(b, OTHER)
    assert read_keys(other)[1] == [K_HOLDER]
    assert read_reservation(other) == (K_HOLDER, WERO)
    assert other.command(WRITE10, data=bytes(512))[0] == RESERVATION_CONFLICT
    holder = login(a, HOLDER)
    assert holder.command(WRITE10, data=bytes(512))[0] == GOOD  # the registrant, through A
    for ini in (holder, other):
        ini.close()


def test_all_tg_pt_and_spec_i_pt_registrations_hold_through_the_other_gateway(
    gateways: tuple[Gateway, Gateway],
) -> None:
    """What a host with a path to each gateway does (Windows failover clustering registers
    with ALL_TG_PT): one registration through A covers its port through B too, and a
    TransportID registers another host that has logged in nowhere yet."""
    a, b = gateways
    holder_a = login(a, HOLDER)
    tid = TransportId(OTHER).encode()
    cdb = bytes([0x5F, REGISTER, 0, 0, 0]) + (28 + len(tid)).to_bytes(4, "big") + bytes(1)
    params = bytes(8) + K_HOLDER.to_bytes(8, "big") + bytes([0, 0, 0, 0, 0x0C, 0, 0, 0])
    params += len(tid).to_bytes(4, "big") + tid  # SPEC_I_PT | ALL_TG_PT
    assert holder_a.command(cdb, data=params)[0] == GOOD
    assert prout(holder_a, RESERVE, K_HOLDER, type_=WE) == (GOOD, None)
    holder_b, other_b, stranger_b = login(b, HOLDER), login(b, OTHER), login(b, STRANGER)
    assert full_status(stranger_b) == {
        TransportId(HOLDER, ISID).encode(): (K_HOLDER, 0x03, 0),  # ALL_TG_PT, R_HOLDER
        TransportId(OTHER).encode(): (K_HOLDER, 0x02, 0),  # ALL_TG_PT, the whole initiator
    }
    assert holder_b.command(WRITE10, data=bytes(512))[0] == GOOD  # the holder, through B
    assert other_b.command(WRITE10, data=bytes(512))[0] == RESERVATION_CONFLICT
    assert prout(other_b, PREEMPT, K_HOLDER, K_HOLDER, type_=EA) == (GOOD, None)
    assert read_reservation(stranger_b) == (K_HOLDER, EA)  # OTHER's registration holds it
    for ini in (holder_a, holder_b, other_b, stranger_b):
        ini.close()


def test_a_reserve_6_through_a_is_enforced_through_b(gateways: tuple[Gateway, Gateway]) -> None:
    """SPC-2 reservations are per I_T nexus: a host holding one through gateway A shuts out
    every other nexus, those through gateway B included, until it releases it, its nexus
    goes or its gateway stops."""
    a, b = gateways
    holder, other, stranger = login(a, HOLDER), login(b, OTHER), login(b, STRANGER)
    assert holder.command(RESERVE6)[0] == GOOD
    assert other.command(WRITE10, data=bytes(512))[0] == RESERVATION_CONFLICT
    assert other.command(READ10, read=512)[0] == RESERVATION_CONFLICT
    assert other.command(RESERVE6)[0] == RESERVATION_CONFLICT
    assert prout(other, REGISTER, 0, K_OTHER)[0] == RESERVATION_CONFLICT
    assert other.command(INQUIRY, read=36)[0] == GOOD
    assert other.command(RELEASE6)[0] == GOOD  # not its reservation: nothing happens
    assert other.command(WRITE10, data=bytes(512))[0] == RESERVATION_CONFLICT
    assert holder.command(WRITE10, data=bytes(512))[0] == GOOD  # the holder, through A
    assert holder.command(RELEASE6)[0] == GOOD
    assert other.command(WRITE10, data=bytes(512))[0] == GOOD
    # Taken through B; the holder's nexus logs out: released on A as well.
    assert other.command(RESERVE6)[0] == GOOD
    assert holder.command(READ10, read=512)[0] == RESERVATION_CONFLICT
    other.close()
    deadline = time.monotonic() + 5
    while holder.command(READ10, read=512)[0] == RESERVATION_CONFLICT:
        assert time.monotonic() < deadline, "the logged-out nexus's RESERVE(6) still holds"
        time.sleep(0.05)
    assert holder.command(RESERVE6)[0] == GOOD
    # A gateway stopped cleanly (SIGTERM) ends the RESERVE(6)s held through it.
    assert stranger.command(WRITE10, data=bytes(512))[0] == RESERVATION_CONFLICT
    a.stop()
    assert stranger.command(WRITE10, data=bytes(512))[0] == GOOD
    stranger.close()


def test_a_gateway_killed_and_restarted_alone_forgets_what_a_power_loss_forgets(
    gateways: tuple[Gateway, Gateway],
) -> None:
    """kill -9 leaves the gateway's watch in the cluster for osd_client_watch_timeout: the
    restarted gateway must not take its dead predecessor for a gateway serving the LU."""
    a, b = gateways
    holder = login(a, HOLDER)
    assert prout(holder, REGISTER, 0, K_HOLDER) == (GOOD, None)  # APTPL off
    assert prout(holder, RESERVE, K_HOLDER, type_=WE) == (GOOD, None)
    holder.close()
    b.stop()  # cleanly: its watch is gone
    os.kill(a.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
    a.proc.wait()  # type: ignore[union-attr]
    a.start()  # at once: the dead one's watch is still there
    other = login(a, OTHER)
    assert read_keys(other)[1] == [] and read_reservation(other) is None
    assert other.command(WRITE10, data=bytes(512))[0] == GOOD
    other.close()


def test_a_gateway_restarted_after_kill_9_drops_its_reserve_6_and_keeps_the_prs(
    gateways: tuple[Gateway, Gateway],
) -> None:
    """While B serves, a kill -9 of A is no power loss: the PRs stay. The RESERVE(6) of an
    I_T nexus through A is gone with it: B enforces it until A is back (or a LOGICAL UNIT
    RESET through B ends it)."""
    a, b = gateways
    holder, other = login(a, HOLDER), login(b, OTHER)
    assert prout(other, REGISTER, 0, K_OTHER) == (GOOD, None)
    assert holder.command(RESERVE6)[0] == GOOD
    os.kill(a.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
    a.proc.wait()  # type: ignore[union-attr]
    assert other.command(WRITE10, data=bytes(512))[0] == RESERVATION_CONFLICT
    a.start()
    assert read_keys(other)[1] == [K_OTHER]
    assert other.command(WRITE10, data=bytes(512))[0] == GOOD
    other.close()


def test_a_prout_after_a_takeover_waits_for_no_dead_gateways_watch(
    ceph_cluster: CephCluster, gateway_pair: PairFactory, new_image: ImageFactory
) -> None:
    """A killed with kill -9 leaves its watch of the reservation object behind until the OSDs
    expire it, and every PROUT through B waited NOTIFY_TIMEOUT (5 s) for it. B, taking A's
    image lock over (the cluster blocklisted A's image client), blocklists A's watch too:
    the next PROUT is answered at once. A restarted rejoins as a new client and sees it."""
    # The default watch timeout (30 s) here, so that the dead watch outlives the test: the
    # session's 5 s would let it expire on its own during the takeover.
    # (ceph.conf sets it: only a runtime setting overrides that.)
    ceph_cluster.ceph("tell", "osd.*", "config", "set", "osd_client_watch_timeout", "30")
    try:
        pair = gateway_pair(new_image("16M"), hold_ms=0, takeover_ms=1000, unit_attention=False)
        a, b = pair.a, pair.b
        holder, other = login(a, HOLDER), login(b, OTHER)
        assert holder.command(WRITE10, data=bytes(512))[0] == GOOD  # A holds the lock
        assert prout(other, REGISTER, 0, K_OTHER) == (GOOD, None)
        pair.kill(a)
        deadline = time.monotonic() + 15
        while other.command(WRITE10, data=bytes(512))[0] != GOOD:  # B takes the lock over
            assert time.monotonic() < deadline, "B did not take the lock over"
        pair.wait_log(b, "watch blocklisted")
        started = time.monotonic()
        assert prout(other, RESERVE, K_OTHER, type_=WE) == (GOOD, None)
        took = time.monotonic() - started
        # Before: 5 s (the notification's timeout), the dead watch living 30 s.
        assert took < 3.0, f"PROUT through B took {took:.1f}s"
        a.start()
        again = login(a, HOLDER)
        assert read_keys(again)[1] == [K_OTHER]
        assert read_reservation(again) == (K_OTHER, WE)
        assert again.command(WRITE10, data=bytes(512))[0] == RESERVATION_CONFLICT
        started = time.monotonic()
        assert prout(again, REGISTER, 0, K_HOLDER) == (GOOD, None)  # B answers A's notify
        assert time.monotonic() - started < 3.0
        assert read_keys(other)[1] == [K_OTHER, K_HOLDER]
        for ini in (other, again):
            ini.close()
    finally:
        ceph_cluster.ceph("tell", "osd.*", "config", "set", "osd_client_watch_timeout", "5")


@pytest.mark.parametrize("action", [PREEMPT, PREEMPT_AND_ABORT], ids=["preempt", "preempt-abort"])
def test_a_fenced_hosts_write_waiting_for_the_lock_never_lands(
    ceph_cluster: CephCluster,
    gateway_pair: PairFactory,
    new_image: ImageFactory,
    tmp_path: Path,
    action: int,
) -> None:
    """What fence_mpath (Pacemaker) and a failover cluster's arbitration rely on. The
    victim's write through A waits for the image's lock, which B keeps for its hold time
    after the fencer's write; meanwhile the fencer preempts the victim's registration
    through B. Once A gets the lock, the write must not run: PREEMPT answers it RESERVATION
    CONFLICT, PREEMPT AND ABORT aborts it (no answer; REGISTRATIONS PREEMPTED next). It
    used to run once the lock came, landing the fenced host's data after its fencing."""
    image = new_image("16M")
    # B keeps the lock 4 s after its last write, and A's write waits for it (up to
    # takeover_ms + 1 s): time enough for the PREEMPT on a loaded machine.
    pair = gateway_pair(image, hold_ms=4000, takeover_ms=6000, unit_attention=False)
    victim, fencer = login(pair.a, HOLDER), login(pair.b, OTHER)
    assert prout(victim, REGISTER, 0, K_HOLDER) == (GOOD, None)
    assert prout(fencer, REGISTER, 0, K_OTHER) == (GOOD, None)
    assert prout(fencer, RESERVE, K_OTHER, type_=WERO) == (GOOD, None)
    assert fencer.command(WRITE10, data=bytes(512))[0] == GOOD  # B holds the lock now
    held = time.monotonic()
    late = bytes([0x5A]) * 512
    write = bytes([0x2A, 0, 0, 0, 0, 8, 0, 0, 1, 0])  # LBA 8
    header = victim.scsi_header(write, write=512, data_len=512)
    victim.send(header, late)  # A asks B for the lock: B keeps it for its hold time
    time.sleep(0.3)
    assert prout(fencer, action, K_OTHER, K_HOLDER, type_=WERO) == (GOOD, None)
    assert time.monotonic() - held < 4.0, "the PREEMPT came after B gave the lock up"
    tur = victim.scsi_header(bytes(6))
    write_itt, tur_itt = bytes(header[16:20]), bytes(tur[16:20])
    victim.send(tur)
    answers = {}
    # The TUR is answered at once, the write (if at all) once A has the lock.
    wanted = {tur_itt, write_itt} if action == PREEMPT else {tur_itt}
    while not wanted <= answers.keys():
        resp = victim.recv()
        sense = resp.data[2 : 2 + int.from_bytes(resp.data[:2], "big")] if resp.data else b""
        answers[bytes(resp.bhs[16:20])] = (resp.bhs[3], parse_sense(sense) if sense else None)
    if action == PREEMPT:
        assert answers[write_itt] == (RESERVATION_CONFLICT, None), answers
    else:
        assert write_itt not in answers, answers  # aborted: never answered
    assert answers[tur_itt] == (CHECK_CONDITION, (6, 0x2A, 0x05))  # REGISTRATIONS PREEMPTED
    time.sleep(max(0.0, held + 5.0 - time.monotonic()))  # past B's hold: A has the lock
    assert victim.command(write, data=late)[0] == RESERVATION_CONFLICT
    assert fencer.command(bytes([0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0]), read=512)[1] == bytes(512)
    assert export_image(ceph_cluster, image, tmp_path / "export")[8 * 512 : 9 * 512] == bytes(512)
    victim.close()
    fencer.close()


LBA8_WRITE = bytes([0x2A, 0, 0, 0, 0, 8, 0, 0, 1, 0])
LATE = bytes([0x5A]) * 512


def _preempt_while_b_is_frozen(
    pair: GatewayPair, victim: RawInitiator, fencer: RawInitiator, type_: int
) -> tuple[float, int, tuple[int, int, int] | None]:
    """Freeze gateway B (SIGSTOP) with the victim's WRITE of LBA 8 queued in its socket,
    preempt the victim through A, wake B: how long the PREEMPT took (it must be GOOD), and
    the queued write's status and sense."""
    assert pair.b.proc is not None
    os.kill(pair.b.proc.pid, signal.SIGSTOP)
    try:
        victim.send(victim.scsi_header(LBA8_WRITE, write=512, data_len=512), LATE)
        started = time.monotonic()
        assert prout(fencer, PREEMPT, K_OTHER, K_HOLDER, type_=type_) == (GOOD, None)
        took = time.monotonic() - started
    finally:
        os.kill(pair.b.proc.pid, signal.SIGCONT)
    resp = victim.recv()
    sense = resp.data[2 : 2 + int.from_bytes(resp.data[:2], "big")] if resp.data else b""
    return took, resp.bhs[3], parse_sense(sense) if sense else None


def _refused_until_conflict(victim: RawInitiator) -> None:
    """Whatever the victim sends through B is refused, never GOOD, until B, rejoined with
    the record re-read, answers RESERVATION CONFLICT (within 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        status, _, sense = victim.command(LBA8_WRITE, data=LATE)
        assert status != GOOD
        if status == RESERVATION_CONFLICT:
            return
        assert time.monotonic() < deadline, parse_sense(sense)
        time.sleep(0.5)


def test_a_preempt_is_answered_only_once_a_frozen_gateway_can_serve_nothing_more(
    ceph_cluster: CephCluster, gateway_pair: PairFactory, new_image: ImageFactory, tmp_path: Path
) -> None:
    """What fence_mpath (Pacemaker) and a failover cluster's arbitration rely on: once a
    PREEMPT is answered, the preempted host can never write again. B holds the image's
    lock and is frozen (SIGSTOP) with the victim's write queued in its socket; the fencer
    preempts the victim through A. B cannot confirm the change, so A fences it (breaks its
    lock: the cluster blocklists it) before it answers, within the notification's 5 s and a
    blocklisting. B woken must not write a byte of the queued write. It used to: A answered
    after 5 s without fencing B, and B served the write on its old reservation copy."""
    image = new_image("16M")
    # No lock takeover could fence B here: A never asks for the lock, and would wait 60 s.
    pair = gateway_pair(image, hold_ms=60000, takeover_ms=60000, unit_attention=False)
    victim, fencer = login(pair.b, HOLDER), login(pair.a, OTHER)
    assert prout(victim, REGISTER, 0, K_HOLDER) == (GOOD, None)
    assert prout(fencer, REGISTER, 0, K_OTHER) == (GOOD, None)
    assert prout(victim, RESERVE, K_HOLDER, type_=WE) == (GOOD, None)
    first = bytes([0x11]) * 512
    assert victim.command(WRITE10, data=first)[0] == GOOD  # B holds the lock now
    took, status, sense = _preempt_while_b_is_frozen(pair, victim, fencer, WE)
    assert took < 12.0, f"the PREEMPT took {took:.1f}s"
    # The queued write: refused on the new copy, or failing in librbd (B's client is
    # blocklisted, ESHUTDOWN: NOT READY, transitioning); never GOOD.
    refused = {(RESERVATION_CONFLICT, None), (CHECK_CONDITION, (2, 0x04, 0x0A))}
    assert (status, sense) in refused
    # Whatever the victim sends through B from now on is refused too, and once B has
    # rejoined as new clients (image and reservation object) it answers RESERVATION
    # CONFLICT from the record it re-read.
    _refused_until_conflict(victim)
    assert export_image(ceph_cluster, image, tmp_path / "export")[: 9 * 512] == (
        first + bytes(7 * 512) + bytes(512)
    )
    fencer.clear_unit_attentions()
    assert fencer.command(bytes([0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0]), read=512)[1] == bytes(512)
    assert "did not confirm a change" in pair.a.stderr
    assert "gateway silent on a reservation change: breaking its lock" in pair.a.stderr
    victim.close()
    fencer.close()


def test_a_frozen_gateway_without_the_lock_rereads_the_reservations_when_it_takes_it(
    ceph_cluster: CephCluster, gateway_pair: PairFactory, new_image: ImageFactory, tmp_path: Path
) -> None:
    """As above, but A holds the image's lock: B, frozen with the victim's write queued,
    has its client of the reservation object blocklisted before the PREEMPT is answered
    (the OSDs dropped its watch during the notification, which then counted it neither
    acknowledged nor silent: the record names it, and that is what counts; before, the
    PREEMPT was answered with no notice of B at all) and there is no lock to break. Woken,
    B must take the lock for the write, and re-reads the reservations first: it fails to
    (blocklisted: LOGICAL UNIT COMMUNICATION FAILURE) or finds the victim preempted; the
    write never lands. (Here B also applies the notification it had queued before it gets
    the lock, so the old code refused the write too: the re-read is what holds when a
    frozen gateway never received the notification.)"""
    image = new_image("16M")
    # The lock follows the writes (hold 0): A gives it up to B at once when asked.
    pair = gateway_pair(image, hold_ms=0, takeover_ms=60000, unit_attention=False)
    victim, fencer = login(pair.b, HOLDER), login(pair.a, OTHER)
    assert prout(victim, REGISTER, 0, K_HOLDER) == (GOOD, None)
    assert prout(fencer, REGISTER, 0, K_OTHER) == (GOOD, None)
    assert prout(victim, RESERVE, K_HOLDER, type_=WERO) == (GOOD, None)
    assert fencer.command(WRITE10, data=bytes(512))[0] == GOOD  # A holds the lock now
    took, status, sense = _preempt_while_b_is_frozen(pair, victim, fencer, WERO)
    assert took < 12.0, f"the PREEMPT took {took:.1f}s"
    refused = {(RESERVATION_CONFLICT, None), (CHECK_CONDITION, (4, 0x08, 0x00))}
    assert (status, sense) in refused
    _refused_until_conflict(victim)
    assert export_image(ceph_cluster, image, tmp_path / "export")[8 * 512 : 9 * 512] == bytes(512)
    assert "did not confirm a change" in pair.a.stderr
    victim.close()
    fencer.close()
