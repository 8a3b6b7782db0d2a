"""Language-based localization metrics: Acc@0.5m, Acc@1.0m, Acc@15deg, Acc@30deg.

Conventions of the official code, kept exactly (they decide flags at the thresholds):
position error on x-y only, ``sqrt`` of a sum of squares in float64; orientation error between
the z components of the rotation vectors of two scalar-last quaternions (for a pure yaw this
is the wrapped heading difference), ``min(|d|, 2*pi - |d|) / pi * 180``.

Variants:
- ``sqa3d`` (default): SQA3D's ``metric_localization``; strict ``<`` thresholds; up to three
  predictions per case, position and rotation errors each minimised independently.
- ``sig3d_quat``: SIG3D with quaternions; the same numbers as ``sqa3d`` for one prediction.
- ``sig3d_angle``: SIG3D's (sin, cos) heading representation.
- ``view2cap``: View2Cap; inclusive ``<=`` thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

LOCALIZATION_VARIANTS = ("sqa3d", "sig3d_quat", "sig3d_angle", "view2cap")
POSITION_THRESHOLDS_M = (0.5, 1.0)
ROTATION_THRESHOLDS_DEG = (15.0, 30.0)
METRIC_NAMES = ("acc_0_5m", "acc_1_0m", "acc_15deg", "acc_30deg")


def sqa3d_quaternion(rotation: dict) -> np.ndarray:
    """[x, y, z, w] from SQA3D's ``{"_x", "_y", "_z", "_w"}`` (by key name, not key order)."""
    return np.array([rotation["_x"], rotation["_y"], rotation["_z"], rotation["_w"]], float)


def yaw_quaternion(yaw: float) -> np.ndarray:
    """Scalar-last quaternion of a pure rotation by `yaw` about z."""
    return Rotation.from_euler("z", yaw).as_quat()


def rotvec_z(quat_xyzw: Sequence[float]) -> float:
    """The z component of the rotation vector (the official heading; raises on a zero quat)."""
    quat = np.asarray(quat_xyzw, dtype=np.float64)
    if not np.all(np.isfinite(quat)) or not np.any(quat):
        raise ValueError(f"not a rotation: quaternion {quat.tolist()}")
    return float(Rotation.from_quat(quat).as_rotvec()[-1])


def position_error(gt: Sequence[float], pred: Sequence[float]) -> float:
    """x-y distance in metres (z ignored), as the official code computes it."""
    diff = np.asarray(pred[:2], dtype=np.float64) - np.asarray(gt[:2], dtype=np.float64)
    return math.sqrt(sum(diff**2))


def angle_error_deg(a: float, b: float) -> float:
    """Smallest difference of two headings (radians in [-pi, pi]) in degrees."""
    diff = abs(a - b)
    return min(diff, 2 * math.pi - diff) / math.pi * 180


def rotation_error_deg(gt_quat: Sequence[float], pred_quat: Sequence[float]) -> float:
    """Heading error between two scalar-last quaternions (rotvec-z), degrees."""
    return angle_error_deg(rotvec_z(gt_quat), rotvec_z(pred_quat))


def sincos_angle(sincos: Sequence[float], normalise: bool) -> float:
    """Heading from a (sin, cos) pair (SIG3D's angle mode; predictions are normalised)."""
    s, c = float(sincos[0]), float(sincos[1])
    if normalise:
        norm = math.sqrt(s * s + c * c) or 1.0
        s, c = s / norm, c / norm
    return math.atan2(s, c)


@dataclass(frozen=True)
class PoseScore:
    """Errors and the four accuracy flags of one case."""

    pos_err_m: float
    rot_err_deg: float
    acc_0_5m: int
    acc_1_0m: int
    acc_15deg: int
    acc_30deg: int

    def flags(self) -> dict[str, int]:
        """The four accuracy flags by metric name."""
        return {name: getattr(self, name) for name in METRIC_NAMES}


def _flags(pos_err: float, rot_err: float, inclusive: bool) -> PoseScore:
    below = (lambda e, t: e <= t) if inclusive else (lambda e, t: e < t)
    return PoseScore(
        pos_err, rot_err,
        *(int(below(pos_err, t)) for t in POSITION_THRESHOLDS_M),
        *(int(below(rot_err, t)) for t in ROTATION_THRESHOLDS_DEG),
    )  # fmt: skip


def score_pose(
    gt_position: Sequence[float],
    gt_quat: Sequence[float],
    pred_positions: Sequence[Sequence[float]],
    pred_quats: Sequence[Sequence[float]],
    variant: str = "sqa3d",
) -> PoseScore:
    """Score predictions (one, or up to three for ``sqa3d``) against one ground-truth pose.

    Quaternions are scalar-last and need not be normalised. ``sig3d_angle`` compares the
    headings rotvec-z(gt) and rotvec-z(pred); use `score_heading_sincos` for raw pairs.
    """
    if variant not in LOCALIZATION_VARIANTS:
        raise ValueError(
            f"unknown localization variant {variant!r}; choose {LOCALIZATION_VARIANTS}"
        )
    if not pred_positions or len(pred_positions) != len(pred_quats):
        raise ValueError("need as many predicted positions as quaternions (at least one)")
    if variant != "sqa3d" and len(pred_positions) != 1:
        raise ValueError(f"{variant} scores exactly one prediction per case")
    if len(pred_positions) > 3:
        raise ValueError("SQA3D's metric takes at most three predictions per case")
    pos_err = min(position_error(gt_position, p) for p in pred_positions)
    rot_err = min(rotation_error_deg(gt_quat, q) for q in pred_quats)
    return _flags(pos_err, rot_err, inclusive=variant == "view2cap")


def score_heading_sincos(
    gt_position: Sequence[float], gt_sincos: Sequence[float],
    pred_position: Sequence[float], pred_sincos: Sequence[float],
) -> PoseScore:  # fmt: skip
    """SIG3D's angle mode: headings as (sin, cos); the prediction's pair is normalised."""
    rot_err = angle_error_deg(sincos_angle(gt_sincos, False), sincos_angle(pred_sincos, True))
    return _flags(position_error(gt_position, pred_position), rot_err, inclusive=False)
