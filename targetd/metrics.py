"""Data-path counters and their Prometheus text exposition.

Counting happens on the hot path, once per SCSI command, so :class:`LunStats` is plain
integers in preallocated lists: a table lookup for the opcode's kind, a few adds and a
bisect into fixed latency bounds, no allocation. :class:`LoopLag` probes the event
loop's own lag while the endpoint serves. Everything else (names, labels, text) is
built only when someone scrapes. Other subsystems add their own families (pair states and
backlog, copy-engine rates) with :meth:`Metrics.add_collector`.

The exposition format is small and stable (text format 0.0.4); it is written here rather
than pulling in prometheus_client, whose HTTP server runs collectors on its own thread
while the event loop mutates the structures they read.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from scsi.command import Status
from scsi.sense import SenseKey, parse_sense

if TYPE_CHECKING:
    from scsi.command import FileRange

log = logging.getLogger("targetd.metrics")

OTHER, READ, WRITE = 0, 1, 2
KIND_NAMES = ("other", "read", "write")
# READ/WRITE (6, 10, 12, 16) and WRITE AND VERIFY; tape READ(6)/WRITE(6) share the codes.
_READS = (0x08, 0x28, 0xA8, 0x88)
_WRITES = (0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E)
OPCODE_KIND = bytes(
    READ if op in _READS else WRITE if op in _WRITES else OTHER for op in range(256)
)

# Latency bucket upper bounds. A 4 KiB read from the page cache takes tens of microseconds.
LATENCY_BOUNDS_SECONDS = (
    25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BOUNDS_NS = tuple(int(b * 1e9) for b in LATENCY_BOUNDS_SECONDS)
_CHECK_CONDITION = Status.CHECK_CONDITION
_UNIT_ATTENTION = SenseKey.UNIT_ATTENTION
_NO_SENSE = SenseKey.NO_SENSE


class LunStats:
    """What one LUN has done since the daemon started, by command kind."""

    __slots__ = ("attentions", "buckets", "bytes", "errors", "latency_ns", "notices", "ops")

    def __init__(self) -> None:
        self.ops = [0, 0, 0]
        self.bytes = [0, 0, 0]
        self.latency_ns = [0, 0, 0]
        self.errors = 0
        # CHECK CONDITIONs with UNIT ATTENTION: protocol events every initiator expects (the
        # POWER ON/RESET of its first command, a reservation preempted, capacity changed),
        # counted apart so an admin does not read them as failures.
        self.attentions = 0
        # CHECK CONDITIONs with NO SENSE: a tape's file mark, end-of-medium early warning or
        # short record (ILI), told along with a command that did its work.
        self.notices = 0
        # One row per kind; the last bucket is +Inf.
        self.buckets = [[0] * (len(_BOUNDS_NS) + 1) for _ in KIND_NAMES]

    def record(
        self,
        opcode: int,
        data_out: memoryview | None,
        data_in: bytes | bytearray | memoryview | FileRange | None,
        elapsed_ns: int,
        status: int,
        sense: bytes | None,
    ) -> None:
        """One completed command. Bytes count the payload of READs (Data-In) and WRITEs
        (Data-Out) only: INQUIRY pages and mode pages are not traffic. A status other than
        GOOD is an error, unless it is a CHECK CONDITION with UNIT ATTENTION or NO SENSE
        sense."""
        kind = OPCODE_KIND[opcode]
        self.ops[kind] += 1
        if kind == READ:
            if data_in is not None:
                self.bytes[READ] += len(data_in)
        elif kind == WRITE and data_out is not None:
            self.bytes[WRITE] += len(data_out)
        self.latency_ns[kind] += elapsed_ns
        self.buckets[kind][bisect_left(_BOUNDS_NS, elapsed_ns)] += 1
        if status:
            key = parse_sense(sense)[0] if status == _CHECK_CONDITION and sense else None
            if key == _UNIT_ATTENTION:
                self.attentions += 1
            elif key == _NO_SENSE:
                self.notices += 1
            else:
                self.errors += 1

    def as_dict(self) -> dict[str, int]:
        return {
            "read_ops": self.ops[READ],
            "read_bytes": self.bytes[READ],
            "write_ops": self.ops[WRITE],
            "write_bytes": self.bytes[WRITE],
            "other_ops": self.ops[OTHER],
            "errors": self.errors,
            "attentions": self.attentions,
            "notices": self.notices,
        }


# How late the event loop runs a timer. A healthy loop answers within a millisecond; a
# blocking call on it (a sync of a large file, a long copy) shows as the seconds it took.
LOOP_LAG_BOUNDS_SECONDS = (
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
LOOP_LAG_INTERVAL = 0.02  # seconds between probes: 50 wake-ups a second
# A lag this long is logged too (at most once a minute), so a stall shows in the journal
# of a daemon nobody scrapes.
LOOP_STALL_LOG_SECONDS = 1.0
LOOP_STALL_LOG_EVERY = 60.0


class LoopLag:
    """The event loop's own lag: a probe sleeps ``interval`` and records how much later
    than asked it woke. Anything that holds the loop (a blocking call, a long stretch of
    Python between awaits) delays the probe by as much, so a stall shows here even when no
    command was in flight to see it."""

    def __init__(self, interval: float = LOOP_LAG_INTERVAL) -> None:
        self.interval = interval
        self.buckets = [0] * (len(LOOP_LAG_BOUNDS_SECONDS) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0
        self.max = 0.0
        self._task: asyncio.Task[None] | None = None
        self._logged = -math.inf  # when a stall was last logged (time.monotonic)

    def record(self, lag: float) -> None:
        self.buckets[bisect_left(LOOP_LAG_BOUNDS_SECONDS, lag)] += 1
        self.total += lag
        self.count += 1
        self.max = max(self.max, lag)
        if lag >= LOOP_STALL_LOG_SECONDS:
            now = time.monotonic()
            if now - self._logged >= LOOP_STALL_LOG_EVERY:
                self._logged = now
                log.warning("event loop stalled for %.2f s: every session waited that long", lag)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._probe())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _probe(self) -> None:
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.record(max(0.0, time.perf_counter() - asked - self.interval))

    def families(self) -> list[Family]:
        hist = Family(
            "targetd_event_loop_lag_seconds",
            "histogram",
            f"How late the event loop ran a {self.interval * 1e3:g} ms timer",
        )
        cumulative = 0
        for bound, count in zip((*LOOP_LAG_BOUNDS_SECONDS, math.inf), self.buckets, strict=True):
            cumulative += count
            hist.add(cumulative, {"le": "+Inf" if math.isinf(bound) else repr(bound)}, "_bucket")
        hist.add(self.total, None, "_sum")
        hist.add(self.count, None, "_count")
        worst = Family(
            "targetd_event_loop_lag_max_seconds", "gauge", "The longest event loop lag seen"
        )
        worst.add(self.max)
        return [hist, worst]


# -- exposition ------------------------------------------------------------------------------
Labels = Mapping[str, str]


@dataclass(slots=True)
class Family:
    """One metric family: ``kind`` is counter, gauge or histogram (samples carry suffixes)."""

    name: str
    kind: str
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, labels: Labels | None = None, suffix: str = "") -> None:
        self.samples.append((suffix, labels or {}, value))


Collector = Callable[[], Iterable[Family]]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {fam.help}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        for suffix, labels, value in fam.samples:
            text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            lines.append(f"{fam.name}{suffix}{{{text}}} {_number(value)}" if text else
                         f"{fam.name}{suffix} {_number(value)}")  # fmt: skip
    return "\n".join(lines) + "\n"


def lun_families(luns: Iterable[tuple[str, int, LunStats]]) -> list[Family]:
    """The per-LUN families from (target, lun, stats) triples."""
    fams = {
        "bytes": Family(
            "targetd_lun_bytes_total", "counter", "Payload bytes moved by READ and WRITE commands"
        ),
        "ops": Family("targetd_lun_operations_total", "counter", "SCSI commands completed"),
        "errors": Family(
            "targetd_lun_errors_total",
            "counter",
            "Commands that ended in a status other than GOOD, unit attentions and notices apart",
        ),
        "attentions": Family(
            "targetd_lun_unit_attentions_total",
            "counter",
            "CHECK CONDITIONs reporting a UNIT ATTENTION (first command of a nexus, a reset,"
            " a reservation or capacity change)",
        ),
        "notices": Family(
            "targetd_lun_notices_total",
            "counter",
            "CHECK CONDITIONs with NO SENSE (a tape's file mark, end-of-medium warning or"
            " short record) told along with a command that did its work",
        ),
        "latency": Family(
            "targetd_lun_latency_seconds", "histogram", "Time from dispatch to completion"
        ),
    }
    for target, lun, stats in luns:
        base = {"target": target, "lun": str(lun)}
        fams["errors"].add(stats.errors, base)
        fams["attentions"].add(stats.attentions, base)
        fams["notices"].add(stats.notices, base)
        for kind, name in enumerate(KIND_NAMES):
            labels = {**base, "op": name}
            if kind != OTHER:
                fams["bytes"].add(stats.bytes[kind], labels)
            fams["ops"].add(stats.ops[kind], labels)
            cumulative = 0
            for bound, count in zip(
                (*LATENCY_BOUNDS_SECONDS, math.inf), stats.buckets[kind], strict=True
            ):
                cumulative += count
                le = "+Inf" if math.isinf(bound) else repr(bound)
                fams["latency"].add(cumulative, {**labels, "le": le}, "_bucket")
            fams["latency"].add(stats.latency_ns[kind] / 1e9, labels, "_sum")
            fams["latency"].add(stats.ops[kind], labels, "_count")
    return list(fams.values())


class Metrics:
    """The collectors of the daemon and the loopback HTTP endpoint that serves them."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []
        # Families gathered from elsewhere at each scrape (a portal's worker processes):
        # given this process's families, returns the whole exposition's.
        self.gather: Callable[[list[Family]], Awaitable[list[Family]]] | None = None
        self._server: asyncio.base_events.Server | None = None
        self.bound: tuple[str, int] | None = None
        self.loop_lag = LoopLag()
        self.add_collector(self.loop_lag.families)

    def add_collector(self, collector: Collector) -> None:
        """Register ``collector``: called at each scrape, on the event loop, it returns the
        families to expose (e.g. ``targetd_pair_state``, ``targetd_pair_backlog_bytes``,
        ``targetd_copy_rate_bytes_per_second``). Names should start with ``targetd_``."""
        self._collectors.append(collector)

    def families(self) -> list[Family]:
        families: list[Family] = []
        for collector in self._collectors:
            try:
                families.extend(collector())
            except Exception:
                log.exception("metrics collector %r failed", collector)
        return families

    def render(self) -> str:
        return render(self.families())

    async def render_all(self) -> str:
        families = self.families()
        if self.gather is not None:
            families = await self.gather(families)
        return render(families)

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._client, host, port, reuse_address=True)
        self.bound = self._server.sockets[0].getsockname()[:2]
        self.loop_lag.start()

    async def stop(self) -> None:
        await self.loop_lag.stop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A minimal HTTP/1.0 responder: GET /metrics (or /) and nothing else."""
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, _, rest = request.partition(b" ")
            path = rest.partition(b" ")[0].split(b"?")[0]
            if method not in (b"GET", b"HEAD"):
                status, body, ctype = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path in (b"/metrics", b"/"):
                body = (await self.render_all()).encode()
                status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
            else:
                status, body, ctype = "404 Not Found", b"try /metrics\n", "text/plain"
            head = (
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(head if method == b"HEAD" else head + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass  # a scraper that hung up or sent junk gets nothing more
        finally:
            writer.close()
