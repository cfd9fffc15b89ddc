"""Reading a TOML table: :class:`ConfigError`, the :class:`Table` reader that knows its
key path and refuses leftover keys, and the scalar forms many tables share (sizes,
``HOST:PORT``, iSCSI names)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from targetd.config_model import DEFAULT_PORT


class ConfigError(Exception):
    """A bad configuration: names the key and the problem (``targetd serve`` exits 2)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


# RFC 3720 3.2.6.3 name forms. ``iqn.`` names are lowercase after stringprep (RFC 3722), so a
# name with capitals would never match what an initiator sends: we refuse it here instead.
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_IQN = re.compile(rf"iqn\.\d{{4}}-(?:0[1-9]|1[0-2])\.{_LABEL}(?:\.{_LABEL})*(?::[^\sA-Z]*)?")
_EUI = re.compile(r"eui\.[0-9A-Fa-f]{16}")
_NAA = re.compile(r"naa\.(?:[0-9A-Fa-f]{16}|[0-9A-Fa-f]{32})")
MAX_NAME_BYTES = 223  # RFC 3720 3.2.6.1
_SIZE = re.compile(r"\s*(\d+)\s*(B|KiB|MiB|GiB|TiB)?\s*")
_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}

_T = TypeVar("_T")


def is_valid_iscsi_name(name: str) -> bool:
    """True for an RFC 3720 ``iqn.``, ``eui.`` or RFC 3980 ``naa.`` name."""
    if len(name.encode()) > MAX_NAME_BYTES:
        return False
    return any(p.fullmatch(name) for p in (_IQN, _EUI, _NAA))


def parse_size(value: object, key: str) -> int:
    """A byte count: an integer, or a string such as ``"1GiB"``, ``"512MiB"``, ``"4096"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value)):
        number = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ConfigError(key, f"expected a size like 1GiB, 512MiB or a byte count, got {value!r}")
    if number <= 0:
        raise ConfigError(key, f"size must be positive, got {value!r}")
    return number


def parse_hostport(value: str, key: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, or a bare host (default port) -> (host, port)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"expected HOST:PORT, got {value!r}")
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(key, f"expected [IPV6]:PORT, got {value!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ConfigError(key, f"an IPv6 address needs brackets: [{text}]:PORT")
    else:
        host, port_text = text, None
    if not host or any(c.isspace() for c in host):
        raise ConfigError(key, f"missing or malformed host in {value!r}")
    if port_text is None:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(key, f"port must be 1..65535, got {port_text!r}")
    return host, int(port_text)


class Table:
    """One TOML table being read: knows its key path and complains about leftovers."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, f"expected a table, got {type_name(data)}")
        self.data = dict(data)
        self.path = path

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def take(self, name: str, kind: type[_T], default: _T) -> _T:
        if name not in self.data:
            return default
        value = self.data.pop(name)
        # bool is an int in Python, never in a config file.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                self.key(name), f"expected {kind.__name__}, got {type_name(value)} {value!r}"
            )
        return value

    def take_int(self, name: str, default: int, low: int, high: int) -> int:
        value = self.take(name, int, default)
        if not low <= value <= high:
            raise ConfigError(self.key(name), f"must be {low}..{high}, got {value}")
        return value

    def take_raw(self, name: str) -> object:
        return self.data.pop(name, None)

    def take_list(self, name: str, item: Callable[[object, str], _T]) -> tuple[_T, ...]:
        value = self.data.pop(name, [])
        if not isinstance(value, list):
            raise ConfigError(self.key(name), f"expected an array, got {type_name(value)}")
        return tuple(item(v, f"{self.key(name)}[{i}]") for i, v in enumerate(value))

    def done(self) -> None:
        if self.data:
            unknown = sorted(self.data)[0]
            raise ConfigError(self.key(unknown), "unknown key")


def type_name(value: object) -> str:
    return {dict: "table", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )
