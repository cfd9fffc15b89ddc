"""Two targetd gateways on one RBD image, as the two-gateway benchmarks (bench/failover.py,
bench/pr_latency.py) configure them and log in to them. Importing it puts tests/ceph (the
throwaway cluster), tests (the raw initiator) and the repository on the path."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests" / "ceph"))
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT))
from cluster import CephCluster  # noqa: E402
from raw_initiator import RawInitiator  # noqa: E402
from targets import LOOPBACK  # noqa: E402

__all__ = ["CephCluster", "RawInitiator", "gateway_config", "login"]


def gateway_config(
    iqn: str, conf: Path, image: str, port: int, tpgt: int, peer: int, gateway: str
) -> str:
    """Gateway ``tpgt`` (1 or 2) of LUN 0 of ``iqn`` on ``image``, the other gateway at
    ``peer``; ``gateway``: the settings of its [gateway] table (TOML lines)."""
    return f"""
[[portal]]
listen = "{LOOPBACK}:{port}"
tpgt = {tpgt}
port_group = {tpgt}

[gateway]
{gateway}

[[gateway.peer]]
portal = "{LOOPBACK}:{peer}"
tpgt = {3 - tpgt}
port_group = {3 - tpgt}

[[target]]
name = "{iqn}"
[[target.lun]]
lun = 0
kind = "rbd"
pool = "rbd"
image = "{image}"
ceph_conf = "{conf}"
"""


def login(port: int, host: str, iqn: str) -> RawInitiator:
    """A session from initiator ``...bench:HOST`` to ``iqn``, its unit attentions taken."""
    ini = RawInitiator(port, name=f"iqn.2026-11.org.targetd.bench:{host}")
    ini.login(iqn)
    ini.clear_unit_attentions()
    return ini
