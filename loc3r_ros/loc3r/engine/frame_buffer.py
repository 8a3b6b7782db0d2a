"""Frame intake: keyframe selection and a bounded, thread-safe keyframe store.

The camera callback calls `KeyframeBuffer.offer` for every image. It does O(1) work on a
32x32 thumbnail (no model, no copy of rejected frames), so ingest never blocks the caller.
A frame becomes a keyframe when enough time has passed and the view changed enough, or when
`max_interval_s` passed and the view is not a near-duplicate of the last keyframe (a still
camera keeps one keyframe, not a buffer full of copies of it). When the buffer is full, the
interior keyframe whose removal leaves the smallest time gap is dropped (never the first or the
newest), so an hours-long stream keeps roughly uniform coverage of its whole history in bounded
memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from loc3r.errors import InputError

THUMB_SIZE = 32


@dataclass
class KeyframeConfig:
    """Keyframe selection and memory bounds."""

    min_interval_s: float = 0.25  # never two keyframes closer than this (camera time)
    max_interval_s: float = 2.0  # take a keyframe after this long unless it is a duplicate
    min_change: float = 0.03  # mean abs thumbnail difference (0..1) that counts as motion
    duplicate_change: float = 0.01  # below this the view is a copy of the last keyframe (sensor
    # noise: sigma 3 grey levels gives ~0.002); 0 (or min_change 0) keeps every max_interval_s one
    capacity: int = 64  # keyframes kept; on overflow the most redundant one is dropped
    max_side: int = 512  # keyframe images are stored downscaled to this long side (pixels)

    def __post_init__(self) -> None:
        if self.min_interval_s < 0 or self.max_interval_s <= 0:
            raise ValueError("keyframe intervals must be positive")
        if self.max_interval_s < self.min_interval_s:
            raise ValueError("max_interval_s must be >= min_interval_s")
        if not 0.0 <= self.min_change <= 1.0:
            raise ValueError("min_change must lie in [0, 1]")
        if not 0.0 <= self.duplicate_change <= 1.0:
            raise ValueError("duplicate_change must lie in [0, 1]")
        if self.capacity < 2:
            raise ValueError("capacity must be at least 2")
        if self.max_side < 16:
            raise ValueError("max_side must be at least 16")


@dataclass
class Keyframe:
    """One selected camera frame and what perception attached to it."""

    index: int  # running keyframe number since the last reset
    stamp_ns: int  # camera timestamp, nanoseconds
    image: np.ndarray  # (H, W, 3) uint8 RGB
    thumb: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.float32))
    perception: object | None = None  # filled by the perception worker (CUT3R output)


def sample_uniform(count: int, available: int) -> list[int]:
    """`count` indices spread uniformly over range(available), first and last included.

    How a query picks its frames from the keyframes (and a synthetic room scan its frames).
    """
    if available <= count:
        return list(range(available))
    return sorted(set(np.linspace(0, available - 1, count).round().astype(int).tolist()))


def validate_image(image: np.ndarray, min_side: int = 16) -> np.ndarray:
    """Check an RGB frame: (H, W, 3) uint8 with H, W >= min_side. Returns it contiguous."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image must have shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise InputError(f"image must be uint8, got {image.dtype}")
    if image.shape[0] < min_side or image.shape[1] < min_side:
        raise InputError(
            f"image is too small: {image.shape[1]}x{image.shape[0]} (minimum {min_side}x{min_side})"
        )
    return np.ascontiguousarray(image)


def thumbnail(image: np.ndarray) -> np.ndarray:
    """A 32x32 grey thumbnail in [0, 1], the motion proxy used before any 3D model runs.

    The image is first decimated by an integer stride to about 64 px (a view, ~0.05 ms for VGA).
    """
    stride = max(1, min(image.shape[:2]) // 64)
    grey = cv2.cvtColor(np.ascontiguousarray(image[::stride, ::stride]), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


class KeyframeBuffer:
    """Bounded, thread-safe store of keyframes with time- and motion-based selection."""

    def __init__(self, config: KeyframeConfig | None = None) -> None:
        self.config = config or KeyframeConfig()
        self._lock = threading.Lock()
        self._frames: list[Keyframe] = []
        self._next_index = 0
        self._min_interval_ns = int(self.config.min_interval_s * 1e9)
        self.offered = 0
        self.rejected_invalid = 0
        self.duplicates = 0  # frames past max_interval_s that only repeated the last keyframe
        self.version = 0  # bumps on every change of the keyframe set

    def offer(
        self,
        image: np.ndarray,
        stamp_ns: int,
        full: Callable[[], np.ndarray] | None = None,
    ) -> Keyframe | None:
        """Consider a frame; return the new Keyframe if it was selected, else None.

        With `full`, `image` may be a cheap low-resolution preview (e.g. a JPEG decoded at 1/4
        size) used only for selection; `full()` gives the real image, called only for frames
        that become keyframes (lazy decoding). Raises InputError for a malformed image (counted
        in `rejected_invalid`).
        """
        try:
            image = validate_image(
                image, min_side=1 if full is not None else 16
            )  # previews are small
        except InputError:
            with self._lock:
                self.offered += 1
                self.rejected_invalid += 1
            raise
        with self._lock:
            self.offered += 1
            last = self._frames[-1] if self._frames else None
            thumb = None  # computed only for frames past the interval check (most are not)
            if last is not None:
                dt = stamp_ns - last.stamp_ns
                if dt < 0:  # time went backwards (bag loop, sim reset): start a new scene
                    self._clear_locked()
                elif dt < self._min_interval_ns:
                    return None
                else:
                    thumb = thumbnail(image)
                    change = float(np.mean(np.abs(thumb - last.thumb)))
                    if dt < self.config.max_interval_s * 1e9 and change < self.config.min_change:
                        return None
                    if change < min(self.config.duplicate_change, self.config.min_change):
                        self.duplicates += 1
                        return None
            if thumb is None:
                thumb = thumbnail(image)
            if full is not None:
                try:
                    image = validate_image(full())
                except InputError:
                    self.rejected_invalid += 1
                    raise
            keyframe = Keyframe(self._next_index, int(stamp_ns), self._stored(image), thumb)
            self._next_index += 1
            self._frames.append(keyframe)
            if len(self._frames) > self.config.capacity:
                self._drop_most_redundant_locked()
            self.version += 1
            return keyframe

    def _stored(self, image: np.ndarray) -> np.ndarray:
        """A private copy of the image, downscaled so its long side is at most max_side."""
        height, width = image.shape[:2]
        scale = self.config.max_side / max(height, width)
        if scale >= 1.0:
            return image.copy()
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        # Bilinear is ~5x cheaper than area averaging and alias-free enough down to half size.
        method = cv2.INTER_LINEAR if scale >= 0.5 else cv2.INTER_AREA
        return cv2.resize(image, size, interpolation=method)

    def snapshot(self) -> list[Keyframe]:
        """The current keyframes, oldest first (a copy of the list; frames are shared)."""
        with self._lock:
            return list(self._frames)

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    def clear(self) -> None:
        """Forget every keyframe (a new scene)."""
        with self._lock:
            self._clear_locked()

    def _drop_most_redundant_locked(self) -> None:
        stamps = np.fromiter((k.stamp_ns for k in self._frames), np.int64, len(self._frames))
        merged_gaps = stamps[2:] - stamps[:-2]  # gap left behind by removing frame i + 1
        del self._frames[int(np.argmin(merged_gaps)) + 1]

    def _clear_locked(self) -> None:
        self._frames = []
        self._next_index = 0
        self.version += 1
