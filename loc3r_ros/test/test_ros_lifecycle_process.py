"""Cross-process test: loc3r_node as a managed node, driven through the lifecycle services.

The node starts with autostart:=false and a model directory that does not exist yet; the test
walks it through every transition as `ros2 lifecycle set` (or Nav2's lifecycle manager) would,
asking in each state. The tests run in file order and share one node process.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from ros_graph import NodeProcess, call, isolate_ros_graph, spin_until
from tiny_bundle import make_tiny_bundle

isolate_ros_graph()
rclpy = pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros

from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetAvailableTransitions, GetState  # noqa: E402
from loc3r_interfaces.msg import Status  # noqa: E402
from loc3r_interfaces.srv import Ask, Localize  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from loc3r_ros.conversions import rgb_to_image_msg  # noqa: E402

IMAGE_TOPIC = "/lifecycle_cam/image_raw"


class Graph:
    """The node's process, and a client node in this one."""

    def __init__(self, tmp_path) -> None:
        self.model_dir = tmp_path / "model"  # does not exist at start
        self.server = NodeProcess(
            "loc3r_node", "--ros-args",
            "-p", "autostart:=false",
            "-p", f"model_dir:={self.model_dir}",
            "-p", f"image_topic:={IMAGE_TOPIC}",
            "-p", "image_qos_reliability:=reliable",
            "-p", "keyframe_min_interval_s:=0.0",
            "-p", "keyframe_min_change:=0.0",
            "-p", "status_period_s:=0.2",
            "-p", "model_threads:=1",
            "-p", "release_model_on_deactivate:=true",
            log_path=tmp_path / "loc3r_node.log",
        )  # fmt: skip
        rclpy.init()
        self.node = rclpy.create_node("lifecycle_test_client")
        self.clients = {
            "change_state": self.node.create_client(ChangeState, "/loc3r/change_state"),
            "get_state": self.node.create_client(GetState, "/loc3r/get_state"),
            "transitions": self.node.create_client(
                GetAvailableTransitions, "/loc3r/get_available_transitions"
            ),
            "ask": self.node.create_client(Ask, "/loc3r/ask"),
            "localize": self.node.create_client(Localize, "/loc3r/localize"),
            "reset": self.node.create_client(Trigger, "/loc3r/reset"),
        }
        for name, client in self.clients.items():
            ready = client.wait_for_service(timeout_sec=30.0)
            assert ready, f"/loc3r/{name} missing:\n{self.server.log()}"
        self.statuses: list[Status] = []
        self.node.create_subscription(Status, "/loc3r/status", self.statuses.append, 10)
        self.image_pub = self.node.create_publisher(Image, IMAGE_TOPIC, 10)
        self.sent = 0

    def change(self, transition_id: int, timeout: float = 60.0) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return call(self.node, self.clients["change_state"], request, timeout).success

    def state(self) -> str:
        return call(self.node, self.clients["get_state"], GetState.Request()).current_state.label

    def transitions(self) -> set[str]:
        reply = call(self.node, self.clients["transitions"], GetAvailableTransitions.Request())
        return {t.transition.label for t in reply.available_transitions}

    def ask(self) -> Ask.Response:
        request = Ask.Request(question="What is on my left?", situation="I am on the bed")
        return call(self.node, self.clients["ask"], request, timeout=60.0)

    def status(self, predicate=lambda s: True, timeout: float = 20.0) -> Status:
        """The newest status that arrived after now and satisfies `predicate`."""
        seen = len(self.statuses)
        found = spin_until(
            self.node,
            lambda: any(predicate(s) for s in self.statuses[seen:]),
            timeout,
        )
        assert found, (self.statuses[-1:] or "no status", self.server.log()[-2000:])
        return [s for s in self.statuses[seen:] if predicate(s)][-1]

    def publish_frames(self, count: int) -> None:
        rng = np.random.default_rng(self.sent)
        for _ in range(count):
            msg = rgb_to_image_msg(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), Image)
            msg.header.stamp.sec = 100 + self.sent
            self.sent += 1
            self.image_pub.publish(msg)
            rclpy.spin_once(self.node, timeout_sec=0.05)

    def close(self) -> int:
        self.node.destroy_node()
        rclpy.shutdown()
        return self.server.stop()


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    graph = Graph(tmp_path_factory.mktemp("lifecycle"))
    yield graph
    code = graph.close()
    assert code == 0, f"loc3r_node exited with {code}:\n{graph.server.log()}"


def test_it_starts_unconfigured_and_says_how_to_bring_it_up(graph):
    assert graph.state() == "unconfigured"
    assert {"configure", "shutdown"} <= graph.transitions()
    reply = graph.ask()
    assert reply.success is False
    assert reply.message.startswith("unconfigured: the node is not active")
    assert "ros2 lifecycle set /loc3r configure" in reply.message
    status = graph.status()
    assert status.lifecycle_state == "unconfigured" and status.keyframes == 0
    assert graph.change(Transition.TRANSITION_ACTIVATE) is False  # not from unconfigured
    assert graph.state() == "unconfigured"


def test_a_missing_or_corrupt_model_fails_configure_with_the_reason(graph):
    assert graph.change(Transition.TRANSITION_CONFIGURE) is False
    assert graph.state() == "unconfigured" and graph.server.proc.poll() is None
    status = graph.status(lambda s: "configure failed" in s.message)
    assert "no bundle.json" in status.message and str(graph.model_dir) in status.message
    graph.model_dir.mkdir()
    (graph.model_dir / "bundle.json").write_text("{not json")
    assert graph.change(Transition.TRANSITION_CONFIGURE) is False
    assert graph.state() == "unconfigured" and graph.server.proc.poll() is None
    assert "invalid JSON" in graph.status(lambda s: "invalid JSON" in s.message).message
    assert "invalid JSON" in graph.ask().message  # a reply says why, too
    assert "configure failed" in graph.server.log()


def test_configure_loads_the_model_and_inactive_answers_inactive(graph):
    make_tiny_bundle(graph.model_dir)  # the directory is fixed: configure again
    assert graph.change(Transition.TRANSITION_CONFIGURE) is True
    assert graph.state() == "inactive"
    assert {"activate", "cleanup", "shutdown"} <= graph.transitions()
    status = graph.status(lambda s: s.lifecycle_state == "inactive")
    assert status.state == Status.STATE_READY
    reply = graph.ask()
    assert reply.success is False and reply.message.startswith("inactive: the node is not active")
    assert "ros2 lifecycle set /loc3r activate" in reply.message
    graph.publish_frames(3)  # no subscription yet: nothing arrives
    assert graph.status().frames_received == 0


def test_active_subscribes_and_answers(graph):
    assert graph.change(Transition.TRANSITION_ACTIVATE) is True
    assert graph.state() == "active"
    assert spin_until(graph.node, lambda: graph.image_pub.get_subscription_count() > 0, 20.0)
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        graph.publish_frames(2)
        if graph.status().keyframes >= 4:
            break
    reply = call(graph.node, graph.clients["localize"], Localize.Request(situation="on the bed"))
    while not reply.success and "no frames yet" in reply.message and time.monotonic() < deadline:
        graph.publish_frames(1)
        reply = call(graph.node, graph.clients["localize"], Localize.Request(situation="bed"))
    assert reply.success, reply.message
    assert graph.ask().success


def test_deactivate_stops_intake_keeps_the_scene_and_gives_the_memory_back(graph):
    before = graph.status(lambda s: s.lifecycle_state == "active")
    assert graph.change(Transition.TRANSITION_DEACTIVATE) is True
    assert graph.state() == "inactive"
    after = graph.status(lambda s: s.lifecycle_state == "inactive")
    assert after.state == Status.STATE_NO_MODEL and "released on deactivate" in after.message
    # the model process (torch + both models) is gone: node + model RSS falls by its size
    released_mb = (before.memory_bytes - after.memory_bytes) / 2**20
    print(f"released {released_mb:.0f} MB of {before.memory_bytes / 2**20:.0f} MB")
    assert released_mb > 100, (before.memory_bytes, after.memory_bytes)
    graph.publish_frames(4)
    status = graph.status()
    assert status.keyframes == before.keyframes  # no intake, and the scene is kept
    assert graph.ask().message.startswith("inactive")
    graph.deactivated_keyframes = status.keyframes


def test_activate_loads_the_model_again_on_the_kept_scene(graph):
    assert graph.change(Transition.TRANSITION_ACTIVATE) is True
    status = graph.status(lambda s: s.state == Status.STATE_READY)
    assert status.keyframes == graph.deactivated_keyframes
    reply = graph.ask()
    assert reply.success, reply.message
    assert reply.num_frames > 0


def test_cleanup_frees_everything_and_shutdown_ends_the_process(graph):
    """(Shutdown from unconfigured and from active: test_ros_speech_lifecycle.py.)"""
    assert graph.change(Transition.TRANSITION_CLEANUP) is False  # not from active
    assert graph.change(Transition.TRANSITION_DEACTIVATE) is True
    assert graph.change(Transition.TRANSITION_CLEANUP) is True
    assert graph.state() == "unconfigured"
    status = graph.status(lambda s: s.lifecycle_state == "unconfigured")
    assert status.keyframes == 0 and status.state == Status.STATE_NO_MODEL
    reset = call(graph.node, graph.clients["reset"], Trigger.Request())
    assert reset.success is False and reset.message.startswith("unconfigured")
    assert graph.change(Transition.TRANSITION_CONFIGURE) is True  # again, after cleanup
    reset = call(graph.node, graph.clients["reset"], Trigger.Request())
    assert reset.success is True  # the scene can be reset while inactive
    assert graph.change(Transition.TRANSITION_INACTIVE_SHUTDOWN) is True
    graph.server.proc.wait(timeout=20)
    assert graph.server.proc.returncode == 0, graph.server.log()[-2000:]


def test_invalid_parameters_fail_configure_and_the_node_stays(tmp_path):
    """autostart:=false: bad parameters are a failed configure with the reason, not a crash.

    (With autostart, the default, the node refuses to start, as a plain node did:
    test_launch_config.py.)
    """
    server = NodeProcess(
        "loc3r_node", "--ros-args", "-r", "__node:=loc3r_bad",
        "-p", "autostart:=false", "-p", "device:=tpu", "-p", "status_period_s:=0.2",
        log_path=tmp_path / "bad.log",
    )  # fmt: skip
    node = rclpy.create_node("lifecycle_bad_client")
    try:
        change = node.create_client(ChangeState, "/loc3r_bad/change_state")
        ask = node.create_client(Ask, "/loc3r_bad/ask")
        assert change.wait_for_service(timeout_sec=30.0), server.log()
        request = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE))
        assert call(node, change, request).success is False
        assert server.proc.poll() is None
        reply = call(node, ask, Ask.Request(question="What is on my left?"))
        assert reply.success is False and "device must be one of cpu, cuda, auto" in reply.message
        request = ChangeState.Request(
            transition=Transition(id=Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        )
        assert call(node, change, request).success is True
        assert server.proc.wait(timeout=20) == 0
    finally:
        node.destroy_node()
        server.stop()
