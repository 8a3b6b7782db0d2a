"""The scene (BEV) frame and a view of the scene in it, for publishing.

BEV frame: right-handed, z up (against gravity), metres, origin at the first keyframe's camera
centre, x = that camera's optical axis projected on the horizontal plane, y = z cross x (left).
It is what Loc3R-VLM predicts in, and the ROS scene frame (REP-103 axes).
CUT3R's world is the first camera's OpenCV frame (x right, y down, z forward), not gravity
aligned. Without a better estimate of "up" the level-camera assumption holds: up = the first
camera's -y axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SceneFrame:
    """Where the BEV frame sits in CUT3R's world."""

    bev_from_world: np.ndarray  # (4, 4) maps CUT3R world points into the BEV frame
    source: str  # "given" | "floor_fit" | "level_camera"
    detail: str = ""  # how the up direction was obtained

    def points(self, points_world: np.ndarray) -> np.ndarray:
        """(N, 3) CUT3R world points -> BEV."""
        rotation, translation = self.bev_from_world[:3, :3], self.bev_from_world[:3, 3]
        return points_world @ rotation.T + translation

    def camera_pose(self, pose_c2w: np.ndarray) -> np.ndarray:
        """Camera-to-world (CUT3R) -> camera-to-BEV, 4x4."""
        return self.bev_from_world @ pose_c2w


def bev_frame(
    first_pose_c2w: np.ndarray, up_world: np.ndarray, source: str, detail: str = ""
) -> SceneFrame:
    """The BEV frame for a given up direction (in CUT3R world) and the first camera pose."""
    up = np.asarray(up_world, dtype=np.float64)
    up = up / np.linalg.norm(up)
    forward = first_pose_c2w[:3, :3] @ np.array([0.0, 0.0, 1.0])
    x = forward - forward.dot(up) * up
    if np.linalg.norm(x) < 1e-6:  # looking straight up or down: use the camera's x axis
        right = first_pose_c2w[:3, :3] @ np.array([1.0, 0.0, 0.0])
        x = np.cross(up, right)
    x /= np.linalg.norm(x)
    y = np.cross(up, x)
    rotation = np.stack([x, y, up])  # rows: BEV axes in world coordinates
    bev_from_world = np.eye(4)
    bev_from_world[:3, :3] = rotation
    bev_from_world[:3, 3] = -rotation @ first_pose_c2w[:3, 3]
    return SceneFrame(bev_from_world, source, detail)


def level_camera_frame(first_pose_c2w: np.ndarray) -> SceneFrame:
    """The BEV frame assuming the first camera was level (up = its -y axis)."""
    up = first_pose_c2w[:3, :3] @ np.array([0.0, -1.0, 0.0])
    return bev_frame(first_pose_c2w, up, "level_camera")


def voxel_downsample(
    points: np.ndarray, colors: np.ndarray, voxel: float, max_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """One point per occupied voxel (the first), then at most max_points (evenly strided)."""
    if len(points) == 0:
        return points.reshape(0, 3), colors.reshape(0, 3)
    cells = np.floor(points / voxel).astype(np.int64)
    cells -= cells.min(0)
    span = cells.max(0) + 1
    keys = (cells[:, 0] * span[1] + cells[:, 1]) * span[2] + cells[:, 2]  # one int per voxel
    _, first = np.unique(keys, return_index=True)
    first.sort()
    if len(first) > max_points:
        first = first[np.linspace(0, len(first) - 1, max_points).astype(int)]
    return points[first], colors[first]


@dataclass
class SceneView:
    """The scene in the BEV frame, for RViz."""

    frame: SceneFrame
    camera_poses: list[np.ndarray]  # camera-to-BEV 4x4 per processed keyframe
    stamps_ns: list[int]
    points: np.ndarray  # (N, 3) float32, BEV
    colors: np.ndarray  # (N, 3) uint8
