"""`python -m loc3r.eval.bounds`: read-outs with the model's parts swapped for the truth."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_bundle import make_tiny_bundle

from loc3r.eval.bounds import (
    CEILING,
    DIRECTION_READOUTS,
    POSITION_READOUTS,
    _missed,
    attention_of,
    direction_by_geometry,
    direction_from_pose,
    egocentric_direction,
    input_point_readouts,
    input_points,
    main,
    markdown,
    measure,
    near_peak,
    position_readouts,
    weighted_point,
)
from loc3r.eval.text_ceiling import ceiling_cases
from loc3r.vlm import frames_to_pixel_values


def test_weighted_point_leaves_out_unknown_points_and_says_when_nothing_is_left():
    points = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    mean = weighted_point(torch.tensor([1.0, 1.0, 2.0]), points)
    torch.testing.assert_close(mean, torch.tensor([0.5, 2.0], dtype=torch.float64))
    kept = weighted_point(torch.tensor([1.0, 1.0, 2.0]), points, torch.tensor([True, True, False]))
    torch.testing.assert_close(kept, torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert (
        weighted_point(torch.tensor([0.0, 0.0, 3.0]), points, torch.tensor([1, 1, 0]).bool())
        is None
    )


def test_each_object_is_found_by_the_first_head_the_grounding_loss_points_at_it():
    attention = torch.arange(4 * 3 * 5, dtype=torch.float64).view(4, 3, 5)  # (heads, Q, P)
    trace = SimpleNamespace(attention=attention)
    assert attention_of(trace, "anchor").tolist() == attention[0, 0].tolist()  # <Pos>, head 0
    assert attention_of(trace, "target").tolist() == attention[1, 1].tolist()  # <Ori>, head 1
    assert attention_of(trace, "question").tolist() == attention[3, 2].tolist()  # answer, head 3


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        ((0.0, 1.0), "left"),
        ((0.0, -1.0), "right"),
        ((-1.0, 0.1), "behind"),
        ((2.0, 0.3), "in front"),
    ],
)
def test_direction_by_geometry_stands_at_the_anchor_facing_the_target(point, expected):
    # patches: two of the anchor around (0, 0), one of the target at (1, 0), one of the object;
    # the whole layout is rotated and shifted, which must not change a relative direction
    layout = torch.tensor([[-0.1, 0.0], [0.1, 0.0], [1.0, 0.0], list(point)], dtype=torch.float64)
    turn = math.radians(130.0)
    rotation = torch.tensor(
        [[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]], dtype=torch.float64
    )
    layout = layout @ rotation.T + torch.tensor([3.0, -2.0], dtype=torch.float64)
    anchor, target, obj = (torch.tensor(c) for c in ([1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]))
    assert direction_by_geometry(anchor.bool(), target.bool(), obj.bool(), layout) == expected
    # attention weights work as well as cells; an object out of view or a target on the anchor
    # give no answer
    soft = torch.tensor([0.0, 0.0, 0.2, 0.8])
    assert direction_by_geometry(anchor.double(), target.double(), soft, layout) is not None
    assert direction_by_geometry(anchor, target, torch.zeros(4), layout) is None
    assert direction_by_geometry(anchor, anchor, obj, layout) is None


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        ((1.0, 3.0), "in front"),
        ((-1.0, 1.2), "left"),
        ((3.0, 0.8), "right"),
        ((1.2, -2.0), "behind"),
    ],
)
def test_direction_from_pose_reads_the_object_in_the_agents_frame(point, expected):
    # an agent at (1, 1) facing +y (yaw 90°); the object is the weighted mean of its two patches
    layout = torch.tensor([[9.0, 9.0], list(point), list(point)], dtype=torch.float64)
    obj = torch.tensor([0.0, 0.3, 0.7])
    assert direction_from_pose([1.0, 1.0], math.pi / 2, obj, layout) == expected
    assert direction_from_pose([1.0, 1.0], math.pi / 2, obj.bool(), layout) == expected
    # out of view (no cells, or no weight): no answer
    assert direction_from_pose([1.0, 1.0], 0.0, None, layout) is None
    assert direction_from_pose([1.0, 1.0], 0.0, torch.zeros(3), layout) is None


def test_the_egocentric_heads_offset_reads_as_a_direction():
    """(ahead, left) metres in the agent's frame: ahead is in front, a positive left is left."""
    for offset, expected in (((2.0, 0.3), "in front"), ((0.2, 1.5), "left"),
                             ((-2.0, -0.4), "behind"), ((0.5, -3.0), "right")):  # fmt: skip
        assert egocentric_direction(torch.tensor(offset)) == expected
    assert egocentric_direction(None) is None


def test_position_readouts_swap_grounding_and_layout_one_at_a_time():
    true_xy = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]], dtype=torch.float64)
    layout = true_xy + torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    valid = torch.tensor([True, True, True, False])
    anchor = torch.tensor([False, True, True, False])
    anchor_first = torch.tensor([False, True, False, False])  # frame 0 of [0, 0, 1, 1]
    attention = torch.zeros(4, 2, 4)
    attention[0, 0] = torch.tensor([0.6, 0.0, 0.0, 0.4])  # head 0 of <Pos>
    trace = SimpleNamespace(
        attention=attention,
        layout=layout.float(),
        pose=SimpleNamespace(xy=torch.tensor([9.0, 9.0])),
    )
    centre = torch.tensor([2.5, 0.5])
    input_xy = true_xy + torch.tensor([0.0, -2.0], dtype=torch.float64)
    readouts = position_readouts(trace, anchor, anchor_first, true_xy, valid, centre, input_xy)
    got = {k: v.tolist() for k, v in readouts.items()}
    assert set(got) == set(POSITION_READOUTS) - {CEILING}
    assert got["f_pos"] == got["f_pos head alone"] == got["pointer alone"] == [9.0, 9.0]
    pointed = SimpleNamespace(
        **trace.__dict__, head_xy=torch.tensor([1.0, 2.0]), pointer_xy=torch.tensor([3.0, 4.0])
    )
    with_pointer = position_readouts(pointed, anchor, anchor_first, true_xy, valid, centre)
    assert with_pointer["f_pos head alone"].tolist() == [1.0, 2.0]
    assert with_pointer["pointer alone"].tolist() == [3.0, 4.0]
    assert with_pointer["f_pos"].tolist() == [9.0, 9.0]
    assert got["attended, model layout"] == pytest.approx([1.0, 1.6])  # (1, 0) and (1, 4)
    assert got["top attended patch, model layout"] == pytest.approx([1.0, 0.0])
    assert got["attention near its peak, model layout"] == pytest.approx([1.0, 0.0])  # (1, 4) far
    assert got["anchor, model layout"] == pytest.approx([2.0, 1.0])  # (3, 0) and (1, 2)
    assert got["anchor first view, model layout"] == pytest.approx([3.0, 0.0])
    assert got["attended, input points"] == pytest.approx([0.6, -0.4])  # (1, -2) and (0, 2)
    assert got["top attended patch, input points"] == pytest.approx([1.0, -2.0])
    assert got["attention near its peak, input points"] == pytest.approx([1.0, -2.0])
    assert got["anchor, input points"] == pytest.approx([1.5, -1.0])
    assert got["attended, true layout"] == pytest.approx([1.0, 0.0])  # patch 3 has no truth
    assert got["anchor, true layout"] == pytest.approx([1.5, 1.0])
    assert got["anchor's centre, truth"] == pytest.approx([2.5, 0.5])
    nothing = torch.zeros(4, dtype=torch.bool)
    no_anchor = position_readouts(trace, nothing, nothing, true_xy, valid, centre)
    assert no_anchor["anchor, true layout"].tolist() == [9.0, 9.0]  # falls back to f_pos
    assert no_anchor["anchor's centre, truth"].tolist() == [2.5, 0.5]  # known out of view too
    unknown = position_readouts(trace, anchor, anchor_first, true_xy, valid)
    assert unknown["anchor's centre, truth"].tolist() == [9.0, 9.0]
    for name in POSITION_READOUTS:
        if name.endswith("input points"):  # no geometry tokens
            assert unknown[name].tolist() == [9.0, 9.0]


def test_input_points_are_the_geometry_tokens_points_in_the_engines_bev_frame():
    """A first camera pitched 15° down: the BEV frame comes from the floor fitted to the points.

    World: z up, the first camera 1.5 m above the floor at the origin, looking along +x (BEV x),
    so a point's BEV (x, y) is its world (x, y). Cameras 2 and 3 stand 0.5 and 1 m to its left.
    """
    from scipy.spatial.transform import Rotation

    from loc3r.engine.perception import geometry_token, geometry_token_width

    grid, rng = 12, np.random.default_rng(0)
    level = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # cam axes in world
    c2w_rotation = level @ Rotation.from_euler("x", -15, degrees=True).as_matrix()
    first = np.eye(4)
    first[:3, :3], first[:3, 3] = c2w_rotation, [0.0, 0.0, 1.5]
    tokens, world_xy = [], []
    for left in (0.0, 0.5, 1.0):
        c2w = first.copy()
        c2w[1, 3] = left
        # the lower half of each frame sees the floor, the upper half a wall 4 m ahead
        half = (grid // 2, grid)
        floor = np.stack([rng.uniform(1, 4, half), rng.uniform(-2, 2, half), np.zeros(half)], -1)
        wall = np.stack(
            [np.full(half, 4.0), rng.uniform(-2, 2, half), rng.uniform(0.2, 2.5, half)], -1
        )
        world = np.concatenate([wall, floor])
        in_first = (world - first[:3, 3]) @ first[:3, :3]  # world -> the first camera's frame
        in_first[0, 0] = 0.0  # a cell without a point (outside CUT3R's crop) pools to zero
        pointmap = np.repeat(np.repeat(in_first, 2, 0), 2, 1)
        pose = np.linalg.inv(first) @ c2w  # camera -> the first camera's frame
        tokens.append(geometry_token(pose, pointmap, grid, geometry_token_width(grid)))
        world_xy.append(world[..., :2].reshape(-1, 2))
    episode = SimpleNamespace(camera_tokens=torch.stack(tokens))
    vlm = SimpleNamespace(point_embedding=object(), base=SimpleNamespace(config=SimpleNamespace(
        pooled_grid=grid)))  # fmt: skip
    cells = grid * grid
    patch_index = torch.tensor([0, 1, 100, cells + 7, 2 * cells + 140])
    got = input_points(vlm, episode, patch_index).numpy()
    want = np.concatenate(world_xy)[patch_index.numpy()]
    assert np.isnan(got[0]).all()  # the zero cell is unknown, not a point at the camera
    np.testing.assert_allclose(got[1:], want[1:], atol=1e-4)
    # a level-camera frame (no floor fit) is off by up to 0.28 m here: the fit is what passes
    no_points = SimpleNamespace(point_embedding=None, base=vlm.base)
    assert input_points(no_points, episode, patch_index) is None


def test_input_point_readouts_leave_out_patches_without_a_point():
    xy = torch.tensor([[float("nan"), float("nan")], [2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    attention = torch.tensor([0.7, 0.2, 0.1])
    got = input_point_readouts(attention, torch.tensor([1.0, 1.0, 0.0]), xy)
    assert got["attended, input points"].tolist() == pytest.approx([4 / 3, 2 / 3])
    assert got["top attended patch, input points"].tolist() == [2.0, 0.0]  # not the NaN patch
    assert got["attention near its peak, input points"].tolist() == pytest.approx([2.0, 0.0])
    assert got["anchor, input points"].tolist() == [2.0, 0.0]
    unknown = input_point_readouts(attention, torch.ones(3), torch.full((3, 2), float("nan")))
    assert all(v is None for v in unknown.values())


def test_attention_near_its_peak_averages_the_peaks_object_and_leaves_the_rest_of_the_room():
    layout = torch.tensor([[0.0, 0.0], [0.5, 0.0], [3.0, 0.0], [0.0, 0.7]])
    attention = torch.tensor([0.4, 0.2, 0.3, 0.1])
    assert near_peak(attention, layout).tolist() == [True, True, False, True]
    mean = weighted_point(attention, layout, near_peak(attention, layout))
    assert mean.tolist() == pytest.approx([0.1 / 0.7, 0.07 / 0.7])  # not pulled to (3, 0)
    assert weighted_point(attention, layout).tolist() == pytest.approx([1.0, 0.07])


@pytest.fixture(scope="module")
def episodes_and_bundles(tmp_path_factory):
    from loc3r.engine.models import load_bundle
    from loc3r.scenes import EpisodeConfig
    from loc3r.train.synthetic_data import build_episodes

    root = tmp_path_factory.mktemp("bounds")
    bundles = [load_bundle(make_tiny_bundle(root / f"b{seed}", seed=seed)) for seed in (0, 1)]
    episodes = build_episodes(
        [1_000_000, 1_000_002], EpisodeConfig(frames=4, image_size=56), bundles[0].perception,
        grid=2, progress=False,
    )  # fmt: skip
    # only situations whose anchor is in view: no read-out falls back to the model's f_pos
    episodes = [
        replace(e, records=[r for r in e.records if e.cells_of(r, "anchor_id").any()])
        for e in episodes
    ]
    return episodes, bundles, root


def test_measure_reports_the_model_and_the_truth_apart(episodes_and_bundles):
    episodes, bundles, _ = episodes_and_bundles
    reports = [measure(b.model.vlm, episodes, 56, progress=False) for b in bundles]
    first = reports[0]
    situations = {(r.situation, tuple(r.position)) for e in episodes for r in e.records}
    asked = sum(r.question_type == "direction" for e in episodes for r in e.records)
    assert first["situations"] == len(situations) > 0
    assert first["direction"]["questions"] == asked > 0
    assert len(first["layout_median_error_m_by_frame"]) == 4
    # the tiny bundles have no pointer
    pointer_keys = {"pointer_anchor_mass", "pointer_gate", "heading_target_mass", "heading_gate",
                    "pointer_anchor_missed", "heading_target_missed"}  # fmt: skip
    for key, value in first["grounding"].items():
        assert value is None if key in pointer_keys else 0.0 <= value <= 1.0, key
    assert first["position"]["f_pos head alone"] == first["position"]["f_pos"]
    assert first["position"]["pointer alone"] == first["position"]["f_pos"]
    assert first["heading"]["f_ori alone"] == first["heading"]["pointer alone"]
    assert first["heading"]["pose"] == first["heading"]["f_ori alone"]
    for row in first["position"].values():
        assert 0.0 <= row["acc_0_5m"] <= row["acc_1_0m"] <= 1.0
    # f_pos is what localize() says
    errors, turns = [], []
    vlm = bundles[0].model.vlm
    for episode in episodes:
        prefix = vlm.encode_scene(
            frames_to_pixel_values(list(episode.frames), size=56), episode.camera_tokens
        )
        seen = set()
        for record in episode.records:
            if (record.situation, tuple(record.position)) in seen:
                continue
            seen.add((record.situation, tuple(record.position)))
            pose = vlm.localize(prefix, record.situation)
            errors.append(math.dist(record.position, pose.xy.tolist()))
            turns.append(math.degrees(abs(math.remainder(pose.yaw - record.yaw, 2 * math.pi))))
    assert first["position"]["f_pos"]["median_error_m"] == pytest.approx(
        np.median(errors), abs=1e-4
    )
    assert first["position"]["f_pos"]["acc_1_0m"] == pytest.approx(np.mean(np.array(errors) < 1.0))
    # the heading is what localize() says
    heading = first["heading"]["pose"]
    assert heading["median_error_deg"] == pytest.approx(np.median(turns), abs=1e-3)
    for t in (15, 30):
        assert heading[f"acc_{t}deg"] == pytest.approx(np.mean(np.array(turns) < t))
    assert "| heading read-out | Acc@15° | Acc@30° | median error |" in markdown(first)
    # f_pos apart on the situations with and without their anchor in view: the two make the whole
    seen, unseen = (first["f_pos_by_view"][v] for v in ("anchor in view", "anchor out of view"))
    assert seen["situations"] + unseen["situations"] == first["situations"] == len(errors)
    assert seen["situations"] == round(first["anchor_in_view"] * first["situations"])
    assert (
        seen["acc_1_0m"] * seen["situations"] + unseen["acc_1_0m"] * unseen["situations"]
    ) == pytest.approx(first["position"]["f_pos"]["acc_1_0m"] * len(errors))
    assert "f_pos at 1.0 m: " in markdown(first)
    # read-outs from the truth alone do not depend on the model; those from the model do
    second = reports[1]
    assert first["position"]["anchor, true layout"] == second["position"]["anchor, true layout"]
    centre = "anchor's centre, truth"
    assert first["position"][centre] == second["position"][centre]
    # the anchor's true centre, scored against each situation's position
    expected = [
        math.dist(r.position, r.fields["anchor_position"])
        for e in episodes
        for r in {(r.situation, tuple(r.position)): r for r in e.records}.values()
    ]
    assert first["position"][centre]["acc_1_0m"] == pytest.approx(np.mean(np.array(expected) < 1))
    assert first["direction"]["true grounding, true layout"] == pytest.approx(
        second["direction"]["true grounding, true layout"]
    )
    assert first["position"]["f_pos"] != second["position"]["f_pos"]
    assert set(first["direction"]) == {"questions", "majority", *DIRECTION_READOUTS}
    # the ceiling: the words and the true room's pose and answers, whatever the model
    for part in ("position", "heading", "direction"):
        assert first[part][CEILING] == second[part][CEILING], part
    tops = [
        (r, c)
        for e in episodes
        for r, c in zip(e.records, ceiling_cases(e.seed, e.records), strict=True)
    ]
    said = [c.case.prediction == r.answers[0] for r, c in tops if r.question_type == "direction"]
    assert first["direction"][CEILING] == pytest.approx(np.mean(said))
    placed = {(r.situation, tuple(r.position)): c for r, c in reversed(tops)}.values()
    for i, (part, name, threshold) in enumerate(
        (("position", "acc_0_5m", 0.5), ("position", "acc_1_0m", 1.0),
         ("heading", "acc_15deg", 15.0), ("heading", "acc_30deg", 30.0))
    ):  # fmt: skip
        errors = np.array([(c.position_errors + c.heading_errors)[i] for c in placed])
        assert first[part][CEILING][name] == pytest.approx(np.mean(errors < threshold)), name
    assert "| the words and the true room (ceiling) |" in markdown(first)


def test_measure_reports_the_input_points_error_by_frame(episodes_and_bundles, monkeypatch):
    from loc3r.eval import bounds

    episodes, bundles, _ = episodes_and_bundles
    vlm = bundles[0].model.vlm
    assert measure(vlm, episodes, 56, progress=False)["input_points_median_error_m_by_frame"] == []

    def stated(vlm, episode, patch_index):  # the true layout, 0.5 m off; frame 0's first unknown
        xy = bounds._patch_truth(episode, patch_index)[0] + torch.tensor([0.3, 0.4]).double()
        xy[0] = float("nan")
        return xy

    monkeypatch.setattr(bounds, "input_points", stated)
    report = measure(vlm, episodes, 56, progress=False)
    assert report["input_points_median_error_m_by_frame"] == pytest.approx([0.5] * 4)
    assert "Input points' median error by frame (m): 0.50, 0.50, 0.50, 0.50" in markdown(report)
    # read through points 0.5 m off, the anchor is at most 0.5 m further than through the truth
    anchor = report["position"]["anchor, input points"]["median_error_m"]
    assert anchor == pytest.approx(report["position"]["anchor, true layout"]["median_error_m"],
                                   abs=0.5 + 1e-6)  # fmt: skip


def measure_with(vlm, episodes, aid: str, module, gate_bias: float | None = None) -> dict:
    """measure() of `vlm` given a fresh pointer `module` as its `aid`, then without it again."""
    setattr(vlm, aid, module)
    setattr(vlm.config, aid, True)
    if gate_bias is not None:
        torch.nn.init.constant_(module.gate.bias, gate_bias)
    try:
        return measure(vlm, episodes, 56, progress=False)
    finally:
        setattr(vlm, aid, None)
        setattr(vlm.config, aid, False)


def test_measure_reports_the_position_pointer(episodes_and_bundles):
    from loc3r.vlm.position_pointer import PositionPointer

    episodes, bundles, _ = episodes_and_bundles
    vlm = bundles[0].model.vlm
    torch.manual_seed(3)
    pointer = PositionPointer(vlm.base.config.text["hidden_size"])
    report = measure_with(vlm, episodes, "position_pointer", pointer)
    grounding = report["grounding"]
    # a new pointer's gate is sigmoid(-3) everywhere; its attention sums to 1 over the patches
    assert grounding["pointer_gate"] == pytest.approx(float(torch.sigmoid(torch.tensor(-3.0))))
    assert 0.0 < grounding["pointer_anchor_mass"] < 1.0
    assert 0.0 <= grounding["pointer_anchor_missed"] <= 1.0
    assert grounding["heading_target_missed"] is None  # no heading pointer
    position = report["position"]
    assert position["f_pos head alone"] != position["f_pos"]
    assert position["f_pos"] != position["pointer alone"] != position["f_pos head alone"]
    assert "Position pointer: " in markdown(report) and "gate 0.05" in markdown(report)
    assert "(under 10 % of it in " in markdown(report)


def test_a_pointer_missed_its_object_when_under_a_tenth_of_its_attention_is_there():
    assert _missed([0.05, 0.5, 0.95, 0.0999]) == 0.5
    assert _missed([0.1, 1.0]) == 0.0
    assert _missed([]) is None


def test_measure_reports_the_heading_pointer(episodes_and_bundles):
    from loc3r.vlm.heading_pointer import HeadingPointer

    episodes, bundles, _ = episodes_and_bundles
    vlm = bundles[0].model.vlm
    torch.manual_seed(4)
    pointer = HeadingPointer(vlm.base.config.text["hidden_size"])
    report = measure_with(vlm, episodes, "heading_pointer", pointer, gate_bias=0.0)  # half open
    grounding = report["grounding"]
    assert grounding["heading_gate"] == pytest.approx(0.5)
    assert 0.0 < grounding["heading_target_mass"] < 1.0
    assert 0.0 <= grounding["heading_target_missed"] <= 1.0
    assert grounding["pointer_gate"] is None  # no position pointer
    heading = report["heading"]
    assert heading["f_ori alone"] != heading["pose"]
    assert heading["pose"] != heading["pointer alone"] != heading["f_ori alone"]
    assert "Heading pointer: " in markdown(report) and "gate 0.50" in markdown(report)


def test_command_writes_the_report_and_refuses_bad_seeds(episodes_and_bundles, capsys):
    _, _, root = episodes_and_bundles
    out = root / "bounds.json"
    args = ["--model", str(root / "b0"), "--seeds", "1000000:1000001", "--image-size", "56"]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == str(root / "b0") and report["seconds"] > 0
    assert "| anchor, true layout |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(root / "b0"), "--seeds", "5:5"])
    assert exit_info.value.code == 2
    assert "selects no scene" in capsys.readouterr().err


def test_another_vlm_is_traced_with_the_bundles_perception(episodes_and_bundles, capsys, tmp_path):
    from loc3r.eval.bounds import swap_vlm

    episodes, bundles, root = episodes_and_bundles
    swapped = swap_vlm(bundles[0], root / "b1" / "vlm")  # b1's VLM, b0's CUT3R
    for name, tensor in bundles[1].model.vlm.state_dict().items():
        assert torch.equal(swapped.state_dict()[name], tensor), name
    assert swapped.answer_vocabulary == bundles[0].model.vlm.answer_vocabulary
    assert measure(swapped, episodes, 56, progress=False) == measure(
        bundles[1].model.vlm, episodes, 56, progress=False
    )
    out = tmp_path / "swapped.json"
    args = ["--model", str(root / "b0"), "--seeds", "1000000:1000001", "--image-size", "56"]
    assert main([*args, "--vlm", str(root / "b1" / "vlm"), "--out", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["vlm"] == str(root / "b1" / "vlm")
    capsys.readouterr()
    perception = bundles[0].perception  # a bundle whose tokens the VLM cannot read is refused
    for config, width, refusal in (
        (perception.config, perception.token_width + 1, "-d camera tokens"),
        (replace(perception.config, camera_tokens="geometry"), perception.token_width, "point"),
    ):
        other = SimpleNamespace(
            model=bundles[0].model, perception=SimpleNamespace(config=config, token_width=width)
        )
        with pytest.raises(ValueError, match=refusal):
            swap_vlm(other, root / "b1" / "vlm")
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--vlm", str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "--vlm" in capsys.readouterr().err


def test_without_object_cells_the_readouts_fall_back_to_the_model_and_the_majority(
    episodes_and_bundles,
):
    episodes, bundles, _ = episodes_and_bundles
    blind = [replace(e, object_cover=None) for e in episodes]  # e.g. a renderer without ids
    report = measure(bundles[0].model.vlm, blind, 56, progress=False)
    assert report["anchor_in_view"] == 0.0 and report["grounding"]["anchor_mass"] is None
    by_view = report["f_pos_by_view"]
    assert by_view["anchor in view"]["situations"] == 0
    assert by_view["anchor out of view"]["acc_1_0m"] == report["position"]["f_pos"]["acc_1_0m"]
    for name in ("anchor, model layout", "anchor, true layout", "anchor first view, model layout"):
        assert report["position"][name] == report["position"]["f_pos"]
    direction = report["direction"]
    assert direction["majority"] > 0.0  # some answers are "in front": the fallback scores them
    assert direction["true grounding, true layout"] == direction["majority"]
    assert direction["true grounding, model layout"] == direction["majority"]
    for pose in ("model pose", "true pose"):  # no object cells: the majority's answer
        assert direction[f"{pose}, true object"] == direction["majority"]
