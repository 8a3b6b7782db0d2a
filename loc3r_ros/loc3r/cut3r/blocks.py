"""Transformer building blocks of CUT3R (parameter names follow the official state_dict).

Shapes: B batch, N tokens, C channels, h heads, Dh = C / h.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from loc3r.cut3r.rope import RoPE2D

LAYER_NORM_EPS = 1e-6
POSITION_CACHE_LIMIT = 16  # cached position grids per PatchEmbed (image sizes x batch sizes)


def layer_norm(dim: int) -> nn.LayerNorm:
    """The LayerNorm used everywhere in CUT3R (eps 1e-6)."""
    return nn.LayerNorm(dim, eps=LAYER_NORM_EPS)


class Mlp(nn.Module):
    """fc1 -> GELU (erf) -> fc2."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim or in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        return self.fc2(self.act(self.fc1(x)))


def _apply_rope(
    rope: RoPE2D | None,
    x: torch.Tensor,
    pos: torch.Tensor | None,
    rope_dtype: torch.dtype,
) -> torch.Tensor:
    """RoPE in `rope_dtype` (float16 in the image encoder, float32 elsewhere), autocast off.

    x: (B, ..., N, Dh) (heads, or heads x {q, k}); pos: (B, N, 2).
    """
    if rope is None or pos is None:
        return x
    original = x.dtype
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = rope(x.to(rope_dtype), pos)
    else:
        x = rope(x.to(rope_dtype), pos)
    return x.to(original)


class SelfAttention(nn.Module):
    """Multi-head self-attention with fused qkv projection and optional 2D RoPE on q/k."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        rope: RoPE2D | None = None,
        rope_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope
        self.rope_dtype = rope_dtype

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        """x: (B, N, C); pos: (B, N, 2) (y, x) integer positions or None."""
        batch, num, channels = x.shape
        qkv = self.qkv(x).reshape(batch, num, 3, self.num_heads, channels // self.num_heads)
        qkv = qkv.transpose(1, 3)  # (B, h, 3, N, Dh)
        # q and k share the positions: rotated together (same values as one at a time)
        qk = _apply_rope(self.rope, qkv[:, :, :2], pos, self.rope_dtype)  # (B, h, 2, N, Dh)
        q, k, v = qk[:, :, 0], qk[:, :, 1], qkv[:, :, 2]
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, h, N, Dh)
        return self.proj(out.transpose(1, 2).reshape(batch, num, channels))


class CrossAttention(nn.Module):
    """Multi-head cross-attention (separate q/k/v projections) with optional 2D RoPE."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.projq = nn.Linear(dim, dim, bias=True)
        self.projk = nn.Linear(dim, dim, bias=True)
        self.projv = nn.Linear(dim, dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, num, channels = x.shape
        return x.reshape(batch, num, self.num_heads, channels // self.num_heads).permute(0, 2, 1, 3)

    def forward(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        query_pos: torch.Tensor | None,
        memory_pos: torch.Tensor | None,
    ) -> torch.Tensor:
        """query: (B, Nq, C) attends to memory: (B, Nk, C); positions (B, N, 2) or None."""
        batch, num_q, channels = query.shape
        q = _apply_rope(self.rope, self._heads(self.projq(query)), query_pos, torch.float32)
        k = _apply_rope(self.rope, self._heads(self.projk(memory)), memory_pos, torch.float32)
        v = self._heads(self.projv(memory))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(batch, num_q, channels))


class EncoderBlock(nn.Module):
    """Pre-norm ViT block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        rope: RoPE2D | None,
        rope_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = SelfAttention(dim, num_heads, rope=rope, rope_dtype=rope_dtype)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Self-attention, then cross-attention to a (normalised) memory, then MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        rope: RoPE2D | None,
        norm_memory: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = SelfAttention(dim, num_heads, rope=rope)
        self.cross_attn = CrossAttention(dim, num_heads, rope=rope)
        self.norm2 = layer_norm(dim)
        self.norm3 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = layer_norm(dim) if norm_memory else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor | None,
        memory_pos: torch.Tensor | None,
    ) -> torch.Tensor:
        """x: (B, N, C), memory: (B, M, C) -> updated x (B, N, C)."""
        x = x + self.attn(self.norm1(x), pos)
        memory = self.norm_y(memory)
        x = x + self.cross_attn(self.norm2(x), memory, pos, memory_pos)
        return x + self.mlp(self.norm3(x))


class ModulatedLayerNorm(nn.Module):
    """adaLN: LayerNorm(x) * (1 + scale(c)) + shift(c), (shift, scale) = Linear(SiLU(c))."""

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = layer_norm(dim)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C); cond: (B, Cc)."""
        shift, scale = self.mlp(cond).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class ModulatedBlock(nn.Module):
    """ViT block whose norms are conditioned on a vector (the camera token in the heads)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D | None) -> None:
        super().__init__()
        self.norm1 = ModulatedLayerNorm(dim, dim)
        self.attn = SelfAttention(dim, num_heads, rope=rope)
        self.norm2 = ModulatedLayerNorm(dim, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, pos: torch.Tensor | None
    ) -> torch.Tensor:
        """x: (B, N, C); cond: (B, C); pos: (B, N, 2)."""
        x = x + self.attn(self.norm1(x, cond), pos)
        return x + self.mlp(self.norm2(x, cond))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; returns tokens and their (y, x) grid positions."""

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self._positions: dict[tuple, tuple[torch.Tensor, int]] = {}

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map images (B, C, H, W) to tokens (B, H/p * W/p, dim), positions (B, N, 2) int64."""
        batch, _, height, width = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}"
            )
        x = self.proj(images)  # (B, dim, h, w)
        grid_h, grid_w = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), self.positions(batch, grid_h, grid_w, images.device)

    def positions(self, batch: int, grid_h: int, grid_w: int, device: torch.device) -> torch.Tensor:
        """(B, grid_h * grid_w, 2) int64 positions: the same tensor for the same arguments.

        RoPE keys its per-token tables on that tensor; it is rebuilt if changed in place.
        """
        if torch.compiler.is_compiling():  # a traced graph builds them itself (no cache)
            return patch_positions(grid_h, grid_w, device).expand(batch, -1, -1)
        key = (batch, grid_h, grid_w, device)
        cached = self._positions.get(key)
        if cached is not None and cached[1] == cached[0]._version:
            return cached[0]
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable anywhere
            pos = patch_positions(grid_h, grid_w, device).expand(batch, -1, -1)
        if len(self._positions) >= POSITION_CACHE_LIMIT:
            self._positions.clear()
        self._positions[key] = (pos, pos._version)
        return pos

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> nn.Module:
        self._positions.clear()  # moved / cast: the cached positions may be on the old device
        return super()._apply(fn, recurse)


def patch_positions(grid_h: int, grid_w: int, device: torch.device) -> torch.Tensor:
    """(1, grid_h * grid_w, 2) int64 (y, x) positions in row-major order."""
    ys = torch.arange(grid_h, device=device)
    xs = torch.arange(grid_w, device=device)
    return torch.cartesian_prod(ys, xs).view(1, grid_h * grid_w, 2)
