"""Egocentric read-out (ours, not in the paper): the answer told where an object is from the agent.

"Is the lamp on my left?" asks for the lamp's place in the agent's frame. The shipped tiny LM
answers it "in front" whatever the pose (docs/experiments.md): its answers are a function of the
video and the question (`python -m loc3r.eval.situation_use`), and the egocentric head, a loss
that asked the answer token's state for that offset, collapsed to the mean. So the read-out
computes the offset where the model has its parts, and hands it to the answer:

- at the token that predicts the answer's first word, an attention of its own over the video's
  patch tokens (query and key projections, as the position pointer's) picks the object;
- each patch's layout point (the layout head's (x, y), detached) is put in the agent's frame by
  the pose the model read from the situation (f_pos / the pointer's position and f_ori's heading,
  detached): unit vector (ahead, left) and distance;
- the attended mean of those features goes through a small MLP, whose last layer starts at zero
  (a continued model answers as before), and is added to that token's last hidden state before
  the LM head.

The answer can then map an angle to "left" or "behind" with one layer, and its direction is as
good as the pose and the attention. In training, half of the samples (chosen by a hash of their
situation and question, so a resumed run takes the same) see the true pose, the others the
model's own: the true one teaches the mapping, the model's how far to trust it. The attention is
supervised as the grounding heads are, towards the patches of the object the question is about
(-log of its mass, part "readout_ground", under the grounding weight). It needs the layout head.
Training samples without a situation target (no pose to teach with) take no read-out.

With `objects` (Loc3rVLMConfig.readout_objects) it also picks an object by its place and hands
over what it picked, for "what is the closest object behind me?" and "what is closest to me?",
whose answer is an object's kind: its attention logits add place(h) . features (a linear map of
the answer token's state weighing ahead, left and distance: "behind and near"), and the attended
patches' states, through a linear map, join the added state. Both maps start at zero, so a
read-out that gains them answers as before.

With `anchor` (Loc3rVLMConfig.readout_anchor) it also knows the object the agent is at: "what is
closest to me?" leaves out the bed the agent sits on, whose patches are the nearest, so a read-out
that picks by place alone answers the anchor's kind (b32: a third of "nearest" answers, the truth
4 %; docs/experiments.md). The position pointer's attention over the same patches marks that
object; its share of each patch, divided by its largest (1 on the anchor, near 0 elsewhere,
detached), weighs in the attention logits by avoid(h), a linear map of the answer token's state
that starts at zero.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from loc3r.vlm.position_pointer import patch_logits

FEATURES = 3  # ahead / distance, left / distance, tanh(distance / DISTANCE_SCALE)
DISTANCE_SCALE = 2.0  # metres


def teacher_pose(situation: str, question: str) -> bool:
    """Whether a training sample's read-out takes the true pose (half of them, by a stable hash)."""
    return zlib.crc32(f"{situation}\n{question}".encode()) % 2 == 0


def egocentric_features(layout: torch.Tensor, xy: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """(N or 1, P, 2) layout points, (N, 2) agent positions, (N,) headings -> (N, P, FEATURES).

    The BEV frame's x, y and yaw (counterclockwise from x): a point at `yaw` from the agent is
    ahead, one at yaw + pi/2 on its left.
    """
    offset = layout.float() - xy.float()[:, None]  # (N, P, 2)
    cos, sin = yaw.float().cos()[:, None], yaw.float().sin()[:, None]
    ahead = offset[..., 0] * cos + offset[..., 1] * sin
    left = -offset[..., 0] * sin + offset[..., 1] * cos
    distance = torch.sqrt(ahead.square() + left.square() + 1e-6)
    scale = torch.tanh(distance / DISTANCE_SCALE)
    return torch.stack([ahead / distance, left / distance, scale], dim=-1)


class EgocentricReadout(nn.Module):
    """The answer token's state, the patches' states and layout, a pose -> an added state."""

    def __init__(
        self,
        hidden: int,
        key_dim: int = 64,
        width: int = 64,
        objects: bool = False,
        anchor: bool = False,
    ) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, key_dim)
        self.key = nn.Linear(hidden, key_dim)
        self.embed = nn.Sequential(nn.Linear(FEATURES, width), nn.GELU(), nn.Linear(width, hidden))
        nn.init.zeros_(self.embed[-1].weight)
        nn.init.zeros_(self.embed[-1].bias)
        self.place: nn.Linear | None = None
        self.value: nn.Linear | None = None
        self.avoid: nn.Linear | None = None
        if objects:
            self.add_objects()
        if anchor:
            self.add_anchor()

    def add_objects(self) -> None:
        """Pick by place and hand over what was picked (see the module); starts adding nothing."""
        hidden = self.query.in_features
        self.place = nn.Linear(hidden, FEATURES).to(self.query.weight)
        self.value = nn.Linear(hidden, hidden, bias=False).to(self.query.weight)
        for layer in (self.place, self.value):
            nn.init.zeros_(layer.weight)
        nn.init.zeros_(self.place.bias)

    def add_anchor(self) -> None:
        """Weigh the anchor's patches by the answer token (see the module); starts at zero."""
        self.avoid = nn.Linear(self.query.in_features, 1).to(self.query.weight)
        nn.init.zeros_(self.avoid.weight)
        nn.init.zeros_(self.avoid.bias)

    def attention(
        self,
        hidden: torch.Tensor,
        patch_hidden: torch.Tensor,
        features: torch.Tensor | None = None,
        anchor: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, H) and (N or 1, P, H) -> (N, P): which patches each answer token reads.

        With `objects`, the patches' egocentric features (N, P, FEATURES) weigh in too; with
        `anchor`, the position pointer's attention `anchor` (N or 1, P).
        """
        logits = patch_logits(self.query(hidden), self.key(patch_hidden))
        if self.place is not None:
            if features is None:
                raise ValueError("a read-out that picks by place needs the patches' features")
            weights = self.place(hidden).float()[:, None]  # (N, 1, FEATURES)
            logits = logits + (weights * features.float()).sum(-1)
        if self.avoid is not None:
            if anchor is None:
                raise ValueError("a read-out that knows the anchor needs the position pointer's")
            anchor = anchor.detach().float()
            marked = anchor / anchor.amax(-1, keepdim=True).clamp_min(1e-12)  # 1 at its peak
            logits = logits + self.avoid(hidden).float() * marked
        return logits.softmax(-1)

    def forward(
        self,
        hidden: torch.Tensor,
        patch_hidden: torch.Tensor,
        patch_layout: torch.Tensor,
        xy: torch.Tensor,
        yaw: torch.Tensor,
        anchor: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, H) to add to the answer tokens' states, and the attention (N, P).

        hidden (N, H) the answer tokens' states, patch_hidden (N or 1, P, H) and patch_layout
        (N or 1, P, 2) metres their scenes' patches, xy (N, 2) and yaw (N,) the agents' poses,
        anchor (N or 1, P) the position pointer's attention (with `anchor`); the layout, the pose
        and the anchor are detached here.
        """
        features = egocentric_features(patch_layout.detach(), xy.detach(), yaw.detach())
        weights = self.attention(hidden, patch_hidden, features, anchor)
        read = (weights[..., None] * features).sum(1)  # (N, FEATURES)
        read = read.to(self.embed[0].weight.dtype)  # a bf16 model without autocast too
        added = self.embed(read)
        if self.value is not None:  # what it picked: the attended patches' states
            picked = torch.einsum(
                "np,nph->nh", weights, patch_hidden.float().expand(len(weights), -1, -1)
            )  # (N, H), without an (N, P, H) product
            added = added + self.value(picked.to(self.value.weight.dtype))
        return added.to(hidden.dtype), weights
