"""The small TF buffer: chains, interpolation, static frames, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from loc3r_ros.tf_buffer import TfBuffer, TfLookupError

SEC = 1_000_000_000


def pose(x: float, y: float, z: float, yaw_deg: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("z", yaw_deg, degrees=True).as_matrix()
    m[:3, 3] = (x, y, z)
    return m


def test_chain_and_inverse_lookup():
    tf = TfBuffer()
    tf.add("map", "odom", 0, pose(1, 0, 0, 90), static=True)
    tf.add("odom", "base_link", 5 * SEC, pose(2, 0, 0, 0), static=False)
    tf.add("base_link", "camera", 0, pose(0, 0, 1, 0), static=True)
    m = tf.lookup("map", "camera", 5 * SEC)
    np.testing.assert_allclose(m[:3, 3], [1, 2, 1], atol=1e-12)
    np.testing.assert_allclose(tf.lookup("camera", "map", 5 * SEC), np.linalg.inv(m), atol=1e-12)
    assert tf.frames() == {"map", "odom", "base_link", "camera"}


def test_interpolation_between_samples():
    tf = TfBuffer()
    tf.add("odom", "base", 0 * SEC, pose(0, 0, 0, 0), static=False)
    tf.add("odom", "base", 2 * SEC, pose(2, 0, 0, 90), static=False)
    m = tf.lookup("odom", "base", 1 * SEC)
    np.testing.assert_allclose(m[:3, 3], [1, 0, 0], atol=1e-12)
    yaw = Rotation.from_matrix(m[:3, :3]).as_euler("zyx", degrees=True)[0]
    assert yaw == pytest.approx(45.0)


def test_no_extrapolation_and_disconnected_frames():
    tf = TfBuffer(max_extrapolation_s=0.1)
    tf.add("odom", "base", 1 * SEC, pose(0, 0, 0, 0), static=False)
    tf.add("odom", "base", 2 * SEC, pose(1, 0, 0, 0), static=False)
    with pytest.raises(TfLookupError, match="no data near"):
        tf.lookup("odom", "base", 3 * SEC)
    tf.lookup("odom", "base", 2 * SEC + SEC // 20)  # within tolerance
    tf.add("world", "other", 0, np.eye(4), static=True)
    with pytest.raises(TfLookupError, match="not connected"):
        tf.lookup("odom", "other", 2 * SEC)


def test_cache_is_bounded_and_out_of_order_samples_are_sorted():
    tf = TfBuffer(cache_s=1.0)
    for i in range(100):
        tf.add("odom", "base", i * SEC // 10, pose(i, 0, 0, 0), static=False)
    tf.add("odom", "base", 9_850_000_000, pose(98.5, 0, 0, 0), static=False)
    link = tf._links["base"]
    assert len(link.stamps) <= 12 and list(link.stamps) == sorted(link.stamps)
    assert tf.lookup("odom", "base", 9_850_000_000)[0, 3] == pytest.approx(98.5)
