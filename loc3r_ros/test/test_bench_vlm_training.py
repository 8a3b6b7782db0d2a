"""bench/bench_vlm_training.py runs at a tiny size and reports every packing it times."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_vlm_training.py"


def test_training_bench_reports_samples_per_second_for_each_packing():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(BENCH), "--batch=4", "--packing=1,2", "--threads=1",
         "--frames=2", "--repeats=1"],
        check=True, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    report = json.loads(out.stdout.strip().splitlines()[-1])
    rows = report["results"]
    assert [(r["threads"], r["questions_per_scene"], r["samples"]) for r in rows] == [
        (1, 1, 4),
        (1, 2, 4),
    ]
    assert all(r["samples_per_s"] > 0 and r["seconds"] > 0 for r in rows)
    assert rows[0]["speed_up"] == 1.0 and report["frames"] == 2
