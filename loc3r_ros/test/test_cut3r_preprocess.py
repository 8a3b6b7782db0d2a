"""CUT3R pre-processing: the official resize/crop/normalise rules and input formats."""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from loc3r.cut3r import Cut3rInputError, preprocess_frame


def _image(height, width, seed=0):
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xx * 3 + yy) % 256, (yy * 5) % 256, ((xx + yy) * 7 + seed) % 256], axis=-1)
    return rgb.astype(np.uint8)


def _official_like_pil(rgb, size, square_ok=False):
    """Independent re-statement of the documented official rules with PIL (for the test)."""
    img = Image.fromarray(rgb)
    w1, h1 = img.size
    long_edge = round(size * max(w1 / h1, h1 / w1)) if size == 224 else size
    s = max(img.size)
    interp = Image.Resampling.LANCZOS if s > long_edge else Image.Resampling.BICUBIC
    img = img.resize(tuple(int(round(x * long_edge / s)) for x in img.size), interp)
    w, h = img.size
    cx, cy = w // 2, h // 2
    if size == 224:
        half = min(cx, cy)
        img = img.crop((cx - half, cy - half, cx + half, cy + half))
    else:
        hw, hh = ((2 * cx) // 16) * 8, ((2 * cy) // 16) * 8
        if not square_ok and w == h:
            hh = 3 * hw / 4
        img = img.crop((cx - hw, cy - hh, cx + hw, cy + hh))
    arr = np.asarray(img).astype(np.float32)
    return torch.from_numpy((arr / 255 - 0.5) / 0.5).permute(2, 0, 1)


@pytest.mark.parametrize(
    ("hw", "size", "expected"),
    [
        ((480, 640), 512, (384, 512)),
        ((640, 480), 512, (512, 384)),
        ((500, 500), 512, (384, 512)),
        ((720, 1280), 512, (288, 512)),
        ((480, 640), 224, (224, 224)),
        ((300, 200), 224, (224, 224)),
        ((100, 150), 512, (336, 512)),
    ],
)
def test_official_geometry_and_values(hw, size, expected):
    rgb = _image(*hw)
    out = preprocess_frame(rgb, size=size)
    assert out.true_shape == expected
    assert out.image.shape == (1, 3, *expected) and out.image.dtype == torch.float32
    assert torch.equal(out.image[0], _official_like_pil(rgb, size))
    assert out.original_hw == hw


def test_square_ok_keeps_square():
    out = preprocess_frame(_image(512, 512), size=512, square_ok=True)
    assert out.true_shape == (512, 512)


def test_channel_formats_agree():
    rgb = _image(64, 96)
    ref = preprocess_frame(rgb, size=96).image
    bgr = rgb[:, :, ::-1].copy()
    assert torch.equal(preprocess_frame(bgr, size=96, bgr=True).image, ref)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    assert torch.equal(preprocess_frame(rgba, size=96).image, ref)
    bgra = np.dstack([bgr, np.full(rgb.shape[:2], 200, np.uint8)])
    assert torch.equal(preprocess_frame(bgra, size=96, bgr=True).image, ref)
    gray = rgb[:, :, 1].copy()
    out_gray = preprocess_frame(gray, size=96).image
    assert torch.equal(out_gray[0, 0], out_gray[0, 2])
    assert torch.equal(preprocess_frame(gray[:, :, None], size=96).image, out_gray)
    assert float(ref.min()) >= -1 and float(ref.max()) <= 1


def test_opencv_backend_close_to_pil():
    rgb = cv2.GaussianBlur(_image(480, 640), (9, 9), 3)
    pil = preprocess_frame(rgb, size=512).image
    ocv = preprocess_frame(rgb, size=512, resize_backend="opencv").image
    assert pil.shape == ocv.shape
    assert float((pil - ocv).abs().mean()) < 0.05


def test_bad_inputs():
    with pytest.raises(Cut3rInputError, match="uint8"):
        preprocess_frame(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(Cut3rInputError, match="HxW"):
        preprocess_frame(np.zeros((32, 32, 2), np.uint8))
    with pytest.raises(Cut3rInputError, match="numpy"):
        preprocess_frame([[0]])
    with pytest.raises(Cut3rInputError, match="resize_backend"):
        preprocess_frame(_image(32, 32), resize_backend="magic")
    with pytest.raises(Cut3rInputError, match="too small"):
        preprocess_frame(_image(4, 200), size=512)
