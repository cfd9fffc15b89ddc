"""targetd code versions to run side by side: a checkout (``NAME=PATH``) or a git revision
(``NAME=REV``) that is checked out into a temporary worktree for the run and removed after.

Each version's daemon is started from its own tree (``cwd`` and ``PYTHONPATH`` = the tree,
``python -m targetd``), and ``module_file`` proves which ``targetd`` package that resolves to
before anything is measured: a run that silently imported another tree's code would compare a
version with itself.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
RESERVED = frozenset({"tgtd"})


class TreeError(RuntimeError):
    """A tree that is not a targetd checkout, or a revision git cannot check out."""


@dataclass
class Tree:
    name: str
    path: Path  # the tree's root: ``targetd/`` is in it
    rev: str | None = None  # the revision asked for, when the bench checked it out
    commit: str | None = None  # its HEAD, when it is a git checkout
    dirty: bool | None = None  # uncommitted changes to tracked files (None: not git)
    module_file: str | None = None  # where ``import targetd`` resolved from, started as run
    made_worktree: bool = field(default=False, repr=False)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "path": str(self.path),
            "rev": self.rev,
            "commit": self.commit,
            "dirty": self.dirty,
            "module_file": self.module_file,
        }


def parse_spec(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` with a name fit for a table column and a directory name."""
    name, sep, value = text.partition("=")
    if not sep or not value:
        raise ValueError(f"expected NAME=PATH or NAME=REV, got {text!r}")
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r}: a name is 1-32 letters, digits, '.', '_' or '-'")
    if name in RESERVED:
        raise ValueError(f"{name!r} is the peer's name; choose another")
    return name, value


def _spec(kind: str) -> Callable[[str], tuple[str, str, str]]:
    def parse(text: str) -> tuple[str, str, str]:
        try:
            return (kind, *parse_spec(text))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--targetd-tree NAME=PATH`` and ``--targetd-rev NAME=REV``: both append
    ``(kind, name, where)`` to ``args.tree_specs``, so the contenders keep the command
    line's order."""
    parser.add_argument(
        "--targetd-tree",
        dest="tree_specs",
        action="append",
        type=_spec("tree"),
        default=[],
        metavar="NAME=PATH",
        help="a targetd checkout (or git worktree) to run as contender NAME, from its own"
        " code; repeatable, instead of this tree's targetd",
    )
    parser.add_argument(
        "--targetd-rev",
        dest="tree_specs",
        action="append",
        type=_spec("rev"),
        metavar="NAME=REV",
        help="a git revision of this repository, checked out into a temporary worktree for"
        " the run (removed after), as contender NAME; repeatable. The first tree or rev"
        " given is the one the others are compared with",
    )


def code_env(tree: Path) -> dict[str, str]:
    """The environment a daemon of ``tree`` runs in: its own tree first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH", "")) if p)
    return env


def module_file(tree: Path, python: str = sys.executable) -> str:
    """The ``targetd/__init__.py`` that ``python -m targetd`` started in ``tree`` imports."""
    done = subprocess.run(
        [python, "-c", "import targetd; print(targetd.__file__)"],
        cwd=tree,
        env=code_env(tree),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise TreeError(f"{tree}: cannot import targetd: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def _git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and done.returncode != 0:
        raise TreeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done


def _describe_git(tree: Tree) -> None:
    head = _git(tree.path, "rev-parse", "HEAD", check=False)
    if head.returncode != 0:
        return  # a plain copy of the sources: no commit to record
    tree.commit = head.stdout.strip()
    status = _git(tree.path, "status", "--porcelain", "--untracked-files=no", check=False)
    tree.dirty = bool(status.stdout.strip())


def from_path(name: str, path: str) -> Tree:
    root = Path(path).expanduser().resolve()
    if not (root / "targetd" / "__main__.py").is_file():
        raise TreeError(f"{name}={path}: no targetd/__main__.py in {root}")
    tree = Tree(name, root)
    _describe_git(tree)
    return tree


# Each worktree the bench makes is locked with this reason, naming the process that made it
# (pid and start time, so a reused pid is not taken for it). A run killed with SIGKILL never
# reaches its ``remove``; the next run finds the lock of a process that is gone and removes
# that worktree (``remove_stale``). The lock also keeps ``git worktree prune`` off it while it
# runs, and ``git worktree list`` shows a user whose it is.
LOCK_REASON = "targetd bench run: pid {pid} started {start}"
# The temporary directory of a run (the worktrees, the contenders' state and LUN files): a
# killed run's is removed with its worktrees.
WORKDIR_PREFIX = "targetd-bench-"
_LOCK = re.compile(r"targetd bench run: pid (\d+) started (\d+)")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def lock_reason(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return LOCK_REASON.format(pid=pid, start=_start_time(pid))


def from_rev(name: str, rev: str, repo: Path, workdir: Path) -> Tree:
    """``rev`` of ``repo`` checked out (detached) into ``workdir/tree-NAME``; ``remove`` takes
    the worktree away again."""
    commit = _git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}").stdout.strip()
    path = workdir / f"tree-{name}"
    lock = ("--lock", "--reason", lock_reason())
    _git(repo, "worktree", "add", "--detach", "--quiet", *lock, str(path), commit)
    tree = Tree(name, path, rev=rev, commit=commit, dirty=False, made_worktree=True)
    if not (path / "targetd" / "__main__.py").is_file():
        remove(tree, repo)
        raise TreeError(f"{name}={rev}: revision {commit[:12]} has no targetd/__main__.py")
    return tree


def _remove_worktree(repo: Path, path: Path) -> None:
    _git(repo, "worktree", "unlock", str(path), check=False)
    _git(repo, "worktree", "remove", "--force", str(path), check=False)
    _git(repo, "worktree", "prune", check=False)  # its entry, if its directory was gone


def remove(tree: Tree, repo: Path) -> None:
    """Remove a worktree this module made (a checkout given by path is never touched)."""
    if tree.made_worktree:
        _remove_worktree(repo, tree.path)
        tree.made_worktree = False


def remove_stale(repo: Path) -> list[Path]:
    """Remove the worktrees of ``repo`` that a bench run made and left behind: those locked
    with ``LOCK_REASON`` by a process that no longer runs, and the run's temporary directory
    they are in (named ``WORKDIR_PREFIX...``). Any other worktree, and those of a bench run
    still going, are left alone. Returns the worktrees removed."""
    listed = _git(repo, "worktree", "list", "--porcelain", check=False).stdout
    stale: list[Path] = []
    for block in listed.split("\n\n"):
        fields = dict(line.partition(" ")[::2] for line in block.splitlines())
        lock = _LOCK.fullmatch(fields.get("locked", ""))
        if "worktree" in fields and lock and _start_time(int(lock[1])) != lock[2]:
            stale.append(Path(fields["worktree"]))
    for path in stale:
        _remove_worktree(repo, path)
    for workdir in {path.parent for path in stale}:
        if workdir.name.startswith(WORKDIR_PREFIX):
            shutil.rmtree(workdir, ignore_errors=True)
    return stale


def resolve(
    specs: list[tuple[str, str, str]], repo: Path, workdir: Path, python: str = sys.executable
) -> list[Tree]:
    """``specs``: (kind, name, value) in command-line order, kind "tree" or "rev". On a
    failure the worktrees already made are removed before the error goes up."""
    names = [name for _, name, _ in specs]
    if len(set(names)) != len(names):
        raise TreeError(f"each tree needs its own name: {', '.join(names)}")
    trees: list[Tree] = []
    try:
        for kind, name, value in specs:
            tree = from_rev(name, value, repo, workdir) if kind == "rev" else from_path(name, value)
            trees.append(tree)
            tree.module_file = module_file(tree.path, python)
            expected = tree.path / "targetd" / "__init__.py"
            if Path(tree.module_file).resolve() != expected.resolve():
                raise TreeError(
                    f"{name}: python -m targetd in {tree.path} imports {tree.module_file},"
                    f" not {expected}"
                )
    except BaseException:
        for tree in trees:
            remove(tree, repo)
        raise
    return trees
