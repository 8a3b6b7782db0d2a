"""Camera poses from two-view geometry (OpenCV): a pose source that matches frames.

For each new frame, SIFT features are matched against earlier frames (the one sharing the most
matches first) and the relative pose is solved:
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
    max_references: int = 4  # earlier frames tried per new frame (most shared matches first)

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1:
            raise ValueError("ratio must be in (0, 1)")
        if self.min_inliers < 5 or self.max_features < self.min_inliers:
            raise ValueError("need min_inliers >= 5 and max_features >= min_inliers")
        if self.ransac_px <= 0 or self.static_px < 0 or self.max_references < 1:
            raise ValueError("ransac_px > 0, static_px >= 0 and max_references >= 1 are required")


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
        depth_a: np.ndarray | None = None,
    ) -> PairPose | None:
        """The pose of b relative to a from matched pixels, or None when it does not register.

        `depth_a` (any resolution, z-depth in metres, same field of view as the image) gives
        the translation its scale.
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
        depth_a: np.ndarray,
    ) -> float | None:
        """Metres per unit baseline: median of depth_a over the triangulated depth."""
        projection_a = K @ np.hstack([np.eye(3), np.zeros((3, 1))])
        projection_b = K @ np.hstack([rotation, t.reshape(3, 1)])
        homogeneous = cv2.triangulatePoints(projection_a, projection_b, points_a.T, points_b.T)
        z = homogeneous[2] / homogeneous[3]
        height, width = depth_a.shape
        image_w, image_h = 2 * K[0, 2], 2 * K[1, 2]
        cols = np.clip((points_a[:, 0] * width / image_w).astype(int), 0, width - 1)
        rows = np.clip((points_a[:, 1] * height / image_h).astype(int), 0, height - 1)
        measured = depth_a[rows, cols]
        good = (z > 1e-6) & np.isfinite(measured) & (measured > 0)
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
        self.geometry = TwoViewGeometry(config)
        self.frames: list[OdometryFrame] = []
        self._features: list[Features] = []
        self._depths: list[np.ndarray | None] = []

    def add(self, image: np.ndarray, depth: np.ndarray | None = None) -> OdometryFrame:
        """Register a frame (with an optional z-depth map for scale) and return its pose."""
        features = self.geometry.features(image)
        result = self._register(features)
        self.frames.append(result)
        self._features.append(features)
        self._depths.append(depth)
        return result

    def _register(self, features: Features) -> OdometryFrame:
        if not self.frames:
            return OdometryFrame(np.eye(4), -1, True, False, len(features.points))
        matches = [self.geometry.match(f, features) for f in self._features]
        order = sorted(range(len(matches)), key=lambda i: (-len(matches[i][0]), -i))
        for index in order[: self.geometry.config.max_references]:
            points_a, points_b = matches[index]
            pair = self.geometry.relative_pose(points_a, points_b, self.K, self._depths[index])
            if pair is not None:
                pose = self.frames[index].pose_c2w @ pair.b_to_a()
                return OdometryFrame(pose, index, True, pair.static, pair.inliers)
        return OdometryFrame(self.frames[-1].pose_c2w.copy(), len(self.frames) - 1, False, False, 0)


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
