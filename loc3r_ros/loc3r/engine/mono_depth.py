"""A monocular depth network for the embedded default's geometric pose source (ours).

The geometric pose source (loc3r.engine.perception) scales its translations and states every
patch's 3D point with the depth of each frame. The official path takes that depth from CUT3R's
pointmap. The embedded tiny CUT3R (64 px, 8x8 patches) stops at a median depth error of about
20 % on held-out rooms, and more CPU steps, pixels or encoder width did not move it
(docs/experiments.md). A small convolutional U-Net sees the same pre-processed frame at
`image_size` and gets under that within minutes of CPU training (`loc3r.train.train_depth`).

A bundle that ships one (`depth/`, bundle.json "depth_source": "mono_depth") has its depth put
into CUT3R's pointmap along CUT3R's own rays (`MonoDepth.rescale_pointmap`), so the focal
length, the odometry and the geometry tokens read it unchanged. The official path stays pure
CUT3R.

Saved as config.json + model.safetensors (`save_mono_depth` / `load_mono_depth`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import load_file, save_file
from torch import nn

from loc3r.cut3r.preprocess import PreprocessedFrame, preprocess_frame

FORMAT = "loc3r_mono_depth"
MIN_DEPTH_M = 0.05  # log-depth outputs are clamped to [MIN_DEPTH_M, MAX_DEPTH_M]
MAX_DEPTH_M = 50.0


@dataclass(frozen=True)
class MonoDepthConfig:
    """Sizes of the network; its input is a frame pre-processed as CUT3R's (long side)."""

    # long side of the pre-processed input (a multiple of 16); 224 is CUT3R's square crop instead
    # (short side 224, centre-cropped: loc3r.cut3r.preprocess), the same at training and inference
    image_size: int = 128
    widths: tuple[int, ...] = (24, 48, 64, 96, 128)  # channels at 1/2, 1/4, ... of the input

    def __post_init__(self) -> None:
        if self.image_size < 32 or self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16 >= 32, got {self.image_size}")
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"widths must be at least two positive sizes, got {self.widths}")

    @classmethod
    def from_dict(cls, values: dict) -> MonoDepthConfig:
        """The config saved in config.json (ValueError when it is not one)."""
        if values.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} config (format {values.get('format')!r})")
        try:
            widths = tuple(int(width) for width in values["widths"])
            return cls(image_size=int(values["image_size"]), widths=widths)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"a {FORMAT} config needs image_size and widths: {exc}") from exc


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.first = _conv(width, width)
        self.second = nn.Sequential(
            nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.second(self.first(x)))


class MonoDepth(nn.Module):
    """A U-Net from an RGB frame in [-1, 1] to its z-depth (metres) at half its resolution.

    The encoder halves the resolution at every width; a global context vector (the mean of the
    deepest features through an MLP: the room's scale) is added back before the decoder climbs
    to half resolution through skip connections.
    """

    def __init__(self, config: MonoDepthConfig | None = None) -> None:
        super().__init__()
        self.config = config or MonoDepthConfig()
        w = self.config.widths
        self.stem = nn.Sequential(_conv(3, w[0], 2), _Residual(w[0]))
        self.down = nn.ModuleList(
            nn.Sequential(_conv(w[i], w[i + 1], 2), _Residual(w[i + 1]), _Residual(w[i + 1]))
            for i in range(len(w) - 1)
        )
        self.context = nn.Sequential(nn.Linear(w[-1], w[-1]), nn.ReLU(), nn.Linear(w[-1], w[-1]))
        self.up = nn.ModuleList(
            nn.Sequential(_conv(w[i + 1] + w[i], w[i]), _Residual(w[i]))
            for i in reversed(range(len(w) - 1))
        )
        self.head = nn.Conv2d(w[0], 1, 3, 1, 1)

    def log_depth(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, H / 2, W / 2) natural log of z-depth in metres."""
        skips = [self.stem(images)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        x = skips.pop()
        x = x + self.context(x.mean((2, 3)))[..., None, None]
        for stage in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], 1))
        return self.head(x)[:, 0].clamp(np.log(MIN_DEPTH_M), np.log(MAX_DEPTH_M))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, H, W) z-depth in metres."""
        log_z = self.log_depth(images)[:, None]
        size = images.shape[-2:]
        return F.interpolate(log_z, size=size, mode="bilinear", align_corners=False)[:, 0].exp()

    @torch.inference_mode()
    def frame_depth(self, image: np.ndarray) -> tuple[np.ndarray, PreprocessedFrame]:
        """The z-depth of an RGB uint8 image, on its pre-processed crop at `image_size`."""
        frame = preprocess_frame(image, size=self.config.image_size)
        parameter = next(self.parameters())
        images = frame.image.to(device=parameter.device, dtype=parameter.dtype)
        return self(images)[0].float().cpu().numpy(), frame

    def rescale_pointmap(
        self, image: np.ndarray, points_self: np.ndarray, frame: PreprocessedFrame
    ) -> np.ndarray:
        """CUT3R's (h, w, 3) pointmap of `frame` moved along its rays to this network's depth.

        Pixels where CUT3R's z is not positive keep CUT3R's point.
        """
        depth, own = self.frame_depth(image)
        z = resample_depth(depth, own, frame, points_self.shape[:2])
        cut3r_z = points_self[..., 2]
        good = np.isfinite(cut3r_z) & (cut3r_z > 1e-6) & np.isfinite(z)
        ratio = np.where(good, z / np.where(good, cut3r_z, 1.0), 1.0)
        return points_self * ratio[..., None]


def resample_depth(
    depth: np.ndarray,
    source: PreprocessedFrame,
    target: PreprocessedFrame,
    target_hw: tuple[int, int],
) -> np.ndarray:
    """A depth map on `source`'s crop, sampled at the pixel centres of a (h, w) map on `target`'s.

    Both crops come from the same image; the map goes through the image's pixel coordinates.
    Pixels of `target` more than half a depth pixel outside `source`'s crop are NaN: the network
    never saw them (a wider CUT3R crop keeps its own points there).
    """
    height, width = target_hw
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    crop_h, crop_w = target.true_shape
    # target map pixels -> target crop pixels -> the image's pixels
    x = (cols * crop_w / width + target.crop_xy[0]) * target.original_hw[1] / target.resized_hw[1]
    y = (rows * crop_h / height + target.crop_xy[1]) * target.original_hw[0] / target.resized_hw[0]
    # the image's pixels -> source crop pixels -> depth map pixels
    scale_x = depth.shape[1] / source.true_shape[1]
    scale_y = depth.shape[0] / source.true_shape[0]
    u = (x * source.resized_hw[1] / source.original_hw[1] - source.crop_xy[0]) * scale_x - 0.5
    v = (y * source.resized_hw[0] / source.original_hw[0] - source.crop_xy[1]) * scale_y - 0.5
    sampled = cv2.remap(
        depth.astype(np.float32), u.astype(np.float32), v.astype(np.float32),
        cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip
    # replicate only within half a pixel of the map's edge (its outer pixel centres), else unseen
    inside = (u >= -0.5) & (u <= depth.shape[1] - 0.5) & (v >= -0.5) & (v <= depth.shape[0] - 0.5)
    return np.where(inside, sampled, np.float32(np.nan))


def save_mono_depth(model: MonoDepth, directory: str | Path) -> Path:
    """Write config.json and model.safetensors (float32) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, **asdict(model.config)}
    config["widths"] = list(model.config.widths)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, directory / "model.safetensors", metadata={"format": FORMAT})
    return directory


def read_mono_depth_config(directory: str | Path) -> MonoDepthConfig:
    """The sizes of a saved network (its config.json alone). ValueError for a missing or bad one."""
    directory = Path(directory)
    try:
        values = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the depth network in {directory}: {exc}") from exc
    if not isinstance(values, dict):
        raise ValueError(f"{directory}/config.json is not a JSON object")
    return MonoDepthConfig.from_dict(values)


def load_mono_depth(directory: str | Path, device: str | torch.device = "cpu") -> MonoDepth:
    """A saved network, in eval mode without gradients. ValueError for a missing or bad one."""
    directory = Path(directory)
    config = read_mono_depth_config(directory)
    try:
        state = load_file(directory / "model.safetensors")
    except OSError as exc:
        raise ValueError(f"cannot read the depth network in {directory}: {exc}") from exc
    except Exception as exc:  # safetensors raises its own error for a corrupt file
        raise ValueError(f"corrupt depth network weights in {directory}: {exc}") from exc
    model = MonoDepth(config)
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise ValueError(f"{directory}: the depth network's weights lack {name}")
        if state[name].shape != tensor.shape:
            raise ValueError(
                f"{directory}: {name} is {tuple(state[name].shape)}, expected {tuple(tensor.shape)}"
            )
    if unexpected := sorted(set(state) - set(expected)):
        raise ValueError(f"{directory}: unexpected depth network weights {unexpected[:3]}")
    if broken := [name for name, tensor in state.items() if not torch.isfinite(tensor).all()]:
        raise ValueError(f"{directory}: non-finite depth network weights in {broken[:3]}")
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state)
    return model.to(device).eval().requires_grad_(False)
