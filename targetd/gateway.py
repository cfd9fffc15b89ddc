"""Two gateways, one RBD image: ALUA states that follow RBD's exclusive lock (docs/rbd.md).

Each LU of a gateway has a :class:`LockGate`. The gateway that holds the image's lock is
active/optimized, the other active/non-optimized; both serve reads (the cluster has every
acknowledged write: librbd's cache is off on gateways) and only the holder writes.

A command that needs the lock (``scsi.alua.needs_ownership``) arriving at the gateway
that does not hold it asks the holder over the image's message object
(backing/rbd_notify.py):

- the holder gives the lock up when it has seen no I/O for ``hold_ms`` (and nothing is in
  flight), and otherwise answers "busy, ask again in N ms", so a path that flaps between
  gateways moves the lock at most once per hold time, not on every command;
- a holder that has just taken the lock for waiting commands answers "busy" until one of
  them is admitted (0.2 s at most), or the lock could move back before any of them ran;
- a holder that does not answer within ``takeover_ms`` is dead or frozen: the asker breaks
  its lock (``rbd_lock_break`` blocklists it in the cluster first) and takes it;
- when the lock is not had in time the command gets NOT READY, ASYMMETRIC ACCESS STATE
  TRANSITION (04h/0Ah), which initiators retry.

Taking the lock rereads the image's allocation (the other gateway wrote) and raises
ASYMMETRIC ACCESS STATE CHANGED (2Ah/06h) on the LU's nexuses; so does giving it up.
A gateway whose writes fail with ESHUTDOWN was blocklisted: it answers transitioning,
reopens the image as a new client, removes its old address from the blocklist and comes
back as the non-optimized path.

The policy (:class:`HoldPolicy`, :func:`states`) is plain functions of time and counters;
:class:`LockGate` is the asyncio shell around librbd and the message object.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from backing.errors import StoreError
from backing.rbd_image import RbdImage
from backing.rbd_notify import ChannelFence, GatewayChannel, Message, Reply
from backing.threads import outlast
from scsi.alua import STATE_NAMES, AccessState, PortGroup, PortGroups, needs_ownership
from scsi.command import Nexus
from scsi.logical_unit import LogicalUnit
from scsi.sense import CheckCondition, Reason
from scsi.watch_fence import fence_watch
from targetd import logs, stack_dump
from targetd.config import Config
from targetd.metrics import Family

log = logging.getLogger("targetd.gateway")

_STATE_NAMES = {state: name for name, state in STATE_NAMES.items()}
# The shortest "ask again" a holder gives: a lock request is a few ms of cluster round trips.
MIN_WAIT = 0.005
# How long a broadcast (acquired, released, reset) waits for the other gateway.
BROADCAST_TIMEOUT = 1.0
# After giving the lock up on request, how long this gateway leaves a free lock to the
# asker rather than racing it for the lock (its own commands then ask for it back).
YIELD_GRACE = 0.5
# Errors of a client the cluster blocklisted (EBLOCKLISTED is ESHUTDOWN), or whose watch
# it dropped for that reason.
FENCED_ERRNOS = frozenset({errno.ESHUTDOWN})
# A gateway that has just taken the lock while commands waited for it says "busy" to the
# other's request until one of them is admitted, for this long at most (they wake in a few
# loop turns: only a stalled event loop makes them slower, and it must not keep the lock).
FIRST_ADMIT_BOUND = 0.2


@dataclass(frozen=True, slots=True)
class HoldPolicy:
    """When the holder gives the lock to the gateway that asks for it."""

    hold: float  # seconds

    def answer(self, now: float, last_io: float, in_flight: int) -> float:
        """0 to give the lock up now (after what is in flight has ended), else how long the
        asker should wait first. With no hold time the lock follows every request: the
        holder stops admitting commands and drains, or a path that always has a command in
        flight would keep the lock for as long as its stream lasts."""
        if not self.hold:
            return 0.0
        if in_flight:
            return self.hold
        idle = now - last_io
        if idle >= self.hold:
            return 0.0
        return max(self.hold - idle, MIN_WAIT)


@dataclass(slots=True)
class Silence:
    """How long the lock holder has left this gateway's requests unanswered.

    A notify comes back after ``takeover`` when the holder watches and does not answer, but
    at once when it is not watching at all: a live holder whose watch the OSD dropped
    (ENOTCONN: a ping late on a loaded host) is without one until it watches again, a few
    ms later. Either way the holder is fenced only once it has been silent for the whole
    takeover time, counted from the first request it left unanswered."""

    takeover: float
    holder: str = ""
    since: float | None = None

    def unanswered(self, holder: str, asked_at: float, now: float) -> bool:
        """A request sent at ``asked_at`` got no answer from ``holder``: whether the
        holder has now been silent long enough to be fenced."""
        if self.since is None or holder != self.holder:
            self.holder, self.since = holder, asked_at
        return now - self.since >= self.takeover

    def answered(self) -> None:
        self.since = None


# How long an asker waits before asking again a holder that was not watching.
REASK = 0.05
# How long a gateway that runs a pair tells the other's pair to wait before asking again.
PAIR_WAIT = 1.0


def states(*, holding: bool, peer_holds: bool, fenced: bool) -> tuple[AccessState, AccessState]:
    """(this gateway's group, the peer's group). Standby is never used: the Linux initiator
    and libiscsi's tools fail on a standby path's TEST UNIT READY instead of using it."""
    if fenced:
        own = AccessState.TRANSITIONING
    else:
        own = AccessState.ACTIVE_OPTIMIZED if holding else AccessState.ACTIVE_NON_OPTIMIZED
    peer = (
        AccessState.ACTIVE_OPTIMIZED
        if peer_holds and not holding
        else AccessState.ACTIVE_NON_OPTIMIZED
    )
    return own, peer


class NotAvailable(Exception):
    """The lock could not be had in time: the command is answered transitioning."""


class Kept(NotAvailable):
    """The holder keeps the lock for a pair running there: the pair asking gives up; a
    write that waited for the same try asks again for itself."""


# After a try to take the lock failed (an error, or a holder keeping it for its pair) while
# commands still wait: the pause before the next try, doubled after each failure up to
# RETRY_MAX, so that waiting commands never spin on the cluster.
RETRY_FIRST = 0.05
RETRY_MAX = 0.5


@dataclass(frozen=True, slots=True)
class Layout:
    """The two groups' ids and relative target ports, from the configuration."""

    own_group: int
    own_ports: tuple[int, ...]
    peer_group: int
    peer_ports: tuple[int, ...]

    @classmethod
    def of(cls, config: Config) -> Layout:
        assert config.gateway is not None
        return cls(
            own_group=config.portals[0].port_group,
            own_ports=tuple(sorted({p.tpgt for p in config.portals})),
            peer_group=config.gateway.peer_group,
            peer_ports=tuple(sorted({p.tpgt for p in config.gateway.peers})),
        )


class LockGate:
    """One LU's side of the lock: admits its commands, answers the peer, follows fencing."""

    def __init__(
        self,
        lu: LogicalUnit,
        image: RbdImage,
        layout: Layout,
        *,
        hold_ms: int,
        takeover_ms: int,
        unit_attention: bool = True,
        name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lu = lu
        self.image = image
        self.layout = layout
        self.policy = HoldPolicy(hold_ms / 1000)
        self.takeover = takeover_ms / 1000
        self.silence = Silence(self.takeover)
        self.unit_attention = unit_attention
        self.name = name
        self.clock = clock
        self.holding = False
        self.peer_holds = False
        self.is_fenced = False
        # While fenced: why this gateway is not back yet (``targetctl status``).
        self.recovery = ""
        self.last_io = float("-inf")
        self.in_flight = 0
        self._drained = asyncio.Event()  # set whenever nothing is in flight
        self._drained.set()
        self._yielded = float("-inf")  # when this gateway last gave the lock up on request
        self.acquisitions = 0  # lock moves to this gateway (metrics, tests)
        # Commands that needed the lock admitted since this gateway last took it (logs: a
        # lock given up with none admitted moved for nothing).
        self.admitted_holding = 0
        self._waiters = 0  # commands (and pair takes) waiting in :meth:`_hold` now
        self._taken_at = float("-inf")  # when this gateway last took the lock (its try ended)
        self.breaks = 0  # takeovers from a silent holder
        self._transition: asyncio.Task[None] | None = None
        self._transition_what = ""  # "acquire" or "release" (logs)
        self._transition_since = 0.0
        # The latest bound of the commands that wait for the lock: a try to take it runs
        # until then at most. Each command lengthens it to its own as it starts waiting,
        # so that a try, whoever started it, is never given up before a waiter's bound.
        self._waiting_until = float("-inf")
        self._retry_at = float("-inf")  # no try to take the lock before (after a failure)
        self._retry_pause = 0.0
        self._last_end = self.clock()  # when a command last left (stall warnings)
        self._stall_warned = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False  # from :meth:`stop` on: no watch is renewed
        # One change of the watch or the image at a time (they share the io context).
        self._channel_lock = asyncio.Lock()
        # Volume pairs (backing/pairs/shared.py): ``on_acquired`` runs the image's pairs
        # here once the lock is taken, before a write is admitted; ``on_release`` stops them
        # before it is given up (or once fenced); ``keeps(why)`` says no to the other
        # gateway while a pair running here needs the lock (``why``: "pair" when the other
        # gateway's pair asks, not a host write).
        self.on_acquired: Callable[[], Awaitable[None]] | None = None
        self.on_release: Callable[[], Awaitable[None]] | None = None
        self.keeps: Callable[[str], bool] | None = None
        # Before a write here takes the lock: a pair's target brings its pair here first.
        self.before_acquire: Callable[[], Awaitable[None]] | None = None
        # After this gateway broke the other's lock (the cluster blocklisted its image
        # client): fence the other's watches of the shared objects of every LU (luns.py).
        self.on_peer_fenced: Callable[[], Awaitable[None]] | None = None
        # Before this gateway admits a write with the lock just taken: re-read the LU's
        # reservations (a change it missed while frozen must not let a write through).
        self.after_acquire: Callable[[], Awaitable[None]] | None = None
        self.groups = PortGroups(self._groups())
        image.allocation_known = False  # until this gateway holds the lock
        lu.port_groups = self.groups
        lu.access_gate = self
        lu.after_reset = self.reset_peers
        self.channel = GatewayChannel(image, self._on_message, self._on_watch_error,
                                      str(layout.own_group))  # fmt: skip
        self._loop = asyncio.get_running_loop()
        self.channel.start(self._loop)
        self._spawn(self._learn_owner())
        # Not one of ``_tasks``: a recovery waits for those to end, and this never does.
        self._watchdog = self._loop.create_task(self._watch_stalls())

    # -- ALUA ------------------------------------------------------------------------
    def _groups(self) -> list[PortGroup]:
        own, peer = states(holding=self.holding, peer_holds=self.peer_holds, fenced=self.is_fenced)
        layout = self.layout
        groups = [
            PortGroup(layout.own_group, own, layout.own_ports),
            PortGroup(layout.peer_group, peer, layout.peer_ports),
        ]
        return sorted(groups, key=lambda g: g.id)

    def _update(self) -> None:
        self.image.allocation_known = self.holding
        if self.groups.update(self._groups()) and (self.unit_attention or self.is_fenced):
            self.lu.raise_unit_attention(Reason.ASYMMETRIC_ACCESS_STATE_CHANGED)

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _learn_owner(self) -> None:
        try:
            owners = await self.image.lock_owners()
        except OSError:
            return
        self.holding = bool(owners) and owners[0] == self.image.address
        self.peer_holds = bool(owners) and not self.holding
        self._update()

    # -- the LU's commands (scsi.alua.AccessGate) --------------------------------------
    async def enter(self, nexus: Nexus, cdb: bytes) -> bool:
        if self.is_fenced:
            raise CheckCondition(Reason.LU_NOT_ACCESSIBLE_TRANSITIONING)
        if not needs_ownership(cdb):
            if self.holding:
                self.last_io = self.clock()
            self._admit()  # counted too: a reopen waits for every request to end
            return True
        # A silent holder is fenced after takeover_ms; a live, busy one keeps the lock and
        # the command is refused (transitioning) for the initiator to retry.
        if not self.holding and self.before_acquire is not None:
            await self.before_acquire()
        try:
            await self._hold(self.clock() + self.takeover + 1.0)
        except NotAvailable as exc:
            raise CheckCondition(Reason.LU_NOT_ACCESSIBLE_TRANSITIONING) from exc
        self._admit()
        self.admitted_holding += 1
        self.last_io = self.clock()
        return True

    def _admit(self) -> None:
        self.in_flight += 1
        self._drained.clear()

    def leave(self, entered: bool) -> None:
        if entered:
            self.in_flight -= 1
            self.last_io = self._last_end = self.clock()
            if not self.in_flight:
                self._drained.set()

    @staticmethod
    def is_fencing_error(error: BaseException) -> bool:
        """Whether a store's ``error`` says this gateway's client was blocklisted."""
        return isinstance(error, OSError) and error.errno in FENCED_ERRNOS

    def fenced(self, error: StoreError) -> bool:
        if error.errno in FENCED_ERRNOS:
            self._fence("a write failed: this gateway's client is blocklisted")
            return True
        return False

    async def take(self, why: str) -> bool:
        """Take the lock here as a write would, with no command (a pair that runs where the
        lock is: ``why`` goes to the holder); whether this gateway holds it now."""
        try:
            await self._hold(self.clock() + self.takeover + 1.0, why)
        except (NotAvailable, CheckCondition):
            return False
        return True

    async def _hold(self, deadline: float, why: str = "") -> None:
        """Until this gateway holds the lock with no transition running; NotAvailable once
        ``deadline`` (this waiter's own) has passed, or when fenced. The waiters share one
        try to take the lock at a time, which runs until the latest of their deadlines; one
        that ends without the lock before this waiter's deadline (an error, a holder keeping
        it for its pair) is followed by another, after a pause (:meth:`_acquire`)."""
        self._waiting_until = max(self._waiting_until, deadline)
        self._waiters += 1
        try:
            while not (self.holding and self._transition is None):
                if self.is_fenced or self.clock() >= deadline:
                    raise NotAvailable
                transition = self._transition
                if transition is None:
                    transition = self._start(self._acquire(why), "acquire")
                try:
                    await self._await_transition(transition, deadline)
                except asyncio.CancelledError:
                    if _stopped(transition):  # the gateway stops: not taken
                        raise NotAvailable from None
                    raise
                except Kept:
                    if why == "pair":
                        raise
                except OSError:
                    pass  # logged once by the try (:meth:`_transition_done`); next try
        finally:
            self._waiters -= 1

    async def _await_transition(self, transition: asyncio.Task[None], deadline: float) -> None:
        """Wait for ``transition`` (taking or giving up the lock) until ``deadline`` at most:
        NotAvailable past it. A librbd or RADOS call of the transition that never returns
        must not leave the command waiting forever; the transition runs on, and later
        commands wait for it (each as long) while it does."""
        remaining = deadline - self.clock()
        try:
            await asyncio.wait_for(asyncio.shield(transition), max(remaining, 0.0))
        except TimeoutError:
            if transition.done():  # ended just as the wait did: its outcome counts
                transition.result()
                return
            # A try to take the lock that later commands wait for too runs on past this
            # one's bound; one that has run that long itself is what a hung call looks like.
            stuck = self.clock() - self._transition_since >= self.takeover + 1.0
            log.log(
                logging.WARNING if stuck else logging.DEBUG,
                "command waited for the lock past takeover_ms + 1 s: answered transitioning",
                extra=logs.fields(
                    lu=self.name,
                    transition=self._transition_what,
                    running=round(self.clock() - self._transition_since, 3),
                ),
            )
            raise NotAvailable from None

    def _start(self, coro: Awaitable[None], what: str) -> asyncio.Task[None]:
        """Make ``coro`` the LU's one transition (``what``: "acquire" or "release")."""
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        task.add_done_callback(self._transition_done)
        self._transition = task
        self._transition_what = what
        self._transition_since = self.clock()
        return task

    async def _watch_stalls(self) -> None:
        """Warn (once per stall) when commands admitted here have not ended for
        ``takeover_ms`` + 1 s, none of them, or a transition of the lock has run that long:
        what a hung librbd call looks like from here, named in the log rather than left to
        an initiator's timeout."""
        bound = self.takeover + 1.0
        while True:
            await asyncio.sleep(min(1.0, bound / 2))
            now = self.clock()
            transition = self._transition
            stalled = bool(self.in_flight) and now - self._last_end >= bound
            stuck = transition is not None and now - self._transition_since >= bound
            if not (stalled or stuck):
                self._stall_warned = False
                continue
            if self._stall_warned:
                continue
            self._stall_warned = True
            log.warning(
                "commands or lock transition stalled",
                extra=logs.fields(
                    lu=self.name,
                    in_flight=self.in_flight,
                    since_a_command_ended=round(now - self._last_end, 3),
                    holding=self.holding,
                    transition=self._transition_what if transition is not None else "",
                    transition_running=(
                        round(now - self._transition_since, 3) if transition is not None else 0
                    ),
                ),
            )
            # Which call hangs: a worker thread's stack names the librbd or RADOS call, the
            # tasks where each command or transition waits.
            stack_dump.dump(sys.stderr)

    def _transition_done(self, task: asyncio.Task[None]) -> None:
        what = ""
        if self._transition is task:
            what, self._transition = self._transition_what, None
        if task.cancelled() or what != "acquire":
            if not task.cancelled():
                task.exception()  # retrieved: the waiters saw it
            return
        error = task.exception()
        if error is None or (isinstance(error, NotAvailable) and not isinstance(error, Kept)):
            self._retry_pause = 0.0  # taken, or not in time: no waiter asks again at once
            return
        if isinstance(error, OSError):
            log.warning("lock not taken", extra=logs.fields(lu=self.name, error=str(error)))
        self._retry_pause = min(max(2 * self._retry_pause, RETRY_FIRST), RETRY_MAX)
        self._retry_at = self.clock() + self._retry_pause

    # -- taking the lock ---------------------------------------------------------------
    async def _acquire(self, why: str = "") -> None:
        image = self.image
        pause = self._retry_at - self.clock()
        if pause > 0:  # the last try failed at once: not another straight away
            await self._wait(pause)
        while True:
            owners = await image.lock_owners()
            if not owners and self.clock() - self._yielded < YIELD_GRACE:
                # Just given to the asker, which is taking it: ask it back once it has.
                await self._wait(0.01)
                continue
            if not owners:
                try:
                    await image.acquire_lock()
                except OSError as exc:
                    if exc.errno in FENCED_ERRNOS:
                        self._fence("taking the lock failed: blocklisted")
                        raise NotAvailable from exc
                    if exc.errno not in (errno.EROFS, errno.EBUSY, errno.EAGAIN):
                        raise
                    await self._wait(0.01)  # the peer took it first
                    continue
                await self._became_holder()
                return
            holder = owners[0]
            if holder == image.address:
                await self._became_holder()
                return
            self._yielded = float("-inf")  # the asker has it: the grace is over
            asked_at = self.clock()
            result = await self.channel.notify(
                {"op": "request", "from": image.address, "holder": holder, "for": why},
                self.takeover,
            )
            answer = next((r for r in result.replies if r.get("addr") == holder), None)
            log.debug(
                "lock requested",
                extra=logs.fields(lu=self.name, holder=holder, answer=answer,
                                  took=round(self.clock() - asked_at, 3)),
            )  # fmt: skip
            if answer is None and not self.silence.unanswered(holder, asked_at, self.clock()):
                await self._wait(REASK)  # not watching just now: ask again
                continue
            if answer is None:
                self.silence.answered()
                log.warning(
                    "lock holder silent: breaking its lock (the cluster blocklists it)",
                    extra=logs.fields(lu=self.name, holder=holder, waited=self.takeover),
                )
                try:
                    await image.break_lock(holder)
                except OSError as exc:  # it went away meanwhile: look again
                    if exc.errno in FENCED_ERRNOS:
                        self._fence("breaking the lock failed: blocklisted")
                        raise NotAvailable from exc
                else:
                    if self.on_peer_fenced is not None:  # its other clients' watches too
                        self._spawn(self.on_peer_fenced())
                self.breaks += 1
                continue
            self.silence.answered()
            if why == "pair" and answer.get("keeps"):  # alive and running the pair: no more
                raise Kept
            if answer.get("answer") == "released":
                continue
            if answer.get("answer") == "releasing":  # the lock is free once it drained
                await self._wait(MIN_WAIT)
                continue
            await self._wait(float(answer.get("wait", MIN_WAIT)))

    async def fence_peer(self) -> None:
        """The other gateway is proved dead (this gateway broke its lock of some LU's
        image, and the cluster blocklisted that image client): blocklist its client of
        this LU's image too, if its watch of the gateway object is silent now (one that
        answers is the gateway restarted meanwhile). Its watch of the image header would
        otherwise outlive it until the OSDs expire it (``osd_client_watch_timeout``, 30 s
        by default), and librbd's notifications of the image wait for it: this gateway's
        close, releasing the lock, waited 5 s per notification (10 s an image)."""
        peer = str(self.layout.peer_group)

        def fence() -> bool:
            return fence_watch(ChannelFence(self.channel, peer), peer, _record)

        try:
            await self.image.run_blocking(fence, what="fencing the other gateway's client")
        except (OSError, ValueError) as err:
            log.warning("the fenced gateway's image client not blocklisted",
                        extra=logs.fields(lu=self.name, error=str(err)))  # fmt: skip

    async def fence_silent_holder(self) -> None:
        """The other gateway left a reservation change unconfirmed (scsi/pr_cluster.py),
        and the change is not answered before it is fenced: if it holds the image's lock,
        break it, as a takeover does (the cluster blocklists its image client first), so
        that no write it had queued reaches the image. One that does not hold the lock must
        take it to write, and re-reads the reservations first (:meth:`_became_holder`)."""
        for _ in range(3):
            owners = await self.image.lock_owners()
            if not owners or owners[0] == self.image.address:
                return
            holder = owners[0]
            log.warning(
                "gateway silent on a reservation change: breaking its lock (the cluster "
                "blocklists it)",
                extra=logs.fields(lu=self.name, holder=holder),
            )
            try:
                await self.image.break_lock(holder)
            except OSError as exc:
                if exc.errno in FENCED_ERRNOS:
                    self._fence("breaking the lock failed: blocklisted")
                    raise
                if exc.errno not in (errno.ENOENT, errno.EBUSY, errno.EAGAIN):
                    raise
                continue  # it moved meanwhile: look again
            self.breaks += 1
            self.peer_holds = False
            self._update()
            if self.on_peer_fenced is not None:  # its other clients' watches too
                self._spawn(self.on_peer_fenced())
            return
        raise OSError(errno.EAGAIN, "the image's lock kept moving while fencing its holder")

    async def _wait(self, seconds: float) -> None:
        if self.clock() + seconds > self._waiting_until:
            # Once per transition, not per command: the commands waiting for it all end.
            log.info(
                "lock not had in time: the commands waiting for it answered transitioning",
                extra=logs.fields(lu=self.name, waiting=self.takeover + 1.0),
            )
            raise NotAvailable
        await asyncio.sleep(seconds)

    async def _became_holder(self) -> None:
        # The reservations first: this gateway may have missed a change while it was
        # frozen, and a write admitted on the old copy would land after the change was
        # answered. Not holding until then: a failed read leaves the lock to a later try.
        if self.after_acquire is not None:
            try:
                await self.after_acquire()
            except CheckCondition:
                # Not left holding a lock this gateway does not use: the other would ask
                # for it in vain until its own commands give up.
                with contextlib.suppress(OSError):
                    await self.image.release_lock()
                raise
        # The other gateway wrote: what this one knows of the allocation is stale.
        await self.image.reload_allocation()
        self.holding = True
        self.peer_holds = False
        self.last_io = self.clock()
        self.acquisitions += 1
        self.admitted_holding = 0
        log.info("lock taken", extra=logs.fields(lu=self.name, moves=self.acquisitions))
        self._update()
        self._spawn(self._broadcast({"op": "acquired"}))
        if self.on_acquired is not None:  # still in the transition: no write admitted yet
            try:
                await self.on_acquired()
            except Exception:
                log.exception("pairs not run here", extra=logs.fields(lu=self.name))
        self._taken_at = self.clock()

    def _first_admit_pending(self) -> bool:
        """Whether the lock, just taken, has commands waiting for it of which none has been
        admitted yet: they wake a few loop turns after the try that took it ended, and a
        request answered in between would give the lock up for nothing (and under load, ping
        -pong it with neither side writing). Bounded by FIRST_ADMIT_BOUND, so that a waiter
        that does not get to run cannot make this gateway keep the lock."""
        return (
            self._waiters > 0
            and self.admitted_holding == 0
            and self.clock() - self._taken_at < FIRST_ADMIT_BOUND
        )

    async def _broadcast(self, message: Message) -> None:
        try:
            await self.channel.notify({**message, "from": self.image.address}, BROADCAST_TIMEOUT)
        except OSError as exc:
            log.debug("broadcast failed: %s", exc)

    async def reset_peers(self) -> None:
        """A LOGICAL UNIT RESET here: the other gateway's nexuses get the unit attention
        too, before the reset is answered."""
        await self._broadcast({"op": "reset"})

    # -- the other gateway's messages --------------------------------------------------
    def _on_message(self, message: Message, reply: Reply) -> None:
        op = message.get("op")
        me = self.image.address
        if op == "request":
            log.debug(
                "lock request received",
                extra=logs.fields(lu=self.name, holding=self.holding, transition=(
                    self._transition_what if self._transition is not None else ""),
                    in_flight=self.in_flight, admitted=self.admitted_holding,
                    waiting=self._waiters),
            )  # fmt: skip
            if not self.holding or self._transition is not None or self.is_fenced:
                reply({"addr": me, "answer": "busy", "wait": MIN_WAIT})
                return
            if self.keeps is not None and self.keeps(str(message.get("for", ""))):
                reply({"addr": me, "answer": "busy", "wait": PAIR_WAIT, "keeps": True})
                return
            wait = self.policy.answer(self.clock(), self.last_io, self.in_flight)
            if not wait and self._first_admit_pending():
                wait = MIN_WAIT  # as while transitioning: its waiters are about to run
            if wait:
                reply({"addr": me, "answer": "busy", "wait": wait})
                return
            # Answered now, not once released: the answer is the asker's liveness signal,
            # and draining and librbd's release can take longer than takeover_ms on a
            # loaded host. A live holder must never look silent and be fenced.
            self._start(self._release(), "release")
            reply({"addr": me, "answer": "releasing"})
            return
        if op == "acquired" and not self.holding:
            self.peer_holds = True
            self._update()
        elif op == "reset":
            self.lu.reset(None)
        reply({})

    async def _release(self) -> None:
        # New commands that need the lock wait for this transition; those in flight end.
        # Reads are still admitted meanwhile: past takeover_ms of them, release anyway
        # (librbd lets the writes still in flight end before it lets go).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), self.takeover)
        await self._hand_over()
        try:
            await self.image.release_lock()
        except OSError as exc:
            if exc.errno in FENCED_ERRNOS:
                self._fence("releasing the lock failed: blocklisted")
            else:
                log.warning("lock not given up", extra=logs.fields(lu=self.name, error=str(exc)))
                if self.on_acquired is not None:  # still the holder: its pairs run here again
                    await self.on_acquired()
            return
        self.holding = False
        self.peer_holds = True
        self._yielded = self.clock()
        log.info("lock given up", extra=logs.fields(lu=self.name, admitted=self.admitted_holding))
        self._update()

    # -- fencing -----------------------------------------------------------------------
    def _on_watch_error(self, err: int) -> None:
        if not self.is_fenced and not self._stopping:
            self._spawn(self._rewatch(err))

    async def _rewatch(self, err: int) -> None:
        loop = self._loop
        log.warning("gateway watch lost", extra=logs.fields(lu=self.name, error=err))
        retry = False
        async with self._channel_lock:
            if self.is_fenced or self._stopping:  # the recovery watches again; or no more
                return
            await outlast(loop.run_in_executor(None, self.channel.stop))
            try:
                await outlast(loop.run_in_executor(None, self.channel.start, loop))
            except OSError as exc:
                if exc.errno in FENCED_ERRNOS:
                    self._fence("the cluster blocklisted this gateway")
                else:
                    log.debug("gateway watch not renewed: %s", exc)
                    retry = True
            else:
                log.info("gateway watching again", extra=logs.fields(lu=self.name))
        if retry and not self._stopping:
            await asyncio.sleep(1.0)
            self._on_watch_error(-errno.ENOTCONN)

    def _fence(self, why: str) -> None:
        if self.is_fenced:
            return
        log.warning("fenced", extra=logs.fields(lu=self.name, reason=why))
        self.is_fenced = True
        self.recovery = f"fenced ({why}): reopening the image"
        self.holding = False
        self.peer_holds = True
        self._update()
        self._spawn(self._hand_over())  # the recovery waits for it before it reopens
        self._spawn(self._recover())

    async def _hand_over(self) -> None:
        if self.on_release is not None:
            try:
                await self.on_release()
            except Exception:
                log.exception("pairs not handed over", extra=logs.fields(lu=self.name))

    async def _recover(self) -> None:
        """Reopen the image as a new client and come back as the non-optimized path."""
        loop = self._loop
        old = self.image.address
        while self.in_flight:  # a blocklisted client's requests fail at once
            await asyncio.sleep(0.01)
        # Nothing else may be using the image or its io context when they are replaced.
        # Past this bound the reopen goes ahead, but the image's reopen itself waits for
        # every librbd call still running on the old handle and refuses new ones
        # (ESHUTDOWN) meanwhile: nothing of the old handle is touched after it. Each try
        # waits ``reopen_wait`` (10 s) at most, then fails naming the calls that hang, and
        # the LU stays fenced (NOT READY, transitioning) until a later try reopens.
        busy = {t for t in self._tasks if t is not asyncio.current_task()}
        if self._transition is not None:
            busy.add(self._transition)
        if busy:
            await asyncio.wait(busy, timeout=self.takeover + BROADCAST_TIMEOUT + 1.0)
        async with self._channel_lock:
            await outlast(loop.run_in_executor(None, self.channel.stop))
            while True:
                try:
                    await self.image.reopen()
                    await outlast(loop.run_in_executor(None, self.channel.start, loop))
                    break
                except OSError as exc:
                    log.warning("reopen failed", extra=logs.fields(lu=self.name, error=str(exc)))
                    self.recovery = f"reopen failed, tried again every second: {exc}"
                    await asyncio.sleep(1.0)
        try:  # the old client is shut down: its entry only piles up in the osdmap
            await outlast(loop.run_in_executor(None, self.image.unblocklist, old))
        except OSError as exc:
            log.info("blocklist entry kept", extra=logs.fields(addr=old, error=str(exc)))
        self.is_fenced = False
        self.recovery = ""
        log.info("rejoined", extra=logs.fields(lu=self.name, client=self.image.address))
        await self._learn_owner()
        self._update()

    def status(self) -> dict[str, object]:
        """What ``targetctl status`` shows of this LU's lock."""
        own, peer = states(holding=self.holding, peer_holds=self.peer_holds,
                           fenced=self.is_fenced)  # fmt: skip
        return {
            "lu": self.name,
            "holder": self.holding,
            "fenced": self.is_fenced,
            "recovery": self.recovery,
            "own_group": f"{self.layout.own_group} {_STATE_NAMES[own]}",
            "peer_group": f"{self.layout.peer_group} {_STATE_NAMES[peer]}",
            "lock_taken": self.acquisitions,
            "locks_broken": self.breaks,
            "client": self.image.address if not self.is_fenced else "",
        }

    async def stop(self) -> None:
        """Stop this gateway's work on the image before it closes: every task of it (a
        lock acquisition, a takeover, a release, a watch renewal) ends, each once its
        librbd or RADOS call on a worker thread has ended (a cancel cannot stop such a
        call, and one running on against a closed image crashes librbd; a cancelled lock
        acquisition gives the lock back). So a stop takes at most as long as the call in
        flight (about a second for a lock break that blocklists the other client; a
        takeover's notify, up to ``takeover_ms``). A watch renewal is not tried again from
        here on. Then :meth:`close`."""
        self._stopping = True
        tasks = [*self._tasks, self._watchdog]
        if self._transition is not None:
            tasks.append(self._transition)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Give the lock up, then stop watching (blocking; before the image closes): the
        other gateway, asking meanwhile, finds the lock free rather than a silent holder
        to fence. Tasks still running are cancelled but not waited for: :meth:`stop`
        waits for them first."""
        tasks = [*self._tasks, self._watchdog]
        if self._transition is not None:
            tasks.append(self._transition)
        for task in tasks:
            task.cancel()
        self._stopping = True
        if self.holding and not self.is_fenced:
            try:
                self.image.release_lock_now()
            except OSError as exc:
                log.info("lock not released at close", extra=logs.fields(error=str(exc)))
            self.holding = False
        self.channel.stop()


def _record(body: bytes) -> dict[str, object] | None:
    record = json.loads(body)
    return record if isinstance(record, dict) else None


def _stopped(transition: asyncio.Task[None]) -> bool:
    """Whether a waiter's CancelledError came from ``transition``, cancelled by
    :meth:`LockGate.stop`, rather than from a cancel of the waiter itself."""
    me = asyncio.current_task()
    return transition.cancelled() and (me is None or not me.cancelling())


def metric_families(gates: list[LockGate]) -> list[Family]:
    """Prometheus families of the gateways' locks (docs/rbd.md)."""
    holder = Family(
        "targetd_gateway_lock_holder", "gauge", "1 while this gateway holds the LU's image lock"
    )
    fenced = Family("targetd_gateway_fenced", "gauge", "1 while this gateway is fenced")
    taken = Family(
        "targetd_gateway_lock_taken_total", "counter", "times this gateway took the LU's lock"
    )
    broken = Family(
        "targetd_gateway_lock_broken_total",
        "counter",
        "locks taken from a silent holder (which the cluster blocklisted)",
    )
    for gate in gates:
        labels = {"lu": gate.name}
        holder.add(int(gate.holding), labels)
        fenced.add(int(gate.is_fenced), labels)
        taken.add(gate.acquisitions, labels)
        broken.add(gate.breaks, labels)
    return [holder, fenced, taken, broken]
