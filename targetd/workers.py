"""Per-target worker processes behind login redirection (docs/workers.md).

With ``[server] workers = N`` (N > 1) the process started by ``targetd serve`` becomes the
*portal*: it listens on the configured portals, answers discovery (SendTargets) and
redirects every normal-session login to the worker process that serves its target (RFC
7143 login status 0101h, built by the login state machine). Each worker is ``targetd
serve`` itself, given some targets: it builds only their LUNs, listens on each portal's
host at a port of its own, and runs the ordinary serve loop. Every I_T nexus of a target is
in one process, so reservations, unit attentions, ALUA state, the pairs' bitmaps and the
copy manager have one owner each, as with a single process; nothing crosses processes per
command.

Placement: every piece of state that spans LUNs is scoped to one target here (pairs and
groups name one target; EXTENDED COPY reaches the LUs of the session's target only; a
tape library's changer and drives are LUNs of one target), so a target is the unit. The
ALUA port group states come from the configuration, and a reload reaches every worker.

The portal supervises: a worker that dies, or cannot be started at all (a LUN it cannot
open, a start that never reports serving), is started again with a backoff, its targets
answering "service unavailable" meanwhile; the workers stop when the portal stops, and a
worker whose portal disappears (its stdin closes) stops by itself. ``targetctl status``
and ``reload`` reach the portal, which gathers from or fans out to the workers; a method
that names a target is handed to that target's worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
import tomllib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from targetd import chap_env, logs
from targetd.admin import AdminError, Report, request
from targetd.config import Config, Portal
from targetd.metrics import Family
from targetd.spawn import Child, spawn

log = logging.getLogger("targetd")

STOP_TIMEOUT = 30.0  # after SIGTERM, before SIGKILL (a worker drains for up to 10 s)
RESTART_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)  # backoff of a worker that keeps dying
STABLE_SECONDS = 30.0  # a worker up this long starts the backoff afresh
# Left out of a worker's environment: the portal alone talks to systemd.
_SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_name(index: int) -> str:
    return f"worker{index}.sock"


# The configuration texts the portal loaded, which its workers read, never the user's file,
# so an edit not yet reloaded reaches no worker, not even one started again after a crash:
# the text at the portal's start, and the last loaded (at its start or a reload). A worker
# starts from the first and applies the last as a reload would (targetd.reload), so what
# only a restart changes (portals, limits) stays as the portal and its siblings run it.
CONFIG_STARTED = "config.started.toml"
CONFIG_LOADED = "config.loaded.toml"
# Targets and LUNs a reload left out but a worker kept serving (in a pair): the ``[[target]]``
# tables in force of the targets concerned, by name (JSON): a kept target's as the text that
# last had it gave it; a target with a kept LUN, its table in the text plus that LUN's table
# from the text that last had it. A worker started again serves those of its targets from
# these tables, as its predecessor did.
CONFIG_KEPT = "config.kept.json"


def target_tables(text: bytes) -> dict[str, dict[str, Any]]:
    """The ``[[target]]`` tables of a configuration text, by name (a text the portal
    loaded, so valid)."""
    tables = tomllib.loads(text.decode()).get("target", [])
    return {str(t.get("name")): t for t in tables if isinstance(t, dict)}


def read_kept(texts: Path) -> dict[str, dict[str, Any]]:
    """CONFIG_KEPT in ``texts`` ({} if there is none)."""
    try:
        kept = json.loads((texts / CONFIG_KEPT).read_bytes())
    except FileNotFoundError:
        return {}
    return {str(k): v for k, v in kept.items() if isinstance(v, dict)}


def write_snapshot(path: Path, text: bytes) -> None:
    """Replace ``path`` at once: a worker starting meanwhile reads the old or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- placement ----------------------------------------------------------------------------
def place(config: Config, previous: dict[str, int] | None = None) -> dict[str, int]:
    """Target name -> worker index. Targets placed before keep their worker (their
    sessions and state are there); new ones go to the worker with the fewest targets."""
    placement: dict[str, int] = {}
    load = [0] * config.workers
    for target in config.targets:
        index = (previous or {}).get(target.name)
        if index is not None and index < config.workers:
            placement[target.name] = index
            load[index] += 1
    for target in config.targets:
        if target.name not in placement:
            index = min(range(config.workers), key=lambda i: (load[i], i))
            placement[target.name] = index
            load[index] += 1
    return placement


def worker_config(config: Config, targets: Collection[str]) -> Config:
    """What a worker serves: its targets and their declared pairs and groups, on each
    portal's host at a port the kernel picks; SendTargets from its sessions still names
    the portal's address. Metrics and further workers are the portal's."""
    owned = set(targets)
    return replace(
        config,
        targets=tuple(t for t in config.targets if t.name in owned),
        declared_pairs=tuple(p for p in config.declared_pairs if p.target in owned),
        declared_groups=tuple(g for g in config.declared_groups if g.target in owned),
        portals=tuple(replace(p, listen_port=0, advertise=p.advertised) for p in config.portals),
        metrics_listen=None,
        workers=1,
    )


def worker_argv(argv: list[str], index: int, targets: Iterable[str], texts: Path) -> list[str]:
    """``texts``: the folder of CONFIG_STARTED and CONFIG_LOADED."""
    spec = json.dumps({"index": index, "targets": list(targets), "texts": str(texts)})
    return [sys.executable, "-m", "targetd", *argv, "--worker", spec]


# -- the portal's side --------------------------------------------------------------------
@dataclass
class Worker:
    index: int
    targets: list[str]
    process: Child | None = None
    ports: list[int] = field(default_factory=list)  # per portal, in config order; [] = down
    restarts: int = 0
    started_at: float = 0.0
    # Between two starts: "restarting" after it served, "failed" after a start that never
    # served; with why (``error``) and when the next start is (``retry_at``, monotonic).
    waiting: str | None = None
    error: str | None = None
    retry_at: float | None = None
    start_failures: int = 0  # starts that never served, in all
    # Which reload's CHAP credentials it has (``Supervisor.chap_generation``).
    chap_generation: int = 0

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def state(self) -> str:
        return "serving" if self.ports else self.waiting or "starting"

    def status(self) -> dict[str, Any]:
        retry = None if self.retry_at is None else max(0.0, self.retry_at - time.monotonic())
        return {
            "index": self.index,
            "pid": self.pid,
            "targets": list(self.targets),
            "ports": list(self.ports),
            "state": self.state,
            "restarts": self.restarts,
            "start_failures": self.start_failures,
            "error": self.error,
            "retry_in_seconds": None if retry is None else round(retry, 1),
        }


class Supervisor:
    """Starts the workers, restarts one that dies, stops them all."""

    def __init__(
        self,
        argv: list[str],
        config: Config,
        *,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.argv = argv
        self.config = config
        self.texts = config.state_dir  # a reload keeps the state dir
        self.placement = place(config)
        self.workers = [
            Worker(i, [n for n, w in self.placement.items() if w == i])
            for i in range(config.workers)
        ]
        self.on_change = on_change
        self._stopping = False
        self._runners: list[asyncio.Task[None]] = []
        self._lifelines: dict[int, tuple[Worker, Child]] = {}
        # Set once a worker's first start served or failed: the portal serves from then on.
        self._settled: list[asyncio.Event] = [asyncio.Event() for _ in self.workers]
        # After a reload: the LUNs each target's worker serves, by target name.
        self.luns: dict[str, list[int]] = {}
        # The CHAP credentials of the last reload (or the start), which every worker serves
        # with; counted, so a worker started before a reload and admitted after its requests
        # went out (it was starting: it missed its own) is given them before it is routed.
        self.chap = config.env_chap
        self.chap_generation = 0
        self._reloading = asyncio.Lock()  # a reload's requests, or a worker's catch-up

    def routes(self, portals: tuple[Portal, ...]) -> dict[Portal, tuple[tuple[str, int], ...]]:
        """Per portal: each configured target and its worker's port there (0 while that
        worker is not serving: the login is answered "service unavailable")."""
        out = {}
        for i, portal in enumerate(portals):
            moved = []
            for target in self.config.targets:
                worker = self.workers[self.placement.get(target.name, 0)]
                moved.append((target.name, worker.ports[i] if len(worker.ports) > i else 0))
            out[portal] = tuple(moved)
        return out

    async def start(self) -> None:
        """Start every worker; returns once each has served or failed its first start. One
        that failed is started again with a backoff, as one that exits is: its targets
        answer "service unavailable" until it serves (a LUN it could not open may come)."""
        self._runners = [asyncio.ensure_future(self._run(w)) for w in self.workers]
        settled: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(*(e.wait() for e in self._settled))
        )
        waiting: list[asyncio.Future[Any]] = [settled, *self._runners]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not settled.done():  # a supervising task ended: a bug, said by its exception
            settled.cancel()
            await self.stop()
            raise RuntimeError("a worker's supervision ended (see the messages above)")

    async def _run(self, worker: Worker) -> None:
        failures = 0
        while not self._stopping:
            worker.waiting = None
            ok = await self._spawn(worker)
            process = worker.process
            if ok and process is not None:
                await process.wait()
                for life, (_, which) in list(self._lifelines.items()):
                    if which is process:  # a child of its own kept the line open
                        self._drop_lifeline(life)
                worker.error = f"exited with status {process.returncode}"
            went = worker.ports
            worker.ports = []
            if self._stopping:
                return
            if went:
                self.on_change()
            up = time.monotonic() - worker.started_at
            failures = 0 if ok and up > STABLE_SECONDS else failures + 1
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            worker.waiting = "restarting" if ok else "failed"
            worker.retry_at = time.monotonic() + delay
            worker.restarts += 1
            if not ok:
                worker.start_failures += 1
            log.warning(
                "worker exited; restarting" if ok else "worker did not start; trying again",
                extra=logs.fields(
                    worker=worker.index, pid=worker.pid, error=worker.error, delay=delay,
                    targets=",".join(worker.targets),
                ),
            )  # fmt: skip
            self._settled[worker.index].set()
            await asyncio.sleep(delay)
            worker.retry_at = None

    async def _spawn(self, worker: Worker) -> bool:
        """Start ``worker``'s process; True once it serves. False (``worker.error`` says
        why) if it exits before, or does not serve within ``[server] worker_start_timeout``
        (then killed)."""
        ready_timeout = self.config.worker_start_timeout
        env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ENV}
        env = chap_env.worker_env(env, self.chap)  # as loaded, not as the file is
        worker.chap_generation = self.chap_generation
        worker.started_at = time.monotonic()
        # A life line: the worker holds its write end and never writes; it reads EOF here
        # the moment the worker dies, as its sockets close (its exit is reaped later).
        life, held = os.pipe()
        try:
            # From a thread (targetd/spawn.py): a fork on the loop's thread stalled
            # every session and login of the portal. Its stdin is a pipe held open: when
            # we go it closes, and the worker stops too.
            worker.process = process = await spawn(
                worker_argv(self.argv, worker.index, worker.targets, self.texts),
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C reaches the portal only
                pass_fds=(held,),
            )
        except BaseException:
            os.close(life)
            raise
        finally:
            os.close(held)
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), ready_timeout)
        except TimeoutError:
            process.kill()  # hung in its start (a store that does not answer)
            line = b""
        try:
            ready = json.loads(line)
            ports = [int(p) for p in ready["ports"]]
        except (ValueError, KeyError, TypeError):
            if process.returncode is None and line:
                process.kill()  # said nonsense: not a worker we can route to
            await process.wait()
            code = process.returncode
            worker.error = (
                f"did not serve within {ready_timeout:g} s" if code == -signal.SIGKILL and not line
                else f"exited with status {code} before serving"
            )  # fmt: skip
            os.close(life)
            return False
        try:
            await self.catch_up(worker)
        except (OSError, AdminError) as err:
            process.kill()  # it would serve with the credentials of before a reload
            await process.wait()
            worker.error = f"missed a reload and could not be given it: {err}"
            os.close(life)
            return False
        worker.ports = ports
        worker.error = None
        self._lifelines[life] = (worker, process)
        asyncio.get_running_loop().add_reader(life, self._died, life)
        log.info(
            "worker serving",
            extra=logs.fields(
                worker=worker.index, pid=process.pid, targets=",".join(worker.targets),
                ports=",".join(map(str, ports)),
            ),
        )  # fmt: skip
        self._settled[worker.index].set()
        self.on_change()
        return True

    async def catch_up(self, worker: Worker) -> None:
        """Before a started ``worker`` is routed: if a reload changed the credentials since
        it was started (its own request went out while it was starting, and failed), send
        it that reload now, with the credentials and targets in force."""
        async with self._reloading:
            generation = self.chap_generation
            if worker.chap_generation == generation:
                return
            chap = self.chap
            params = {"chap": None if chap is None else [chap.user, chap.secret],
                      "targets": worker.targets}  # fmt: skip
            path = self.config.state_dir / socket_name(worker.index)
            await asyncio.to_thread(request, path, "worker.reload", params, timeout=30.0)
            worker.chap_generation = generation
            log.info("worker given the reload it missed", extra=logs.fields(worker=worker.index))

    def _died(self, life: int) -> None:
        """The worker's life line closed: stop routing to it now. Called from the event
        loop's poll, in the same turn that could accept an initiator its death dropped,
        before that initiator's login is read, so it is answered 0301h, not sent to the
        dead port (as it was when routing stopped only once the exit was reaped)."""
        if os.read(life, 1):
            return  # not written to; nothing to do but wait for EOF
        self._drop_lifeline(life)

    def _drop_lifeline(self, life: int) -> None:
        entry = self._lifelines.pop(life, None)
        asyncio.get_running_loop().remove_reader(life)
        os.close(life)
        if entry is None:
            return
        worker, process = entry
        if worker.process is process and worker.ports:
            worker.ports = []
            self.on_change()

    def owner(self, target: str) -> Worker | None:
        index = self.placement.get(target)
        return None if index is None else self.workers[index]

    async def call(
        self,
        worker: Worker,
        method: str,
        params: dict[str, Any],
        *,
        timeout: float = 30.0,
        progress: Report | None = None,
    ) -> Any:
        """An admin request to one worker, over its socket in the state dir. ``progress``
        (callable from any thread) is given the worker's progress lines as they come."""
        path = self.config.state_dir / socket_name(worker.index)
        if not worker.ports:
            if worker.waiting == "failed":
                why = f"cannot start ({worker.error}); it is tried again"
            else:
                why = f"is {worker.state}; try again"
            raise AdminError(f"worker {worker.index} {why}", "unavailable")
        return await asyncio.to_thread(
            request, path, method, params, timeout=timeout, progress=progress
        )

    async def call_all(self, method: str, params: dict[str, Any] | None = None) -> list[Any]:
        return list(
            await asyncio.gather(*(self.call(w, method, params or {}) for w in self.workers))
        )

    async def assign(self, config: Config) -> dict[str, list[str]]:
        """A reload: new targets are placed, and every worker reloads with its share."""
        previous = self.placement
        self.placement = place(config, previous)
        for name, index in previous.items():
            # Left out of the text: its worker decides (it keeps serving a paired one, and
            # then the target must stay placed there, routed and restarted with it).
            if index < len(self.workers):
                self.placement.setdefault(name, index)
        for worker in self.workers:
            worker.targets = [n for n, w in self.placement.items() if w == worker.index]
        chap = config.env_chap  # read once, here: every worker gets the same
        params: dict[str, Any] = {"chap": None if chap is None else [chap.user, chap.secret]}
        async with self._reloading:
            # From here a worker started gets these credentials, and one started before
            # but admitted after these requests is given them then (``catch_up``).
            self.chap = chap
            self.chap_generation += 1
            results = await asyncio.gather(
                *(self.call(w, "worker.reload", {**params, "targets": w.targets})
                  for w in self.workers),
                return_exceptions=True,
            )  # fmt: skip
            for worker, result in zip(self.workers, results, strict=True):
                if not isinstance(result, BaseException) and worker.ports:
                    worker.chap_generation = self.chap_generation
        applied: list[str] = []
        refused: list[str] = []
        served: list[str] = []
        for worker, result in zip(self.workers, results, strict=True):
            if isinstance(result, BaseException):
                refused.append(f"worker {worker.index}: {result}")
                served += worker.targets  # as they were: it keeps what it had
                continue
            applied += [a for a in result["applied"] if a not in applied]
            refused += [r for r in result["refused"] if r not in refused]
            served += result["targets"]
        self.luns = {n: luns for r in results if isinstance(r, dict)
                     for n, luns in r.get("luns", {}).items()}  # fmt: skip
        # A target a worker kept (a paired LUN) stays placed; one it dropped is gone.
        self.placement = {n: w for n, w in self.placement.items() if n in served}
        for worker in self.workers:
            worker.targets = [n for n, w in self.placement.items() if w == worker.index]
        return {"applied": applied, "refused": refused, "targets": served}

    async def stop(self) -> None:
        """SIGTERM to every worker (each drains its sessions), SIGKILL after STOP_TIMEOUT."""
        self._stopping = True
        running = [w.process for w in self.workers if w.process and w.process.returncode is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        if running:
            waits = [asyncio.ensure_future(p.wait()) for p in running]
            _, late = await asyncio.wait(waits, timeout=STOP_TIMEOUT)
            for process in running:
                if process.returncode is None:
                    log.warning("worker did not stop; killed", extra=logs.fields(pid=process.pid))
                    process.kill()
            if late:
                await asyncio.wait(late)
        for life in list(self._lifelines):
            self._drop_lifeline(life)
        for runner in self._runners:
            runner.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)


# -- gathering ------------------------------------------------------------------------------
def merge_status(portal: dict[str, Any], workers: list[Worker], answers: list[Any]) -> None:
    """The portal's own snapshot (its portals, discovery sessions) plus each worker's
    sessions, LUNs, pairs and copies, each marked with the worker that has it."""
    portal["workers"] = [w.status() for w in workers]
    portal["luns"] = []
    for worker, answer in zip(workers, answers, strict=True):
        if isinstance(answer, BaseException):
            continue
        for section in ("sessions", "luns", "pairs", "copy_operations"):
            for item in answer.get(section) or []:
                portal.setdefault(section, []).append({**item, "worker": worker.index})


def worker_families(workers: Iterable[Worker]) -> list[Family]:
    """The portal's own view of its workers: serving or not, and how often started again."""
    up = Family("targetd_worker_up", "gauge", "1 while the worker process serves its targets")
    restarts = Family(
        "targetd_worker_restarts_total", "counter", "Starts of the worker after its first"
    )
    failed = Family(
        "targetd_worker_start_failures_total",
        "counter",
        "Starts of the worker that exited or hung before serving",
    )
    for worker in workers:
        labels = {"worker": str(worker.index)}
        up.add(1 if worker.ports else 0, labels)
        restarts.add(worker.restarts, labels)
        failed.add(worker.start_failures, labels)
    return [up, restarts, failed]


def families_to_json(families: Iterable[Family]) -> list[list[Any]]:
    return [[f.name, f.kind, f.help, [[s, dict(lb), v] for s, lb, v in f.samples]]
            for f in families]  # fmt: skip


def merge_families(own: list[Family], workers: list[Worker], answers: list[Any]) -> list[Family]:
    """One exposition: the families of every worker, each sample labelled with its worker."""
    by_name = {f.name: f for f in own}
    out = list(own)
    for worker, answer in zip(workers, answers, strict=True):
        if isinstance(answer, BaseException):
            continue
        for name, kind, help_text, samples in answer:
            family = by_name.get(name)
            if family is None:
                family = by_name[name] = Family(name, kind, help_text)
                out.append(family)
            for suffix, labels, value in samples:
                family.add(value, {**labels, "worker": str(worker.index)}, suffix)
    return out


def state_dir_sockets(state_dir: Path, count: int) -> list[Path]:
    return [state_dir / socket_name(i) for i in range(count)]
