"""The 30-second version of the soak benchmark (bench/soak_node.py) that CI runs.

The benchmark command checks the real targets (5 minutes, memory within 10 % of the 1-minute
value, image-callback p99 < 2 ms). Here the limits are looser so that a noisy shared CI machine
cannot fail a sound build: no leak beyond 15 %, no stall (p99 < 50 ms while the embedded model
answers questions on the same 2 cores), a clean node exit.
"""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO_ROOT

pytest.importorskip("rclpy")
pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_soak_30_seconds(capsys):
    spec = importlib.util.spec_from_file_location("soak_node", REPO_ROOT / "bench" / "soak_node.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    code = soak.main(
        ["--duration", "30", "--reference", "20", "--max-growth", "0.15", "--max-p99-ms", "50"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert '"keyframes_at_end": 64' in out  # the store filled up and stayed bounded
