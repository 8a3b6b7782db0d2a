"""Gravity: floor fit under tilt, roll and outliers; fallbacks; known points at known BEV places."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from loc3r.engine.gravity import estimate_up
from loc3r.engine.scene_frame import bev_frame
from loc3r.scenes import camera_pose


def scene_in_first_camera(pitch_deg: float, roll_deg: float, seed: int = 0):
    """Floor (noisy) + walls + furniture + uniform outliers (30 %), seen from a tilted camera.

    Returns points and camera poses in the first camera's OpenCV frame (CUT3R's world), the true
    up vector in that frame, and the world-to-camera transform.
    """
    rng = np.random.default_rng(seed)
    floor = np.column_stack([rng.uniform(0, 5, 3000), rng.uniform(0, 4, 3000),
                             rng.normal(0, 0.005, 3000)])  # fmt: skip
    wall = np.column_stack([np.full(800, 5.0), rng.uniform(0, 4, 800), rng.uniform(0, 2.5, 800)])
    table = np.column_stack([rng.uniform(2, 3, 400), rng.uniform(1, 2, 400), np.full(400, 0.75)])
    inliers = np.concatenate([floor, wall, table])
    outliers = rng.uniform([0, 0, 0], [5, 4, 2.5], (int(0.3 / 0.7 * len(inliers)), 3))
    world = np.concatenate([inliers, outliers])
    first = camera_pose(np.array([0.5, 2.0, 1.4]), 0.2, math.radians(pitch_deg),
                        math.radians(roll_deg))  # fmt: skip
    second = camera_pose(np.array([1.5, 2.2, 1.45]), 0.6, math.radians(pitch_deg / 2), 0.0)
    to_cam = np.linalg.inv(first)
    points = world @ to_cam[:3, :3].T + to_cam[:3, 3]
    poses = [to_cam @ first, to_cam @ second]
    true_up = to_cam[:3, :3] @ np.array([0.0, 0.0, 1.0])
    return points, poses, true_up, to_cam


@pytest.mark.parametrize(("pitch", "roll"), [(0, 0), (-30, 0), (-20, 15), (-30, -15), (10, 8)])
def test_floor_normal_within_two_degrees(pitch, roll):
    points, poses, true_up, _ = scene_in_first_camera(pitch, roll)
    estimate = estimate_up(points, poses)
    assert estimate.source == "floor_fit", estimate.detail
    error = math.degrees(math.acos(np.clip(estimate.up @ true_up, -1, 1)))
    assert error < 2.0
    # the floor lies 1.4 m below the first camera
    assert estimate.floor_offset == pytest.approx(-1.4, abs=0.03)


def test_known_points_land_at_known_bev_coordinates():
    points, poses, true_up, to_cam = scene_in_first_camera(-25, 10)
    estimate = estimate_up(points, poses)
    frame = bev_frame(poses[0], estimate.up, estimate.source)
    # a world point 2 m along the first camera's heading (yaw 0.2), at floor level
    heading = np.array([math.cos(0.2), math.sin(0.2), 0.0])
    world = np.array([0.5, 2.0, 0.0]) + 2.0 * heading
    in_cam = to_cam[:3, :3] @ world + to_cam[:3, 3]
    bev = frame.points(in_cam[None])[0]
    np.testing.assert_allclose(bev, [2.0, 0.0, -1.4], atol=0.06)


def test_given_gravity_wins_and_bad_input_falls_back():
    points, poses, true_up, _ = scene_in_first_camera(-10, 5)
    given = Rotation.from_euler("x", 1, degrees=True).apply(true_up)
    assert estimate_up(points, poses, given_up=given).source == "given"
    bad = estimate_up(points, poses, given_up=np.array([np.nan, 0, 0]))
    assert bad.source == "floor_fit" and "invalid" in bad.detail


def test_no_floor_falls_back_to_the_level_camera():
    _, poses, _, _ = scene_in_first_camera(-10, 0)
    rng = np.random.default_rng(1)
    walls_only = np.column_stack(
        [np.full(2000, 3.0), rng.uniform(-1, 1, 2000), rng.uniform(0, 3, 2000)]
    )
    estimate = estimate_up(walls_only, poses)
    assert estimate.source == "level_camera" and "floor fit failed" in estimate.detail
    np.testing.assert_allclose(estimate.up, [0.0, -1.0, 0.0], atol=1e-12)
