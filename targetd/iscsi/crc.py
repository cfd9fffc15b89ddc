"""The ``crc32c`` package for the header and data digests, its code run at first use.

Most sessions negotiate no digest, while the package's import reads its own installed
metadata (importlib.metadata, email ...): about a tenth of a daemon start's CPU, paid by every
start (docs/performance.md). The package is still found at import, so a host without it
fails at start as before, not at the first digest.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING


def lazy_module(name: str) -> ModuleType:
    """``import name`` with the module's code deferred to its first attribute use
    (importlib.util.LazyLoader); raises ModuleNotFoundError now if there is no such module."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


if TYPE_CHECKING:
    import crc32c
else:
    crc32c = lazy_module("crc32c")

__all__ = ["crc32c", "lazy_module"]
