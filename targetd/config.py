"""Configuration: what targets, portals, LUNs, ACLs and CHAP secrets the daemon serves.

The dataclasses here are the one shape every part of the daemon reads. ``load_config``
turns a TOML file into them and says which key is wrong when one is; ``default_config``
is what ``targetd serve`` runs with no file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 3260
DEFAULT_TARGET = "iqn.2026-11.org.targetd:default"
GiB = 1 << 30


class ConfigError(Exception):
    """A bad configuration: names the key and the problem (``targetd serve`` exits 2)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True, slots=True)
class ChapSecret:
    user: str
    secret: str

    def __repr__(self) -> str:  # secrets never reach a log line
        return f"ChapSecret(user={self.user!r}, secret=<hidden>)"


@dataclass(frozen=True, slots=True)
class Portal:
    """A listening address, and the address SendTargets advertises for it."""

    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_PORT
    advertise: str | None = None  # "HOST:PORT" initiators should dial; None = the listen address
    tpgt: int = 1

    @property
    def advertised(self) -> str:
        if self.advertise:
            return self.advertise
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


@dataclass(frozen=True, slots=True)
class LunConfig:
    lun: int
    kind: str = "block"  # "block" | "tape"
    path: Path = Path("lun.img")
    size: int = GiB
    block_size: int = 512
    read_only: bool = False
    product: str | None = None


@dataclass(frozen=True, slots=True)
class TargetConfig:
    name: str
    alias: str = ""
    luns: tuple[LunConfig, ...] = ()
    # Initiator names allowed to log in; empty means any initiator.
    allowed_initiators: tuple[str, ...] = ()
    chap: ChapSecret | None = None  # the initiator must authenticate with this
    mutual_chap: ChapSecret | None = None  # the target authenticates itself with this


@dataclass(frozen=True, slots=True)
class Config:
    portals: tuple[Portal, ...] = (Portal(),)
    targets: tuple[TargetConfig, ...] = ()
    state_dir: Path = Path("var/targetd")
    discovery_chap: ChapSecret | None = None
    discovery_mutual_chap: ChapSecret | None = None
    max_sessions: int = 64
    max_connections_per_session: int = 1
    # Limits we declare at login and enforce on the wire.
    max_recv_data_segment_length: int = 262144
    max_burst_length: int = 16 * 1024 * 1024
    first_burst_length: int = 262144
    max_outstanding_r2t: int = 8
    extras: dict[str, object] = field(default_factory=dict)

    def target(self, name: str) -> TargetConfig | None:
        return next((t for t in self.targets if t.name == name), None)


def default_config(state_dir: Path = Path("var/targetd")) -> Config:
    """One target: LUN 0 and LUN 1 are 1 GiB sparse block LUNs (a future pair)."""
    luns = (
        LunConfig(0, "block", state_dir / "lun0.img", GiB),
        LunConfig(1, "block", state_dir / "lun1.img", GiB),
    )
    return Config(
        targets=(TargetConfig(DEFAULT_TARGET, alias="targetd", luns=luns),),
        state_dir=state_dir,
    )
