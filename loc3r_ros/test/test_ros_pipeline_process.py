"""Launch-equivalent test: the installed node with config/loc3r.yaml and a tiny model bundle.

A camera stream is published from this process; clients call ask and localize over Fast DDS;
the test receives agent_pose(_cov), the latched result, TF (agent on /tf_static with the image
stamp; camera on /tf), the camera Path, PointCloud2, MarkerArray and /diagnostics.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from conftest import REPO_ROOT
from ros_graph import NodeProcess, call, isolate_ros_graph, spin_until
from tiny_bundle import make_tiny_bundle

isolate_ros_graph()
rclpy = pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import (  # noqa: E402
    PoseStamped,
    PoseWithCovarianceStamped,
    TransformStamped,
)
from loc3r_interfaces.msg import SituatedResult, Status  # noqa: E402
from loc3r_interfaces.srv import Ask, Localize  # noqa: E402
from nav_msgs.msg import Path  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image, PointCloud2  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from loc3r_ros.conversions import rgb_to_image_msg  # noqa: E402

TOPIC = "/pipeline_cam/image_raw"
LATCHED = QoSProfile(
    depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE
)


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    bundle = make_tiny_bundle(root / "bundle")
    config = REPO_ROOT / "install" / "loc3r_ros" / "share" / "loc3r_ros" / "config" / "loc3r.yaml"
    server = NodeProcess(
        "loc3r_node",
        "--ros-args",
        "--params-file", str(config),
        "-p", f"image_topic:={TOPIC}",
        "-p", f"model_dir:={bundle}",
        "-p", "keyframe_min_interval_s:=0.0",
        "-p", "keyframe_min_change:=0.0",
        "-p", "viz_period_s:=0.2",
        "-p", "status_period_s:=0.2",
        "-p", "parent_frame:=odom",
        log_path=root / "node.log",
    )  # fmt: skip
    rclpy.init()
    node = rclpy.create_node("pipeline_test")
    got: dict[str, list] = {k: [] for k in (
        "pose", "pose_cov", "result", "tf", "tf_static", "path", "points", "markers", "diag",
        "status",
    )}  # fmt: skip
    subs = [
        (PoseStamped, "/loc3r/agent_pose", "pose", 10),
        (PoseWithCovarianceStamped, "/loc3r/agent_pose_cov", "pose_cov", 10),
        (SituatedResult, "/loc3r/result", "result", LATCHED),
        (TFMessage, "/tf", "tf", 100),
        (TFMessage, "/tf_static", "tf_static", LATCHED),
        (Path, "/loc3r/camera_path", "path", LATCHED),
        (PointCloud2, "/loc3r/points", "points", LATCHED),
        (MarkerArray, "/loc3r/markers", "markers", LATCHED),
        (DiagnosticArray, "/diagnostics", "diag", 10),
        (Status, "/loc3r/status", "status", 10),
    ]
    for msg_type, topic, key, qos in subs:
        node.create_subscription(msg_type, topic, got[key].append, qos)
    pub = node.create_publisher(Image, TOPIC, 10)
    ask = node.create_client(Ask, "/loc3r/ask")
    localize = node.create_client(Localize, "/loc3r/localize")
    assert ask.wait_for_service(timeout_sec=60), server.log()
    ready = spin_until(
        node, lambda: bool(got["status"]) and got["status"][-1].state == Status.STATE_READY, 60
    )
    assert ready, f"model never became ready:\n{server.log()}"
    tf_pub = node.create_publisher(TFMessage, "/tf", 100)
    rng = np.random.default_rng(0)
    for i in range(8):
        msg = rgb_to_image_msg(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), Image)
        msg.header.stamp.sec, msg.header.frame_id = 1000 + i, "camera"
        odom = TransformStamped(child_frame_id="camera")  # the robot drives along an arc
        odom.header.stamp, odom.header.frame_id = msg.header.stamp, "odom"
        odom.transform.translation.x = math.cos(0.3 * i)
        odom.transform.translation.y = math.sin(0.3 * i)
        odom.transform.translation.z = 0.1 * i
        odom.transform.rotation.w = 1.0
        tf_pub.publish(TFMessage(transforms=[odom]))
        pub.publish(msg)
        spin_until(node, lambda: False, 0.15)
    assert spin_until(node, lambda: bool(got["status"]) and got["status"][-1].keyframes >= 6, 20), (
        got["status"][-1:]
    )
    yield node, ask, localize, got, server
    node.destroy_node()
    rclpy.shutdown()
    assert server.stop() == 0, server.log()


def test_ask_returns_answer_and_situated_pose(graph):
    node, ask, _, got, server = graph
    reply = call(
        node,
        ask,
        Ask.Request(
            question="What is on my left?", situation="I am sitting on the bed facing the window"
        ),
        timeout=60,
    )
    assert reply.success, reply.message
    assert reply.message == "ok" and isinstance(reply.answer, str)
    assert reply.has_pose and reply.pose.header.frame_id == "loc3r_world"
    assert reply.num_frames == 4 and reply.last_frame_stamp.sec >= 1005
    p = reply.pose.pose.pose
    assert all(math.isfinite(v) for v in (p.position.x, p.position.y, p.orientation.w))
    cov = np.array(reply.pose.pose.covariance).reshape(6, 6)
    assert cov[0, 0] > 0 and cov[1, 1] > 0 and cov[5, 5] > 0
    assert reply.position_sigma_m > 0 and reply.latency_s > 0
    confidence = reply.confidence
    assert 0.0 < confidence.answer_probability <= 1.0 and confidence.cut3r_confidence >= 1.0
    assert not confidence.domain_checked and math.isnan(confidence.domain_score)  # no domain file

    assert spin_until(node, lambda: got["pose"] and got["tf_static"] and got["markers"], 10)
    pose = got["pose"][-1]
    assert pose.header.stamp == reply.pose.header.stamp and pose.header.frame_id == "loc3r_world"
    agent = [t for m in got["tf_static"] for t in m.transforms if t.child_frame_id == "loc3r_agent"]
    assert agent and agent[-1].header.frame_id == "loc3r_world"
    assert agent[-1].header.stamp == pose.header.stamp  # the stamp of the newest image used
    assert agent[-1].transform.translation.x == pytest.approx(p.position.x)
    assert got["pose_cov"][-1].pose.covariance[0] == pytest.approx(cov[0, 0])
    assert "What is on my left?" in got["markers"][-1].markers[-1].text
    assert spin_until(node, lambda: bool(got["result"]), 5)
    assert got["result"][-1].question == "What is on my left?" and got["result"][-1].has_pose
    assert got["result"][-1].confidence.answer_probability == confidence.answer_probability


def test_localize_and_visualisation_topics(graph):
    node, _, localize, got, _ = graph
    reply = call(node, localize, Localize.Request(situation="I am standing by the door"), 60)
    assert reply.success, reply.message
    assert math.isnan(reply.confidence.answer_probability)  # no answer to a localization
    assert reply.confidence.cut3r_confidence >= 1.0
    assert reply.pose.header.frame_id == "loc3r_world" and reply.num_frames == 4

    def published() -> bool:
        return bool(got["path"] and got["points"] and got["tf"] and got["diag"])

    assert spin_until(node, published, 15)
    path = got["path"][-1]
    assert path.header.frame_id == "loc3r_world" and len(path.poses) >= 6
    first = path.poses[0].pose.position
    assert (first.x, first.y, first.z) == pytest.approx((0.0, 0.0, 0.0), abs=1e-5)
    cloud = got["points"][-1]
    assert cloud.width > 0 and cloud.header.frame_id == "loc3r_world"
    xyz = np.frombuffer(bytes(cloud.data), dtype=[("xyz", "<f4", 3), ("rgb", "<u4")])["xyz"]
    assert np.isfinite(xyz).all()
    camera = [t for m in got["tf"] for t in m.transforms if t.child_frame_id == "loc3r_camera"]
    assert camera and camera[-1].header.frame_id == "loc3r_world"
    assert camera[-1].header.stamp.sec >= 1005  # keyframe stamps, not wall time
    anchored = [
        t for m in got["tf_static"] for t in m.transforms if t.child_frame_id == "loc3r_world"
    ]
    assert spin_until(
        node,
        lambda: any(
            t.child_frame_id == "loc3r_world" for m in got["tf_static"] for t in m.transforms
        ),
        10,
    )
    anchored = [
        t for m in got["tf_static"] for t in m.transforms if t.child_frame_id == "loc3r_world"
    ]
    assert anchored[-1].header.frame_id == "odom"
    q = anchored[-1].transform.rotation
    assert math.isclose(q.x**2 + q.y**2 + q.z**2 + q.w**2, 1.0, rel_tol=1e-6)
    latest = got["tf_static"][-1].transforms
    assert {t.child_frame_id for t in latest} >= {"loc3r_agent", "loc3r_world"}  # whole set
    entry = got["diag"][-1].status[0]
    values = {kv.key: kv.value for kv in entry.values}
    assert entry.level == DiagnosticStatus.OK and entry.message == "ready"
    assert float(values["cut3r_ms_per_frame"]) > 0 and int(values["keyframes"]) >= 6
    assert values["gravity"].startswith("given")  # from TF: odom's z axis
    time.sleep(0.1)
