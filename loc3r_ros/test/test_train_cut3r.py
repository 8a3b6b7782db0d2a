"""Tiny-CUT3R training: targets in the model's conventions, gradients through the stream."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from loc3r.cut3r import Cut3r, Cut3rConfig
from loc3r.cut3r.checkpoint import save_pretrained
from loc3r.cut3r.heads import pose_encoding_to_c2w
from loc3r.train.train_cut3r import (
    Cut3rTrainConfig,
    depth_errors,
    evaluate,
    initial_model,
    make_sequence,
    make_sequences,
    model_config,
    pose_errors,
    probe_r2,
    run_stream,
    sequence_loss,
    stack,
    window,
)

CONFIG = Cut3rTrainConfig(frames=3, train_episodes=2, eval_episodes=1)


class _Scaled:
    """A stand-in CUT3R whose pointmaps are the truth times each frame's factor."""

    def __init__(self, sequence, factors) -> None:
        self.sequence, self.factors = sequence, factors

    def run(self, images):
        from types import SimpleNamespace

        return [
            SimpleNamespace(pts3d_self=self.sequence.pts_self[t][None] * f)
            for t, f in enumerate(self.factors[: len(images)])
        ]


@pytest.fixture(scope="module")
def sequence():
    return make_sequence(5, CONFIG)


def test_targets_follow_the_pose_head_convention(sequence):
    assert sequence.images.shape == (3, 3, 48, 64)  # 112 px -> 64 long edge -> 4:3 crop
    assert torch.allclose(sequence.pose[0], torch.tensor([0, 0, 0, 1.0, 0, 0, 0]), atol=1e-6)
    c2w = pose_encoding_to_c2w(sequence.pose.double())
    for t in range(3):
        valid = sequence.valid[t]
        assert valid.float().mean() > 0.95
        local = sequence.pts_self[t][valid].double()
        world = local @ c2w[t, :3, :3].T + c2w[t, :3, 3]
        assert torch.allclose(world, sequence.pts_world[t][valid].double(), atol=1e-4)
    assert (sequence.pts_self[..., 2][sequence.valid] > 0).all()  # OpenCV: z forward


def test_forward_step_matches_step_and_carries_gradients(sequence):
    torch.manual_seed(0)
    model = Cut3r(Cut3rConfig.tiny())
    batch = stack([sequence, sequence])
    with torch.no_grad():
        reference = model.run([batch.images[:, t] for t in range(3)])
    outputs = run_stream(model, batch.images)
    for ref, out in zip(reference, outputs, strict=True):
        assert torch.allclose(ref.pts3d_world, out.pts3d_world, atol=1e-6)
        assert torch.allclose(ref.camera_token, out.camera_token, atol=1e-6)
    loss = sequence_loss(model, batch, CONFIG)["loss"]
    loss.backward()
    for name in ("register_tokens.weight", "pose_token", "pose_retriever.mem"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_a_few_steps_fit_one_batch(sequence):
    torch.manual_seed(0)
    model = Cut3r(Cut3rConfig.tiny())
    batch = stack([sequence])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        parts = sequence_loss(model, batch, CONFIG)
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
        losses.append(float(parts["loss"].detach()))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


def test_probe_reads_a_linear_signal_and_rejects_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    y = x[:, :2] @ np.array([[1.0, -2.0], [0.5, 3.0]])
    assert probe_r2(x[:300], y[:300], x[300:], y[300:]) > 0.99
    noise = rng.normal(size=(400, 2))
    assert probe_r2(x[:300], noise[:300], x[300:], noise[300:]) < 0.05


def test_model_sizes_are_run_keys_and_set_the_camera_token_width(sequence):
    config = Cut3rTrainConfig.from_args(
        ["--dec_embed_dim=48", "--dec_num_heads=4", "--state_size=8"]
    )
    model_cfg = model_config(config)
    assert (model_cfg.dec_embed_dim, model_cfg.dec_num_heads, model_cfg.state_size) == (48, 4, 8)
    assert model_cfg.enc_embed_dim == Cut3rConfig.tiny().enc_embed_dim  # the rest stays tiny
    outputs = run_stream(Cut3r(model_cfg), stack([sequence]).images)
    assert [tuple(o.camera_token.shape) for o in outputs] == [(1, 48)] * 3


def test_patch_size_and_encoder_depth_are_run_keys_and_the_input_size_is_nominal(sequence):
    config = Cut3rTrainConfig.from_args(["--patch_size=16", "--enc_depth=3", "--cut3r_size=120"])
    model_cfg = model_config(config)
    assert (model_cfg.patch_size, model_cfg.enc_depth, model_cfg.img_size) == (16, 3, (112, 112))
    assert len(Cut3r(model_cfg).enc_blocks) == 3
    with pytest.raises(ValueError, match="patch_size=32"):
        model_config(Cut3rTrainConfig(patch_size=32))


def test_init_continues_from_a_saved_model_of_the_same_sizes(tmp_path):
    sizes = ["--dec_embed_dim=48", "--dec_num_heads=4", "--state_size=8"]
    saved = Cut3r(model_config(Cut3rTrainConfig.from_args(sizes)))
    marked = next(saved.parameters())
    with torch.no_grad():
        marked.fill_(0.125)  # not what a fresh init draws
    save_pretrained(saved, tmp_path / "cut3r")
    config_init = [f"--init={tmp_path / 'cut3r'}"]
    config = Cut3rTrainConfig.from_args([*sizes, *config_init])
    model = initial_model(config)
    assert model.training
    for name, tensor in saved.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)
    fresh = initial_model(Cut3rTrainConfig.from_args(sizes))
    assert not torch.equal(next(fresh.parameters()), marked)
    with pytest.raises(ValueError, match=r"dec_embed_dim=48 \(run: 24\)"):
        initial_model(Cut3rTrainConfig(init=str(tmp_path / "cut3r")))
    larger = initial_model(Cut3rTrainConfig.from_args([*sizes, "--cut3r_size=96", *config_init]))
    assert larger.config.img_size == (96, 96)  # tuned at another input size: saved with it


def test_training_runs_on_the_threads_it_is_given(monkeypatch):
    from loc3r.train import train_cut3r

    seen = []
    monkeypatch.setattr(train_cut3r, "_train", lambda c, p: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    wanted = 2 if before != 2 else 1
    train_cut3r.train(Cut3rTrainConfig(threads=wanted))  # also under make_default_model
    assert seen == [wanted] and torch.get_num_threads() == before
    with pytest.raises(SystemExit, match="threads=0"):
        train_cut3r.main(["--threads=0"])


def test_a_window_is_the_walk_seen_from_its_first_camera(sequence):
    whole = window(sequence, 0, 3)
    for name in ("pts_world", "pose"):
        torch.testing.assert_close(getattr(whole, name), getattr(sequence, name), atol=1e-5, rtol=0)
    part = window(sequence, 1, 2)
    assert part.images.shape[0] == 2 and torch.equal(part.images, sequence.images[1:])
    torch.testing.assert_close(part.pose[0], torch.tensor([0, 0, 0, 1.0, 0, 0, 0]), atol=1e-6,
                               rtol=0)  # fmt: skip
    valid = part.valid[0]
    torch.testing.assert_close(part.pts_world[0][valid], part.pts_self[0][valid], atol=1e-5, rtol=0)
    c2w = pose_encoding_to_c2w(sequence.pose.double())
    expected = torch.linalg.inv(c2w[1]) @ c2w[2]  # camera 2 in camera 1's frame
    torch.testing.assert_close(pose_encoding_to_c2w(part.pose.double())[1], expected, atol=1e-5,
                               rtol=0)  # fmt: skip
    backwards = window(sequence, 0, 3, backwards=True)  # the walk from its last camera
    assert torch.equal(backwards.images, sequence.images.flip(0))
    expected = torch.linalg.inv(c2w[2]) @ c2w[0]
    torch.testing.assert_close(pose_encoding_to_c2w(backwards.pose.double())[2], expected,
                               atol=1e-5, rtol=0)  # fmt: skip
    # the world points of a frame are the same surface points, moved by one rigid transform
    world = sequence.pts_world[2][sequence.valid[2]].double()
    rebased = world @ torch.linalg.inv(c2w[1])[:3, :3].T + torch.linalg.inv(c2w[1])[:3, 3]
    torch.testing.assert_close(part.pts_world[1][part.valid[1]].double(), rebased, atol=1e-4,
                               rtol=0)  # fmt: skip


def test_pose_errors_and_the_backwards_check(sequence):
    truth = np.array([[0, 0, 0, 1.0, 0, 0, 0], [1.0, 0, 0, 1.0, 0, 0, 0]])
    quarter_turn = [np.cos(np.pi / 4), 0, np.sin(np.pi / 4), 0]  # 90 deg about y
    predicted = np.array([[0, 0, 0, 1.0, 0, 0, 0], [1.0, 2.0, 2.0, *quarter_turn]])
    trans_err, rot_err = pose_errors(predicted, truth)
    np.testing.assert_allclose(trans_err, [0.0, np.sqrt(8.0)], atol=1e-12)
    np.testing.assert_allclose(rot_err, [0.0, 90.0], atol=1e-9)
    torch.manual_seed(0)
    report = evaluate(Cut3r(Cut3rConfig.tiny()), [sequence], [sequence])
    assert report["frames"] == 2  # frames after the first
    for key in ("backwards_median_translation_error_m", "backwards_median_rotation_error_deg"):
        assert np.isfinite(report[key]) and report[key] > 0


def test_depth_errors_are_relative_and_per_frame(sequence):
    assert bool(sequence.valid.any())
    report = depth_errors(_Scaled(sequence, [1.0, 1.0, 1.0]), [sequence])
    assert report["median_depth_abs_rel"] == pytest.approx(0.0, abs=1e-6)
    report = depth_errors(_Scaled(sequence, [0.5, 2.0, 2.0]), [sequence])
    assert report["median_depth_abs_rel"] == pytest.approx(1.0, abs=1e-5)  # two frames of three
    assert report["frame_scale_p10"] == pytest.approx(0.5 + 0.2 * 1.5, abs=1e-5)
    assert report["frame_scale_p90"] == pytest.approx(2.0, abs=1e-5)
    torch.manual_seed(0)
    assert "median_depth_abs_rel" in evaluate(Cut3r(Cut3rConfig.tiny()), [sequence], [sequence])


def test_a_tuning_run_takes_the_rooms_it_is_told(monkeypatch):
    from loc3r.train import train_cut3r

    seeds = []

    def stop(config):
        raise InterruptedError  # the rooms are all this test reads

    monkeypatch.setattr(train_cut3r, "make_sequence", lambda seed, config: seeds.append(seed))
    monkeypatch.setattr(train_cut3r, "initial_model", stop)
    for offset in (30000, 0):
        seeds.clear()
        config = Cut3rTrainConfig(train_episodes=3, train_seed_offset=offset, eval_episodes=2,
                                  eval_seed_offset=9610000)  # fmt: skip
        with pytest.raises(InterruptedError):
            train_cut3r.train(config, False)
        assert seeds == [offset, offset + 1, offset + 2, 9610000, 9610001]
    seeds.clear()
    overlapping = Cut3rTrainConfig(train_episodes=3, train_seed_offset=9609999,
                                   eval_seed_offset=9610000)  # fmt: skip
    with pytest.raises(ValueError, match="overlap the held-out rooms 9610000-9610019"):
        train_cut3r.train(overlapping, False)
    assert seeds == []  # refused before rendering
    for device in ["tpu"] + ([] if torch.cuda.is_available() else ["cuda"]):
        with pytest.raises(ValueError, match="device"):
            train_cut3r.train(Cut3rTrainConfig(device=device), False)
    assert seeds == []


def _fields_equal(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in a.__annotations__)


def test_rooms_render_on_worker_processes_in_seed_order_and_within_a_deadline():
    config = Cut3rTrainConfig(frames=2, render_size=56, cut3r_size=32)
    one = make_sequences(range(7, 10), config, progress=False)
    two = make_sequences(range(7, 10), replace(config, workers=2), progress=False)
    assert len(one) == len(two) == 3
    assert all(_fields_equal(a, b) for a, b in zip(one, two, strict=True))
    assert _fields_equal(one[0], make_sequence(7, config))
    first = make_sequences(range(7, 10), replace(config, workers=2), 1e-6, progress=False)
    assert 1 <= len(first) < 3 and _fields_equal(first[0], one[0])  # a prefix, never empty


def test_a_time_budget_fits_the_steps_and_still_evaluates_and_saves(tmp_path):
    import json

    from loc3r.train.config import PACE_STEPS, lr_at
    from loc3r.train.train_cut3r import train

    config = Cut3rTrainConfig(
        out=str(tmp_path), frames=2, render_size=56, cut3r_size=32, train_episodes=2,
        eval_episodes=1, batch_size=1, steps=100_000, warmup_steps=1, time_budget_s=5.0,
        log_every=1,
    )  # fmt: skip
    report = train(config, progress=False)
    fitted = report["config"]["steps"]
    assert PACE_STEPS < fitted < 100_000 and report["paced"].endswith(f": {fitted} steps")
    assert 0.8 * fitted <= report["steps_done"] <= fitted  # the budget's 5 % margin for them
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    schedule = replace(config, steps=fitted)  # the LR follows the fitted steps to their end
    after = [r for r in rows if r["step"] > PACE_STEPS]  # the first ones ran before the fitting
    assert [r["lr"] for r in after] == [lr_at(r["step"] - 1, schedule) for r in after]
    assert lr_at(fitted - 1, schedule) < config.lr * (config.min_lr_ratio + 0.01)
    assert rows[-1]["step"] == report["steps_done"]
    assert report["rooms"] == 2 and report["trained"]["frames"] == 1
    assert (tmp_path / "cut3r" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="workers >= 1"):
        train(replace(config, workers=0), progress=False)


def test_the_pacer_times_the_steps_after_the_warm_up():
    from loc3r.train.config import PACE_FROM, PACE_STEPS, Pacer

    now = [0.0]
    pacer = Pacer(20.0, clock=lambda: now[0])
    planned = []
    for done in range(1, PACE_STEPS + 1):
        now[0] += 3.0 if done == 1 else 0.1  # the first step warms up, the rest take 0.1 s
        planned.append(pacer.fitted(done, 100_000))
    assert planned[:-1] == [100_000] * (PACE_STEPS - 1) and PACE_FROM < PACE_STEPS
    # 4.9 s spent; 0.95 * 20 - 4.9 = 14.1 s left at 0.1 s a step (timing from step 1: 0.245 s)
    assert planned[-1] == PACE_STEPS + 141 and pacer.note == "100 ms/step: 161 steps"
    assert not pacer.spent()
    now[0] = 20.5
    assert pacer.spent()
    slow = Pacer(1.0, clock=lambda: now[0])
    for done in range(1, PACE_STEPS + 1):
        now[0] += 1.0
        fitted = slow.fitted(done, 500)
    assert fitted == PACE_STEPS + 1  # past the budget already: one more step, then it stops
    assert Pacer(0.0).fitted(PACE_STEPS, 500) == 500 and not Pacer(0.0).spent()  # no budget


def test_training_rooms_stay_on_the_cpu_unless_they_fit_the_gpu(monkeypatch, sequence):
    from loc3r.train import train_cut3r

    moved = []
    monkeypatch.setattr(train_cut3r, "to_device", lambda s, d: moved.append(d) or s)
    rooms = [sequence, sequence]
    assert train_cut3r.resident(rooms, torch.device("cpu")) is rooms and not moved
    size = 2 * sum(getattr(sequence, f).nbytes for f in sequence.__annotations__)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * size - 1, 10 * size))
    assert train_cut3r.resident(rooms, torch.device("cuda")) is rooms and not moved
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * size, 10 * size))
    assert len(train_cut3r.resident(rooms, torch.device("cuda"))) == 2 and len(moved) == 2
