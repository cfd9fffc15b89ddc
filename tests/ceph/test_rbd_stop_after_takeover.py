"""A surviving gateway's stop is quick (docs/rbd.md, "Two gateways"; docs/operations.md
"Signals"): gateway A held the image's lock and was killed with kill -9; B took the lock
over, breaking A's (which blocklists A's client). A's watch of the image header lives on in
the OSD until ``osd_client_watch_timeout`` (30 s by default) expires it, and librbd's close
of B notified the header's watchers of the lock's release and waited for that dead watch
to answer each notify (5 s each, 10 s per image). The takeover, which proved A dead,
now blocklists A's client of every LU's image as it did its watches of the reservations and
copy records: B's stop takes well under a second after the drain."""

from __future__ import annotations

import json
import os
import signal
import time

from ceph_fixtures import ImageFactory
from cluster import CephCluster
from gateways import PairFactory, gateway_pair
from test_rbd_gateways import block, login, write10, write_ok


def test_a_gateway_that_took_over_from_a_dead_peer_stops_in_seconds(
    ceph_cluster: CephCluster, new_image: ImageFactory, gateway_pair: PairFactory
) -> None:
    # The default watch timeout, so that A's dead watch outlives B's stop (the session's
    # 5 s would let it expire during the takeover).
    ceph_cluster.ceph("tell", "osd.*", "config", "set", "osd_client_watch_timeout", "30")
    try:
        first, second = new_image("16M"), new_image("16M")
        pair = gateway_pair(first, more_images=(second,), hold_ms=0, takeover_ms=1000)
        ini_a = login(pair.a.port, "a")
        write_ok(ini_a, 0, block(0))  # A holds LUN 0's lock; LUN 1's nobody
        pair.kill(pair.a)
        ini_a.close()
        ini_b = login(pair.b.port, "b")
        write_ok(ini_b, 1, block(1))  # B breaks A's lock of LUN 0 and takes it
        ini_b.clear_unit_attentions(lun=1)
        status, _, sense = ini_b.command(write10(0, 1), data=block(2), lun=1)
        assert (status, sense) == (0, b""), sense  # B takes LUN 1's free lock
        ini_b.close()
        # The takeover proved A dead: its client of LUN 1's image is blocklisted too (its
        # watch of the gateway object is silent), so the OSDs drop its header watch.
        info = json.loads(ceph_cluster.rbd("info", "--format", "json",
                                           f"{ceph_cluster.pool}/{second}"))  # fmt: skip
        pair.wait_log(pair.b, f"targetd.gateway.{info['id']}: the fenced gateway 1's watch "
                              "blocklisted")  # fmt: skip
        assert pair.b.proc is not None
        started = time.monotonic()
        os.kill(pair.b.proc.pid, signal.SIGTERM)
        status = pair.b.proc.wait(60)
        took = time.monotonic() - started
        print(f"surviving gateway's stop: {took:.2f} s, status {status}")
        assert status == 0, pair.b.stderr
        assert 'event="lock taken"' in pair.b.stderr or "event=lock taken" in pair.b.stderr
        assert "cluster work not done" not in pair.b.stderr, pair.b.stderr
        assert took < 4.0, f"B's stop took {took:.1f} s:\n{pair.b.stderr}"
    finally:
        ceph_cluster.ceph("tell", "osd.*", "config", "set", "osd_client_watch_timeout", "5")
