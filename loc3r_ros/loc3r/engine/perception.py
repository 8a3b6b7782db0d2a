"""Perception: CUT3R over keyframes as they arrive, in a worker thread.

For each keyframe the worker runs one streaming CUT3R step (constant cost per frame: the state is
fixed-size) and attaches a `FramePerception` to it: the camera token z'_t that Loc3R-VLM takes as
its pose prior, the camera pose in CUT3R's world (the first keyframe's OpenCV frame), and a
confidence-filtered, subsampled coloured point set for the scene frame fit and for RViz.

`Perception.run_fresh` runs CUT3R from a fresh state over exactly a given list of frames, for the
engine's "faithful" mode (what the paper trains with: CUT3R over the frames the VLM sees).

Pose source: "cut3r" (the official path) takes CUT3R's camera poses; "geometric" takes them from
two-view geometry on the full-resolution frames (`VisualOdometry`), with CUT3R's depth for scale
(or a monocular depth network's, `loc3r.engine.mono_depth`) and CUT3R's relative motion where no
earlier frame registers. A small CUT3R that has not learned
geometry (the embedded default) then still reports a still camera as still.

Camera tokens: "cut3r" (the official path) gives CUT3R's z'_t; "pose" a token that states the
frame's pose (`pose_token`); "geometry" one that states the pose and the frame's pointmap pooled
to the VLM's patch grid (`geometry_token`), which a VLM with a point embedding adds to its patches.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch

from loc3r.cut3r import Cut3r, Cut3rState, preprocess_frame
from loc3r.cut3r.preprocess import PreprocessedFrame, to_rgb_uint8
from loc3r.engine.frame_buffer import Keyframe
from loc3r.engine.mono_depth import MonoDepth
from loc3r.engine.visual_odometry import DepthMap, VisualOdometry

POSE_SOURCES = ("cut3r", "geometric")
CAMERA_TOKENS = ("cut3r", "pose", "geometry")
POSE_VALUES = 12  # translation + flattened rotation at the start of a pose or geometry token


def pose_token(pose_c2w: np.ndarray, width: int) -> torch.Tensor:
    """(width,) a camera token that states a camera-to-first-camera pose.

    The translation (metres) and the flattened rotation, zero-padded: what a VLM trained with
    stated poses (`camera_tokens="pose"`, or the true poses of synthetic rooms) reads.
    """
    if width < 12:
        raise ValueError(f"a pose token needs at least 12 values, the width is {width}")
    token = torch.zeros(width)
    values = np.concatenate([pose_c2w[:3, 3], pose_c2w[:3, :3].reshape(9)])
    token[:POSE_VALUES] = torch.from_numpy(values).float()
    return token


def pool_pointmap(
    points: np.ndarray,
    grid: int,
    resized_hw: tuple[int, int] | None = None,
    crop_xy: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """(h, w, 3) pointmap -> (grid, grid, 3): the mean point of each cell of the whole frame.

    The VLM squashes the whole frame into its grid of pooled patches, while CUT3R sees a crop of
    it (`PreprocessedFrame`: the frame resized to `resized_hw`, cropped at `crop_xy`; square
    frames lose a band at the top and bottom): each pointmap pixel goes to the cell its centre
    falls in, in the frame. Points that are not finite do not count; a cell without any (outside
    the crop) is zero. Without `resized_hw` the pointmap covers the whole frame.
    """
    points = np.asarray(points, dtype=np.float64)
    h, w = points.shape[:2]
    full_h, full_w = resized_hw or (h, w)
    v, u = np.mgrid[0:h, 0:w]
    row = np.clip(((v + 0.5 + crop_xy[1]) / full_h * grid).astype(int), 0, grid - 1)
    col = np.clip(((u + 0.5 + crop_xy[0]) / full_w * grid).astype(int), 0, grid - 1)
    finite = np.isfinite(points).all(axis=-1)
    cell = (row * grid + col)[finite]
    count = np.bincount(cell, minlength=grid * grid)
    sums = np.stack(
        [np.bincount(cell, weights=points[finite][:, k], minlength=grid * grid) for k in range(3)],
        axis=-1,
    )
    pooled = np.where(count[:, None] > 0, sums / np.maximum(count[:, None], 1), 0.0)
    return pooled.reshape(grid, grid, 3).astype(np.float32)


def geometry_token_width(grid: int) -> int:
    """Values in a geometry token of a grid x grid patch grid: the pose, then x, y, z per cell."""
    return POSE_VALUES + 3 * grid * grid


def geometry_token(
    pose_c2w: np.ndarray,
    points_world: np.ndarray,
    grid: int,
    width: int,
    frame: PreprocessedFrame | None = None,
) -> torch.Tensor:
    """(width,) the pose (`pose_token`) then the pointmap pooled to grid x grid (row-major x, y, z).

    Points are metres in the first camera's frame, as the pose; `frame` says which part of the
    image CUT3R saw (`pool_pointmap`). Read back by `token_points`.
    """
    if width < (needed := geometry_token_width(grid)):
        raise ValueError(
            f"a geometry token of a {grid}x{grid} grid needs {needed} values, the width is {width}"
        )
    token = pose_token(pose_c2w, width)
    coverage = {} if frame is None else {"resized_hw": frame.resized_hw, "crop_xy": frame.crop_xy}
    pooled = pool_pointmap(points_world, grid, **coverage).reshape(-1)
    token[POSE_VALUES : POSE_VALUES + pooled.size] = torch.from_numpy(pooled).float()
    return token


def camera_token_width(cut3r_width: int, camera_tokens: str, grid: int = 0) -> int:
    """Values in each camera token: CUT3R's width, or a geometry token's when that is wider.

    CUT3R's tokens and pose tokens are as wide as its decoder; a geometry token needs
    `geometry_token_width(grid)` values (204 for an 8x8 grid), which a tiny CUT3R (96) is not.
    """
    if camera_tokens == "geometry":
        return max(cut3r_width, geometry_token_width(grid))
    return cut3r_width


def token_pose(token: torch.Tensor) -> np.ndarray:
    """A pose or geometry token -> the 4x4 camera-to-first-camera pose it states (`pose_token`)."""
    values = token[:POSE_VALUES].double().cpu().numpy()
    pose = np.eye(4)
    pose[:3, 3], pose[:3, :3] = values[:3], values[3:].reshape(3, 3)
    return pose


def token_points(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """(..., width) geometry tokens -> (..., grid * grid, 3) the pooled points they state."""
    return tokens[..., POSE_VALUES : geometry_token_width(grid)].unflatten(-1, (grid * grid, 3))


@dataclass
class PerceptionConfig:
    """CUT3R settings of the engine."""

    image_size: int = 512  # CUT3R input size: 512 (long side, DPT model) or 224 (linear model)
    points_per_frame: int = 2048  # points kept per keyframe (highest confidence first)
    min_confidence: float = 1.5  # CUT3R confidences are >= 1; lower points are dropped
    queue_size: int = 64  # keyframes waiting for CUT3R; beyond it the oldest waiting one is skipped
    pose_source: str = "cut3r"  # "cut3r" | "geometric" (see the module docstring)
    intrinsics: tuple[float, float, float, float] | None = None  # fx, fy, cx, cy of the camera's
    # images (from CameraInfo); None: the focal length is read off CUT3R's first pointmap
    intrinsics_hw: tuple[int, int] | None = None  # (height, width) the intrinsics are for; frames
    # of another size get them scaled; None: the frames' own size
    odometry_long_side: int = 640  # frames are shrunk to this long side for feature matching
    camera_tokens: str = "cut3r"  # "cut3r": z'_t; "pose" / "geometry": see the module docstring
    token_grid: int = 0  # "geometry": the VLM's pooled patch grid (points per side)

    def __post_init__(self) -> None:
        if self.pose_source not in POSE_SOURCES:
            raise ValueError(f"pose_source={self.pose_source!r}: expected one of {POSE_SOURCES}")
        if self.intrinsics is not None and (
            len(self.intrinsics) != 4 or not all(np.isfinite(self.intrinsics))
            or min(self.intrinsics[:2]) <= 0
        ):  # fmt: skip
            raise ValueError(f"intrinsics must be finite (fx, fy, cx, cy), got {self.intrinsics}")
        if self.intrinsics_hw is not None and (
            len(self.intrinsics_hw) != 2 or min(self.intrinsics_hw) < 1
        ):
            raise ValueError(f"intrinsics_hw must be (height, width) > 0, got {self.intrinsics_hw}")
        if self.camera_tokens not in CAMERA_TOKENS:
            raise ValueError(
                f"camera_tokens={self.camera_tokens!r}: expected one of {CAMERA_TOKENS}"
            )
        if self.camera_tokens == "geometry" and self.token_grid < 1:
            raise ValueError("camera_tokens='geometry' needs token_grid >= 1 (the VLM's grid)")
        if self.odometry_long_side < 64:
            raise ValueError("odometry_long_side must be >= 64")
        if self.image_size < 16:
            raise ValueError("image_size must be >= 16")
        if self.points_per_frame < 0:
            raise ValueError("points_per_frame must be >= 0")


@dataclass
class FramePerception:
    """What CUT3R gives for one keyframe (CPU, float32 unless stated)."""

    # (Perception.token_width,) CUT3R's last decoder layer token 0 after its norm, or the pose /
    # geometry token that replaces it (PerceptionConfig.camera_tokens)
    camera_token: torch.Tensor
    pose_c2w: np.ndarray  # (4, 4) float64, camera-to-world, CUT3R world (first frame OpenCV)
    points: np.ndarray  # (K, 3) world points, metres
    colors: np.ndarray  # (K, 3) uint8 RGB
    confidence: np.ndarray  # (K,) CUT3R world confidence
    seconds: float  # CUT3R time for this frame
    pose_registered: bool | None = None  # geometric source: the frame matched an earlier one
    median_confidence: float = float("nan")  # CUT3R's median confidence over the whole frame


class Perception:
    """Runs a CUT3R model over frames, keeping one streaming state.

    `depth`: a monocular depth network whose depth replaces CUT3R's in the geometric pose
    source (along CUT3R's rays; loc3r.engine.mono_depth), as the embedded default ships one.
    """

    def __init__(
        self,
        model: Cut3r,
        config: PerceptionConfig | None = None,
        depth: MonoDepth | None = None,
    ) -> None:
        self.model = model.eval()
        self.config = config or PerceptionConfig()
        if depth is not None and self.config.pose_source != "geometric":
            raise ValueError("a depth network serves the geometric pose source only")
        self.depth = depth
        self.state: Cut3rState = model.init_state()
        self.odometry = GeometricPoses(self.config)

    @property
    def token_width(self) -> int:
        """Values in each camera token this perception gives (`camera_token_width`)."""
        return camera_token_width(
            self.model.config.dec_embed_dim, self.config.camera_tokens, self.config.token_grid
        )

    def reset(self) -> None:
        """Start a new stream (a new scene)."""
        self.state = self.model.init_state()
        self.odometry = GeometricPoses(self.config)

    def set_intrinsics(
        self, intrinsics: tuple[float, float, float, float] | None, image_hw: tuple[int, int] | None
    ) -> bool:
        """The camera's (fx, fy, cx, cy) at `image_hw` (height, width), e.g. from a CameraInfo.

        The geometric pose source uses them instead of the focal length it reads off CUT3R's
        pointmap: from the stream's first frame when the stream has none yet (returns True),
        else from the next stream (a reset, a fresh run; returns False), since one stream's poses
        must come from one camera model. ValueError for invalid intrinsics. Call it from the
        thread that steps the stream (the engine's PerceptionWorker does).
        """
        self.config = replace(self.config, intrinsics=intrinsics, intrinsics_hw=image_hw)
        if self.odometry.odometry is not None:  # the stream has a frame: its camera is fixed
            return False
        self.odometry = GeometricPoses(self.config)
        return True

    @torch.inference_mode()
    def step(
        self,
        image: np.ndarray,
        state: Cut3rState | None = None,
        odometry: GeometricPoses | None = None,
    ) -> FramePerception:
        """One CUT3R step on an RGB uint8 frame (updates the stream state unless one is given)."""
        start = time.perf_counter()
        frame = preprocess_frame(image, size=self.config.image_size)
        out = self.model.step(self.state if state is None else state, frame)
        pose = out.pose_c2w[0].double().cpu().numpy()
        registered = None
        if self.config.pose_source == "geometric":
            odometry = self.odometry if odometry is None else odometry
            self_points = out.pts3d_self[0].double().cpu().numpy()
            if self.depth is not None:
                self_points = self.depth.rescale_pointmap(image, self_points, frame)
            pose, registered = odometry.add(image, frame, self_points, pose)
            world_map = (self_points @ pose[:3, :3].T + pose[:3, 3]).astype(np.float32)
            conf = out.conf_self[0].float().reshape(-1).cpu().numpy()
        else:
            world_map = out.pts3d_world[0].float().cpu().numpy()
            conf = out.conf_world[0].float().reshape(-1).cpu().numpy()
        pts = world_map.reshape(-1, 3)
        rgb = (frame.image[0].permute(1, 2, 0).reshape(-1, 3).cpu().numpy() + 1.0) * 127.5
        keep = np.flatnonzero((conf >= self.config.min_confidence) & np.isfinite(pts).all(axis=1))
        if len(keep) > self.config.points_per_frame:
            keep = keep[np.argsort(-conf[keep], kind="stable")[: self.config.points_per_frame]]
        token = out.camera_token[0].float().cpu().clone()
        if self.config.camera_tokens == "pose":
            token = pose_token(pose, self.token_width)
        elif self.config.camera_tokens == "geometry":
            grid = self.config.token_grid
            token = geometry_token(pose, world_map, grid, self.token_width, frame)
        return FramePerception(
            camera_token=token,
            pose_c2w=pose,
            points=pts[keep].astype(np.float32),
            colors=np.clip(rgb[keep], 0, 255).astype(np.uint8),
            confidence=conf[keep].astype(np.float32),
            seconds=time.perf_counter() - start,
            pose_registered=registered,
            median_confidence=float(np.nanmedian(conf)) if np.isfinite(conf).any() else np.nan,
        )

    def run_fresh(self, images: list[np.ndarray]) -> list[FramePerception]:
        """CUT3R from a fresh state over exactly `images` (the stream state is untouched)."""
        state = self.model.init_state()
        odometry = GeometricPoses(self.config)
        return [self.step(image, state, odometry) for image in images]


class GeometricPoses:
    """The geometric pose source of one stream: `VisualOdometry` fed with CUT3R's depth."""

    def __init__(self, config: PerceptionConfig) -> None:
        self.config = config
        self.odometry: VisualOdometry | None = None  # made at the first frame (its size and K)
        self._shrink = 1.0
        self._last_cut3r_pose: np.ndarray | None = None

    def add(
        self,
        image: np.ndarray,
        frame: PreprocessedFrame,
        points_self: np.ndarray,
        cut3r_pose: np.ndarray,
    ) -> tuple[np.ndarray, bool]:
        """The frame's camera-to-world pose, and whether it registered with an earlier frame.

        `points_self` is CUT3R's (h, w, 3) pointmap in the frame's own camera; its z is the depth
        that scales translations and, without given intrinsics, its rays give the focal length.
        """
        height, width = frame.original_hw
        if self.odometry is None:
            self._shrink = min(1.0, self.config.odometry_long_side / max(height, width))
            K = self._intrinsics(frame, points_self) * np.array([[self._shrink]] * 2 + [[1.0]])  # noqa: N806
            self.odometry = VisualOdometry(K)
        small = image
        if self._shrink < 1.0:
            size = (round(width * self._shrink), round(height * self._shrink))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        depth = DepthMap.from_crop(points_self[..., 2], small.shape[:2], frame.resized_hw,
                                   frame.crop_xy)  # fmt: skip
        fallback = None
        if self.odometry.frames and self._last_cut3r_pose is not None:  # CUT3R's own motion
            motion = np.linalg.inv(self._last_cut3r_pose) @ cut3r_pose
            fallback = self.odometry.frames[-1].pose_c2w @ motion
        self._last_cut3r_pose = cut3r_pose
        result = self.odometry.add(to_rgb_uint8(small), depth, fallback)
        return result.pose_c2w, result.registered

    def _intrinsics(self, frame: PreprocessedFrame, points_self: np.ndarray) -> np.ndarray:
        """K of the full-size image: given, or the focal length CUT3R's pointmap implies.

        Given intrinsics for another image size (`intrinsics_hw`) are scaled to this one.
        """
        height, width = frame.original_hw
        if self.config.intrinsics is not None:
            fx, fy, cx, cy = self.config.intrinsics
            sy, sx = (1.0, 1.0)
            if self.config.intrinsics_hw is not None:
                sy = height / self.config.intrinsics_hw[0]
                sx = width / self.config.intrinsics_hw[1]
            return np.array([[fx * sx, 0, cx * sx], [0, fy * sy, cy * sy], [0, 0, 1.0]])
        return estimate_intrinsics(points_self, (height, width), frame.resized_hw, frame.crop_xy)


def estimate_intrinsics(
    points_self: np.ndarray,
    image_hw: tuple[int, int],
    resized_hw: tuple[int, int],
    crop_xy: tuple[int, int],
) -> np.ndarray:
    """K of the image from a pointmap of its centred crop: square pixels, centred principal point.

    Each pixel's ray x/z, y/z against its offset from the crop centre gives a focal length; the
    median over pixels away from the centre is robust to CUT3R's noise.
    """
    h, w = points_self.shape[:2]
    v, u = np.mgrid[0:h, 0:w] + 0.5
    z = points_self[..., 2]
    offsets = np.concatenate([(u - w / 2).ravel(), (v - h / 2).ravel()])
    slopes = np.concatenate([(points_self[..., 0] / z).ravel(), (points_self[..., 1] / z).ravel()])
    good = (np.abs(offsets) > min(h, w) / 8) & np.isfinite(slopes) & (np.abs(slopes) > 1e-3)
    good &= np.sign(offsets) == np.sign(slopes)
    if good.sum() < 8:
        raise ValueError("CUT3R's pointmap gives no focal length; set the camera intrinsics")
    focal_crop = float(np.median(offsets[good] / slopes[good]))
    focal = focal_crop * image_hw[1] / resized_hw[1]  # crop pixels -> image pixels
    return np.array([[focal, 0, image_hw[1] / 2], [0, focal, image_hw[0] / 2], [0, 0, 1.0]])


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
        self._pending_intrinsics: tuple | None = None
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

    def set_intrinsics(
        self, intrinsics: tuple[float, float, float, float], image_hw: tuple[int, int]
    ) -> None:
        """Hand the perception a camera calibration on this thread, before its next keyframe.

        Never blocks (a model process's perception answers one call at a time, and a CUT3R
        step may be in progress there); `Perception.set_intrinsics` says when it takes effect.
        """
        with self._lock:
            self._pending_intrinsics = (intrinsics, image_hw)

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
                pending, self._pending_intrinsics = self._pending_intrinsics, None
            if pending is not None:
                try:
                    self.perception.set_intrinsics(*pending)
                except Exception as exc:  # validated by the engine; a dead model process
                    self.last_error = f"set_intrinsics: {type(exc).__name__}: {exc}"
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
