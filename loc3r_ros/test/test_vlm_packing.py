"""Scene packing (loc3r.vlm.packing): samples of one scene share a row and lose nothing by it."""

from __future__ import annotations

import pytest
import torch
from test_vlm_loc3r import sample
from transformers import AutoTokenizer

from loc3r.vlm import Loc3rVLMConfig, LossWeights, TrainSample
from loc3r.vlm.loc3r_vlm import DEFAULT_SITUATION
from loc3r.vlm.packing import pack_samples, scene_groups
from loc3r.vlm.tiny import build_tiny_loc3r

TEXTS = (
    ("I am sitting on the bed facing the window", "What is on my left?", "a red lamp"),
    ("I am standing next to the door facing the sofa", "How many chairs are there?", "two"),
    ("", "Which colour is the table?", "brown"),  # no situation: the default one
)


def scene(seed: int, texts=TEXTS, frames: int = 3) -> list[TrainSample]:
    """Samples of one scene: the same pixel_values and camera_tokens objects, other text."""
    base = sample(seed, frames)
    g = torch.Generator().manual_seed(50 + seed)
    out = []
    for k, (situation, question, answer) in enumerate(texts):
        cells = [torch.rand(frames, 2, 2, generator=g) > 0.5 for _ in range(3)]
        for c in cells:
            c[0, 0, 0] = True
        out.append(TrainSample(
            pixel_values=base.pixel_values, camera_tokens=base.camera_tokens,
            situation=situation, question=question, answer=answer,
            position=torch.tensor([0.5 * k, -1.0 + k]), yaw=0.4 * k - 1.0,
            bev_targets=base.bev_targets, bev_mask=base.bev_mask,
            anchor_cells=cells[0], target_cells=cells[1], question_cells=cells[2],
            object_offset=torch.tensor([1.0 + k, -0.5 * k]),
        ))  # fmt: skip
    return out


def alone(s: TrainSample) -> TrainSample:
    """The same sample with its own copies of the scene's tensors: it gets a row of its own."""
    return TrainSample(**{**s.__dict__, "pixel_values": s.pixel_values.clone(),
                          "camera_tokens": s.camera_tokens.clone()})  # fmt: skip


def reference_states(model, s: TrainSample) -> tuple[torch.Tensor, int]:
    """Last hidden states of the sample as one causal sequence, written out independently
    (prefix, video, newline, situation <Pos> <Ori>, question, answer), and its text's start."""
    video, _ = model.video_embeddings(s.pixel_values, s.camera_tokens)
    before, after = model.prefix_ids()
    text = (model.situation_ids(s.situation or DEFAULT_SITUATION) + model.question_ids(s.question)
            + model.answer_ids(s.answer))  # fmt: skip
    embeds = torch.cat([model.embed(before), video, model.embed(after + text)])
    with torch.no_grad():
        states = model.base.language_model.model(inputs_embeds=embeds[None]).last_hidden_state[0]
    return states, len(embeds) - len(text)


def make_model(tokenizer_dir, attn: str = "sdpa"):
    torch.manual_seed(0)
    config = Loc3rVLMConfig(
        cam_token_dim=24, enable_egocentric_head=True,
        weights=LossWeights(grounding=0.5, egocentric=0.2),
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return build_tiny_loc3r(tokenizer, config, attn_implementation=attn)


def mixed_batch() -> list[TrainSample]:
    """Three scenes (3, 1 and 2 samples, the last with two frames), interleaved."""
    a, b, c = scene(0), scene(1, TEXTS[:1]), scene(2, TEXTS[1:], frames=2)
    return [a[0], b[0], a[1], c[0], a[2], c[1]]


def test_packed_rows_need_a_kernel_that_takes_a_4d_mask(tokenizer_dir):
    packed = pack_samples(make_model(tokenizer_dir), mixed_batch(), DEFAULT_SITUATION)
    with pytest.raises(ValueError, match="SDPA or eager"):
        packed.attention_mask("flash_attention_2")


def test_scene_groups_follow_the_tensor_objects_in_order():
    batch = mixed_batch()
    assert scene_groups(batch) == [[0, 2, 4], [1], [3, 5]]
    assert scene_groups([alone(s) for s in batch[:3]]) == [[0], [1], [2]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_each_packed_sample_gets_the_hidden_states_it_gets_alone(tokenizer_dir, attn):
    model = make_model(tokenizer_dir, attn)
    model.eval()
    batch = mixed_batch()
    packed = pack_samples(model, batch, DEFAULT_SITUATION)
    assert packed.embeds.shape[0] == 3 and packed.rows == [0, 1, 0, 2, 0, 2]
    decoder = model.base.language_model.model
    with torch.no_grad():
        states = decoder(
            inputs_embeds=packed.embeds,
            attention_mask=packed.attention_mask(decoder.config._attn_implementation),
            position_ids=packed.position_ids,
        ).last_hidden_state
    ends = {}  # row -> where the previous block ended
    for i, s in enumerate(batch):
        row = packed.rows[i]
        expected, text_start = reference_states(model, s)
        start = ends.get(row, text_start)  # each row's first block follows its prefix
        text = len(expected) - text_start
        ends[row] = start + text
        torch.testing.assert_close(states[row, :text_start], expected[:text_start],
                                   atol=1e-5, rtol=1e-4)  # fmt: skip
        torch.testing.assert_close(states[row, start : start + text], expected[text_start:],
                                   atol=1e-5, rtol=1e-4)  # fmt: skip
        situation = len(model.situation_ids(s.situation or DEFAULT_SITUATION))
        assert packed.pos_at[i] == start + situation - 2
        assert packed.labels[row, packed.answer_start[i]] == model.answer_ids(s.answer)[0]
        at = text_start + situation - 2  # <Pos> alone
        torch.testing.assert_close(
            model.read_pose(states[row, packed.pos_at[i]], states[row, packed.pos_at[i] + 1]).xy,
            model.read_pose(expected[at], expected[at + 1]).xy, atol=1e-5, rtol=1e-4,
        )  # fmt: skip


def test_text_blocks_see_the_prefix_and_themselves_only(tokenizer_dir):
    model = make_model(tokenizer_dir)
    batch = mixed_batch()
    packed = pack_samples(model, batch, DEFAULT_SITUATION)
    allowed = packed.allowed[0, 0]  # scene 0: samples 0, 2, 4
    first, second = packed.pos_at[0], packed.pos_at[2]
    assert second > first
    prefix = packed.position_ids[0, first] - len(model.situation_ids(batch[0].situation)) + 2
    assert allowed[second, :prefix].all() and allowed[first, :prefix].all()  # the whole prefix
    assert not allowed[prefix - 1, prefix:].any()  # the prefix sees no text
    assert not allowed[second, first]  # not the block before it
    assert not allowed[first, second]  # nor a later one
    assert allowed[second, second] and not allowed[second, second + 1]  # causal within a block
    assert int(packed.position_ids[0, second]) == int(packed.position_ids[0, first]) + (
        len(model.situation_ids(batch[2].situation)) - len(model.situation_ids(batch[0].situation))
    )
    short = packed.rows[1]  # scene 1's row (one sample) is padded: padding sees itself only
    end = packed.answer_start[1] + len(model.answer_ids(batch[1].answer))
    pad = packed.allowed.shape[-1] - 1
    assert pad >= end and not packed.allowed[short, 0, :end, end:].any()
    assert packed.allowed[short, 0, pad].sum() == 1 and packed.allowed[short, 0, pad, pad]
    eager = packed.attention_mask("eager")
    assert eager.dtype == packed.embeds.dtype and float(eager[0, 0, first, first]) == 0.0
    assert float(eager[0, 0, second, first]) == torch.finfo(eager.dtype).min


def test_packed_losses_equal_one_row_per_sample(tokenizer_dir):
    """ce, pos, ori, ground and ego over packed rows equal them over one row per sample; the
    layout loss counts each scene once (as a batch of one sample per scene does)."""
    model = make_model(tokenizer_dir)
    batch = mixed_batch()
    packed = model.forward_train(batch)
    unpacked = model.forward_train([alone(s) for s in batch])
    for key in ("ce", "pos", "ori", "ground", "ego"):
        torch.testing.assert_close(packed[key], unpacked[key], atol=2e-5, rtol=1e-4)
    firsts = [alone(batch[i]) for i in (0, 1, 3)]  # one sample of each scene
    torch.testing.assert_close(packed["bev"], model.forward_train(firsts)["bev"],
                               atol=2e-5, rtol=1e-4)  # fmt: skip
    packed["loss"].backward()
    heads = ("f_pos", "f_ori", "egocentric_head")  # their gradients come from equal losses
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith(heads)}
    model.zero_grad()
    model.forward_train([alone(s) for s in batch])["loss"].backward()
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:  # padding rows leave no NaN in any gradient
            assert torch.isfinite(parameter.grad).all(), name
        if name.startswith(heads):
            assert grads[name].abs().sum() > 0
            torch.testing.assert_close(grads[name], parameter.grad, atol=1e-5, rtol=1e-4)
