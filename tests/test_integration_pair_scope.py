"""Pair names are per target: a CREATE with a name that another target uses is answered
as on a free name, so it reveals nothing about the other target (docs/pairs.md, "Pair
names are per target"). targetctl names the target when a name alone is ambiguous."""

from __future__ import annotations

import json

from conftest import DaemonFactory
from pair_scsi import CREATE, BlockClient, pair_out

A = "iqn.2026-11.org.targetd:scope-a"
B = "iqn.2026-11.org.targetd:scope-b"
NAME_IN_USE = (0x5, 0x80, 0x05)


def two_targets() -> str:
    luns = "".join(f'[[target.lun]]\nlun = {n}\nsize = "4MiB"\n' for n in (0, 1, 2, 3))
    return f'[[target]]\nname = "{A}"\n{luns}\n[[target]]\nname = "{B}"\n{luns}'


def test_a_name_taken_on_another_target_is_answered_as_a_free_one(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(two_targets())
    a = BlockClient(daemon.port, A, (0, 1, 2))
    b = BlockClient(daemon.port, B, (0, 1, 2))
    a.ok(pair_out(CREATE, 0, 1, 2), data=b"db")
    # On B, "db" (taken on A) and "free" (taken nowhere) get the same answer: GOOD.
    assert b.run(pair_out(CREATE, 0, 1, 2), data=b"db") == (0, b"", None)
    assert b.run(pair_out(CREATE, 2, 3, 4), data=b"free") == (0, b"", None)
    # Within one target a name is still unique.
    a.ok(pair_out(CREATE, 2, 3, 4), data=b"free")
    status, _, sense = b.run(pair_out(CREATE, 2, 3, 2), lun=2, data=b"db")
    assert (status, sense) == (0x02, NAME_IN_USE)
    assert (b.status(0).name, b.status(0).target_lun) == ("db", 1)
    assert a.status(0).name == "db"

    # targetctl: the name alone is ambiguous; --target says which.
    done = daemon.targetctl("pair", "status", "db")
    assert done.returncode == 1
    assert f"pair 'db' exists in {A}, {B}: name the target" in done.stderr
    done = daemon.targetctl("pair", "status", "db", "--target", B, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["source"] == f"{B}/lun0"
    listing = json.loads(daemon.targetctl("pair", "status", "--json", "--target", A).stdout)
    assert sorted(p["name"] for p in listing) == ["db", "free"]
    assert all(p["source"].startswith(A) for p in listing)

    # Both survive a restart, each on its own target.
    a.close()
    b.close()
    daemon.restart()
    names = sorted(
        (p["source"], p["name"])
        for p in json.loads(daemon.targetctl("pair", "status", "--json").stdout)
    )
    assert names == [(f"{A}/lun0", "db"), (f"{A}/lun2", "free"),
                     (f"{B}/lun0", "db"), (f"{B}/lun2", "free")]  # fmt: skip
