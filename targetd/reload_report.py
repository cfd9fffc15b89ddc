"""What the last reload did, kept for ``targetctl status``.

A reload by SIGHUP has nobody to answer, and its declared pairs and groups are created (or
found not to match) after the signal handler returns. So whichever way a reload comes
(SIGHUP, ``targetctl reload``), once everything it started has settled its whole outcome is
logged (each change as it happens, then one ``reload finished`` line) and kept here, where
``targetctl status`` shows it. ``targetctl reload`` prints the same outcome as its answer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from targetd import logs

log = logging.getLogger("targetd")

SIGHUP = "SIGHUP"
TARGETCTL = "targetctl reload"


class LastReload:
    def __init__(self) -> None:
        self.outcome: dict[str, Any] | None = None

    def record(self, trigger: str, result: dict[str, list[str]]) -> None:
        applied, refused = list(result["applied"]), list(result["refused"])
        self.outcome = {
            "trigger": trigger,
            "finished": time.time(),
            "applied": applied,
            "refused": refused,
        }
        log.log(
            logging.WARNING if refused else logging.INFO,
            "reload finished",
            extra=logs.fields(trigger=trigger, applied=len(applied), not_applied=len(refused)),
        )


def render(outcome: dict[str, Any] | None) -> list[str]:
    """The lines of ``targetctl status`` about the last reload."""
    if outcome is None:
        return ["Last reload: none since the start"]
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(outcome["finished"]))
    applied, refused = outcome["applied"], outcome["refused"]
    counts = (
        f"{len(applied)} applied, {len(refused)} not applied"
        if applied or refused
        else "nothing changed"
    )
    lines = [f"Last reload: {outcome['trigger']} at {when}: {counts}"]
    lines += [f"  applied: {change}" for change in applied]
    lines += [f"  not applied: {change}" for change in refused]
    return lines


__all__ = ["SIGHUP", "TARGETCTL", "LastReload", "render"]
