"""Consistency groups: named sets of pairs (in one scope) that split at one instant.

Membership lives in one small JSON file per scope, ``<pairs dir>/<scope>/groups.json``,
replaced atomically (written to a temporary file, ``fsync``ed, renamed, the directory
``fsync``ed): after a crash it holds either the old membership or the new one.

A group's *state* is its pairs' states, kept in each pair's own file. A group split sets
every member's phase in one step of the event loop (the split instant), writes one record
of it (``backing/pairs/group_log.py``, one sync) and is answered; the members' headers,
each carrying the split's id (``group_split``), follow in the background, and a restart
brings any that lag up to date from the record. A split that reached some members'
headers and not the record was never answered: the manager's start rolls those back (a
resync). See docs/pairs.md, "Consistency groups".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backing.durable import replace_file, sync_directory

GROUPS_FILE = "groups.json"
VERSION = 1


@dataclass(frozen=True, slots=True)
class GroupStatus:
    """A group and its members' states (:class:`backing.pairs.PairStatus`)."""

    name: str
    scope: str
    members: tuple[Any, ...]  # PairStatus, in the group's order

    @property
    def state(self) -> str:
        """The members' common state (``SPLIT``, ``DUPLEX``, ``SPLIT-PENDING`` when any
        target is still pending after a split...), ``MIXED`` when they differ, ``EMPTY``."""
        if not self.members:
            return "EMPTY"
        phases = {m.phase for m in self.members}
        if len(phases) == 1:
            return next(iter(phases)).target.label
        return "MIXED"

    @property
    def split_time(self) -> float | None:
        times = {m.split_time for m in self.members}
        return times.pop() if len(times) == 1 else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scope": self.scope,
            "state": self.state,
            "split_time": self.split_time,
            "pairs": [m.name for m in self.members],
            "members": [m.as_dict() for m in self.members],
        }


def load(path: Path) -> dict[str, list[str]]:
    """The groups of one scope: name -> member pair names. A missing file: none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError(f"{path}: not a groups file of version {VERSION}")
    groups = data.get("groups", {})
    return {str(name): [str(m) for m in members] for name, members in groups.items()}


def save(path: Path, groups: dict[str, list[str]]) -> None:
    """Replace the scope's groups file atomically (blocking: run it in an executor)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not groups:
        try:
            path.unlink()
        except FileNotFoundError:
            return
        sync_directory(path.parent)
        return
    body = json.dumps({"version": VERSION, "groups": groups}, indent=1, sort_keys=True)
    replace_file(path, body.encode(), mode=0o600)


__all__ = ["GROUPS_FILE", "GroupStatus", "load", "save"]
