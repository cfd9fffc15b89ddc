"""The mmap threshold: the daemon's 128 KiB, raised for librbd whatever the order of the two."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Allocates a 1 MiB buffer and says whether glibc mapped it apart (an anonymous mapping of
# its own) or took it from the heap, after the calls given.
_PROBE = textwrap.dedent(
    """
    import ctypes, sys
    from backing.malloc_threshold import LIBRBD_THRESHOLD, fix_mmap_threshold
    for arg in sys.argv[1:]:
        print(fix_mmap_threshold(LIBRBD_THRESHOLD if arg == "rbd" else 0))
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    # Freed and allocated again: glibc's own dynamic threshold would move above it here.
    libc.free(ctypes.c_void_p(libc.malloc(1 << 20)))
    address = libc.malloc(1 << 20)
    for line in open("/proc/self/maps"):
        span, rest = line.split(None, 1)
        lo, hi = (int(x, 16) for x in span.split("-"))
        if lo <= address < hi:
            print("heap" if "[heap]" in rest else "mapped")
            break
    """
)


def probe(*calls: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *calls],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def test_the_daemons_threshold_maps_large_buffers_apart() -> None:
    assert probe("daemon") == [str(128 * 1024), "mapped"]


def test_librbd_raises_it_before_or_after_the_daemon_fixes_it() -> None:
    assert probe("rbd", "daemon") == [str(16 << 20), str(16 << 20), "heap"]
    assert probe("daemon", "rbd") == [str(128 * 1024), str(16 << 20), "heap"]
