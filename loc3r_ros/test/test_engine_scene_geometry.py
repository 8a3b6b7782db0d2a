"""SceneGeometry: incremental keyframes give the same view as a fresh build; frame caching."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from loc3r.engine.scene_geometry import KeyframeGeometry, SceneGeometry


def keyframe(index: int) -> KeyframeGeometry:
    """A camera turning about CUT3R's -y (up for a level camera) over a floor 1.4 m below."""
    rng = np.random.default_rng(index)
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("y", 12 * index, degrees=True).as_matrix()
    pose[:3, 3] = [0.1 * index, 0.0, 0.05 * index]
    floor = np.column_stack([rng.uniform(-3, 3, 600), np.full(600, 1.4), rng.uniform(0.5, 5, 600)])
    clutter = rng.uniform([-3, -0.5, 0.5], [3, 1.3, 5], (200, 3))
    points = np.concatenate([floor, clutter]).astype(np.float32)
    colors = rng.integers(0, 256, (len(points), 3), dtype=np.uint8)
    return KeyframeGeometry(index, (index + 1) * 10**8, pose, points, colors)


FRAMES = [keyframe(i) for i in range(12)]


def fresh_view(frames, given_up=None):
    geometry = SceneGeometry()
    geometry.update(0, frames, [k.index for k in frames], given_up)
    return geometry.view(voxel=0.05, max_points=5000)


def assert_same_view(a, b):
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.colors, b.colors)
    np.testing.assert_allclose(a.frame.bev_from_world, b.frame.bev_from_world)
    assert a.stamps_ns == b.stamps_ns


def test_incremental_updates_match_a_fresh_build():
    geometry = SceneGeometry()
    for start, end in ((0, 3), (2, 7), (5, 12)):  # overlaps are harmless
        added = FRAMES[start:end]
        view = geometry.update_and_view(0, added, list(range(end)), None, 0.05, 5000)
        assert len(view.camera_poses) == end
    view = geometry.view(0.05, 5000)
    assert view.frame.source == "floor_fit", view.frame.detail
    # 12 keyframes >= 7 * 1.25: refitted, so the same frame as a fresh build
    assert_same_view(view, fresh_view(FRAMES))
    # dropping old keyframes (a rolling buffer) keeps only the alive ones, first one anchors
    rolled = geometry.update_and_view(0, [], list(range(4, 12)), None, 0.05, 5000)
    assert rolled.stamps_ns == [k.stamp_ns for k in FRAMES[4:]]
    np.testing.assert_allclose(rolled.camera_poses[0][:3, 3], 0.0, atol=1e-9)
    assert_same_view(rolled, fresh_view(FRAMES[4:]))


def test_frame_is_kept_until_the_scene_grows_by_a_quarter():
    geometry = SceneGeometry()
    geometry.update(0, FRAMES[:8], list(range(8)))
    first = geometry.frame()
    geometry.update(0, FRAMES[8:9], list(range(9)))
    assert geometry.frame() is first  # 9 < 8 * 1.25: the same frame object
    geometry.update(0, FRAMES[9:10], list(range(10)))
    assert geometry.frame() is not first  # 10 >= 8 * 1.25: refitted


def test_gravity_and_generation_changes():
    geometry = SceneGeometry()
    geometry.update(0, FRAMES[:6], list(range(6)))
    assert geometry.frame().source == "floor_fit"
    up = np.array([0.0, -1.0, 0.0])
    geometry.update(0, [], list(range(6)), up)
    assert geometry.frame().source == "given"
    geometry.update(0, [], list(range(6)), None)
    assert geometry.frame().source == "floor_fit"
    geometry.update(1, FRAMES[:2], [0, 1])  # a new scene: the old keyframes are gone
    assert geometry.indices == [0, 1]
    with pytest.raises(ValueError, match="never added"):
        geometry.update(2, FRAMES[:1], [0, 1])
    assert SceneGeometry().view() is None
