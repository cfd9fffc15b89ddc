"""What ``targetctl status`` shows: a JSON-ready snapshot of the running daemon, and its text.

The snapshot is built on the event loop from the live objects (portals bound, sessions and
their connections, LUNs and their counters); sections owned by other subsystems (pairs,
copy operations) come from providers registered with :meth:`Operations.provide_status`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from targetd import reload_report

if TYPE_CHECKING:
    from targetd.server import TargetServer

START = time.time()
Provider = Callable[[], list[dict[str, Any]]]


def snapshot(server: TargetServer, providers: dict[str, Provider]) -> dict[str, Any]:
    config = server.config
    status: dict[str, Any] = {
        "daemon": {
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - START, 3),
            "state_dir": str(config.state_dir),
        },
        "portals": [
            {
                "listen": f"{p.listen_host}:{p.listen_port or _picked(server, p.listen_host)}",
                "advertise": p.advertised,
                "tpgt": p.tpgt,
            }
            for p in config.portals
        ],
        "listening": [f"{host}:{port}" for host, port in server.bound],
        "sessions": sessions(server),
        "luns": luns(server),
    }
    for section in ("pairs", "copy_operations"):
        status[section] = []
    for section, provider in providers.items():
        status[section] = provider()
    return status


def sessions(server: TargetServer) -> list[dict[str, Any]]:
    by_session: dict[int, list[dict[str, Any]]] = {}
    for c in server.connections:
        session = c.conn.session
        if session is None:
            continue
        by_session.setdefault(id(session), []).append(
            {"cid": c.conn.cid, "peer": c.peer, "commands_in_flight": len(c.conn.tasks)}
        )
    out = []
    for session in server.sessions:
        conns = sorted(by_session.get(id(session), []), key=lambda c: c["cid"])
        out.append(
            {
                "tsih": session.tsih,
                "isid": session.isid.hex(),
                "initiator": session.initiator_name,
                "target": session.target_name,
                "type": session.session_type.lower(),
                "connections": conns,
                "commands_in_flight": sum(c["commands_in_flight"] for c in conns),
            }
        )
    return sorted(out, key=lambda s: s["tsih"])


def luns(server: TargetServer) -> list[dict[str, Any]]:
    out = []
    for target in server.config.targets:
        runtime = server.targets.get(target.name)
        for lun in target.luns:
            stats = runtime.stats.get(lun.lun) if runtime is not None else None
            lu = runtime.scsi.luns.get(lun.lun) if runtime is not None else None
            # What the LU serves: an RBD LUN's is its image's (grown with it), not the
            # configuration's ``size``, which only sizes a new image.
            blocks = getattr(lu, "num_blocks", None)  # a block LU's
            size = lun.size if blocks is None else blocks * lun.block_size
            out.append(
                {
                    "target": target.name,
                    "lun": lun.lun,
                    "type": lun.kind,
                    "size": size,
                    "block_size": lun.block_size,
                    "path": str(lun.path),
                    "read_only": lun.read_only,
                    "stats": stats.as_dict() if stats is not None else {},
                }
            )
    return out


# -- text ------------------------------------------------------------------------------------
def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.4g} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _picked(server: TargetServer, host: str) -> int:
    """The port the kernel picked for a portal configured with port 0 (a worker's)."""
    return next((port for bound, port in server.bound if bound == host), 0)


def render(status: dict[str, Any]) -> str:
    d = status["daemon"]
    lines = [f"targetd pid {d['pid']}, up {d['uptime_seconds']:.0f}s, state {d['state_dir']}"]
    lines.append("Portals:")
    lines += [f"  {p['listen']} (tpgt {p['tpgt']}, advertised {p['advertise']})"
              for p in status["portals"]]  # fmt: skip
    if status.get("workers"):  # a portal and its worker processes
        lines.append("Workers:")
    for w in status.get("workers", []):
        lines.append(
            f"  worker {w['index']} pid {w['pid']} ({w['state']}, {w['restarts']} restarts):"
            f" ports {','.join(map(str, w['ports'])) or '-'},"
            f" targets {', '.join(w['targets']) or '- (a spare: a reload may place new ones here)'}"
        )
        if w.get("error") and w["state"] != "serving":  # why it is down, and until when
            retry = w.get("retry_in_seconds")
            when = "" if retry is None else f"; next start in {retry:g}s"
            lines.append(f"    down: {w['error']}{when}")
    lines.append(f"Sessions: {len(status['sessions'])}")
    for s in status["sessions"]:
        target = s["target"] or "(discovery)"
        where = f" (worker {s['worker']})" if "worker" in s else ""
        lines.append(
            f"  tsih {s['tsih']} {s['initiator']} isid {s['isid']} -> {target}{where},"
            f" {len(s['connections'])} connection(s),"
            f" {s['commands_in_flight']} command(s) in flight"
        )
        lines += [f"    cid {c['cid']} from {c['peer']}: {c['commands_in_flight']} in flight"
                  for c in s["connections"]]  # fmt: skip
    lines.append("LUNs:")
    for lun in status["luns"]:
        st = lun["stats"]
        ro = ", read-only" if lun["read_only"] else ""
        # A tape's records, a sink's files and a changer have no block size of their own
        # (a tape's is variable until an initiator sets one): only disks show theirs.
        if lun["type"] in ("block", "rbd"):
            shape = f" ({lun['block_size']}-byte blocks{ro})"
        else:
            shape = f" (capacity{ro})"
        lines.append(
            f"  {lun['target']} lun {lun['lun']}: {lun['type']} {_size(lun['size'])}{shape}"
            f" {lun['path']}"
        )
        if st:
            lines.append(
                f"    read {st['read_ops']} ops {_size(st['read_bytes'])},"
                f" written {st['write_ops']} ops {_size(st['write_bytes'])}, errors {st['errors']},"
                f" unit attentions {st['attentions']}"
                + (f", notices {st['notices']}" if st["notices"] else "")
            )
    sections = [("pairs", "Pairs"), ("copy_operations", "Copy operations")]
    if "gateway" in status:  # one of two gateways (docs/rbd.md)
        sections.append(("gateway", "Gateway locks"))
    for section, title in sections:
        items = status.get(section) or []
        lines.append(f"{title}: {len(items) if items else 'none'}")
        for item in items:
            lines.append("  " + ", ".join(f"{k}={v}" for k, v in item.items()))
    if "last_reload" in status:
        lines += reload_report.render(status["last_reload"])
    return "\n".join(lines) + "\n"
