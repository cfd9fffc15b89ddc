"""Integration tests import their helpers with ``from conftest import ...``. pytest keeps
one module named ``conftest``, the last conftest.py it loaded, so a conftest.py in another
test folder would make those imports fail at collection (see the root conftest.py)."""

from __future__ import annotations

import subprocess

from conftest import REPO


def test_only_the_root_and_tests_folders_hold_a_conftest() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "--", "*conftest.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sorted(tracked) == ["conftest.py", "tests/conftest.py"]
