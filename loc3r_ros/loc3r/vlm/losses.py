"""Loc3R-VLM training losses: L = L_CE + w_bev L_BEV + w_sit (L_pos + w_ori L_ori) (paper).

- L_CE: next-token cross-entropy on the answer tokens only (labels -100 elsewhere).
- L_BEV, L_pos: Gaussian negative log-likelihood of a 2D point with per-axis std,
  1/2 [(x - x^)^2 / s_x^2 + log s_x^2 + (y - y^)^2 / s_y^2 + log s_y^2], averaged over points.
- L_ori: KL(target || softmax(logits)) over the heading bins, the target a wrapped Gaussian
  w_b = exp(-1/2 (wrap(theta - theta_b) / s_ori)^2), normalised.
- L_ground (ours, off by default, for models trained from scratch): -log of the attention mass
  that chosen heads of <Pos>/<Ori> put on the patches showing the situation's objects; see
  grounding_nll and loc3r.vlm.training_aids. The total adds w_ground L_ground (and w_ego L_ego).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812


@dataclass
class LossWeights:
    """Loss weights (paper values)."""

    bev: float = 0.05  # w_bev, layout reconstruction
    situation: float = 0.075  # w_sit, on (L_pos + w_ori L_ori)
    ori: float = 3.5  # w_ori
    ori_sigma: float = math.radians(10.0)  # s_ori of the wrapped-Gaussian target (?): one bin
    grounding: float = 0.0  # w_ground (not in the paper; the embedded model's recipe uses it)
    egocentric: float = 0.0  # w_ego (not in the paper): the question's object in the agent frame


def wrap_angle(angle: torch.Tensor) -> torch.Tensor:
    """Wrap radians to [-pi, pi)."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def bin_centres(num_bins: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Centres of `num_bins` equal heading bins over [-pi, pi): -pi + (b + 1/2) 2 pi / B."""
    width = 2 * math.pi / num_bins
    return -math.pi + width * (torch.arange(num_bins, device=device, dtype=dtype) + 0.5)


def gaussian_nll_2d(
    pred_xy: torch.Tensor, sigma_xy: torch.Tensor, target_xy: torch.Tensor, mask=None
) -> torch.Tensor:
    """Mean Gaussian NLL of 2D points: (..., 2) predictions, stds (> 0) and targets.

    `mask` (...,) selects the points that count; with no valid point the loss is 0 (and keeps
    the graph).
    """
    var = sigma_xy.square()
    per_point = 0.5 * ((pred_xy - target_xy).square() / var + var.log()).sum(dim=-1)
    if mask is None:
        return per_point.mean()
    mask = mask.to(per_point.dtype)
    return (per_point * mask).sum() / mask.sum().clamp(min=1.0)


def orientation_target(yaw: torch.Tensor, num_bins: int, sigma: float) -> torch.Tensor:
    """(N,) headings -> (N, B) wrapped-Gaussian bin weights, rows summing to 1."""
    centres = bin_centres(num_bins, yaw.device, yaw.dtype)
    delta = wrap_angle(yaw[:, None] - centres[None, :])
    weights = torch.exp(-0.5 * (delta / sigma).square())
    return weights / weights.sum(dim=-1, keepdim=True)


def orientation_kl(logits: torch.Tensor, yaw: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean KL(target || softmax(logits)) over a batch: (N, B) logits, (N,) headings."""
    target = orientation_target(yaw, logits.shape[-1], sigma)
    log_pred = F.log_softmax(logits.float(), dim=-1)
    return F.kl_div(log_pred, target.float(), reduction="batchmean")


def heading_from_bins(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Circular soft-argmax and circular std of (..., B) bin probabilities (radians)."""
    centres = bin_centres(probs.shape[-1], probs.device, probs.dtype)
    sin = (probs * centres.sin()).sum(-1)
    cos = (probs * centres.cos()).sum(-1)
    resultant = torch.sqrt(sin.square() + cos.square()).clamp(1e-12, 1.0)
    return torch.atan2(sin, cos), torch.sqrt(-2.0 * resultant.log())


def answer_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token CE: logits (B, L, V) at i predict labels (B, L) at i + 1 (-100 ignored)."""
    shifted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    targets = labels[:, 1:].reshape(-1)
    if (targets != -100).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(shifted, targets, ignore_index=-100)


GROUNDING_EPS = 1e-6  # added to an attention mass before its log


def grounding_nll(
    probs: torch.Tensor, on_object: torch.Tensor, eps: float = GROUNDING_EPS
) -> torch.Tensor:
    """Mean -log(attention mass on an object) over rows: (N, L) probabilities, (N, L) bool.

    Rows whose object shows in no patch do not count; with no such row the loss is 0 (and keeps
    the graph).
    """
    mass = (probs * on_object.to(probs.dtype)).sum(-1)
    valid = on_object.any(-1)
    if not bool(valid.any()):
        return probs.sum() * 0.0
    return -(mass[valid] + eps).log().mean()


def egocentric_offset(position, yaw: float, point) -> tuple[float, float]:
    """`point` in the frame of an agent at `position` facing `yaw`: (ahead, to the left), metres."""
    dx, dy = point[0] - position[0], point[1] - position[1]
    cos, sin = math.cos(yaw), math.sin(yaw)
    return cos * dx + sin * dy, -sin * dx + cos * dy


# every part forward_train can report ("loss" is their weighted sum); a batch may lack some
# (no situated sample: no pos, ori, pointer), so the trainer averages each over those that had it
LOSS_PARTS = (
    "loss", "ce", "bev", "pos", "ori", "pointer", "heading", "heading_pointer", "ground", "ego",
    "readout_ground", "pointer_ground", "heading_ground",
)  # fmt: skip


def total_loss(parts: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """L = L_CE + w_bev L_BEV + w_sit (L_pos + w_ori L_ori) + the aids' w L (ground, ego).

    With the position pointer (ours), its own position's L_pointer joins L_pos inside w_sit; with
    the heading pointer (ours), its own and the mixed heading's errors join L_ori (times w_ori).
    The pointers' and the egocentric read-out's grounding (ours) count as L_ground.

    Absent parts count 0.
    """
    zero = next(iter(parts.values())) * 0.0
    ce = parts.get("ce", zero)
    bev = parts.get("bev", zero)
    situation = parts.get("pos", zero) + weights.ori * parts.get("ori", zero)
    situation = situation + parts.get("pointer", zero)  # the position pointer's own (ours)
    heading = parts.get("heading", zero) + parts.get("heading_pointer", zero)  # (ours)
    situation = situation + weights.ori * heading
    # the read-out's and the pointers' attention on their objects (ours) count as grounding
    ground = parts.get("ground", zero) + parts.get("readout_ground", zero)
    ground = ground + parts.get("pointer_ground", zero) + parts.get("heading_ground", zero)
    ego = parts.get("ego", zero)
    return (
        ce
        + weights.bev * bev
        + weights.situation * situation
        + weights.grounding * ground
        + weights.egocentric * ego
    )
