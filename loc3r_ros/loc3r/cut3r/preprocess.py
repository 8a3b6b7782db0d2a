"""Image pre-processing equal to the official CUT3R `load_images` (demo.py path).

Official steps on an RGB image of W1 x H1 pixels:
- size == 224: resize so the SHORT side becomes 224 (long side = round(224 * max(W1/H1, H1/W1))),
  then centre-crop a square of side 2 * min(W // 2, H // 2);
- otherwise (512): resize so the LONG side becomes `size`, then centre-crop to multiples of 16
  (half sizes ((2 * cx) // 16) * 8); a square result becomes 4:3 unless `square_ok`;
- resize filter (PIL): LANCZOS when shrinking, BICUBIC otherwise; new size = round(x * L / S);
- ToTensor + Normalize(mean 0.5, std 0.5): float32 (u8 / 255 - 0.5) / 0.5 in [-1, 1].
`resize_backend="pil"` (default) reproduces these bytes exactly. `"opencv"` uses cv2.INTER_AREA
(shrink) / INTER_CUBIC (enlarge): not bit-identical to PIL's filters (differences of a few grey
levels), but avoids PIL in a pipeline. Identity resizes are identical in both. Colour/alpha/grey
conversion always uses OpenCV (alpha is dropped, not composited, as PIL's convert("RGB")).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from loc3r.cut3r.errors import Cut3rInputError


@dataclass
class PreprocessedFrame:
    """A frame ready for `Cut3r.step`, plus how it maps back to the raw image."""

    image: torch.Tensor  # (1, 3, H, W) float32 in [-1, 1]
    true_shape: tuple[int, int]  # (H, W) of `image`
    original_hw: tuple[int, int]  # (H1, W1) of the input image
    resized_hw: tuple[int, int]  # (H, W) after resizing, before cropping
    crop_xy: tuple[int, int]  # (x0, y0) of the crop in the resized image


def to_rgb_uint8(image: np.ndarray, bgr: bool = False) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 uint8 (RGB, or BGR when `bgr`) -> HxWx3 uint8 RGB."""
    if not isinstance(image, np.ndarray):
        raise Cut3rInputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise Cut3rInputError(f"image must be uint8, got {image.dtype} (convert it first)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.ndim == 3 and image.shape[2] == 3:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else image
    elif image.ndim == 3 and image.shape[2] == 4:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    else:
        raise Cut3rInputError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got {image.shape}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise Cut3rInputError(f"empty image of shape {image.shape}")
    return np.ascontiguousarray(rgb)


def _resize(rgb: np.ndarray, long_edge: int, backend: str) -> np.ndarray:
    height, width = rgb.shape[:2]
    longest = max(width, height)
    new_w = int(round(width * long_edge / longest))
    new_h = int(round(height * long_edge / longest))
    if (new_w, new_h) == (width, height):
        return rgb
    shrinking = longest > long_edge
    if backend == "pil":
        resample = Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC
        return np.asarray(Image.fromarray(rgb).resize((new_w, new_h), resample))
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(rgb, (new_w, new_h), interpolation=interpolation)


def preprocess_frame(
    image: np.ndarray,
    size: int = 512,
    *,
    bgr: bool = False,
    square_ok: bool = False,
    patch_size: int = 16,
    resize_backend: str = "pil",
) -> PreprocessedFrame:
    """Resize/crop/normalise one image like the official loader (see module docstring).

    Args:
        image: HxW / HxWx1 / HxWx3 / HxWx4 uint8 array (RGB order unless `bgr`).
        size: 224 (short side 224, square crop) or the long side (512 for the DPT model).
        bgr: the colour channels are in OpenCV's BGR(A) order.
        square_ok: keep square crops square (official default False: square -> 4:3).
        patch_size: crop granularity (16 for the released models).
        resize_backend: "pil" (exact official filters) or "opencv".
    """
    if resize_backend not in ("pil", "opencv"):
        raise Cut3rInputError(f"resize_backend must be 'pil' or 'opencv', got {resize_backend!r}")
    if size < patch_size:
        raise Cut3rInputError(f"size {size} is smaller than the patch size {patch_size}")
    rgb = to_rgb_uint8(image, bgr=bgr)
    height1, width1 = rgb.shape[:2]
    if size == 224:
        long_edge = round(size * max(width1 / height1, height1 / width1))
    else:
        long_edge = size
    resized = _resize(rgb, long_edge, resize_backend)
    height, width = resized.shape[:2]
    cx, cy = width // 2, height // 2
    if size == 224:
        half_w = half_h = min(cx, cy)
    else:
        half = patch_size // 2
        half_w, half_h = ((2 * cx) // patch_size) * half, ((2 * cy) // patch_size) * half
        if not square_ok and width == height:
            half_h = int(round(3 * half_w / 4))
    x0, y0 = cx - half_w, cy - half_h
    cropped = resized[y0 : cy + half_h, x0 : cx + half_w]
    if cropped.shape[0] < patch_size or cropped.shape[1] < patch_size:
        raise Cut3rInputError(f"image {height1}x{width1} is too small for size {size}")
    tensor = torch.from_numpy(np.array(cropped, copy=True)).permute(2, 0, 1).float()
    tensor = tensor.div(255).sub(0.5).div(0.5)[None]
    return PreprocessedFrame(
        image=tensor,
        true_shape=(int(cropped.shape[0]), int(cropped.shape[1])),
        original_hw=(height1, width1),
        resized_hw=(height, width),
        crop_xy=(x0, y0),
    )
