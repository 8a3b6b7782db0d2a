"""Cross-process test: loc3r_node from the colcon install serves /loc3r/ask over Fast DDS."""

from __future__ import annotations

import time

import numpy as np
import pytest
from ros_graph import NodeProcess, call, isolate_ros_graph, spin_until

isolate_ros_graph()
rclpy = pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from loc3r_interfaces.msg import Status  # noqa: E402
from loc3r_interfaces.srv import Ask, Localize  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from loc3r_ros.conversions import rgb_to_image_msg  # noqa: E402

IMAGE_TOPIC = "/test_cam/image_raw"


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """The node in its own process, and a client node in this one."""
    log = tmp_path_factory.mktemp("ros") / "loc3r_node.log"
    server = NodeProcess(
        "loc3r_node",
        "--ros-args",
        "-p",
        f"image_topic:={IMAGE_TOPIC}",
        "-p",
        "image_qos_reliability:=reliable",
        "-p",
        "keyframe_min_interval_s:=0.0",
        "-p",
        "keyframe_min_change:=0.0",
        "-p",
        "status_period_s:=0.2",
        "-p",
        "max_text_chars:=500",
        "-p",
        "model_dir:=/nonexistent/loc3r_model",  # the no-model path, on purpose
        log_path=log,
    )
    rclpy.init()
    node = rclpy.create_node("loc3r_test_client")
    clients = {
        "ask": node.create_client(Ask, "/loc3r/ask"),
        "localize": node.create_client(Localize, "/loc3r/localize"),
        "reset": node.create_client(Trigger, "/loc3r/reset"),
    }
    for name, client in clients.items():
        assert client.wait_for_service(timeout_sec=30.0), f"/loc3r/{name} missing:\n{server.log()}"
    statuses: list[Status] = []
    node.create_subscription(Status, "/loc3r/status", statuses.append, 10)
    diagnostics: list[DiagnosticArray] = []
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    image_pub = node.create_publisher(Image, IMAGE_TOPIC, 10)
    yield node, clients, statuses, diagnostics, image_pub, server
    node.destroy_node()
    rclpy.shutdown()
    code = server.stop()
    assert code == 0, f"loc3r_node exited with {code}:\n{server.log()}"


def test_empty_question_is_rejected_with_a_reason(graph):
    node, clients, *_ = graph
    reply = call(node, clients["ask"], Ask.Request(question="   ", situation=""))
    assert reply.success is False
    assert reply.message == "question is empty"
    assert reply.answer == ""
    assert reply.has_pose is False


def test_oversized_and_control_character_text_is_rejected(graph):
    node, clients, *_ = graph
    reply = call(node, clients["ask"], Ask.Request(question="why? " * 200))
    assert reply.success is False
    assert "too long" in reply.message and "limit 500" in reply.message
    reply = call(node, clients["localize"], Localize.Request(situation="on the bed\x07"))
    assert reply.success is False
    assert "control character" in reply.message


def test_valid_question_without_model_says_so(graph):
    node, clients, *_ = graph
    reply = call(
        node,
        clients["ask"],
        Ask.Request(question="What is on my left?", situation="I am sitting on the bed"),
    )
    assert reply.success is False
    assert "no model loaded" in reply.message and "/nonexistent/loc3r_model" in reply.message
    assert reply.latency_s >= 0.0


def test_images_are_buffered_and_malformed_ones_dropped(graph):
    node, clients, statuses, diagnostics, image_pub, _ = graph
    rng = np.random.default_rng(0)
    assert spin_until(node, lambda: image_pub.get_subscription_count() > 0, 20.0)
    bad = Image(height=4, width=4, encoding="yuv422_weird", step=8, data=bytes(32))
    short = rgb_to_image_msg(np.zeros((32, 32, 3), np.uint8), Image)
    short.data = bytes(10)
    sent = 0

    def publish_and_check() -> bool:
        # Keep publishing (fresh stamps) until the node has seen enough: the first messages can
        # race DDS discovery even on a matched reliable writer.
        nonlocal sent
        msg = rgb_to_image_msg(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), Image)
        msg.header.stamp.sec = 100 + sent
        image_pub.publish(msg)
        image_pub.publish(bad)
        image_pub.publish(short)
        sent += 1
        time.sleep(0.05)
        return bool(statuses) and statuses[-1].keyframes >= 5 and statuses[-1].frames_dropped >= 2

    assert spin_until(node, publish_and_check, 20.0), statuses[-1:] or "no status"
    status = statuses[-1]
    assert status.state == Status.STATE_NO_MODEL
    assert status.frames_received >= 7
    assert status.input_rate_hz > 0.0 and 0.0 < status.image_callback_p99_ms < 100.0
    assert status.memory_bytes > 50 * 2**20
    assert diagnostics, "nothing on /diagnostics"

    def diagnosed_drops() -> bool:  # /diagnostics and ~/status are separate messages: may lag
        values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
        return int(values["frames_dropped"]) >= 2

    assert spin_until(node, diagnosed_drops, 10.0), diagnostics[-1]
    entry = diagnostics[-1].status[0]
    values = {kv.key: kv.value for kv in entry.values}
    assert entry.level == DiagnosticStatus.WARN and entry.message.startswith("no model loaded")
    assert int(values["frames_dropped"]) >= 2 and float(values["memory_mb"]) > 50

    reply = call(node, clients["reset"], Trigger.Request())
    assert reply.success and reply.message == "scene reset"
    start = time.monotonic()
    assert spin_until(node, lambda: statuses[-1].keyframes == 0, 10.0), time.monotonic() - start
