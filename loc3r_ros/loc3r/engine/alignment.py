"""Umeyama alignment of two trajectories: the CUT3R camera path onto the robot's TF camera path.

Finds s, R, t minimising sum ||dst_i - (s R src_i + t)||^2 (Umeyama 1991), with s = 1 for SE(3).
Used to place the scene frame in the robot's map (parent -> scene_frame) from keyframe camera
centres seen in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class AlignmentError(ValueError):
    """Too few or degenerate correspondences."""


@dataclass
class Alignment:
    """dst ~= scale * rotation @ src + translation."""

    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)
    scale: float
    rms: float  # residual root mean square, in dst units

    def matrix(self) -> np.ndarray:
        """4x4 similarity transform (scale folded into the rotation block)."""
        out = np.eye(4)
        out[:3, :3] = self.scale * self.rotation
        out[:3, 3] = self.translation
        return out

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) src points -> dst."""
        return self.scale * points @ self.rotation.T + self.translation


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Alignment:
    """Least-squares similarity (or rigid, with_scale=False) from src to dst, both (N, 3)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise AlignmentError(f"need two (N, 3) arrays of equal shape, got {src.shape}, {dst.shape}")
    if len(src) < 3:
        raise AlignmentError(f"need at least 3 correspondences, got {len(src)}")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    a, b = src - mu_src, dst - mu_dst
    var_src = (a**2).sum() / len(src)
    if var_src < 1e-12:
        raise AlignmentError("the source points do not move")
    cov = b.T @ a / len(src)
    u, d, vt = np.linalg.svd(cov)
    if d[1] < 1e-9 * max(d[0], 1e-12):
        raise AlignmentError("the trajectory is (nearly) a line: the rotation about it is unknown")
    sign = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2] = -1.0
    rotation = u @ np.diag(sign) @ vt
    scale = float((d * sign).sum() / var_src) if with_scale else 1.0
    translation = mu_dst - scale * rotation @ mu_src
    residual = dst - (scale * src @ rotation.T + translation)
    return Alignment(rotation, translation, scale, float(np.sqrt((residual**2).sum(1).mean())))
