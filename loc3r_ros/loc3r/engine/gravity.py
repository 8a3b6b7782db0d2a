"""Which way is up in CUT3R's world: given by the caller, fitted to the floor, or assumed level.

CUT3R's world is the first camera's OpenCV frame, which is not gravity aligned. In order of
preference: a gravity direction from the caller (a robot's IMU or TF), the normal of the floor
plane fitted to the reconstruction (RANSAC, then least squares on the inliers), or the
level-camera assumption (up = the first camera's -y axis). The result says which one was used,
and why a better one was not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GravityConfig:
    """Floor-fit settings."""

    max_tilt_deg: float = 35.0  # the floor normal is within this of the cameras' mean up
    inlier_fraction: float = 0.03  # inlier distance as a fraction of the scene's extent
    min_inliers: int = 200
    min_inlier_ratio: float = 0.08  # of all points
    min_camera_height: float = 0.2  # the floor lies at least this far below the cameras
    iterations: int = 300
    max_points: int = 8192  # hypotheses are scored on at most this many points (evenly strided)
    seed: int = 0


@dataclass
class GravityEstimate:
    """Up direction (unit, CUT3R world) and where it came from."""

    up: np.ndarray  # (3,)
    source: str  # "given" | "floor_fit" | "level_camera"
    detail: str  # e.g. inlier ratio, or why the floor fit was rejected
    floor_offset: float | None = None  # the floor plane is {p : up . p = floor_offset}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def fit_floor(
    points: np.ndarray, camera_centres: np.ndarray, prior_up: np.ndarray, config: GravityConfig
) -> tuple[np.ndarray, float, float] | str:
    """RANSAC floor plane: (unit normal pointing up, offset, inlier ratio), or why none fits."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < config.min_inliers:
        return f"too few points ({len(points)})"
    rng = np.random.default_rng(config.seed)
    extent = float(np.linalg.norm(np.percentile(points, 95, 0) - np.percentile(points, 5, 0)))
    threshold = max(config.inlier_fraction * extent, 1e-4)
    cos_tilt = np.cos(np.radians(config.max_tilt_deg))
    sample = points[:: max(1, len(points) // config.max_points)]  # the final fit uses all
    best: tuple[int, np.ndarray, float] | None = None
    for _ in range(config.iterations):
        a, b, c = sample[rng.choice(len(sample), 3, replace=False)]
        normal = np.cross(b - a, c - a)
        if np.linalg.norm(normal) < 1e-12:
            continue
        normal = _unit(normal)
        if normal @ prior_up < 0:
            normal = -normal
        if normal @ prior_up < cos_tilt:
            continue  # a wall or a slanted surface
        offset = float(normal @ a)
        lowest_camera = float((camera_centres @ normal).min())
        if lowest_camera - offset < config.min_camera_height:
            continue  # not below the cameras: a table top, the ceiling, ...
        inliers = int((np.abs(sample @ normal - offset) < threshold).sum())
        if best is None or inliers > best[0]:  # the floor is the largest such plane
            best = (inliers, normal, offset)
    if best is None:
        return "no horizontal plane below the cameras"
    _, normal, offset = best
    mask = np.abs(points @ normal - offset) < threshold
    if mask.sum() < config.min_inliers or mask.mean() < config.min_inlier_ratio:
        return f"floor support too small ({int(mask.sum())} points, {mask.mean():.1%})"
    inliers = points[mask]
    centre = inliers.mean(0)
    normal_ls = np.linalg.svd(inliers - centre, full_matrices=False)[2][-1]
    if normal_ls @ normal < 0:
        normal_ls = -normal_ls
    return normal_ls, float(normal_ls @ centre), float(mask.mean())


def estimate_up(
    points: np.ndarray,
    camera_poses: list[np.ndarray],
    given_up: np.ndarray | None = None,
    config: GravityConfig | None = None,
) -> GravityEstimate:
    """Best available up direction in CUT3R world (see module docstring)."""
    config = config or GravityConfig()
    level = _unit(camera_poses[0][:3, :3] @ np.array([0.0, -1.0, 0.0]))
    if given_up is not None:
        up = np.asarray(given_up, dtype=np.float64)
        if up.shape == (3,) and np.isfinite(up).all() and np.linalg.norm(up) > 1e-9:
            return GravityEstimate(_unit(up), "given", "gravity given by the caller")
        reason = "the given gravity vector is invalid; "
    else:
        reason = ""
    prior = _unit(np.mean([p[:3, :3] @ np.array([0.0, -1.0, 0.0]) for p in camera_poses], axis=0))
    centres = np.array([p[:3, 3] for p in camera_poses])
    fit = fit_floor(points, centres, prior, config)
    if isinstance(fit, str):
        return GravityEstimate(level, "level_camera", reason + f"floor fit failed: {fit}")
    normal, offset, ratio = fit
    return GravityEstimate(
        normal, "floor_fit", reason + f"{ratio:.1%} of points on the floor", offset
    )
