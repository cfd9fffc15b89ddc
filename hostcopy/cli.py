"""``targetd-copy``: server-free backup, restore and verify with a targetd copy manager;
its pair commands are in hostcopy/pair_commands.py. Run ``targetd-copy --help``;
docs/backup.md is the guide."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from contextlib import ExitStack
from dataclasses import asdict

from hostcopy import commands as c
from hostcopy import label as labels
from hostcopy import ops, pair_commands, runtime
from hostcopy.device import (
    DEFAULT_TIMEOUT_S,
    Device,
    ScsiError,
    TransportError,
    execute,
    open_device,
    run,
)
from hostcopy.label import EndLabel, Label
from hostcopy.lists import (
    DEFAULT_RECORD,
    Layout,
    Volume,
    backup_lists,
    record_size,
    restore_lists,
    sg_raw_line,
    sg_raw_status_line,
    verify_lists,
)
from hostcopy.progress import Progress
from hostcopy.runtime import EXIT_FAILED, EXIT_OK, Failure, opened, utc
from scsi.sense import Reason

_UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30,
          "gib": 1 << 30}  # fmt: skip


def size(text: str) -> int:
    t = text.strip().lower()
    digits = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    try:
        return int(digits) * _UNITS[t[len(digits) :]]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (say 1MiB, 512k, 4096)") from None


def _pair_of(device: Device) -> c.PairStatus | None:
    result = execute(device, c.pair_in(), read=128)
    if result.status != 0 or len(result.data) < 96:
        return None
    status = c.pair_status(result.data)
    return None if status.target_state == "SIMPLEX" else status


def _list_id(args: argparse.Namespace) -> int:
    if args.list_id is not None:
        return args.list_id
    if args.dry_run:
        return 1  # lists to be sent by hand: small identifiers read better
    # A fresh identifier per run, so two tools on one session never collide; lists of one
    # run count up from it.
    return int.from_bytes(os.urandom(4), "big") & 0x7FFF_FF00 | 0x100


# -- backup -----------------------------------------------------------------------------------


def target_of(spec: str) -> str | None:
    """The name of the iSCSI target a device belongs to (from the URL, or the session of
    a /dev node), or None when that cannot be told. Names, not portals: one target may be
    reached at several addresses."""
    if spec.startswith("iscsi://"):
        parts = spec[len("iscsi://") :].rsplit("@", 1)[-1].split("/")
        return parts[1] if len(parts) >= 3 else None
    from hostcopy.sysfs import scsi_nodes

    real = os.path.realpath(spec)
    for node in scsi_nodes():
        if real in (node.sg, node.block, node.tape) and node.target:
            return node.target
    return None


def same_target(first: str, second: str) -> None:
    """The copy manager moves data between LUs of the target the command goes to: two
    devices of different targets would only earn COPY TARGET DEVICE NOT REACHABLE."""
    a, b = target_of(first), target_of(second)
    if a is not None and b is not None and a != b:
        raise Failure(f"{first} and {second} are LUNs of different targets ({a}, {b}): "
                      "a backup or restore copies between LUNs of one target")  # fmt: skip


def _require_medium(spec: str, device: Device) -> ops.Info:
    """A backup's medium is a tape or a file sink (a stream device); a disk named by mistake
    is said so, before a tape command gets INVALID OPCODE from it."""
    info = ops.info(device)
    if info.device_type != c.STREAM:
        raise Failure(f"{spec} is not a tape or file sink (type {info.device_type:#x})")
    return info


def _volume(spec: str, device: Device, limits: c.CopyLimits, record: int) -> Volume:
    info = ops.info(device)
    if info.device_type != c.BLOCK or info.capacity is None:
        raise Failure(f"{spec} is not a block device (type {info.device_type:#x})")
    size = record_size(limits, info.capacity.block_size, record)
    layout = Layout(info.capacity.bytes, info.capacity.block_size, size)
    pair = _pair_of(device)
    backup_id = os.urandom(16).hex()
    label = Label(
        source=str(info.designator),
        source_designator=info.designator.value.hex(),
        length=layout.length,
        block_size=layout.block_size,
        record=size,
        created=utc(),
        pair=pair.name if pair else "",
        split_time=utc(pair.split_ms) if pair and pair.split_ms else "",
        policy=c.POLICIES.get(pair.policy, "") if pair else "",
        device=spec,
        id=backup_id,
        group=pair.group if pair else "",
    )
    return Volume(info.designator, layout, label.encode(), backup_id)


def group_members(dest: str, device: Device, group: str) -> list[str]:
    """The target volumes (secondaries) of the pairs of ``group``, as devices of the same
    target as ``dest``: every LUN of that target is asked PAIR IN (the LUNs of an iscsi://
    URL's target by REPORT LUNS, of a /dev node's by its iSCSI session in /sys)."""
    if dest.startswith("iscsi://"):
        base = dest.rstrip("/").rsplit("/", 1)[0]
        data = run(device, "REPORT LUNS", c.report_luns(), read=8 + 8 * 256)
        candidates = [(lun, f"{base}/{lun}") for lun in c.luns_reported(data)]
    else:
        from hostcopy.sysfs import scsi_nodes

        target = target_of(dest)
        if target is None:
            raise Failure(f"{dest}: cannot tell its iSCSI target, so not the group's LUNs")
        candidates = [(n.lun, n.sg) for n in scsi_nodes() if n.target == target and n.sg]
    members = []
    for lun, spec in sorted(candidates):
        with opened(spec) as dev:
            status = _pair_of(dev)
        if status is not None and status.group == group and status.target_lun == lun:
            members.append(spec)
    if not members:
        raise Failure(f"no pair of group {group!r} has its target volume on this target")
    return members


def cmd_backup(args: argparse.Namespace) -> int:
    *sources, dest = args.volumes
    if args.group:
        if sources:
            raise Failure("--group names the volumes: give only the tape or file sink")
        with opened(dest) as dst:
            sources = group_members(dest, dst, args.group)
        print(f"group {args.group}: {' '.join(sources)}", file=sys.stderr)
    if not sources:
        raise Failure("name at least one volume and the tape or file sink")
    for source in sources:
        same_target(source, dest)
    with ExitStack() as stack:
        dst = stack.enter_context(opened(dest))
        d = _require_medium(dest, dst)
        limits = ops.limits(dst)
        volumes = [
            _volume(spec, stack.enter_context(opened(spec)), limits, args.record_size)
            for spec in sources
        ]
        first = _list_id(args)
        lists = backup_lists(
            first_list_id=first, destination=d.designator, volumes=volumes, limits=limits
        )
        if args.dry_run:
            return _dry_run(args, lists, first, dest)
        if args.position == "end":
            ops.to_end_of_data(dst)
            if ops.close_open_file(dst):
                print("the tape ended inside a backup that was cut off (its daemon stopped): "
                      "closed it with a file mark; `list` shows it as partial",
                      file=sys.stderr)  # fmt: skip
        elif args.position == "start":
            ops.rewind(dst)
        total = sum(v.layout.length for v in volumes)
        for spec, v in zip(sources, volumes, strict=True):
            print(
                f"backup of {spec} ({v.designator}, {v.layout.length} bytes) to {dest}: "
                f"{v.layout.records} records of {v.layout.record} bytes",
                file=sys.stderr,
            )
        print(f"{len(lists)} list(s), {len(volumes)} tape file(s)", file=sys.stderr)
        try:
            _send_all(dst, lists, first, total, "backup")
        except (ops.CopyFailed, KeyboardInterrupt) as e:
            if not (isinstance(e, ops.CopyFailed) and e.refused and e.list_index == 0):
                _close_partial(dst)
            raise
    return EXIT_OK


def _close_partial(dst: Device) -> None:
    """A backup that stopped after writing something (its label at least) is closed with
    a file mark, so the next backup starts a tape file of its own instead of running on
    into this one. It has no end label (the target writes that last): `list` shows it as
    partial and `verify` fails on it. A tape that already ends with a file mark (the copy
    stopped before it wrote anything, or after its own file mark: an abort that came as it
    ended) gets none: it would only make an empty tape file."""
    try:
        if ops.can_space(dst):
            ops.to_end_of_data(dst)
            closed = ops.close_open_file(dst)
        else:  # a file sink: the mark ends its current file
            ops.write_filemark(dst)
            closed = True
    except (ScsiError, TransportError) as e:
        print(f"could not close the partial backup with a file mark: {e}", file=sys.stderr)
        return
    if closed:
        print("the partial backup was closed with a file mark: do not restore it",
              file=sys.stderr)  # fmt: skip
    else:
        print("the tape ends with a file mark already: nothing to close (`list` says "
              "whether the backup is sealed or partial)", file=sys.stderr)  # fmt: skip


def _send_all(device: Device, lists: list[bytes], first: int, total: int, what: str) -> None:
    """Sends the lists in turn, with the progress bar. Returns once the last one has
    completed, even when Ctrl-C came after it had (nothing then to abort or close);
    raises KeyboardInterrupt once an interrupted copy is stopped."""
    bar = Progress(total, what)
    done_before = 0
    list_id = first
    seen = ops.ListRun()
    try:
        for n, params in enumerate(lists):
            list_id = first + n
            seen = ops.ListRun()

            def progress(done: int, before: int = done_before) -> None:
                bar.update(before + done)

            status = ops.send_list(device, params, list_id, progress, seen)
            done_before += status.transferred
            bar.update(min(done_before, total))
    except ops.CopyFailed as e:
        bar.finish(ok=False)
        e.list_index = list_id - first
        raise
    except TransportError:
        # The target is gone: no abort or file mark can reach it. The copy may have run on
        # (or not): the backup is not complete, and the next backup closes it as partial.
        bar.finish(ok=False)
        raise
    except KeyboardInterrupt:
        # An IMMED copy goes on without us: stop it rather than leave it running.
        below_bar = "\n" if bar.tty else ""
        print(f"{below_bar}interrupted: stopping the {what} (Ctrl-C again is ignored until "
              "it has stopped)", file=sys.stderr)  # fmt: skip
        aborting = seen.accepted and seen.final is None
        ended = ops.stop(device, list_id, seen)
        if ended is not None and ended.state == 0x01 and list_id == first + len(lists) - 1:
            # The last list had completed: the work is whole, and a file mark written now
            # would only make an empty tape file after it.
            print(f"interrupted after the last list had completed: the {what} is whole",
                  file=sys.stderr)  # fmt: skip
            bar.update(total)
            bar.finish()
            return
        bar.finish(ok=False)
        if aborting:
            print(f"interrupted: {what} list {list_id} aborted (COPY OPERATION ABORT)",
                  file=sys.stderr)  # fmt: skip
        raise
    bar.finish()


def _dry_run(args: argparse.Namespace, lists: list[bytes], first: int, device: str) -> int:
    directory = args.list_dir or "."
    os.makedirs(directory, exist_ok=True)
    print(f"# {len(lists)} EXTENDED COPY(LID4) list(s) with IMMED, to send in turn: each")
    print("# answers at once; repeat the RECEIVE COPY STATUS(LID4) line after it until byte 5")
    print("# of its answer is 01 (completed; 11 or 12: running; 02: failed, sense from byte 32)")
    if device.startswith("iscsi://"):
        # sg_raw opens a /dev node (SG_IO); Debian's sg3-utils has no libiscsi URLs. The
        # lines name the node through $DEV, which the shell refuses to run without.
        iqn, lun = device.rstrip("/").rsplit("/", 2)[-2:]  # an opened URL: .../IQN/LUN
        where = f"targetd-copy devices --target {iqn} --lun {lun} --node sg"
        print("# sg_raw opens /dev/sgN nodes, not iscsi:// URLs: log in with open-iscsi and")
        print(f"# set DEV to the node of {device} ({where})")
        print(f"DEV=${{DEV:?set DEV to the /dev/sgN of LUN {lun} of {iqn}: {where}}}")
        device = '"$DEV"'
    for n, params in enumerate(lists):
        path = os.path.join(directory, f"{args.command}-list-{first + n}.bin")
        with open(path, "wb") as f:
            f.write(params)
        print(sg_raw_line(device, path, len(params)))
        print(sg_raw_status_line(device, first + n))
    return EXIT_OK


# -- restore, verify, list --------------------------------------------------------------------


def _open_backup(tape: Device, number: int) -> Label:
    ops.to_file(tape, number)
    label, event = ops.read_label(tape)
    if label is None:
        what = {"end": "no backup there (end of data)", "filemark": "an empty file"}.get(
            event or "", "no targetd-copy label"
        )
        raise Failure(f"{tape.name} file {number}: {what}")
    return label


# What the target's answer to a verify or a checked restore means (COPY ABORTED ASC/ASCQ).
_CHECK_FAILURES: dict[tuple[int, int], str] = {
    Reason.COPY_LABEL_MISCOMPARE.value[1:]: "DAMAGED: the data on the medium does not hash to "
    "the SHA-256 in its end label (a changed byte, or a label that lies)",
    Reason.COPY_NO_END_LABEL.value[1:]: "PARTIAL: the backup has no end label; it was cut off "
    "before it completed",
    Reason.COPY_TARGET_DEVICE_DATA_UNDERRUN.value[1:]: "PARTIAL: the backup ends before the "
    "length its head label gives",
    Reason.COPY_TARGET_DEVICE_DATA_OVERRUN.value[1:]: "DAMAGED: a record is longer than its "
    "head label says",
}


def _check_failure(e: ops.CopyFailed, what: str) -> Failure:
    meaning = None
    if e.asc is not None and e.ascq is not None:
        meaning = _CHECK_FAILURES.get((e.asc, e.ascq))
    return Failure(f"{what}: {meaning}\n  ({e})" if meaning else f"{what}: {e}")


def _verify_on_target(tape: Device, number: int, label: Label, first: int) -> None:
    """The target reads the backup's records into a NUL device, hashes them and compares
    the end label (C1h ... C3h): nothing crosses the network. Raises Failure when the
    backup is partial or damaged."""
    layout = Layout(label.length, label.block_size, label.record)
    lists = verify_lists(
        first_list_id=first, source=ops.info(tape).designator, layout=layout,
        limits=ops.limits(tape),
    )  # fmt: skip
    try:
        _send_all(tape, lists, first, layout.length, "verify")
    except ops.CopyFailed as e:
        raise _check_failure(e, f"file {number}") from None


def cmd_restore(args: argparse.Namespace) -> int:
    same_target(args.backup, args.lun)
    with opened(args.backup) as tape, opened(args.lun) as lun:
        t, b = _require_medium(args.backup, tape), ops.info(lun)
        if b.device_type != c.BLOCK or b.capacity is None:
            raise Failure(f"{args.lun} is not a block device")
        label = _open_backup(tape, args.file)
        layout = Layout(label.length, label.block_size, label.record)
        records = None
        if b.capacity.bytes < label.length:
            if not args.force:
                raise Failure(
                    f"{args.lun} holds {b.capacity.bytes} bytes, the backup {label.length}: "
                    "restore refused (--force restores the records that fit)"
                )
            records = b.capacity.bytes // label.record
            print(f"--force: {args.lun} holds {b.capacity.bytes} bytes, the backup "
                  f"{label.length}: restoring the first {records} records only",
                  file=sys.stderr)  # fmt: skip
        if b.capacity.block_size != label.block_size:
            raise Failure(
                f"{args.lun} has {b.capacity.block_size}-byte blocks, the backup "
                f"{label.block_size}-byte ones: restore refused"
            )
        first = _list_id(args)
        check = bool(label.id) and not args.force
        if check and not args.dry_run:
            # Refused before a byte is written: the target reads the backup and compares
            # its end label first.
            print(f"checking file {args.file} against its end label first", file=sys.stderr)
            try:
                _verify_on_target(tape, args.file, label, first)
            except Failure as e:
                raise Failure(f"{e}\nrestore refused (--force restores it anyway)") from None
            first += 1 << 16
            _open_backup(tape, args.file)
        elif not label.id:
            print(f"file {args.file} was made before backups carried a digest: restoring it "
                  "unchecked", file=sys.stderr)  # fmt: skip
        elif args.force:
            print("--force: restoring without checking the data against its end label",
                  file=sys.stderr)  # fmt: skip
        lists = restore_lists(
            first_list_id=first,
            source=t.designator,
            destination=b.designator,
            layout=layout,
            limits=ops.limits(lun),
            check=check,
            records=records,
        )
        if args.dry_run:
            return _dry_run(args, lists, first, args.lun)
        print(
            f"restore of file {args.file} of {args.backup} ({label.source}, {label.length} "
            f"bytes, made {label.created}) onto {args.lun}",
            file=sys.stderr,
        )
        total = layout.length if records is None else records * layout.record
        try:
            _send_all(lun, lists, first, total, "restore")
        except ops.CopyFailed as e:
            raise _check_failure(e, f"restore of file {args.file}") from None
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    with opened(args.backup) as tape:
        _require_medium(args.backup, tape)
        label = _open_backup(tape, args.file)
        if args.lun is None and not args.host and label.id:
            _verify_on_target(tape, args.file, label, _list_id(args))
            end = ops.end_label_behind(tape)
            digest = f"; sha256 {end.sha256}" if end is not None else ""
            print(f"verified by the target: {label.length} bytes read back hash to the "
                  f"SHA-256 of the end label{digest}")  # fmt: skip
            return EXIT_OK
        return _verify_on_host(args, tape, label)


def _verify_on_host(args: argparse.Namespace, tape: Device, label: Label) -> int:
    """The host reads every record (READ), hashes it and, with a LUN, compares it; then
    the end label, whose digest must equal the one computed here."""
    layout = Layout(label.length, label.block_size, label.record)
    lun = open_device(args.lun, runtime.command_timeout) if args.lun else None
    try:
        if lun is not None:
            ops.clear_unit_attentions(lun)
            cap = ops.info(lun).capacity
            if cap is None or cap.bytes < label.length:
                raise Failure(f"{args.lun} is smaller than the backup ({label.length} bytes)")
        import hashlib  # here: loading OpenSSL costs every other command start-up time

        digest = hashlib.sha256()
        bar = Progress(layout.length, "verify")
        for offset, length in layout.extents():
            data, event = ops.read_record(tape, length)
            if event is not None or len(data) != length:
                bar.finish(ok=False)
                raise Failure(
                    f"PARTIAL or DAMAGED: the backup's record at byte {offset} is not "
                    f"{length} bytes ({event or len(data)}): the backup is cut off or not "
                    "this one"
                )
            digest.update(data)
            if lun is not None:
                want = ops.read_blocks(lun, offset // label.block_size, length,
                                       label.block_size)  # fmt: skip
                if want != data:
                    at = offset + _first_difference(data, want)
                    bar.finish(ok=False)
                    raise Failure(f"MISMATCH at byte {at}: the backup differs from {args.lun}")
            bar.update(offset + length)
        bar.finish()
        end = None
        if label.id:
            data, event = ops.read_record(tape, labels.LABEL_SIZE)
            end = labels.decode_end(data) if event is None else None
            if labels.state(label, end) == labels.INCONSISTENT:
                assert end is not None
                raise Failure(f"INCONSISTENT: {labels.disagreement(label, end)}")
            if labels.state(label, end) != labels.SEALED:
                raise Failure("PARTIAL: the backup has no end label; it was cut off before "
                              "it completed")  # fmt: skip
            assert end is not None
            if (end.sha256, end.bytes) != (digest.hexdigest(), layout.length):
                raise Failure(
                    f"DAMAGED: the data read back hashes to {digest.hexdigest()}, its end "
                    f"label says {end.sha256} ({end.bytes} bytes)"
                )
        _data, event = ops.read_record(tape, 512)
        if event != "filemark":
            raise Failure("the backup does not end with a file mark where its label says")
    finally:
        if lun is not None:
            lun.close()
    target = f" and equals {args.lun}" if args.lun else ""
    matches = "; matches its end label" if end is not None else "; no end label to check"
    print(f"verified: {layout.length} bytes{target}; sha256 {digest.hexdigest()}{matches}")
    return EXIT_OK


def _first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))


def cmd_list(args: argparse.Namespace) -> int:
    with opened(args.backup) as tape:
        _require_medium(args.backup, tape)
        ops.rewind(tape)
        found: list[tuple[int, Label | None, EndLabel | None]] = []
        number = 0
        while True:
            label, event = ops.read_label(tape)
            if event == "end":
                break
            end = None
            if event != "filemark":
                end = ops.read_end_label(tape)
            found.append((number, label, end))
            number += 1
    if args.json:
        out = []
        for n, lb, end in found:
            entry: dict[str, object] = {"file": n}
            if lb is not None:
                entry.update(asdict(lb))
                entry["state"] = labels.state(lb, end)
                entry["verified"] = False  # list reads labels only
                entry["sha256"] = end.sha256 if end is not None else ""
                entry["sealed"] = end.sealed if end is not None else ""
            out.append(entry)
        print(json.dumps(out))
        return EXIT_OK
    print(f"{'file':>4}  {'state':12}  {'created':24}  {'bytes':>12}  {'pair':12}  "
          f"{'split':24}  {'sha256':16}  source")  # fmt: skip
    states = set()
    for n, lb, end in found:
        if lb is None:
            print(f"{n:>4}  (no targetd-copy label)")
        else:
            sha = end.sha256[:16] if end is not None and end.id == lb.id else "-"
            state = labels.state(lb, end)
            states.add(state)
            print(
                f"{n:>4}  {state:12}  {lb.created:24}  {lb.length:>12}  "
                f"{lb.pair or '-':12}  {lb.split_time or '-':24}  {sha:16}  {lb.source}"
            )
            # The rest of the head label, under its row: the table stays one screen wide.
            print(f"{'':6}group {lb.group or '-'}, backup policy {lb.policy or '-'}, "
                  f"{lb.block_size}-byte blocks in {lb.record}-byte records, "
                  f"from {lb.device or '-'}")  # fmt: skip
    for state, words in LIST_LEGEND.items():
        if state in states:
            print(f"{state}: {words}")
    return EXIT_OK


# What ``list`` can tell from the labels alone, said under the table for the states shown.
LIST_LEGEND = {
    labels.SEALED: "the target wrote the end label after the last record and it agrees"
    " with the head label; the data was not read (verify BACKUP --file N reads it)",
    labels.INCONSISTENT: "the end label disagrees with the head label (verify says how)",
    labels.PARTIAL: "no end label: cut off before it completed",
}


# -- devices --------------------------------------------------------------------------------


def cmd_devices(args: argparse.Namespace) -> int:
    import time

    from hostcopy.sysfs import scsi_nodes

    deadline = time.monotonic() + args.wait
    while True:
        nodes = [
            n
            for n in scsi_nodes()
            if (args.lun is None or n.lun == args.lun)
            and (args.target is None or n.target == args.target)
        ]
        node_paths = [getattr(n, args.node) for n in nodes] if args.node else []
        ready = all(node_paths) and len(node_paths) == 1 if args.node else bool(nodes)
        if ready or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if args.node:
        if len(nodes) != 1 or not node_paths[0]:
            which = f"LUN {args.lun}" if args.lun is not None else "a device"
            found = f"{len(nodes)} matching devices" if len(nodes) != 1 else "no such node"
            raise Failure(f"{which}{' of ' + args.target if args.target else ''}: {found}")
        print(node_paths[0])
        return EXIT_OK
    print(f"{'H:C:T:L':10}  {'lun':>3}  {'type':5}  {'sg':10}  {'block':10}  {'tape':10}  target")
    for n in nodes:
        print(
            f"{n.hctl:10}  {n.lun:>3}  {n.kind:5}  {n.sg or '-':10}  {n.block or '-':10}  "
            f"{n.tape or '-':10}  {n.target or '-'}"
        )
    if not nodes:
        which = f" of {args.target}" if args.target else ""
        lun = f" with LUN {args.lun}" if args.lun is not None else ""
        print(f"no iSCSI SCSI devices{which}{lun} in /sys: log in with open-iscsi first "
              "(iscsiadm -m node -T IQN -p HOST:PORT --login), or name LUNs as "
              "iscsi://HOST:PORT/IQN/LUN", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    return EXIT_OK


# -- entry point ------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="targetd-copy",
        description="Server-free backup, restore and verify with a targetd copy manager. "
        "DEVICE is /dev/sgN, /dev/sdX or iscsi://HOST[:PORT]/IQN/LUN.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser(
        "backup", help="copy volumes to a tape or file sink (server-free)",
        usage="%(prog)s [options] SOURCE [SOURCE ...] DEST",
    )  # fmt: skip
    b.add_argument("volumes", nargs="+", metavar="SOURCE ... DEST",
                   help="the volumes (block LUs: split pairs' target volumes), one tape "
                   "file each, in one EXTENDED COPY where the limits allow; then the tape "
                   "or file sink LU, of the same target")  # fmt: skip
    b.add_argument("--record-size", type=size, default=DEFAULT_RECORD,
                   help="record length on the medium (default 1MiB; capped by the copy "
                   "manager's stream transfer limit)")  # fmt: skip
    b.add_argument("--group", metavar="NAME",
                   help="back up the target volume of every pair of this consistency group, "
                   "in one EXTENDED COPY (one tape file each); give only DEST")  # fmt: skip
    b.add_argument("--position", choices=("end", "start", "current"), default="end",
                   help="where the backup goes: after the last one (default), at the "
                   "start (overwriting everything), or at the current position")  # fmt: skip

    r = sub.add_parser("restore", help="copy a backup back onto a volume (server-free)")
    r.add_argument("backup", help="the tape or file sink LU")
    r.add_argument("lun", help="the block LU to restore onto")
    for q in (b, r):
        q.add_argument("--dry-run", action="store_true",
                       help="write the parameter lists to files and print the sg_raw lines "
                       "that send them; send nothing")  # fmt: skip
        q.add_argument("--list-dir", help="where --dry-run writes the lists (default: .)")
        q.add_argument("--list-id", type=int, help="first list identifier (default: random)")

    r.add_argument("--force", action="store_true",
                   help="restore even a backup whose data does not match its end label, a "
                   "partial one, or onto a smaller volume (the records that fit)")  # fmt: skip
    v = sub.add_parser(
        "verify", help="check a backup against its end label's SHA-256, or against a volume"
    )
    v.add_argument("backup", help="the tape or file sink LU")
    v.add_argument("lun", nargs="?", help="the volume to compare with (optional: read "
                   "through the host)")  # fmt: skip
    v.add_argument("--host", action="store_true",
                   help="read the backup through the host and hash it here, rather than "
                   "have the target read it back")  # fmt: skip
    v.add_argument("--list-id", type=int, help="first list identifier (default: random)")
    v.set_defaults(dry_run=False)
    for q in (r, v):
        q.add_argument("--file", type=int, default=0, help="which backup: 0 is the first")

    ls = sub.add_parser("list", help="the backups a tape or file sink holds")
    ls.add_argument("backup")

    dv = sub.add_parser("devices", help="which /dev node is which LUN (from /sys)")
    dv.add_argument("--target", help="only this iSCSI target's LUNs")
    dv.add_argument("--lun", type=int, help="only this LUN")
    dv.add_argument("--node", choices=("sg", "block", "tape"),
                    help="print only this node of the one matching device")  # fmt: skip
    dv.add_argument("--wait", type=float, default=0.0,
                    help="wait this many seconds for the device to appear")  # fmt: skip
    ls.add_argument("--json", action="store_true")
    pair_commands.add_parsers(sub)
    for q in sub.choices.values():
        q.add_argument(
            "--command-timeout", type=int, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
            help="give up on a target that leaves one command unanswered this long "
            f"(default {DEFAULT_TIMEOUT_S})",
        )  # fmt: skip
    return p


COMMANDS = {
    "backup": cmd_backup,
    "restore": cmd_restore,
    "verify": cmd_verify,
    "list": cmd_list,
    "devices": cmd_devices,
    **pair_commands.COMMANDS,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    runtime.command_timeout = args.command_timeout
    signal.signal(signal.SIGINT, runtime.first_interrupt_only)
    try:
        return COMMANDS[args.command](args)
    except (Failure, ops.CopyFailed, ScsiError, TransportError, ValueError) as e:
        print(f"targetd-copy {args.command}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
