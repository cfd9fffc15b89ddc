"""docs/backup.md, run as written in a QEMU guest: the page's ``toml`` block is the daemon's
configuration and its ``sh`` blocks, in order, are the script, with targetd-copy (from the
guest image, on Debian's Python) on /dev/sgN. Two ext4 volumes with files written before the
split, paired with their mirrors by the configuration in one consistency group, are split
with one command, backed up to the tape LUN, listed, verified, resynchronized,
restored onto spare LUNs, and mounted: ``sha256sum -c`` and ``diff`` in the page itself
fail the script unless they hold exactly the pre-split files."""

from __future__ import annotations

import re

import pytest
from conftest import REPO, DaemonFactory
from guest_vm import HOST_FROM_GUEST, run_guest, start_for_guest

GUIDE = REPO / "docs" / "backup.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", GUIDE.read_text(), re.S | re.M)


# Nine steps of a guest under TCG: about two minutes on a loaded 2-core machine.
@pytest.mark.timeout(600)
def test_the_guide_runs_as_written(targetd_factory: DaemonFactory) -> None:
    (config,) = blocks("toml")
    commands = blocks("sh")
    assert len(commands) >= 8, "docs/backup.md lost its sh blocks"
    daemon = start_for_guest(targetd_factory, config)
    # lib.sh only reads the harness's env file (PORTAL, below); the guide's blocks follow
    # verbatim, traced so a failure shows the command.
    script = ". ./lib.sh\nset -x\n" + "".join(commands) + "echo 'backup guide: done'\n"
    out = run_guest(script, daemon, env={"PORTAL": f"{HOST_FROM_GUEST}:{daemon.port}"}, timeout=400)
    assert "backup guide: done" in out
    # What the page promises to show on the way.
    assert re.search(r"^\s+0 .* 8388608\s+db-data\s", out, re.M), out
    assert re.search(r"^\s+1 .* 8388608\s+db-log\s", out, re.M), out
    assert out.count("verified: 8388608 bytes and equals") == 2
    assert out.count(", group db") >= 2, out  # status names the group of each pair
    assert "table1: OK" in out and "redo.log: OK" in out
