"""Two ``targetd serve`` gateways exporting the same RBD image, for the Ceph tier.

``gateway_pair(...)`` (a fixture) starts gateway A (port group 1, tpgt 1) and gateway B
(port group 2, tpgt 2) on free loopback ports, each with a ``[gateway]`` table naming the
other as its peer, serving one target whose LUN 0 is the given image. Both are stopped by
PID at teardown. Other tests that need two daemons on one image (persistent reservations in
the cluster) reuse it: ``from gateways import GatewayPair, gateway_pair``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ceph_fixtures import rbd_lun_toml
from cluster import CephCluster
from conftest import Daemon, free_port, log_level, report_daemons

IQN = "iqn.2026-11.org.targetd:gateways"


class ConfigDaemon(Daemon):
    """Listens where its configuration says (the fixture's --listen would replace it)."""

    def command(self) -> list[str]:
        return [*super().command()[: 4 + len(log_level())], "--state-dir", str(self.state_dir),
                "--config", str(self.config)]  # fmt: skip


def gateway_toml(
    cluster: CephCluster,
    image: str,
    *,
    port: int,
    tpgt: int,
    peer_port: int,
    peer_tpgt: int,
    hold_ms: int,
    takeover_ms: int,
    unit_attention: bool = True,
    extra_luns: str = "",
    metrics_port: int = 0,
    tables: str = "",
) -> str:
    metrics = f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n' if metrics_port else ""
    return f"""{metrics}{tables}
[[portal]]
listen = "127.0.0.1:{port}"
tpgt = {tpgt}
port_group = {tpgt}

[gateway]
hold_ms = {hold_ms}
takeover_ms = {takeover_ms}
unit_attention = {str(unit_attention).lower()}

[[gateway.peer]]
portal = "127.0.0.1:{peer_port}"
tpgt = {peer_tpgt}
port_group = {peer_tpgt}

[[target]]
name = "{IQN}"
{rbd_lun_toml(cluster, image)}
{extra_luns}
"""


@dataclass
class GatewayPair:
    """Gateway ``a`` (group/tpgt 1) and ``b`` (group/tpgt 2) on one image."""

    cluster: CephCluster
    image: str
    a: ConfigDaemon
    b: ConfigDaemon
    daemons: list[ConfigDaemon] = field(default_factory=list)
    metrics_ports: dict[str, int] = field(default_factory=dict)  # "a"/"b": the endpoint

    @property
    def gateways(self) -> tuple[ConfigDaemon, ConfigDaemon]:
        return self.a, self.b

    def url(self, gateway: Daemon, lun: int = 0) -> str:
        return f"iscsi://127.0.0.1:{gateway.port}/{IQN}/{lun}"

    def kill(self, gateway: Daemon, sig: int = signal.SIGKILL) -> None:
        assert gateway.proc is not None
        os.kill(gateway.proc.pid, sig)
        if sig == signal.SIGKILL:
            gateway.proc.wait()

    def wait_log(self, gateway: Daemon, marker: str, count: int = 1, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while gateway.stderr.count(marker) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"{marker!r} x{count} not logged:\n{gateway.stderr}")
            time.sleep(0.05)

    def lock_moves(self, gateway: Daemon) -> int:
        return gateway.stderr.count('"lock taken"') + gateway.stderr.count("event=lock taken")


PairFactory = Callable[..., GatewayPair]


@pytest.fixture
def gateway_pair(
    ceph_cluster: CephCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[PairFactory]:
    """``gateway_pair(image, *, hold_ms=1000, takeover_ms=3000, unit_attention=True,
    more_images=(), metrics=False, start=True, tables="", own_luns={})``: LUN 0 is ``image``,
    LUN 1, 2... ``more_images``; with ``metrics``, each serves Prometheus metrics
    (``metrics_ports``); ``tables``: more TOML tables for both (``[pairs]``), or ``"a"``/``"b"``
    -> that gateway's (a survivor that copies faster than the gateway it outlives); ``own_luns``:
    ``"a"``/``"b"`` -> ``[[target.lun]]`` tables of that gateway alone (a tape, a file sink).
    """
    made: list[GatewayPair] = []
    started: list[Daemon] = []  # both gateways of every pair: their logs end a failure's report
    report_daemons(request.node, started)

    def make(
        image: str,
        *,
        hold_ms: int = 1000,
        takeover_ms: int = 3000,
        unit_attention: bool = True,
        more_images: tuple[str, ...] = (),
        metrics: bool = False,
        start: bool = True,
        tables: str | dict[str, str] = "",
        own_luns: dict[str, str] | None = None,
    ) -> GatewayPair:
        n = len(made)
        port_a, port_b = free_port(), free_port()
        daemons = []
        metrics_ports = {"a": free_port(), "b": free_port()} if metrics else {}
        for name, port, tpgt, peer_port, peer_tpgt in (
            ("a", port_a, 1, port_b, 2),
            ("b", port_b, 2, port_a, 1),
        ):
            config = tmp_path / f"gw{n}{name}.toml"
            config.write_text(
                gateway_toml(
                    ceph_cluster, image, port=port, tpgt=tpgt, peer_port=peer_port,
                    peer_tpgt=peer_tpgt, hold_ms=hold_ms, takeover_ms=takeover_ms,
                    unit_attention=unit_attention,
                    extra_luns="".join(
                        rbd_lun_toml(ceph_cluster, extra, lun=n)
                        for n, extra in enumerate(more_images, start=1)
                    ) + (own_luns or {}).get(name, ""),
                    metrics_port=metrics_ports.get(name, 0),
                    tables=tables if isinstance(tables, str) else tables.get(name, ""),
                )
            )  # fmt: skip
            state = tmp_path / f"gw{n}{name}-state"
            state.mkdir()
            log = tmp_path / f"gw{n}{name}.log"
            daemons.append(ConfigDaemon(port, state, config, IQN, log))
        pair = GatewayPair(ceph_cluster, image, daemons[0], daemons[1], daemons, metrics_ports)
        made.append(pair)
        started.extend(daemons)
        if start:
            for daemon in daemons:
                daemon.start()
        return pair

    yield make
    for pair in made:
        for daemon in pair.daemons:
            if daemon.proc is not None and daemon.proc.poll() is None:
                os.kill(daemon.proc.pid, signal.SIGCONT)  # a SIGSTOPped one must hear TERM
            daemon.stop()
