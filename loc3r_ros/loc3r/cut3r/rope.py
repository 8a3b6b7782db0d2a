"""2D rotary position embedding (RoPE) with the numerics of the official CPU/PyTorch path.

A head of width Dh is split in two halves; the first half is rotated by the token's y position,
the second by its x position. Each half of width D uses D/2 frequencies
inv_freq_j = 1 / freq**(2j / D), and pairs channel i with channel i + D/2 ("rotate half").

Numerics that matter for matching the reference to 1e-5:
- the angle table `pos * inv_freq` is computed in float32, then cast to the token dtype; cos/sin
  are evaluated in that dtype (float16 inside the image encoder, float32 elsewhere), and the
  rotation `x * cos + rotate_half(x) * sin` is evaluated in the token dtype;
- positions are signed: the camera token sits at (-1, -1); cos is even and sin odd, so a negative
  position uses the table at |pos| with sin negated (matches the CUDA kernel's pos * inv_freq).
"""

from __future__ import annotations

import torch
from torch import nn

MAX_POSITION = 4096  # |position| limit: patch grids up to 4096 x 4096 (65k px at patch 16)


class RoPE2D(nn.Module):
    """Applies 2D RoPE to (B, heads, N, Dh) tokens given (B, N, 2) integer (y, x) positions.

    The cos/sin tables are built once per (width, device, dtype) for |position| < MAX_POSITION;
    each entry is computed exactly as the reference does (elementwise), so the table length does
    not change any value, and no host synchronisation is needed per call.
    """

    def __init__(self, freq: float = 100.0) -> None:
        super().__init__()
        self.freq = float(freq)
        self._cache: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    def _cos_sin(
        self, half_dim: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables (MAX_POSITION, half_dim) of cos/sin of angle = position * inv_freq, in `dtype`."""
        key = (half_dim, device, dtype)
        cached = self._cache.get(key)
        if cached is None:
            length = MAX_POSITION
            exponents = torch.arange(0, half_dim, 2, device=device).float() / half_dim
            inv_freq = 1.0 / (self.freq**exponents)  # (half_dim/2,) float32
            steps = torch.arange(length, device=device, dtype=torch.float32)
            angles = torch.einsum("i,j->ij", steps, inv_freq).to(dtype)  # (length, half_dim/2)
            angles = torch.cat((angles, angles), dim=-1)  # (length, half_dim)
            cached = (angles.cos(), angles.sin())
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = cached
        return cached[0], cached[1]

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=-1)
        return torch.cat((-second, first), dim=-1)

    def _rotate_1d(
        self, x: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """x: (B, h, N, D); pos: (B, N) signed integers; cos/sin: (L, D) tables."""
        magnitude = pos.abs()
        cos_p = cos[magnitude][:, None]  # (B, 1, N, D)
        sin_p = sin[magnitude][:, None]
        sin_p = torch.where((pos < 0)[:, None, :, None], -sin_p, sin_p)
        return (x * cos_p) + (self._rotate_half(x) * sin_p)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate `tokens` (B, h, N, Dh) by `positions` (B, N, 2) = (y, x); same dtype out."""
        if tokens.shape[-1] % 4 != 0:
            raise ValueError(f"RoPE2D needs a head width divisible by 4, got {tokens.shape[-1]}")
        if positions.ndim != 3 or positions.shape[-1] != 2:
            raise ValueError(f"positions must be (B, N, 2), got {tuple(positions.shape)}")
        half_dim = tokens.shape[-1] // 2
        cos, sin = self._cos_sin(half_dim, tokens.device, tokens.dtype)
        y_part, x_part = tokens.chunk(2, dim=-1)
        y_part = self._rotate_1d(y_part, positions[:, :, 0], cos, sin)
        x_part = self._rotate_1d(x_part, positions[:, :, 1], cos, sin)
        return torch.cat((y_part, x_part), dim=-1)
