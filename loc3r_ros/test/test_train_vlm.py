"""The Loc3R-VLM trainer: config parsing, schedule, exact resume, 2-process DDP equivalence."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

from loc3r.train.pipeline import prepare_run
from loc3r.train.train_vlm import TrainConfig, Trainer, batch_indices, lr_at

TINY = [
    "--train_episodes=4", "--eval_episodes=1", "--frames=2", "--image_size=56", "--hidden=32",
    "--layers=1", "--heads=2", "--kv_heads=1", "--intermediate=64", "--vision_hidden=16",
    "--vision_layers=1", "--vocab_size=320", "--batch_size=4", "--micro_batch=2",
    "--warmup_steps=2", "--lr=3e-3", "--log_every=1", "--save_every=1000",
]  # fmt: skip


def test_config_layers_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 7\nlr: 0.01\n")
    config = TrainConfig.from_args(["--config", str(path), "--lr=0.5", "--use_camera_tokens=false"])
    assert (config.steps, config.lr, config.use_camera_tokens) == (7, 0.5, False)
    with pytest.raises(SystemExit, match="unknown key"):
        TrainConfig.from_args(["--nope=1"])
    with pytest.raises(SystemExit, match="takes int"):
        TrainConfig.from_args(["--steps=many"])
    path.write_text("stepz: 3\n")
    with pytest.raises(SystemExit, match="unknown keys"):
        TrainConfig.from_args(["--config", str(path)])


def test_schedule_and_batches_are_pure_functions():
    config = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, config) == pytest.approx(0.1) and lr_at(9, config) == pytest.approx(1.0)
    assert lr_at(10, config) == pytest.approx(1.0) and lr_at(100, config) == pytest.approx(0.1)
    assert lr_at(55, config) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    first = batch_indices(3, 20, 4, seed=1)
    assert first == batch_indices(3, 20, 4, seed=1) and len(set(first)) == 4
    epoch = [i for step in range(5) for i in batch_indices(step, 20, 4, seed=1)]
    assert sorted(epoch) == list(range(20))  # each sample once per epoch


def losses(history):
    return [h["loss"] for h in history]


def test_resume_continues_the_exact_loss_curve(tmp_path):
    config = TrainConfig.from_args([f"--out={tmp_path / 'a'}", "--steps=6", *TINY])
    run = prepare_run(config, progress=False)
    straight = losses(Trainer(config, run.model, run.train_samples).fit(progress=False))
    assert straight[-1] < straight[0]

    config_b = TrainConfig.from_args([f"--out={tmp_path / 'b'}", "--steps=3", *TINY])
    run_b = prepare_run(config_b, progress=False)
    first = Trainer(config_b, run_b.model, run_b.train_samples)
    part1 = losses(first.fit(progress=False))
    checkpoint = first.save()
    config_c = TrainConfig.from_args([f"--out={tmp_path / 'b'}", "--steps=6", *TINY])
    run_c = prepare_run(config_c, progress=False)  # a fresh model, as after a crash
    second = Trainer(config_c, run_c.model, run_c.train_samples)
    second.resume(checkpoint)
    part2 = losses(second.fit(progress=False))
    assert part1 + part2 == pytest.approx(straight, rel=1e-6, abs=1e-7)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_matches_one_process(tmp_path):
    single = tmp_path / "single"
    double = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("RANK", None)
    base = [sys.executable, "-m"]
    subprocess.run(
        [*base, "loc3r.train.train_vlm", f"--out={single}", "--steps=5", *TINY],
        check=True, env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    proc = subprocess.run(
        [*base, "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={_free_port()}", "-m", "loc3r.train.train_vlm", f"--out={double}",
         "--steps=5", *TINY],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    def curve(path):
        rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows]

    one, two = curve(single), curve(double)
    assert len(one) == len(two) == 5
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) / abs(a) < 1e-4
    a = torch.load(single / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(double / "checkpoint.pt", weights_only=True)["model"]
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4
