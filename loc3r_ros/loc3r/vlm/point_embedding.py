"""Point embedding (ours, not in the paper): each video patch is told where it is in 3D.

The paper's Loc3R-VLM learns each patch's place in the room (its layout head) from the camera
tokens and the pixels; LLaVA-Video's 7B LLM has the capacity for that, a tiny LM trained from
scratch does not (docs/experiments.md: its layout is off by 1-3 m after the first frame even with
true poses). With `Loc3rVLMConfig.point_embedding`, the frame's camera token is a geometry token
(`loc3r.engine.perception.geometry_token`: the pose, then CUT3R's pointmap in the first camera's
frame pooled to the VLM's patch grid) and each pooled patch gets an embedding of its point added:
Fourier features of x, y, z (wavelengths 0.25 to 16 m) through one linear layer, the way 3D-aware
video LLMs add 3D position encodings to their patch tokens. Reading a position is then finding
the right patches, which the grounding loss teaches (training_aids).
"""

from __future__ import annotations

import math

import torch
from torch import nn

WAVELENGTHS_M = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


class PointEmbedding(nn.Module):
    """(..., 3) points in metres -> (..., hidden): x, y, z and their sin, cos at each wavelength."""

    def __init__(self, hidden: int, wavelengths: tuple[float, ...] = WAVELENGTHS_M) -> None:
        super().__init__()
        self.frequencies = tuple(2 * math.pi / w for w in wavelengths)  # float32 even in bf16
        # the frequencies as a float32 tensor per device, made once: a host-to-device copy at
        # every forward would wait for the GPU each training step and scene encoding
        self._on_device: dict[torch.device, torch.Tensor] = {}
        self.proj = nn.Linear(3 * (1 + 2 * len(wavelengths)), hidden)
        # zero at the start: the patches begin as the pixels alone, and the points come in as the
        # gradient asks for them (a random start drowned the colours: docs/experiments.md)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Embed points; non-finite coordinates count as 0 (a cell CUT3R gave no point)."""
        points = torch.nan_to_num(points.float(), nan=0.0, posinf=0.0, neginf=0.0)
        frequencies = self._on_device.get(points.device)
        if frequencies is None:
            frequencies = torch.tensor(self.frequencies, device=points.device)
            self._on_device[points.device] = frequencies
        angles = points[..., None] * frequencies  # (..., 3, F)
        features = torch.cat([points, angles.sin().flatten(-2), angles.cos().flatten(-2)], -1)
        return self.proj(features.to(self.proj.weight.dtype))
