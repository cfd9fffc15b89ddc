"""The previous run's rados clients: proved dead, fenced at each image's open (docs/rbd.md,
"Locking").

A daemon killed with kill -9 leaves its image clients' watches on each image's header until
the OSDs expire them (``osd_client_watch_timeout``, 30 s by default). Until then the
restarted daemon's first write waits for the dead client's exclusive lock (librbd breaks a
lock only once its owner stopped watching), and every notification librbd sends (a lock's
acquire and release) waits up to 5 s for the silent watch.

The state directory proves which clients are dead. The daemon holds its flock for its
whole life (targetd/state_lock.py) and records each rados client's address in
``STATE_DIR/rbd-clients`` as the client connects, before it opens any image. A daemon that
holds the flock knows the process that wrote the file has ended (the kernel drops a flock
only with its holder, kill -9 included), and with it every client the file names: a rados
client lives in its process. At each image's open, a watcher of the header at one of those
addresses is blocklisted, so the OSDs drop its watch at once and librbd breaks its lock
without waiting. An address is the client's IP, port and a random nonce of its own: no
other client has it. Only what this host wrote is taken (the file names its host: a state
directory copied elsewhere proves nothing), only by a daemon that is one process (workers
share the directory, and a worker's clients die alone), and a watcher at any other address
is never touched.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import threading
from ctypes import byref, c_int64, c_size_t, c_uint64, c_void_p
from pathlib import Path

from backing.rbd_lib import check, lib

log = logging.getLogger("targetd.rbd")

FILE_NAME = "rbd-clients"

_lock = threading.Lock()
_record: Path | None = None
_previous: frozenset[str] = frozenset()
_fresh = False  # the next record starts the file


class Watcher(ctypes.Structure):
    """rbd_image_watcher_t"""

    _fields_ = [("addr", ctypes.c_char_p), ("id", c_int64), ("cookie", c_uint64)]


def _host_line() -> str:
    return f"host {socket.gethostname()}"


def take_over(state_dir: Path) -> frozenset[str]:
    """With ``state_dir``'s flock held and before any rados client connects: the addresses
    the previous run of this host recorded become fenceable, and this run's clients are
    recorded from the first on (the file is written afresh then: no file for a daemon
    without RBD LUNs)."""
    global _record, _previous, _fresh
    path = state_dir / FILE_NAME
    try:
        lines = path.read_text(encoding="ascii", errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    except OSError as err:
        log.warning("%s: not read (%s): a killed run's image clients are not fenced", path, err)
        lines = []
    previous = frozenset(lines[1:]) if lines[:1] == [_host_line()] else frozenset()
    with _lock:
        _record, _previous, _fresh = path, previous - {""}, True
    return _previous


def stop_recording() -> None:
    """Forget the state directory (the daemon's run is over)."""
    global _record, _previous
    with _lock:
        _record, _previous = None, frozenset()


def record(address: str) -> None:
    """Note this run's new client at ``address`` (blocking), before it opens an image: a
    kill -9 from now on leaves its watches to the next run's :func:`fence`."""
    global _fresh
    with _lock:
        path, fresh, _fresh = _record, _fresh, False
    if path is None:
        return
    try:
        with path.open("w" if fresh else "a", encoding="ascii") as out:
            out.write(f"{_host_line()}\n{address}\n" if fresh else address + "\n")
            out.flush()
            os.fsync(out.fileno())
    except OSError as err:
        log.warning("%s: client %s not recorded (%s)", path, address, err)


def is_previous(address: str) -> bool:
    """Whether ``address`` is a client of the previous run, proved dead."""
    with _lock:
        return address in _previous


def fence(cluster_handle: c_void_p, image: c_void_p, name: str, own: str) -> list[str]:
    """Blocklist every watcher of ``image``'s header at an address the previous run
    recorded (blocking: at the open); the addresses fenced. A failure is logged: the image
    then waits for the dead watch as before."""
    with _lock:
        previous = _previous
    if not previous:
        return []
    try:
        dead = sorted({a for a in _watcher_addresses(image) if a in previous and a != own})
    except OSError as err:
        log.warning("%s: its watchers not read (%s): a killed run's watch is waited for",
                    name, err)  # fmt: skip
        return []
    fenced = []
    for address in dead:
        ret = lib().rados_blocklist_add(cluster_handle, address.encode(), 0)
        if ret < 0:
            log.warning("%s: the previous run's client %s not blocklisted (%s): its watch"
                        " is waited for", name, address, os.strerror(-ret))  # fmt: skip
            continue
        log.info("%s: blocklisted this daemon's previous run's client %s (killed: its watch"
                 " held the image)", name, address)  # fmt: skip
        fenced.append(address)
    return fenced


def _watcher_addresses(image: c_void_p) -> list[str]:
    count = c_size_t(8)
    while True:
        table = (Watcher * count.value)()
        ret = lib().rbd_watchers_list(image, table, byref(count))
        if ret != -errno.ERANGE:
            break
    check(ret, "rbd_watchers_list")
    found = [(table[i].addr or b"").decode() for i in range(count.value)]
    lib().rbd_watchers_list_cleanup(table, count.value)
    return found


__all__ = ["FILE_NAME", "fence", "is_previous", "record", "stop_recording", "take_over"]
