"""Cross-process: frames that never reach the node are named, with what to change.

Large raw frames (4000x3000 rgb8, 36 MB) published best-effort at 10 Hz are lost in transport
on this machine; the node's /diagnostics, its log and a service reply say so. A best-effort
camera on a node that asks for reliable frames is named as a QoS mismatch.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from ros_graph import NodeProcess, call, isolate_ros_graph, ros_test_node, spin_until

isolate_ros_graph()
rclpy = pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from loc3r_interfaces.srv import Localize  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402


@pytest.fixture(scope="module")
def ros():
    with ros_test_node("camera_loss_test") as node:
        yield node


def start_node(name: str, topic: str, tmp_path, *params: str) -> NodeProcess:
    args = ["-p", f"image_topic:={topic}", "-p", "status_period_s:=0.2",
            "-p", "model_dir:=/nonexistent", *params]  # fmt: skip
    return NodeProcess(
        "loc3r_node", "--ros-args", "-r", f"__node:={name}", *args,
        log_path=tmp_path / f"{name}.log",
    )  # fmt: skip


def camera_reports(diagnostics: list[DiagnosticArray], name: str) -> list[dict[str, str]]:
    """The node's diagnostics values, with its message under "message"."""
    out = []
    for array in diagnostics:
        for status in array.status:
            if status.name.startswith(f"/{name}:"):
                values = {kv.key: kv.value for kv in status.values}
                out.append({**values, "message": status.message, "level": status.level})
    return out


def test_large_best_effort_frames_lost_in_transport_are_named(ros, tmp_path):
    server = start_node("big_node", "/big_cam", tmp_path)
    diagnostics: list[DiagnosticArray] = []
    ros.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 50)
    publisher = ros.create_publisher(
        Image, "/big_cam", QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
    )
    width, height = 4000, 3000
    frame = Image(width=width, height=height, encoding="rgb8", step=3 * width)
    frame.data = np.random.default_rng(0).integers(0, 255, 3 * width * height, np.uint8).tobytes()
    sent = 0
    try:
        assert spin_until(ros, lambda: bool(camera_reports(diagnostics, "big_node")), 30)
        assert spin_until(ros, lambda: publisher.get_subscription_count() > 0, 10)
        last = 0.0

        def named() -> bool:
            nonlocal sent, last
            if time.monotonic() - last >= 0.1:  # 10 Hz
                publisher.publish(frame)
                sent, last = sent + 1, time.monotonic()
            reports = camera_reports(diagnostics, "big_node")
            return sent >= 20 and bool(reports) and reports[-1]["camera_input"] != "ok"

        assert spin_until(ros, named, 40), (sent, camera_reports(diagnostics, "big_node")[-1:])
        report = camera_reports(diagnostics, "big_node")[-1]
        received = int(report["frames_received"])
        assert received < sent / 2, (received, sent)
        assert report["level"] == DiagnosticStatus.WARN and report["image_publishers"] == "1"
        problem = report["camera_input"]
        assert "lost in transport" in problem or "no frame arrived" in problem, problem
        if "lost in transport" in problem:  # Fast DDS reports the samples it dropped
            assert int(report["frames_lost_in_transport"]) > 0
        assert "image_qos_reliability:=reliable" in problem and "compressed" in problem
        assert "camera input:" in report["message"]
        localize = ros.create_client(Localize, "/big_node/localize")
        assert localize.wait_for_service(timeout_sec=10)
        reply = call(ros, localize, Localize.Request(situation="I am by the door"))
        assert not reply.success and "(camera input: " in reply.message, reply.message
        assert "image_qos_reliability:=reliable" in reply.message
    finally:
        assert server.stop() == 0, server.log()
    said = [line for line in server.log().splitlines() if "camera input:" in line]
    assert 1 <= len(said) <= 3, said  # said when the situation changes, not on every status tick
    print(f"sent {sent} frames of 36 MB best-effort; the node received {received}")


def test_best_effort_camera_on_a_reliable_subscription_is_a_qos_mismatch(ros, tmp_path):
    server = start_node("strict_node", "/strict_cam", tmp_path, "-p",
                        "image_qos_reliability:=reliable")  # fmt: skip
    diagnostics: list[DiagnosticArray] = []
    ros.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 50)
    publisher = ros.create_publisher(
        Image, "/strict_cam", QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
    )
    small = Image(width=8, height=6, encoding="rgb8", step=24, data=bytes(144))
    try:

        def named() -> bool:
            publisher.publish(small)
            reports = camera_reports(diagnostics, "strict_node")
            return bool(reports) and "incompatible" in reports[-1]["camera_input"]

        assert spin_until(ros, named, 30), camera_reports(diagnostics, "strict_node")[-1:]
        report = camera_reports(diagnostics, "strict_node")[-1]
        assert "RELIABILITY" in report["camera_input"] and report["frames_received"] == "0"
        assert "image_qos_reliability:=best_effort" in report["camera_input"]
    finally:
        assert server.stop() == 0, server.log()
