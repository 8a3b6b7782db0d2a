"""Prediction heads of CUT3R: pose head, linear (pixel-shuffle) head and pose-conditioned DPT head.

All heads take the decoder outputs `layers` = [enc (B, N, Ce), dec_a (B, N, Cd), dec_b (B, N, Cd),
dec_last (B, 1 + N, Cd)] (dec_last still holds the camera token at index 0) plus the image size and
the patch positions, and return a `HeadOutput` (all float32, autocast off, as in the official code).
Point maps are (B, H, W, 3) in metres; confidences (B, H, W) >= vmin; the pose is a 7-vector
(translation xyz, unit quaternion w, x, y, z with w >= 0) = camera-to-world.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from loc3r.cut3r.blocks import Mlp, ModulatedBlock
from loc3r.cut3r.config import Cut3rConfig
from loc3r.cut3r.rope import RoPE2D

DPT_FEATURE_DIM = 256  # hard-coded in the official DPT head
DPT_LAYER_DIMS = (96, 192, 384, 768)


@dataclass
class HeadOutput:
    """Raw per-frame predictions of a head (float32)."""

    pts3d_self: torch.Tensor  # (B, H, W, 3) points in the frame's own camera, metres
    conf_self: torch.Tensor  # (B, H, W)
    pts3d_world: torch.Tensor  # (B, H, W, 3) points in the first camera's frame, metres
    conf_world: torch.Tensor  # (B, H, W)
    pose_encoding: torch.Tensor  # (B, 7) camera-to-world: t (3), quaternion wxyz (4)
    rgb: torch.Tensor | None  # (B, H, W, 3) in [-1, 1]


# ---------------------------------------------------------------------------- post-processing
def regress_points(
    xyz: torch.Tensor, mode: tuple[str, float, float], force_positive_z: bool = False
) -> torch.Tensor:
    """(B, H, W, 3) raw -> points: direction * f(norm) with f = expm1 ('exp') or square."""
    name = mode[0]
    if name == "linear":
        return xyz
    if force_positive_z:
        xyz = xyz * torch.sign(xyz[..., -1:])
    norm = xyz.norm(dim=-1, keepdim=True)
    direction = xyz / norm.clip(min=1e-8)
    if name == "square":
        return direction * norm.square()
    return direction * torch.expm1(norm)


def regress_confidence(x: torch.Tensor, mode: tuple[str, float, float]) -> torch.Tensor:
    """Raw (B, H, W) -> confidence in [vmin, vmax]."""
    name, vmin, vmax = mode
    if name == "exp":
        return vmin + x.exp().clip(max=vmax - vmin)
    return (vmax - vmin) * torch.sigmoid(x) + vmin


def regress_rgb(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Raw (B, H, W, 3) -> colour in [-1, 1]."""
    return (torch.sigmoid(x) * (1 - 2 * eps) + eps - 0.5) * 2


def regress_pose(raw: torch.Tensor, mode: tuple[str, float, float]) -> torch.Tensor:
    """Raw (B, 7) -> translation scaled by expm1(|t|)/|t| (or |t|) + standardised quaternion."""
    trans, quat = raw[..., 0:3], raw[..., 3:7]
    norm = trans.norm(dim=-1, keepdim=True)
    if mode[0] == "square":
        scale = norm.square() / norm.clip(min=1e-8)
    else:
        scale = torch.expm1(norm) / norm.clip(min=1e-8)
    quat = F.normalize(quat, p=2, dim=-1)
    quat = torch.where(quat[..., 0:1] < 0, -quat, quat)
    return torch.cat([trans * scale, quat], dim=-1)


def pose_encoding_to_c2w(encoding: torch.Tensor) -> torch.Tensor:
    """(B, 7) [t, q_wxyz] -> (B, 4, 4) camera-to-world matrices (float math as the reference)."""
    quat = encoding[:, 3:7]
    r, i, j, k = torch.unbind(quat, -1)
    two_s = 2.0 / (quat * quat).sum(-1)
    rot = torch.stack(
        (
            1 - two_s * (j * j + k * k),
            two_s * (i * j - k * r),
            two_s * (i * k + j * r),
            two_s * (i * j + k * r),
            1 - two_s * (i * i + k * k),
            two_s * (j * k - i * r),
            two_s * (i * k - j * r),
            two_s * (j * k + i * r),
            1 - two_s * (i * i + j * j),
        ),
        -1,
    ).reshape(-1, 3, 3)
    c2w = torch.eye(4, dtype=rot.dtype, device=rot.device).repeat(len(rot), 1, 1)
    c2w[:, :3, :3] = rot
    c2w[:, :3, 3] = encoding[:, :3]
    return c2w


def _split_points_conf(
    fmap: torch.Tensor, config: Cut3rConfig, force_positive_z: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 4, H, W) raw map -> points (B, H, W, 3), confidence (B, H, W)."""
    fmap = fmap.permute(0, 2, 3, 1)
    points = regress_points(fmap[..., 0:3], config.depth_mode, force_positive_z)
    return points, regress_confidence(fmap[..., 3], config.conf_mode)


# ------------------------------------------------------------------------------------ heads
class PoseHead(nn.Module):
    """Camera token (B, Cd) -> raw 7-vector through an MLP Cd -> 4 Cd -> 7."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = Mlp(dim, 4 * dim, 7)

    def forward(self, camera_token: torch.Tensor) -> torch.Tensor:
        """(B, Cd) -> (B, 7) raw."""
        return self.mlp(camera_token)


def _camera_conditioned_blocks(config: Cut3rConfig, rope: RoPE2D) -> nn.ModuleList:
    return nn.ModuleList(
        [ModulatedBlock(config.dec_embed_dim, config.dec_num_heads, 4.0, rope) for _ in range(2)]
    )


class LinearHead(nn.Module):
    """Per-token MLPs whose outputs are pixel-shuffled into full-resolution maps."""

    def __init__(self, config: Cut3rConfig, rope: RoPE2D) -> None:
        super().__init__()
        self.config = config
        dim, patch = config.dec_embed_dim, config.patch_size
        hidden = int(config.mlp_ratio * dim)
        self.proj = Mlp(dim, hidden, 4 * patch**2)
        if config.rgb_head:
            self.rgb_proj = Mlp(dim, hidden, 3 * patch**2)
        self.pose_head = PoseHead(dim)
        self.final_transform = _camera_conditioned_blocks(config, rope)
        self.cross_proj = Mlp(dim, hidden, 4 * patch**2)

    def _to_map(self, values: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, N, C * p^2) -> (B, C, H, W)."""
        patch = self.config.patch_size
        batch = values.shape[0]
        grid = values.transpose(-1, -2).reshape(batch, -1, height // patch, width // patch)
        return F.pixel_shuffle(grid, patch)

    def forward(
        self, layers: list[torch.Tensor], image_hw: tuple[int, int], pos: torch.Tensor
    ) -> HeadOutput:
        """See module docstring; pos: (B, N, 2) patch positions."""
        height, width = image_hw
        last = layers[-1].float()
        camera_token, tokens = last[:, 0], last[:, 1:]
        with torch.autocast(device_type=last.device.type, enabled=False):
            raw_pose = self.pose_head(camera_token)
        cross_tokens = tokens
        for block in self.final_transform:
            cross_tokens = block(cross_tokens, camera_token, pos)
        with torch.autocast(device_type=last.device.type, enabled=False):
            tokens, cross_tokens = tokens.float(), cross_tokens.float()
            self_map = self._to_map(self.proj(tokens), height, width)
            pts_self, conf_self = _split_points_conf(self_map, self.config, True)
            rgb = None
            if self.config.rgb_head:
                rgb_map = self._to_map(self.rgb_proj(tokens), height, width)
                rgb = regress_rgb(rgb_map.permute(0, 2, 3, 1))
            cross_map = self._to_map(self.cross_proj(cross_tokens), height, width)
            pts_world, conf_world = _split_points_conf(cross_map, self.config, False)
            pose = regress_pose(raw_pose.float(), self.config.pose_mode)
        return HeadOutput(pts_self, conf_self, pts_world, conf_world, pose, rgb)


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x))))."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, h, w) -> same shape."""
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FusionBlock(nn.Module):
    """Adds a residual-refined skip input, refines, upsamples x2 (bilinear, corners), 1x1 conv."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)  # noqa: N815 (official name)
        self.resConfUnit2 = ResidualConvUnit(features)  # noqa: N815 (official name)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """(B, F, h, w) [+ skip of the same size] -> (B, F, 2h, 2w)."""
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Scratch(nn.Module):
    """Container keeping the official module names (layerK_rn and the aliasing layer_rn list)."""

    def __init__(self, in_dims: tuple[int, ...], features: int) -> None:
        super().__init__()
        convs = [nn.Conv2d(d, features, 3, padding=1, bias=False) for d in in_dims]
        self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn = convs
        self.layer_rn = nn.ModuleList(convs)  # same modules: the state_dict lists both names
        self.refinenet1 = FusionBlock(features)
        self.refinenet2 = FusionBlock(features)
        self.refinenet3 = FusionBlock(features)
        self.refinenet4 = FusionBlock(features)


class DptAdapter(nn.Module):
    """DPT decoder: 4 token maps at 1/16 -> reassembled at 1/4, 1/8, 1/16, 1/32 -> fused -> full."""

    def __init__(self, token_dims: tuple[int, int, int, int], out_channels: int) -> None:
        super().__init__()
        d1, d2, d3, d4 = DPT_LAYER_DIMS
        feat = DPT_FEATURE_DIM
        self.act_postprocess = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(token_dims[0], d1, 1), nn.ConvTranspose2d(d1, d1, 4, 4)),
                nn.Sequential(nn.Conv2d(token_dims[1], d2, 1), nn.ConvTranspose2d(d2, d2, 2, 2)),
                nn.Sequential(nn.Conv2d(token_dims[2], d3, 1)),
                nn.Sequential(
                    nn.Conv2d(token_dims[3], d4, 1), nn.Conv2d(d4, d4, 3, stride=2, padding=1)
                ),
            ]
        )
        self.scratch = _Scratch(DPT_LAYER_DIMS, feat)
        self.head = nn.Sequential(
            nn.Conv2d(feat, feat // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(feat // 2, feat // 2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(feat // 2, out_channels, 1),
        )

    def forward(
        self, layers: list[torch.Tensor], image_hw: tuple[int, int], patch: int
    ) -> torch.Tensor:
        """layers: 4 x (B, N, C_i) patch tokens -> (B, out_channels, H, W)."""
        grid_h, grid_w = image_hw[0] // patch, image_hw[1] // patch
        maps = []
        for idx, tokens in enumerate(layers):
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid_h, grid_w)
            grid = self.act_postprocess[idx](grid)
            maps.append(self.scratch.layer_rn[idx](grid))
        path = self.scratch.refinenet4(maps[3])[:, :, : maps[2].shape[2], : maps[2].shape[3]]
        path = self.scratch.refinenet3(path, maps[2])
        path = self.scratch.refinenet2(path, maps[1])
        path = self.scratch.refinenet1(path, maps[0])
        return self.head(path)


class DptHead(nn.Module):
    """Three DPT decoders (own-view points, world points after camera conditioning, rgb)."""

    def __init__(self, config: Cut3rConfig, rope: RoPE2D) -> None:
        super().__init__()
        self.config = config
        enc, dec = config.enc_embed_dim, config.dec_embed_dim
        dims = (enc, dec, dec, dec)
        self.dpt_self = DptAdapter(dims, 4)
        self.final_transform = _camera_conditioned_blocks(config, rope)
        self.dpt_cross = DptAdapter(dims, 4)
        if config.rgb_head:
            self.dpt_rgb = DptAdapter(dims, 3)
        self.pose_head = PoseHead(dec)

    def forward(
        self, layers: list[torch.Tensor], image_hw: tuple[int, int], pos: torch.Tensor
    ) -> HeadOutput:
        """See module docstring; pos: (B, N, 2) patch positions."""
        layers = [t.float() for t in layers]
        camera_token, tokens = layers[-1][:, 0], layers[-1][:, 1:]
        device_type = camera_token.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            raw_pose = self.pose_head(camera_token)
        cross_tokens = tokens
        for block in self.final_transform:
            cross_tokens = block(cross_tokens, camera_token, pos)
        self_layers = [*layers[:-1], tokens]
        cross_layers = [*layers[:-1], cross_tokens]
        patch = self.config.patch_size
        with torch.autocast(device_type=device_type, enabled=False):
            self_layers = [t.float() for t in self_layers]
            cross_layers = [t.float() for t in cross_layers]
            self_map = self.dpt_self(self_layers, image_hw, patch)
            pts_self, conf_self = _split_points_conf(self_map, self.config, False)
            rgb = None
            if self.config.rgb_head:
                rgb = regress_rgb(self.dpt_rgb(self_layers, image_hw, patch).permute(0, 2, 3, 1))
            pose = regress_pose(raw_pose.float(), self.config.pose_mode)
            cross_map = self.dpt_cross(cross_layers, image_hw, patch)
            pts_world, conf_world = _split_points_conf(cross_map, self.config, False)
        return HeadOutput(pts_self, conf_self, pts_world, conf_world, pose, rgb)


def build_head(config: Cut3rConfig, rope: RoPE2D) -> nn.Module:
    """The head named by `config.head_type`."""
    if config.head_type == "linear":
        return LinearHead(config, rope)
    return DptHead(config, rope)
