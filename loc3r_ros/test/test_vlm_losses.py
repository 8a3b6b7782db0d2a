"""Loc3R-VLM losses against hand-computed values, including the heading wrap-around at +-pi."""

from __future__ import annotations

import math

import pytest
import torch

from loc3r.vlm.losses import (
    LossWeights,
    answer_cross_entropy,
    bin_centres,
    egocentric_offset,
    gaussian_nll_2d,
    grounding_nll,
    heading_from_bins,
    orientation_kl,
    orientation_target,
    total_loss,
    wrap_angle,
)


def test_gaussian_nll_matches_the_formula():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    sigma = torch.tensor([[0.5, 2.0], [1.0, 1.0]])
    target = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    first = 0.5 * ((1 / 0.25) + math.log(0.25) + (4 / 4.0) + math.log(4.0))
    second = 0.5 * (0.0 + 0.0 + 9.0 + 0.0)
    assert gaussian_nll_2d(pred, sigma, target).item() == pytest.approx((first + second) / 2)
    mask = torch.tensor([True, False])
    assert gaussian_nll_2d(pred, sigma, target, mask).item() == pytest.approx(first)
    empty = gaussian_nll_2d(pred, sigma, target, torch.tensor([False, False]))
    assert empty.item() == 0.0


def test_bins_and_wrap():
    centres = bin_centres(36)
    assert centres[0].item() == pytest.approx(math.radians(-175))
    assert centres[-1].item() == pytest.approx(math.radians(175))
    assert wrap_angle(torch.tensor(3 * math.pi / 2)).item() == pytest.approx(-math.pi / 2)


def test_orientation_target_wraps_around_pi():
    # A heading of 179 deg is 4 deg from the +175 bin and 6 deg from the -175 bin.
    target = orientation_target(torch.tensor([math.radians(179.0)]), 36, math.radians(10))[0]
    w_last = math.exp(-0.5 * (4 / 10) ** 2)
    w_first = math.exp(-0.5 * (6 / 10) ** 2)
    assert target[-1] / target[0] == pytest.approx(w_last / w_first, rel=1e-5)
    assert target.sum().item() == pytest.approx(1.0)
    assert target.argmax().item() == 35 and target[0] > target[-2]  # neighbour across +-pi


def test_orientation_kl_is_zero_at_the_target_and_positive_elsewhere():
    yaw = torch.tensor([math.radians(-178.0), 0.3])
    target = orientation_target(yaw, 36, math.radians(10))
    logits = target.clamp_min(1e-30).log()  # far bins underflow to 0 in float32
    assert orientation_kl(logits, yaw, math.radians(10)).item() == pytest.approx(0, abs=1e-6)
    uniform = torch.zeros(2, 36)
    kl = orientation_kl(uniform, yaw, math.radians(10)).item()
    expected = float((torch.xlogy(target, target) - target * math.log(1 / 36)).sum(-1).mean())
    assert kl == pytest.approx(expected, rel=1e-5) and kl > 0


def test_heading_readout_is_circular():
    probs = torch.zeros(36)
    probs[0] = probs[35] = 0.5  # -175 and +175 deg: the mean heading is 180, not 0
    yaw, spread = heading_from_bins(probs)
    assert abs(abs(yaw.item()) - math.pi) < 1e-5
    expected = math.sqrt(-2 * math.log(math.cos(math.radians(5))))
    assert spread.item() == pytest.approx(expected, rel=1e-4)
    one_hot = torch.zeros(36)
    one_hot[18] = 1.0
    assert heading_from_bins(one_hot)[0].item() == pytest.approx(math.radians(5), abs=1e-6)


def test_answer_cross_entropy_counts_only_labelled_tokens():
    logits = torch.zeros(1, 4, 5)
    logits[0, 1, 3] = 2.0
    labels = torch.tensor([[-100, -100, 3, -100]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 4))
    assert answer_cross_entropy(logits, labels).item() == pytest.approx(expected)


def test_total_loss_uses_the_paper_weights():
    parts = {k: torch.tensor(v) for k, v in {"ce": 1.0, "bev": 2.0, "pos": 3.0, "ori": 4.0}.items()}
    expected = 1.0 + 0.05 * 2.0 + 0.075 * (3.0 + 3.5 * 4.0)
    assert total_loss(parts, LossWeights()).item() == pytest.approx(expected)
    assert total_loss({"ce": torch.tensor(1.0)}, LossWeights()).item() == 1.0
    ours = LossWeights(grounding=0.5, egocentric=0.2)
    parts |= {"ground": torch.tensor(5.0), "ego": torch.tensor(6.0)}
    assert total_loss(parts, ours).item() == pytest.approx(expected + 0.5 * 5.0 + 0.2 * 6.0)


def test_egocentric_offset_is_ahead_and_left_of_the_agent():
    from loc3r.scenes.situations import relative_direction

    facing_y = math.pi / 2
    assert egocentric_offset((1.0, 1.0), facing_y, (1.0, 3.0)) == pytest.approx((2.0, 0.0))
    assert egocentric_offset((1.0, 1.0), facing_y, (0.0, 1.0)) == pytest.approx((0.0, 1.0))
    assert egocentric_offset((1.0, 1.0), facing_y, (1.5, 0.0)) == pytest.approx((-1.0, -0.5))
    g = torch.Generator().manual_seed(0)
    words = {}
    positions, points = torch.randn(2, 200, 2, generator=g).tolist()
    yaws = (torch.rand(200, generator=g) * 7 - 3.5).tolist()
    for position, yaw, point in zip(positions, yaws, points, strict=True):
        ahead, left = egocentric_offset(position, yaw, point)
        angle = math.degrees(math.atan2(left, ahead))
        word = relative_direction(position, yaw, point)
        words[word] = words.get(word, 0) + 1
        if abs(angle) <= 44:
            assert word == "in front"
        elif abs(angle) >= 136:
            assert word == "behind"
        elif 46 <= abs(angle) <= 134:
            assert word == ("left" if angle > 0 else "right")
    assert len(words) == 4  # every quadrant was drawn


def test_grounding_nll_is_minus_log_attention_mass_on_the_object():
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.2, 0.3, 0.5]])
    on = torch.tensor([[True, True, False], [False, False, False], [False, False, True]])
    expected = -(math.log(0.75 + 1e-6) + math.log(0.5 + 1e-6)) / 2  # row 2: object not in view
    assert grounding_nll(probs, on).item() == pytest.approx(expected)
    none = grounding_nll(probs.requires_grad_(), torch.zeros(3, 3, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    parts = {"ce": torch.tensor(1.0), "ground": torch.tensor(2.0)}
    assert total_loss(parts, LossWeights()).item() == 1.0  # off by default (not in the paper)
    assert total_loss(parts, LossWeights(grounding=0.5)).item() == 2.0
