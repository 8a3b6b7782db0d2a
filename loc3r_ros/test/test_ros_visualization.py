"""RViz message builders: cloud layout, path, markers, diagnostics."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("sensor_msgs")
from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from loc3r.engine import AgentPose  # noqa: E402
from loc3r_ros.visualization import (  # noqa: E402
    agent_markers,
    camera_path,
    diagnostics,
    layout_markers,
    point_cloud,
)

HEADER = Header(frame_id="loc3r_world", stamp=Time(sec=3, nanosec=5))


def test_point_cloud_bytes_decode_back():
    pts = np.array([[0.0, 1.0, 2.0], [-1.5, 0.25, 3.0]])
    cols = np.array([[255, 0, 10], [1, 2, 3]], np.uint8)
    msg = point_cloud(HEADER, pts, cols)
    assert (msg.width, msg.height, msg.point_step, msg.row_step) == (2, 1, 16, 32)
    raw = np.frombuffer(bytes(msg.data), dtype=[("xyz", "<f4", 3), ("rgb", "<u4")])
    np.testing.assert_allclose(raw["xyz"], pts)
    assert raw["rgb"][0] == (255 << 16) | 10 and raw["rgb"][1] == (1 << 16) | (2 << 8) | 3
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb"]
    with pytest.raises(ValueError, match="2 points but 1 colours"):
        point_cloud(HEADER, pts, cols[:1])


def test_camera_path_keeps_poses_and_stamps():
    poses = [np.eye(4), np.eye(4)]
    poses[1][:3, 3] = [1.0, 2.0, 0.5]
    poses[1][:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # 90 deg about z
    path = camera_path(HEADER, poses, [Time(sec=1), Time(sec=2)])
    assert len(path.poses) == 2 and path.poses[1].header.stamp.sec == 2
    q = path.poses[1].pose.orientation
    assert 2 * math.atan2(q.z, q.w) == pytest.approx(math.pi / 2)
    assert path.poses[1].pose.position.y == 2.0


def test_agent_markers_show_heading_uncertainty_and_text():
    pose = AgentPose(x=1.0, y=2.0, yaw=math.pi / 2, sigma_x=0.3, sigma_y=0.1, yaw_spread=0.4)
    markers = agent_markers(HEADER, pose, "What is on my left?", "a lamp").markers
    arrow, ellipse, spread, text = markers
    assert arrow.type == Marker.ARROW and 2 * math.atan2(
        arrow.pose.orientation.z, arrow.pose.orientation.w
    ) == pytest.approx(math.pi / 2)
    assert (ellipse.scale.x, ellipse.scale.y) == pytest.approx((0.6, 0.2))
    angles = [math.atan2(p.y - 2.0, p.x - 1.0) for p in spread.points]
    assert min(angles) == pytest.approx(math.pi / 2 - 0.4) and max(angles) == pytest.approx(
        math.pi / 2 + 0.4
    )
    assert "a lamp" in text.text and all(m.header.frame_id == "loc3r_world" for m in markers)
    assert len({m.id for m in markers}) == 4


def test_layout_markers_fade_with_sigma():
    marker = layout_markers(HEADER, np.array([[0, 0], [1, 1]]), np.array([[0.0, 0.0], [9.0, 9.0]]))
    assert len(marker.points) == 2 and marker.colors[0].a > marker.colors[1].a


def test_diagnostics_level_and_values():
    msg = diagnostics(HEADER, "loc3r", 1, "no model loaded", {"keyframes": 3})
    (status,) = msg.status
    assert status.level == DiagnosticStatus.WARN and status.values[0].value == "3"
