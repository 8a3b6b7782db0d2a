"""Reading camera frames from a video file or a folder of images (CLI, frame player, tests).

Frames come out as (H, W, 3) uint8 RGB with a timestamp in nanoseconds: the video's own clock
(frame index / fps), or `index / fallback_fps` for image folders and videos without a rate.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from loc3r.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class FrameRecord:
    """One frame read from a source."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    stamp_ns: int
    index: int  # position in the source
    name: str  # file name, or "<video>#<index>"


def iter_frames(
    source: str | Path, *, fallback_fps: float = 10.0, stride: int = 1
) -> Iterator[FrameRecord]:
    """Yield every `stride`-th frame of a folder of images (name order) or a video file.

    Raises InputError for a missing source, an empty folder, or a video that cannot be opened
    or has no decodable frame. Unreadable images in a folder are skipped (see `read_frames`).
    """
    if stride < 1:
        raise InputError(f"stride must be >= 1, got {stride}")
    path = Path(source)
    period_ns = int(1e9 / fallback_fps)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        for index, file in enumerate(files):
            if index % stride:
                continue
            bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if bgr is None:
                continue
            yield FrameRecord(
                cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index * period_ns, index, file.name
            )
        return
    if not path.is_file():
        raise InputError(f"no such video file or image folder: {path}")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InputError(f"cannot open video {path} (corrupt or unsupported format)")
    fps = capture.get(cv2.CAP_PROP_FPS)
    period_ns = int(1e9 / fps) if fps and np.isfinite(fps) and fps > 0 else period_ns
    decoded = 0
    try:
        index = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            decoded += 1
            if index % stride == 0:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                yield FrameRecord(rgb, index * period_ns, index, f"{path.name}#{index}")
            index += 1
    finally:
        capture.release()
    if decoded == 0:
        raise InputError(f"video {path} has no decodable frame (corrupt or empty)")


def read_frames(
    source: str | Path, *, max_frames: int | None = None, fallback_fps: float = 10.0
) -> list[FrameRecord]:
    """All frames of a source, or `max_frames` of them sampled uniformly over it."""
    frames = list(iter_frames(source, fallback_fps=fallback_fps))
    if not frames:
        raise InputError(f"no readable frame in {source}")
    if max_frames is not None and len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in keep]
    return frames
