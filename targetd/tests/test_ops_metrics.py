"""Per-LUN counters and the Prometheus text they render to."""

from __future__ import annotations

from targetd.metrics import Family, LunStats, lun_families, render


def test_counts_payload_of_reads_and_writes_only() -> None:
    stats = LunStats()
    stats.record(0x2A, memoryview(bytes(8192)), None, 40_000, 0)  # WRITE(10)
    stats.record(0x88, None, bytes(4096), 10_000, 0)  # READ(16)
    stats.record(0x12, None, bytes(96), 5_000, 0)  # INQUIRY: not traffic
    stats.record(0x28, None, None, 2_000_000, 2)  # READ(10) that failed
    assert stats.as_dict() == {
        "read_ops": 2,
        "read_bytes": 4096,
        "write_ops": 1,
        "write_bytes": 8192,
        "other_ops": 1,
        "errors": 1,
    }


def test_histogram_is_cumulative_with_sum_and_count() -> None:
    stats = LunStats()
    for ns in (10_000, 30_000, 30_000, 20_000_000_000):
        stats.record(0x28, None, bytes(512), ns, 0)
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
