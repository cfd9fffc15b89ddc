"""The configuration examples of docs/config.md, docs/tape.md, docs/workers.md and
docs/operations.md, taken from the pages and served as written (the test's ``--listen`` and
``--state-dir`` replace the file's portals and state directory, as the command line does for
a user), with the pages' client commands run against them: a snippet that no longer parses,
a key renamed, or output that drifted from what the page shows fails here."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import REPO, DaemonFactory, free_port

from targetd.config import ConfigError, parse_config_text

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
    block = fenced("config.md", "sh", "With libiscsi clients").splitlines()
    lines = [line for line in block if line.startswith("iscsi-inq")]
    assert len(lines) == 2, lines  # one-way CHAP, then mutual CHAP
    for line in lines:
        done = run(line, daemon.portal)
        assert done.returncode == 0, f"{line}: {done.stderr}"
        assert "Peripheral Device Type:DIRECT_ACCESS" in done.stdout
    (discover,) = [line for line in block if line.startswith("iscsi-ls")]
    listing = run(discover, daemon.portal)
    assert listing.returncode == 0, listing.stderr
    assert [line.split()[0] for line in listing.stdout.splitlines()] == [
        "Target:iqn.2026-11.org.example:backup", "Target:iqn.2026-11.org.example:database",
    ]  # fmt: skip
    alone = run(discover.replace("-i iqn.1994-05.com.redhat:db-host-1 ", ""), daemon.portal)
    assert alone.stdout.split()[0] == "Target:iqn.2026-11.org.example:backup"
    assert len(alone.stdout.splitlines()) == 1, alone.stdout
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


def toml_blocks() -> list[tuple[str, str]]:
    """Every ```toml block of README.md and docs/*.md, named PAGE:LINE."""
    found = []
    for page in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = page.read_text()
        for block in re.finditer(r"```toml\n(.*?)```", text, re.S):
            line = text[: block.start()].count("\n") + 1
            found.append((f"{page.relative_to(REPO)}:{line}", block.group(1)))
    return found


def test_every_toml_example_of_the_pages_is_a_valid_configuration(tmp_path: Path) -> None:
    """The snippets that need Ceph, S3 or other hosts' addresses are not served here, but each
    must pass the checks `targetd serve` makes before it opens anything."""
    blocks = toml_blocks()
    assert len(blocks) >= 14, [name for name, _ in blocks]
    refused = {}
    for name, text in blocks:
        try:
            parse_config_text(text.encode(), tmp_path / "targetd.toml")
        except ConfigError as err:
            refused[name] = str(err)
    assert not refused, refused


def test_the_backup_walkthroughs_configuration_makes_its_group(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(fenced("backup.md", "toml", "# "))
    waited = daemon.targetctl("group", "wait", "db", "--state", "DUPLEX", "--timeout", "60")
    assert waited.returncode == 0, waited.stderr
    done = run(f"iscsi-ls -s iscsi://{daemon.portal}", "")
    assert re.search(r"Lun:4\s+Type:SEQUENTIAL_ACCESS", done.stdout), done.stdout


def test_the_alua_example_serves_one_active_and_one_standby_port(
    targetd_factory: DaemonFactory,
) -> None:
    """alua.md's two portals moved to loopback ports (the --listen of the other tests would
    leave one): media access works through group 1 and is NOT READY through group 2, whose
    login libiscsi's iscsi-inq cannot even finish, as the page says."""
    text = fenced("alua.md", "toml", "# ")
    active = standby = free_port()
    while standby == active:
        standby = free_port()
    text = text.replace("192.0.2.10:3260", f"127.0.0.1:{active}")
    text = text.replace("198.51.100.10:3260", f"127.0.0.1:{standby}")
    daemon = targetd_factory(None, start=False)
    config = daemon.state_dir.parent / "alua.toml"
    config.write_text(text)
    server = subprocess.Popen(
        [sys.executable, "-m", "targetd", "serve", "--config", str(config),
         "--state-dir", str(daemon.state_dir)],
        cwd=REPO, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = "iscsi://127.0.0.1:{}/iqn.2026-11.org.example:disk/0"
        for _ in range(100):
            done = run(f"iscsi-readcapacity16 {url.format(active)}", "")
            if done.returncode == 0:
                break
            time.sleep(0.1)
        assert "Total size:1073741824" in done.stdout, done.stderr
        done = run(f"iscsi-readcapacity16 {url.format(standby)}", "")
        assert done.returncode != 0
        assert "NOT READY" in done.stderr and "0x040b" in done.stderr, done.stderr
    finally:
        server.terminate()
        server.wait(30)


def test_the_pages_bad_configuration_message(tmp_path: Path) -> None:
    """config.md's sample message, from its full example with the size it names mistyped."""
    page = (DOCS / "config.md").read_text()
    shown = re.search(r"^targetd: bad configuration: .*$", page, re.M)
    assert shown, "docs/config.md shows no configuration error"
    text = fenced("config.md", "toml", "## Full example")
    copy = 'path = "database/copy.img"\nsize = "100GiB"'
    assert text.count(copy) == 1
    config = tmp_path / "targetd.toml"
    config.write_text(text.replace(copy, 'path = "database/copy.img"\nsize = "1GB"'))
    done = subprocess.run(
        [sys.executable, "-m", "targetd", "serve", "--config", str(config),
         "--state-dir", str(tmp_path / "state")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == shown.group(0)


def test_growing_a_lun_says_what_operations_md_shows(targetd_factory: DaemonFactory) -> None:
    """operations.md's "Growing a LUN" outcome, on config.md's db target (LUN 0 of 10 GiB)
    given 20 GiB and reloaded."""
    shown = re.search(r"^ *\$ targetctl reload\n *(applied: .*)$", (DOCS / "operations.md")
                      .read_text(), re.M)  # fmt: skip
    assert shown, "docs/operations.md shows no growth"
    text = fenced("config.md", "toml", "## `[pairs]`")
    ten = 'lun = 0\nsize = "10GiB"'
    assert text.count(ten) == 1
    daemon = targetd_factory(text)
    assert daemon.config is not None
    daemon.config.write_text(text.replace(ten, 'lun = 0\nsize = "20GiB"'))
    done = daemon.targetctl("reload")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == shown.group(1)
