"""A pair's backup policy through iSCSI and targetctl: PAIR OUT CREATE's BACKUP POLICY byte
and SET BACKUP POLICY (05h), bytes 10-11 of PAIR IN, ``targetctl pair policy``, the
policy kept in the pair file across a restart, and policy 4 (split-and-backup) taking
the split itself when a plain EXTENDED COPY reads the target of a mirroring pair."""

from __future__ import annotations

import json

from conftest import DaemonFactory
from pair_scsi import ADDRESSED, CREATE, BlockClient, pair_in, pair_out
from test_integration_xcopy import naa_of
from xcopy_lists import cscd, lid1, seg_b2s, seg_filemarks, xcopy_cdb

MiB = 1 << 20
IQN = "iqn.2026-11.org.targetd:policy"
SET_POLICY = 0x05
TAPE = 2
CONFIG = f"""
[pairs]
chunk_size = "64KiB"
copy_rate = "2MiB"
backup_policy = "merge"

[[target]]
name = "{IQN}"
[[target.lun]]
lun = 0
size = "4MiB"
[[target.lun]]
lun = 1
size = "4MiB"
[[target.lun]]
lun = 2
kind = "tape"
path = "tape.img"
size = "32MiB"
"""


def set_policy(policy: int, lun: int = ADDRESSED, reserved: int = 0) -> bytes:
    cdb = bytearray(pair_out(SET_POLICY, lun))
    cdb[4] = policy
    cdb[9] = reserved
    return bytes(cdb)


def policy_bytes(client: BlockClient, lun: int = 0) -> tuple[int, int]:
    status, data, sense = client.run(pair_in(), lun=lun, read=96)
    assert status == 0, sense
    return data[10], data[11]


def test_policy_by_vendor_command_and_targetctl_survives_restart(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(CONFIG)
    client = BlockClient(daemon.port, IQN)
    assert policy_bytes(client) == (0, 0)  # no pair: no policy
    cdb = bytearray(pair_out(CREATE, 0, 1))
    cdb[6] = 0x02  # BACKUP POLICY: wait
    client.ok(bytes(cdb))
    assert policy_bytes(client) == (0x02, 0x01)
    assert policy_bytes(client, 1) == (0x02, 0x01)  # either LUN of the pair
    client.ok(set_policy(0x01, 1))  # reflect-first, by the target's LUN
    assert policy_bytes(client) == (0x01, 0x01)
    client.ok(set_policy(0x00))  # back to the configured policy: merge, not set on the pair
    assert policy_bytes(client) == (0x03, 0x00)
    # Refusals: an unknown policy, a reserved byte, a LUN in no pair.
    assert client.run(set_policy(0x05))[2] == (0x05, 0x24, 0x00)
    assert client.run(set_policy(0x01, reserved=1))[2] == (0x05, 0x24, 0x00)
    client.ok(pair_out(0x04))  # delete
    assert client.run(set_policy(0x01))[2] == (0x05, 0x80, 0x01)
    client.ok(pair_out(CREATE, 0, 1))
    assert policy_bytes(client) == (0x03, 0x00)

    done = daemon.targetctl("pair", "policy", "lun0-lun1", "split-and-backup", "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert (shown["backup_policy"], shown["backup_policy_set"]) == ("split-and-backup", True)
    assert policy_bytes(client) == (0x04, 0x01)
    table = daemon.targetctl("pair", "status").stdout.splitlines()
    assert table[0].split()[-2:] == ["POLICY", "REASON"]
    assert "split-and-backup" in table[1].split()
    bad = daemon.targetctl("pair", "policy", "lun0-lun1", "fastest")
    assert bad.returncode == 1 and "unknown backup policy" in bad.stderr
    client.close()

    daemon.restart()  # the policy is kept in the pair file
    client = BlockClient(daemon.port, IQN)
    assert policy_bytes(client) == (0x04, 0x01)
    done = daemon.targetctl("pair", "policy", "lun0-lun1", "default")
    assert done.returncode == 0, done.stderr
    assert "merge*" in done.stdout  # the configured one
    client.close()


def test_split_and_backup_policy_splits_on_a_plain_extended_copy(
    targetd_factory: DaemonFactory,
) -> None:
    """Policy 4 set on the pair: a LID1 EXTENDED COPY of the DUPLEX pair's target volume
    splits the pair itself and backs up the split-instant image, later writes excluded."""
    daemon = targetd_factory(CONFIG)
    client = BlockClient(daemon.port, IQN, (0, 1, TAPE))
    image = bytes(range(256)) * (4 * MiB // 256)
    client.write(0, 0, image)
    cdb = bytearray(pair_out(CREATE, 0, 1))
    cdb[6] = 0x04
    client.ok(bytes(cdb))
    client.wait("DUPLEX")
    fresh = b"\x5a" * MiB  # a backlog: mirrored, not yet all on the target
    client.write(0, MiB, fresh)
    image = image[:MiB] + fresh + image[2 * MiB :]
    ini = client.ini
    target, tape = naa_of(ini, 1), naa_of(ini, TAPE)
    segments = b"".join(seg_b2s(0, 1, 256 * 1024, 512, lba) for lba in range(0, 8192, 512))
    filemark = seg_filemarks(1, 1)
    cscds = cscd(target, 0x00, block_length=512) + cscd(tape, 0x01)
    params = lid1(cscds, segments + filemark, list_id=7)
    xcopy = xcopy_cdb(len(params))
    status, _, sense = ini.command(xcopy, lun=1, data=params)
    assert (status, sense) == (0, b"")
    st = client.status()
    assert (st.source, st.target in ("SPLIT-PENDING", "SPLIT")) == ("SPLIT", True)
    client.write(0, 0, b"\xff" * MiB)  # after the split: not in the backup
    assert ini.command(bytes([0x01, 0, 0, 0, 0, 0]), lun=TAPE)[0] == 0  # REWIND
    back = b""
    for _ in range(16):
        status, record, _ = ini.command(bytes([0x08, 0, 0x04, 0, 0, 0]), lun=TAPE, read=256 * 1024)
        assert status == 0
        back += record
    assert back == image
    client.close()


def reload_config(pairs: str, p0_policy: str) -> str:
    text = f'[pairs]\nchunk_size = "64KiB"\n{pairs}\n[[target]]\nname = "{IQN}"\n'
    for n in range(4):
        text += f'[[target.lun]]\nlun = {n}\nsize = "4MiB"\n'
    text += f'[[pair]]\nname = "p0"\nsource_lun = 0\ntarget_lun = 1\n{p0_policy}\n'
    return text + '[[pair]]\nname = "p1"\nsource_lun = 2\ntarget_lun = 3\n'


def test_a_reload_applies_the_pairs_settings_and_a_declared_pairs_policy(
    targetd_factory: DaemonFactory,
) -> None:
    """[pairs] backup_policy (and copy_rate) and a [[pair]]'s backup_policy changed in
    the file reach the running pairs at `targetctl reload`, and the answer says so; a
    policy set on the pair since the file gave it is kept, and the answer says that."""
    daemon = targetd_factory(
        reload_config('backup_policy = "merge"\ncopy_rate = "1MiB"', 'backup_policy = "wait"')
    )

    def policy(name: str) -> tuple[str, bool]:
        done = daemon.targetctl("pair", "status", name, "--json")
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        return status["backup_policy"], status["backup_policy_set"]

    def reload(text: str) -> dict[str, list[str]]:
        assert daemon.config is not None
        daemon.config.write_text(text)
        done = daemon.targetctl("reload", "--json")
        assert done.returncode == 0, done.stderr
        answer: dict[str, list[str]] = json.loads(done.stdout)
        return answer

    assert (policy("p0"), policy("p1")) == (("wait", True), ("merge", False))
    answer = reload(
        reload_config(
            'backup_policy = "reflect-first"\ncopy_rate = "2MiB"', 'backup_policy = "merge"'
        )
    )
    assert answer == {
        "applied": [
            "pairs.copy_rate: 2097152 (every pair's background copy)",
            "pairs.backup_policy: reflect-first"
            " (backups of pairs with no backup policy of their own)",
            "pair[0] 'p0': backup_policy merge",
        ],
        "refused": [],
    }, answer
    assert (policy("p0"), policy("p1")) == (("merge", True), ("reflect-first", False))
    # Set on the pair since: the file's next change is reported and not applied.
    assert daemon.targetctl("pair", "policy", "p0", "split-and-backup").returncode == 0
    answer = reload(reload_config('backup_policy = "reflect-first"\ncopy_rate = "2MiB"', ""))
    assert answer == {
        "applied": [],
        "refused": [
            "pair[0] 'p0': backup_policy none of its own (the [pairs] one) not applied:"
            " the pair's policy was set to split-and-backup since"
            " (targetctl pair policy changes it)"
        ],
    }, answer
    assert policy("p0") == ("split-and-backup", True)
    # The pair file keeps the applied policies; the configured one follows the file.
    daemon.restart()
    assert (policy("p0"), policy("p1")) == (("split-and-backup", True), ("reflect-first", False))
