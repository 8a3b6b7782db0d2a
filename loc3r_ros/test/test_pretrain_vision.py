"""Tiny vision-tower pretraining: labels from the renderer, learning, loading into the VLM."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from loc3r.scenes import EpisodeConfig, make_episode
from loc3r.train.config import TrainConfig
from loc3r.train.pipeline import build_model
from loc3r.train.pretrain_vision import (
    COLOUR_NAMES,
    KINDS,
    PatchHeads,
    VisionPretrainConfig,
    losses,
    patch_labels,
    pretrain,
)


def test_patch_labels_follow_the_renderer():
    episode = make_episode(4, EpisodeConfig(frames=2, image_size=56))
    frame, room = episode.frames[0], episode.room
    kinds, colours, depth = patch_labels(frame, room, 4)
    by_id = {obj.id: obj for obj in room.objects}
    for i in range(4):
        for j in range(4):
            obj_id = frame.object_id[int((i + 0.5) * 14), int((j + 0.5) * 14)]
            if obj_id < 0:
                assert (kinds[i, j], colours[i, j]) == (0, 0)
            else:
                obj = by_id[int(obj_id)]
                assert KINDS[kinds[i, j]] == obj.kind and COLOUR_NAMES[colours[i, j]] == obj.colour
    assert np.isfinite(depth).all()


class _FeaturesArePixels:
    """A stand-in tower whose features are its input (to feed the heads known values)."""

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels


def test_accuracies_count_object_patches_apart():
    dim = len(KINDS)
    heads = PatchHeads(dim)
    with torch.no_grad():  # kind logits = features: the prediction is the one-hot's index
        heads.kind.weight.copy_(torch.eye(dim))
        heads.kind.bias.zero_()
    truth = torch.tensor([[0, 0, 0, 0, 3, 3, 5, 7]])  # 4 surface patches, 4 object patches
    predicted = torch.tensor([[0, 0, 0, 2, 3, 1, 5, 7]])  # 3 of 4 right on each
    features = torch.nn.functional.one_hot(predicted, dim).float()
    zeros = torch.zeros_like(truth)
    parts = losses(_FeaturesArePixels(), heads, features, truth, zeros, zeros.float())
    assert parts["kind_acc"].item() == 6 / 8
    assert parts["object_kind_acc"].item() == 3 / 4
    no_objects = losses(_FeaturesArePixels(), heads, features, zeros, zeros, zeros.float())
    assert no_objects["object_kind_acc"].isnan()


def test_pretraining_learns_and_the_tower_loads_into_the_vlm(tmp_path, data_dir):
    sizes = {"image_size": 56, "vision_hidden": 16, "vision_layers": 1}
    config = VisionPretrainConfig(
        out=str(tmp_path),
        steps=60,
        warmup_steps=5,
        episodes=6,
        eval_episodes=2,
        frames=4,
        batch_frames=8,
        **sizes,
    )
    report = pretrain(config, progress=False)
    assert report["final_loss"] < 0.6 * report["first_loss"]
    assert 0.0 < report["held_out"]["kind_acc"] <= 1.0 and report["held_out"]["loss"] < 5.0
    assert 0.0 <= report["held_out"]["object_kind_acc"] <= 1.0
    tokenizer = AutoTokenizer.from_pretrained(
        str(data_dir / "llava_video_reference" / "tiny_llava_video")
    )
    train_config = TrainConfig(
        hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64,
        vision_init=str(tmp_path / "vision_tower.safetensors"), **sizes,
    )  # fmt: skip
    model = build_model(train_config, tokenizer, cam_dim=24)
    saved = load_file(str(tmp_path / "vision_tower.safetensors"))
    for key, value in model.base.vision_tower.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert not any(p.requires_grad for p in model.base.vision_tower.parameters())  # frozen


def test_a_time_budget_stops_pretraining_early_and_still_saves_the_tower(tmp_path):
    config = VisionPretrainConfig(
        out=str(tmp_path), steps=100_000, warmup_steps=1, episodes=2, eval_episodes=1, frames=2,
        batch_frames=2, image_size=56, vision_hidden=16, vision_layers=1, time_budget_s=0.5,
    )  # fmt: skip
    report = pretrain(config, progress=False)
    assert 1 <= report["steps_done"] < 100_000  # stopped by the clock, after at least one step
    assert (tmp_path / "vision_tower.safetensors").exists() and report["held_out"]["loss"] > 0
    unlimited = pretrain(replace(config, steps=3, time_budget_s=0.0), progress=False)
    assert unlimited["steps_done"] == 3


def test_probe_heads_are_linear_or_one_hidden_gelu_layer():
    from loc3r.train.pretrain_vision import probe_head

    linear, hidden = probe_head(8, 3), probe_head(8, 3, probe_hidden=4)
    assert set(linear.state_dict()) == {"weight", "bias"}
    # the saved patch_heads keys of a probe with a hidden layer: Linear, GELU, Linear
    assert set(hidden.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert isinstance(hidden[1], torch.nn.GELU) and hidden[0].out_features == 4
    assert hidden(torch.randn(5, 8)).shape == linear(torch.randn(5, 8)).shape == (5, 3)
