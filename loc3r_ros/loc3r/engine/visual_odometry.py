"""Camera poses from two-view geometry (OpenCV): a pose source that matches frames.

For each new frame, SIFT features are matched against the latest few frames, the relative pose is
solved with each, and the one with the most geometric inliers is kept:
- if the matches fit a pure rotation (a homography K R K^-1) to within `static_px`, the camera
  only turned (or stood still): that rotation and no translation, so a still camera stays still;
- otherwise the essential matrix (RANSAC) gives the rotation and the direction of travel, and a
  depth map of the reference frame gives the scale: the median ratio of its depth to the
  depth triangulated from the unit-baseline pair.
A frame that registers with no earlier frame keeps the pose of the latest one, flagged.

Poses are camera-to-world 4x4 in the first frame's OpenCV camera frame (x right, y down,
z forward, metres), like CUT3R's. The frames' order does not matter beyond which frame is first.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial.transform import Rotation


@dataclass
class OdometryConfig:
    """Feature matching and geometry settings."""

    max_features: int = 2000  # SIFT keypoints per frame
    contrast_threshold: float = 0.02  # SIFT's (OpenCV default 0.04): more keypoints in dim rooms
    ratio: float = 0.75  # Lowe's ratio test
    min_inliers: int = 30  # a pair registers with at least this many geometric inliers
    ransac_px: float = 1.0  # essential-matrix RANSAC threshold, pixels
    static_px: float = 0.75  # median residual of a rotation-only fit below this: no translation
    max_references: int = 4  # the latest frames a new frame is matched against (and kept)

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1:
            raise ValueError("ratio must be in (0, 1)")
        if self.min_inliers < 5 or self.max_features < self.min_inliers:
            raise ValueError("need min_inliers >= 5 and max_features >= min_inliers")
        if self.ransac_px <= 0 or self.static_px < 0 or self.max_references < 1:
            raise ValueError("need ransac_px > 0, static_px >= 0 and max_references >= 1")


@dataclass
class DepthMap:
    """A z-depth map (metres) and the affine map from image pixels to its pixels.

    CUT3R sees a resized, centre-cropped copy of the image: `from_crop` builds the map from
    the pre-processing's sizes; `DepthMap(depth)` is a map on the image's own pixel grid.
    """

    depth: np.ndarray  # (h, w) metres; non-finite or <= 0 = unknown
    scale: tuple[float, float] = (1.0, 1.0)  # depth-map pixels per image pixel (x, y)
    offset: tuple[float, float] = (0.0, 0.0)  # depth-map position of image pixel (0, 0)

    @classmethod
    def from_crop(
        cls,
        depth: np.ndarray,
        image_hw: tuple[int, int],
        resized_hw: tuple[int, int],
        crop_xy: tuple[int, int],
    ) -> DepthMap:
        """The depth of a crop at `crop_xy` of the image resized from `image_hw` to `resized_hw`."""
        sx, sy = resized_hw[1] / image_hw[1], resized_hw[0] / image_hw[0]
        return cls(depth, (sx, sy), (-crop_xy[0], -crop_xy[1]))

    def sample(self, points: np.ndarray) -> np.ndarray:
        """(N,) depth at image pixel positions (x, y); NaN outside the map or unknown."""
        height, width = self.depth.shape
        cols = np.floor(points[:, 0] * self.scale[0] + self.offset[0]).astype(int)
        rows = np.floor(points[:, 1] * self.scale[1] + self.offset[1]).astype(int)
        inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
        values = np.full(len(points), np.nan)
        values[inside] = self.depth[rows[inside], cols[inside]]
        return np.where(values > 0, values, np.nan)


@dataclass
class PairPose:
    """The relative pose of frame b with respect to frame a: x_b = rotation @ x_a + translation."""

    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,) metres (unit length when no depth gave the scale)
    inliers: int
    parallax_px: float  # median residual of the rotation-only fit
    static: bool  # a pure rotation: translation is zero
    scaled: bool  # the translation is metric

    def b_to_a(self) -> np.ndarray:
        """4x4 pose of camera b in camera a's frame."""
        pose = np.eye(4)
        pose[:3, :3] = self.rotation.T
        pose[:3, 3] = -self.rotation.T @ self.translation
        return pose


@dataclass
class Features:
    """SIFT keypoints (pixels) and descriptors of one frame."""

    points: np.ndarray  # (N, 2) float32
    descriptors: np.ndarray  # (N, 128) float32


class TwoViewGeometry:
    """Feature extraction, matching and relative pose of frame pairs."""

    def __init__(self, config: OdometryConfig | None = None) -> None:
        self.config = config or OdometryConfig()
        self._sift = cv2.SIFT_create(
            nfeatures=self.config.max_features, contrastThreshold=self.config.contrast_threshold
        )
        self._matcher = cv2.BFMatcher(cv2.NORM_L2)

    def features(self, image: np.ndarray) -> Features:
        """Keypoints of an RGB (H, W, 3) or grey (H, W) uint8 image."""
        if image.ndim not in (2, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"expected an (H, W[, 3]) uint8 image, got {image.dtype} {image.shape}"
            )
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        keypoints, descriptors = self._sift.detectAndCompute(grey, None)
        if descriptors is None:
            return Features(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32))
        points = np.array([k.pt for k in keypoints], dtype=np.float32)
        return Features(points, descriptors)

    def match(self, a: Features, b: Features) -> tuple[np.ndarray, np.ndarray]:
        """(M, 2) and (M, 2) matched pixel positions (ratio test)."""
        if len(a.points) < 2 or len(b.points) < 2:
            return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
        pairs = self._matcher.knnMatch(a.descriptors, b.descriptors, k=2)
        good = [
            m
            for m, n in (p for p in pairs if len(p) == 2)
            if m.distance < self.config.ratio * n.distance
        ]
        ia = np.array([m.queryIdx for m in good], dtype=int)
        ib = np.array([m.trainIdx for m in good], dtype=int)
        return a.points[ia].reshape(-1, 2), b.points[ib].reshape(-1, 2)

    def relative_pose(
        self,
        points_a: np.ndarray,
        points_b: np.ndarray,
        K: np.ndarray,  # noqa: N803
        depth_a: DepthMap | None = None,
    ) -> PairPose | None:
        """The pose of b relative to a from matched pixels, or None when it does not register.

        `depth_a`, frame a's depth, gives the translation its scale.
        """
        cfg = self.config
        if len(points_a) < cfg.min_inliers:
            return None
        rotation, residual, rotation_inliers = self._rotation_only(points_a, points_b, K)
        if rotation_inliers >= cfg.min_inliers and residual <= cfg.static_px:
            return PairPose(rotation, np.zeros(3), rotation_inliers, residual, True, True)
        try:  # degenerate samples can fail inside the 5-point solver
            essential, mask = cv2.findEssentialMat(
                points_a, points_b, K, method=cv2.RANSAC, prob=0.999, threshold=cfg.ransac_px
            )
        except cv2.error:
            return None
        if essential is None or essential.shape != (3, 3):
            return None
        count, rotation, t, pose_mask = cv2.recoverPose(essential, points_a, points_b, K, mask=mask)
        if count < cfg.min_inliers:
            return None
        inliers = pose_mask.ravel() > 0
        translation, scaled = t.ravel(), False
        if depth_a is not None:
            scale = self._scale(points_a[inliers], points_b[inliers], K, rotation, t, depth_a)
            if scale is not None:
                translation, scaled = translation * scale, True
        return PairPose(rotation, translation, int(count), residual, False, scaled)

    def _rotation_only(
        self,
        points_a: np.ndarray,
        points_b: np.ndarray,
        K: np.ndarray,  # noqa: N803
    ) -> tuple[np.ndarray, float, int]:
        """The best pure rotation b <- a, its median residual (pixels) and its inlier count."""
        homography, mask = cv2.findHomography(points_a, points_b, cv2.RANSAC, 3.0)
        if homography is None:
            return np.eye(3), np.inf, 0
        keep = mask.ravel() > 0
        bearings_a = _bearings(points_a[keep], K)
        bearings_b = _bearings(points_b[keep], K)
        rotation = Rotation.align_vectors(bearings_b, bearings_a)[0].as_matrix()
        projected = (K @ (rotation @ bearings_a.T)).T
        projected = projected[:, :2] / projected[:, 2:]
        residual = float(np.median(np.linalg.norm(projected - points_b[keep], axis=1)))
        return rotation, residual, int(keep.sum())

    @staticmethod
    def _scale(
        points_a: np.ndarray,
        points_b: np.ndarray,
        K: np.ndarray,  # noqa: N803
        rotation: np.ndarray,
        t: np.ndarray,
        depth_a: DepthMap,
    ) -> float | None:
        """Metres per unit baseline: median of depth_a over the triangulated depth."""
        projection_a = K @ np.hstack([np.eye(3), np.zeros((3, 1))])
        projection_b = K @ np.hstack([rotation, t.reshape(3, 1)])
        homogeneous = cv2.triangulatePoints(projection_a, projection_b, points_a.T, points_b.T)
        z = homogeneous[2] / homogeneous[3]
        measured = depth_a.sample(points_a)
        good = (z > 1e-6) & np.isfinite(measured)
        if good.sum() < 5:
            return None
        return float(np.median(measured[good] / z[good]))


def _bearings(points: np.ndarray, K: np.ndarray) -> np.ndarray:  # noqa: N803
    """Unit rays of pixels."""
    rays = np.linalg.solve(K, np.vstack([points.T, np.ones(len(points))])).T
    return rays / np.linalg.norm(rays, axis=1, keepdims=True)


@dataclass
class OdometryFrame:
    """One frame's pose and how it was found."""

    pose_c2w: np.ndarray  # (4, 4), first frame's camera frame
    reference: int  # index of the frame it was registered against (-1: the first frame)
    registered: bool  # False: no earlier frame matched, the pose was carried over
    static: bool  # registered as a pure rotation (no translation)
    inliers: int


class VisualOdometry:
    """Poses of a stream of frames from two-view geometry against earlier frames."""

    def __init__(self, K: np.ndarray, config: OdometryConfig | None = None) -> None:  # noqa: N803
        self.K = np.asarray(K, dtype=np.float64)
        if self.K.shape != (3, 3) or not np.isfinite(self.K).all() or self.K[0, 0] <= 0:
            raise ValueError(f"K must be a finite 3x3 intrinsics matrix, got {self.K!r}")
        self.geometry = TwoViewGeometry(config)
        self.frames: list[OdometryFrame] = []
        self._recent: list[tuple[int, Features, DepthMap | None]] = []  # the last few frames

    def add(
        self,
        image: np.ndarray,
        depth: DepthMap | None = None,
        fallback_pose: np.ndarray | None = None,
    ) -> OdometryFrame:
        """Register a frame and return its pose.

        `depth` (the frame's depth) scales later frames' translations; `fallback_pose` is the
        pose to keep when no earlier frame registers (default: the latest frame's pose).
        """
        features = self.geometry.features(image)
        result = self._register(features, fallback_pose)
        self.frames.append(result)
        self._recent.append((len(self.frames) - 1, features, depth))
        del self._recent[: -self.geometry.config.max_references]
        return result

    def _register(self, features: Features, fallback_pose: np.ndarray | None) -> OdometryFrame:
        if not self.frames:
            return OdometryFrame(np.eye(4), -1, True, False, len(features.points))
        best: tuple[int, PairPose] | None = None  # the candidate with the most inliers
        for index, earlier, depth in reversed(self._recent):
            matched = self.geometry.match(earlier, features)
            pair = self.geometry.relative_pose(*matched, self.K, depth)
            if pair is not None and (best is None or pair.inliers > best[1].inliers):
                best = (index, pair)
        if best is not None:
            index, pair = best
            pose = self.frames[index].pose_c2w @ pair.b_to_a()
            return OdometryFrame(pose, index, True, pair.static, pair.inliers)
        latest = len(self.frames) - 1
        pose = self.frames[latest].pose_c2w if fallback_pose is None else fallback_pose
        return OdometryFrame(np.array(pose, dtype=np.float64), latest, False, False, 0)


def batch_poses(
    images: list[np.ndarray],
    K: np.ndarray,  # noqa: N803
    depths: list[DepthMap | None] | None = None,
    config: OdometryConfig | None = None,
) -> list[np.ndarray | None]:
    """Poses of a set of frames (first frame = identity), whatever their order.

    Every pair is registered; the poses follow the tree of strongest pairs (most inliers)
    grown from the first frame, so shuffling the other frames changes nothing. A frame that
    registers with none of the tree's frames gets None.
    """
    geometry = TwoViewGeometry(config)
    depths = depths or [None] * len(images)
    features = [geometry.features(image) for image in images]
    pairs: dict[tuple[int, int], PairPose] = {}
    for a in range(len(images)):
        for b in range(a + 1, len(images)):
            pair = geometry.relative_pose(*geometry.match(features[a], features[b]), K, depths[a])
            if pair is not None:
                pairs[(a, b)] = pair
    poses: list[np.ndarray | None] = [None] * len(images)
    poses[0] = np.eye(4)
    while True:  # Prim's maximum spanning tree, weighted by inliers
        edges = [(pair.inliers, a, b) for (a, b), pair in pairs.items()
                 if (poses[a] is None) != (poses[b] is None)]  # fmt: skip
        if not edges:
            return poses
        _, a, b = max(edges)
        b_in_a = pairs[(a, b)].b_to_a()
        if poses[a] is not None:
            poses[b] = poses[a] @ b_in_a
        else:
            poses[a] = poses[b] @ np.linalg.inv(b_in_a)


def registration_rate(images: list[np.ndarray], K: np.ndarray, min_inliers: int = 30) -> float:  # noqa: N803
    """Share of consecutive frame pairs that register with >= `min_inliers` geometric inliers.

    The sanity figure of a walk: whether a classical matcher can follow it (SIFT, ratio test,
    then a pure rotation or an essential matrix, as `TwoViewGeometry.relative_pose`).
    """
    if len(images) < 2:
        raise ValueError("need at least two frames")
    geometry = TwoViewGeometry(OdometryConfig(min_inliers=min_inliers))
    features = [geometry.features(image) for image in images]
    registered = sum(
        geometry.relative_pose(*geometry.match(a, b), K) is not None
        for a, b in zip(features, features[1:], strict=False)
    )
    return registered / (len(images) - 1)
