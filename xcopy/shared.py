"""Copy records kept in the Ceph cluster, so that every gateway exporting an RBD image can
answer RECEIVE COPY RESULTS for a copy another gateway ran (docs/xcopy.md, "Two
gateways").

One RADOS object beside the image holds a JSON map of records, one per copy that names the
image, keyed by the initiator's name (not its port: through another gateway the same
initiator has another I_T nexus, often another ISID) and the list identifier. The gateway
running a copy writes its record when the copy starts, at its progress checkpoints and when
it ends (compare-and-swap on the object's version, so records of copies run by two gateways
never overwrite each other), and watches the object.

A gateway asked about a list identifier it does not know reads the record. A finished
record is reported as it stands. A running one is asked about over the watch: the gateway
running it answers with its live record; if no gateway answers within
:data:`ASK_TIMEOUT`, the copy's gateway died (or was cut off from the cluster) and the copy
can never complete, so the record is rewritten as failed, with COPY ABORTED, COPY TARGET
DEVICE NOT REACHABLE (0Dh/02h) and the progress last recorded. That verdict is final: a
gateway that was only stalled and wakes up finds its record taken over, stops its copy and
reports it failed with the same sense, so the two paths never disagree and a copy is never
reported completed on one path after it was reported failed on the other.

The object also names each gateway's client of it (``gateways``, ``addresses``), so that a
gateway that took a dead one's image lock over blocklists the dead one's watch
(scsi/watch_fence.py): until the OSDs expired it, every question waited :data:`ASK_TIMEOUT`
for it. A gateway whose own client was blocklisted (it was only stalled) rejoins with a new
one.

The object is anything with the blocking calls of backing's ``RadosObject`` (``read``,
``replace``, ``ask``, ``probe``, ``blocklist``, ``watch``, ``close``); they run in worker
threads.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from backing.threads import Lane
from scsi.watch_fence import fence_previous_run, fence_watch, naming

log = logging.getLogger(__name__)

FORMAT = "targetd-copies"
# How long a gateway waits for the gateway running a copy to say it still runs it.
ASK_TIMEOUT = 3.0
# Set in a record another gateway declared failed (its runner did not answer).
TAKEN_OVER = "taken_over"


class RecordObject(Protocol):
    name: str
    instance_id: int
    address: str

    def read(self) -> tuple[int, bytes]: ...
    def replace(self, expected: int, version: int, body: bytes) -> bool: ...
    def ask(self, payload: bytes, timeout: float) -> list[bytes]: ...
    def probe(self, payload: bytes, timeout: float) -> tuple[list[int], list[int]]: ...
    def blocklist(self, address: str) -> None: ...
    def watch(
        self, on_notify: Callable[[int, bytes], bytes], on_error: Callable[[int], None]
    ) -> None: ...
    def unwatch(self) -> None: ...
    def close(self) -> None: ...


def key_of(initiator_port: str, list_id: int) -> str:
    """The initiator's name (the port name without ``,i,0x<isid>``) and the list ID."""
    return f"{initiator_port.split(',')[0]}|{list_id}"


def _load(body: bytes) -> dict[str, Any]:
    """The object's JSON: the records under ``copies``, the gateways' clients beside them."""
    if not body:
        return {"format": FORMAT, "copies": {}}
    data = json.loads(body)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError("not a targetd copy record object")
    if not isinstance(data.get("copies"), dict):
        data["copies"] = {}
    return data


def _records(body: bytes) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = _load(body)["copies"]
    return records


def _dump(data: dict[str, Any], records: dict[str, dict[str, Any]]) -> bytes:
    return json.dumps({**data, "copies": records}, sort_keys=True).encode()


class SharedCopies:
    """The copy records of one RBD LU, in ``obj``."""

    def __init__(
        self,
        obj: RecordObject,
        lost_sense: bytes,
        me: str = "",
        reopen: Callable[[], RecordObject] | None = None,
    ) -> None:
        self.obj = obj
        self.lost_sense = lost_sense  # what a copy whose gateway is gone reads as
        self.me = me  # this gateway in the object: its relative target ports
        # A new client for the object, once the cluster blocklisted this one (fenced).
        self.reopen = reopen
        self._old: list[RecordObject] = []  # blocklisted clients, closed with this one
        self.peers_fenced = 0  # dead peers' watches this gateway blocklisted (tests, logs)
        self.live: dict[str, dict[str, Any]] = {}  # the copies this gateway runs, latest
        self._live_lock = threading.Lock()
        self._closed = False
        self._rewatching = False
        self._rewatch: threading.Thread | None = None
        try:
            if obj.read()[0] == 0:  # a watch needs the object; a lost race made it too
                obj.replace(0, 1, json.dumps({"format": FORMAT, "copies": {}}).encode())
            # This gateway's killed run's watch would hold every question: fenced if proved
            # dead (docs/rbd.md, "Locking").
            if me:  # a gateway's (only a gateway names its client in the object)
                fence_previous_run(obj, me, obj.address, _load)
            obj.watch(self._answer, self._lost_watch)
            self._name_client()
        except BaseException:
            obj.close()
            raise
        self._lane = Lane("copy-records")

    # -- the gateway running a copy -----------------------------------------------------
    def _answer(self, _notifier: int, payload: bytes) -> bytes:
        """On a librados thread: "do you run this copy?" answered with its live record."""
        try:
            key = json.loads(payload).get("key")
        except ValueError:
            return b""
        with self._live_lock:
            record = self.live.get(key)
        return b"" if record is None else json.dumps(record).encode()

    def _lost_watch(self, err: int) -> None:
        """The watch broke (the cluster was out of reach for a while): until it is back, a
        peer asked about this gateway's copies gets no answer and reports them failed (and
        they fail here too, at their next record). Watched again from a thread of its own:
        librados's callback thread must not wait on librados."""
        log.warning("%s: watch lost (%d); re-establishing", self.obj.name, err)
        with self._live_lock:
            if self._closed or self._rewatching:
                return
            self._rewatching = True
            self._rewatch = threading.Thread(
                target=self._watch_again, name="copy-records-rewatch", daemon=True
            )
            self._rewatch.start()

    def _watch_again(self) -> None:
        while not self._closed:
            try:
                self.obj.unwatch()
                self.obj.watch(self._answer, self._lost_watch)
                self._name_client()
            except OSError as err:
                if err.errno == errno.ESHUTDOWN and self.reopen is not None:
                    self._reconnect()  # blocklisted: the other gateway fenced this one
                    continue
                log.warning("%s: watching again failed: %s", self.obj.name, err)
                time.sleep(0.5)
                continue
            log.info("%s: watching again", self.obj.name)
            break
        with self._live_lock:
            self._rewatching = False

    def _reconnect(self) -> None:
        """Replace this gateway's blocklisted client by a new one."""
        assert self.reopen is not None
        try:
            new = self.reopen()
        except OSError as err:
            log.warning("%s: no new client: %s", self.obj.name, err)
            time.sleep(0.5)
            return
        # The old one may still be in use by a worker thread (its calls fail): closed last.
        self._old.append(self.obj)
        self.obj = new
        log.warning("%s: this gateway's client was blocklisted: rejoining as client %s",
                    new.name, new.instance_id)  # fmt: skip

    def _name_client(self) -> None:
        """Name this gateway's client in the object, for a peer to fence (blocking)."""
        if not self.me:
            return
        while True:
            version, body = self.obj.read()
            named = naming(_load(body), self.me, self.obj.instance_id, self.obj.address)
            if named is None:
                return
            if self.obj.replace(version, version + 1, json.dumps(named, sort_keys=True).encode()):
                return

    async def fence_peer(self, peer: str) -> None:
        """The gateway ``peer`` (its ports) is fenced (the cluster blocklisted its image
        client when this gateway broke its lock): blocklist its client of the copy records
        too, if its watch is silent, so that a question about its copies does not wait
        :data:`ASK_TIMEOUT` for a dead watch (scsi/watch_fence.py)."""
        try:
            fenced = await asyncio.get_running_loop().run_in_executor(
                None, fence_watch, self.obj, peer, _load
            )
        except (OSError, ValueError) as err:
            log.warning("%s: the fenced gateway's watch not blocklisted: %s", self.obj.name, err)
            return
        self.peers_fenced += int(fenced)

    async def publish(self, record: dict[str, Any]) -> bool:
        """Record a copy this gateway runs; False if another gateway has declared it failed
        (this gateway stopped answering for a while): the copy must stop and fail."""
        key = key_of(record["initiator"], record["list_id"])
        with self._live_lock:
            if record["state"] == "running":
                self.live[key] = record
            else:
                self.live.pop(key, None)
        return await self._lane.run(self._write, key, record)

    def _write(self, key: str, record: dict[str, Any] | None) -> bool:
        while True:
            version, body = self.obj.read()
            data = _load(body)
            records = data["copies"]
            stored = records.get(key) or {}
            taken = bool(stored.get(TAKEN_OVER))
            if record is not None and taken and stored.get("copy") == record.get("copy"):
                return False  # a peer's verdict on this copy is final
            if record is None and taken:
                if stored.get("reported"):
                    return True
                # Kept, reported, so that the copy's gateway, if it wakes, still finds it.
                records[key] = {**stored, "reported": True}
            elif record is None:
                if key not in records:
                    return True
                records.pop(key)
            else:
                records[key] = {**record, "by": self.obj.instance_id}
            if self.obj.replace(version, version + 1, _dump(data, records)):
                return True

    async def remove(self, initiator_port: str, list_id: int) -> None:
        """The copy's end was reported: its record goes."""
        key = key_of(initiator_port, list_id)
        with self._live_lock:
            self.live.pop(key, None)
        await self._lane.run(self._write, key, None)

    # -- a gateway asked about a copy it does not know ----------------------------------
    async def lookup(self, initiator_port: str, list_id: int) -> dict[str, Any] | None:
        """The copy's record as it stands now, None if the cluster has none."""
        key = key_of(initiator_port, list_id)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._lookup, key)

    def _lookup(self, key: str) -> dict[str, Any] | None:
        _, body = self.obj.read()
        record = _records(body).get(key)
        log.debug("copy record %s: %s", key, record)
        if record is None or record.get("reported"):
            return None
        if record["state"] != "running":
            return record
        for reply in self.obj.ask(json.dumps({"key": key}).encode(), ASK_TIMEOUT):
            if reply:
                live: dict[str, Any] = json.loads(reply)
                return live
        return self._declare_lost(key)

    def _declare_lost(self, key: str) -> dict[str, Any] | None:
        """No gateway runs the copy: it failed, at the progress last recorded."""
        while True:
            version, body = self.obj.read()
            data = _load(body)
            records = data["copies"]
            record = records.get(key)
            if record is None or record.get("reported"):
                return None
            if record["state"] != "running":
                return record  # its gateway ended it (or another peer did) meanwhile
            record.update(state="failed", sense=self.lost_sense.hex(), by=self.obj.instance_id)
            record[TAKEN_OVER] = True
            log.warning(
                "copy list %s of %s: its gateway does not answer; reported failed after "
                "%d segments, %d bytes",
                record["list_id"],
                record["initiator"],
                record["segments_processed"],
                record["bytes_done"],
            )
            if self.obj.replace(version, version + 1, _dump(data, records)):
                return record

    def close(self) -> None:
        with self._live_lock:
            self._closed = True
            rewatch = self._rewatch
        if rewatch is not None:
            rewatch.join()  # it must not call librados on a closed object
        self._lane.shutdown(wait=True)
        self.obj.close()
        for old in self._old:
            old.close()
