"""Structured logs: one event per line, as ``key=value`` pairs or as JSON.

Call sites pass context as fields (``log.info("login", extra=fields(initiator=..., tsih=...))``)
and the formatter puts them on the line after the standard ones. A traceback becomes one
escaped field, so an event is always one line. Every line also passes through
:class:`SecretScrubber`, which replaces any configured CHAP secret with ``<hidden>``: a
secret cannot reach the log even through a message nobody thought about.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

FIELDS = "targetd_fields"
HIDDEN = "<hidden>"
_BARE = re.compile(r"[A-Za-z0-9_.:/@,+\-\[\]]+")


def fields(**kv: Any) -> dict[str, dict[str, Any]]:
    """The ``extra=`` argument that attaches ``kv`` to a log record."""
    return {FIELDS: kv}


def _quote(value: object) -> str:
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    return json.dumps(text)  # quotes, escapes newlines and control characters


class SecretScrubber:
    """Replaces known secrets in formatted lines. Updated when the configuration reloads."""

    def __init__(self) -> None:
        self._pattern: re.Pattern[str] | None = None

    def set_secrets(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is hidden whole.
        unique = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, unique))) if unique else None

    def __call__(self, line: str) -> str:
        return self._pattern.sub(HIDDEN, line) if self._pattern is not None else line


# Fields on every line this process logs: a worker process names itself (targetd.workers),
# since its lines share the portal's standard error.
PROCESS_FIELDS: dict[str, Any] = {}


class _Formatter(logging.Formatter):
    def __init__(self, scrub: SecretScrubber) -> None:
        super().__init__()
        self.scrub = scrub

    def pairs(self, record: logging.LogRecord) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            **PROCESS_FIELDS,
            "event": record.getMessage(),
        }
        out.update(getattr(record, FIELDS, None) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return out

    def format(self, record: logging.LogRecord) -> str:
        return self.scrub(self.render(self.pairs(record)))

    def render(self, pairs: dict[str, Any]) -> str:
        raise NotImplementedError


class KeyValueFormatter(_Formatter):
    def render(self, pairs: dict[str, Any]) -> str:
        return " ".join(f"{k}={_quote(v)}" for k, v in pairs.items() if v is not None)


class JsonFormatter(_Formatter):
    def render(self, pairs: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in pairs.items() if v is not None}, default=str)


FORMATS = {"kv": KeyValueFormatter, "json": JsonFormatter}
scrubber = SecretScrubber()


def setup(level: str = "INFO", fmt: str = "kv", stream: Any = None) -> None:
    """Send the ``targetd`` loggers (and everything else) to stderr, one event per line."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(FORMATS[fmt](scrubber))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def config_secrets(config: Any) -> list[str]:
    """Every CHAP secret a :class:`targetd.config.Config` holds."""
    chaps = [config.discovery_chap, config.discovery_mutual_chap]
    for target in config.targets:
        chaps += [target.chap, target.mutual_chap]
    return [c.secret for c in chaps if c is not None]
