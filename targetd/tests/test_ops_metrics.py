"""Per-LUN counters, the event loop's lag, and the Prometheus text they render to."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from scsi.sense import Reason, build_sense
from targetd.metrics import Family, LoopLag, LunStats, Metrics, lun_families, render


def test_counts_payload_of_reads_and_writes_only() -> None:
    stats = LunStats()
    stats.record(0x2A, memoryview(bytes(8192)), None, 40_000, 0, None)  # WRITE(10)
    stats.record(0x88, None, bytes(4096), 10_000, 0, None)  # READ(16)
    stats.record(0x12, None, bytes(96), 5_000, 0, None)  # INQUIRY: not traffic
    stats.record(0x28, None, None, 2_000_000, 2, build_sense(Reason.LBA_OUT_OF_RANGE))
    assert stats.as_dict() == {
        "read_ops": 2,
        "read_bytes": 4096,
        "write_ops": 1,
        "write_bytes": 8192,
        "other_ops": 1,
        "errors": 1,
        "attentions": 0,
        "notices": 0,
    }


def test_unit_attentions_are_counted_apart_from_errors() -> None:
    """The POWER ON/RESET a nexus gets on its first command is expected, not a failure."""
    stats = LunStats()
    stats.record(0xA0, None, None, 5_000, 2, build_sense(Reason.POWER_ON_RESET))  # REPORT LUNS
    ua = build_sense(Reason.RESERVATIONS_PREEMPTED, descriptor_format=True)
    stats.record(0x00, None, None, 5_000, 2, ua)  # TEST UNIT READY
    stats.record(0x28, None, None, 5_000, 2, build_sense(Reason.UNRECOVERED_READ_ERROR))
    stats.record(0x2A, None, None, 5_000, 0x18, None)  # RESERVATION CONFLICT
    filemark = build_sense(Reason.FILEMARK_DETECTED, filemark=True)
    stats.record(0x08, None, b"", 5_000, 2, filemark)  # tape READ(6) ran into a file mark
    stats.record(0x08, None, b"x", 5_000, 2, build_sense(Reason.NO_SENSE, ili=True))
    stats.record(0x08, None, b"", 5_000, 2, build_sense(Reason.END_OF_DATA_DETECTED))
    assert (stats.errors, stats.attentions, stats.notices) == (3, 2, 2)
    text = render(lun_families([("iqn.2026-11.org.x:t", 0, stats)]))
    assert 'targetd_lun_errors_total{target="iqn.2026-11.org.x:t",lun="0"} 3' in text
    assert 'targetd_lun_unit_attentions_total{target="iqn.2026-11.org.x:t",lun="0"} 2' in text
    assert 'targetd_lun_notices_total{target="iqn.2026-11.org.x:t",lun="0"} 2' in text


def test_histogram_is_cumulative_with_sum_and_count() -> None:
    stats = LunStats()
    for ns in (10_000, 30_000, 30_000, 20_000_000_000):
        stats.record(0x28, None, bytes(512), ns, 0, None)
    text = render(lun_families([("iqn.2026-11.org.x:t", 3, stats)]))
    lines = {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in text.splitlines()}
    base = 'target="iqn.2026-11.org.x:t",lun="3",op="read"'
    assert lines[f'targetd_lun_latency_seconds_bucket{{{base},le="2.5e-05"}}'] == "1"
    assert lines[f'targetd_lun_latency_seconds_bucket{{{base},le="5e-05"}}'] == "3"
    assert lines[f'targetd_lun_latency_seconds_bucket{{{base},le="10.0"}}'] == "3"
    assert lines[f'targetd_lun_latency_seconds_bucket{{{base},le="+Inf"}}'] == "4"
    assert lines[f"targetd_lun_latency_seconds_count{{{base}}}"] == "4"
    assert lines[f"targetd_lun_latency_seconds_sum{{{base}}}"] == "20.00007"
    assert lines[f"targetd_lun_bytes_total{{{base}}}"] == "2048"
    assert "# TYPE targetd_lun_latency_seconds histogram" in text


def test_render_escapes_label_values() -> None:
    fam = Family("targetd_pair_state", "gauge", "Pair state")
    fam.add(1, {"pair": 'a"b\\c\nd'})
    fam.add(2.5)
    assert render([fam]) == (
        "# HELP targetd_pair_state Pair state\n"
        "# TYPE targetd_pair_state gauge\n"
        'targetd_pair_state{pair="a\\"b\\\\c\\nd"} 1\n'
        "targetd_pair_state 2.5\n"
    )


def _lines(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if not line.startswith("#")
    }


def test_loop_lag_histogram_puts_a_stall_in_its_bucket() -> None:
    """A lag of 150 ms lands in the 250 ms bucket, not below; short ones stay below."""
    lag = LoopLag(interval=0.01)
    for _ in range(4):
        lag.record(0.001)
    lag.record(0.15)
    lines = _lines(render(lag.families()))
    assert lines["targetd_event_loop_lag_seconds_count"] == 5
    assert lines['targetd_event_loop_lag_seconds_bucket{le="0.1"}'] == 4
    assert lines['targetd_event_loop_lag_seconds_bucket{le="0.25"}'] == 5
    assert lines["targetd_event_loop_lag_max_seconds"] == 0.15


def test_loop_lag_histogram_shows_a_stall_of_the_event_loop() -> None:
    """A blocking call of 150 ms on the loop is seen by the live probe. (A busy machine
    may delay other probes too, so only the stall's own mark is asserted.)"""
    lag = LoopLag(interval=0.01)

    async def main() -> None:
        lag.start()
        await asyncio.sleep(0.1)  # a quiet loop: the probe runs on time
        time.sleep(0.15)  # what an fdatasync on the loop would do
        await asyncio.sleep(0.05)
        await lag.stop()

    asyncio.run(main())
    lines = _lines(render(lag.families()))
    count = lines["targetd_event_loop_lag_seconds_count"]
    assert count >= 5
    assert lines['targetd_event_loop_lag_seconds_bucket{le="0.1"}'] <= count - 1
    assert lines['targetd_event_loop_lag_seconds_bucket{le="+Inf"}'] == count
    assert lines["targetd_event_loop_lag_max_seconds"] >= 0.13
    assert lines["targetd_event_loop_lag_seconds_sum"] >= 0.13


def test_metrics_endpoint_runs_the_loop_lag_probe_while_it_serves() -> None:
    async def main() -> str:
        metrics = Metrics()
        await metrics.start("127.0.0.1", 0)
        # Two probes at least; a busy machine may take longer than their 20 ms interval.
        for _ in range(500):
            await asyncio.sleep(0.02)
            if _lines(metrics.render())["targetd_event_loop_lag_seconds_count"] >= 2:
                break
        text = metrics.render()
        await metrics.stop()
        assert metrics.loop_lag._task is None
        return text

    lines = _lines(asyncio.run(main()))
    assert lines["targetd_event_loop_lag_seconds_count"] >= 2
    assert "# TYPE targetd_event_loop_lag_seconds histogram" in Metrics().render()


def test_a_stall_of_a_second_is_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    lag = LoopLag()
    with caplog.at_level(logging.WARNING, logger="targetd.metrics"):
        lag.record(0.5)  # long, but under the threshold: the histogram has it
        lag.record(1.25)
        lag.record(3.0)  # within the minute: counted, not logged again
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["event loop stalled for 1.25 s: every session waited that long"]
    assert lag.count == 3 and lag.max == 3.0
