"""The shipped recipe's training aids (loc3r.vlm.training_aids): grounding loss, egocentric head."""

from __future__ import annotations

import pytest
import torch
from test_vlm_loc3r import sample
from test_vlm_packing import reference_states
from transformers import AutoTokenizer

from loc3r.vlm import Loc3rVLM, Loc3rVLMConfig, LossWeights, TrainSample
from loc3r.vlm.loc3r_vlm import DEFAULT_SITUATION
from loc3r.vlm.packing import pack_samples
from loc3r.vlm.tiny import build_tiny_loc3r
from loc3r.vlm.training_aids import GROUNDING_HEADS, trace_situation


def grounded_sample(seed: int, frames: int = 3) -> TrainSample:
    """sample() with its three objects (anchor, target, question's) in some pooled patches."""
    s = sample(seed, frames)
    g = torch.Generator().manual_seed(100 + seed)
    s.anchor_cells = torch.rand(frames, 2, 2, generator=g) > 0.6
    s.target_cells = torch.rand(frames, 2, 2, generator=g) > 0.6
    s.question_cells = torch.rand(frames, 2, 2, generator=g) > 0.6
    s.anchor_cells[0, 0, 0] = s.target_cells[-1, 1, 1] = s.question_cells[0, 1, 0] = True
    return s


def test_grounding_loss_is_the_attention_mass_eager_attention_puts_on_the_objects(tokenizer_dir):
    """L_ground from our few-row attention equals -log mass read from eager attention weights."""
    torch.manual_seed(0)
    config = Loc3rVLMConfig(cam_token_dim=24, weights=LossWeights(grounding=0.5))
    model = build_tiny_loc3r(
        AutoTokenizer.from_pretrained(str(tokenizer_dir)), config, attn_implementation="eager"
    )
    batch = [grounded_sample(0), grounded_sample(1, frames=2)]
    batch[1].target_cells = None  # a target out of view: only the anchor heads count
    seen = {}
    attention = model.base.language_model.model.layers[-1].self_attn  # the grounding layer

    def keep_weights(module, args, out) -> None:
        seen["w"] = out[1]

    handle = attention.register_forward_hook(keep_weights)
    parts = model.forward_train(batch)
    handle.remove()
    weights = seen["w"]  # (R, heads, L, L) from the eager kernel
    packed = pack_samples(model, batch, DEFAULT_SITUATION)
    terms = []
    for i, s in enumerate(batch):
        row, queries = packed.rows[i], packed.queries(i)
        patch_at = packed.patch_at[row]
        assert packed.labels[row, queries[2]] == -100  # the token before the answer
        assert packed.labels[row, queries[2] + 1] == model.answer_ids(s.answer)[0]
        cells = {"anchor": s.anchor_cells, "target": s.target_cells, "question": s.question_cells}
        for query, head, name in GROUNDING_HEADS:
            if cells[name] is None:
                continue
            on = torch.zeros(weights.shape[-1], dtype=torch.bool)
            where = (patch_at >= 0).nonzero().flatten()
            on[where] = cells[name].reshape(-1)[patch_at[where]]
            terms.append(-torch.log(weights[row, head, queries[query]][on].sum() + 1e-6))
    assert len(terms) == 7  # 4 heads of batch[0], 3 of batch[1] (no target)
    torch.testing.assert_close(parts["ground"], torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)
    expected_total = parts["ce"] + 0.05 * parts["bev"] + 0.075 * (parts["pos"] + 3.5 * parts["ori"])
    torch.testing.assert_close(parts["loss"], expected_total + 0.5 * parts["ground"])
    parts["loss"].backward()
    assert attention.q_proj.weight.grad.abs().sum() > 0


def test_grounding_loss_is_off_by_default_and_absent_objects_cost_nothing(model):
    assert set(model.forward_train([grounded_sample(0)])) == {"ce", "pos", "ori", "bev", "loss"}
    model.config.weights.grounding = 1.0
    parts = model.forward_train([sample(0)])  # no object cells (real datasets): zero, reported
    assert parts["ground"].item() == 0.0
    assert model.forward_train([grounded_sample(0)])["ground"].item() > 0.0


def test_grounding_loss_teaches_the_heads_to_look_at_the_objects(model):
    """60 steps of L_ground alone: from about 1/4 of the heads' mass on the objects to most."""
    model.config.weights = type(model.config.weights)(
        bev=0.0, situation=0.0, grounding=1.0
    )  # only L_ground (and the answer CE) drive the update
    batch = [grounded_sample(0), grounded_sample(1)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3, weight_decay=0.0)
    first = model.forward_train(batch)["ground"].item()
    for _ in range(60):
        optimizer.zero_grad()
        model.forward_train(batch)["loss"].backward()
        optimizer.step()
    last = model.forward_train(batch)["ground"].item()
    assert first > 1.0 and last < 0.2, (first, last)  # mass: < 0.37 at first, > 0.8 at the end


def eager_forward(model: Loc3rVLM, s: TrainSample, extra_ids: list[int] | None = None):
    """Uncached forward over [video] [situation] <Pos> <Ori> [extra_ids] of an eager model.

    Returns the last hidden states (L, H), the last layer's attention weights (heads, L, L) and
    the sequence positions of the video patch tokens.
    """
    video, patch_index = model.video_embeddings(s.pixel_values, s.camera_tokens)
    before, after = model.prefix_ids()
    ids = after + model.situation_ids(s.situation) + (extra_ids or [])
    embeds = torch.cat([model.embed(before), video, model.embed(ids)])[None]
    seen = {}
    attention = model.base.language_model.model.layers[-1].self_attn
    handle = attention.register_forward_hook(lambda m, a, out: seen.update(w=out[1]))
    with torch.no_grad():
        states = model.base.language_model.model(inputs_embeds=embeds).last_hidden_state[0]
    handle.remove()
    return states, seen["w"][0], (patch_index >= 0).nonzero().flatten() + len(before)


def test_trace_situation_is_what_localize_and_eager_attention_give(tokenizer_dir):
    """The diagnostic trace: localize()'s pose, eager attention on the patches, the layout head."""
    torch.manual_seed(0)
    model = build_tiny_loc3r(
        AutoTokenizer.from_pretrained(str(tokenizer_dir)), attn_implementation="eager"
    ).eval()
    s = sample(0)
    trace = trace_situation(model, s.pixel_values, s.camera_tokens, s.situation)
    pose = model.localize(model.encode_scene(s.pixel_values, s.camera_tokens), s.situation)
    torch.testing.assert_close(trace.pose.xy, pose.xy, atol=1e-5, rtol=1e-5)
    assert trace.pose.yaw == pytest.approx(pose.yaw, abs=1e-5)
    assert trace.patch_index.tolist() == list(range(3 * 2 * 2))  # 3 frames of 2 x 2, in order
    states, weights, patches = eager_forward(model, s)
    torch.testing.assert_close(trace.attention, weights[:, -2:, patches], atol=1e-5, rtol=1e-4)
    assert 0.0 < float(trace.attention.sum(-1).max()) <= 1.0 + 1e-5  # part of each row's mass
    torch.testing.assert_close(trace.layout, model.layout_head(states[patches])[:, :2])
    # With the question: the answer token's row too (the one the grounding loss supervises);
    # <Pos> and <Ori> do not see the question, so their rows and the pose stay.
    asked = trace_situation(model, s.pixel_values, s.camera_tokens, s.situation, s.question)
    query = pack_samples(model, [s], DEFAULT_SITUATION).queries(0)[2]
    asked_states, weights, _ = eager_forward(model, s, model.question_ids(s.question))
    assert query == len(asked_states) - 1 and asked.attention.shape == (4, 3, 12)
    torch.testing.assert_close(asked.attention[:, 2], weights[:, -1, patches], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(asked.attention[:, :2], trace.attention, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(asked.pose.xy, trace.pose.xy, atol=1e-5, rtol=1e-5)
    model.layout_head = None
    assert trace_situation(model, s.pixel_values, s.camera_tokens, s.situation).layout is None


def test_egocentric_loss_regresses_the_object_offset_at_the_answer_start(tokenizer_dir):
    torch.manual_seed(0)
    config = Loc3rVLMConfig(cam_token_dim=24, enable_egocentric_head=True,
                            weights=LossWeights(egocentric=0.2))  # fmt: skip
    model = build_tiny_loc3r(AutoTokenizer.from_pretrained(str(tokenizer_dir)), config)
    batch = [sample(0), sample(1, frames=2), sample(2)]
    batch[0].object_offset = torch.tensor([2.0, -0.5])
    batch[2].object_offset = torch.tensor([-1.0, 3.0])  # batch[1]: counting, no object
    parts = model.forward_train(batch)
    states = []
    for s in (batch[0], batch[2]):
        alone, _ = reference_states(model, s)  # the sample as one sequence
        start = len(alone) - len(model.answer_ids(s.answer)) - 1  # predicts the first word
        states.append(alone[start])
    predicted = model.egocentric_head(torch.stack(states))
    target = torch.stack([batch[0].object_offset, batch[2].object_offset])
    expected = torch.nn.functional.smooth_l1_loss(predicted, target)
    torch.testing.assert_close(parts["ego"], expected, atol=1e-5, rtol=1e-5)
    others = parts["ce"] + 0.05 * parts["bev"] + 0.075 * (parts["pos"] + 3.5 * parts["ori"])
    torch.testing.assert_close(parts["loss"], others + 0.2 * parts["ego"])
    parts["ego"].backward()
    assert model.egocentric_head.weight.grad.abs().sum() > 0
    no_object = model.forward_train([sample(1)])  # still reported, as zero, for DDP's logs
    assert no_object["ego"].item() == 0.0
    assert "ego" not in build_tiny_loc3r(model.tokenizer).forward_train([batch[0]])  # off: absent


def test_the_trace_reads_the_egocentric_head_at_the_answer_start(tokenizer_dir):
    torch.manual_seed(0)
    config = Loc3rVLMConfig(cam_token_dim=24, enable_egocentric_head=True)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model = build_tiny_loc3r(tokenizer, config, attn_implementation="eager").eval()
    s = sample()
    asked = trace_situation(model, s.pixel_values, s.camera_tokens, s.situation, s.question)
    states, _, _ = eager_forward(model, s, model.question_ids(s.question))
    torch.testing.assert_close(asked.egocentric, model.egocentric_head(states[-1]))
    assert asked.egocentric.shape == (2,)
    assert trace_situation(model, s.pixel_values, s.camera_tokens, s.situation).egocentric is None
    model.egocentric_head = None
    alone = trace_situation(model, s.pixel_values, s.camera_tokens, s.situation, s.question)
    assert alone.egocentric is None


def test_the_egocentric_head_survives_a_checkpoint_round_trip(tokenizer_dir, tmp_path):
    torch.manual_seed(0)
    config = Loc3rVLMConfig(cam_token_dim=24, enable_egocentric_head=True)
    model = build_tiny_loc3r(AutoTokenizer.from_pretrained(str(tokenizer_dir)), config).eval()
    s = sample()
    pose = model.localize(model.encode_scene(s.pixel_values, s.camera_tokens), s.situation)
    loaded = Loc3rVLM.from_pretrained(model.save_pretrained(tmp_path / "ours"))
    assert loaded.egocentric_head is not None
    torch.testing.assert_close(loaded.egocentric_head.weight, model.egocentric_head.weight)
    again = loaded.localize(loaded.encode_scene(s.pixel_values, s.camera_tokens), s.situation)
    torch.testing.assert_close(again.xy, pose.xy)
