"""Node statistics: rate window, latency percentiles, memory."""

from __future__ import annotations

import os
import subprocess
import sys

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
    # In a fresh interpreter: this process's allocator may hand back pages it already holds.
    code = (
        "import numpy as np; from loc3r_ros.node_stats import resident_memory_bytes as r;"
        "a = r(); b = np.ones(200_000_000, np.uint8); c = r(); print(a, c)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    before, after = (int(v) for v in out.stdout.split())
    assert before > 10_000_000 and after - before > 150_000_000
    assert resident_memory_bytes() > 10_000_000
