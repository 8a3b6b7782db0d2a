"""Tiny vision-tower pretraining: labels from the renderer, learning, loading into the VLM."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from loc3r.scenes import EpisodeConfig, make_episode
from loc3r.train.pretrain_vision import (
    COLOUR_NAMES,
    KINDS,
    VisionPretrainConfig,
    patch_labels,
    pretrain,
)
from loc3r.train.train_vlm import TrainConfig, build_model


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
