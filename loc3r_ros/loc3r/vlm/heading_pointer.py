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
with f_ori's heading on the unit circle:

    u = (1 - g) (cos f, sin f) + g (cos p, sin p),   yaw = atan2(u),   g = sigmoid(w . h + b)

The gate starts almost closed (b = -3), so a continued model starts close to where it was. Two
losses join L_ori (weighted as it is, inside w_sit): the pointer's own heading, 1 - cos(p - yaw*),
trains the attention; the mixed heading's, 1 - cos(yaw - yaw*), the gate (f_ori's heading is
detached there: f_ori keeps L_ori). With `ground_pointers` the attention is also supervised
towards the faced object's patches (loc3r.vlm.loc3r_vlm). f_ori's spread stays the pose's spread.
It needs the layout head.
"""

from __future__ import annotations

import torch
from torch import nn

from loc3r.vlm.position_pointer import CLOSED_GATE_BIAS, patch_attention


def heading_error(yaw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean 1 - cos(yaw - target) of (N,) headings (radians): 0 when equal, 2 when opposite."""
    return (1.0 - torch.cos(yaw.float() - target.float())).mean()


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
        """(N,) the bearings from `position` (N, 2) to the attended layout, and the attention.

        patch_layout (N or 1, P, 2) metres and the position are detached here.
        """
        weights = self.attention(ori_hidden, patch_hidden)
        faced = (weights[..., None] * patch_layout.detach().float()).sum(1)
        towards = faced - position.detach().float()
        return torch.atan2(towards[:, 1], towards[:, 0]), weights

    def mix(
        self, ori_hidden: torch.Tensor, own_yaw: torch.Tensor, pointed_yaw: torch.Tensor
    ) -> torch.Tensor:
        """(N,) f_ori's `own_yaw` turned towards `pointed_yaw` by the gate, on the unit circle."""
        gate = torch.sigmoid(self.gate(ori_hidden).float())[:, 0]  # (N,)
        own = own_yaw.float()
        cos = (1 - gate) * own.cos() + gate * pointed_yaw.cos()
        sin = (1 - gate) * own.sin() + gate * pointed_yaw.sin()
        return torch.atan2(sin, cos)
