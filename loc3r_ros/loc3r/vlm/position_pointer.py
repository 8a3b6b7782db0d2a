"""Position pointer (ours, not in the paper): <Pos> points at the patches where the agent is.

The paper's f_pos regresses the agent's (x, y) from <Pos>'s last hidden state. A tiny LM trained
from scratch finds the situation's anchor object (its attention on the anchor's patches: about
two thirds) yet f_pos does not turn that into a position: on held-out rooms it reads 27 %
Acc@1.0m where the anchor's patches, read through the model's own layout, would give 44 %
(docs/experiments.md, `python -m loc3r.eval.bounds`). The pointer reads the position where the
layout already has it: an attention of <Pos> over the video's patch tokens (its own query and
key projections, trained by the position loss alone), the attended patches' layout (x, y) from
the layout head, plus an offset; a gate from <Pos> mixes it with f_pos's position:

    xy = (1 - g) * f_pos_xy + g * (sum_i a_i layout_i + offset),   g = sigmoid(w . h + b)

The gate starts almost closed (b = -3: the pointer moves a position by 4.7 % of the difference),
so a continued model starts close to where it was. Through the gate alone the pointer would learn
at a twentieth of the rate and the gate would stay shut (a 2000-step run moved its bias from -3
to -2.98), so the pointer's own position (sum_i a_i layout_i + offset) has its own loss, L_pointer
(the same Gaussian NLL, f_pos's sigma detached), and the gate opens once it points well. The
layout is detached: the position losses do not move it. f_pos's sigma is kept. With
`ground_pointers` the attention is also supervised towards the anchor's patches (-log of its mass,
part "pointer_ground", under the grounding weight), as the grounding heads are. It needs the layout
head (`Loc3rVLMConfig.enable_layout_head`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

CLOSED_GATE_BIAS = -3.0  # sigmoid(-3) = 4.7 %: the pointer starts almost out of the way


def patch_logits(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(N, d) queries and (N or 1, P, d) keys -> (N, P) their scaled dot products (float32)."""
    scale = 1.0 / math.sqrt(query.shape[-1])
    return (query.float()[:, None] * keys.float()).sum(-1) * scale


def patch_attention(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(N, d) queries and (N or 1, P, d) keys -> (N, P): the softmax of patch_logits."""
    return patch_logits(query, keys).softmax(-1)


class PositionPointer(nn.Module):
    """<Pos>'s hidden state, the patches' hidden states and layout -> a position and its gate."""

    def __init__(self, hidden: int, key_dim: int = 64) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, key_dim)
        self.key = nn.Linear(hidden, key_dim)
        self.offset = nn.Linear(hidden, 2)
        self.gate = nn.Linear(hidden, 1)
        for layer in (self.offset, self.gate):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.constant_(self.gate.bias, CLOSED_GATE_BIAS)

    def attention(self, pos_hidden: torch.Tensor, patch_hidden: torch.Tensor) -> torch.Tensor:
        """(N, H) and (N or 1, P, H) -> (N, P): where each <Pos> points among its patches."""
        return patch_attention(self.query(pos_hidden), self.key(patch_hidden))

    def point(
        self, pos_hidden: torch.Tensor, patch_hidden: torch.Tensor, patch_layout: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 2) the pointer's own positions (attended layout plus offset), (N, P) its attention.

        pos_hidden (N, H), patch_hidden (N, P, H) and patch_layout (N, P, 2) metres (detached
        here): the patches of each sample's own scene (a leading 1 for one scene's samples).
        """
        weights = self.attention(pos_hidden, patch_hidden)
        pointed = (weights[..., None] * patch_layout.detach().float()).sum(1)
        return pointed + self.offset(pos_hidden).float(), weights

    def mix(
        self, pos_hidden: torch.Tensor, own_xy: torch.Tensor, pointed: torch.Tensor
    ) -> torch.Tensor:
        """(N, 2) f_pos's `own_xy` moved towards `pointed` by the gate."""
        gate = torch.sigmoid(self.gate(pos_hidden).float())  # (N, 1)
        return own_xy.float() + gate * (pointed - own_xy.float())

    def forward(
        self,
        pos_hidden: torch.Tensor,
        own_xy: torch.Tensor,
        patch_hidden: torch.Tensor,
        patch_layout: torch.Tensor,
    ) -> torch.Tensor:
        """(N, 2) positions: f_pos's `own_xy` (N, 2) mixed with the pointed layout (`point`)."""
        return self.mix(pos_hidden, own_xy, self.point(pos_hidden, patch_hidden, patch_layout)[0])
