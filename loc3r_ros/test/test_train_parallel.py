"""Training data on many cores: the order-keeping map, and rendering rooms against a deadline."""

from __future__ import annotations

import os
import time

import pytest
import torch

from loc3r.train.config import TrainConfig
from loc3r.train.parallel import parallel_map
from loc3r.train.pipeline import prepare_run

TINY = [
    "--eval_episodes=1", "--frames=2", "--image_size=56", "--hidden=32", "--layers=1",
    "--heads=2", "--kv_heads=1", "--intermediate=64", "--vision_hidden=16", "--vision_layers=1",
    "--vocab_size=320",
]  # fmt: skip


def slow_square(item: int, shared: float) -> int:
    """A task that takes `shared` seconds (module level: workers receive it by name)."""
    time.sleep(shared)
    return item * item


def tensors(item: int, shared: None) -> list[torch.Tensor]:
    """Five tensors, as a rendered room has (module level: workers receive it by name)."""
    return [torch.full((100,), float(item)) for _ in range(5)]


def test_tensors_from_workers_hold_no_file_descriptors():
    before = len(os.listdir("/proc/self/fd"))
    results = parallel_map(tensors, list(range(300)), None, 2, progress=False)
    assert [float(r[4][0]) for r in results] == list(range(300))
    # sent as shared memory they would keep 1500 descriptors open (the usual limit is 1024)
    assert len(os.listdir("/proc/self/fd")) < before + 20


@pytest.mark.parametrize("workers", [1, 2])
def test_the_map_keeps_order_and_a_deadline_keeps_the_prefix_done_by_then(workers):
    assert parallel_map(slow_square, list(range(9)), 0.0, workers, progress=False) == [
        i * i for i in range(9)
    ]
    start = time.monotonic()
    done = parallel_map(slow_square, list(range(200)), 0.02, workers, progress=False,
                        deadline=start + 0.4)  # fmt: skip
    elapsed = time.monotonic() - start
    assert 1 <= len(done) < 200 and done == [i * i for i in range(len(done))]
    assert elapsed < 2.0  # the whole list would take 4 s (one worker) or 2 s (two)
    late = parallel_map(slow_square, [3, 4, 5], 0.0, workers, progress=False, deadline=0.0)
    assert late[:1] == [9] and late == [9, 16, 25][: len(late)]  # never empty


def test_rooms_render_until_the_deadline_and_stay_the_first_seeds(tmp_path):
    config = TrainConfig.from_args([
        f"--out={tmp_path}", "--train_episodes=400", "--render_within_s=1.5", *TINY
    ])  # fmt: skip
    start = time.monotonic()
    run = prepare_run(config, progress=False)
    assert time.monotonic() - start < 60
    rooms = [episode.seed for episode in run.train_episodes]
    assert 1 <= len(rooms) < 400 and rooms == list(range(len(rooms)))
    assert len(run.train_samples) >= len(rooms) and len(run.eval_episodes) == 1  # held out: all
    for bad in (["--render_within_s=-1"], ["--render_within_s=5", f"--data_root={tmp_path}"]):
        with pytest.raises(ValueError, match="render_within_s"):
            prepare_run(TrainConfig.from_args([f"--out={tmp_path}", *bad, *TINY]), False)
