"""A daemon restarted after kill -9 fences its previous run's image client, and only that
(docs/rbd.md, "Locking"; backing/rbd_previous.py).

The killed run's watch on the image header stays until the OSDs expire it (5 s on the test
cluster, 30 s by default); meanwhile the restarted daemon's first write waited for the dead
client's lock, and each of librbd's notifications (the lock's release at the stop) for the
silent watch. A restarted daemon blocklists the watcher at the address its previous run
recorded in its state directory, so the watch is gone by the time it serves; the same for
its client of the LU's reservations object (each change, and the stop, notified its
watchers: 2 s more for the silent one).
"""

from __future__ import annotations

import os
import signal
import time

from ceph_fixtures import ImageFactory, rbd_lun_toml, target_toml
from cluster import CephCluster
from conftest import DaemonFactory
from gateways import PairFactory, gateway_pair
from pair_scsi import BlockClient, read16, write16

IQN = "iqn.2026-11.org.targetd:rbd"
__all__ = ["gateway_pair"]  # a fixture


def watchers(cluster: CephCluster, image: str) -> list[str]:
    """The addresses watching the image's header (``rbd status``)."""
    out = cluster.rbd("status", f"{cluster.pool}/{image}")
    return [part.split("=", 1)[1] for line in out.splitlines()
            for part in line.split() if part.startswith("watcher=")]  # fmt: skip


def object_watchers(cluster: CephCluster, oid: str) -> list[str]:
    """The addresses watching a RADOS object (``rados listwatchers``)."""
    out = cluster._run("rados", "-c", str(cluster.conf), "-p", cluster.pool, "listwatchers", oid)
    return [part.split("=", 1)[1] for line in out.splitlines()
            for part in line.split() if part.startswith("watcher=")]  # fmt: skip


def blocklist(cluster: CephCluster) -> str:
    return cluster.ceph("osd", "blocklist", "ls")


def test_a_restart_after_kill9_fences_the_killed_runs_watch_at_once(
    ceph_cluster: CephCluster, new_image: ImageFactory, targetd_factory: DaemonFactory
) -> None:
    image = new_image("8M")
    daemon = targetd_factory(target_toml(rbd_lun_toml(ceph_cluster, image)))
    client = BlockClient(daemon.port, IQN, luns=(0,))
    client.ok(write16(0, 8), data=b"\x11" * 4096)  # takes the image's exclusive lock
    client.close()
    [killed] = watchers(ceph_cluster, image)
    [killed_pr] = object_watchers(ceph_cluster, f"targetd.pr.{image}")  # its reservations
    assert (daemon.state_dir / "rbd-clients").read_text().splitlines()[1:] == [
        killed, killed_pr]
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait()
    daemon.start()  # well within the 5 s the OSDs keep the killed run's watch
    now = watchers(ceph_cluster, image)
    assert killed not in now and len(now) == 1, (killed, now)
    now_pr = object_watchers(ceph_cluster, f"targetd.pr.{image}")
    assert killed_pr not in now_pr and len(now_pr) == 1, (killed_pr, now_pr)
    assert killed in blocklist(ceph_cluster) and killed_pr in blocklist(ceph_cluster)
    assert f"blocklisted this daemon's previous run's client {killed}" in daemon.stderr
    started = time.monotonic()
    client = BlockClient(daemon.port, IQN, luns=(0,))
    client.ok(write16(8, 8), data=b"\x22" * 4096)  # breaks the dead client's lock
    assert client.ok(read16(0, 16), read=8192) == b"\x11" * 4096 + b"\x22" * 4096
    print(f"first write after the restart: {time.monotonic() - started:.2f} s")
    client.close()
    started = time.monotonic()
    assert daemon.stop() == 0
    print(f"stop after the restart: {time.monotonic() - started:.2f} s")
    assert "cluster work not done at stop" not in daemon.stderr


def test_another_live_client_of_the_image_is_never_fenced(
    ceph_cluster: CephCluster, new_image: ImageFactory, targetd_factory: DaemonFactory
) -> None:
    """Two daemons on the same image, each with its own state directory: the one restarted
    after kill -9 fences its own killed client, not the other daemon's live one."""
    image = new_image("8M")
    config = target_toml(rbd_lun_toml(ceph_cluster, image))
    other = targetd_factory(config)
    [live] = watchers(ceph_cluster, image)
    daemon = targetd_factory(config)
    [killed] = [a for a in watchers(ceph_cluster, image) if a != live]
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait()
    daemon.start()
    now = watchers(ceph_cluster, image)
    assert live in now and killed not in now, (live, killed, now)
    assert live not in blocklist(ceph_cluster)
    client = BlockClient(other.port, IQN, luns=(0,))  # the live one still writes
    client.ok(write16(0, 8), data=b"\x33" * 4096)
    client.close()


def test_a_gateway_restarted_after_kill9_fences_its_killed_runs_watches_only(
    ceph_cluster: CephCluster, new_image: ImageFactory, gateway_pair: PairFactory
) -> None:
    """Gateway A killed with kill -9 and restarted at once: its killed run's watches of the
    image, the reservations and the copy records are gone as it serves again (each record
    names its client under its ports, and its state directory names it as its own); gateway
    B's are all still there."""
    image = new_image("8M")
    pair = gateway_pair(image)
    objects = [f"targetd.pr.{image}", f"targetd.copies.{image}"]

    def clients(gateway: object) -> set[str]:
        state = gateway.state_dir  # type: ignore[attr-defined]
        return set((state / "rbd-clients").read_text().splitlines()[1:])

    def all_watchers() -> dict[str, list[str]]:
        found = {oid: object_watchers(ceph_cluster, oid) for oid in objects}
        return {**found, "header": watchers(ceph_cluster, image)}

    a_clients, b_clients = clients(pair.a), clients(pair.b)
    before = all_watchers()
    killed = {where: [w for w in found if w in a_clients] for where, found in before.items()}
    live = {where: [w for w in found if w in b_clients] for where, found in before.items()}
    assert all(len(w) == 1 for w in [*killed.values(), *live.values()]), (killed, live)
    pair.kill(pair.a)
    pair.a.start()
    after = all_watchers()
    for where, found in after.items():
        assert killed[where][0] not in found, (where, killed[where], found)
        assert live[where][0] in found, (where, live[where], found)
        assert len(found) == 2, (where, found)
    listed = blocklist(ceph_cluster)
    assert all(w[0] not in listed for w in live.values())
