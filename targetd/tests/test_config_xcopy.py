"""The config keys EXTENDED COPY reads: the file sink LUN kind and the pair backup policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from targetd.config import ConfigError, parse_config
from targetd.luns import backup_policy_lookup
from xcopy import Policy

TARGET = {"name": "iqn.2026-11.org.targetd:t", "lun": [{"lun": 0}]}


def parse(**root: object) -> object:
    return parse_config({**root, "target": [TARGET]}, base_dir=Path("/cfg"), state_dir=Path("/s"))


class Named:
    def __init__(self, name: str) -> None:
        self.name = name


def test_backup_policies_default_and_per_pair() -> None:
    config = parse(pairs={"backup_policy": "merge", "backup_policies": {"db": "wait"}})
    lookup = backup_policy_lookup(config)  # type: ignore[arg-type]
    assert lookup(Named("db")) is Policy.WAIT  # type: ignore[arg-type]
    assert lookup(Named("other")) is Policy.MERGE  # type: ignore[arg-type]
    assert backup_policy_lookup(parse())(Named("x")) is Policy.REFLECT_FIRST  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pairs", "key"),
    [
        ({"backup_policy": "fast"}, "pairs.backup_policy"),
        ({"backup_policies": {"db": "later"}}, "pairs.backup_policies.db"),
        ({"backup_policies": {"db": 3}}, "pairs.backup_policies.db"),
    ],
)
def test_bad_backup_policy_names_the_key(pairs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(pairs=pairs)
    assert info.value.key == key


def test_backup_priority_defaults_to_background() -> None:
    assert parse().pairs.backup_priority == "background"  # type: ignore[attr-defined]
    config = parse(pairs={"backup_priority": "normal"})
    assert config.pairs.backup_priority == "normal"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fast", "pairs.backup_priority: must be one of background, normal, got 'fast'"),
        (0, "pairs.backup_priority: expected str, got int 0"),
    ],
)
def test_bad_backup_priority_names_the_key(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(pairs={"backup_priority": value})
    assert info.value.key == "pairs.backup_priority"
    assert str(info.value) == message


def test_file_sink_lun_is_a_directory_with_a_capacity() -> None:
    target = {
        "name": "iqn.2026-11.org.targetd:t",
        "lun": [{"lun": 3, "kind": "filesink", "capacity": "2GiB"}],
    }
    config = parse_config({"target": [target]}, base_dir=Path("/cfg"), state_dir=Path("/s"))
    (lun,) = config.targets[0].luns
    assert (lun.kind, lun.size) == ("filesink", 2 << 30)
    assert lun.path == Path("/s/iqn.2026-11.org.targetd_t/lun3-sink")
