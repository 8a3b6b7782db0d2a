"""`ros2 run loc3r_ros ask "question" [--situation ...]`: call /loc3r/ask and print the reply.

For people without ros2cli. Prints the answer and, with a situation, the agent pose; with
--json prints the whole reply as JSON. Exit code 0 on success, 1 when the node said no,
2 when no service answered within --timeout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import rclpy
from loc3r_interfaces.srv import Ask
from scipy.spatial.transform import Rotation


def reply_to_dict(reply: Ask.Response) -> dict:
    """The fields of an Ask reply a person or a script wants, as plain data."""
    out = {
        "success": reply.success,
        "message": reply.message,
        "answer": reply.answer,
        "num_frames": reply.num_frames,
        "latency_s": round(float(reply.latency_s), 4),
    }
    if reply.has_pose:
        p, q = reply.pose.pose.pose.position, reply.pose.pose.pose.orientation
        yaw = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_euler("zyx")[0]
        out["pose"] = {
            "frame_id": reply.pose.header.frame_id,
            "x": p.x,
            "y": p.y,
            "yaw_deg": math.degrees(yaw),
            "position_sigma_m": float(reply.position_sigma_m),
            "yaw_spread_deg": math.degrees(reply.yaw_spread_rad),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, call the service once, print the result."""
    parser = argparse.ArgumentParser(prog="ask", description=__doc__.splitlines()[0])
    parser.add_argument("question")
    parser.add_argument("--situation", default="", help="e.g. 'I am sitting on the bed'")
    parser.add_argument("--service", default="/loc3r/ask")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds")
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")
    args = parser.parse_args(rclpy.utilities.remove_ros_args(argv or sys.argv)[1:])

    rclpy.init(args=argv)
    node = rclpy.create_node("loc3r_ask_client")
    try:
        client = node.create_client(Ask, args.service)
        if not client.wait_for_service(timeout_sec=min(args.timeout, 10.0)):
            print(f"no service {args.service} (is loc3r_node running?)", file=sys.stderr)
            return 2
        future = client.call_async(Ask.Request(question=args.question, situation=args.situation))
        rclpy.spin_until_future_complete(node, future, timeout_sec=args.timeout)
        if not future.done():
            print(f"no reply within {args.timeout} s", file=sys.stderr)
            return 2
        out = reply_to_dict(future.result())
        if args.json:
            print(json.dumps(out, indent=2))
        elif not out["success"]:
            print(f"failed: {out['message']}")
        else:
            print(out["answer"])
            if "pose" in out:
                pose = out["pose"]
                print(
                    f"agent at x={pose['x']:.2f} m, y={pose['y']:.2f} m, yaw={pose['yaw_deg']:.0f}"
                    f" deg in {pose['frame_id']} (sigma {pose['position_sigma_m']:.2f} m,"
                    f" {pose['yaw_spread_deg']:.0f} deg)"
                )
        return 0 if out["success"] else 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
