"""loc3r_node under load, in-process: concurrent clients, busy replies, steady image intake."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from ros_graph import isolate_ros_graph

isolate_ros_graph()
rclpy = pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros

from loc3r_interfaces.srv import Ask  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from loc3r.engine import AgentPose  # noqa: E402
from loc3r_ros.conversions import rgb_to_image_msg  # noqa: E402
from loc3r_ros.loc3r_node import Loc3rNode  # noqa: E402

TOPIC = "/concurrency_cam/image_raw"


class SlowPipeline:
    """A stand-in model that takes `delay` seconds per query and echoes what it got."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0

    def encode_scene(self, images, camera_tokens):
        return len(images)

    def localize(self, scene, situation):
        self.calls += 1
        time.sleep(self.delay)
        return AgentPose(1.0, -0.5, 0.3, 0.2, 0.2, 0.1)

    def answer(self, scene, question, situation):
        return f"{question} / {situation}", self.localize(scene, situation), 0.5

    def domain(self, scene):
        return None  # no domain model


@pytest.fixture
def running_node():
    rclpy.init()
    node = Loc3rNode(
        parameter_overrides=[
            Parameter("image_topic", value=TOPIC),
            Parameter("image_qos_reliability", value="reliable"),
            Parameter("keyframe_min_interval_s", value=0.0),
            Parameter("keyframe_min_change", value=0.0),
            Parameter("max_pending_queries", value=3),
            Parameter("query_timeout_s", value=5.0),
            Parameter("model_dir", value="/nonexistent/model"),  # keep the stand-in model
        ]
    )
    node._loader.join(30)  # the background loader is done (and failed) before the swap
    node.engine.model = SlowPipeline(delay=0.3)
    node.engine.add_frame(np.full((32, 32, 3), 7, np.uint8), 1)
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    client_node = rclpy.create_node("concurrency_client")
    client_executor = MultiThreadedExecutor(num_threads=2)
    client_executor.add_node(client_node)
    client_spinner = threading.Thread(target=client_executor.spin, daemon=True)
    client_spinner.start()
    yield node, client_node
    executor.shutdown()
    client_executor.shutdown()
    client_node.destroy_node()
    node.destroy_node()
    rclpy.shutdown()


def test_ten_concurrent_clients_get_answers_or_busy(running_node):
    node, client_node = running_node
    clients = [client_node.create_client(Ask, "/loc3r/ask") for _ in range(10)]
    assert all(c.wait_for_service(timeout_sec=10) for c in clients)
    futures = [
        c.call_async(Ask.Request(question=f"q{i}", situation="I am on the bed"))
        for i, c in enumerate(clients)
    ]
    deadline = time.monotonic() + 20
    while not all(f.done() for f in futures) and time.monotonic() < deadline:
        time.sleep(0.05)
    replies = [f.result() for f in futures]
    answered = [r for r in replies if r.success]
    busy = [r for r in replies if not r.success]
    assert len(answered) + len(busy) == 10
    assert 1 <= len(answered) <= 4 and len(busy) >= 6  # 1 running + 3 waiting at most
    assert all(r.message.startswith("busy") for r in busy)
    for reply in answered:
        question = reply.answer.split(" / ")[0]
        assert reply.answer == f"{question} / I am on the bed"
        assert reply.has_pose and reply.pose.pose.pose.position.x == 1.0
        assert reply.pose.header.frame_id == "loc3r_world"


def test_image_intake_continues_while_a_query_runs(running_node):
    node, client_node = running_node
    node.engine.model.delay = 2.0
    pub = client_node.create_publisher(Image, TOPIC, 50)
    client = client_node.create_client(Ask, "/loc3r/ask")
    assert client.wait_for_service(timeout_sec=10)
    deadline = time.monotonic() + 10
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    future = client.call_async(Ask.Request(question="slow one"))
    time.sleep(0.2)
    before = node.frames_received
    rng = np.random.default_rng(0)
    for i in range(20):
        msg = rgb_to_image_msg(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), Image)
        msg.header.stamp.sec = 10 + i
        pub.publish(msg)
        time.sleep(0.02)
    time.sleep(0.3)
    assert not future.done(), "the query should still be running"
    assert node.frames_received - before >= 15  # images flowed while the model was busy
    deadline = time.monotonic() + 10
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert future.result().success
