"""The configuration examples of docs/config.md, docs/tape.md, docs/workers.md and
docs/operations.md, taken from the pages and served as written (the test's ``--listen`` and
``--state-dir`` replace the file's portals and state directory, as the command line does for
a user), with the pages' client commands run against them: a snippet that no longer parses,
a key renamed, or output that drifted from what the page shows fails here."""

from __future__ import annotations

import re
import shlex
import subprocess
import urllib.request

from conftest import REPO, DaemonFactory, free_port

DOCS = REPO / "docs"


def fenced(page: str, lang: str, after: str) -> str:
    """The first ```LANG block of docs/PAGE after the text ``after``."""
    text = (DOCS / page).read_text().split(after, 1)[1]
    block = re.search(rf"```{lang}\n(.*?)```", text, re.S)
    assert block, f"docs/{page} has no {lang} block after {after!r}"
    return block.group(1)


def run(line: str, portal: str) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(line.replace("127.0.0.1:3260", portal), comments=True)
    return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=60)


def test_the_full_example_serves_and_its_chap_urls_log_in(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(fenced("config.md", "toml", "## Full example"))
    lines = [
        line
        for line in fenced("config.md", "sh", "With libiscsi clients").splitlines()
        if line.startswith("iscsi-inq")
    ]
    assert len(lines) == 2, lines  # one-way CHAP, then mutual CHAP
    for line in lines:
        done = run(line, daemon.portal)
        assert done.returncode == 0, f"{line}: {done.stderr}"
        assert "Peripheral Device Type:DIRECT_ACCESS" in done.stdout
    # Without -i, libiscsi's own name is not in allowed_initiators: the page's log line.
    refused = run(lines[0].replace("-i iqn.1994-05.com.redhat:db-host-1 ", ""), daemon.portal)
    assert refused.returncode != 0
    assert "Authorization failure" in refused.stderr, refused.stderr
    assert (
        'reason="login refused: AUTHORIZATION_FAILURE: '
        "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-inq not allowed (target "
        "iqn.2026-11.org.example:database)"
    ) in daemon.stderr


def test_the_declared_pairs_and_group_are_made_at_start(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(fenced("config.md", "toml", "## `[[pair]]` and `[[group]]`"))
    waited = daemon.targetctl("group", "wait", "db", "--state", "DUPLEX", "--timeout", "60")
    assert waited.returncode == 0, waited.stderr
    status = daemon.targetctl("group", "status", "db")
    assert status.stdout.splitlines()[0] == "group db: DUPLEX, pairs db-data, db-log"


def test_the_tape_library_example_and_its_targetctl_lines(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(fenced("tape.md", "toml", "## A tape library"))
    listing = daemon.targetctl("library", "list")
    assert listing.returncode == 0, listing.stderr
    shown = fenced("tape.md", "sh", "### `targetctl library`").splitlines()
    # The page's first two output lines: the library's target and LUN, then the header.
    assert listing.stdout.splitlines()[:2] == shown[1:3]
    assert re.search(r"^  0x400  storage +TD0001L6 +0 of 107374182400 bytes", listing.stdout, re.M)
    for line in shown[3:]:
        if line.startswith("targetctl "):
            done = daemon.targetctl(*shlex.split(line, comments=True)[1:])
            assert done.returncode == 0, f"{line}: {done.stderr}"
    assert (daemon.state_dir / "vtl" / "exported" / "TD0042L6.img").exists()
    assert "alternate TD0001-B" in daemon.targetctl("library", "list").stdout


def test_the_tape_and_workers_examples_serve_their_luns(targetd_factory: DaemonFactory) -> None:
    tape = targetd_factory(fenced("tape.md", "toml", "# The tape LUN"))
    done = run(f"iscsi-ls -s iscsi://{tape.portal}", tape.portal)
    assert re.search(r"Lun:2\s+Type:SEQUENTIAL_ACCESS", done.stdout), done.stdout
    assert (tape.state_dir / "backup" / "tape0.img").stat().st_size == 64  # a blank image
    workers = targetd_factory(
        fenced("workers.md", "toml", "# Worker processes: targets on more than one core")
    )
    for name in ("a", "b"):
        done = run(f"iscsi-inq iscsi://{workers.portal}/iqn.2026-11.org.example:{name}/0", "")
        assert done.returncode == 0, done.stderr
    status = workers.targetctl("status").stdout
    assert re.search(
        r"worker 1 pid \d+ \(serving, 0 restarts\).* iqn.2026-11.org.example:b", status
    )


def test_the_metrics_example_serves_the_pages_families(targetd_factory: DaemonFactory) -> None:
    page = (DOCS / "operations.md").read_text()
    port = free_port()
    daemon = targetd_factory(
        fenced("operations.md", "toml", "## Metrics").replace("127.0.0.1:9363", f"127.0.0.1:{port}")
    )
    assert run(f"iscsi-inq {daemon.url(0)}", "").returncode == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        metrics = answer.read().decode()
    table = page.split("answers in the Prometheus text format", 1)[1].split("\n\n", 2)[1]
    families = re.findall(r"^\| `(targetd_\w+)`", table, re.M)
    # Two gateways' and worker processes' families appear only with those features.
    served = [f for f in families if not f.startswith(("targetd_gateway_", "targetd_worker_"))]
    assert len(served) >= 10, families
    missing = [f for f in served if f"# TYPE {f} " not in metrics]
    assert not missing, missing
