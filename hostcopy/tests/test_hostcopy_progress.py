"""The progress display: a bar redrawn in place on a terminal, plain lines otherwise."""

from __future__ import annotations

import io

from hostcopy.progress import MiB, Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_redrawn_in_place() -> None:
    out = Terminal()
    bar = Progress(100 * MiB, "backup", out)
    bar.update(50 * MiB)
    bar.update(100 * MiB)
    bar.finish()
    text = out.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 2
    assert frames[0].startswith("[" + "#" * 15 + "." * 15 + "] backup:  50.0% 50.0/100.0 MiB")
    assert frames[1].startswith("[" + "#" * 30 + "] backup: 100.0%")
    assert all(f.split("\n")[0].endswith("\x1b[K") for f in frames)
    assert text.rstrip("\n").splitlines()[-1].startswith("backup: done, 100.0 MiB in ")


def test_a_pipe_gets_a_line_every_few_seconds_and_the_ending() -> None:
    out = io.StringIO()
    bar = Progress(10 * MiB, "restore", out, every=3600)
    for n in range(1, 11):
        bar.update(n * MiB)  # only the first within the period is printed
    bar.finish(ok=False)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert lines[0].startswith("restore:  10.0% 1.0/10.0 MiB")
    assert lines[1].startswith("restore: stopped, 10.0 MiB in ")


def test_no_eta_before_one_percent() -> None:
    """The first report (a few KiB in a few ms) gave "ETA 22268s", and none "ETA 0s"."""
    out = io.StringIO()
    bar = Progress(1024 * MiB, "backup", out, every=0)
    bar.update(0)
    bar.update(64 << 10)
    bar.update(11 * MiB)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith(" ETA -") and lines[1].endswith(" ETA -"), lines
    assert lines[2].split(" ETA ")[1].endswith("s"), lines
