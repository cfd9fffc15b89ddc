"""The layering rules of docs/design.md, checked on every module's imports.

- targetd/iscsi/ is a sans-I/O protocol core: no asyncio, socket or selectors.
- scsi/ knows nothing of iSCSI or the daemon: no targetd.
- backing/ knows nothing of SCSI: no scsi, no targetd.
- xcopy/ is built on scsi/ (a LU is given xcopy's commands, VPD page and copy manager
  when it is built), so scsi/ never imports xcopy/; xcopy/ knows nothing of the daemon:
  no targetd.
- Explicit wiring: importing xcopy changes no table of scsi/, and no module patches a
  copy manager onto a LU after it is built.
- xcopy/ goes through the LU, never around it: no store's file descriptor or base, and a
  pair only through the pair service (PairService, SplitImage), never the Pair itself.
- hostcopy/ (targetd-copy) runs on an initiator host with no daemon: nothing of targetd,
  xcopy or backing, and of scsi only the pure sense table (its tests may use the daemon's
  decoders as an oracle).
Tests beside the code count too: a test that needs a socket belongs in tests/.
"""

from __future__ import annotations

import ast
import gc
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


def parse(path: Path) -> ast.Module:
    """The module's syntax tree, with the cyclic garbage collector held off while it is built.

    CPython up to 3.11.7 counts the depth of the tree it builds in one counter for the whole
    interpreter (gh-106905, fixed in 3.11.8 by a counter per call). A collection triggered by
    an allocation in the middle runs finalizers, and a finalizer that parses (a traceback
    printed for an unraisable exception or a task never awaited: 3.11's tracebacks parse
    source for their carets), or another thread it lets run, resets that counter: the outer
    parse then fails with ``SystemError: AST constructor recursion depth mismatch``. The
    recursion limit (which hypothesis raises and restores) plays no part, so resetting it
    does not help, and ``compile(..., ast.PyCF_ONLY_AST)`` is the same code path. With the
    collector off no Python code runs during the build, so nothing can re-enter it."""
    source = path.read_text()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source, filename=str(path))
    finally:
        if was_enabled:
            gc.enable()


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module the file imports, wherever the import statement is."""
    tree = parse(path)
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


class _ParsesWhenCollected:
    """Cyclic garbage whose finalizer parses, as a traceback printed from a finalizer does."""

    def __init__(self) -> None:
        self.cycle = self

    def __del__(self) -> None:
        ast.parse("x = 1")


def test_a_parse_survives_a_collection_that_parses() -> None:
    """With collections every 50 allocations and a parsing finalizer in each, ast.parse of
    3.11.7 fails about nine times in ten; parse() never does."""
    module = Path(__file__)
    thresholds = gc.get_threshold()
    gc.set_threshold(50)
    try:
        for _ in range(50):
            _ParsesWhenCollected()
            assert isinstance(parse(module), ast.Module)
    finally:
        gc.set_threshold(*thresholds)
        gc.collect()


def test_hostcopy_takes_only_the_sense_table_from_scsi() -> None:
    """The tool ships without the daemon (the guest image carries hostcopy/ and
    scsi/sense.py alone): scsi.sense is the one module of scsi it may import."""
    found = []
    for path in sorted((REPO / "hostcopy").glob("*.py")):
        tree = parse(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("scsi"):
                if node.module != "scsi.sense":
                    found.append(f"{path.name}: from {node.module}")
            elif isinstance(node, ast.Import):
                found += [f"{path.name}: import {a.name}" for a in node.names
                          if a.name.startswith("scsi") and a.name != "scsi.sense"]  # fmt: skip
    assert found == []


def daemon_imports(path: Path) -> list[str]:
    """Modules of targetd outside targetd.iscsi that ``path`` imports (TYPE_CHECKING too)."""
    tree = parse(path)
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            if node.module == "targetd":
                names += [f"targetd.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            names.append(node.args[0].value)  # type: ignore[attr-defined]
    return [
        n
        for n in names
        if n.startswith("targetd.") and not (n == "targetd.iscsi" or n.startswith("targetd.iscsi."))
    ]


def test_iscsi_core_knows_nothing_of_the_daemon() -> None:
    """The sans-I/O core has its own interface (targetd.iscsi.settings): it never reads the
    daemon's config, nor anything else of the daemon. Its tests build Settings too."""
    found = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / "targetd/iscsi").rglob("*.py"))
        for name in daemon_imports(path)
    ]
    assert found == []


def test_daemon_import_checker_sees_type_checking_imports(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "from targetd import config\n"
        "from targetd.iscsi.pdu import Op\n"
        "if TYPE_CHECKING:\n"
        "    from targetd.config import Config\n"
    )
    assert daemon_imports(module) == ["targetd.config", "targetd.config"]


def test_layers_exist() -> None:
    # A renamed package would make the rules above pass vacuously.
    for package in ("targetd/iscsi", "scsi", "xcopy", "hostcopy"):
        assert any((REPO / package).glob("*.py")), package


# -- explicit wiring ---------------------------------------------------------------------
PATCHED_SERVICES = frozenset({"copy_manager", "third_party_copy"})


def attribute_assignments(path: Path, names: frozenset[str]) -> list[str]:
    """``x.name = ...`` (or ``setattr(x, "name", ...)``) for the given names."""
    tree = parse(path)
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    found = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Attribute) and target.attr in names:
                found.append(f"{where}:{node.lineno} sets .{target.attr}")
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", "") == "setattr"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in names
        ):
            found.append(f"{where}:{node.lineno} setattr {node.args[1].value}")
    return found


def test_no_module_patches_copy_services_onto_a_lu() -> None:
    found = [
        hit
        for package in ("targetd", "scsi", "xcopy", "backing")
        for path in sorted((REPO / package).rglob("*.py"))
        for hit in attribute_assignments(path, PATCHED_SERVICES)
    ]
    assert found == []


def test_the_patch_finder_sees_patches(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("lu.copy_manager = m\nsetattr(lu, 'third_party_copy', True)\n")
    assert len(attribute_assignments(module, PATCHED_SERVICES)) == 2


def test_importing_xcopy_registers_nothing() -> None:
    """scsi's tables and VPD pages are what scsi/ defines, with or without xcopy imported:
    a LU serves EXTENDED COPY only when it was built with xcopy's services."""
    code = (
        "import scsi.block_device, scsi.tape_device, scsi.file_sink, scsi.target;"
        "from scsi.sbc import SBC_TABLE; from scsi.ssc import SSC_TABLE;"
        "from scsi.file_sink import FILE_SINK_TABLE; import scsi.vpd as vpd;"
        "before = [len(t) for t in (SBC_TABLE, SSC_TABLE, FILE_SINK_TABLE)];"
        "pages = dict(vars(vpd));"
        "import xcopy, targetd.luns;"
        "after = [len(t) for t in (SBC_TABLE, SSC_TABLE, FILE_SINK_TABLE)];"
        "assert before == after, (before, after);"
        "assert SBC_TABLE.get(0x83, 0) is None and SSC_TABLE.get(0x84, 3) is None;"
        "assert not hasattr(vpd, 'EXTRA_PAGES')"
    )
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


# -- xcopy/ goes through the LU, never around it ---------------------------------------------
# A backing store's file descriptor, a pair volume's base store or its pair and role (pairs
# are found through the LU's pair control, the pair service), the tape image or sink
# directory behind a stream LU, and anything private: the LU offers services instead
# (BlockDevice.kernel_readable / write_from_file, TapeDevice.append_record ..., docs/xcopy.md).
STORE_INTERNALS = frozenset({"fd", "_fd", "fileno", "base", "image", "sink", "pair", "role"})


def reaches_around(path: Path) -> list[str]:
    """Attribute reads of store internals (``x.fd``, ``volume.base``, ``lu._held`` ...) and
    direct kernel copies (``os.copy_file_range``), outside ``self``."""
    tree = parse(path)
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id == "self":
            continue  # an object's own attributes are its business
        private = node.attr.startswith("_") and not node.attr.startswith("__")
        if node.attr in STORE_INTERNALS or private or node.attr == "copy_file_range":
            found.append(f"{where}:{node.lineno} .{node.attr}")
    return found


def test_xcopy_never_reaches_into_a_store() -> None:
    found = [
        hit
        for path in sorted((REPO / "xcopy").glob("*.py"))  # the package, not its tests
        for hit in reaches_around(path)
    ]
    assert found == []


def test_the_reach_finder_sees_reaches(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text(
        "fd = lu.store.fd\n"
        "base = lu.store.base.fd\n"
        "lu._held.clear()\n"
        "os.copy_file_range(a, b, n)\n"
        "self.fd = 3\n"
        "x.__class__\n"
    )
    assert len(reaches_around(module)) == 5


# -- xcopy/ sees a pair only through the pair service -----------------------------------------
# PairService (backing/pairs/service.py) is the one entry point of pair operations, and a
# backup reads a split pair's target through its SplitImage (intact, reflected, reflect,
# wait_reflected, extents). The Pair object, its manager, engine, bitmap and journal, and what
# only a pair has (its pending-chunk sets, phase, reflect and wait calls) are off limits.
PAIR_MODULES = frozenset(
    f"backing.pairs.{name}" for name in ("engine", "manager", "bitmap", "journal")
)
PAIR_CLASSES = frozenset({"Pair", "PairManager", "PairSettings"})
PAIR_INTERNALS = frozenset(
    {
        "copy_set",
        "src_changed",
        "tgt_changed",
        "initializing",
        "phase",
        "effective_backup_policy",
        "wait_until",
        "host_write",
        "read_target",
        "reflect_range",
        "read_split_image",
        "suspend",
        "pair_of",  # PairService.pair_of hands out the Pair itself
    }
)


def pair_reaches(path: Path) -> list[str]:
    """Imports of the pair engine's modules or classes, and attribute reads of a pair's
    internals (outside ``self``)."""
    tree = parse(path)
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    found = []
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            found += [f"{where}:{node.lineno} imports {alias.name}"
                      for alias in node.names if alias.name in PAIR_CLASSES]  # fmt: skip
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            modules = [node.args[0].value]  # type: ignore[attr-defined]
        elif isinstance(node, ast.Attribute):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id == "self":
                continue
            if node.attr in PAIR_INTERNALS or node.attr in PAIR_CLASSES:
                found.append(f"{where}:{node.lineno} .{node.attr}")
        found += [f"{where}:{node.lineno} imports {m}" for m in modules if m in PAIR_MODULES]
    return found


def test_xcopy_never_reaches_into_a_pair() -> None:
    found = [
        hit
        for path in sorted((REPO / "xcopy").glob("*.py"))  # the package, not its tests
        for hit in pair_reaches(path)
    ]
    assert found == []


def test_the_pair_reach_finder_sees_reaches(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text(
        "from backing.pairs.engine import PairStatus\n"
        "from backing.pairs import Pair, PairService\n"
        "from backing.pairs import manager\n"
        "import backing.pairs.bitmap\n"
        "importlib.import_module('backing.pairs.journal')\n"
        "pending = image._pair.copy_set\n"
        "await pair.reflect_range(0, 1)\n"
        "await self.pair.wait_until(done)\n"
        "if status.phase is Phase.SPLIT: pass\n"
        "pair = service.pair_of(volume)\n"
        "x = backing.pairs.Pair\n"
        "self.phase = 1\n"
    )
    assert len(pair_reaches(module)) == 11
