"""A bird's-eye picture of a scene: reconstruction from above, camera path, agent and sigma."""

from __future__ import annotations

import math

import cv2
import numpy as np

from loc3r.engine.scene_engine import AgentPose
from loc3r.engine.scene_frame import SceneView


def draw_bev(view: SceneView, pose: AgentPose | None, size: int = 640, margin: float = 0.5):
    """(size, size, 3) uint8 RGB image of the scene in the BEV frame (x up the image, y left)."""
    xy = [view.points[:, :2]] if len(view.points) else []
    xy.append(np.array([p[:2, 3] for p in view.camera_poses]))
    if pose is not None:
        xy.append(np.array([[pose.x, pose.y]]))
    everything = np.concatenate(xy)
    low, high = everything.min(0) - margin, everything.max(0) + margin
    scale = (size - 1) / float(max(high - low))

    def pixel(x: float, y: float) -> tuple[int, int]:
        # BEV x (forward) points up in the image, BEV y (left) points left
        return int(round((high[1] - y) * scale)), int(round((high[0] - x) * scale))

    image = np.full((size, size, 3), 255, np.uint8)
    for (x, y), colour in zip(view.points[:, :2], view.colors, strict=True):
        cv2.circle(image, pixel(x, y), 1, tuple(int(c) for c in colour), -1)
    path = [pixel(*p[:2, 3]) for p in view.camera_poses]
    for a, b in zip(path, path[1:], strict=False):
        cv2.line(image, a, b, (40, 40, 220), 1, cv2.LINE_AA)
    for p in view.camera_poses:
        heading = p[:3, 2]  # the camera's optical axis in BEV
        start = pixel(p[0, 3], p[1, 3])
        cv2.arrowedLine(image, start, pixel(p[0, 3] + 0.3 * heading[0], p[1, 3] + 0.3 * heading[1]),
                        (40, 40, 220), 1, cv2.LINE_AA, tipLength=0.3)  # fmt: skip
    if pose is not None:
        centre = pixel(pose.x, pose.y)
        axes = (max(1, int(pose.sigma_y * scale)), max(1, int(pose.sigma_x * scale)))
        cv2.ellipse(image, centre, axes, 0, 0, 360, (230, 140, 20), 2, cv2.LINE_AA)
        tip = pixel(pose.x + 0.6 * math.cos(pose.yaw), pose.y + 0.6 * math.sin(pose.yaw))
        cv2.arrowedLine(image, centre, tip, (230, 60, 20), 3, cv2.LINE_AA, tipLength=0.3)
    return image
