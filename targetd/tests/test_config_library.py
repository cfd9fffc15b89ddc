"""A tape library in the configuration: a changer LUN, the drives that name it, and the
Builder that makes them share one library."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from scsi.changer_device import MediaChanger
from scsi.tape_device import TapeDevice
from targetd.config import ConfigError, LibraryConfig, TapeStoreConfig, load_config
from targetd.luns import Builder

HEAD = '[[target]]\nname = "iqn.2026-11.org.example:t"\n'
LIBRARY = (
    HEAD + '[[target.lun]]\nlun = 0\nkind = "changer"\npath = "vtl"\nslots = 6\nmail_slots = 2\n'
    'capacity = "1MiB"\ntapes = ["A00001L6", "A00002L6"]\n'
    '[[target.lun]]\nlun = 1\nkind = "tape"\nchanger = 0\n'
    '[[target.lun]]\nlun = 2\nkind = "tape"\nchanger = 0\n'
)


def load(tmp_path: Path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(path, state_dir=tmp_path / "state")


def test_changer_and_drives_build_one_library(tmp_path: Path) -> None:
    config = load(tmp_path, LIBRARY)
    changer, first, second = config.targets[0].luns
    assert changer.library == LibraryConfig(6, 2, ("A00001L6", "A00002L6"))
    assert changer.size == 1 << 20 and changer.path == tmp_path / "state" / "vtl"
    assert (first.changer, second.changer) == (0, 0)
    builder = Builder(config)
    scsi = builder.target(config.targets[0])
    lu = scsi.luns[0]
    assert isinstance(lu, MediaChanger) and lu.identity.product == "VIRTUAL-CHANGER"
    assert lu.library.drives == [scsi.luns[1], scsi.luns[2]]
    assert isinstance(scsi.luns[1], TapeDevice) and not scsi.luns[1].has_cartridge
    assert sorted(p.name for p in (tmp_path / "state" / "vtl").iterdir()) == [
        "A00001L6.img",
        "A00002L6.img",
        "inventory.json",
    ]
    # the same drives once more (a reload that adds a drive to a built library) is refused
    with pytest.raises(ConfigError, match="only at a restart"):
        builder.lun(config.targets[0], config.targets[0].luns[1])


def test_an_s3_store_is_an_address_and_an_endpoint(tmp_path: Path) -> None:
    text = LIBRARY.replace(
        "slots = 6", 'slots = 6\nstore = "s3://tapes/site-a"\ns3_endpoint = "http://127.0.0.1:9"'
    )
    changer = load(tmp_path, text).targets[0].luns[0]
    assert changer.store == TapeStoreConfig("s3://tapes/site-a", "http://127.0.0.1:9")


def test_a_tape_lun_on_s3_names_its_tape_and_spools_in_a_directory(tmp_path: Path) -> None:
    text = HEAD + (
        '[[target.lun]]\nlun = 4\nkind = "tape"\nstore = "s3://tapes/site-a/T4"\n'
        's3_region = "eu-west-1"\n'
    )
    tape = load(tmp_path, text).targets[0].luns[0]
    assert tape.store == TapeStoreConfig("s3://tapes/site-a/T4", None, "eu-west-1")
    assert tape.path == tmp_path / "state" / "iqn.2026-11.org.example_t" / "lun4-spool"


@pytest.mark.parametrize("lun", ["changer", "tape"])
def test_an_s3_store_without_boto3_is_refused_with_the_way_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lun: str
) -> None:
    store = "s3://tapes/site-a" + ("/T1" if lun == "tape" else "")
    # A loopback endpoint nothing listens on: a builder that tried to connect gets no
    # further than this machine.
    text = HEAD + (
        f'[[target.lun]]\nlun = 0\nkind = "{lun}"\nstore = "{store}"\n'
        's3_endpoint = "http://127.0.0.1:9"\n'
    )
    config = load(tmp_path, text)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "boto3" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"needs boto3: pip install 'targetd\[s3\]'"):
        Builder(config).target(config.targets[0])


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (HEAD + '[[target.lun]]\nlun = 1\nkind = "tape"\nchanger = 0\n', "target[0].lun[0].changer",
         "not a changer"),
        (LIBRARY + '[[target.lun]]\nlun = 3\nkind = "tape"\nchanger = 1\n',
         "target[0].lun[3].changer", "not a changer"),
        (HEAD + '[[target.lun]]\nlun = 1\nkind = "tape"\nchanger = 0\npath = "x"\n',
         "target[0].lun[0].path", "library drive"),
        (HEAD + '[[target.lun]]\nlun = 0\nkind = "changer"\nslots = 0\n',
         "target[0].lun[0].slots", "must be 1..64512"),
        (HEAD + '[[target.lun]]\nlun = 0\nkind = "changer"\ntapes = ["A B"]\n',
         "target[0].lun[0].tapes[0]", "barcode"),
        (HEAD + '[[target.lun]]\nlun = 0\nkind = "changer"\nslots = 1\ntapes = ["A", "B"]\n',
         "target[0].lun[0].tapes", "do not fit"),
        (HEAD + '[[target.lun]]\nlun = 0\nkind = "changer"\nstore = "/srv/tapes"\n',
         "target[0].lun[0].store", "s3://bucket/prefix"),
        (HEAD + '[[target.lun]]\nlun = 0\nkind = "changer"\nstore = "s3://A_B/x"\n',
         "target[0].lun[0].store", "s3://bucket/prefix"),
        (HEAD + '[[target.lun]]\nlun = 0\nkind = "changer"\ns3_endpoint = "http://h:1"\n',
         "target[0].lun[0].s3_endpoint", "needs store"),
        (HEAD + '[[target.lun]]\nlun = 0\nkind = "changer"\nstore = "s3://bk1/x"\n'
         's3_endpoint = "127.0.0.1:8333"\n', "target[0].lun[0].s3_endpoint", "http(s)://"),
        (HEAD + '[[target.lun]]\nlun = 0\nkind = "tape"\nstore = "s3://bk1"\n',
         "target[0].lun[0].store", "names the tape"),
        (HEAD + '[[target.lun]]\nlun = 0\nkind = "tape"\nchanger = 1\nstore = "s3://bk1/x"\n',
         "target[0].lun[0].store", "unknown"),
        (HEAD + '[[target.lun]]\nlun = 0\nkind = "filesink"\nstore = "s3://bk1/x"\n',
         "target[0].lun[0].store", "unknown"),
    ],
)  # fmt: skip
def test_bad_library_keys(tmp_path: Path, text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert err.value.key == key and problem in err.value.problem
