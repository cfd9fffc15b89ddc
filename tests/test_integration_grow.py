"""Growing a LUN while hosts use it (docs/operations.md, "Growing a LUN"): a larger
``size`` in the configuration, applied by a reload, grows a block LUN online; each logged-in
host is told once (CAPACITY DATA HAS CHANGED), READ CAPACITY reports the new end and a
write past the old end succeeds. A smaller size, and a LUN in a pair, are refused."""

from __future__ import annotations

import os
import signal
import struct
import time

from clients import run
from conftest import Daemon, DaemonFactory
from pair_scsi import CAPACITY_DATA_HAS_CHANGED, LBA_OUT_OF_RANGE, READ_CAPACITY_16, TUR
from raw_initiator import RawInitiator

IQN = "iqn.2026-11.org.targetd.test:grow"
MiB = 1 << 20


def config(*sizes: str) -> str:
    luns = "".join(f'[[target.lun]]\nlun = {n}\nsize = "{s}"\n' for n, s in enumerate(sizes))
    return f'[[target]]\nname = "{IQN}"\n{luns}'


def logged_in(daemon: Daemon, name: str, luns: int = 1) -> RawInitiator:
    ini = RawInitiator(daemon.port, name=name)
    resp = ini.login(daemon.iqn)
    assert resp.bhs[36:38] == b"\0\0", resp.bhs.hex()
    for lun in range(luns):
        ini.clear_unit_attentions(lun)
    return ini


def sense_of(result: tuple[int, bytes, bytes]) -> tuple[int, tuple[int, int, int] | None]:
    status, _, sense = result
    return status, (sense[2] & 0xF, sense[12], sense[13]) if sense else None


def last_lba(ini: RawInitiator, lun: int = 0) -> int:
    status, data, sense = ini.command(READ_CAPACITY_16, lun=lun, read=32)
    assert status == 0, sense.hex()
    return int(struct.unpack(">Q", data[:8])[0])


def write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


def read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def reload(daemon: Daemon, text: str) -> dict[str, list[str]]:
    assert daemon.config is not None
    daemon.config.write_text(text)
    return daemon.targetctl_json("reload")  # type: ignore[no-any-return]


def test_a_larger_size_grows_the_lun_and_every_host_is_told_once(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(config("8MiB"))
    hosts = [logged_in(daemon, f"iqn.2026-11.org.targetd.test:host{n}") for n in (1, 2)]
    old_end = 8 * MiB // 512
    data = bytes(range(256)) * 16  # 8 blocks
    assert sense_of(hosts[0].command(write10(old_end, 8), data=data)) == (2, LBA_OUT_OF_RANGE)

    outcome = reload(daemon, config("24MiB"))
    assert outcome == {
        "applied": [f"target {IQN}: lun 0 grown from 8388608 to 25165824 bytes"],
        "refused": [],
    }
    for host in hosts:  # once per I_T nexus, whatever the command
        assert sense_of(host.command(TUR)) == (2, CAPACITY_DATA_HAS_CHANGED)
        assert sense_of(host.command(TUR)) == (0, None)
        assert last_lba(host) == 24 * MiB // 512 - 1
    # Past the old end, within the new one: written by one host, read by the other.
    assert sense_of(hosts[0].command(write10(old_end, 8), data=data)) == (0, None)
    status, back, _ = hosts[1].command(read10(old_end, 8), read=len(data))
    assert (status, back) == (0, data)
    assert daemon.targetctl_json("status")["luns"][0]["size"] == 24 * MiB
    # A client that logs in now (libiscsi's) sees the new size.
    out = run("iscsi-readcapacity16", daemon.url(0)).stdout
    assert f"Total size:{24 * MiB}" in out, out
    # The file grew sparse.
    image = daemon.state_dir / IQN.replace(":", "_") / "lun0.img"
    assert image.stat().st_size == 24 * MiB
    # The daemon runs the configured size: a restart keeps it.
    daemon.stop()
    daemon.start()
    out = run("iscsi-readcapacity16", daemon.url(0)).stdout
    assert f"Total size:{24 * MiB}" in out, out


def test_a_smaller_size_is_refused_and_the_lun_keeps_its_data(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(config("16MiB"))
    host = logged_in(daemon, "iqn.2026-11.org.targetd.test:host")
    last = 16 * MiB // 512 - 1
    assert sense_of(host.command(write10(last, 1), data=b"\x5a" * 512)) == (0, None)
    outcome = reload(daemon, config("8MiB"))
    assert outcome == {
        "applied": [],
        "refused": [
            f"target {IQN}: lun 0: size 8388608 bytes is smaller than the running 16777216:"
            " a LUN only grows (shrinking would lose the data past the new end under the"
            " hosts); still 16777216 bytes"
        ],
    }
    assert sense_of(host.command(TUR)) == (0, None)  # nothing to tell: nothing changed
    assert last_lba(host) == last
    status, back, _ = host.command(read10(last, 1), read=512)
    assert (status, back) == (0, b"\x5a" * 512)


def test_a_lun_in_a_pair_is_not_grown(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(config("8MiB", "8MiB", "8MiB"))
    created = daemon.targetctl("pair", "create", "db", "1", "2")
    assert created.returncode == 0, created.stderr
    host = logged_in(daemon, "iqn.2026-11.org.targetd.test:host", luns=3)
    outcome = reload(daemon, config("8MiB", "16MiB", "8MiB"))
    assert outcome["applied"] == []
    assert outcome["refused"] == [
        f"target {IQN}: lun 1: size changed: it is in pair db, whose volumes keep equal sizes"
        " (delete the pair, grow both LUNs, create it again); still 8388608 bytes"
    ]
    assert sense_of(host.command(TUR, lun=1)) == (0, None)
    assert last_lba(host, 1) == 8 * MiB // 512 - 1
    # Once the pair is deleted, the same file grows it.
    assert daemon.targetctl("pair", "delete", "db").returncode == 0
    outcome = reload(daemon, config("8MiB", "16MiB", "8MiB"))
    assert outcome["applied"] == [f"target {IQN}: lun 1 grown from 8388608 to 16777216 bytes"]
    assert sense_of(host.command(TUR, lun=1)) == (2, CAPACITY_DATA_HAS_CHANGED)
    assert last_lba(host, 1) == 16 * MiB // 512 - 1
    # The other LUNs' hosts are not told: their capacity did not change.
    assert sense_of(host.command(TUR, lun=0)) == (0, None)


def test_with_workers_the_worker_serving_the_lun_grows_it(targetd_factory: DaemonFactory) -> None:
    """docs/workers.md: the portal re-reads the file, the target's worker grows its LU and
    tells its hosts; a worker started again later serves the grown size too."""
    daemon = targetd_factory("[server]\nworkers = 2\n" + config("8MiB"))
    pid, port = worker_port(daemon)
    ini = RawInitiator(port, name="iqn.2026-11.org.targetd.test:host")
    assert ini.login(IQN).bhs[36:38] == b"\0\0"
    ini.clear_unit_attentions()
    outcome = reload(daemon, "[server]\nworkers = 2\n" + config("16MiB"))
    assert outcome == {
        "applied": [f"target {IQN}: lun 0 grown from 8388608 to 16777216 bytes"],
        "refused": [],
    }
    assert sense_of(ini.command(TUR)) == (2, CAPACITY_DATA_HAS_CHANGED)
    assert last_lba(ini) == 16 * MiB // 512 - 1
    ini.close()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while worker_port(daemon)[0] == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    out = run("iscsi-readcapacity16", daemon.url(0)).stdout
    assert f"Total size:{16 * MiB}" in out, out


def worker_port(daemon: Daemon) -> tuple[int, int]:
    """(pid, port) of the worker serving the target, once it serves."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for w in daemon.targetctl_json("status")["workers"]:
            if IQN in w["targets"] and w["state"] == "serving":
                return w["pid"], w["ports"][0]
        time.sleep(0.1)
    raise AssertionError(f"no worker serves {IQN}:\n{daemon.stderr}")


def test_a_read_only_lun_grows_once_its_file_has(targetd_factory: DaemonFactory) -> None:
    """The daemon does not write a read-only LUN's file: a larger size is refused until
    the file's owner has grown it, and the next reload (the same file) then grows the LUN."""
    daemon = targetd_factory(config("8MiB"))
    image = daemon.state_dir / IQN.replace(":", "_") / "lun0.img"
    daemon.stop()
    assert daemon.config is not None
    daemon.config.write_text(config("8MiB") + "read_only = true\n")
    daemon.start()
    host = logged_in(daemon, "iqn.2026-11.org.targetd.test:host")
    outcome = reload(daemon, config("16MiB") + "read_only = true\n")
    assert outcome["applied"] == []
    assert outcome["refused"] == [
        f"target {IQN}: lun 0: not grown: {image} is read-only and shorter than 16777216 bytes"
    ]
    assert sense_of(host.command(TUR)) == (0, None)
    assert last_lba(host) == 8 * MiB // 512 - 1
    os.truncate(image, 16 * MiB)  # grown by its owner
    outcome = reload(daemon, config("16MiB") + "read_only = true\n")
    assert outcome == {
        "applied": [f"target {IQN}: lun 0 grown from 8388608 to 16777216 bytes"],
        "refused": [],
    }
    assert sense_of(host.command(TUR)) == (2, CAPACITY_DATA_HAS_CHANGED)
    assert last_lba(host) == 16 * MiB // 512 - 1
