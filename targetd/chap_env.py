"""CHAP credentials from the environment or a secret file, and the rule that a daemon started
with ``--require-chap`` (the container image does) serves no target without them.

Sources, for every target whose configuration names no ``chap`` of its own:

- ``TARGETD_CHAP_USER`` and ``TARGETD_CHAP_SECRET``;
- or ``TARGETD_CHAP_FILE`` (default ``/run/secrets/targetd-chap`` when that file exists): one
  line ``USER:SECRET``, as a container secret is mounted.

``TARGETD_ALLOW_NO_CHAP=1`` is the explicit opt-out of ``--require-chap``. Secrets never reach
the command line (``ps`` would show them) nor a log line.

With worker processes the portal alone reads these, once per load (its start, each reload),
and hands what it found to its workers (:func:`worker_env`, and the ``worker.reload``
request): a worker started again after a crash uses the credentials its portal and siblings
serve with, never the secret file as it is now.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from targetd.config import MAX_CHAP_SECRET, MIN_CHAP_SECRET, ChapSecret, Config, ConfigError

USER, SECRET, FILE, OPT_OUT = (
    "TARGETD_CHAP_USER",
    "TARGETD_CHAP_SECRET",
    "TARGETD_CHAP_FILE",
    "TARGETD_ALLOW_NO_CHAP",
)
# Set by a portal in its workers' environment: USER and SECRET (or their absence) are what
# the portal loaded; no file is read.
FROM_PORTAL = "TARGETD_CHAP_FROM_PORTAL"
log = logging.getLogger("targetd")
DEFAULT_SECRET_FILE = Path("/run/secrets/targetd-chap")
HOW = (
    f"set {USER} and {SECRET}, mount a secret file ({FILE}, default {DEFAULT_SECRET_FILE}: "
    f"one line USER:SECRET), or set {OPT_OUT}=1 to serve without authentication"
)


def environment_chap(env: Mapping[str, str]) -> ChapSecret | None:
    """The credentials the environment gives, or None; ConfigError names a bad variable."""
    user, secret = env.get(USER, ""), env.get(SECRET, "")
    if env.get(FROM_PORTAL) == "1":
        return ChapSecret(user, secret) if user else None
    if user or secret:
        if not (user and secret):
            raise ConfigError(USER if not user else SECRET, f"{USER} and {SECRET} go together")
        return _checked(user, secret, SECRET)
    path = Path(env[FILE]) if env.get(FILE) else DEFAULT_SECRET_FILE
    if not env.get(FILE) and not path.exists():
        return None
    try:
        text = path.read_text().strip()
    except OSError as err:
        raise ConfigError(FILE, f"cannot read {path}: {err.strerror or err}") from err
    user, sep, secret = text.partition(":")
    if not sep or "\n" in text:
        raise ConfigError(FILE, f"{path} must hold one line USER:SECRET")
    return _checked(user, secret, FILE)


def _checked(user: str, secret: str, key: str) -> ChapSecret:
    if len(user.encode()) > 255 or any(c.isspace() for c in user):
        raise ConfigError(USER if key == SECRET else key, "user must be 1..255 bytes, no spaces")
    if not MIN_CHAP_SECRET <= len(secret.encode()) <= MAX_CHAP_SECRET:
        raise ConfigError(
            key, f"the secret must be {MIN_CHAP_SECRET}..{MAX_CHAP_SECRET} bytes (RFC 3720 8.2.1)"
        )
    return ChapSecret(user, secret)


def worker_env(env: Mapping[str, str], chap: ChapSecret | None) -> dict[str, str]:
    """``env`` for a worker process whose portal loaded ``chap`` from its environment."""
    out = {k: v for k, v in env.items() if k not in (USER, SECRET, FILE)}
    out[FROM_PORTAL] = "1"
    if chap is not None:
        out[USER], out[SECRET] = chap.user, chap.secret
    return out


def apply(config: Config, env: Mapping[str, str], *, require: bool) -> Config:
    """``config`` with the environment's CHAP on every target that has none (and as its
    ``env_chap``); with ``require``, a target left without CHAP is a ConfigError unless the
    opt-out is set."""
    chap = environment_chap(env)
    if chap is not None:
        targets = tuple(t if t.chap else replace(t, chap=chap) for t in config.targets)
        config = replace(config, targets=targets, env_chap=chap)
    if require:
        open_targets = [i for i, t in enumerate(config.targets) if t.chap is None]
        if open_targets and env.get(OPT_OUT) != "1":
            i = open_targets[0]
            raise ConfigError(f"target[{i}].chap", f"--require-chap: none given; {HOW}")
        for i in open_targets:
            log.warning("%s: serving without CHAP (%s=1)", config.targets[i].name, OPT_OUT)
    return config
