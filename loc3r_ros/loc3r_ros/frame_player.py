"""`ros2 run loc3r_ros frame_player SOURCE`: publish a folder of images or a video as a camera.

For demos and tests without rosbag2. Images are published as sensor_msgs/Image (rgb8) on
--topic at --rate Hz with consecutive stamps; --loop repeats. A folder is read in name order (see
loc3r.video_io). After each pass the player says what it read: frames decoded, frames that failed
and where, the time span. A partial read is a warning in its log and on /diagnostics (level WARN);
fewer than --min-frames decodable frames is an error (exit status 1).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from loc3r.errors import InputError
from loc3r.video_io import FrameReader, ReadReport
from loc3r_ros.conversions import rgb_to_image_msg
from loc3r_ros.visualization import diagnostics


def report_diagnostics(header: Header, node_name: str, report: ReadReport) -> DiagnosticArray:
    """The read report as one DiagnosticStatus: OK for a clean read, WARN for a partial one."""
    warnings = report.warnings()
    level = DiagnosticStatus.WARN if warnings else DiagnosticStatus.OK
    message = "; ".join(warnings) if warnings else f"read {report.decoded} frames"
    values = {k: v for k, v in report.to_dict().items() if k != "warnings"}
    return diagnostics(header, node_name, level, message, values)


def main(argv: list[str] | None = None) -> int:
    """Publish the frames at the requested rate."""
    parser = argparse.ArgumentParser(prog="frame_player", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--topic", default="/camera/image_raw")
    parser.add_argument("--frame-id", default="camera_optical_frame")
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second")
    parser.add_argument("--loop", action="store_true")
    parser.add_argument(
        "--min-frames", type=int, default=1, help="fewest decodable frames accepted (else exit 1)"
    )
    parser.add_argument(
        "--wait-subscribers",
        type=float,
        default=10.0,
        help="seconds to wait for a subscriber before publishing (0: do not wait)",
    )
    args = parser.parse_args(rclpy.utilities.remove_ros_args(argv or sys.argv)[1:])
    if args.rate <= 0:
        parser.error("--rate must be positive")

    rclpy.init(args=argv)
    node = rclpy.create_node("loc3r_frame_player")
    pub = node.create_publisher(Image, args.topic, qos_profile_sensor_data)
    diagnostics_pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
    reader = FrameReader(args.source)
    period = 1.0 / args.rate
    sent = 0
    deadline = time.monotonic() + args.wait_subscribers
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2 if pub.get_subscription_count() else 0.0)  # let the match settle both ways
    try:
        while True:
            for record in reader:
                msg = rgb_to_image_msg(record.image, Image)
                msg.header.frame_id = args.frame_id
                msg.header.stamp = node.get_clock().now().to_msg()
                pub.publish(msg)
                sent += 1
                time.sleep(period)
            report = reader.report
            header = Header(stamp=node.get_clock().now().to_msg())
            diagnostics_pub.publish(
                report_diagnostics(header, node.get_fully_qualified_name(), report)
            )
            if diagnostics_pub.get_subscription_count():
                time.sleep(0.2)  # let the report go out before a last pass ends the process
            for warning in report.warnings():
                node.get_logger().warning(warning)
            if report.decoded < args.min_frames:
                raise InputError(
                    f"{report.decoded} decodable frame(s) in {args.source}, "
                    f"--min-frames is {args.min_frames}"
                )
            node.get_logger().info(
                f"read {report.decoded} frames ({report.span_s:.2f} s of {args.source})"
            )
            if not args.loop:
                break
    except KeyboardInterrupt:
        pass
    except InputError as exc:
        node.get_logger().error(str(exc))
        return 1
    finally:
        node.get_logger().info(f"published {sent} frames")
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
