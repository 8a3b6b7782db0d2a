"""bench/bench_pose_source.py runs on a few small rooms and reports both focal lengths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_pose_source.py"


def test_pose_source_bench_reports_errors_with_the_estimated_and_the_true_focal():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        # a scan renders consecutive steps, so its 4 frames overlap (4 frames of a room scan's 24
        # steps are up to 115 degrees apart: nothing registers, and the focal length goes unused)
        [sys.executable, str(BENCH), "--seeds=7800000:7800002", "--frames=4", "--size=160",
         "--walk=scan"],
        check=True, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["rooms"] == 2 and report["frames"] == 4 and report["pose_source"] == "geometric"
    for name in ("estimated_focal", "true_intrinsics"):
        errors = report[name]
        assert errors["frames"] == 2 * 3  # frames 2..4 of each room
        assert 0.0 <= errors["median_position_error_m"] <= errors["p90_position_error_m"] < 5.0
        assert 0.0 <= errors["median_rotation_error_deg"] <= errors["p90_rotation_error_deg"] < 180
        assert errors["median_rotation_error_deg"] < 15.0  # frames registered (measured 5.3, 5.7)
    assert report["estimated_focal"] != report["true_intrinsics"]  # the calibration was used
