"""The layering rules of docs/design.md, checked on every module's imports.

- targetd/iscsi/ is a sans-I/O protocol core: no asyncio, socket or selectors.
- scsi/ knows nothing of iSCSI or the daemon: no targetd.
- backing/ knows nothing of SCSI: no scsi, no targetd.
- xcopy/ is built on scsi/ (it registers its commands in scsi's tables), so scsi/ never
  imports xcopy/; xcopy/ knows nothing of the daemon: no targetd.
- hostcopy/ (targetd-copy) runs on an initiator host with no daemon: nothing of targetd,
  xcopy or backing, and of scsi only the pure sense table (its tests may use the daemon's
  decoders as an oracle).
Tests beside the code count too: a test that needs a socket belongs in tests/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

RULES: dict[str, frozenset[str]] = {
    "targetd/iscsi": frozenset({"asyncio", "socket", "selectors", "uvloop"}),
    "scsi": frozenset({"targetd", "xcopy"}),
    "backing": frozenset({"scsi", "targetd", "xcopy"}),
    "xcopy": frozenset({"targetd"}),
    "hostcopy": frozenset({"targetd", "xcopy", "backing"}),
}
# Tests beside the code may import what they check against.
EXEMPT = {"hostcopy": "tests"}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module the file imports, wherever the import statement is."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            names.add(node.args[0].value.split(".")[0])  # type: ignore[attr-defined]
    return names


def _is_dynamic_import(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return (
        name in ("import_module", "__import__")
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def violations(package: str, forbidden: frozenset[str]) -> list[str]:
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        if EXEMPT.get(package) in path.relative_to(REPO / package).parts[:-1]:
            continue
        for name in sorted(imported_modules(path) & forbidden):
            found.append(f"{path.relative_to(REPO)} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(RULES))
def test_layer_imports(package: str) -> None:
    assert violations(package, RULES[package]) == []


def test_checker_sees_violations(tmp_path: Path) -> None:
    """The walk finds imports inside functions and from-imports, not just top-level ones."""
    module = tmp_path / "bad.py"
    module.write_text(
        "import os\n"
        "def f():\n"
        "    import socket\n"
        "    from asyncio import Queue\n"
        "    import importlib; importlib.import_module('targetd.server')\n"
        "from . import sibling\n"
    )
    assert imported_modules(module) == {"os", "socket", "asyncio", "importlib", "targetd"}


def test_hostcopy_takes_only_the_sense_table_from_scsi() -> None:
    """The tool ships without the daemon (the guest image carries hostcopy/ and
    scsi/sense.py alone): scsi.sense is the one module of scsi it may import."""
    found = []
    for path in sorted((REPO / "hostcopy").glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("scsi"):
                if node.module != "scsi.sense":
                    found.append(f"{path.name}: from {node.module}")
            elif isinstance(node, ast.Import):
                found += [f"{path.name}: import {a.name}" for a in node.names
                          if a.name.startswith("scsi") and a.name != "scsi.sense"]  # fmt: skip
    assert found == []


def test_layers_exist() -> None:
    # A renamed package would make the rules above pass vacuously.
    for package in ("targetd/iscsi", "scsi", "xcopy", "hostcopy"):
        assert any((REPO / package).glob("*.py")), package
