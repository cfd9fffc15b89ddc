"""bench/trees.py: a worktree that a killed compare_tgtd.py run left behind is removed by the
next run, and no other worktree is touched."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from bench_runs import BENCH

sys.path.insert(0, str(BENCH))
try:
    import trees
finally:
    sys.path.remove(str(BENCH))


def _git(repo: Path, *args: str) -> str:
    argv = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "-C", str(repo)]
    return subprocess.run([*argv, *args], capture_output=True, text=True, check=True).stdout


def _worktrees(repo: Path) -> dict[Path, str]:
    """Each linked worktree git lists, with its lock line ('' when not locked)."""
    listed: dict[Path, str] = {}
    for block in _git(repo, "worktree", "list", "--porcelain").split("\n\n"):
        lines = block.splitlines()
        if lines and lines[0].startswith("worktree "):
            path = Path(lines[0].removeprefix("worktree "))
            listed[path] = next((line for line in lines if line.startswith("locked")), "")
    listed.pop(repo.resolve(), None)
    return listed


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "targetd").mkdir(parents=True)
    (repo / "targetd" / "__main__.py").write_text("")
    _git(repo, "init", "--quiet")
    _git(repo, "add", ".")
    _git(repo, "commit", "--quiet", "-m", "a targetd tree")
    return repo


def test_a_killed_runs_worktree_is_removed_by_the_next_and_no_other(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    killed_dir, live_dir = tmp_path / f"{trees.WORKDIR_PREFIX}killed", tmp_path / "live"
    killed_dir.mkdir()
    live_dir.mkdir()
    # A bench process makes its worktree and is killed before its cleanup runs.
    script = (
        f"import sys, time; sys.path.insert(0, {str(BENCH)!r}); import trees; from pathlib "
        f"import Path; trees.from_rev('base', 'HEAD', Path({str(repo)!r}), "
        f"Path({str(killed_dir)!r})); print('ready', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    killed = (killed_dir / "tree-base").resolve()
    # This process's own (a run still going), one a user made, and one locked by a user.
    live = trees.from_rev("new", "HEAD", repo, live_dir)
    users, locked = tmp_path / "users", tmp_path / "locked"
    _git(repo, "worktree", "add", "--detach", "--quiet", str(users))
    _git(repo, "worktree", "add", "--detach", "--quiet", "--lock", str(locked))
    before = _worktrees(repo)
    assert before[killed].startswith(f"locked targetd bench run: pid {child.pid} started ")
    assert set(before) == {killed, live.path.resolve(), users.resolve(), locked.resolve()}

    (killed_dir / "contender-base").mkdir()  # the run's own files go with it
    assert trees.remove_stale(repo) == [killed]
    assert not killed_dir.exists()
    assert set(_worktrees(repo)) == {live.path.resolve(), users.resolve(), locked.resolve()}
    assert trees.remove_stale(repo) == []

    trees.remove(live, repo)
    assert set(_worktrees(repo)) == {users.resolve(), locked.resolve()}


def test_a_stale_worktree_whose_directory_is_gone_leaves_gits_list(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    workdir = tmp_path / "work"
    workdir.mkdir()
    path = (workdir / "tree-base").resolve()
    # Locked in the name of a process that has exited, then its temporary directory deleted
    # (a reboot's /tmp clean-up): git's prune keeps a locked entry, the bench must not.
    argv = [sys.executable, "-c", "import os; print(os.getpid())"]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    reason = trees.LOCK_REASON.format(pid=int(done.stdout), start=0)
    _git(repo, "worktree", "add", "--detach", "--quiet", "--lock", "--reason", reason, str(path))
    shutil.rmtree(path)
    _git(repo, "worktree", "prune")
    assert path in _worktrees(repo)

    assert trees.remove_stale(repo) == [path]
    assert _worktrees(repo) == {}
    assert workdir.is_dir()  # not named as the bench names its own: not the bench's to remove
