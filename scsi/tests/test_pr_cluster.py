"""The cluster reservation store's logic (scsi/pr_cluster.py) on an in-memory object with
the RADOS object's semantics: compare-and-swap by version, notifications delivered on
another thread and acknowledged once handled. Two LUs with a store each are two gateways.
The real object against a real cluster: tests/ceph/test_rbd_reservations.py."""

from __future__ import annotations

import asyncio
import errno
import itertools
import threading
import time
from collections.abc import Callable

import pytest

from scsi.command import Nexus, ScsiCommand, ScsiResult, Status
from scsi.logical_unit import Identity
from scsi.pr_cluster import ClusterPrStore, parse, record_of
from scsi.sense import parse_sense
from scsi.tests.test_spc_reservations import TUR, WRITE, Unit

_ids = itertools.count(100)
REGISTER, RESERVE, PREEMPT, PREEMPT_AND_ABORT = 0x00, 0x01, 0x04, 0x05
WE, EA = 0x1, 0x3
# The same two initiators, one through each gateway's target port.
HA = Nexus("iqn.h,i,0x1", "iqn.t,t,0x0001", 1, "iqn.h")
OB = Nexus("iqn.o,i,0x1", "iqn.t,t,0x0002", 2, "iqn.o")
SB = Nexus("iqn.s,i,0x1", "iqn.t,t,0x0002", 2, "iqn.s")


class Cluster:
    """The object as the OSDs keep it, with its watchers."""

    def __init__(self) -> None:
        self.version = 0
        self.body = b""
        self.watchers: dict[int, Callable[[int, bytes], bytes]] = {}
        self.lock = threading.Lock()
        self.read_delay = 0.0
        self.refusal_delay = 0.0  # a refused compare-and-swap answers this much later
        self.down = False
        # Watches whose client died (kill -9): the OSDs keep them until they expire, and
        # they never answer a notification.
        self.dead: set[int] = set()
        self.blocklist: set[str] = set()  # client addresses
        self.on_error: dict[int, Callable[[int], None]] = {}


class MemoryObject:
    """One gateway's handle on the object (a rados client of its own)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.instance_id = next(_ids)
        self.name = f"mem/{self.instance_id}"
        self.address = f"127.0.0.1:0/{self.instance_id}"

    def _reach(self) -> None:
        if self.cluster.down:
            raise OSError(errno.ETIMEDOUT, "timed out")
        if self.address in self.cluster.blocklist:
            raise OSError(errno.ESHUTDOWN, "blocklisted")

    def blocklist(self, address: str) -> None:
        """The OSDs drop the client's watches (telling it, if it lives) and refuse it."""
        self._reach()
        self.cluster.blocklist.add(address)
        gid = int(address.rsplit("/", 1)[1])
        self.cluster.watchers.pop(gid, None)
        on_error = self.cluster.on_error.pop(gid, None)
        if on_error is not None and gid not in self.cluster.dead:
            threading.Thread(target=on_error, args=(errno.ENOTCONN,)).start()

    def unblocklist(self, address: str) -> None:
        self._reach()
        self.cluster.blocklist.discard(address)

    def read(self) -> tuple[int, bytes]:
        self._reach()
        with self.cluster.lock:
            got = self.cluster.version, self.cluster.body
        time.sleep(self.cluster.read_delay)
        return got

    def replace(self, expected: int, version: int, body: bytes) -> bool:
        self._reach()
        with self.cluster.lock:
            refused = self.cluster.version != expected
            if not refused:
                self.cluster.version, self.cluster.body = version, body
                return True
        time.sleep(self.cluster.refusal_delay)
        return False

    def notify(self, payload: bytes, timeout: float) -> tuple[int, int]:
        acked, silent = self.probe(payload, timeout)
        return len(acked), len(silent)

    def probe(self, payload: bytes, timeout: float) -> tuple[list[int], list[int]]:
        self._reach()
        acked, silent = [], []
        for gid, on_notify in list(self.cluster.watchers.items()):
            if gid in self.cluster.dead:
                silent.append(gid)
                continue
            # librados: on its own thread, acked on return
            worker = threading.Thread(target=on_notify, args=(self.instance_id, payload))
            worker.start()
            worker.join(timeout)
            acked.append(gid)
        return acked, silent

    def die(self) -> None:
        """kill -9: the watch stays (until the OSDs expire it) and never answers."""
        self.cluster.dead.add(self.instance_id)

    def watch(
        self, on_notify: Callable[[int, bytes], bytes], on_error: Callable[[int], None]
    ) -> None:
        self._reach()
        self.cluster.watchers[self.instance_id] = on_notify
        self.cluster.on_error[self.instance_id] = on_error

    def unwatch(self) -> None:
        self.cluster.watchers.pop(self.instance_id, None)

    def close(self) -> None:
        self.unwatch()


def gateway(cluster: Cluster, *nexuses: Nexus, ports: frozenset[int] = frozenset()) -> Unit:
    """A gateway serving ``nexuses``; ``ports``: its relative target ports (1 is A's)."""
    lu = Unit(Identity("pr"))
    for nexus in nexuses:
        lu.nexus_established(nexus)
        lu.pop_unit_attention(nexus)
    store = ClusterPrStore(MemoryObject(cluster), ports, lambda: MemoryObject(cluster))
    store.open(lu)
    lu.reservations.store = store
    return lu


def cmd(lu: Unit, nexus: Nexus, cdb: bytes, data: bytes | None = None):
    out = memoryview(data) if data is not None else None
    return lu.execute(ScsiCommand(cdb, 0, nexus, data_out=out))


def prout(lu, nexus, sa, key=0, sa_key=0, pr_type=0, aptpl=False):
    params = (
        key.to_bytes(8, "big") + sa_key.to_bytes(8, "big") + bytes([0, 0, 0, 0, aptpl, 0, 0, 0])
    )
    return cmd(lu, nexus, bytes([0x5F, sa, pr_type, 0, 0, 0, 0, 0, 24, 0]), params)


def keys_of(lu) -> list[int]:
    return list(lu.reservations.keys.values())


def sense(result: ScsiResult):
    return parse_sense(result.sense) if result.status == Status.CHECK_CONDITION else None


def test_a_change_through_one_gateway_is_enforced_on_the_other_before_it_is_answered() -> None:
    cluster = Cluster()

    async def scenario() -> None:
        a, b = gateway(cluster, HA), gateway(cluster, OB, SB)
        assert (await prout(a, HA, REGISTER, sa_key=0xA)).status == Status.GOOD
        assert (await prout(a, HA, RESERVE, key=0xA, pr_type=WE)).status == Status.GOOD
        # No command reached B: its copy was updated by the notification alone.
        assert b.reservations.reservation is not None and keys_of(b) == [0xA]
        assert (await cmd(b, SB, WRITE)).status == Status.RESERVATION_CONFLICT
        # A PREEMPT through B: A's nexus owes REGISTRATIONS PREEMPTED, raised on A.
        assert (await prout(b, OB, REGISTER, sa_key=0xB)).status == Status.GOOD
        assert (await prout(b, OB, PREEMPT, key=0xB, sa_key=0xA, pr_type=EA)).status == 0
        assert sense(await cmd(a, HA, TUR)) == (6, 0x2A, 0x05)
        assert (await cmd(a, HA, WRITE)).status == Status.RESERVATION_CONFLICT
        assert a.reservations.generation == b.reservations.generation == 3

    asyncio.run(scenario())


def test_two_gateways_reserving_at_once_one_wins_the_other_conflicts() -> None:
    cluster = Cluster()

    async def scenario() -> None:
        a, b = gateway(cluster, HA), gateway(cluster, OB)
        assert (await prout(a, HA, REGISTER, sa_key=0xA)).status == Status.GOOD
        assert (await prout(b, OB, REGISTER, sa_key=0xB)).status == Status.GOOD
        cluster.read_delay = 0.05  # both read the same version before either writes
        # The loser's refusal comes back after the winner's notification has been applied
        # on the loser's gateway: what the loser decides next must rest on the winner's state.
        cluster.refusal_delay = 0.2
        results = await asyncio.gather(
            prout(a, HA, RESERVE, key=0xA, pr_type=WE), prout(b, OB, RESERVE, key=0xB, pr_type=EA)
        )
        assert sorted(r.status for r in results) == [Status.GOOD, Status.RESERVATION_CONFLICT]
        record = parse(cluster.body)
        assert record is not None and record["seq"] == cluster.version == 4  # created, 3 changes
        assert a.reservations.reservation == b.reservations.reservation

    asyncio.run(scenario())


def test_the_cluster_out_of_reach_fails_the_command_and_changes_nothing() -> None:
    cluster = Cluster()

    async def scenario() -> None:
        a = gateway(cluster, HA)
        assert (await prout(a, HA, REGISTER, sa_key=0xA)).status == Status.GOOD
        cluster.down = True
        result = await prout(a, HA, RESERVE, key=0xA, pr_type=WE)
        assert sense(result) == (4, 0x08, 0x01)  # LOGICAL UNIT COMMUNICATION TIME-OUT
        assert a.reservations.reservation is None
        read_keys = bytes([0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0])
        assert sense(await cmd(a, HA, read_keys)) == (4, 0x08, 0x01)
        cluster.down = False
        assert (await prout(a, HA, RESERVE, key=0xA, pr_type=WE)).status == Status.GOOD

    asyncio.run(scenario())


def test_power_loss_is_no_gateway_serving_the_lu() -> None:
    async def scenario(aptpl: bool, other_serves: bool) -> list[int]:
        cluster = Cluster()
        a = gateway(cluster, HA)
        assert (await prout(a, HA, REGISTER, sa_key=0xA, aptpl=aptpl)).status == Status.GOOD
        if not other_serves:
            a.reservations.store.close()  # type: ignore[union-attr]
        return keys_of(gateway(cluster, OB))

    assert asyncio.run(scenario(aptpl=False, other_serves=True)) == [0xA]
    assert asyncio.run(scenario(aptpl=False, other_serves=False)) == []
    assert asyncio.run(scenario(aptpl=True, other_serves=False)) == [0xA]


def test_a_lost_notification_is_made_up_by_the_next_read() -> None:
    cluster = Cluster()

    async def scenario() -> None:
        a, b = gateway(cluster, HA), gateway(cluster, OB)
        assert (await prout(a, HA, REGISTER, sa_key=0xA)).status == Status.GOOD
        assert (await prout(b, OB, REGISTER, sa_key=0xB)).status == Status.GOOD
        b.reservations.store.obj.unwatch()  # type: ignore[union-attr]
        assert (await prout(a, HA, PREEMPT, key=0xA, sa_key=0xB, pr_type=WE)).status == 0
        assert keys_of(b) == [0xA, 0xB]  # B missed it ...
        read_keys = bytes([0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0])
        answer = await cmd(b, OB, read_keys)  # ... until it reads the record
        assert answer.status == Status.GOOD and bytes(answer.data or b"")[8:] == bytes(7) + b"\x0a"
        assert sense(await cmd(b, OB, TUR)) == (6, 0x2A, 0x05)

    asyncio.run(scenario())


def test_the_record_carries_the_state_and_what_the_change_owes() -> None:
    cluster = Cluster()
    lu = gateway(cluster, HA)
    record = parse(record_of(lu, 9, [], [HA]))
    assert record is not None and record["seq"] == 9 and not record["aptpl"]
    assert record["format"] == "targetd-persistent-reservations" and record["version"] == 1
    assert record["change"]["abort"] == [
        {"initiator_port": "iqn.h,i,0x1", "target_port": "iqn.t,t,0x0001",
         "relative_target_port": 1, "initiator_name": "iqn.h"}
    ]  # fmt: skip


def test_preempt_and_abort_ends_the_victim_s_commands_on_the_other_gateway_first() -> None:
    cluster = Cluster()

    async def scenario() -> None:
        a, b = gateway(cluster, HA), gateway(cluster, OB)
        aborted: list[frozenset[Nexus]] = []

        async def abort(nexuses: frozenset[Nexus]) -> None:
            await asyncio.sleep(0.05)  # the victim's commands take a moment to stop
            aborted.append(nexuses)

        b.abort_tasks = abort
        assert (await prout(b, OB, REGISTER, sa_key=0xB)).status == Status.GOOD
        assert (await prout(b, OB, RESERVE, key=0xB, pr_type=WE)).status == Status.GOOD
        assert (await prout(a, HA, REGISTER, sa_key=0xA)).status == Status.GOOD
        result = await prout(a, HA, PREEMPT_AND_ABORT, key=0xA, sa_key=0xB, pr_type=WE)
        assert result.status == Status.GOOD
        assert aborted == [frozenset({OB})]  # done before A answered
        assert sense(await cmd(b, OB, TUR)) == (6, 0x2A, 0x05)

    asyncio.run(scenario())


RESERVE6, RELEASE6 = bytes([0x16, 0, 0, 0, 0, 0]), bytes([0x17, 0, 0, 0, 0, 0])
A_PORTS, B_PORTS = frozenset({1}), frozenset({2})


def test_a_reserve_6_through_one_gateway_is_enforced_on_the_other_before_it_is_answered() -> None:
    cluster = Cluster()

    async def scenario() -> None:
        a, b = gateway(cluster, HA, ports=A_PORTS), gateway(cluster, OB, SB, ports=B_PORTS)
        assert (await cmd(a, HA, RESERVE6)).status == Status.GOOD
        assert b.reservations.legacy == HA  # by the notification alone
        assert (await cmd(b, SB, WRITE)).status == Status.RESERVATION_CONFLICT
        assert (await cmd(b, OB, RESERVE6)).status == Status.RESERVATION_CONFLICT
        assert (await cmd(b, OB, RELEASE6)).status == Status.GOOD  # not its own: no effect
        assert (await cmd(b, SB, WRITE)).status == Status.RESERVATION_CONFLICT
        assert (await cmd(a, HA, RELEASE6)).status == Status.GOOD
        assert b.reservations.legacy is None
        assert (await cmd(b, OB, RESERVE6)).status == Status.GOOD
        assert (await cmd(a, HA, WRITE)).status == Status.RESERVATION_CONFLICT
        # A PROUT through A meets it too (SPC-2 reservations shut out PR commands).
        assert (await prout(a, HA, REGISTER, sa_key=0xA)).status == Status.RESERVATION_CONFLICT

    asyncio.run(scenario())


def test_a_lost_nexus_or_a_reset_ends_a_reserve_6_on_every_gateway() -> None:
    cluster = Cluster()

    async def until(check: Callable[[], bool]) -> None:
        for _ in range(100):
            if check():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("not in time")

    async def scenario() -> None:
        a, b = gateway(cluster, HA, ports=A_PORTS), gateway(cluster, OB, SB, ports=B_PORTS)
        assert (await cmd(a, HA, RESERVE6)).status == Status.GOOD
        a.nexus_lost(HA)  # logged out: the reservation ends, on B once A has kept that
        await until(lambda: b.reservations.legacy is None)
        assert (await cmd(b, SB, WRITE)).status == Status.GOOD
        assert (await cmd(b, OB, RESERVE6)).status == Status.GOOD
        assert a.reservations.legacy == OB
        a.reset(None)  # a LOGICAL UNIT RESET through A ends B's nexus's reservation
        await until(lambda: b.reservations.legacy is None)
        assert parse(cluster.body)["legacy"] is None  # type: ignore[index]

    asyncio.run(scenario())


def test_two_gateways_reserve_6_at_once_one_wins() -> None:
    cluster = Cluster()

    async def scenario() -> None:
        a, b = gateway(cluster, HA, ports=A_PORTS), gateway(cluster, OB, ports=B_PORTS)
        cluster.read_delay = 0.05  # both read the same version before either writes
        cluster.refusal_delay = 0.2
        results = await asyncio.gather(cmd(a, HA, RESERVE6), cmd(b, OB, RESERVE6))
        assert sorted(r.status for r in results) == [Status.GOOD, Status.RESERVATION_CONFLICT]
        assert a.reservations.legacy == b.reservations.legacy is not None

    asyncio.run(scenario())


def test_a_gateway_restarted_after_kill_9_is_no_gateway_serving_the_lu() -> None:
    """Its dead predecessor's watch lives on (until the OSDs expire it) and never answers:
    a restart with no other gateway serving is a power cycle all the same. A dead *other*
    gateway is not known to be dead (it may be stalled) and still counts as serving."""

    async def scenario(dead_ports: frozenset[int]) -> tuple[list[int], Nexus | None]:
        cluster = Cluster()
        nexus = HA if dead_ports == A_PORTS else OB
        dead = gateway(cluster, nexus, ports=dead_ports)
        assert (await prout(dead, nexus, REGISTER, sa_key=0xA)).status == Status.GOOD
        assert (await cmd(dead, nexus, RESERVE6)).status == Status.GOOD
        dead.reservations.store.obj.die()  # type: ignore[union-attr]
        restarted = gateway(cluster, ports=A_PORTS)
        return keys_of(restarted), restarted.reservations.legacy

    assert asyncio.run(scenario(A_PORTS)) == ([], None)
    # B died; A starts: B's silent watch may be a stalled B. Its RESERVE(6) holds.
    assert asyncio.run(scenario(B_PORTS)) == ([0xA], OB)


def test_a_restarted_gateway_drops_the_reserve_6_of_its_previous_run() -> None:
    cluster = Cluster()

    async def scenario() -> None:
        a, b = gateway(cluster, HA, ports=A_PORTS), gateway(cluster, SB, ports=B_PORTS)
        assert (await prout(a, HA, REGISTER, sa_key=0xA)).status == Status.GOOD
        assert (await cmd(a, HA, RESERVE6)).status == Status.GOOD
        a.reservations.store.obj.die()  # type: ignore[union-attr]
        assert (await cmd(b, SB, WRITE)).status == Status.RESERVATION_CONFLICT
        # A again (its own process: B's loop runs meanwhile): HA's I_T nexus is gone.
        await asyncio.to_thread(gateway, cluster, ports=A_PORTS)
        assert b.reservations.legacy is None  # told before A serves
        assert keys_of(b) == [0xA]  # B serves: the PRs are kept
        assert (await cmd(b, SB, WRITE)).status == Status.GOOD

    asyncio.run(scenario())


def test_a_gateway_stopping_ends_the_reserve_6_held_through_it() -> None:
    cluster = Cluster()

    async def scenario() -> None:
        a, b = gateway(cluster, HA, ports=A_PORTS), gateway(cluster, SB, ports=B_PORTS)
        assert (await cmd(a, HA, RESERVE6)).status == Status.GOOD
        # SIGTERM: the store closes (blocking, at stop; B's loop runs meanwhile).
        await asyncio.to_thread(a.reservations.store.close)  # type: ignore[union-attr]
        await asyncio.sleep(0.05)  # B applies the notification on its loop
        assert b.reservations.legacy is None
        assert (await cmd(b, SB, WRITE)).status == Status.GOOD

    asyncio.run(scenario())


def test_a_gateway_stopping_while_it_forgets_a_lost_nexus_s_reserve_6_tells_the_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At SIGTERM the holder's connection closes first: the lost nexus's RESERVE(6) is
    being removed from the record in the background when the store closes. Cancelled with
    its record write landed and its notification not sent, B enforced the RESERVE(6) on
    until some PROUT through B read the record (seen in the Ceph tier: a write through B
    after A's stop met RESERVATION CONFLICT)."""
    monkeypatch.setattr("scsi.pr_cluster.PROBE_TIMEOUT", 0.2)  # B answers on this loop
    cluster = Cluster()

    async def scenario() -> None:
        a, b = gateway(cluster, HA, ports=A_PORTS), gateway(cluster, SB, ports=B_PORTS)
        assert (await cmd(a, HA, RESERVE6)).status == Status.GOOD
        obj = store_of(a).obj
        write = obj.replace

        def slow_write(expected: int, version: int, body: bytes) -> bool:
            kept = write(expected, version, body)  # landed; its caller is cancelled now
            time.sleep(1.0)
            return kept

        obj.replace = slow_write  # type: ignore[method-assign]
        a.nexus_lost(HA)  # the connection closed: the RESERVE(6) is being forgotten
        for _ in range(500):  # until its write landed (its caller still waits on it)
            if parse(cluster.body)["legacy"] is None:  # type: ignore[index]
                break
            await asyncio.sleep(0.01)
        assert b.reservations.legacy == HA  # not told yet
        store_of(a).close()  # the daemon closes its LUs on its loop
        await asyncio.sleep(0.05)  # B applies the notification on its loop
        assert b.reservations.legacy is None
        assert (await cmd(b, SB, WRITE)).status == Status.GOOD

    asyncio.run(scenario())


def store_of(lu: Unit) -> ClusterPrStore:
    store = lu.reservations.store
    assert isinstance(store, ClusterPrStore)
    return store


def test_a_fenced_gateways_silent_watch_is_blocklisted_but_a_restarted_one_is_not() -> None:
    """After B broke A's image lock (A was silent for the takeover time), B blocklists A's
    watch of the reservation object, so no notification waits for the dead watch; a watch
    that answers is A restarted as a new client, and stays."""
    cluster = Cluster()

    async def scenario() -> None:
        a = gateway(cluster, HA, ports=frozenset({1}))
        b = gateway(cluster, OB, ports=frozenset({2}))
        dead = store_of(a).obj
        assert isinstance(dead, MemoryObject)
        dead.die()
        await store_of(b).fence_peer("1")
        assert cluster.blocklist == {dead.address}
        assert dead.instance_id not in cluster.watchers
        assert store_of(b).peers_fenced == 1
        # A restarted (a new client, named in the record); B breaks the dead run's lock only
        # now: the live watch answers and is kept.
        again = gateway(cluster, HA, ports=frozenset({1}))
        await store_of(b).fence_peer("1")
        assert cluster.blocklist == {dead.address}
        assert store_of(again).obj.instance_id in cluster.watchers
        assert (await prout(again, HA, REGISTER, sa_key=0xA)).status == Status.GOOD
        assert keys_of(b) == [0xA]

    asyncio.run(scenario())


def test_a_blocklisted_gateway_that_lives_rejoins_as_a_new_client() -> None:
    """A gateway stalled long enough to be fenced wakes up blocklisted: it opens a new
    client, names it in the record, drops its old blocklist entry and follows changes."""
    cluster = Cluster()

    async def scenario() -> None:
        a = gateway(cluster, HA, ports=frozenset({1}))
        b = gateway(cluster, OB, ports=frozenset({2}))
        old = store_of(a).obj
        cluster.dead.add(old.instance_id)  # stalled: its watch does not answer
        await store_of(b).fence_peer("1")
        assert cluster.blocklist == {old.address}
        cluster.dead.discard(old.instance_id)  # it wakes up, fenced
        result = await prout(a, HA, REGISTER, sa_key=0xA)
        assert sense(result) == (4, 0x08, 0x00)  # LOGICAL UNIT COMMUNICATION FAILURE
        deadline = time.monotonic() + 5
        while store_of(a).obj is old or cluster.blocklist:
            assert time.monotonic() < deadline, "not rejoined"
            await asyncio.sleep(0.01)
        new = store_of(a).obj
        while new.instance_id not in cluster.watchers:
            assert time.monotonic() < deadline, "not watching again"
            await asyncio.sleep(0.01)
        record = parse(cluster.body)
        assert record is not None and record["gateways"]["1"] == new.instance_id
        assert record["addresses"]["1"] == new.address
        assert (await prout(b, OB, REGISTER, sa_key=0xB)).status == Status.GOOD
        assert keys_of(a) == [0xB]  # told by B's notification
        assert (await prout(a, HA, REGISTER, sa_key=0xA)).status == Status.GOOD
        assert sorted(keys_of(b)) == [0xA, 0xB]

    asyncio.run(scenario())


def test_a_change_the_other_gateway_does_not_confirm_is_answered_once_it_is_fenced() -> None:
    """B frozen (its watch silent): a PREEMPT through A blocklists B's client of the
    record and has the image's lock holder fenced (``on_silent``) before it is answered;
    if that fencing fails, the PREEMPT is not answered GOOD. A gateway stopped cleanly
    leaves the record and is not fenced by the next change."""
    cluster = Cluster()

    async def scenario() -> None:
        a = gateway(cluster, HA, ports=frozenset({1}))
        b = gateway(cluster, OB, ports=frozenset({2}))
        fenced_holders: list[str] = []

        async def fence_holder() -> None:
            fenced_holders.append("b")

        store_of(a).on_silent = fence_holder
        assert (await prout(b, OB, REGISTER, sa_key=0xB)).status == Status.GOOD
        assert (await prout(a, HA, REGISTER, sa_key=0xA)).status == Status.GOOD
        assert fenced_holders == [] and cluster.blocklist == set()
        frozen = store_of(b).obj
        cluster.dead.add(frozen.instance_id)
        assert (await prout(a, HA, PREEMPT, key=0xA, sa_key=0xB, pr_type=WE)).status == 0
        assert cluster.blocklist == {frozen.address}
        assert fenced_holders == ["b"]
        # Fenced once: the next change does not wait for (nor fence) it again.
        assert (await prout(a, HA, REGISTER, key=0xA, sa_key=0xA1)).status == Status.GOOD
        assert fenced_holders == ["b"]

        # A gateway whose holder cannot be fenced: the change is kept, not answered GOOD.
        c = gateway(cluster, OB, ports=frozenset({2}))  # B restarted, a new client

        async def unreachable() -> None:
            raise OSError(errno.ETIMEDOUT, "timed out")

        store_of(a).on_silent = unreachable
        cluster.dead.add(store_of(c).obj.instance_id)
        result = await prout(a, HA, REGISTER, key=0xA1, sa_key=0xA2)
        assert sense(result) == (4, 0x08, 0x01)  # LOGICAL UNIT COMMUNICATION TIME-OUT

        # Stopped cleanly (SIGTERM): no longer in the record, not fenced.
        d = gateway(cluster, OB, ports=frozenset({2}))
        store_of(a).on_silent = fence_holder
        await asyncio.to_thread(store_of(d).close)
        blocklist = set(cluster.blocklist)
        assert (await prout(a, HA, REGISTER, key=0xA2, sa_key=0xA3)).status == Status.GOOD
        assert cluster.blocklist == blocklist and fenced_holders == ["b"]

    asyncio.run(scenario())
