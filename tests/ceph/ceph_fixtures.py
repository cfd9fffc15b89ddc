"""Fixtures of the Ceph tier: one real cluster for the whole run, images, RBD LUN configs.

The cluster (tests/ceph/cluster.py: one monitor, one memstore OSD on loopback) is started
once, on the first test that asks for it, and stopped by PID when the session ends.
tests/conftest.py offers ``ceph_cluster`` and ``new_image`` to every test module; the
cluster is also kept in a module global, so a module that imports the fixture itself
still gets the same cluster.

A missing Ceph package is a failure that says how to install it, never a skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cluster import CephCluster, ClusterError, missing_tools

_shared: dict[str, object] = {"cluster": None, "users": 0}


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    missing = missing_tools()
    if missing:
        pytest.fail(
            f"Ceph tools missing ({', '.join(missing)}): run scripts/install-test-deps.sh",
            pytrace=False,
        )
    cluster = _shared["cluster"]
    if cluster is None:
        try:
            cluster = CephCluster(tmp_path_factory.mktemp("ceph")).start()
        except ClusterError as exc:
            pytest.fail(f"cannot start the test cluster: {exc}", pytrace=False)
        _shared["cluster"] = cluster
    _shared["users"] = int(_shared["users"]) + 1  # type: ignore[call-overload]
    assert isinstance(cluster, CephCluster)
    yield cluster
    _shared["users"] = int(_shared["users"]) - 1  # type: ignore[call-overload]
    if not _shared["users"]:
        cluster.stop()
        _shared["cluster"] = None


ImageFactory = Callable[..., str]


@pytest.fixture
def new_image(ceph_cluster: CephCluster) -> ImageFactory:
    """``new_image(size="64M", create=True) -> name``: a fresh image name in the pool,
    made with ``rbd create`` unless ``create`` is false."""

    def make(size: str = "64M", *, create: bool = True) -> str:
        name = f"img-{uuid.uuid4().hex[:10]}"
        if create:
            ceph_cluster.rbd("create", "--size", size, f"{ceph_cluster.pool}/{name}")
        return name

    return make


def rbd_lun_toml(
    cluster: CephCluster,
    image: str,
    *,
    lun: int = 0,
    create_size: str | None = None,
    cache: str = "none",
    block_size: int = 512,
) -> str:
    """One ``[[target.lun]]`` table for an RBD LUN on the test cluster."""
    lines = [
        "[[target.lun]]",
        f"lun = {lun}",
        'kind = "rbd"',
        f'pool = "{cluster.pool}"',
        f'image = "{image}"',
        f'ceph_conf = "{cluster.conf}"',
        f'cache = "{cache}"',
        f"block_size = {block_size}",
    ]
    if create_size is not None:
        lines += ["create = true", f'size = "{create_size}"']
    return "\n".join(lines) + "\n"


def target_toml(*luns: str, iqn: str = "iqn.2026-11.org.targetd:rbd") -> str:
    return f'[[target]]\nname = "{iqn}"\n\n' + "\n".join(luns)


def export_image(cluster: CephCluster, image: str, dest: Path) -> bytes:
    """The image's bytes as the cluster holds them (``rbd export``)."""
    if dest.exists():
        dest.unlink()
    cluster.rbd("export", "--no-progress", f"{cluster.pool}/{image}", str(dest))
    return dest.read_bytes()
