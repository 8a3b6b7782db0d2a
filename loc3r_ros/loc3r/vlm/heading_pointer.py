"""Heading pointer (ours, not in the paper): <Ori> points at the faced object, the heading follows.

"..., facing the window" names what the agent faces, so its heading is the bearing from its
position to that object. The paper's f_ori regresses the heading from <Ori>'s last hidden state
in 10-degree bins. A tiny LM trained from scratch does that poorly: on held-out rooms b30's f_ori
reads 54 % Acc@30°, and direction questions answered by geometry from the model's pose score
54 % where the bearing from the same f_pos to the faced object's patches, in the model's own
layout, scores 64 % (docs/experiments.md): a bearing from a wrong position to the right object
errs the way the question's object does, so the two errors partly cancel. The pointer reads
that bearing: an attention of <Ori> over the video's patch tokens (its own query and key), the
attended patches' layout (x, y) from the layout head (detached) is where the agent looks, the
heading is the bearing to it from the model's position (detached), and a gate from <Ori> mixes it
with f_ori's heading:

    v = attended layout - position,   u = (1 - g) (cos f, sin f) + g v / |v|_e,   yaw = atan2(u)

with g = sigmoid(w . h + b) and |v|_e = sqrt(|v|^2 + e^2), e = 0.1 m: a bearing to a point
right where the agent stands is unreliable, and weighs less. The gate starts almost closed
(b = -3), so a continued model starts close to where it was. Two losses join L_ori (weighted as
it is, inside w_sit): the pointer's own, 1 - v . t / |v|_e, trains the attention; the mixed
heading's, 1 - u . t / |u|_e, the gate (t the true heading's unit vector; f_ori's heading is
detached there: f_ori keeps L_ori). Both are 1 - cos of the angle between them while the vector
is long; unlike 1 - cos(atan2(v) - yaw*), whose gradient grows as 1 / |v|, they stay bounded.
With `ground_pointers` the attention is also supervised towards the faced object's patches
(loc3r.vlm.recipe_aids). f_ori's spread stays the pose's spread. It needs the layout head.
"""

from __future__ import annotations

import torch
from torch import nn

from loc3r.vlm.position_pointer import CLOSED_GATE_BIAS, patch_attention

VECTOR_EPS = 0.1  # e in |v|_e = sqrt(|v|^2 + e^2): metres for a bearing, unitless for u


def soft_norm(vector: torch.Tensor) -> torch.Tensor:
    """(N,) |v|_e of (N, 2) vectors: their length, never under VECTOR_EPS."""
    return torch.sqrt(vector.float().square().sum(-1) + VECTOR_EPS**2)


def bearing(vector: torch.Tensor) -> torch.Tensor:
    """(N,) the headings (radians, counterclockwise from x) of (N, 2) vectors."""
    return torch.atan2(vector[:, 1], vector[:, 0])


def heading_error(vector: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean 1 - v . t / |v|_e of (N, 2) vectors against (N,) true headings t (radians).

    1 - cos of the angle between them for a long vector (0 when equal, 2 when opposite), 1 for
    a null one; its gradient stays bounded however short the vector.
    """
    target = target.float()
    unit = torch.stack([target.cos(), target.sin()], dim=-1)
    return (1.0 - (vector.float() * unit).sum(-1) / soft_norm(vector)).mean()


class HeadingPointer(nn.Module):
    """<Ori>'s state, the patches' states and layout, a position -> a heading and its gate."""

    def __init__(self, hidden: int, key_dim: int = 64) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, key_dim)
        self.key = nn.Linear(hidden, key_dim)
        self.gate = nn.Linear(hidden, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, CLOSED_GATE_BIAS)

    def attention(self, ori_hidden: torch.Tensor, patch_hidden: torch.Tensor) -> torch.Tensor:
        """(N, H) and (N or 1, P, H) -> (N, P): where each <Ori> points among its patches."""
        return patch_attention(self.query(ori_hidden), self.key(patch_hidden))

    def point(
        self,
        ori_hidden: torch.Tensor,
        patch_hidden: torch.Tensor,
        patch_layout: torch.Tensor,
        position: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 2) v, from `position` (N, 2) to the attended layout (metres), and the attention.

        patch_layout (N or 1, P, 2) metres and the position are detached here; the pointer's
        heading is bearing(v).
        """
        weights = self.attention(ori_hidden, patch_hidden)
        faced = (weights[..., None] * patch_layout.detach().float()).sum(1)
        return faced - position.detach().float(), weights

    def mix(
        self, ori_hidden: torch.Tensor, own_yaw: torch.Tensor, towards: torch.Tensor
    ) -> torch.Tensor:
        """(N, 2) u: f_ori's `own_yaw` (N,) turned towards v (`point`) by the gate.

        The mixed heading is bearing(u).
        """
        gate = torch.sigmoid(self.gate(ori_hidden).float())  # (N, 1)
        own = own_yaw.float()
        own = torch.stack([own.cos(), own.sin()], dim=-1)
        return (1 - gate) * own + gate * towards.float() / soft_norm(towards)[:, None]
