"""A process-wide count of SCSI commands started, cheap enough to bump on every command.

Background work (the copy manager's kernel copies) reads it before and after a slice of
work: if it moved, hosts were sending commands meanwhile and the background work gives
way to them. It counts every command of every target: the disks and the CPU are shared
by all of them.
"""

from __future__ import annotations


class CommandCounter:
    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = 0


COMMANDS = CommandCounter()
