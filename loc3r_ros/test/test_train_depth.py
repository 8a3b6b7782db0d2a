"""Training the monocular depth network: a tiny run end to end, its checks and its pieces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from loc3r.engine.mono_depth import MonoDepth, MonoDepthConfig, load_mono_depth, save_mono_depth
from loc3r.train.train_depth import (
    DepthTrainConfig,
    augment,
    log_depth_loss,
    main,
    room_frames,
    train,
)

TINY = ["--image_size=64", "--widths=4,8", "--frames=4", "--render_size=112"]


def tiny(tmp_path, **overrides) -> DepthTrainConfig:
    argv = [f"--out={tmp_path / 'run'}", "--train_episodes=2", "--eval_episodes=1", "--steps=6",
            "--batch_size=4", "--log_every=2", *TINY]  # fmt: skip
    argv += [f"--{key}={value}" for key, value in overrides.items()]
    return DepthTrainConfig.from_args(argv)


def test_a_room_gives_frames_and_their_true_depth():
    frames = room_frames(5, tiny(Path("/tmp")))
    assert frames.images.shape == (4, 3, 48, 64) and frames.images.dtype == torch.float16
    assert frames.depth.shape == (4, 48, 64)
    valid = frames.depth > 0
    assert valid.float().mean() > 0.9  # a closed room: almost every pixel hits something
    assert 0.1 < float(frames.depth[valid].float().median()) < 10.0  # metres


def test_a_tiny_run_trains_evaluates_and_saves(tmp_path):
    report = train(tiny(tmp_path), progress=False)
    assert report["rooms"] == 2 and report["frames"] == 8 and report["steps_done"] == 6
    for key in ("random_init", "trained"):
        assert 0 < report[key]["median_depth_abs_rel"] < 10
        assert report[key]["frame_scale_p10"] <= report[key]["frame_scale_p90"]
    model = load_mono_depth(tmp_path / "run" / "depth")
    assert model.config == MonoDepthConfig(image_size=64, widths=(4, 8))
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 4, 6]
    assert json.loads((tmp_path / "run" / "report.json").read_text())["steps_done"] == 6
    # a continued run starts from the saved weights, and its steps fit the rooms' depth
    again = train(tiny(tmp_path, init=tmp_path / "run" / "depth", out=tmp_path / "b", steps=40,
                       lr=5e-3, warmup_steps=0), False)  # fmt: skip
    assert again["random_init"] == report["trained"]
    losses = [json.loads(line)["loss"] for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert len(losses) == 21 and sum(losses[-5:]) / 5 < 0.7 * losses[0]


def test_bad_runs_fail_before_rendering(tmp_path):
    with pytest.raises(ValueError, match="overlap the held-out rooms"):
        train(tiny(tmp_path, train_seed_offset=1_000_000, eval_seed_offset=1_000_001), False)
    with pytest.raises(ValueError, match="widths='4,x'"):
        train(tiny(tmp_path, widths="4,x"), False)
    with pytest.raises(ValueError, match=">= 1"):
        train(tiny(tmp_path, batch_size=0), False)
    for key, value, message in (
        ("log_every", 0, "log_every=0"), ("steps", 0, "steps=0"), ("frames", 0, "frames=0"),
        ("jitter", 2.0, "jitter=2.0"), ("lr", 0.0, "lr > 0"), ("warmup_steps", -1, "warmup"),
        ("train_seed_offset", -5, "seed_offset"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            train(tiny(tmp_path, **{key: value}), False)
    other = save_mono_depth(MonoDepth(MonoDepthConfig(image_size=64, widths=(4, 16))),
                            tmp_path / "other")  # fmt: skip
    with pytest.raises(ValueError, match="has sizes"):
        train(tiny(tmp_path, init=other), False)
    with pytest.raises(SystemExit, match="threads"):
        main([*TINY, "--threads=0"])


def test_a_diverged_run_saves_nothing(tmp_path, monkeypatch):
    import loc3r.train.train_depth as train_depth

    monkeypatch.setattr(
        train_depth, "log_depth_loss", lambda model, images, depth: model(images).sum() * np.nan
    )
    with pytest.raises(FloatingPointError, match="loss nan at step 0"):
        train(tiny(tmp_path), progress=False)
    assert not (tmp_path / "run" / "depth").exists()


def test_flips_move_image_and_depth_together_and_the_loss_ignores_holes():
    generator = torch.Generator().manual_seed(0)
    images = torch.linspace(-1, 1, 8)[None, None, None].expand(64, 3, 2, 8).clone()
    depth = torch.linspace(1, 8, 8)[None, None].expand(64, 2, 8).clone()
    out_images, out_depth = augment(images, depth, 0.0, generator)
    flipped = out_depth[:, 0, 0] == 8
    assert 0 < int(flipped.sum()) < 64  # some flipped, some not
    assert torch.equal(out_images[flipped], images[flipped].flip(-1))
    assert torch.equal(out_images[~flipped], images[~flipped])
    jittered, _ = augment(images, depth, 0.4, generator)
    assert float(jittered.min()) >= -1 and float(jittered.max()) <= 1
    assert not torch.equal(jittered, images)
    model = MonoDepth(MonoDepthConfig(image_size=64, widths=(4, 8)))
    x = torch.zeros(1, 3, 16, 16)
    holes = torch.zeros(1, 16, 16)
    assert float(log_depth_loss(model, x, holes).detach()) == 0.0  # nothing valid: no loss, no NaN
    target = model(x).detach()
    target[0, 0, 0] = 0  # a hole in an exact target
    assert float(log_depth_loss(model, x, target).detach()) < 1e-5


def test_make_default_model_checks_its_depth_stage_before_any_stage(tmp_path):
    from loc3r.train.make_default_model import main as make_default_model

    target = f"--target={tmp_path / 'bundle'}"
    with pytest.raises(SystemExit, match="needs --depth_stage=true"):
        make_default_model(["--depth.steps=3", target])
    with pytest.raises(SystemExit, match="takes true/false"):
        make_default_model(["--depth_stage=yes", target])
    with pytest.raises(SystemExit, match="camera_prior=geometric"):
        make_default_model(["--depth_stage=true", "--camera_prior=oracle", target])
    with pytest.raises(SystemExit, match="depth stage: training rooms .* overlap"):
        make_default_model(["--depth_stage=true", "--camera_prior=geometric",
                            "--depth.train_seed_offset=9610000", target])  # fmt: skip
    # a trained network named with --depth_dir: readable, and for the geometric prior
    with pytest.raises(SystemExit, match="--depth_dir: cannot read the depth network"):
        make_default_model(["--camera_prior=geometric", f"--depth_dir={tmp_path}", target])
    saved = save_mono_depth(MonoDepth(MonoDepthConfig(image_size=64, widths=(4, 8))),
                            tmp_path / "depth")  # fmt: skip
    with pytest.raises(SystemExit, match="set --camera_prior=geometric"):
        make_default_model(["--camera_prior=oracle", f"--depth_dir={saved}", target])
    assert not (tmp_path / "bundle").exists()


def test_the_depth_error_summary_reads_only_valid_pixels():
    from loc3r.train.train_cut3r import depth_error_summary

    truth = torch.tensor([[1.0, 2.0], [0.0, 4.0]])  # 0: nothing was hit there
    predicted = torch.tensor([[1.5, 2.0], [9.0, 2.0]])  # ratios 1.5, 1.0, (ignored), 0.5
    summary = depth_error_summary([(predicted, truth), (predicted * 2, truth)])
    assert summary["median_depth_abs_rel"] == pytest.approx(0.5)  # 0.5, 0, 0.5, 2, 1, 0
    assert summary["frame_scale_p10"] == pytest.approx(1.1)  # frame scales 1.0 and 2.0
    assert summary["frame_scale_p90"] == pytest.approx(1.9)
    assert depth_error_summary([(predicted, torch.zeros(2, 2))]) == {}
