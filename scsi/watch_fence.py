"""Fencing a dead gateway's watch of a shared RADOS object (docs/rbd.md, "Two gateways").

Every gateway watches the objects it shares with the others (the reservations, the copy
records) and names, in the object's JSON, its client of it under ``gateways`` (its client id)
and ``addresses`` (that client's address, as the blocklist names it). A gateway killed with
kill -9 leaves its watch behind until the OSDs expire it (``osd_client_watch_timeout``), and
every notification waits for it until then. Once the other gateway broke its lock of any
LU's image (the cluster blocklisted its image client), it blocklists that watch's client of
every LU's objects too: only if the watch is silent now, since one that answers is the
gateway restarted meanwhile, as a new client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from backing import rbd_previous

log = logging.getLogger(__name__)

# The payload a gateway sends to learn which watches answer; every watcher acks it.
PROBE = b'{"probe": true}'
# How long a fenced gateway's watch may take to answer before it is taken for dead. A live
# watch (a gateway restarted meanwhile) answers a probe in milliseconds.
FENCE_PROBE_TIMEOUT = 1.0


class FenceableObject(Protocol):
    name: str
    instance_id: int

    def read(self) -> tuple[int, bytes]: ...
    def probe(self, payload: bytes, timeout: float) -> tuple[list[int], list[int]]: ...
    def blocklist(self, address: str) -> None: ...


def naming(record: dict[str, Any], me: str, client: int, address: str) -> dict[str, Any] | None:
    """``record`` naming ``me``'s client ``client`` at ``address``; None if it already does."""
    gateways = {**(record.get("gateways") or {}), me: client}
    addresses = {**(record.get("addresses") or {}), me: address}
    if gateways == record.get("gateways") and addresses == record.get("addresses"):
        return None
    return {**record, "gateways": gateways, "addresses": addresses}


def fence_watch(
    obj: FenceableObject, peer: str, parse: Callable[[bytes], dict[str, Any] | None]
) -> bool:
    """Blocklist the client the object's record names for gateway ``peer`` (its ports), if
    its watch is silent; whether it was (blocking: a worker thread's)."""
    _, body = obj.read()
    record = parse(body)
    if record is None:
        return False
    client = (record.get("gateways") or {}).get(peer)
    address = (record.get("addresses") or {}).get(peer)
    if client is None or not address or client == obj.instance_id:
        log.info("%s: no client of gateway %s in the record", obj.name, peer)
        return False
    acked, silent = obj.probe(PROBE, FENCE_PROBE_TIMEOUT)
    if client not in silent:  # answered (restarted meanwhile), or its watch is gone
        log.info("%s: gateway %s's client %s %s: not blocklisted", obj.name, peer, client,
                 "answers" if client in acked else "watches no more")  # fmt: skip
        return False
    obj.blocklist(address)
    log.warning("%s: the fenced gateway %s's watch blocklisted (client %s, %s)",
                obj.name, peer, client, address)  # fmt: skip
    return True


def fence_previous_run(
    obj: FenceableObject, me: str, own: str, parse: Callable[[bytes], dict[str, Any] | None]
) -> str | None:
    """Blocklist the client the object's record names for this gateway ``me`` if it is this
    daemon's previous run's, proved dead (backing/rbd_previous.py); its address if it was
    (blocking: at the start, before this client watches). A watch left by a kill -9 holds
    every notification to the object (the start's probe included) until the OSDs expire it.
    ``own`` is this run's client's address."""
    if not me:
        return None
    _, body = obj.read()
    address = ((parse(body) or {}).get("addresses") or {}).get(me)
    if not address or address == own or not rbd_previous.is_previous(address):
        return None
    try:
        obj.blocklist(address)
    except OSError as err:
        log.warning("%s: the previous run's client %s not blocklisted (%s): its watch is"
                    " waited for", obj.name, address, err)  # fmt: skip
        return None
    log.info("%s: blocklisted this daemon's previous run's client %s (killed: its watch"
             " held the object)", obj.name, address)  # fmt: skip
    return address
