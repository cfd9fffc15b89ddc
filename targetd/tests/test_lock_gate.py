"""LockGate's commands never wait forever for the image's lock (targetd/gateway.py): a
transition (taking or giving up the lock) whose librbd call never returns leaves a waiting
write answered NOT READY, transitioning after takeover_ms + 1 s. Fakes stand in for librbd
and the message object here; the real ones are exercised in tests/ceph/."""

from __future__ import annotations

import asyncio
import errno
import time
from typing import Any

import pytest

from backing.rbd_notify import NotifyResult
from scsi.command import Nexus
from scsi.sense import CheckCondition, Reason
from targetd import gateway, logs
from targetd.gateway import Layout, LockGate

WRITE_10 = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])
ME, PEER = "10.0.0.1:0/1", "10.0.0.2:0/2"


class FakeChannel:
    def __init__(self, image: object, on_message: Any, on_error: Any, me: str = "") -> None:
        self.on_message = on_message

    def start(self, loop: object) -> None:
        pass

    def stop(self) -> None:
        pass

    async def notify(self, message: dict[str, object], timeout: float) -> Any:
        raise AssertionError("not asked in these tests")


class FakeImage:
    """Holds the lock; ``release_lock`` never returns while ``stuck`` (a librbd call
    that hangs)."""

    def __init__(self) -> None:
        self.address = ME
        self.allocation_known = False
        self.owners = [ME]
        self.stuck = True

    async def lock_owners(self) -> list[str]:
        return list(self.owners)

    async def release_lock(self) -> None:
        while self.stuck:
            await asyncio.sleep(0.01)
        self.owners = []

    def release_lock_now(self) -> None:
        self.owners = []

    async def reload_allocation(self) -> None:
        pass


class FakeLU:
    def __init__(self) -> None:
        self.port_groups: object = None
        self.access_gate: object = None
        self.after_reset: object = None
        self.attentions: list[Reason] = []

    def raise_unit_attention(self, reason: Reason) -> None:
        self.attentions.append(reason)


async def holding_gate(monkeypatch: pytest.MonkeyPatch, takeover_ms: int) -> LockGate:
    monkeypatch.setattr(gateway, "GatewayChannel", FakeChannel)
    gate = LockGate(
        FakeLU(),  # type: ignore[arg-type]
        FakeImage(),  # type: ignore[arg-type]
        Layout(own_group=1, own_ports=(1,), peer_group=2, peer_ports=(2,)),
        hold_ms=0,
        takeover_ms=takeover_ms,
        name="lu0",
    )
    await asyncio.sleep(0.01)  # it learns that it holds the lock
    assert gate.holding
    return gate


def test_a_write_waiting_for_a_release_that_hangs_gets_transitioning_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def run() -> None:
        gate = await holding_gate(monkeypatch, takeover_ms=200)
        answers: list[dict[str, object]] = []
        # The other gateway asks: the holder answers "releasing" and starts giving it up.
        gate._on_message({"op": "request", "from": PEER}, answers.append)
        assert answers == [{"addr": ME, "answer": "releasing"}]
        started = time.monotonic()
        with pytest.raises(CheckCondition) as caught:
            await asyncio.wait_for(gate.enter(Nexus("iqn.test,i,0x1"), WRITE_10), 5.0)
        waited = time.monotonic() - started
        assert caught.value.reason is Reason.LU_NOT_ACCESSIBLE_TRANSITIONING
        assert 1.1 <= waited < 2.0  # takeover_ms + 1 s
        assert gate.in_flight == 0
        gate.image.stuck = False  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
        assert not gate.holding and gate._transition is None
        await gate.stop()

    asyncio.run(run())


def test_take_gives_up_on_a_release_that_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> None:
        gate = await holding_gate(monkeypatch, takeover_ms=100)
        gate._on_message({"op": "request", "from": PEER}, lambda _answer: None)
        assert await asyncio.wait_for(gate.take("pair"), 5.0) is False
        gate.image.stuck = False  # type: ignore[attr-defined]
        await gate.stop()

    asyncio.run(run())


def test_a_command_that_never_ends_is_named_in_the_log(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A write admitted with the lock held whose librbd call never completes: the gateway
    says so after takeover_ms + 1 s, once, rather than leaving only an initiator's timeout,
    with every thread's stack and its tasks (where the hung call is)."""

    async def run() -> None:
        gate = await holding_gate(monkeypatch, takeover_ms=100)
        assert await gate.enter(Nexus("iqn.test,i,0x1"), WRITE_10)
        await asyncio.sleep(0.8)
        assert "commands or lock transition stalled" not in caplog.text
        await asyncio.sleep(1.5)
        stalls = [
            r for r in caplog.records if r.getMessage() == "commands or lock transition stalled"
        ]
        assert len(stalls) == 1
        assert stalls[0].__dict__[logs.FIELDS]["in_flight"] == 1
        assert stalls[0].__dict__[logs.FIELDS]["transition"] == ""
        assert len([r for r in caplog.records if r.getMessage() == "asyncio tasks"]) == 1
        assert "_watch_stalls" in capfd.readouterr().err  # the thread dump: this one's stack
        gate.leave(True)
        gate.image.stuck = False  # type: ignore[attr-defined]
        await gate.stop()

    with caplog.at_level("WARNING"):
        asyncio.run(run())


class PeerHolds:
    """The other gateway holds the lock and answers "busy, ask again in 50 ms" until
    ``free`` (then it lets go); ``acquire_lock`` fails with ``error`` when one is set.
    Notes when each try to take the lock began and the most of them ever running at once."""

    def __init__(self, error: OSError | None = None) -> None:
        self.address = ME
        self.allocation_known = False
        self.owners = [PEER]
        self.free = False
        self.error = error
        self.tries: list[float] = []
        self.running = 0
        self.most_running = 0

    async def lock_owners(self) -> list[str]:
        if self.free and self.owners == [PEER]:
            self.owners = []
        return list(self.owners)

    async def acquire_lock(self) -> None:
        self.tries.append(time.monotonic())
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(0.001)
            if self.error is not None:
                raise self.error
            self.owners = [ME]
        finally:
            self.running -= 1

    async def release_lock(self) -> None:
        self.owners = []

    def release_lock_now(self) -> None:
        self.owners = []

    async def reload_allocation(self) -> None:
        pass


class BusyPeer(FakeChannel):
    async def notify(self, message: dict[str, object], timeout: float) -> Any:
        await asyncio.sleep(0.002)
        return NotifyResult(replies=[{"addr": PEER, "answer": "busy", "wait": 0.05}])


# A waiting command's bound: takeover_ms + 1 s.
TAKEOVER_MS = 500
BOUND = TAKEOVER_MS / 1000 + 1.0


async def waiting_gate(monkeypatch: pytest.MonkeyPatch, image: PeerHolds) -> LockGate:
    monkeypatch.setattr(gateway, "GatewayChannel", BusyPeer)
    gate = LockGate(
        FakeLU(),  # type: ignore[arg-type]
        image,  # type: ignore[arg-type]
        Layout(own_group=1, own_ports=(1,), peer_group=2, peer_ports=(2,)),
        hold_ms=0,
        takeover_ms=TAKEOVER_MS,
        name="lu0",
    )
    await asyncio.sleep(0.01)  # it learns that the other gateway holds the lock
    assert gate.peer_holds and not gate.holding
    return gate


async def timed_enter(gate: LockGate, started: float) -> tuple[object, float]:
    """What ``enter`` of a WRITE gave (True, or the reason it was refused) and when."""
    try:
        result: object = await asyncio.wait_for(gate.enter(Nexus("iqn.test,i,0x1"), WRITE_10), 5)
    except CheckCondition as exc:
        result = exc.reason
    return result, time.monotonic() - started


def test_a_later_write_waits_its_own_time_for_the_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writes wait for the lock the other gateway holds, the second arriving 0.6 s
    after the first: the first is answered transitioning at its bound (1.5 s); the second
    waits on (its own bound is 2.1 s) and is admitted when the lock comes, at 1.8 s. One
    try at a time asks the holder, never one per waiting command."""

    async def run() -> None:
        image = PeerHolds()
        gate = await waiting_gate(monkeypatch, image)
        started = time.monotonic()
        first = asyncio.create_task(timed_enter(gate, started))
        await asyncio.sleep(0.6)
        second = asyncio.create_task(timed_enter(gate, started))
        await asyncio.sleep(1.2)
        image.free = True
        freed_at = time.monotonic() - started
        (reason, first_at), (admitted, second_at) = await first, await second
        assert reason is Reason.LU_NOT_ACCESSIBLE_TRANSITIONING
        assert BOUND - 0.05 <= first_at < freed_at
        assert admitted is True
        assert freed_at <= second_at < 0.6 + BOUND
        assert gate.holding and len(image.tries) == 1 and image.most_running == 1
        gate.leave(True)
        await gate.stop()

    asyncio.run(run())


def test_failed_tries_to_take_the_lock_are_paced_not_spun(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Taking a free lock fails at once (EIO) for as long as two writes wait, the second
    arriving 0.6 s after the first: each is answered transitioning by its own bound, not at
    the first failure, tries go on for the second past the first's bound, and the tries
    pause between them, one at a time (50 ms doubling to 0.5 s: a handful, not thousands)."""

    async def run() -> None:
        image = PeerHolds(OSError(errno.EIO, "Input/output error"))
        gate = await waiting_gate(monkeypatch, image)
        image.free = True
        started = time.monotonic()
        first = asyncio.create_task(timed_enter(gate, started))
        await asyncio.sleep(0.6)
        second = asyncio.create_task(timed_enter(gate, started))
        (reason1, first_at), (reason2, second_at) = await first, await second
        assert reason1 is reason2 is Reason.LU_NOT_ACCESSIBLE_TRANSITIONING
        tries = [t - started for t in image.tries]
        assert BOUND - 0.05 <= first_at <= BOUND + 0.1
        assert [t for t in tries if t > first_at]  # the second's tries went on
        # (answered once the pause before the next try would outlast its bound)
        assert max(tries) <= second_at <= 0.6 + BOUND + 0.1
        assert 4 <= len(tries) <= 12
        assert image.most_running == 1
        assert gate.in_flight == 0 and not gate.holding
        await gate.stop()

    asyncio.run(run())


REQUEST = {"op": "request", "from": PEER}


async def taken_with_a_write_waiting(
    monkeypatch: pytest.MonkeyPatch, when_taken: Any
) -> tuple[LockGate, asyncio.Task[tuple[object, float]]]:
    """A write waits while this gateway takes the free lock; ``when_taken(gate)`` runs just
    after the try that took it ended, before the write has woken (the moment a request
    from the other gateway can land in)."""
    image = PeerHolds()
    gate = await waiting_gate(monkeypatch, image)
    image.free = True
    write = asyncio.create_task(timed_enter(gate, time.monotonic()))
    for _ in range(10):  # the write starts a try and waits for it
        await asyncio.sleep(0)
        if gate._transition is not None:
            break
    transition = gate._transition
    assert transition is not None
    # Runs after the gate's own done callback, before the write's task is woken.
    transition.add_done_callback(lambda _task: when_taken(gate))
    return gate, write


def test_a_lock_just_taken_is_not_given_up_before_a_waiting_write_is_admitted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With hold_ms = 0 the other gateway's request arrives after the try that took the lock
    ended but before the write waiting for it woke: the holder answers "busy" (it gave the
    lock up with admitted=0 before, a move for nothing), then, the write admitted, the next
    request is answered "releasing" as hold_ms = 0 says."""
    answers: list[dict[str, object]] = []
    seen: list[tuple[bool, int]] = []

    def ask(gate: LockGate) -> None:
        seen.append((gate.holding, gate.admitted_holding))
        gate._on_message(REQUEST, answers.append)

    async def run() -> None:
        gate, write = await taken_with_a_write_waiting(monkeypatch, ask)
        admitted, _at = await write
        assert seen == [(True, 0)]  # asked with the lock taken and the write not admitted
        assert answers == [{"addr": ME, "answer": "busy", "wait": gateway.MIN_WAIT}]
        assert admitted is True
        assert gate.holding and gate.acquisitions == 1 and gate.admitted_holding == 1
        assert gate._transition is None  # not given up under the admitted write
        gate._on_message(REQUEST, answers.append)
        assert answers[1] == {"addr": ME, "answer": "releasing"}
        gate.leave(True)
        await gate.stop()

    asyncio.run(run())


def test_a_waiter_that_does_not_run_cannot_keep_the_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The holder says "busy" for a waiting write only for FIRST_ADMIT_BOUND: a write that
    has not run by then (here the event loop stalls longer, so it cannot) does not make the
    holder refuse the other gateway on and on; the request after the bound is answered
    "releasing"."""
    answers: list[dict[str, object]] = []

    def ask_stall_ask(gate: LockGate) -> None:
        gate._on_message(REQUEST, answers.append)
        time.sleep(gateway.FIRST_ADMIT_BOUND + 0.05)  # the loop stalls: the write cannot run
        gate._on_message(REQUEST, answers.append)

    async def run() -> None:
        gate, write = await taken_with_a_write_waiting(monkeypatch, ask_stall_ask)
        await asyncio.wait_for(write, 5)  # admitted after the lock came back, or refused
        assert answers == [
            {"addr": ME, "answer": "busy", "wait": gateway.MIN_WAIT},
            {"addr": ME, "answer": "releasing"},
        ]
        if gate.in_flight:
            gate.leave(True)
        await gate.stop()

    asyncio.run(run())
