"""``targetd-copy``'s pair commands: create, split, resync, delete, join, leave and status
of the volume pair (and consistency group) a device belongs to (docs/pairs.md)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

from hostcopy import commands as c
from hostcopy import ops
from hostcopy.device import Device, run
from hostcopy.runtime import EXIT_OK, Failure, opened, utc


def _print_status(st: c.PairStatus, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(st)))
        return
    if not st.name and st.source_state == st.target_state == "SIMPLEX":
        # PAIR IN of a LUN in no pair names it on both sides with zeros: say that plainly.
        print(f"LUN {st.source_lun}: in no pair (SIMPLEX); targetd-copy create SOURCE MIRROR")
        return
    split = utc(st.split_ms) if st.split_ms else "-"
    print(
        f"pair {st.name or '-'}: LUN {st.source_lun} {st.source_state} -> LUN {st.target_lun} "
        f"{st.target_state}, {st.percent}% in sync, {st.dirty} of {st.chunks} chunks to copy, "
        f"{st.changed} changed since the split, split at {split}, "
        f"backup policy {c.POLICIES.get(st.policy, st.policy)}"
        + (f", group {st.group}" if st.group else "")
        + (
            f"; its primary's secondaries: LUN {', LUN '.join(map(str, st.secondary_luns))}"
            if len(st.secondary_luns) > 1
            else ""
        )
    )


@contextmanager
def _volume(spec: str) -> Iterator[Device]:
    """The device a pair command goes to: a block volume. A tape or file sink named by
    mistake is said so (the target answers PAIR OUT/IN there with INVALID OPCODE)."""
    with opened(spec) as dev:
        kind = ops.info(dev).device_type
        if kind != c.BLOCK:
            raise Failure(f"{spec} is not a block volume (type {kind:#x}): pairs are of disks")
        yield dev


def _status(device: Device, lun: int = c.ADDRESSED_LUN) -> c.PairStatus:
    length = c.PAIR_STATUS_LENGTH
    return c.pair_status(run(device, "PAIR IN", c.pair_in(lun, length), read=length))


def _pair_lun(args: argparse.Namespace) -> int:
    """The PAIR LUN field: the secondary named with --secondary (one pair of a primary
    with several), else the LUN the command is sent to."""
    secondary = getattr(args, "secondary", None)
    return c.ADDRESSED_LUN if secondary is None else lun_of(secondary)


def _wait_for(
    device: Device, state: str, timeout: float, lun: int = c.ADDRESSED_LUN
) -> c.PairStatus:
    import time

    deadline = time.monotonic() + timeout
    while True:
        st = _status(device, lun)
        if st.source_state == state and st.target_state == state:
            return st
        if "SUSPENDED" in (st.source_state, st.target_state):
            raise Failure(f"the pair is SUSPENDED (reason {st.suspend_reason})")
        if time.monotonic() > deadline:
            raise Failure(f"still {st.source_state}/{st.target_state} after {timeout:.0f}s")
        time.sleep(0.2)


def cmd_pair(args: argparse.Namespace) -> int:
    action = {"split": c.PAIR_SPLIT, "resync": c.PAIR_RESYNC}[args.command]
    label = args.command.upper()
    if getattr(args, "reverse", False):
        action, label = c.PAIR_REVERSE_RESYNC, "REVERSE RESYNC"
    lun = _pair_lun(args)
    with _volume(args.device) as dev:
        run(dev, f"PAIR OUT {label}", c.pair_out(action, lun))
        st = _status(dev, lun)
        if args.wait:
            want = "SPLIT" if action == c.PAIR_SPLIT else "DUPLEX"
            st = _wait_for(dev, want, args.timeout, lun)
        _print_status(st, args.json)
    return EXIT_OK


def lun_of(spec: str) -> int:
    """The LUN number of a device: the last part of an iscsi:// URL, or the L of the
    H:C:T:L the kernel gives a /dev/sgN or /dev/sdX node."""
    if spec.startswith("iscsi://"):
        return int(spec.rstrip("/").rsplit("/", 1)[1])
    name = os.path.basename(os.path.realpath(spec))
    for cls in ("scsi_generic", "block"):
        link = f"/sys/class/{cls}/{name}/device"
        if os.path.exists(link):
            return int(os.path.basename(os.path.realpath(link)).rsplit(":", 1)[1])
    raise Failure(f"{spec}: cannot tell its LUN (not an iscsi:// URL, no SCSI device in /sys)")


def cmd_create(args: argparse.Namespace) -> int:
    name = args.name.encode()
    target = lun_of(args.target)
    with _volume(args.source) as dev:
        cdb = bytearray(c.pair_out(c.PAIR_CREATE))
        cdb[4:6] = target.to_bytes(2, "big")
        cdb[6] = args.policy
        cdb[10:14] = len(name).to_bytes(4, "big")
        run(dev, "PAIR OUT CREATE", bytes(cdb), data_out=name)
        if args.group:  # as paircreate -g: the new pair goes into the group at once
            group = args.group.encode()
            run(dev, "PAIR OUT GROUP JOIN", c.pair_out_named(c.PAIR_GROUP_JOIN, group, target),
                data_out=group)  # fmt: skip
        st = _status(dev, target)  # the new pair (its primary may have others)
        if args.wait:
            st = _wait_for(dev, "DUPLEX", args.timeout, target)
        _print_status(st, args.json)
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    lun = _pair_lun(args)
    with _volume(args.device) as dev:
        st = _status(dev, lun)  # what is deleted, said once it is
        run(dev, "PAIR OUT DELETE", c.pair_out(c.PAIR_DELETE, lun))
    if args.json:
        print(json.dumps({"deleted": st.name, "source_lun": st.source_lun,
                          "target_lun": st.target_lun, "group": st.group}))  # fmt: skip
        return EXIT_OK
    # No data moves: a mirror deleted before it was whole keeps a partial copy.
    whole = st.target_state in ("DUPLEX", "SPLIT")
    held = "each keeps its data" if whole else (
        f"LUN {st.target_lun} was {st.target_state}: it holds a partial copy")  # fmt: skip
    print(f"pair {st.name or '-'} deleted: LUN {st.source_lun} and LUN {st.target_lun} are "
          f"in no pair (SIMPLEX); {held}"
          + (f"; it left group {st.group}" if st.group else ""))  # fmt: skip
    return EXIT_OK


def cmd_join(args: argparse.Namespace) -> int:
    group = args.group.encode()
    lun = _pair_lun(args)
    with _volume(args.device) as dev:
        run(dev, "PAIR OUT GROUP JOIN", c.pair_out_named(c.PAIR_GROUP_JOIN, group, lun),
            data_out=group)  # fmt: skip
        _print_status(_status(dev, lun), args.json)
    return EXIT_OK


def cmd_leave(args: argparse.Namespace) -> int:
    lun = _pair_lun(args)
    with _volume(args.device) as dev:
        run(dev, "PAIR OUT GROUP LEAVE", c.pair_out(c.PAIR_GROUP_LEAVE, lun))
        _print_status(_status(dev, lun), args.json)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    with _volume(args.device) as dev:
        _print_status(_status(dev, _pair_lun(args)), args.json)
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The pair commands' subcommands and their options."""
    for name, text in (
        ("split", "split the pair a volume belongs to (with its whole consistency group)"),
        ("resync", "resynchronize the pair a volume belongs to (--reverse: restore the source)"),
    ):
        q = sub.add_parser(name, help=text)
        q.add_argument("device", help="either volume of the pair")
        q.add_argument(
            "--wait",
            action="store_true",
            help="return once both sides are SPLIT (split) or DUPLEX (resync)",
        )
        q.add_argument("--timeout", type=float, default=600.0)
        if name == "resync":
            q.add_argument(
                "--reverse",
                action="store_true",
                help="copy the mirror back onto the source (a SPLIT pair; hosts fenced"
                " from the source until DUPLEX)",
            )
    cr = sub.add_parser("create", help="pair two volumes: TARGET becomes a mirror of SOURCE")
    cr.add_argument("source")
    cr.add_argument("target", help="the mirror volume (the one backups are taken from)")
    cr.add_argument("--name", default="", help="the pair's name (default lunS-lunT)")
    cr.add_argument("--policy", type=int, choices=range(5), default=0,
                    help="backup policy of its own: 1 reflect-first, 2 wait, 3 merge, "
                    "4 split-and-backup (default 0: the configuration's)")  # fmt: skip
    cr.add_argument("--group", default="", help="and put it in this consistency group "
                    "(made if absent), as paircreate -g does")  # fmt: skip
    cr.add_argument("--wait", action="store_true", help="return once the pair is DUPLEX")
    cr.add_argument("--timeout", type=float, default=600.0)
    de = sub.add_parser("delete", help="dissolve the pair a volume belongs to")
    de.add_argument("device")
    jo = sub.add_parser("join", help="put the pair a volume belongs to in a consistency group "
                        "(made if absent)")  # fmt: skip
    jo.add_argument("device")
    jo.add_argument("group")
    le = sub.add_parser("leave", help="take the pair a volume belongs to out of its group "
                        "(a group left empty goes)")  # fmt: skip
    le.add_argument("device")
    st = sub.add_parser("status", help="the state of the pair a volume belongs to")
    st.add_argument("device")
    for q in (st, de, jo, le, *[sub.choices[n] for n in ("split", "resync")]):
        q.add_argument(
            "--secondary", metavar="DEVICE",
            help="the secondary (target volume) of the pair meant, when DEVICE is a primary"
            " with several (up to 3); naming the secondary as DEVICE does the same",
        )  # fmt: skip
    for q in (st, cr, de, jo, le, *[sub.choices[n] for n in ("split", "resync")]):
        q.add_argument("--json", action="store_true")


COMMANDS = {
    "split": cmd_pair,
    "resync": cmd_pair,
    "status": cmd_status,
    "create": cmd_create,
    "delete": cmd_delete,
    "join": cmd_join,
    "leave": cmd_leave,
}
