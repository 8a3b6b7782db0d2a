"""Perception: CUT3R over keyframes as they arrive, in a worker thread.

For each keyframe the worker runs one streaming CUT3R step (constant cost per frame: the state is
fixed-size) and attaches a `FramePerception` to it: the camera token z'_t that Loc3R-VLM takes as
its pose prior, the camera pose in CUT3R's world (the first keyframe's OpenCV frame), and a
confidence-filtered, subsampled coloured point set for the scene frame fit and for RViz.

`Perception.run_fresh` runs CUT3R from a fresh state over exactly a given list of frames, for the
engine's "faithful" mode (what the paper trains with: CUT3R over the frames the VLM sees).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from loc3r.cut3r import Cut3r, Cut3rState, preprocess_frame
from loc3r.engine.frame_buffer import Keyframe


@dataclass
class PerceptionConfig:
    """CUT3R settings of the engine."""

    image_size: int = 512  # CUT3R input size: 512 (long side, DPT model) or 224 (linear model)
    points_per_frame: int = 2048  # points kept per keyframe (highest confidence first)
    min_confidence: float = 1.5  # CUT3R confidences are >= 1; lower points are dropped
    queue_size: int = 64  # keyframes waiting for CUT3R; beyond it the oldest waiting one is skipped

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError("image_size must be >= 16")
        if self.points_per_frame < 0:
            raise ValueError("points_per_frame must be >= 0")


@dataclass
class FramePerception:
    """What CUT3R gives for one keyframe (CPU, float32 unless stated)."""

    camera_token: torch.Tensor  # (Cd,) last decoder layer token 0 after its norm
    pose_c2w: np.ndarray  # (4, 4) float64, camera-to-world, CUT3R world (first frame OpenCV)
    points: np.ndarray  # (K, 3) world points, metres
    colors: np.ndarray  # (K, 3) uint8 RGB
    confidence: np.ndarray  # (K,) CUT3R world confidence
    seconds: float  # CUT3R time for this frame


class Perception:
    """Runs a CUT3R model over frames, keeping one streaming state."""

    def __init__(self, model: Cut3r, config: PerceptionConfig | None = None) -> None:
        self.model = model.eval()
        self.config = config or PerceptionConfig()
        self.state: Cut3rState = model.init_state()

    def reset(self) -> None:
        """Start a new stream (a new scene)."""
        self.state = self.model.init_state()

    @torch.inference_mode()
    def step(self, image: np.ndarray, state: Cut3rState | None = None) -> FramePerception:
        """One CUT3R step on an RGB uint8 frame (updates the stream state unless one is given)."""
        start = time.perf_counter()
        frame = preprocess_frame(image, size=self.config.image_size)
        out = self.model.step(self.state if state is None else state, frame)
        pts = out.pts3d_world[0].float().reshape(-1, 3).cpu().numpy()
        conf = out.conf_world[0].float().reshape(-1).cpu().numpy()
        rgb = (frame.image[0].permute(1, 2, 0).reshape(-1, 3).cpu().numpy() + 1.0) * 127.5
        keep = np.flatnonzero((conf >= self.config.min_confidence) & np.isfinite(pts).all(axis=1))
        if len(keep) > self.config.points_per_frame:
            keep = keep[np.argsort(-conf[keep], kind="stable")[: self.config.points_per_frame]]
        return FramePerception(
            camera_token=out.camera_token[0].float().cpu().clone(),
            pose_c2w=out.pose_c2w[0].double().cpu().numpy(),
            points=pts[keep].astype(np.float32),
            colors=np.clip(rgb[keep], 0, 255).astype(np.uint8),
            confidence=conf[keep].astype(np.float32),
            seconds=time.perf_counter() - start,
        )

    def run_fresh(self, images: list[np.ndarray]) -> list[FramePerception]:
        """CUT3R from a fresh state over exactly `images` (the stream state is untouched)."""
        state = self.model.init_state()
        return [self.step(image, state) for image in images]


class PerceptionWorker:
    """A thread that runs `Perception.step` on keyframes in arrival order.

    `submit` never blocks: when the queue is full the oldest waiting keyframe is skipped (it stays
    a keyframe without perception and is counted in `skipped`). `reset` starts a new stream;
    keyframes submitted before it are discarded.
    """

    def __init__(self, perception: Perception) -> None:
        self.perception = perception
        self._queue: queue.Queue[tuple[int, Keyframe]] = queue.Queue(perception.config.queue_size)
        self._generation = 0
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = threading.Event()
        self.processed = 0
        self.skipped = 0
        self.failed = 0
        self.last_error = ""
        self.total_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="loc3r-perception", daemon=True)
        self._thread.start()

    def submit(self, keyframe: Keyframe) -> None:
        """Queue a keyframe for CUT3R."""
        with self._lock:
            self._idle.clear()
            item = (self._generation, keyframe)
            while True:
                try:
                    self._queue.put_nowait(item)
                    return
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                        self.skipped += 1
                    except queue.Empty:
                        pass

    def reset(self) -> None:
        """Discard queued keyframes and start a new CUT3R stream before the next one."""
        with self._lock:
            self._generation += 1

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted keyframe was processed (True) or the timeout passed."""
        return self._idle.wait(timeout)

    def mean_seconds(self) -> float:
        """Mean CUT3R time per processed keyframe."""
        return self.total_seconds / self.processed if self.processed else 0.0

    def close(self) -> None:
        """Stop the thread (after the frame in progress)."""
        self._stop.set()
        self._thread.join(timeout=10.0)

    def _run(self) -> None:
        current_generation = 0
        while not self._stop.is_set():
            try:
                generation, keyframe = self._queue.get(timeout=0.1)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._idle.set()
                continue
            with self._lock:
                latest = self._generation
            if generation != latest:
                continue  # submitted before a reset
            if generation != current_generation:
                self.perception.reset()
                current_generation = generation
            try:
                keyframe.perception = self.perception.step(keyframe.image)
            except Exception as exc:  # keep serving: a bad frame must not kill the thread
                self.failed += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                continue
            self.processed += 1
            self.total_seconds += keyframe.perception.seconds
            with self._lock:
                if self._queue.empty():
                    self._idle.set()
