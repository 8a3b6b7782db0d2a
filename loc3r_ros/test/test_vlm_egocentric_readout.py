"""The egocentric read-out (loc3r.vlm.egocentric_readout): the answer told where its object is."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_vlm_packing import alone, mixed_batch, scene
from transformers import AutoTokenizer

from loc3r.train.pipeline import continue_from
from loc3r.vlm import Loc3rVLMConfig, LossWeights
from loc3r.vlm.egocentric_readout import EgocentricReadout, egocentric_features, teacher_pose
from loc3r.vlm.loc3r_vlm import DEFAULT_SITUATION, PosePrediction
from loc3r.vlm.losses import egocentric_offset, grounding_nll, total_loss
from loc3r.vlm.static_decoding import StaticDecoding, rewind
from loc3r.vlm.tiny import build_tiny_loc3r

SIZES = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128,
         "image_size": 56, "vision_hidden": 32, "vision_layers": 2}  # fmt: skip
# (situation, question, answer): the read-out of the first takes the model's own pose in
# training, that of the second the true one (asserted below)
OWN_POSE = ("I am sitting on the bed facing the window", "Is the lamp on my left?", "left")
TRUE_POSE = ("I am standing next to the door facing the sofa", "Is the table behind me?", "behind")
VOCABULARY = ["left", "right", "behind", "in front"]


def make_model(
    tokenizer_dir,
    readout: bool = True,
    trained: bool = True,
    pointer: bool = False,
    heading: bool = False,
    objects: bool = False,
    anchor: bool = False,
):
    torch.manual_seed(0)
    config = Loc3rVLMConfig(cam_token_dim=24, egocentric_readout=readout,
                            position_pointer=pointer, heading_pointer=heading,
                            readout_objects=objects, readout_anchor=anchor,
                            weights=LossWeights(grounding=0.5))  # fmt: skip
    model = build_tiny_loc3r(AutoTokenizer.from_pretrained(str(tokenizer_dir)), config)
    if heading:  # an open gate: the heading the read-out takes is the pointer-mixed one
        torch.nn.init.constant_(model.heading_pointer.gate.bias, 1.0)
    if readout and trained:  # a trained read-out: it adds something
        torch.nn.init.normal_(model.egocentric_readout.embed[-1].weight, std=0.5)
        if objects:
            torch.nn.init.normal_(model.egocentric_readout.place.weight, std=0.5)
            torch.nn.init.normal_(model.egocentric_readout.value.weight, std=0.1)
        if anchor:
            torch.nn.init.normal_(model.egocentric_readout.avoid.weight, std=0.5)
            torch.nn.init.constant_(model.egocentric_readout.avoid.bias, -2.0)
    return model.eval()


def test_the_features_are_the_egocentric_offset_as_a_unit_vector_and_a_distance():
    torch.manual_seed(2)
    layout, xy = torch.randn(3, 5, 2) * 3, torch.randn(3, 2)
    yaw = (torch.rand(3) * 2 - 1) * math.pi
    features = egocentric_features(layout, xy, yaw)
    assert features.shape == (3, 5, 3)
    for n in range(3):
        for p in range(5):
            ahead, left = egocentric_offset(xy[n].tolist(), float(yaw[n]), layout[n, p].tolist())
            distance = math.hypot(ahead, left)
            expected = [ahead / distance, left / distance, math.tanh(distance / 2.0)]
            assert features[n, p].tolist() == pytest.approx(expected, abs=1e-4)
    # facing +y, a point at +y is ahead, one at -x on the left
    here = egocentric_features(torch.tensor([[[0.0, 2.0], [-1.0, 0.0]]]), torch.zeros(1, 2),
                               torch.tensor([math.pi / 2]))  # fmt: skip
    torch.testing.assert_close(here[0, :, :2], torch.eye(2), atol=1e-4, rtol=0)


def test_a_new_readout_adds_nothing():
    readout = EgocentricReadout(hidden=8, key_dim=4)
    hidden, patches = torch.randn(2, 8), torch.randn(1, 6, 8)
    added, weights = readout(hidden, patches, torch.randn(1, 6, 2), torch.randn(2, 2),
                             torch.randn(2))  # fmt: skip
    assert added.shape == (2, 8) and not added.any()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))


def test_a_fresh_readout_leaves_the_models_answers_and_losses_as_they_were(tokenizer_dir):
    plain, fresh = (
        make_model(tokenizer_dir, readout=False),
        make_model(tokenizer_dir, trained=False),
    )
    fresh.load_state_dict(plain.state_dict(), strict=False)
    batch = mixed_batch()
    without, with_readout = plain.forward_train(batch), fresh.forward_train(batch)
    torch.testing.assert_close(with_readout["ce"], without["ce"])
    assert "readout_ground" in with_readout and "readout_ground" not in without
    s = batch[0]
    for model in (plain, fresh):
        model.set_answer_vocabulary(VOCABULARY)
    scores = [m.score_answers(m.encode_scene(s.pixel_values, s.camera_tokens), s.question,
                              s.situation) for m in (plain, fresh)]  # fmt: skip
    torch.testing.assert_close(scores[0], scores[1])


def test_teacher_poses_are_stable_and_half_of_the_samples():
    assert teacher_pose(*OWN_POSE[:2]) is False and teacher_pose(*TRUE_POSE[:2]) is True
    picks = [
        teacher_pose(f"I am next to the chair {k}", "Is the bed on my left?") for k in range(400)
    ]
    assert 0.4 < sum(picks) / len(picks) < 0.6
    assert picks == [teacher_pose(f"I am next to the chair {k}", "Is the bed on my left?")
                     for k in range(400)]  # fmt: skip


@pytest.mark.parametrize(
    ("heading", "objects", "anchor"),
    [(False, False, False), (True, False, False), (True, True, False), (True, True, True)],
    ids=["f_ori", "heading pointer", "picking objects", "knowing the anchor"],
)  # fmt: skip
@pytest.mark.parametrize("texts", [OWN_POSE, TRUE_POSE], ids=["own pose", "true pose"])
def test_training_scores_the_answer_as_inference_does_from_the_same_pose(
    tokenizer_dir, texts, heading, objects, anchor
):
    """One sample: its training CE over the answer's tokens is -log p(answer) of the cached
    inference, with the model's own pose or (half of the samples) the true one."""
    model = make_model(tokenizer_dir, pointer=True, heading=heading, objects=objects,
                       anchor=anchor)  # fmt: skip
    s = dataclasses.replace(scene(3, (texts,))[0], position=torch.tensor([0.8, -0.4]), yaw=2.1)
    ce = model.forward_train([alone(s)])["ce"]
    model.set_answer_vocabulary(VOCABULARY)
    prefix = model.encode_scene(s.pixel_values, s.camera_tokens)
    situation_ids = model.situation_ids(s.situation)
    with torch.inference_mode():
        pose = model._situate(prefix, situation_ids)
        if texts is TRUE_POSE:
            pose = dataclasses.replace(pose, xy=s.position, yaw=s.yaw)
        scores = model._score_answers(prefix, model.question_ids(s.question),
                                      prefix.length + len(situation_ids), pose)  # fmt: skip
        rewind(prefix.cache, prefix.length)
    tokens = len(model.answer_ids(s.answer))
    expected = -scores[VOCABULARY.index(s.answer)] / tokens
    torch.testing.assert_close(ce, expected, atol=1e-4, rtol=1e-4)
    if texts is OWN_POSE:  # the public path reads the model's own pose
        public = model.score_answers(prefix, s.question, s.situation)
        torch.testing.assert_close(public, scores)
    if anchor:  # and the anchor's term is in both: without it the scores move
        with torch.no_grad():
            model.egocentric_readout.avoid.weight.zero_()
            model.egocentric_readout.avoid.bias.zero_()
        unmarked = model.score_answers(prefix, s.question, s.situation, pose)
        assert (unmarked - scores).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("heading", "objects", "anchor"),
    [(False, False, False), (True, False, False), (True, True, False), (True, True, True)],
    ids=["f_ori", "heading pointer", "picking objects", "knowing the anchor"],
)  # fmt: skip
def test_packed_rows_score_every_answer_from_its_own_pose(tokenizer_dir, heading, objects, anchor):
    """Several samples of one scene in a row: the batch's CE is what inference gives each."""
    model = make_model(tokenizer_dir, pointer=True, heading=heading, objects=objects,
                       anchor=anchor)  # fmt: skip
    batch = mixed_batch()
    assert {teacher_pose(s.situation, s.question) for s in batch} == {
        True, False,
    }  # fmt: skip
    ce = model.forward_train(batch)["ce"]
    model.set_answer_vocabulary(sorted({s.answer for s in batch}))
    vocabulary = list(model.answer_vocabulary)
    total, tokens = 0.0, 0
    for s in batch:
        situation = s.situation or DEFAULT_SITUATION
        prefix = model.encode_scene(s.pixel_values, s.camera_tokens)
        pose = model.localize(prefix, situation)
        if teacher_pose(s.situation, s.question):
            pose = dataclasses.replace(pose, xy=s.position, yaw=s.yaw)
        scores = model.score_answers(prefix, s.question, situation, pose)
        total -= float(scores[vocabulary.index(s.answer)])
        tokens += len(model.answer_ids(s.answer))
    assert float(ce) == pytest.approx(total / tokens, rel=1e-4)


def test_the_answer_follows_the_pose_and_the_answer_loss_moves_only_the_readout(tokenizer_dir):
    model = make_model(tokenizer_dir, pointer=True, heading=True, objects=True, anchor=True)
    model.set_answer_vocabulary(VOCABULARY)
    s = scene(4, (OWN_POSE,))[0]
    prefix = model.encode_scene(s.pixel_values, s.camera_tokens)
    situation_ids = model.situation_ids(s.situation)
    offset = prefix.length + len(situation_ids)
    scores = []
    with torch.inference_mode():
        pose = model._situate(prefix, situation_ids)
        for yaw in (0.0, math.pi / 2, math.pi):
            turned = dataclasses.replace(pose, yaw=yaw)
            scores.append(model._score_answers(prefix, model.question_ids(s.question), offset,
                                               turned))  # fmt: skip
        rewind(prefix.cache, prefix.length)
        with pytest.raises(ValueError, match="pose"):
            model._score_answers(prefix, model.question_ids(s.question), offset)
    assert (scores[0] - scores[1]).abs().max() > 1e-3 and (scores[0] - scores[2]).abs().max() > 1e-3
    model.train()
    model.forward_train(mixed_batch())["ce"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("query", "key", "embed.0", "embed.2", "place", "value", "avoid"):
        assert grads[f"egocentric_readout.{name}.weight"].abs().sum() > 0, name
    detached = ("layout_head", "f_pos.2", "f_ori.2", "position_pointer.query",
                "position_pointer.gate", "heading_pointer.query",
                "heading_pointer.gate")  # fmt: skip
    for name in detached:  # the layout and the pose (f_pos mixed by the pointer, f_ori)
        grad = grads[f"{name}.weight"]
        assert grad is None or not grad.any(), name


def test_the_readouts_attention_is_grounded_on_the_questions_object(tokenizer_dir):
    model = make_model(tokenizer_dir)
    batch = mixed_batch()
    parts = model.forward_train(batch)
    situated = [s for s in batch if s.position is not None]
    losses = []  # each sample's own: the scenes' patches differ in number
    for s in situated:  # one sample at a time, by hand: the attention over its patches
        prefix = model.encode_scene(s.pixel_values, s.camera_tokens)
        states = prefix.last_hidden
        situation_ids = model.situation_ids(s.situation or "I am standing in the room")
        text = model._continue(prefix, situation_ids + model.question_ids(s.question),
                               prefix.length)[0]  # fmt: skip
        rewind(prefix.cache, prefix.length)
        weights = model.egocentric_readout.attention(
            text[-1:], states[prefix.patch_positions][None]
        )
        losses.append(grounding_nll(weights, s.question_cells.reshape(1, -1)))
    expected = torch.stack(losses).mean()
    torch.testing.assert_close(parts["readout_ground"], expected, atol=1e-4, rtol=1e-4)
    weights = LossWeights(grounding=0.5)
    base = {"ce": torch.tensor(1.0), "ground": torch.tensor(0.2)}
    assert float(total_loss({**base, "readout_ground": torch.tensor(0.4)}, weights)) == (
        pytest.approx(float(total_loss(base, weights)) + 0.5 * 0.4)
    )


def test_free_text_answers_read_it_with_either_cache(tokenizer_dir):
    model = make_model(tokenizer_dir)
    s = scene(5, (OWN_POSE,))[0]
    dynamic = model.answer_with_probability(
        model.encode_scene(s.pixel_values, s.camera_tokens), s.question, s.situation
    )
    readout, model.egocentric_readout = model.egocentric_readout, None
    without = model.answer_with_probability(
        model.encode_scene(s.pixel_values, s.camera_tokens), s.question, s.situation
    )
    model.egocentric_readout = readout
    # the first step read it (the probabilities of 32 random tokens: compared as logs)
    assert abs(math.log(dynamic[2]) - math.log(without[2])) > 1e-2
    model.use_static_decoding(StaticDecoding(extra_tokens=64, capacity_multiple=64))
    static = model.answer_with_probability(
        model.encode_scene(s.pixel_values, s.camera_tokens), s.question, s.situation
    )
    assert static[0] == dynamic[0]
    assert math.log(static[2]) == pytest.approx(math.log(dynamic[2]), abs=1e-3)


def test_save_load_and_a_continued_model_that_gains_it_but_never_loses_it(tokenizer_dir, tmp_path):
    model = make_model(tokenizer_dir)
    model.set_answer_vocabulary(VOCABULARY)
    s = scene(6, (OWN_POSE,))[0]
    before = model.score_answers(model.encode_scene(s.pixel_values, s.camera_tokens), s.question,
                                 s.situation)  # fmt: skip
    model.save_pretrained(tmp_path / "readout")
    loaded = type(model).from_pretrained(tmp_path / "readout")
    assert loaded.config.egocentric_readout
    loaded.set_answer_vocabulary(VOCABULARY)
    after = loaded.score_answers(loaded.encode_scene(s.pixel_values, s.camera_tokens), s.question,
                                 s.situation)  # fmt: skip
    torch.testing.assert_close(after, before)
    with pytest.raises(ValueError, match="egocentric_readout"):
        continue_from(str(tmp_path / "readout"), Loc3rVLMConfig(cam_token_dim=24), SIZES)
    make_model(tokenizer_dir, readout=False).save_pretrained(tmp_path / "plain")
    wanted = Loc3rVLMConfig(cam_token_dim=24, egocentric_readout=True)
    continued = continue_from(str(tmp_path / "plain"), wanted, SIZES)
    assert continued.config.egocentric_readout and continued.egocentric_readout is not None
    assert not continued.egocentric_readout.embed[-1].weight.any()  # it starts adding nothing
    # picking objects: gained by a run (adding nothing at first), never lost
    objects = Loc3rVLMConfig(cam_token_dim=24, egocentric_readout=True, readout_objects=True)
    gained = continue_from(str(tmp_path / "readout"), objects, SIZES)
    assert gained.config.readout_objects and not gained.egocentric_readout.value.weight.any()
    gained.set_answer_vocabulary(VOCABULARY)
    same = gained.score_answers(gained.encode_scene(s.pixel_values, s.camera_tokens), s.question,
                                s.situation)  # fmt: skip
    torch.testing.assert_close(same, before)
    gained.save_pretrained(tmp_path / "objects")
    assert type(model).from_pretrained(tmp_path / "objects").egocentric_readout.place is not None
    with pytest.raises(ValueError, match="readout_objects"):
        continue_from(str(tmp_path / "objects"), wanted, SIZES)
    with pytest.raises(ValueError, match="needs it"):
        build_tiny_loc3r(AutoTokenizer.from_pretrained(str(tokenizer_dir)),
                         Loc3rVLMConfig(cam_token_dim=24, readout_objects=True))  # fmt: skip


@pytest.mark.parametrize(
    ("objects", "anchor"), [(False, False), (True, False), (True, True)],
    ids=["place", "picking objects", "knowing the anchor"],
)  # fmt: skip
def test_a_bf16_model_reads_it_without_autocast(objects, anchor):
    readout = EgocentricReadout(hidden=16, key_dim=4, objects=objects, anchor=anchor)
    readout = readout.to(torch.bfloat16)
    torch.nn.init.normal_(readout.embed[-1].weight)
    hidden, patches = torch.randn(2, 16, dtype=torch.bfloat16), torch.randn(1, 5, 16).bfloat16()
    pointer = torch.rand(1, 5).softmax(-1) if anchor else None
    added, _ = readout(hidden, patches, torch.randn(1, 5, 2), torch.randn(2, 2), torch.randn(2),
                       pointer)  # fmt: skip
    assert added.dtype == torch.bfloat16 and added.any()


def _without_value(readout, *args):
    """The read-out's addition with its value map left out, at its own attention."""
    value, readout.value = readout.value, None
    try:
        return readout(*args)[0]
    finally:
        readout.value = value


def test_a_readout_picking_objects_starts_as_the_plain_one_then_picks_by_place():
    torch.manual_seed(5)
    plain = EgocentricReadout(hidden=8, key_dim=4)
    picking = EgocentricReadout(hidden=8, key_dim=4, objects=True)
    torch.nn.init.normal_(plain.embed[-1].weight)
    picking.load_state_dict(plain.state_dict(), strict=False)
    hidden, patches = torch.randn(2, 8), torch.randn(1, 4, 8)
    # facing +x from the origin: 2 m ahead, 1 m behind, 3 m left, 4 m behind
    layout = torch.tensor([[[2.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [-4.0, 0.0]]])
    args = (hidden, patches, layout, torch.zeros(2, 2), torch.zeros(2))
    before, weights = plain(*args)
    after, picked = picking(*args)
    torch.testing.assert_close(after, before)  # zero maps: it answers as before
    torch.testing.assert_close(picked, weights)
    # "behind and near": -ahead and closeness weighed strongly: the patch 1 m behind wins
    with torch.no_grad():
        picking.place.bias.copy_(torch.tensor([-20.0, 0.0, -20.0]))
    _, picked = picking(*args)
    assert picked.argmax(-1).tolist() == [1, 1] and float(picked[:, 1].min()) > 0.9
    # and hands over what it picked: the value map of the attended patches' states
    torch.nn.init.normal_(picking.value.weight)
    added, picked = picking(*args)
    states = (picked[..., None] * patches).sum(1)
    torch.testing.assert_close(added - _without_value(picking, *args), picking.value(states))
    with pytest.raises(ValueError, match="features"):
        picking.attention(hidden, patches)


def test_a_readout_knowing_the_anchor_starts_as_before_then_leaves_the_anchor_out():
    torch.manual_seed(6)
    picking = EgocentricReadout(hidden=8, key_dim=4, objects=True)
    knowing = EgocentricReadout(hidden=8, key_dim=4, objects=True, anchor=True)
    knowing.load_state_dict(picking.state_dict(), strict=False)
    hidden, patches = torch.randn(2, 8), torch.randn(1, 3, 8)
    # facing +x from the origin: the anchor 0.3 m ahead, a lamp 1.5 m left, a door 4 m ahead
    layout = torch.tensor([[[0.3, 0.0], [0.0, 1.5], [4.0, 0.0]]])
    anchor = torch.tensor([[0.9, 0.06, 0.04]], requires_grad=True)  # the position pointer's
    args = (hidden, patches, layout, torch.zeros(2, 2), torch.zeros(2))
    with torch.no_grad():  # "the nearest": closeness weighed strongly
        for readout in (picking, knowing):
            readout.place.bias.copy_(torch.tensor([0.0, 0.0, -20.0]))
    _, nearest = picking(*args)
    _, before = knowing(*args, anchor)
    torch.testing.assert_close(before, nearest)  # a zero map: it reads as before
    assert nearest.argmax(-1).tolist() == [0, 0]  # the anchor, which "nearest" leaves out
    with torch.no_grad():
        knowing.avoid.bias.fill_(-50.0)
    _, after = knowing(*args, anchor)
    assert after.argmax(-1).tolist() == [1, 1] and float(after[:, 1].min()) > 0.9
    # the marked share is relative to the pointer's peak: a flatter pointer marks the same patch
    _, flatter = knowing(*args, anchor.detach() / 3)
    torch.testing.assert_close(flatter, after)
    knowing(*args, anchor)[0].sum().backward()
    assert anchor.grad is None  # detached: the read-out's losses leave the pointer alone
    with pytest.raises(ValueError, match="position pointer"):
        knowing(*args)


def test_a_model_gains_the_anchor_only_with_the_pointer_and_answers_as_before(
    tokenizer_dir, tmp_path
):
    with pytest.raises(ValueError, match="readout_anchor"):
        build_tiny_loc3r(AutoTokenizer.from_pretrained(str(tokenizer_dir)),
                         Loc3rVLMConfig(cam_token_dim=24, egocentric_readout=True,
                                        readout_anchor=True))  # fmt: skip
    model = make_model(tokenizer_dir, pointer=True, objects=True)
    model.set_answer_vocabulary(VOCABULARY)
    s = scene(8, (OWN_POSE,))[0]
    before = model.score_answers(model.encode_scene(s.pixel_values, s.camera_tokens), s.question,
                                 s.situation)  # fmt: skip
    model.save_pretrained(tmp_path / "objects")
    wanted = Loc3rVLMConfig(cam_token_dim=24, egocentric_readout=True, position_pointer=True,
                            readout_objects=True, readout_anchor=True)  # fmt: skip
    gained = continue_from(str(tmp_path / "objects"), wanted, SIZES)
    assert gained.config.readout_anchor and not gained.egocentric_readout.avoid.weight.any()
    gained.set_answer_vocabulary(VOCABULARY)
    prefix = gained.encode_scene(s.pixel_values, s.camera_tokens)
    torch.testing.assert_close(gained.score_answers(prefix, s.question, s.situation), before)
    pose = gained.localize(prefix, s.situation)
    assert pose.anchor_attention is not None and pose.anchor_attention.shape == (
        len(prefix.patch_positions),
    )  # fmt: skip
    torch.nn.init.normal_(gained.egocentric_readout.avoid.weight, std=0.5)
    told = PosePrediction(pose.xy, pose.sigma, pose.yaw, pose.yaw_spread, pose.ori_probs)
    torch.testing.assert_close(  # a pose without the pointer's attention takes the situation's
        gained.score_answers(prefix, s.question, s.situation, told),
        gained.score_answers(prefix, s.question, s.situation, pose),
    )
    gained.save_pretrained(tmp_path / "anchor")
    assert type(model).from_pretrained(tmp_path / "anchor").egocentric_readout.avoid is not None
    with pytest.raises(ValueError, match="readout_anchor"):  # never lost
        continue_from(str(tmp_path / "anchor"), dataclasses.replace(wanted, readout_anchor=False),
                      SIZES)  # fmt: skip
    make_model(tokenizer_dir, objects=True).save_pretrained(tmp_path / "no_pointer")
    no_pointer = dataclasses.replace(wanted, position_pointer=False)
    with pytest.raises(ValueError, match="readout_anchor"):
        continue_from(str(tmp_path / "no_pointer"), no_pointer, SIZES)


def test_the_readout_needs_the_layout_head(tokenizer_dir):
    config = Loc3rVLMConfig(cam_token_dim=24, egocentric_readout=True, enable_layout_head=False)
    with pytest.raises(ValueError, match="enable_layout_head"):
        build_tiny_loc3r(AutoTokenizer.from_pretrained(str(tokenizer_dir)), config)


def test_bounds_reads_the_lms_direction_from_the_models_pose_and_the_true_one(tokenizer_dir):
    from types import SimpleNamespace

    from loc3r.eval.bounds import lm_directions

    s = scene(7, (OWN_POSE,))[0]
    record = SimpleNamespace(situation=s.situation, question=s.question,
                             position=(1.5, -0.5), yaw=2.5)  # fmt: skip
    for readout in (True, False):
        model = make_model(tokenizer_dir, readout=readout)
        model.set_answer_vocabulary(VOCABULARY)
        said = lm_directions(model, s.pixel_values, s.camera_tokens, record)
        prefix = model.encode_scene(s.pixel_values, s.camera_tokens)
        own = model.score_answers(prefix, s.question, s.situation)
        assert said["LM answer, model pose"] == VOCABULARY[int(own.argmax())]
        truth = dataclasses.replace(model.localize(prefix, s.situation),
                                    xy=torch.tensor(record.position), yaw=record.yaw)  # fmt: skip
        told = model.score_answers(prefix, s.question, s.situation, truth)
        assert said["LM answer, true pose"] == VOCABULARY[int(told.argmax())]
        if readout:  # the true pose moves the answers' scores
            assert (told - own).abs().max() > 1e-3
        else:  # without the read-out a pose changes nothing
            torch.testing.assert_close(told, own)
    model.set_answer_vocabulary(None)
    assert lm_directions(model, s.pixel_values, s.camera_tokens, record) == {
        "LM answer, model pose": None, "LM answer, true pose": None,
    }  # fmt: skip
