"""What the iSCSI core needs to know, in its own terms: built by the daemon from its config.

The protocol machines never read the daemon's configuration; the daemon hands them a
:class:`Settings` (and rebuilds it when a reload changes the configuration), as aioquic's
connection takes a ``QuicConfiguration``. Time comes in as numbers (``now``), never from a
clock of the core's own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Secret:
    """A CHAP name and secret."""

    user: str
    secret: str

    def __repr__(self) -> str:  # secrets never reach a log line
        return f"Secret(user={self.user!r}, secret=<hidden>)"


@dataclass(frozen=True, slots=True)
class PortalSettings:
    """The portal a connection came in on, and what SendTargets says of it."""

    tpgt: int = 1
    advertised: str = "127.0.0.1:3260"
    # Targets served by another process (docs/workers.md): target name -> the port that
    # process listens on at the address this portal was reached by. A normal-session login
    # for one of them is redirected there (RFC 7143 11.13.5); port 0: that process is
    # being restarted, and the login is answered "service unavailable".
    moved: tuple[tuple[str, int], ...] = ()
    # The host a redirect names: the portal's configured ``advertise`` host (initiators
    # reach us through an address translation: the same one reaches the other port), or
    # "": the address the connection came in on.
    redirect_host: str = ""

    def moved_port(self, target: str) -> int | None:
        return next((port for name, port in self.moved if name == target), None)


@dataclass(frozen=True, slots=True)
class TargetSettings:
    name: str
    alias: str = ""
    # Initiator names allowed to log in; empty means any initiator.
    allowed_initiators: tuple[str, ...] = ()
    chap: Secret | None = None  # the initiator must authenticate with this
    mutual_chap: Secret | None = None  # the target authenticates itself with this


@dataclass(frozen=True, slots=True)
class Settings:
    targets: tuple[TargetSettings, ...] = ()
    portals: tuple[PortalSettings, ...] = (PortalSettings(),)
    discovery_chap: Secret | None = None
    discovery_mutual_chap: Secret | None = None
    # Limits we declare at login and enforce on the wire.
    max_recv_data_segment_length: int = 262144
    max_burst_length: int = 16776192
    first_burst_length: int = 262144
    max_outstanding_r2t: int = 8
    max_connections_per_session: int = 1
    # Timers, in seconds: keepalive ping after silence, and the time to answer it; the
    # time to log in, and between login requests.
    nop_interval: float = 30.0
    nop_timeout: float = 30.0
    login_timeout: float = 15.0
    login_step_timeout: float = 5.0

    def target(self, name: str) -> TargetSettings | None:
        return next((t for t in self.targets if t.name == name), None)
