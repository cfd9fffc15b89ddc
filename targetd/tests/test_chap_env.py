"""CHAP credentials from the environment or a secret file, and --require-chap."""

from __future__ import annotations

from pathlib import Path

import pytest

from targetd import chap_env
from targetd.config import ChapSecret, ConfigError, default_config

SECRET = "twelve-bytes-or-more"


def test_environment_credentials_go_to_targets_without_chap(tmp_path: Path) -> None:
    config = default_config(tmp_path)
    env = {chap_env.USER: "host", chap_env.SECRET: SECRET, chap_env.FILE: ""}
    out = chap_env.apply(config, env, require=True)
    assert out.targets[0].chap == ChapSecret("host", SECRET)


def test_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "chap"
    secret.write_text(f"host:{SECRET}:with-colon\n")
    out = chap_env.apply(default_config(tmp_path), {chap_env.FILE: str(secret)}, require=True)
    assert out.targets[0].chap == ChapSecret("host", f"{SECRET}:with-colon")
    secret.write_text("no-colon-here-at-all\n")
    with pytest.raises(ConfigError) as info:
        chap_env.apply(default_config(tmp_path), {chap_env.FILE: str(secret)}, require=False)
    assert info.value.key == chap_env.FILE
    with pytest.raises(ConfigError) as info:
        chap_env.apply(
            default_config(tmp_path), {chap_env.FILE: str(tmp_path / "x")}, require=False
        )
    assert "cannot read" in info.value.problem


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({chap_env.USER: "host"}, chap_env.SECRET),
        ({chap_env.SECRET: SECRET}, chap_env.USER),
        ({chap_env.USER: "host", chap_env.SECRET: "short"}, chap_env.SECRET),
        ({chap_env.USER: "two words", chap_env.SECRET: SECRET}, chap_env.USER),
    ],
)
def test_bad_environment_names_the_variable(tmp_path: Path, env: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        chap_env.apply(default_config(tmp_path), env, require=False)
    assert info.value.key == key


def test_require_chap_refuses_an_open_target_unless_opted_out(tmp_path: Path, caplog) -> None:
    config = default_config(tmp_path)
    empty = {chap_env.FILE: ""}
    assert chap_env.apply(config, empty, require=False) == config  # only when asked
    with pytest.raises(ConfigError) as info:
        chap_env.apply(config, empty, require=True)
    assert info.value.key == "target[0].chap"
    assert chap_env.USER in info.value.problem and chap_env.OPT_OUT in info.value.problem
    assert chap_env.apply(config, {**empty, chap_env.OPT_OUT: "1"}, require=True) == config
    assert "serving without CHAP" in caplog.text


def test_a_worker_takes_what_its_portal_loaded_and_reads_no_file(tmp_path: Path) -> None:
    secret = tmp_path / "chap"
    secret.write_text(f"host:{SECRET}\n")
    portal_env = {chap_env.FILE: str(secret), "PATH": "/bin"}
    loaded = chap_env.apply(default_config(tmp_path), portal_env, require=True)
    assert loaded.env_chap == ChapSecret("host", SECRET)
    worker = chap_env.worker_env(portal_env, loaded.env_chap)
    assert chap_env.FILE not in worker and worker["PATH"] == "/bin"
    secret.write_text(f"other:{SECRET}-2\n")  # changed since the portal read it
    out = chap_env.apply(default_config(tmp_path), {**worker, chap_env.FILE: str(secret)},
                         require=True)  # fmt: skip
    assert out.targets[0].chap == ChapSecret("host", SECRET)
    # The portal found none: neither does the worker, whatever file there is.
    none = chap_env.worker_env(portal_env, None)
    assert chap_env.environment_chap({**none, chap_env.FILE: str(secret)}) is None
