"""bench/cpu.py: a target's CPU time is read to the nanosecond, so a short run of a cheap case
still has a CPU cost per request to compare (whole 10 ms ticks read 0 there)."""

from __future__ import annotations

import subprocess
import sys

from bench_runs import BENCH

sys.path.insert(0, str(BENCH))
try:
    import cpu
finally:
    sys.path.remove(str(BENCH))

# Spins for about 3 ms of its own CPU, then waits to be read.
SPIN = (
    "import sys, time\n"
    "start = time.process_time()\n"
    "while time.process_time() - start < 0.003: pass\n"
    "sys.stdout.write('spun\\n'); sys.stdout.flush(); sys.stdin.read()\n"
)


def test_a_few_milliseconds_of_cpu_are_counted_not_rounded_to_ticks() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", SPIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "spun\n"
        used = cpu.process_cpu_seconds(child.pid)
        # Its start-up and the spin: more than 3 ms, and not a whole number of 10 ms ticks.
        assert used > 0.003
        assert abs(used * 100 - round(used * 100)) > 1e-6
        assert cpu.tree_cpu_seconds(child.pid) >= used
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert cpu.process_cpu_seconds(child.pid) == 0.0  # gone (reaped)
