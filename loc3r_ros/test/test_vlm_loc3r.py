"""Loc3R-VLM on tiny configs: shapes, trained parts, cache equality, checkpoints, overfitting."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer

from loc3r.vlm import LlavaCheckpointError, Loc3rVLM, TrainSample
from loc3r.vlm.tiny import build_tiny_loc3r


@pytest.fixture(scope="module")
def tokenizer_dir(data_dir):
    return data_dir / "llava_video_reference" / "tiny_llava_video"


@pytest.fixture
def model(tokenizer_dir) -> Loc3rVLM:
    torch.manual_seed(0)
    return build_tiny_loc3r(AutoTokenizer.from_pretrained(str(tokenizer_dir)))


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


def grounded_sample(seed: int, frames: int = 3) -> TrainSample:
    """sample() with its three objects (anchor, target, question's) in some pooled patches."""
    s = sample(seed, frames)
    g = torch.Generator().manual_seed(100 + seed)
    s.anchor_cells = torch.rand(frames, 2, 2, generator=g) > 0.6
    s.target_cells = torch.rand(frames, 2, 2, generator=g) > 0.6
    s.question_cells = torch.rand(frames, 2, 2, generator=g) > 0.6
    s.anchor_cells[0, 0, 0] = s.target_cells[-1, 1, 1] = s.question_cells[0, 1, 0] = True
    return s


@pytest.mark.parametrize(("layer", "answer_grounding"), [(-1, "question"), (0, "situation")])
def test_grounding_loss_is_the_attention_mass_eager_attention_puts_on_the_objects(
    tokenizer_dir, layer, answer_grounding
):
    """L_ground from our few-row attention equals -log mass read from eager attention weights."""
    from loc3r.vlm import Loc3rVLMConfig, LossWeights
    from loc3r.vlm.loc3r_vlm import ANSWER_SITUATION_HEADS, GROUNDING_HEADS

    torch.manual_seed(0)
    config = Loc3rVLMConfig(
        cam_token_dim=24,
        grounding_layer=layer,
        answer_grounding=answer_grounding,
        weights=LossWeights(grounding=0.5),
    )
    heads = GROUNDING_HEADS + (ANSWER_SITUATION_HEADS if answer_grounding == "situation" else ())
    model = build_tiny_loc3r(
        AutoTokenizer.from_pretrained(str(tokenizer_dir)), config, attn_implementation="eager"
    )
    batch = [grounded_sample(0), grounded_sample(1, frames=2)]
    batch[1].target_cells = None  # a target out of view: only the anchor heads count
    seen = {}
    attention = model.base.language_model.model.layers[layer].self_attn

    def keep_weights(module, args, out) -> None:
        seen["w"] = out[1]

    handle = attention.register_forward_hook(keep_weights)
    parts = model.forward_train(batch)
    handle.remove()
    weights = seen["w"]  # (B, heads, L, L) from the eager kernel
    terms = []
    for i, s in enumerate(batch):
        _, labels, pos_at, patch_at = model._sample_sequence(s)
        queries = model._grounding_queries(labels, pos_at)
        assert queries[2] == len(labels) - len(model.answer_ids(s.answer)) - 1
        cells = {"anchor": s.anchor_cells, "target": s.target_cells, "question": s.question_cells}
        for query, head, name in heads:
            if cells[name] is None:
                continue
            on = torch.zeros(weights.shape[-1], dtype=torch.bool)
            where = (patch_at >= 0).nonzero().flatten()
            on[where] = cells[name].reshape(-1)[patch_at[where]]
            terms.append(-torch.log(weights[i, head, queries[query]][on].sum() + 1e-6))
    assert len(terms) == (7 if answer_grounding == "question" else 10)
    torch.testing.assert_close(parts["ground"], torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)
    expected_total = parts["ce"] + 0.05 * parts["bev"] + 0.075 * (parts["pos"] + 3.5 * parts["ori"])
    torch.testing.assert_close(parts["loss"], expected_total + 0.5 * parts["ground"])
    parts["loss"].backward()
    assert attention.q_proj.weight.grad.abs().sum() > 0


def test_grounding_loss_is_off_by_default_and_absent_objects_cost_nothing(model, tokenizer_dir):
    from loc3r.vlm import Loc3rVLMConfig

    with pytest.raises(ValueError, match="grounding_layer 2 outside the 2 layers"):
        build_tiny_loc3r(
            AutoTokenizer.from_pretrained(str(tokenizer_dir)),
            Loc3rVLMConfig(cam_token_dim=24, grounding_layer=2),
        )
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


def test_attended_layout_readout_is_the_attention_weighted_layout_plus_f_pos(tokenizer_dir):
    """Cached inference and the training loss both read the position eager attention implies."""
    from loc3r.vlm import Loc3rVLMConfig, LossWeights
    from loc3r.vlm.losses import gaussian_nll_2d

    torch.manual_seed(0)
    config = Loc3rVLMConfig(cam_token_dim=24, position_readout="attended_layout",
                            weights=LossWeights(grounding=0.5))  # fmt: skip
    model = build_tiny_loc3r(
        AutoTokenizer.from_pretrained(str(tokenizer_dir)), config, attn_implementation="eager"
    ).eval()
    s = grounded_sample(0)
    prefix = model.encode_scene(s.pixel_values, s.camera_tokens)
    pose = model.localize(prefix, s.situation)
    assert prefix.cache.get_seq_length() == prefix.length
    # Uncached eager forward: head 0's weights of <Pos> over the patch tokens, the layout head.
    states, all_weights, patches = eager_forward(model, s)
    attention = model.base.language_model.model.layers[-1].self_attn
    weights = all_weights[0, -2, patches]
    layout = model.layout_head(states[patches])[:, :2]
    expected = model.f_pos(states[-2])[:2] + (weights / weights.sum()) @ layout
    torch.testing.assert_close(pose.xy, expected, atol=1e-5, rtol=1e-5)
    answered = model.answer(prefix, s.question, s.situation)[1]
    torch.testing.assert_close(answered.xy, pose.xy)
    # Training: L_pos is the Gaussian NLL of that same position (the answer comes after <Pos>).
    model.train()
    parts = model.forward_train([s])
    sigma = model._sigma(model.f_pos(states[-2])[2:])
    nll = gaussian_nll_2d(expected[None], sigma[None], s.position[None])
    torch.testing.assert_close(parts["pos"], nll, atol=1e-5, rtol=1e-5)
    parts["pos"].backward()  # the position teaches the layout head and where <Pos> looks
    assert model.layout_head.weight.grad.abs().sum() > 0
    assert attention.q_proj.weight.grad.abs().sum() > 0
    prefix.layer_input = None  # a prefix encoded by a model reading the hidden state
    with pytest.raises(ValueError, match="without the attended layout"):
        model.localize(prefix, s.situation)


@pytest.mark.parametrize("readout", ["hidden", "attended_layout"])
def test_trace_situation_is_what_localize_and_eager_attention_give(tokenizer_dir, readout):
    """The diagnostic trace: localize()'s pose, eager attention on the patches, the layout head."""
    from loc3r.vlm import Loc3rVLMConfig

    torch.manual_seed(0)
    config = Loc3rVLMConfig(cam_token_dim=24, position_readout=readout)
    model = build_tiny_loc3r(
        AutoTokenizer.from_pretrained(str(tokenizer_dir)), config, attn_implementation="eager"
    ).eval()
    s = sample(0)
    trace = model.trace_situation(s.pixel_values, s.camera_tokens, s.situation)
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
    asked = model.trace_situation(s.pixel_values, s.camera_tokens, s.situation, s.question)
    _, labels, pos_at, _ = model._sample_sequence(s)
    query = model._grounding_queries(labels, pos_at)[2]
    asked_states, weights, _ = eager_forward(model, s, model.question_ids(s.question))
    assert query == len(asked_states) - 1 and asked.attention.shape == (4, 3, 12)
    torch.testing.assert_close(asked.attention[:, 2], weights[:, -1, patches], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(asked.attention[:, :2], trace.attention, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(asked.pose.xy, trace.pose.xy, atol=1e-5, rtol=1e-5)
    model.layout_head = None
    model.config.position_readout = "hidden"
    assert model.trace_situation(s.pixel_values, s.camera_tokens, s.situation).layout is None


def test_position_readout_is_validated(tokenizer_dir):
    from loc3r.vlm import Loc3rVLMConfig

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    with pytest.raises(ValueError, match="position_readout='pointer'"):
        build_tiny_loc3r(tokenizer, Loc3rVLMConfig(cam_token_dim=24, position_readout="pointer"))
    with pytest.raises(ValueError, match="needs the layout head"):
        no_layout = Loc3rVLMConfig(
            cam_token_dim=24, position_readout="attended_layout", enable_layout_head=False
        )
        build_tiny_loc3r(tokenizer, no_layout)
    with pytest.raises(ValueError, match="answer_grounding='everything'"):
        build_tiny_loc3r(tokenizer, Loc3rVLMConfig(cam_token_dim=24, answer_grounding="everything"))


def test_egocentric_loss_regresses_the_object_offset_at_the_answer_start(tokenizer_dir):
    from loc3r.vlm import Loc3rVLMConfig, LossWeights

    torch.manual_seed(0)
    config = Loc3rVLMConfig(cam_token_dim=24, enable_egocentric_head=True,
                            weights=LossWeights(egocentric=0.2))  # fmt: skip
    model = build_tiny_loc3r(AutoTokenizer.from_pretrained(str(tokenizer_dir)), config)
    batch = [sample(0), sample(1, frames=2), sample(2)]
    batch[0].object_offset = torch.tensor([2.0, -0.5])
    batch[2].object_offset = torch.tensor([-1.0, 3.0])  # batch[1]: counting, no object
    parts = model.forward_train(batch)
    starts, states = [], []
    for s in (batch[0], batch[2]):
        embeds, labels, pos_at, _ = model._sample_sequence(s)
        start = len(labels) - len(model.answer_ids(s.answer)) - 1  # predicts the first word
        with torch.no_grad():
            out = model.base.language_model.model(inputs_embeds=embeds[None])
        states.append(out.last_hidden_state[0, start])
        starts.append(start)
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


def test_our_readout_and_head_survive_a_checkpoint_round_trip(tokenizer_dir, tmp_path):
    from loc3r.vlm import Loc3rVLMConfig

    torch.manual_seed(0)
    config = Loc3rVLMConfig(cam_token_dim=24, position_readout="attended_layout",
                            enable_egocentric_head=True)  # fmt: skip
    model = build_tiny_loc3r(AutoTokenizer.from_pretrained(str(tokenizer_dir)), config).eval()
    s = sample()
    pose = model.localize(model.encode_scene(s.pixel_values, s.camera_tokens), s.situation)
    loaded = Loc3rVLM.from_pretrained(model.save_pretrained(tmp_path / "ours"))
    assert loaded.config.position_readout == "attended_layout"
    assert loaded.egocentric_head is not None
    again = loaded.localize(loaded.encode_scene(s.pixel_values, s.camera_tokens), s.situation)
    torch.testing.assert_close(again.xy, pose.xy)
