"""CameraInfo on `camera_info_topic`: its calibration reaches the geometric pose source."""

from __future__ import annotations

import time

import pytest
from ros_graph import isolate_ros_graph

isolate_ros_graph()
rclpy = pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros

from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo  # noqa: E402

from loc3r_ros.loc3r_node import Loc3rNode  # noqa: E402


def camera_info(fx: float, fy: float, cx: float, cy: float, width: int, height: int) -> CameraInfo:
    msg = CameraInfo(width=width, height=height)
    msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    return msg


def test_a_calibration_reaches_the_engine_and_an_invalid_one_is_refused_once():
    rclpy.init()
    node = Loc3rNode(
        parameter_overrides=[
            Parameter("image_topic", value="/ci_cam/image_raw"),
            Parameter("camera_info_topic", value="/ci_cam/camera_info"),
            Parameter("model_dir", value="/nonexistent/model"),  # no model: the engine keeps it
        ]
    )
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    publisher = node.create_publisher(CameraInfo, "/ci_cam/camera_info", 10)
    warnings = []
    original_logger = node.get_logger

    class Recorder:
        def __init__(self, logger):
            self._logger = logger

        def warning(self, text, *args, **kwargs):
            warnings.append(text)
            return self._logger.warning(text, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._logger, name)

    node.get_logger = lambda: Recorder(original_logger())

    def spin_until(predicate, timeout=10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            executor.spin_once(timeout_sec=0.05)
        return predicate()

    try:
        assert spin_until(lambda: publisher.get_subscription_count() > 0)
        publisher.publish(camera_info(500.0, 510.0, 320.0, 240.0, 640, 480))
        assert spin_until(lambda: node.engine.intrinsics is not None)
        assert node.engine.intrinsics == ((500.0, 510.0, 320.0, 240.0), (480, 640))
        assert node.camera_info == "640x480 fx=500.0 fy=510.0 cx=320.0 cy=240.0"
        for _ in range(3):  # an uncalibrated camera publishes zeros: refused, said once
            publisher.publish(camera_info(0.0, 0.0, 0.0, 0.0, 640, 480))
        assert spin_until(lambda: len(warnings) >= 1)
        spin_until(lambda: False, timeout=0.5)  # the other two arrive
        assert len([w for w in warnings if "camera info" in w]) == 1, warnings
        assert node.engine.intrinsics == ((500.0, 510.0, 320.0, 240.0), (480, 640))
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()
