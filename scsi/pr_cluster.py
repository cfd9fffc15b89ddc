"""An RBD LU's persistent reservations, kept in the Ceph cluster and shared by every gateway
that exports the image (docs/rbd.md, "Persistent reservations").

The whole state (registrations, reservation, PRgeneration, APTPL) is one JSON record in
one RADOS object beside the image, with a sequence number. A gateway decides each
PERSISTENT RESERVE OUT on the latest record (read first), writes the new record only if
the object still holds the sequence it read (compare-and-swap; if another gateway came
first, the command is decided again on the newer record), and then notifies the other
gateways' watches with the new record, the unit attentions the change owes and the
registrants whose commands PREEMPT AND ABORT ends. Each watcher applies that to its own
copy (the one the I/O path checks, with no round-trip per command) and raises the unit
attentions for its own nexuses before it acknowledges, so a reservation acknowledged
through one gateway is already enforced through the others. A PERSISTENT RESERVE IN reads
the latest record too.

The record holds the RESERVE(6) reservation too (SPC-2 reservations are not persistent,
but a host with a path through each gateway must meet it on both): RESERVE and RELEASE
(6)/(10) are decided and kept like a PROUT, and one whose I_T nexus is lost, or that a
reset ends, is removed from the record by the gateway that saw it go.

What "power loss" means here: the LU loses power when no gateway serves it. A gateway that
starts while another still serves the image (its watch answers) takes the state as it is;
one that starts alone treats it as a power cycle: without APTPL the registrations and the
reservation are cleared (SPC-4 5.13.5), with APTPL they are kept, and a RESERVE(6) is
cleared either way. Each gateway writes the client id of its own watch into the record
when it starts (``gateways``, by its relative target ports), so a gateway restarted after
kill -9 knows its dead predecessor's watch, which the OSDs keep for up to
``osd_client_watch_timeout``, and does not count it as a gateway serving the LU. A
RESERVE(6) held through this gateway's own ports is cleared when it starts: those I_T
nexuses are gone.

A gateway that does not acknowledge a change within ``NOTIFY_TIMEOUT`` (frozen, or its
watch dropped) is fenced before the change is answered: its client of this object is
blocklisted and, if another client holds the image's lock, that lock is broken (the
cluster blocklists the holder), so nothing it had queued runs on its old copy after the
answer (:meth:`ClusterPrStore._fence_unconfirmed`); a gateway re-reads the record before
its first write with the lock just taken (:meth:`ClusterPrStore.reread`).

A dead gateway's watch would hold every notification up for ``NOTIFY_TIMEOUT`` until the
OSDs expire it: the gateway that takes its image lock over (which fences it) blocklists its
client of this object too, if that watch is silent (:meth:`ClusterPrStore.fence_peer`, the
``addresses`` of the record). A gateway blocklisted so and alive opens a new client and
rejoins, as its image does.

The object is anything with :class:`VersionedObject`'s blocking calls (backing's
``RadosObject``); they run in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from scsi.command import Nexus, ScsiResult
from scsi.pr_file import decode_into, encode, nexus_record
from scsi.pr_keep import PROUT_ATTEMPTS, keep
from scsi.reservations import Owed
from scsi.sense import CheckCondition, Reason
from scsi.watch_fence import PROBE, fence_previous_run, fence_watch, naming

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from scsi.logical_unit import LogicalUnit

log = logging.getLogger("targetd.reservations")

FORMAT = "targetd-persistent-reservations"
# How long a writer waits for the other gateways to apply a change before it answers.
NOTIFY_TIMEOUT = 5.0
# How often a gateway not watching just now is told a change again, within NOTIFY_TIMEOUT.
REASK = 0.05
# How long a starting gateway waits for others to answer "are you serving this LU?".
PROBE_TIMEOUT = 2.0
# How often a lost nexus's RESERVE(6) is tried to be removed from an unreachable record.
FORGET_ATTEMPTS = 10


class VersionedObject(Protocol):
    name: str
    instance_id: int
    address: str

    def blocklist(self, address: str) -> None: ...
    def unblocklist(self, address: str) -> None: ...
    def read(self) -> tuple[int, bytes]: ...
    def replace(self, expected: int, version: int, body: bytes) -> bool: ...
    def notify(self, payload: bytes, timeout: float) -> tuple[int, int]: ...
    def probe(self, payload: bytes, timeout: float) -> tuple[list[int], list[int]]: ...
    def watch(
        self, on_notify: Callable[[int, bytes], bytes | None], on_error: Callable[[int], None]
    ) -> None: ...
    def unwatch(self) -> None: ...
    def close(self) -> None: ...


def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` from its loop's thread or from another (a close at stop runs on a
    worker thread: a task is cancelled on its own loop)."""
    try:
        here = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    loop = task.get_loop()
    if here is loop:
        task.cancel()
    elif not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            loop.call_soon_threadsafe(task.cancel)


def gateway_key(ports: frozenset[int] | tuple[int, ...]) -> str:
    """How the record names a gateway: its relative target ports."""
    return ",".join(str(p) for p in sorted(ports))


def unreachable(err: OSError) -> CheckCondition:
    """The sense a PERSISTENT RESERVE command gets when the cluster cannot be reached:
    HARDWARE ERROR, LOGICAL UNIT COMMUNICATION TIME-OUT (08h/01h) after the store's timeout,
    LOGICAL UNIT COMMUNICATION FAILURE (08h/00h) for any other refusal."""
    if err.errno == errno.ETIMEDOUT:
        return CheckCondition(Reason.LOGICAL_UNIT_COMMUNICATION_TIMEOUT)
    return CheckCondition(Reason.LOGICAL_UNIT_COMMUNICATION_FAILURE)


def record_of(
    lu: LogicalUnit,
    seq: int,
    owed: list[Owed],
    aborts: list[Nexus],
    gateways: dict[str, int] | None = None,
    addresses: dict[str, str] | None = None,
) -> bytes:
    state = lu.reservations
    record = encode(state)
    record.update(
        format=FORMAT,
        seq=seq,
        aptpl=state.aptpl,
        legacy=None if state.legacy is None else nexus_record(state.legacy),
        gateways=gateways or {},
        addresses=addresses or {},
        change={
            "owed": [
                {
                    "registrant": nexus_record(o.registrant),
                    "reason": o.reason.name,
                    "sender": None if o.sender is None else nexus_record(o.sender),
                }
                for o in owed
            ],
            "abort": [nexus_record(n) for n in aborts],
        },
    )
    return dump(record)


def dump(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True).encode()


def parse(body: bytes) -> dict[str, Any] | None:
    """The record in ``body`` (None for an empty object); ValueError if it is not one."""
    if not body:
        return None
    record = json.loads(body)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError("not a targetd reservation record")
    return record


def change_of(record: dict[str, Any]) -> tuple[list[Owed], list[Nexus]]:
    change = record.get("change") or {}
    owed = [
        Owed(
            Nexus(**o["registrant"]),
            Reason[o["reason"]],
            None if o["sender"] is None else Nexus(**o["sender"]),
        )
        for o in change.get("owed", [])
    ]
    return owed, [Nexus(**n) for n in change.get("abort", [])]


class ClusterPrStore:
    """A :class:`scsi.reservations.PrStore` in a RADOS object, for one LU.

    ``ports`` are this gateway's relative target ports: they name it in the record's
    ``gateways`` (which client id its watch had) and tell its own RESERVE(6)s apart."""

    persistent = True
    shared = True

    def __init__(
        self,
        obj: VersionedObject,
        ports: frozenset[int] = frozenset(),
        reopen: Callable[[], VersionedObject] | None = None,
    ) -> None:
        self.obj = obj
        self.ports = ports
        self.me = gateway_key(ports)
        # A new client for the object, once the cluster blocklisted this one (fenced).
        self.reopen = reopen
        self.gateways: dict[str, int] = {}  # gateway (its ports) -> its watch's client id
        self.addresses: dict[str, str] = {}  # gateway (its ports) -> that client's address
        self.peers_fenced = 0  # dead peers' watches this gateway blocklisted (tests, logs)
        # Clients of other gateways this one blocklisted for a change they did not confirm:
        # not waited for again (a gateway that rejoins names a new client in the record).
        self.fenced_addresses: set[str] = set()
        self.seq = 0  # the newest record this gateway has loaded (reads and notifications)
        # The record a PROUT's decision rests on: its compare-and-swap expects exactly this
        # one, whatever a notification applied meanwhile.
        self.base = 0
        # A refused compare-and-swap: the in-memory state was put back to what the decision
        # started from, so the next refresh loads the record even at a seq already seen.
        self.stale = False
        self.lu: LogicalUnit | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._rewatch: asyncio.Task[None] | None = None
        # Fences the image's lock holder, if it is another gateway, when a gateway left a
        # change unconfirmed (targetd/gateway.py, ``LockGate.fence_silent_holder``).
        self.on_silent: Callable[[], Awaitable[None]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- at start (blocking, like opening the image) ---------------------------------
    def open(self, lu: LogicalUnit) -> bool:
        """Load the state into ``lu`` and watch for changes; True if a state was kept.
        Without APTPL, a state no other gateway serves is a power-cycled LU's: cleared."""
        self.lu = lu
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        # This gateway's killed run's watch would hold the probe below: fenced if proved dead.
        fence_previous_run(self.obj, self.me, self.obj.address, parse)
        for _ in range(PROUT_ATTEMPTS):
            seq, body = self.obj.read()
            record = parse(body) or json.loads(record_of(lu, seq, [], []))
            started, tell = self._started(record)
            if seq and started is None:
                break
            started = dict(started or record, seq=seq + 1)
            if self.obj.replace(seq, seq + 1, dump(started)):
                seq, record = seq + 1, started
                if tell:  # a gateway still serving holds the old record
                    self.obj.notify(dump(started), PROBE_TIMEOUT)
                break
            # another gateway changed it meanwhile: decide again on its record
        else:
            raise OSError(errno.EAGAIN, f"{self.obj.name} kept changing while starting")
        self.seq = self.base = seq
        self._load(record)
        self.obj.watch(self._notified, self._lost)
        return bool(record["registrations"] or record["reservation"])

    def _started(self, record: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
        """The record as this gateway starting leaves it (None: as it is): its previous
        run's RESERVE(6) gone, and, if no other gateway serves the LU (a power cycle), any
        RESERVE(6) and the non-APTPL state; and whether a gateway still serving must be
        told of the change."""
        new = dict(record, change={})
        legacy = record.get("legacy")
        pr = bool(record["registrations"] or record["reservation"])
        aptpl = bool(record.get("aptpl"))
        mine = legacy is not None and legacy["relative_target_port"] in self.ports
        serving = True  # unknown: as if another gateway served it
        if (pr and not aptpl) or (legacy is not None and not mine):
            # Is anyone serving it? Its watch answers. A watch that does not answer is a
            # gateway that is stalled, or dead and not yet expired by the OSDs: it counts as
            # serving, unless it is this gateway's own previous run (which is not running).
            acked, silent = self.obj.probe(PROBE, PROBE_TIMEOUT)
            previous = record.get("gateways", {}).get(self.me) if self.me else None
            serving = bool(acked or [g for g in silent if g != previous])
        if not serving and (legacy is not None or (pr and not aptpl)):
            log.info("%s: no gateway serves the LU: RESERVE(6)%s cleared", self.obj.name,
                     "" if aptpl else " and reservations")  # fmt: skip
            new["legacy"] = None
            if pr and not aptpl:
                new.update(registrations=[], reservation=None)
                new["generation"] = record["generation"] + 1
        elif mine:
            log.info("%s: the RESERVE(6) of this gateway's previous run cleared", self.obj.name)
            new["legacy"] = None
        if self.me and record.get("gateways", {}).get(self.me) != self.obj.instance_id:
            new["gateways"] = {**record.get("gateways", {}), self.me: self.obj.instance_id}
        if self.me and record.get("addresses", {}).get(self.me) != self.obj.address:
            new["addresses"] = {**record.get("addresses", {}), self.me: self.obj.address}
        changed = {k: v for k, v in new.items() if k != "change"} != {
            k: v for k, v in record.items() if k != "change"
        }
        return (new if changed else None), serving and new.get("legacy") != legacy

    def _load(self, record: dict[str, Any]) -> None:
        assert self.lu is not None
        state = self.lu.reservations
        decode_into(state, record)
        state.aptpl = bool(record.get("aptpl"))
        legacy = record.get("legacy")
        state.legacy = None if legacy is None else Nexus(**legacy)
        self.gateways = dict(record.get("gateways") or {})
        self.addresses = dict(record.get("addresses") or {})

    # -- PrStore ------------------------------------------------------------------------
    async def refresh(self, lu: LogicalUnit) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            seq, body = await asyncio.to_thread(self.obj.read)
            record = parse(body)
        except OSError as err:
            log.error("%s: reservations not read: %s", self.obj.name, err)
            self._check_fenced(err)
            raise unreachable(err) from None
        except ValueError as err:
            log.error("%s: reservations unreadable: %s", self.obj.name, err)
            raise CheckCondition(Reason.LOGICAL_UNIT_COMMUNICATION_FAILURE) from None
        if (seq != self.seq or self.stale) and record is not None:
            missed_one = seq == self.seq + 1
            self.seq = seq
            self.stale = False
            self._load(record)
            if missed_one:  # its notification is late or lost: owe what it owed here
                owed, aborts = change_of(record)
                lu.reservations.deliver(lu, owed)
                if aborts and lu.abort_tasks is not None:
                    await lu.abort_tasks(lu.reservations.nexuses_of(lu, aborts))
        self.base = seq

    async def commit(
        self, lu: LogicalUnit, aptpl_before: bool, owed: list[Owed], aborts: list[Nexus]
    ) -> bool:
        expected = self.base
        seq = expected + 1
        body = record_of(lu, seq, owed, aborts, self.gateways, self.addresses)
        try:
            kept = await asyncio.to_thread(self.obj.replace, expected, seq, body)
        except OSError as err:
            self.stale = True  # the caller puts the state back: reload it before deciding
            log.error("%s: reservations not written: %s", self.obj.name, err)
            self._check_fenced(err)
            raise unreachable(err) from None
        if not kept:
            # Another gateway wrote first. Its notification may already have been applied
            # here, and the caller now restores the state this decision started from: the
            # next refresh must load the record, not trust a seq it has seen.
            self.stale = True
            return False
        # (A notification of a still newer record may have been applied meanwhile.)
        self.seq, self.base = max(self.seq, seq), seq
        try:
            unconfirmed = await self._tell(body)
        except OSError as err:  # kept all the same: the others read it before deciding
            log.warning("%s: other gateways not told of a change: %s", self.obj.name, err)
            return True
        if unconfirmed:
            log.warning("%s: gateway(s) %s did not confirm a change in %gs: fencing them",
                        self.obj.name, ", ".join(unconfirmed), NOTIFY_TIMEOUT)  # fmt: skip
            try:
                await self._fence_unconfirmed(unconfirmed)
            except OSError as err:
                # The change is written, but a gateway that may still serve the old state
                # is not fenced: the command must not be answered GOOD.
                self.stale = True
                log.error("%s: a gateway that did not confirm a change is not fenced: %s",
                          self.obj.name, err)  # fmt: skip
                raise unreachable(err) from None
        return True

    async def _tell(self, body: bytes) -> dict[str, str]:
        """Notify the watchers of the new record; the gateways the record names (other
        than this one, and than those this gateway fenced before) whose client did not
        acknowledge it within ``NOTIFY_TIMEOUT``, by gateway key -> client address.

        The record is the list of gateways, not the notification's own count of silent
        watchers: a frozen gateway's watch may have been dropped by the OSDs before or
        during the notification, and is then counted neither acknowledged nor silent. One
        that is not watching just now (a live gateway watching again after a late ping)
        is told again every ``REASK`` seconds within the same time."""
        expected = {
            key: client
            for key, client in self.gateways.items()
            if key != self.me and self.addresses.get(key) not in self.fenced_addresses
        }
        deadline = time.monotonic() + NOTIFY_TIMEOUT
        while True:
            left = max(deadline - time.monotonic(), 0.001)
            acked, silent = await asyncio.to_thread(self.obj.probe, body, left)
            expected = {k: c for k, c in expected.items() if c not in acked}
            if not expected:
                return {}
            if any(c in silent for c in expected.values()) or time.monotonic() >= deadline:
                return {key: self.addresses.get(key, "") for key in expected}
            await asyncio.sleep(min(REASK, max(deadline - time.monotonic(), 0.0)))

    async def _fence_unconfirmed(self, unconfirmed: dict[str, str]) -> None:
        """Gateways ``unconfirmed`` did not apply a change in time: one frozen (SIGSTOP, a
        paused VM, a partition) with a preempted host's command queued would serve it on
        its old copy when it runs again, after the change was answered. Blocklist the
        client the record names for it, so it cannot read the record again without
        rejoining as a new client (it re-reads the record before its first write after it
        takes the image's lock), and have the image's lock broken if someone other than
        this gateway holds it (``on_silent``: its queued writes then fail)."""
        for key, address in unconfirmed.items():
            if address:
                await asyncio.to_thread(self.obj.blocklist, address)
                self.fenced_addresses.add(address)
                self.peers_fenced += 1
                log.warning("%s: gateway %s did not confirm a change: its client %s "
                            "blocklisted", self.obj.name, key, address)  # fmt: skip
        if self.on_silent is not None:
            await self.on_silent()

    async def reread(self) -> None:
        """Load the latest record before this gateway writes again (it just took the
        image's lock): a change it missed while frozen must not let a write through on the
        old copy. CheckCondition if the record cannot be read (this client fenced: it
        rejoins meanwhile)."""
        lu = self.lu
        assert lu is not None
        async with lu.reservations.lock:
            await self.refresh(lu)

    async def fence_peer(self, peer: str) -> None:
        """The gateway ``peer`` (its ports) is fenced: the other gateway broke its image
        lock after it had left requests unanswered for the whole takeover time, and the
        cluster blocklisted its image client. Its client of this object has a watch of its
        own, which the OSDs keep for ``osd_client_watch_timeout`` after a kill -9, and every
        notification waits ``NOTIFY_TIMEOUT`` for it until then: blocklist that client too.
        Only if its watch is silent now: one that answers is the gateway restarted
        meanwhile, as a new client, and is left alone."""
        try:
            fenced = await asyncio.to_thread(fence_watch, self.obj, peer, parse)
        except (OSError, ValueError) as err:
            log.warning("%s: the fenced gateway's watch not blocklisted: %s", self.obj.name, err)
            return
        self.peers_fenced += int(fenced)
        if fenced and self.addresses.get(peer):  # not waited for by this gateway's changes
            self.fenced_addresses.add(self.addresses[peer])

    def forget(self, holder: Nexus) -> None:
        """``holder``'s RESERVE(6) ended here (its nexus is gone, or a reset): remove it
        from the record, in the background; the other gateways enforce it until then."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving (tests of the SCSI layer alone)
            return
        self.stale = True  # the record still has it: load it before deciding
        task = loop.create_task(self._forget(holder))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forget(self, holder: Nexus) -> None:
        lu = self.lu
        assert lu is not None

        async def decide() -> ScsiResult:
            if lu.reservations.legacy == holder:
                lu.reservations.legacy = None
            return ScsiResult()

        for _ in range(FORGET_ATTEMPTS):
            try:
                await keep(lu, decide)
                return
            except CheckCondition:
                await asyncio.sleep(1.0)
        log.error("%s: a lost I_T nexus's RESERVE(6) is still in the record (a LOGICAL UNIT "
                  "RESET or a restart of this gateway ends it)", self.obj.name)  # fmt: skip

    def close(self) -> None:
        # A lost nexus's RESERVE(6) being forgotten (at stop, its connection just closed):
        # cancelled, its record write may still land, on its thread, and its notification
        # never go. The record is then told once more below.
        forgetting = bool(self._tasks)
        for task in [*self._tasks, *([self._rewatch] if self._rewatch is not None else [])]:
            _cancel(task)
        try:  # a RESERVE(6) through this gateway ends with its nexuses (blocking: at stop)
            self._drop_own_legacy(forgetting)
        except (OSError, ValueError) as err:
            log.warning("%s: RESERVE(6) of this gateway not cleared: %s", self.obj.name, err)
        self.obj.close()

    def _drop_own_legacy(self, tell: bool = False) -> None:
        """Remove a RESERVE(6) held through this gateway's ports, and this gateway's
        client, from the record and tell the others (a gateway stopped cleanly is not
        waited for, nor fenced, by their next change); with ``tell``, tell them the record
        even when there is nothing to remove (a change of this gateway's may have been
        written and not told)."""
        if not self.ports:
            return
        for _ in range(PROUT_ATTEMPTS):
            seq, body = self.obj.read()
            record = parse(body)
            if record is None:
                return
            new = dict(record)
            legacy = record.get("legacy")
            if legacy is not None and legacy["relative_target_port"] in self.ports:
                new["legacy"] = None
            if (record.get("gateways") or {}).get(self.me) == self.obj.instance_id:
                new["gateways"] = {k: v for k, v in record["gateways"].items() if k != self.me}
                new["addresses"] = {
                    k: v for k, v in (record.get("addresses") or {}).items() if k != self.me
                }
            if new == record:
                if tell:
                    self.obj.notify(body, PROBE_TIMEOUT)
                return
            new.update(change={}, seq=seq + 1)
            if self.obj.replace(seq, seq + 1, dump(new)):
                self.obj.notify(dump(new), PROBE_TIMEOUT)
                return

    # -- notifications (on a librados thread) --------------------------------------------
    def _notified(self, notifier: int, payload: bytes) -> bytes | None:
        if notifier == self.obj.instance_id or payload == PROBE or self.loop is None:
            return b""
        applied = threading.Event()
        try:
            self.loop.call_soon_threadsafe(self._start_apply, payload, applied)
        except RuntimeError:  # the loop has closed: the daemon is stopping
            return b""
        # Not applied in time (this gateway's loop stalled): no acknowledgement, so the
        # writer counts this gateway silent and fences it rather than trusting a copy that
        # may still be the old one.
        return b"" if applied.wait(NOTIFY_TIMEOUT) else None

    def _start_apply(self, payload: bytes, applied: threading.Event) -> None:
        task = asyncio.ensure_future(self._apply(payload))
        task.add_done_callback(lambda _t: applied.set())

    async def _apply(self, payload: bytes) -> None:
        lu = self.lu
        if lu is None:
            return
        try:
            record = parse(payload)
        except ValueError as err:
            log.error("%s: notification unreadable: %s", self.obj.name, err)
            return
        if record is None or record["seq"] <= self.seq:
            return
        self.seq = record["seq"]
        self._load(record)
        owed, aborts = change_of(record)
        lu.reservations.deliver(lu, owed)
        if aborts and lu.abort_tasks is not None:
            await lu.abort_tasks(lu.reservations.nexuses_of(lu, aborts))

    def _lost(self, err: int) -> None:
        """The watch broke (the cluster was out of reach): watch again, then re-read."""
        log.warning(
            "%s: watch lost (%s); re-establishing", self.obj.name, errno.errorcode.get(err, err)
        )
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._start_rewatch)

    def _check_fenced(self, err: OSError) -> None:
        """A call failed: if the cluster blocklisted this client, rejoin as a new one."""
        if err.errno == errno.ESHUTDOWN and self.reopen is not None:
            self._start_rewatch()

    def _start_rewatch(self) -> None:
        if self._rewatch is None or self._rewatch.done():
            self._rewatch = asyncio.ensure_future(self._watch_again())

    async def _watch_again(self) -> None:
        lu = self.lu
        assert lu is not None
        reopened = False
        while True:
            try:
                await asyncio.to_thread(self.obj.unwatch)
                await asyncio.to_thread(self.obj.watch, self._notified, self._lost)
                if reopened:  # the record names this gateway's new client
                    await asyncio.to_thread(self._record_client)
                async with lu.reservations.lock:
                    await self.refresh(lu)
                log.info("%s: watching again", self.obj.name)
                return
            except OSError as err:
                if err.errno == errno.ESHUTDOWN and self.reopen is not None:
                    # Blocklisted: the other gateway fenced this one (docs/alua.md).
                    reopened = await self._reconnect() or reopened
                    continue
                log.warning("%s: still out of reach: %s", self.obj.name, err)
                await asyncio.sleep(1.0)
            except CheckCondition as err:
                log.warning("%s: still out of reach: %s", self.obj.name, err)
                await asyncio.sleep(1.0)

    async def _reconnect(self) -> bool:
        """Replace this gateway's blocklisted client by a new one; whether it was."""
        assert self.reopen is not None
        old = self.obj
        try:
            new = await asyncio.to_thread(self.reopen)
        except OSError as err:
            log.warning("%s: no new client: %s", old.name, err)
            await asyncio.sleep(1.0)
            return False
        self.obj = new
        await asyncio.to_thread(old.close)
        try:  # the old client is shut down: its entry only piles up in the osdmap
            await asyncio.to_thread(new.unblocklist, old.address)
        except OSError as err:
            log.info("%s: blocklist entry %s kept: %s", new.name, old.address, err)
        log.warning("%s: this gateway's client was blocklisted: rejoining as client %s",
                    new.name, new.instance_id)  # fmt: skip
        return True

    def _record_client(self) -> None:
        """Name this gateway's (new) client in the record (blocking)."""
        if not self.me:
            return
        for _ in range(PROUT_ATTEMPTS):
            seq, body = self.obj.read()
            record = parse(body)
            if record is None:
                return
            named = naming(record, self.me, self.obj.instance_id, self.obj.address)
            if named is None:
                return
            new = dict(named, change={}, seq=seq + 1)
            if self.obj.replace(seq, seq + 1, dump(new)):
                return
