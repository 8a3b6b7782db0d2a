"""Messages for RViz: reconstruction cloud, camera path, agent markers, diagnostics.

Pure builders (numpy in, message out) so they are tested without a ROS graph. All geometry is
in the scene frame (z up, metres).
"""

from __future__ import annotations

import math

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseStamped
from nav_msgs.msg import Path
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from loc3r.engine import AgentPose

_CLOUD_FIELDS = [
    PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
    PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
    PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
    PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1),
]


def point_cloud(header: Header, points: np.ndarray, colors: np.ndarray | None) -> PointCloud2:
    """(N, 3) float points and optional (N, 3) uint8 RGB -> PointCloud2 (x, y, z, rgb)."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    if colors is None:
        colors = np.full(points.shape, 200, np.uint8)
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if len(colors) != len(points):
        raise ValueError(f"{len(points)} points but {len(colors)} colours")
    cloud = np.zeros(len(points), dtype=[("xyz", "<f4", 3), ("rgb", "<u4")])
    cloud["xyz"] = points
    c = colors.astype(np.uint32)
    cloud["rgb"] = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    return PointCloud2(
        header=header,
        height=1,
        width=len(points),
        fields=_CLOUD_FIELDS,
        is_bigendian=False,
        point_step=16,
        row_step=16 * len(points),
        data=cloud.tobytes(),
        is_dense=True,
    )


def pose_from_matrix(matrix: np.ndarray) -> Pose:
    """4x4 rigid transform -> geometry_msgs/Pose."""
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in matrix[:3, 3])
    q = Rotation.from_matrix(matrix[:3, :3]).as_quat()
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (
        float(v) for v in q
    )
    return pose


def camera_path(header: Header, poses: list[np.ndarray], stamps: list) -> Path:
    """Camera-to-scene 4x4 poses (one per keyframe) -> nav_msgs/Path with per-pose stamps."""
    if len(poses) != len(stamps):
        raise ValueError(f"{len(poses)} poses but {len(stamps)} stamps")
    path = Path(header=header)
    for matrix, stamp in zip(poses, stamps, strict=True):
        pose_header = Header(stamp=stamp, frame_id=header.frame_id)
        path.poses.append(PoseStamped(header=pose_header, pose=pose_from_matrix(matrix)))
    return path


def _color(r: float, g: float, b: float, a: float = 1.0) -> ColorRGBA:
    return ColorRGBA(r=r, g=g, b=b, a=a)


def agent_markers(
    header: Header, pose: AgentPose, question: str, answer: str, namespace: str = "loc3r"
) -> MarkerArray:
    """Agent arrow (heading), 1-sigma position ellipse, and the last question and answer."""
    q = Rotation.from_euler("z", pose.yaw).as_quat()
    arrow = Marker(header=header, ns=namespace, id=0, type=Marker.ARROW, action=Marker.ADD)
    arrow.pose.position.x, arrow.pose.position.y, arrow.pose.position.z = (
        pose.x,
        pose.y,
        pose.height,
    )
    arrow.pose.orientation.x, arrow.pose.orientation.y = float(q[0]), float(q[1])
    arrow.pose.orientation.z, arrow.pose.orientation.w = float(q[2]), float(q[3])
    arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.6, 0.08, 0.08
    arrow.color = _color(0.95, 0.3, 0.1)

    ellipse = Marker(header=header, ns=namespace, id=1, type=Marker.CYLINDER, action=Marker.ADD)
    ellipse.pose.position = Point(x=pose.x, y=pose.y, z=pose.height)
    ellipse.pose.orientation.w = 1.0  # sigma_x / sigma_y are along the scene axes
    ellipse.scale.x = 2.0 * max(pose.sigma_x, 0.01)
    ellipse.scale.y = 2.0 * max(pose.sigma_y, 0.01)
    ellipse.scale.z = 0.01
    ellipse.color = _color(0.95, 0.6, 0.1, 0.35)

    spread = Marker(header=header, ns=namespace, id=2, type=Marker.LINE_STRIP, action=Marker.ADD)
    half = min(pose.yaw_spread, math.pi)
    for angle in np.linspace(pose.yaw - half, pose.yaw + half, 16):
        spread.points.append(
            Point(x=pose.x + 0.5 * math.cos(angle), y=pose.y + 0.5 * math.sin(angle), z=pose.height)
        )
    spread.scale.x = 0.02
    spread.color = _color(0.95, 0.3, 0.1, 0.8)

    text = Marker(
        header=header, ns=namespace, id=3, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD
    )
    text.pose.position = Point(x=pose.x, y=pose.y, z=pose.height + 0.8)
    text.pose.orientation.w = 1.0
    text.scale.z = 0.2
    text.color = _color(1.0, 1.0, 1.0)
    text.text = f"Q: {question}\nA: {answer}" if question else "situated agent"
    return MarkerArray(markers=[arrow, ellipse, spread, text])


def layout_markers(
    header: Header, points_xy: np.ndarray, sigmas: np.ndarray, namespace: str = "loc3r_layout"
) -> Marker:
    """The model's bird's-eye layout prediction: one flat point per vision token, sized by sigma."""
    marker = Marker(header=header, ns=namespace, id=0, type=Marker.POINTS, action=Marker.ADD)
    marker.pose.orientation.w = 1.0
    marker.scale.x = marker.scale.y = 0.05
    points_xy = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1, 2)
    confidence = 1.0 / (1.0 + sigmas.mean(axis=1))  # 1 = certain, -> 0 as sigma grows
    for (x, y), c in zip(points_xy, confidence, strict=True):
        marker.points.append(Point(x=float(x), y=float(y), z=0.0))
        marker.colors.append(_color(0.1, 0.6, 1.0, float(np.clip(c, 0.1, 1.0))))
    return marker


def diagnostics(
    header: Header, node_name: str, level: int | bytes, message: str, values: dict[str, object]
) -> DiagnosticArray:
    """One DiagnosticStatus for the node with key/value pairs (level: DiagnosticStatus.OK...)."""
    status = DiagnosticStatus(
        level=level if isinstance(level, bytes) else bytes([level]),
        name=f"{node_name}: loc3r",
        message=message,
        hardware_id="loc3r",
        values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
    )
    return DiagnosticArray(header=header, status=[status])
