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

Cost: positions do not change between the frames of a stream, so the per-token cos/sin (the
gathered tables, with the sign of negative positions and the sign of rotate_half folded into sin)
are cached per positions tensor; a call is then one channel swap, two products and one sum,
bit-identical to the gather-and-rotate form (`_reference_rotate` keeps that form for the tests).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

MAX_POSITION = 4096  # |position| limit: patch grids up to 4096 x 4096 (65k px at patch 16)
CACHE_LIMIT = 64  # cached tables per RoPE2D (cleared when exceeded; a step uses about 4)


class RoPE2D(nn.Module):
    """Applies 2D RoPE to (B, ..., N, Dh) tokens given (B, N, 2) integer (y, x) positions.

    Two caches, neither needing a host synchronisation:
    - the cos/sin tables of angle = position * inv_freq, (MAX_POSITION, Dh/2), once per
      (width, device, dtype); each entry is computed exactly as the reference does
      (elementwise), so the table length does not change any value;
    - the per-token tables (B, N, Dh) for a positions tensor, keyed by that tensor's identity
      and version counter (an in-place change invalidates the entry), width, device and dtype.
      The model passes the same positions tensors every frame (see `PatchEmbed`, `Cut3r`), so
      a stream builds them once. Inference tensors (no version counter) are not cached.
    `calls_built` counts per-token tables built (tests check reuse with it).
    """

    def __init__(self, freq: float = 100.0) -> None:
        super().__init__()
        self.freq = float(freq)
        self._cache: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}
        self._token_cache: dict[tuple, tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = {}
        self.calls_built = 0

    def clear_cache(self) -> None:
        """Drop every cached table (they are rebuilt on demand)."""
        self._cache.clear()
        self._token_cache.clear()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> nn.Module:
        # .to(device) / .half() etc.: cached tables of the old device/dtype are only garbage
        self.clear_cache()
        return super()._apply(fn, recurse)

    def _cos_sin(
        self, half_dim: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables (MAX_POSITION, half_dim) of cos/sin of angle = position * inv_freq, in `dtype`."""
        key = (half_dim, device, dtype)
        tracing = torch.compiler.is_compiling()  # a traced graph neither reads nor fills caches
        cached = None if tracing else self._cache.get(key)
        if cached is None:
            length = MAX_POSITION
            with torch.inference_mode(False), torch.no_grad():  # normal tensors, no autograd
                exponents = torch.arange(0, half_dim, 2, device=device).float() / half_dim
                inv_freq = 1.0 / (self.freq**exponents)  # (half_dim/2,) float32
                steps = torch.arange(length, device=device, dtype=torch.float32)
                angles = torch.einsum("i,j->ij", steps, inv_freq).to(dtype)  # (length, half/2)
                angles = torch.cat((angles, angles), dim=-1)  # (length, half_dim)
                cached = (angles.cos(), angles.sin())
            if tracing:
                return cached
            if len(self._cache) > CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = cached
        return cached[0], cached[1]

    def _build_token_tables(
        self, positions: torch.Tensor, head_dim: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token (B, N, Dh) cos and signed sin for the channel swap of `forward`.

        x * cos + swap(x) * sin == [rotate_1d(y half, pos_y), rotate_1d(x half, pos_x)].
        """
        half_dim = head_dim // 2
        quarter = half_dim // 2
        cos, sin = self._cos_sin(half_dim, device, dtype)
        positions = positions.to(device)
        cos_parts, sin_parts = [], []
        for axis in (0, 1):
            pos = positions[:, :, axis]
            magnitude = pos.abs()
            cos_p = cos[magnitude]  # (B, N, half_dim)
            sin_p = sin[magnitude]
            sin_p = torch.where((pos < 0)[..., None], -sin_p, sin_p)
            # rotate_half(x) * sin = [-x2 * s1, x1 * s2] = [x2 * (-s1), x1 * s2] (exact)
            cos_parts.append(cos_p)
            sin_parts += [-sin_p[..., :quarter], sin_p[..., quarter:]]
        if not torch.compiler.is_compiling():  # a traced counter would guard every frame
            self.calls_built += 1
        return torch.cat(cos_parts, dim=-1), torch.cat(sin_parts, dim=-1)

    def token_tables(
        self, positions: torch.Tensor, head_dim: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached (B, N, Dh) cos / signed sin for `positions` (see the class docstring)."""
        if torch.compiler.is_compiling():
            return self._build_token_tables(positions, head_dim, device, dtype)
        if positions.is_inference():  # no version counter: cannot tell in-place changes
            with torch.no_grad():
                return self._build_token_tables(positions, head_dim, device, dtype)
        key = (id(positions), head_dim, device, dtype)
        entry = self._token_cache.get(key)
        version = positions._version
        if entry is not None and entry[0] is positions and entry[1] == version:
            return entry[2], entry[3]
        # normal tensors even under inference_mode (so training can reuse them), no autograd
        with torch.inference_mode(False), torch.no_grad():
            cos, sin = self._build_token_tables(positions, head_dim, device, dtype)
        if len(self._token_cache) >= CACHE_LIMIT:
            self._token_cache.clear()
        # the entry holds `positions`, so its id cannot be reused while the entry lives
        self._token_cache[key] = (positions, version, cos, sin)
        return cos, sin

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate `tokens` (B, ..., N, Dh) by `positions` (B, N, 2) = (y, x); same dtype out.

        Extra dims between B and N (heads, or heads x {q, k}) share the positions.
        """
        head_dim = tokens.shape[-1]
        if head_dim % 4 != 0:
            raise ValueError(f"RoPE2D needs a head width divisible by 4, got {head_dim}")
        if positions.ndim != 3 or positions.shape[-1] != 2:
            raise ValueError(f"positions must be (B, N, 2), got {tuple(positions.shape)}")
        if tokens.ndim < 3:
            raise ValueError(f"tokens must be (B, ..., N, Dh), got {tuple(tokens.shape)}")
        cos, sin = self.token_tables(positions, head_dim, tokens.device, tokens.dtype)
        if tokens.ndim != 3:
            shape = (cos.shape[0],) + (1,) * (tokens.ndim - 3) + tuple(cos.shape[1:])
            cos, sin = cos.view(shape), sin.view(shape)
        # [y1, y2, x1, x2] -> [y2, y1, x2, x1] (quarters of the head width)
        swapped = tokens.unflatten(-1, (2, 2, head_dim // 4)).flip(-2).flatten(-3)
        return tokens * cos + swapped * sin

    # ------------------------------------------------------------------ reference (tests)
    def _reference_rotate(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The uncached gather-and-rotate form (what `forward` must equal); (B, h, N, Dh)."""
        half_dim = tokens.shape[-1] // 2
        cos, sin = self._cos_sin(half_dim, tokens.device, tokens.dtype)

        def rotate_half(x: torch.Tensor) -> torch.Tensor:
            first, second = x.chunk(2, dim=-1)
            return torch.cat((-second, first), dim=-1)

        def rotate_1d(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            magnitude = pos.abs()
            cos_p = cos[magnitude][:, None]  # (B, 1, N, D)
            sin_p = sin[magnitude][:, None]
            sin_p = torch.where((pos < 0)[:, None, :, None], -sin_p, sin_p)
            return (x * cos_p) + (rotate_half(x) * sin_p)

        y_part, x_part = tokens.chunk(2, dim=-1)
        y_part = rotate_1d(y_part, positions[:, :, 0])
        x_part = rotate_1d(x_part, positions[:, :, 1])
        return torch.cat((y_part, x_part), dim=-1)
