"""The position pointer (loc3r.vlm.position_pointer): <Pos> reads its position off the layout."""

from __future__ import annotations

import pytest
import torch
from test_vlm_packing import alone, mixed_batch, scene
from transformers import AutoTokenizer

from loc3r.train.config import TrainConfig
from loc3r.train.pipeline import continue_from, patch_grid, prepare_run
from loc3r.vlm import Loc3rVLMConfig, LossWeights
from loc3r.vlm.position_pointer import PositionPointer
from loc3r.vlm.tiny import build_tiny_loc3r
from loc3r.vlm.training_aids import trace_situation


def make_model(tokenizer_dir, pointer: bool = True, open_gate: bool = True):
    torch.manual_seed(0)
    config = Loc3rVLMConfig(cam_token_dim=24, position_pointer=pointer,
                            weights=LossWeights(grounding=0.0))  # fmt: skip
    model = build_tiny_loc3r(AutoTokenizer.from_pretrained(str(tokenizer_dir)), config)
    if pointer and open_gate:  # a trained gate: the pointer counts
        torch.nn.init.constant_(model.position_pointer.gate.bias, 1.0)
        torch.nn.init.normal_(model.position_pointer.offset.weight, std=0.05)
    return model.eval()


def test_the_pointer_mixes_f_pos_with_the_attended_layout():
    torch.manual_seed(1)
    pointer = PositionPointer(hidden=8, key_dim=4)
    pos, own = torch.randn(3, 8), torch.randn(3, 2)
    patches, layout = torch.randn(3, 5, 8), torch.randn(3, 5, 2) * 3
    closed = pointer(pos, own, patches, layout)  # the gate starts closed: almost f_pos's
    weights = pointer.attention(pos, patches)
    pointed = (weights[..., None] * layout).sum(1)
    gate = torch.sigmoid(torch.tensor(-3.0))
    torch.testing.assert_close(closed, own + gate * (pointed - own))
    torch.testing.assert_close((closed - own).norm(dim=-1), gate * (pointed - own).norm(dim=-1))
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    torch.nn.init.constant_(pointer.gate.bias, 50.0)  # wide open: the attended layout alone
    torch.testing.assert_close(pointer(pos, own, patches, layout), pointed)


def test_training_moves_the_pointer_and_never_the_layout_through_it(tokenizer_dir):
    model = make_model(tokenizer_dir).train()
    parts = model.forward_train(mixed_batch())
    parts["pos"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("query", "key", "offset", "gate"):
        assert grads[f"position_pointer.{name}.weight"].abs().sum() > 0, name
    assert grads["layout_head.weight"] is None  # the layout is detached in the pointer
    model.zero_grad(set_to_none=True)
    parts = model.forward_train(mixed_batch())  # the pointer's own loss: not the gate, not sigma
    parts["pointer"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("query", "key", "offset"):
        assert grads[f"position_pointer.{name}.weight"].abs().sum() > 0, name
    for name in ("position_pointer.gate", "layout_head", "f_pos.2"):  # f_pos: sigma detached
        grad = grads[f"{name}.weight"]
        assert grad is None or not grad.any(), name


def test_the_pointers_own_loss_joins_the_position_loss():
    from loc3r.vlm.losses import total_loss

    weights = LossWeights(situation=0.5, ori=2.0)
    parts = {"ce": torch.tensor(1.0), "pos": torch.tensor(0.4), "ori": torch.tensor(0.1)}
    without = total_loss(parts, weights)
    assert float(total_loss({**parts, "pointer": torch.tensor(0.3)}, weights)) == pytest.approx(
        float(without) + 0.5 * 0.3
    )


def test_packed_rows_give_the_pointer_each_samples_own_scene(tokenizer_dir):
    model = make_model(tokenizer_dir)
    batch = mixed_batch()
    packed = model.forward_train(batch)
    unpacked = model.forward_train([alone(s) for s in batch])
    for key in ("pos", "pointer"):
        torch.testing.assert_close(packed[key], unpacked[key], atol=2e-5, rtol=1e-4)
    # and each sample's own pointed position, as the cached inference reads it
    for s in batch:
        if s.situation:
            prefix = model.encode_scene(s.pixel_values, s.camera_tokens)
            alone_loss = model.forward_train([alone(s)])["pointer"]
            trace = trace_situation(model, s.pixel_values, s.camera_tokens, s.situation)
            sigma = model.localize(prefix, s.situation).sigma
            expected = 0.5 * (((trace.pointer_xy - s.position) / sigma) ** 2
                              + 2 * sigma.log()).sum()  # fmt: skip
            torch.testing.assert_close(alone_loss, expected, atol=2e-5, rtol=1e-4)


def test_cached_localize_equals_the_uncached_trace(tokenizer_dir):
    """Inference reads the pointer from the scene prefix's states as the trace does in one pass."""
    model = make_model(tokenizer_dir)
    s = scene(3)[0]
    prefix = model.encode_scene(s.pixel_values, s.camera_tokens)
    assert len(prefix.patch_positions) == 3 * 4  # 3 frames of 2x2 pooled patches
    pose = model.localize(prefix, s.situation)
    trace = trace_situation(model, s.pixel_values, s.camera_tokens, s.situation)
    torch.testing.assert_close(pose.xy, trace.pose.xy, atol=1e-5, rtol=1e-5)
    f_pos_only = model.f_pos(model.base.language_model.model(
        inputs_embeds=torch.cat([model.embed(model.prefix_ids()[0]),
                                 model.video_embeddings(s.pixel_values, s.camera_tokens)[0],
                                 model.embed(model.prefix_ids()[1]
                                             + model.situation_ids(s.situation))])[None]
    ).last_hidden_state[0, -2])[:2]  # fmt: skip
    assert (pose.xy - f_pos_only).norm() > 1e-3  # the open gate moved it
    torch.testing.assert_close(trace.head_xy, f_pos_only, atol=1e-5, rtol=1e-5)
    gate = torch.sigmoid(torch.tensor(1.0))  # the pose mixes the two by the gate
    mixed = trace.head_xy + gate * (trace.pointer_xy - trace.head_xy)
    torch.testing.assert_close(pose.xy, mixed, atol=1e-5, rtol=1e-5)
    assert trace.pointer_gate == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())
    assert trace.pointer_attention.shape == (12,)
    torch.testing.assert_close(trace.pointer_attention.sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="patch states"):
        model.read_pose(torch.zeros(64), torch.zeros(64))


def test_the_pointer_survives_save_and_load(tokenizer_dir, tmp_path):
    model = make_model(tokenizer_dir)
    s = scene(4)[0]
    before = model.localize(model.encode_scene(s.pixel_values, s.camera_tokens), s.situation)
    model.save_pretrained(tmp_path / "vlm")
    loaded = type(model).from_pretrained(tmp_path / "vlm")
    assert loaded.config.position_pointer
    after = loaded.localize(loaded.encode_scene(s.pixel_values, s.camera_tokens), s.situation)
    torch.testing.assert_close(after.xy, before.xy)


def test_the_pointer_needs_the_layout_head(tokenizer_dir):
    config = Loc3rVLMConfig(cam_token_dim=24, position_pointer=True, enable_layout_head=False)
    with pytest.raises(ValueError, match="enable_layout_head"):
        build_tiny_loc3r(AutoTokenizer.from_pretrained(str(tokenizer_dir)), config)


def test_a_continued_model_may_gain_the_pointer_but_not_lose_it(tokenizer_dir, tmp_path):
    sizes = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128,
             "image_size": 56, "vision_hidden": 32, "vision_layers": 2}  # fmt: skip
    plain = make_model(tokenizer_dir, pointer=False)
    plain.save_pretrained(tmp_path / "plain")
    wanted = Loc3rVLMConfig(cam_token_dim=24, position_pointer=True)
    continued = continue_from(str(tmp_path / "plain"), wanted, sizes)
    assert continued.config.position_pointer and continued.position_pointer is not None
    s = scene(5)[0]
    own = plain.localize(plain.encode_scene(s.pixel_values, s.camera_tokens), s.situation)
    new = continued.localize(continued.encode_scene(s.pixel_values, s.camera_tokens), s.situation)
    # it starts with its gate almost closed: the continued model localizes near the saved one
    pointer = continued.position_pointer
    assert float(pointer.gate.bias) == -3.0 and pointer.gate.weight.abs().sum() == 0
    assert 0 < (new.xy - own.xy).norm() < 0.05 * max(1.0, float(own.xy.norm()))
    continued.save_pretrained(tmp_path / "pointer")
    with pytest.raises(ValueError, match="position_pointer"):
        continue_from(str(tmp_path / "pointer"), Loc3rVLMConfig(cam_token_dim=24), sizes)


class _StopError(Exception):
    pass


def test_train_seed_offset_picks_the_training_rooms_and_never_held_out_ones(tmp_path, monkeypatch):
    import loc3r.train.pipeline as pipeline

    seen = []

    def corpus(seeds, config):  # the first thing that reads the training seeds: stop there
        seen.append(list(seeds))
        raise _StopError

    monkeypatch.setattr(pipeline, "corpus", corpus)
    for offset in (0, 3000, 999_990):  # the last ends right before the held-out rooms
        with pytest.raises(_StopError):
            pipeline.prepare_run(TrainConfig(out=str(tmp_path / str(offset)), train_episodes=10,
                                             train_seed_offset=offset), progress=False)  # fmt: skip
        assert seen[-1] == list(range(offset, offset + 10))
    for offset in (999_995, 1_000_010, -1):  # overlapping the held-out rooms, or negative
        with pytest.raises(ValueError, match="train_seed_offset"):
            pipeline.prepare_run(TrainConfig(out=str(tmp_path), train_episodes=10,
                                             train_seed_offset=offset), progress=False)  # fmt: skip
    # past the held-out rooms is fine
    with pytest.raises(_StopError):
        pipeline.prepare_run(TrainConfig(out=str(tmp_path / "past"), train_episodes=10,
                                         train_seed_offset=1_000_040), progress=False)  # fmt: skip


def test_static_decoding_reads_the_pointer_as_the_dynamic_cache(tokenizer_dir):
    from loc3r.vlm.static_decoding import StaticDecoding, is_static

    model = make_model(tokenizer_dir)
    s = scene(6)[0]
    expected = model.localize(model.encode_scene(s.pixel_values, s.camera_tokens), s.situation)
    model.use_static_decoding(StaticDecoding(extra_tokens=64, capacity_multiple=64))
    prefix = model.encode_scene(s.pixel_values, s.camera_tokens)
    assert is_static(prefix.cache)
    got = model.localize(prefix, s.situation)
    torch.testing.assert_close(got.xy, expected.xy, atol=1e-5, rtol=1e-5)
    broken = type(prefix)(prefix.cache, prefix.length, prefix.num_frames, prefix.last_hidden,
                          prefix.ticket, None)  # fmt: skip
    with pytest.raises(ValueError, match="encode_scene"):
        model.localize(broken, s.situation)


def test_a_continued_model_may_pool_its_patches_finer(tokenizer_dir, tmp_path):
    """pool_stride 2 -> 1: four times the cells, f_cam's input widened, every other weight kept."""
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    sizes = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128,
             "image_size": 56, "vision_hidden": 32, "vision_layers": 2}  # fmt: skip
    torch.manual_seed(0)  # 56 px: a 4x4 patch grid, 2x2 cells pooled (12 + 3 * 4 = 24 values)
    coarse = build_tiny_loc3r(tokenizer, Loc3rVLMConfig(cam_token_dim=24, point_embedding=True),
                              **sizes, pool_stride=2)  # fmt: skip
    coarse.save_pretrained(tmp_path / "coarse")
    wanted = Loc3rVLMConfig(cam_token_dim=60, point_embedding=True)  # 12 + 3 * 16
    fine = continue_from(str(tmp_path / "coarse"), wanted, {**sizes, "pool_stride": 1})
    assert fine.base.config.pooled_grid == 4 and fine.base.config.tokens_per_frame == 20
    assert fine.config.cam_token_dim == 60 and fine.f_cam[0].in_features == 60
    before, after = coarse.state_dict(), fine.state_dict()
    assert before.keys() == after.keys()
    for name, value in before.items():
        if name != "f_cam.0.weight":
            torch.testing.assert_close(after[name], value, msg=name)
    widened = after["f_cam.0.weight"]
    torch.testing.assert_close(widened[:, :12], before["f_cam.0.weight"][:, :12])
    assert widened[:, 12:].abs().sum() == 0  # the new cells' points start unread
    pose = torch.randn(3, 12)  # the pose reaches the LLM as it did
    coarse_token = torch.cat([pose, torch.zeros(3, 12)], dim=1)
    fine_token = torch.cat([pose, torch.randn(3, 48)], dim=1)
    torch.testing.assert_close(fine.f_cam(fine_token), coarse.f_cam(coarse_token))
    pixels = torch.randn(3, 3, 56, 56)
    video, patch_index = fine.eval().video_embeddings(pixels, fine_token)
    assert video.shape[0] == 3 * (1 + 20) and int((patch_index >= 0).sum()) == 3 * 16
    fine.save_pretrained(tmp_path / "fine")  # a bundle keeps its grid
    loaded = type(fine).from_pretrained(tmp_path / "fine")
    assert loaded.base.config.pool_stride == 1 and loaded.config.cam_token_dim == 60
    too_narrow = Loc3rVLMConfig(cam_token_dim=24, point_embedding=True)
    with pytest.raises(ValueError, match="4x4 grid needs camera tokens of 60 values"):
        continue_from(str(tmp_path / "coarse"), too_narrow, {**sizes, "pool_stride": 1})


def test_another_grid_rereads_the_camera_tokens_at_any_width(tokenizer_dir, tmp_path):
    """Tokens as wide as a wide CUT3R's (96) either way: the cells' columns still start at zero."""
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    sizes = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128,
             "image_size": 56, "vision_hidden": 32, "vision_layers": 2}  # fmt: skip
    wide = Loc3rVLMConfig(cam_token_dim=96, point_embedding=True)
    torch.manual_seed(0)
    fine = build_tiny_loc3r(tokenizer, wide, **sizes, pool_stride=1)
    fine.save_pretrained(tmp_path / "fine")
    coarse = continue_from(str(tmp_path / "fine"), wide, {**sizes, "pool_stride": 2})
    assert coarse.base.config.pooled_grid == 2 and coarse.f_cam[0].in_features == 96
    weight = coarse.f_cam[0].weight
    torch.testing.assert_close(weight[:, :12], fine.f_cam[0].weight[:, :12])
    assert weight[:, 12:].abs().sum() == 0 and fine.f_cam[0].weight[:, 12:].abs().sum() > 0
    torch.manual_seed(3)
    expected = torch.rand(5)
    torch.manual_seed(3)
    continue_from(str(tmp_path / "fine"), wide, {**sizes, "pool_stride": 2})
    torch.testing.assert_close(torch.rand(5), expected)  # no random draws taken
    plain = Loc3rVLMConfig(cam_token_dim=96)  # without the point embedding nothing is rebuilt
    build_tiny_loc3r(tokenizer, plain, **sizes).save_pretrained(tmp_path / "plain")
    kept = continue_from(str(tmp_path / "plain"), plain, {**sizes, "pool_stride": 1})
    assert kept.base.config.pooled_grid == 4 and kept.f_cam[0].weight[:, 12:].abs().sum() > 0


def test_the_run_grid_follows_pool_stride(tmp_path):
    assert patch_grid(TrainConfig(image_size=112)) == 4
    assert patch_grid(TrainConfig(image_size=112, pool_stride=1)) == 8
    assert patch_grid(TrainConfig(image_size=224)) == 8
    with pytest.raises(ValueError, match="pool_stride"):
        patch_grid(TrainConfig(pool_stride=0))
    with pytest.raises(ValueError, match="LLaVA-Video pools its patches 2x2"):
        prepare_run(TrainConfig(out=str(tmp_path), base_model_dir="x", pool_stride=1))
