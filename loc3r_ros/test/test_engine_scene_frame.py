"""BEV frame construction, transforms and voxel downsampling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from loc3r.engine.scene_frame import bev_frame, level_camera_frame, voxel_downsample


def test_level_first_camera_gives_rep103_axes():
    frame = level_camera_frame(np.eye(4))
    # CUT3R world = first camera: forward z -> BEV x, right x -> BEV -y, down y -> BEV -z
    np.testing.assert_allclose(frame.points(np.array([[0.0, 0.0, 2.0]])), [[2.0, 0.0, 0.0]])
    np.testing.assert_allclose(frame.points(np.array([[1.0, 0.0, 0.0]])), [[0.0, -1.0, 0.0]])
    np.testing.assert_allclose(frame.points(np.array([[0.0, 1.5, 0.0]])), [[0.0, 0.0, -1.5]])
    assert frame.source == "level_camera"


def test_tilted_camera_with_known_gravity():
    # First camera pitched down by 30 deg and rolled by 10 deg in a z-up world.
    tilt = Rotation.from_euler("xz", [-30, 10], degrees=True).as_matrix()
    cam_to_zup = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]]) @ tilt  # OpenCV cam in z-up
    # Express everything in CUT3R world (= first camera frame): up = R^T e_z.
    up_world = cam_to_zup.T @ np.array([0.0, 0.0, 1.0])
    frame = bev_frame(np.eye(4), up_world, "given")
    point_zup = np.array([3.0, 1.0, -1.2])  # relative to the camera centre, z-up world
    point_world = cam_to_zup.T @ point_zup
    bev = frame.points(point_world[None])[0]
    assert bev[2] == pytest.approx(-1.2)  # height is preserved
    assert np.hypot(bev[0], bev[1]) == pytest.approx(np.hypot(3.0, 1.0))
    rotation = frame.bev_from_world[:3, :3]
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)


def test_camera_pose_into_bev():
    frame = level_camera_frame(np.eye(4))
    pose = np.eye(4)
    pose[:3, 3] = [0.5, 0.0, 1.0]  # 1 m forward, 0.5 m right
    in_bev = frame.camera_pose(pose)
    np.testing.assert_allclose(in_bev[:3, 3], [1.0, -0.5, 0.0])


def test_voxel_downsample_bounds():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1, (5000, 3))
    cols = rng.integers(0, 255, (5000, 3), dtype=np.uint8)
    out, out_cols = voxel_downsample(pts, cols, 0.1, 10_000)
    keys = np.floor(out / 0.1).astype(int)
    assert len(np.unique(keys, axis=0)) == len(out) <= 1000
    small, _ = voxel_downsample(pts, cols, 0.01, 300)
    assert len(small) == 300 and len(out_cols) == len(out)
