"""The heading pointer (loc3r.vlm.heading_pointer) and the pointers' grounding on their objects."""

from __future__ import annotations

import math

import pytest
import torch
from test_vlm_packing import alone, mixed_batch, scene
from transformers import AutoTokenizer

from loc3r.train.pipeline import continue_from
from loc3r.vlm import Loc3rVLMConfig, LossWeights
from loc3r.vlm.heading_pointer import HeadingPointer, bearing, heading_error, soft_norm
from loc3r.vlm.loc3r_vlm import DEFAULT_SITUATION
from loc3r.vlm.losses import grounding_nll, heading_from_bins, total_loss
from loc3r.vlm.static_decoding import StaticDecoding, is_static
from loc3r.vlm.tiny import build_tiny_loc3r
from loc3r.vlm.training_aids import trace_situation

SIZES = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128,
         "image_size": 56, "vision_hidden": 32, "vision_layers": 2}  # fmt: skip
OPEN_GATE = 1.0  # sigmoid(1) = 0.73: a trained gate


def make_model(tokenizer_dir, heading: bool = True, position: bool = True, ground: bool = True):
    torch.manual_seed(0)
    config = Loc3rVLMConfig(cam_token_dim=24, position_pointer=position, heading_pointer=heading,
                            ground_pointers=ground,
                            weights=LossWeights(grounding=0.5))  # fmt: skip
    model = build_tiny_loc3r(AutoTokenizer.from_pretrained(str(tokenizer_dir)), config)
    if heading:
        torch.nn.init.constant_(model.heading_pointer.gate.bias, OPEN_GATE)
    if position:
        torch.nn.init.constant_(model.position_pointer.gate.bias, OPEN_GATE)
    return model.eval()


def angle_between(a: float, b: float) -> float:
    return abs(math.remainder(a - b, 2 * math.pi))


def mixed_vector(trace, xy: torch.Tensor, gate) -> tuple[list[float], list[float]]:
    """u and v of heading_pointer, written out from a trace: v from the (mixed) position to the
    attended layout, u f_ori's unit vector turned towards v / |v|_e by the gate."""
    v = ((trace.heading_attention[:, None] * trace.layout).sum(0) - xy).tolist()
    length = math.sqrt(v[0] ** 2 + v[1] ** 2 + 0.1**2)
    g = float(gate)
    u = [(1 - g) * math.cos(trace.head_yaw) + g * v[0] / length,
         (1 - g) * math.sin(trace.head_yaw) + g * v[1] / length]  # fmt: skip
    return u, v


def vector_error(vector: list[float], yaw: float) -> float:
    length = math.sqrt(vector[0] ** 2 + vector[1] ** 2 + 0.1**2)
    return 1 - (vector[0] * math.cos(yaw) + vector[1] * math.sin(yaw)) / length


def test_the_pointer_reads_the_bearing_to_the_attended_layout_and_mixes_it_on_the_circle():
    torch.manual_seed(1)
    pointer = HeadingPointer(hidden=8, key_dim=4)
    ori, patches = torch.randn(3, 8), torch.randn(3, 5, 8)
    layout, position = torch.randn(3, 5, 2) * 3, torch.randn(3, 2)
    towards, weights = pointer.point(ori, patches, layout, position)
    faced = (weights[..., None] * layout).sum(1)
    torch.testing.assert_close(towards, faced - position)
    for n in range(3):
        dx, dy = (faced[n] - position[n]).tolist()
        assert float(bearing(towards)[n]) == pytest.approx(math.atan2(dy, dx), abs=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    own = torch.tensor([0.3, -2.0, 1.0])
    closed = bearing(pointer.mix(ori, own, towards))  # the gate starts almost closed: f_ori's
    for n in range(3):
        assert 0 < angle_between(float(closed[n]), float(own[n])) < 0.06 * math.pi
    torch.nn.init.constant_(pointer.gate.bias, 50.0)  # wide open: the pointer's alone
    torch.testing.assert_close(bearing(pointer.mix(ori, own, towards)), bearing(towards))
    # half open, across the +-pi seam: halfway on the circle (pi), not through 0
    torch.nn.init.constant_(pointer.gate.bias, 0.0)
    mixed = pointer.mix(
        ori[:1],
        torch.tensor([math.pi - 0.1]),
        torch.tensor([[5 * math.cos(-math.pi + 0.1), 5 * math.sin(-math.pi + 0.1)]]),
    )
    assert angle_between(float(bearing(mixed)), math.pi) < 1e-4
    # a bearing to a point right at the agent weighs less than a long one
    short = pointer.mix(ori[:1], torch.tensor([0.0]), torch.tensor([[0.0, 0.05]]))
    long = pointer.mix(ori[:1], torch.tensor([0.0]), torch.tensor([[0.0, 5.0]]))
    assert 0 < float(bearing(short)) < float(bearing(long)) < math.pi / 2 + 1e-6


def test_heading_error_is_one_minus_cos_and_its_gradient_stays_bounded():
    yaw = torch.tensor([0.5, -3.0])
    along = 4 * torch.stack([yaw.cos(), yaw.sin()], dim=-1)  # 4 m along each heading
    assert float(heading_error(along, yaw)) == pytest.approx(0.0, abs=1e-3)
    assert float(heading_error(along, yaw + math.pi)) == pytest.approx(2.0, abs=1e-3)
    assert float(heading_error(along, yaw + 2 * math.pi)) == pytest.approx(0.0, abs=1e-3)
    assert float(heading_error(torch.zeros(2, 2), yaw)) == pytest.approx(1.0)  # a null vector
    # a vector a millimetre long: the gradient is finite and under 1 / eps (atan2's would be 1e3)
    tiny = torch.tensor([[0.0, 0.001]], requires_grad=True)
    heading_error(tiny, torch.tensor([0.0])).backward()
    assert torch.isfinite(tiny.grad).all() and float(tiny.grad.norm()) <= 10.0 + 1e-4
    assert float(soft_norm(torch.tensor([[3.0, 4.0]]))) == pytest.approx(math.hypot(5, 0.1))


def test_the_heading_losses_join_the_orientation_loss_and_the_grounding_the_grounding():
    weights = LossWeights(situation=0.5, ori=2.0, grounding=0.25)
    parts = {"ce": torch.tensor(1.0), "pos": torch.tensor(0.4), "ori": torch.tensor(0.1)}
    base = float(total_loss(parts, weights))
    with_heading = {**parts, "heading": torch.tensor(0.3), "heading_pointer": torch.tensor(0.2)}
    assert float(total_loss(with_heading, weights)) == pytest.approx(base + 0.5 * 2.0 * 0.5)
    grounded = {**parts, "pointer_ground": torch.tensor(0.6), "heading_ground": torch.tensor(1.0)}
    assert float(total_loss(grounded, weights)) == pytest.approx(base + 0.25 * 1.6)


def test_cached_localize_equals_the_uncached_trace(tokenizer_dir):
    """Inference reads both pointers from the scene prefix's states as the trace does."""
    model = make_model(tokenizer_dir)
    s = scene(3)[0]
    prefix = model.encode_scene(s.pixel_values, s.camera_tokens)
    pose = model.localize(prefix, s.situation)
    trace = trace_situation(model, s.pixel_values, s.camera_tokens, s.situation)
    torch.testing.assert_close(pose.xy, trace.pose.xy, atol=1e-5, rtol=1e-5)
    assert pose.yaw == pytest.approx(trace.pose.yaw, abs=1e-5)
    f_ori, spread = heading_from_bins(pose.ori_probs)
    assert trace.head_yaw == pytest.approx(float(f_ori), abs=1e-5)
    assert pose.yaw_spread == pytest.approx(float(spread), abs=1e-6)  # f_ori's spread
    assert angle_between(pose.yaw, trace.head_yaw) > 1e-3  # the open gate turned it
    gate = torch.sigmoid(torch.tensor(OPEN_GATE))
    assert trace.heading_gate == pytest.approx(float(gate))
    assert trace.heading_attention.shape == (12,)  # 3 frames of 2x2 pooled patches
    u, v = mixed_vector(trace, pose.xy, gate)
    assert trace.pointer_yaw == pytest.approx(math.atan2(v[1], v[0]), abs=1e-5)
    assert angle_between(pose.yaw, math.atan2(u[1], u[0])) < 1e-5
    with pytest.raises(ValueError, match="patch states"):
        model.read_pose(torch.zeros(64), torch.zeros(64))


def test_a_heading_pointer_alone_reads_the_bearing_from_f_pos(tokenizer_dir):
    model = make_model(tokenizer_dir, position=False)
    s = scene(4)[0]
    pose = model.localize(model.encode_scene(s.pixel_values, s.camera_tokens), s.situation)
    trace = trace_situation(model, s.pixel_values, s.camera_tokens, s.situation)
    assert trace.pointer_xy is None and trace.head_xy is None
    faced = (trace.heading_attention[:, None] * trace.layout).sum(0) - pose.xy
    assert trace.pointer_yaw == pytest.approx(math.atan2(float(faced[1]), float(faced[0])),
                                              abs=1e-5)  # fmt: skip
    assert pose.yaw == pytest.approx(trace.pose.yaw, abs=1e-5)


def test_training_moves_the_pointer_never_the_layout_the_position_or_f_ori(tokenizer_dir):
    model = make_model(tokenizer_dir).train()
    parts = model.forward_train(mixed_batch())
    for name in ("heading", "heading_pointer", "pointer_ground", "heading_ground"):
        assert name in parts and torch.isfinite(parts[name]), name
    untouched = ("layout_head", "f_pos.0", "f_pos.2", "f_ori.0", "f_ori.2",
                 "position_pointer.query", "position_pointer.gate")  # fmt: skip
    for part, moved in (
        ("heading_pointer", ("query", "key")),  # the pointer's own heading: its attention
        ("heading", ("query", "key", "gate")),  # the mixed one: the gate too
        ("heading_ground", ("query", "key")),
    ):
        model.zero_grad(set_to_none=True)
        model.forward_train(mixed_batch())[part].backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        for name in moved:
            assert grads[f"heading_pointer.{name}.weight"].abs().sum() > 0, (part, name)
        for name in untouched:
            grad = grads[f"{name}.weight"]
            assert grad is None or not grad.any(), (part, name)
    model.zero_grad(set_to_none=True)  # the position pointer's grounding moves its attention
    model.forward_train(mixed_batch())["pointer_ground"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["position_pointer.query.weight"].abs().sum() > 0
    assert grads["layout_head.weight"] is None or not grads["layout_head.weight"].any()


def test_packed_rows_give_each_sample_its_own_losses(tokenizer_dir):
    model = make_model(tokenizer_dir)
    batch = mixed_batch()
    packed = model.forward_train(batch)
    unpacked = model.forward_train([alone(s) for s in batch])
    for key in ("pos", "pointer", "ori", "heading", "heading_pointer", "pointer_ground",
                "heading_ground", "ce"):  # fmt: skip
        torch.testing.assert_close(packed[key], unpacked[key], atol=2e-5, rtol=1e-4, msg=key)
    # and each sample's heading losses are what the cached inference reads
    mixed, own = [], []
    for s in batch:
        if s.position is not None:  # (no situation text: the default one)
            situation = s.situation or DEFAULT_SITUATION
            pose = model.localize(model.encode_scene(s.pixel_values, s.camera_tokens), situation)
            trace = trace_situation(model, s.pixel_values, s.camera_tokens, situation)
            u, v = mixed_vector(trace, pose.xy, trace.heading_gate)
            mixed.append(vector_error(u, s.yaw))
            own.append(vector_error(v, s.yaw))
    assert float(packed["heading"]) == pytest.approx(sum(mixed) / len(mixed), abs=1e-4)
    assert float(packed["heading_pointer"]) == pytest.approx(sum(own) / len(own), abs=1e-4)


def test_each_pointers_attention_is_grounded_on_its_object(tokenizer_dir):
    model = make_model(tokenizer_dir)
    batch = mixed_batch()
    parts = model.forward_train(batch)
    anchor, target = [], []  # each sample's own: the scenes' patches differ in number
    for s in batch:
        if s.position is None:
            continue
        situation = s.situation or DEFAULT_SITUATION
        trace = trace_situation(model, s.pixel_values, s.camera_tokens, situation)
        cells = trace.patch_index
        anchor.append(grounding_nll(trace.pointer_attention[None],
                                    s.anchor_cells.reshape(1, -1)[:, cells]))  # fmt: skip
        target.append(grounding_nll(trace.heading_attention[None],
                                    s.target_cells.reshape(1, -1)[:, cells]))  # fmt: skip
    torch.testing.assert_close(parts["pointer_ground"], torch.stack(anchor).mean(), atol=1e-4,
                               rtol=1e-4)  # fmt: skip
    torch.testing.assert_close(parts["heading_ground"], torch.stack(target).mean(), atol=1e-4,
                               rtol=1e-4)  # fmt: skip
    ungrounded = make_model(tokenizer_dir, ground=False).forward_train(batch)
    assert "pointer_ground" not in ungrounded and "heading_ground" not in ungrounded
    without = {k: v for k, v in parts.items() if k not in ("pointer_ground", "heading_ground")}
    weights = model.config.weights
    assert float(parts["loss"]) == pytest.approx(
        float(total_loss(without, weights))
        + weights.grounding * float(parts["pointer_ground"] + parts["heading_ground"]),
        rel=1e-5,
    )


def test_static_decoding_reads_the_pose_as_the_dynamic_cache(tokenizer_dir):
    model = make_model(tokenizer_dir)
    s = scene(6)[0]
    poses = [model.localize(model.encode_scene(s.pixel_values, s.camera_tokens), s.situation)]
    model.use_static_decoding(StaticDecoding(extra_tokens=64, capacity_multiple=64))
    prefix = model.encode_scene(s.pixel_values, s.camera_tokens)
    poses.append(model.localize(prefix, s.situation))
    assert is_static(prefix.cache)
    assert poses[1].yaw == pytest.approx(poses[0].yaw, abs=1e-5)
    torch.testing.assert_close(poses[1].xy, poses[0].xy, atol=1e-5, rtol=1e-5)


def test_save_load_and_a_continued_model_that_gains_it_but_never_loses_it(tokenizer_dir, tmp_path):
    model = make_model(tokenizer_dir)
    s = scene(5)[0]
    before = model.localize(model.encode_scene(s.pixel_values, s.camera_tokens), s.situation)
    model.save_pretrained(tmp_path / "heading")
    loaded = type(model).from_pretrained(tmp_path / "heading")
    assert loaded.config.heading_pointer and loaded.config.ground_pointers
    after = loaded.localize(loaded.encode_scene(s.pixel_values, s.camera_tokens), s.situation)
    assert after.yaw == pytest.approx(before.yaw, abs=1e-6)
    plain = make_model(tokenizer_dir, heading=False, ground=False)
    plain.save_pretrained(tmp_path / "plain")
    wanted = Loc3rVLMConfig(cam_token_dim=24, position_pointer=True, heading_pointer=True,
                            ground_pointers=True)  # fmt: skip
    continued = continue_from(str(tmp_path / "plain"), wanted, SIZES)
    assert continued.config.heading_pointer and continued.config.ground_pointers
    pointer = continued.heading_pointer
    assert float(pointer.gate.bias) == -3.0 and not pointer.gate.weight.any()
    own = plain.localize(plain.encode_scene(s.pixel_values, s.camera_tokens), s.situation)
    new = continued.localize(continued.encode_scene(s.pixel_values, s.camera_tokens), s.situation)
    assert 0 < angle_between(new.yaw, own.yaw) < 0.06 * math.pi  # the gate almost closed
    torch.testing.assert_close(new.xy, own.xy)  # the position is not the heading's to move
    continued.save_pretrained(tmp_path / "continued")
    with pytest.raises(ValueError, match="heading_pointer"):
        continue_from(str(tmp_path / "continued"),
                      Loc3rVLMConfig(cam_token_dim=24, position_pointer=True), SIZES)  # fmt: skip
    ungrounded = continue_from(str(tmp_path / "continued"),
                               Loc3rVLMConfig(cam_token_dim=24, position_pointer=True,
                                              heading_pointer=True), SIZES)  # fmt: skip
    assert not ungrounded.config.ground_pointers  # a training setting: the run's own


def test_a_bf16_pointer_reads_without_autocast():
    pointer = HeadingPointer(hidden=16, key_dim=4).to(torch.bfloat16)
    torch.nn.init.constant_(pointer.gate.bias, 0.0)
    ori, patches = torch.randn(2, 16, dtype=torch.bfloat16), torch.randn(1, 5, 16).bfloat16()
    towards, weights = pointer.point(ori, patches, torch.randn(1, 5, 2), torch.randn(2, 2))
    mixed = pointer.mix(ori, torch.tensor([0.1, 2.0]), towards)
    assert towards.dtype == mixed.dtype == torch.float32 and torch.isfinite(mixed).all()


def test_the_pointer_needs_the_layout_head(tokenizer_dir):
    config = Loc3rVLMConfig(cam_token_dim=24, heading_pointer=True, enable_layout_head=False)
    with pytest.raises(ValueError, match="enable_layout_head"):
        build_tiny_loc3r(AutoTokenizer.from_pretrained(str(tokenizer_dir)), config)
