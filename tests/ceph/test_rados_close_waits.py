"""A RADOS object's client closes only once the blocking calls running on other threads
have ended (backing/rados_object.py, docs/rbd.md "Persistent reservations"). A gateway
fenced by a reservation change rejoins as a new client and closes its old one; a write's
re-read of the reservations still running on the old client then waited forever, or
crashed the daemon (a segmentation fault: the initiator saw its connection closed, and
the log said nothing). A call made after the close is refused with ESHUTDOWN; one that
outlasts the close's bound is logged, and closes the client as it ends."""

from __future__ import annotations

import errno
import logging
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from ceph_fixtures import ceph_cluster
from cluster import CephCluster

from backing.rados_object import RadosObject

__all__ = ["ceph_cluster"]

NOTIFY = 3.0  # how long the notification waits for the silent watcher


def _client(cluster: CephCluster, oid: str) -> RadosObject:
    return RadosObject(ceph_conf=str(cluster.conf), client="client.admin", keyring="",
                       pool=cluster.pool, namespace="", oid=oid, timeout=10)  # fmt: skip


@pytest.fixture
def silent_watch(ceph_cluster: CephCluster) -> Iterator[tuple[str, RadosObject]]:
    """An object with a watcher that never acknowledges: a notification of it waits for
    its whole timeout (the call in flight a close meets)."""
    oid = f"close-waits-{uuid.uuid4().hex[:8]}"
    watcher = _client(ceph_cluster, oid)
    watcher.replace(0, 1, b"record")
    watcher.watch(lambda _notifier, _payload: None, lambda _err: None)
    yield oid, watcher
    watcher.remove()
    watcher.close()


class _Probe(threading.Thread):
    """``obj.probe`` on a thread of its own: its answer (or error) and when it ended."""

    def __init__(self, obj: RadosObject) -> None:
        super().__init__(daemon=True)
        self.obj = obj
        self.answer: object = None
        self.ended = 0.0
        self.start()
        deadline = time.monotonic() + 5
        while not obj.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert obj.running == "rados_notify2"

    def run(self) -> None:
        try:
            self.answer = self.obj.probe(b"anyone?", NOTIFY)
        except OSError as err:
            self.answer = err
        self.ended = time.monotonic()


def test_a_close_waits_for_a_call_in_flight_and_refuses_later_ones(
    ceph_cluster: CephCluster, silent_watch: tuple[str, RadosObject]
) -> None:
    oid, watcher = silent_watch
    obj = _client(ceph_cluster, oid)
    probe = _Probe(obj)
    obj.close()
    closed = time.monotonic()
    probe.join(NOTIFY + 10)
    # Before, the close shut the client down under the notification, which never returned.
    assert not probe.is_alive(), "the call in flight never returned after the close"
    assert probe.answer == ([], [watcher.instance_id])  # answered, and completely
    assert probe.ended <= closed
    assert obj.closed
    with pytest.raises(OSError) as refused:
        obj.read()
    assert refused.value.errno == errno.ESHUTDOWN


def test_a_call_outlasting_the_close_closes_the_client_as_it_ends(
    ceph_cluster: CephCluster,
    silent_watch: tuple[str, RadosObject],
    caplog: pytest.LogCaptureFixture,
) -> None:
    oid, watcher = silent_watch
    obj = _client(ceph_cluster, oid)
    probe = _Probe(obj)
    with caplog.at_level(logging.WARNING, logger="targetd.rados"):
        obj.close(wait=0.2)  # returns, the notification still waiting
    assert not obj.closed
    assert (
        f"{ceph_cluster.pool}/{oid}: rados calls still running 0.2 s after the close "
        "(rados_notify2): the client closes when they end"
    ) in caplog.text
    with pytest.raises(OSError) as refused:  # nothing new starts meanwhile
        obj.read()
    assert refused.value.errno == errno.ESHUTDOWN
    probe.join(NOTIFY + 10)
    assert probe.answer == ([], [watcher.instance_id])
    assert obj.closed  # by the probe's thread, as it ended
