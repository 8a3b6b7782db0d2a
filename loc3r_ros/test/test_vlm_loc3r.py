"""Loc3R-VLM on tiny configs: shapes, trained parts, cache equality, checkpoints, overfitting."""

from __future__ import annotations

import math

import pytest
import torch

from loc3r.vlm import LlavaCheckpointError, Loc3rVLM, TrainSample


def sample(seed: int = 0, frames: int = 3) -> TrainSample:
    g = torch.Generator().manual_seed(seed)
    return TrainSample(
        pixel_values=torch.rand(frames, 3, 56, 56, generator=g) * 2 - 1,
        camera_tokens=torch.randn(frames, 24, generator=g),
        situation="I am sitting on the bed facing the window",
        question="What is on my left?",
        answer="a red lamp",
        position=torch.tensor([1.5, -0.75]),
        yaw=math.radians(170.0),
        bev_targets=torch.randn(frames, 2, 2, 2, generator=g),
        bev_mask=torch.rand(frames, 2, 2, generator=g) > 0.3,
    )


def test_video_layout_camera_token_before_each_frame(model):
    s = sample()
    video, index = model.video_embeddings(s.pixel_values, s.camera_tokens)
    assert video.shape == (3 * 7, 64)  # per frame: 1 camera + 2 rows x (2 patches + newline)
    assert index.tolist()[:7] == [-1, 0, 1, -1, 2, 3, -1]
    assert index.tolist()[7:9] == [-1, 4]
    cam = model.f_cam(s.camera_tokens)
    torch.testing.assert_close(video[0], cam[0])
    torch.testing.assert_close(video[7], cam[1])
    with pytest.raises(ValueError, match="camera tokens of shape"):
        model.video_embeddings(s.pixel_values, s.camera_tokens[:2])


def test_gradients_reach_exactly_the_trained_parts(model):
    parts = model.forward_train([sample(0), sample(1, frames=2)])
    assert set(parts) == {"ce", "pos", "ori", "bev", "loss"}
    assert all(torch.isfinite(v) for v in parts.values())
    parts["loss"].backward()
    for name, param in model.named_parameters():
        frozen = name.startswith("base.vision_tower.")
        assert (param.grad is None) == frozen, name
        if not frozen:
            assert param.requires_grad, name
    used_rows = model.base.language_model.get_input_embeddings().weight.grad.abs().sum(-1)
    assert used_rows[model.pos_id] > 0 and used_rows[model.ori_id] > 0


def test_pos_and_ori_do_not_see_the_question(model):
    model.eval()
    s = sample()
    prefix = model.encode_scene(s.pixel_values, s.camera_tokens)
    a = model.answer(prefix, "What is on my left?", s.situation)[1]
    b = model.answer(prefix, "How many chairs are there?", s.situation)[1]
    torch.testing.assert_close(a.xy, b.xy)
    assert a.yaw == pytest.approx(b.yaw)


def test_cached_prefix_equals_uncached_forward(model):
    model.eval()
    s = sample()
    prefix = model.encode_scene(s.pixel_values, s.camera_tokens)
    first = model.localize(prefix, s.situation)
    assert prefix.cache.get_seq_length() == prefix.length  # the cache was cropped back
    model.answer(prefix, "Anything?", "I am by the door")  # another query in between
    second = model.localize(prefix, s.situation)
    torch.testing.assert_close(first.xy, second.xy)
    # Uncached: the whole sequence in one forward pass, no cache at all.
    video, _ = model.video_embeddings(s.pixel_values, s.camera_tokens)
    before, after = model.prefix_ids()
    ids = after + model.situation_ids(s.situation)
    embeds = torch.cat([model.embed(before), video, model.embed(ids)])[None]
    with torch.no_grad():
        states = model.base.language_model.model(inputs_embeds=embeds).last_hidden_state[0]
    cold = model.read_pose(states[-2], states[-1])
    torch.testing.assert_close(first.xy, cold.xy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first.ori_probs, cold.ori_probs, atol=1e-5, rtol=1e-5)
    # The answer through the cache equals greedy decoding over the full sequence without cache.
    text, _ = model.answer(prefix, s.question, s.situation)
    full = torch.cat([embeds[0], model.embed(model.question_ids(s.question))])[None]
    tokens = []
    with torch.no_grad():
        for _ in range(model.config.max_new_tokens):
            logits = model.base.language_model(inputs_embeds=full).logits[0, -1]
            token = int(logits.argmax())
            if token in model.stop_ids:
                break
            tokens.append(token)
            full = torch.cat([full, model.embed([token])[None]], dim=1)
    assert text == model.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def test_checkpoint_round_trip_and_corruption(model, tmp_path):
    model.eval()
    s = sample()
    expected = model.localize(model.encode_scene(s.pixel_values, s.camera_tokens), s.situation)
    path = model.save_pretrained(tmp_path / "ckpt")
    loaded = Loc3rVLM.from_pretrained(path)
    again = loaded.localize(loaded.encode_scene(s.pixel_values, s.camera_tokens), s.situation)
    torch.testing.assert_close(expected.xy, again.xy)
    assert loaded.pos_id == model.pos_id and loaded.ori_id == model.ori_id
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LlavaCheckpointError, match="unreadable model.safetensors"):
        Loc3rVLM.from_pretrained(path)
    (path / "config.json").write_text('{"format": "something else"}')
    with pytest.raises(LlavaCheckpointError, match="not a Loc3R-VLM checkpoint"):
        Loc3rVLM.from_pretrained(path)


def test_overfits_one_batch(model):
    """200 steps on one tiny batch: position < 0.1 m, yaw < 10 deg, exact answer tokens."""
    torch.manual_seed(0)
    batch = [sample(0), sample(1)]
    batch[1].position, batch[1].yaw = torch.tensor([-2.0, 0.5]), math.radians(-60.0)
    batch[1].question, batch[1].answer = "How many chairs are there?", "three"
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(200):
        optimizer.zero_grad()
        model.forward_train(batch)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
    model.eval()
    for s in batch:
        prefix = model.encode_scene(s.pixel_values, s.camera_tokens)
        answer, pose = model.answer(prefix, s.question, s.situation)
        assert torch.linalg.norm(pose.xy - s.position).item() < 0.1
        error = abs(math.remainder(pose.yaw - s.yaw, 2 * math.pi))
        assert math.degrees(error) < 10.0
        assert answer == s.answer


def test_sampling_keeps_to_top_k_and_top_p():
    from loc3r.vlm.llava_video import SamplingConfig

    scores = torch.tensor([5.0, 4.0, 1.0, -2.0, -9.0])
    picks = {
        SamplingConfig(temperature=1.0, top_k=2, top_p=1.0, seed=s).pick(scores) for s in range(50)
    }
    assert picks == {0, 1}
    only_best = {SamplingConfig(top_k=0, top_p=0.5, seed=s).pick(scores) for s in range(20)}
    assert only_best == {0}
    with pytest.raises(ValueError):
        SamplingConfig(temperature=0.0)


def test_sampling_mode_answers_through_the_same_cache(model):
    model.eval()
    model.config.do_sample = True
    s = sample()
    prefix = model.encode_scene(s.pixel_values, s.camera_tokens)
    text, pose = model.answer(prefix, s.question, s.situation)
    assert isinstance(text, str) and torch.isfinite(pose.xy).all()
    assert prefix.cache.get_seq_length() == prefix.length
    model.config.do_sample = False
    greedy_pose = model.localize(prefix, s.situation)
    torch.testing.assert_close(greedy_pose.xy, pose.xy)  # sampling touches only the answer


def test_checkpoints_with_removed_options_load_only_with_them_off(model, tmp_path):
    import json

    from loc3r.vlm import Loc3rVLMConfig
    from loc3r.vlm.loc3r_vlm import REMOVED_OPTIONS, REMOVED_WEIGHTS

    # a config saved before an option was removed (the shipped bundle's carries the reading
    # losses' weights, at 0): the removed options at the values they had when off are ignored
    old = Loc3rVLMConfig(cam_token_dim=24).to_dict()
    old |= {key: off for key, (off, _) in REMOVED_OPTIONS.items()}
    old["weights"] |= {key: off for key, (off, _) in REMOVED_WEIGHTS.items()}
    assert Loc3rVLMConfig.from_dict(old) == Loc3rVLMConfig(cam_token_dim=24)
    for key, value, commit in (
        ("position_readout", "attended_layout", "7295583"),
        ("answer_grounding", "situation", "7295583"),
        ("grounding_layer", 1, "7295583"),
        ("semantic_classes", [14, 9], "2f61514"),
        ("semantic_probe_hidden", 128, "2f61514"),
        ("readout_spread", True, "5d813da"),
    ):
        with pytest.raises(ValueError, match=f"{key}=.*was removed.*{commit}"):
            Loc3rVLMConfig.from_dict({**old, key: value})
    for key in REMOVED_WEIGHTS:
        with pytest.raises(ValueError, match=f"{key}=0.3: the option was removed.*a5fc376"):
            Loc3rVLMConfig.from_dict({**old, "weights": {**old["weights"], key: 0.3}})
    path = model.save_pretrained(tmp_path / "old")
    config = json.loads((path / "config.json").read_text())
    config["loc3r"]["position_readout"] = "hidden"
    (path / "config.json").write_text(json.dumps(config))
    Loc3rVLM.from_pretrained(path)
    config["loc3r"]["position_readout"] = "attended_layout"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(LlavaCheckpointError, match="position_readout='attended_layout'"):
        Loc3rVLM.from_pretrained(path)


def test_point_embedding_adds_each_patch_its_point_and_nothing_else(tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    from loc3r.vlm import Loc3rVLMConfig
    from loc3r.vlm.tiny import build_tiny_loc3r

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    model = build_tiny_loc3r(tokenizer, Loc3rVLMConfig(cam_token_dim=24, point_embedding=True))
    s = sample()  # 56 px: a 2x2 grid, geometry tokens of 12 + 12 values
    # it starts at zero (the patches are the pixels alone) and the loss reaches it
    assert torch.all(model.point_embedding(s.camera_tokens[:, 12:].unflatten(1, (4, 3))) == 0)
    model.forward_train([s])["loss"].backward()
    assert model.point_embedding.proj.weight.grad.abs().sum() > 0
    torch.nn.init.normal_(model.point_embedding.proj.weight)  # as after training
    video, index = model.video_embeddings(s.pixel_values, s.camera_tokens)
    moved = s.camera_tokens.clone()
    moved[1, 12 + 3 * 2 : 12 + 3 * 3] += 1.0  # frame 1, patch 2's point
    video_moved, _ = model.video_embeddings(s.pixel_values, moved)
    changed = (video_moved - video).abs().sum(-1) > 0
    frame1 = slice(7, 14)
    # the camera token of frame 1 (f_cam reads the whole token) and patch 2 (global index 6)
    assert changed.nonzero().flatten().tolist() == [7, (index == 6).nonzero().item()]
    assert not changed[:7].any() and not changed[14:].any() and changed[frame1].sum() == 2
    embed = model.point_embedding
    expected = embed(moved[1, 18:21]) - embed(s.camera_tokens[1, 18:21])
    row = (index == 6).nonzero().item()
    torch.testing.assert_close(video_moved[row] - video[row], expected)
    model.save_pretrained(tmp_path / "vlm")
    loaded = Loc3rVLM.from_pretrained(tmp_path / "vlm")
    assert loaded.config.point_embedding
    torch.testing.assert_close(loaded.video_embeddings(s.pixel_values, s.camera_tokens)[0], video)
    with pytest.raises(ValueError, match="at least 24 values"):
        build_tiny_loc3r(tokenizer, Loc3rVLMConfig(cam_token_dim=20, point_embedding=True))
    with pytest.raises(ValueError, match="camera tokens are off"):
        build_tiny_loc3r(tokenizer, Loc3rVLMConfig(cam_token_dim=24, point_embedding=True,
                                                   use_camera_tokens=False))  # fmt: skip
