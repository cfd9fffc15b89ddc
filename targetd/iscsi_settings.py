"""The daemon's configuration, told to the iSCSI core in its own terms (targetd.iscsi.settings)."""

from __future__ import annotations

import os

from targetd.config import ChapSecret, Config, Portal, TargetConfig
from targetd.iscsi.settings import PortalSettings, Secret, Settings, TargetSettings


def secret(chap: ChapSecret | None) -> Secret | None:
    return None if chap is None else Secret(chap.user, chap.secret)


def portal_settings(portal: Portal, moved: tuple[tuple[str, int], ...] = ()) -> PortalSettings:
    # An address initiators reach us by through a translation also names the host to
    # redirect them to (targetd.workers); without one, the address they dialled does.
    host = portal.advertise.rsplit(":", 1)[0] if portal.advertise else ""
    return PortalSettings(
        tpgt=portal.tpgt, advertised=portal.advertised, moved=moved, redirect_host=host
    )


def target_settings(target: TargetConfig) -> TargetSettings:
    return TargetSettings(
        name=target.name,
        alias=target.alias,
        allowed_initiators=target.allowed_initiators,
        chap=secret(target.chap),
        mutual_chap=secret(target.mutual_chap),
    )


# The keepalive (docs/iscsi.md): a ping after this many seconds of silence, and the time
# to answer it. TARGETD_NOP_INTERVAL and TARGETD_NOP_TIMEOUT change them, for tests.
NOP_INTERVAL = float(os.environ.get("TARGETD_NOP_INTERVAL", "30"))
NOP_TIMEOUT = float(os.environ.get("TARGETD_NOP_TIMEOUT", "30"))


def build(config: Config) -> Settings:
    return Settings(
        targets=tuple(target_settings(t) for t in config.targets),
        # A gateway advertises its peer's portals too: discovery through either finds
        # both paths to every LU.
        portals=tuple(portal_settings(p) for p in config.portals)
        + tuple(
            PortalSettings(tpgt=peer.tpgt, advertised=peer.address)
            for peer in (config.gateway.peers if config.gateway else ())
        ),
        discovery_chap=secret(config.discovery_chap),
        discovery_mutual_chap=secret(config.discovery_mutual_chap),
        max_recv_data_segment_length=config.max_recv_data_segment_length,
        max_burst_length=config.max_burst_length,
        first_burst_length=config.first_burst_length,
        max_outstanding_r2t=config.max_outstanding_r2t,
        max_connections_per_session=config.max_connections_per_session,
        nop_interval=NOP_INTERVAL,
        nop_timeout=NOP_TIMEOUT,
    )
