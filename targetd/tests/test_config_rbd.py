"""RBD LUN keys in the configuration: the image, how to reach it, creating it, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from targetd.config import ConfigError, RbdConfig, load_config

TARGET = '[[target]]\nname = "iqn.2026-11.org.example:t"\n'
LUN = '[[target.lun]]\nlun = {n}\nkind = "rbd"\npool = "rbd"\n'


def load(tmp_path: Path, *luns: str):
    path = tmp_path / "c.toml"
    path.write_text(TARGET + "".join(luns))
    return load_config(path)


def test_defaults_and_every_key(tmp_path: Path) -> None:
    cfg = load(tmp_path, LUN.format(n=0) + 'image = "a"\n')
    assert cfg.targets[0].luns[0].rbd == RbdConfig(pool="rbd", image="a")
    full = (
        LUN.format(n=1)
        + 'image = "b"\nnamespace = "ns"\nceph_conf = "/etc/c.conf"\nclient = "gw"\n'
        + 'keyring = "/etc/k"\ncreate = true\nsize = "2GiB"\ncache = "writeback"\n'
        + "osd_op_timeout = 40\nconnect_timeout = 5\nblock_size = 4096\n"
    )
    lun = load(tmp_path, full).targets[0].luns[0]
    assert lun.kind == "rbd" and lun.size == 2 << 30 and lun.block_size == 4096
    assert lun.rbd == RbdConfig("rbd", "b", "ns", "/etc/c.conf", "gw", "/etc/k", True,
                                "writeback", 40, 5)  # fmt: skip


@pytest.mark.parametrize("cache", ["none", "writearound", "writeback"])
def test_the_cache_modes(tmp_path: Path, cache: str) -> None:
    lun = load(tmp_path, LUN.format(n=0) + f'image = "a"\ncache = "{cache}"\n').targets[0].luns[0]
    assert lun.rbd is not None and lun.rbd.cache == cache


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ("", "target[0].lun[0].image", "missing"),
        ('image = "a/b"\n', "target[0].lun[0].image", "plain name"),
        ('image = "a"\npath = "x.img"\n', "target[0].lun[0].path", "no path"),
        ('image = "a"\ncache = "writethrough"\n', "target[0].lun[0].cache", "one of"),
        ('image = "a"\nsize = "1GiB"\n', "target[0].lun[0].size", "with create = true"),
        ('image = "a"\ncreate = true\n', "target[0].lun[0].size", "needs the size"),
        ('image = "a"\nosd_op_timeout = -1\n', "target[0].lun[0].osd_op_timeout", "0..3600"),
        ('image = "a"\nmonitors = "x"\n', "target[0].lun[0].monitors", "unknown key"),
    ],
)
def test_refusals_name_the_key(tmp_path: Path, extra: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, LUN.format(n=0) + extra)
    assert err.value.key == key and problem in err.value.problem


def test_two_luns_on_one_image_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, LUN.format(n=0) + 'image = "a"\n', LUN.format(n=1) + 'image = "a"\n')
    assert err.value.key == "target[0].lun[1].image"
    assert "rbd image rbd/a is already used" in err.value.problem
    # The same name in another namespace is another image.
    load(tmp_path, LUN.format(n=0) + 'image = "a"\n',
         LUN.format(n=1) + 'image = "a"\nnamespace = "n"\n')  # fmt: skip
