"""Cross-process: the frame_player executable feeds loc3r_node; a compressed-image node drops
truncated JPEGs and wrong-step / zero-size raw images are dropped by the raw node, while both keep
serving; camera_info shows in diagnostics."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from ros_graph import NodeProcess, call, isolate_ros_graph, ros_test_node, spin_until

from loc3r.cli import main as loc3r_cli

isolate_ros_graph()
rclpy = pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from loc3r_interfaces.msg import Status  # noqa: E402
from loc3r_interfaces.srv import Localize  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402


@pytest.fixture(scope="module")
def ros():
    with ros_test_node("player_test") as node:
        yield node


def statuses_of(node, name):
    got: list[Status] = []
    node.create_subscription(Status, f"/{name}/status", got.append, 10)
    return got


def test_frame_player_streams_a_folder_into_the_node(ros, tmp_path):
    frames = tmp_path / "frames"
    # the embedded model's kind of room (its look and walk), small and short for speed
    assert loc3r_cli(["scene", str(frames), "--as-trained", "--count", "6", "--size", "64"]) == 0
    server = NodeProcess(
        "loc3r_node", "--ros-args", "-r", "__node:=player_node",
        "-p", "image_topic:=/player_cam/image_raw", "-p", "keyframe_min_interval_s:=0.0",
        "-p", "keyframe_min_change:=0.0", "-p", "status_period_s:=0.2",
        "-p", "camera_info_topic:=/player_cam/camera_info",
        log_path=tmp_path / "node.log",
    )  # fmt: skip
    try:
        statuses = statuses_of(ros, "player_node")
        diagnostics: list[DiagnosticArray] = []
        ros.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
        assert spin_until(ros, lambda: bool(statuses), 30), server.log()
        info_pub = ros.create_publisher(CameraInfo, "/player_cam/camera_info", 10)
        player = NodeProcess(
            "frame_player", str(frames), "--topic", "/player_cam/image_raw", "--rate", "20",
            log_path=tmp_path / "player.log",
        )  # fmt: skip
        try:
            info = CameraInfo(width=64, height=64)
            info.k = [50.0, 0.0, 32.0, 0.0, 51.0, 32.0, 0.0, 0.0, 1.0]

            def seen() -> bool:
                info_pub.publish(info)
                return bool(statuses) and statuses[-1].keyframes >= 5

            assert spin_until(ros, seen, 30), (statuses[-1:], player.log())
        finally:
            assert player.stop() in (0, -2), player.log()

        def reported() -> bool:
            values = [
                {kv.key: kv.value for kv in d.status[0].values}
                for d in diagnostics
                if d.status and d.status[0].name.startswith("/player_node")
            ]
            return bool(values) and values[-1].get("camera_info", "").startswith("64x64 fx=50.0")

        assert spin_until(ros, reported, 10)
        # the model loads in its own process meanwhile (slower to start than a thread)
        assert spin_until(ros, lambda: statuses[-1].state == Status.STATE_READY, 120), server.log()
        localize = ros.create_client(Localize, "/player_node/localize")
        assert localize.wait_for_service(timeout_sec=10)
        reply = call(ros, localize, Localize.Request(situation="I am by the door"), 60)
        assert reply.success, reply.message  # the embedded model answers from the played frames
        assert reply.num_frames >= 5
        # its domain check knows these rooms (--as-trained: the look and walk it was trained on)
        assert reply.confidence.domain_checked and reply.confidence.in_domain, reply.confidence
        assert reply.confidence.domain_score <= reply.confidence.domain_threshold
        assert reply.confidence.note == ""
    finally:
        assert server.stop() == 0, server.log()


def test_malformed_images_are_dropped_and_the_nodes_keep_serving(ros, tmp_path):
    raw = NodeProcess(
        "loc3r_node", "--ros-args", "-r", "__node:=raw_node", "-p", "image_topic:=/bad_raw",
        "-p", "image_qos_reliability:=reliable", "-p", "status_period_s:=0.2",
        "-p", "model_dir:=/nonexistent", log_path=tmp_path / "raw.log",
    )  # fmt: skip
    compressed = NodeProcess(
        "loc3r_node", "--ros-args", "-r", "__node:=jpeg_node", "-p", "image_topic:=/bad_jpeg",
        "-p", "image_compressed:=true", "-p", "image_qos_reliability:=reliable",
        "-p", "status_period_s:=0.2", "-p", "model_dir:=/nonexistent",
        "-p", "keyframe_min_interval_s:=0.0", "-p", "keyframe_min_change:=0.0",
        log_path=tmp_path / "jpeg.log",
    )  # fmt: skip
    try:
        raw_status, jpeg_status = statuses_of(ros, "raw_node"), statuses_of(ros, "jpeg_node")
        raw_pub = ros.create_publisher(Image, "/bad_raw", 10)
        jpeg_pub = ros.create_publisher(CompressedImage, "/bad_jpeg", 10)
        assert spin_until(ros, lambda: bool(raw_status and jpeg_status), 30)
        ok, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 120, np.uint8))
        good_jpeg = CompressedImage(format="jpeg", data=jpeg.tobytes())
        truncated = CompressedImage(format="jpeg", data=jpeg.tobytes()[:60])
        wrong_step = Image(height=4, width=4, encoding="rgb8", step=5, data=bytes(20))
        zero_size = Image(height=0, width=0, encoding="rgb8", step=0, data=b"")

        def published() -> bool:
            raw_pub.publish(wrong_step)
            raw_pub.publish(zero_size)
            jpeg_pub.publish(truncated)
            jpeg_pub.publish(good_jpeg)
            return (
                bool(raw_status) and raw_status[-1].frames_dropped >= 4
                and bool(jpeg_status) and jpeg_status[-1].frames_dropped >= 2
                and jpeg_status[-1].keyframes >= 1
            )  # fmt: skip

        assert spin_until(ros, published, 30), (raw_status[-1:], jpeg_status[-1:])
        for name in ("raw_node", "jpeg_node"):
            client = ros.create_client(Localize, f"/{name}/localize")
            assert client.wait_for_service(timeout_sec=10)
            reply = call(ros, client, Localize.Request(situation="I am here"))
            assert not reply.success and reply.message.startswith("no model loaded")
    finally:
        assert raw.stop() == 0, raw.log()
        assert compressed.stop() == 0, compressed.log()


def test_frame_player_reports_a_partial_read(ros, tmp_path):
    frames = tmp_path / "frames"
    assert loc3r_cli(["scene", str(frames), "--count", "5", "--size", "48"]) == 0
    (frames / "000002.png").write_bytes(b"broken")
    diagnostics: list[DiagnosticArray] = []
    ros.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    # the player waits for this subscriber, so discovery is done when it reports
    ros.create_subscription(Image, "/partial_cam/image_raw", lambda _: None, 10)
    player = NodeProcess(
        "frame_player", str(frames), "--topic", "/partial_cam/image_raw", "--rate", "50",
        log_path=tmp_path / "player.log",
    )  # fmt: skip

    def reports():
        return [d.status[0] for d in diagnostics if d.status and "frame_player" in d.status[0].name]

    try:
        assert spin_until(ros, lambda: bool(reports()), 30), player.log()
        assert player.proc.wait(15) == 0, player.log()
    finally:
        player.stop()
    (status,) = reports()
    values = {kv.key: kv.value for kv in status.values}
    assert (
        status.level == DiagnosticStatus.WARN and "000002.png (unreadable image)" in status.message
    )
    assert (values["frames_decoded"], values["frames_failed"], values["failed_at"]) == (
        "4",
        "1",
        "[2]",
    )
    assert "questions.json" in status.message  # the non-image files are named too
    assert "000002.png (unreadable image)" in player.log()  # and logged as a warning

    too_few = NodeProcess(
        "frame_player", str(frames), "--topic", "/partial_cam/image_raw", "--rate", "50",
        "--wait-subscribers", "0", "--min-frames", "8", log_path=tmp_path / "few.log",
    )  # fmt: skip
    try:
        assert too_few.proc.wait(30) == 1, too_few.log()
    finally:
        too_few.stop()
    assert "4 decodable frame(s)" in too_few.log() and "--min-frames is 8" in too_few.log()
