"""Node statistics: rate window, latency percentiles, memory."""

from __future__ import annotations

import numpy as np
import pytest

from loc3r_ros.node_stats import LatencyWindow, RateWindow, resident_memory_bytes


def test_rate_window_counts_recent_events_only():
    rate = RateWindow(window_s=2.0)
    for i in range(60):
        rate.tick(now=i * 0.1)  # 10 Hz for 6 s
    assert rate.rate(now=5.9) == pytest.approx(10.0, abs=0.5)
    assert rate.rate(now=100.0) == 0.0


def test_latency_window_percentiles_and_bound():
    window = LatencyWindow(size=100)
    for value in np.linspace(0.0, 1.0, 1000):
        window.record(value)
    assert len(window) == 100
    assert window.percentile(0) == pytest.approx(0.9009, abs=1e-3)  # only the last 100 are kept
    assert window.percentile(99) == pytest.approx(0.999, abs=2e-3)
    assert LatencyWindow().percentile(99) == 0.0


def test_resident_memory_is_plausible():
    before = resident_memory_bytes()
    # 200 MB is above glibc's largest mmap threshold: fresh pages, whatever the heap held before
    block = np.ones(200_000_000, np.uint8)
    after = resident_memory_bytes()
    assert before > 10_000_000 and after - before > 150_000_000
    del block
