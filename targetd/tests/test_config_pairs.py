"""The ``[pairs]`` table: defaults, sizes, and refusals that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from targetd.config import ConfigError, PairConfig, parse_config
from targetd.pairs import pair_settings

TARGET = {"target": [{"name": "iqn.2026-11.org.targetd:t", "lun": [{"lun": 0}]}]}


def load(pairs: object) -> PairConfig:
    return parse_config({**TARGET, "pairs": pairs}, base_dir=Path("/tmp")).pairs


def test_defaults_without_the_table() -> None:
    config = parse_config(dict(TARGET), base_dir=Path("/tmp"))
    assert config.pairs == PairConfig(262144, 2, 0)
    settings = pair_settings(config)
    assert (settings.chunk_size, settings.copy_workers, settings.copy_rate) == (262144, 2, 0)


def test_values_are_read() -> None:
    got = load({"chunk_size": "1MiB", "copy_workers": 4, "copy_rate": "50MiB"})
    assert got == PairConfig(1 << 20, 4, 50 << 20)
    assert load({"copy_rate": 0}).copy_rate == 0


@pytest.mark.parametrize(
    ("pairs", "key"),
    [
        ({"chunk_size": "32KiB"}, "pairs.chunk_size"),
        ({"chunk_size": "96KiB"}, "pairs.chunk_size"),
        ({"chunk_size": "2MiB"}, "pairs.chunk_size"),
        ({"copy_workers": 0}, "pairs.copy_workers"),
        ({"copy_rate": "fast"}, "pairs.copy_rate"),
        ({"pace": 3}, "pairs.pace"),
    ],
)
def test_bad_values_name_their_key(pairs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(pairs)
    assert err.value.key == key
