"""Soak benchmark of loc3r_node: a 30 Hz camera stream for minutes while questions are asked.

    python bench/soak_node.py --duration 300 --reference 60     # the full soak (5 minutes)
    python bench/soak_node.py --duration 30 --reference 10      # the CI version

Starts loc3r_node from the colcon install (own process, own ROS_DOMAIN_ID, loopback discovery),
publishes WxH rgb8 images at --rate Hz from this process and asks a question every --ask-period
seconds. Samples the node's resident memory (from /proc) and its image-callback p99 (from
/loc3r/status). Prints a table and a JSON summary; exits 1 when a limit is broken:
memory at the end within --max-growth of the value at --reference seconds, p99 < --max-p99-ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loc3r_ros" / "test"))
from ros_graph import NodeProcess, isolate_ros_graph  # noqa: E402


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its descendants (the model process), from /proc."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += rss_bytes(int(child))
    except OSError:
        pass
    return total


def run(args: argparse.Namespace) -> dict:
    """Run the soak and return the measurements."""
    isolate_ros_graph()
    import rclpy
    from loc3r_interfaces.msg import Status
    from loc3r_interfaces.srv import Ask
    from sensor_msgs.msg import Image

    topic = "/soak_cam/image_raw"
    node_args = ["--ros-args", "-p", f"image_topic:={topic}", "-p", "status_period_s:=0.5",
                 "-p", f"model_process:={str(args.model_process).lower()}"]  # fmt: skip
    if args.model_dir:
        node_args += ["-p", f"model_dir:={args.model_dir}"]
    for item in args.param:
        node_args += ["-p", item]
    server = NodeProcess("loc3r_node", *node_args, log_path=Path(args.log))
    rclpy.init()
    node = rclpy.create_node("loc3r_soak")
    pub = node.create_publisher(Image, topic, 10)
    client = node.create_client(Ask, "/loc3r/ask")
    statuses: list[Status] = []
    node.create_subscription(Status, "/loc3r/status", statuses.append, 10)
    if not client.wait_for_service(timeout_sec=60):
        raise RuntimeError(f"loc3r_node did not come up:\n{server.log()}")

    # A moving camera: a panorama of coloured blocks panned back and forth (keyframes keep coming,
    # so the keyframe store reaches its capacity, as on a robot that drives around).
    rng = np.random.default_rng(0)
    blocks = rng.integers(20, 235, (6, 30, 3), dtype=np.uint8)
    base = np.repeat(np.repeat(blocks, args.height // 6 + 1, 0), args.width // 10 + 1, 1)
    base = np.ascontiguousarray(base[: args.height])
    span = base.shape[1] - args.width
    msg = Image(height=args.height, width=args.width, encoding="rgb8", step=3 * args.width)
    samples: list[tuple[float, int, float]] = []  # (t, rss, p99 ms)
    answers = {"ok": 0, "failed": 0}
    failures: dict[str, int] = {}  # reply message -> count
    pending = None
    start = time.monotonic()
    next_frame = next_ask = next_sample = start
    frame = 0
    try:
        while (now := time.monotonic()) - start < args.duration:
            if now >= next_frame:
                shift = abs((8 * frame) % (2 * span) - span)
                msg.data = np.ascontiguousarray(base[:, shift : shift + args.width]).tobytes()
                msg.header.stamp = node.get_clock().now().to_msg()
                pub.publish(msg)
                frame += 1
                next_frame += 1.0 / args.rate
            if now >= next_ask and pending is None:
                pending = client.call_async(
                    Ask.Request(
                        question="What is on my left?", situation="I am standing by the door"
                    )
                )
                next_ask = now + args.ask_period
            if pending is not None and pending.done():
                reply = pending.result()
                answers["ok" if reply.success else "failed"] += 1
                if not reply.success:
                    failures[reply.message] = failures.get(reply.message, 0) + 1
                pending = None
            if now >= next_sample:
                p99 = statuses[-1].image_callback_p99_ms if statuses else 0.0
                samples.append((now - start, rss_bytes(server.proc.pid), p99))
                next_sample += 1.0
            rclpy.spin_once(node, timeout_sec=max(0.0, min(next_frame, next_sample) - now))
    finally:
        node.destroy_node()
        rclpy.shutdown()
        code = server.stop()
    ref = min(samples, key=lambda s: abs(s[0] - args.reference))
    end = samples[-1]
    p99s = [s[2] for s in samples if s[0] >= args.reference]
    return {
        "model_process": args.model_process,
        "duration_s": round(end[0], 1),
        "frames_published": frame,
        "rate_hz": round(frame / end[0], 1),
        "queries": answers,
        "query_failures": failures,
        "rss_mb_at_reference": round(ref[1] / 2**20, 1),
        "reference_s": round(ref[0], 1),
        "rss_mb_at_end": round(end[1] / 2**20, 1),
        "rss_growth": round(end[1] / ref[1] - 1.0, 4),
        "image_callback_p99_ms_max": round(max(p99s), 3) if p99s else None,
        "keyframes_at_end": statuses[-1].keyframes if statuses else None,
        "frames_received": statuses[-1].frames_received if statuses else None,
        "node_exit_code": code,
        "samples": [(round(t, 1), round(r / 2**20, 1), round(p, 3)) for t, r, p in samples],
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print, check the limits."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--reference", type=float, default=60.0, help="memory reference time, s")
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--ask-period", type=float, default=2.0)
    parser.add_argument("--model-dir", default="")
    parser.add_argument("--max-growth", type=float, default=0.10)
    parser.add_argument("--max-p99-ms", type=float, default=2.0)
    parser.add_argument("--log", default="/tmp/loc3r_soak_node.log")
    parser.add_argument("--param", action="append", default=[], help="node parameter NAME:=VALUE")
    parser.add_argument(
        "--model-process", choices=("true", "false", "both"), default="true",
        help="models in a child process (the node's default), in threads, or both in turn",
    )  # fmt: skip
    args = parser.parse_args(argv)
    ok = True
    for mode in ("true", "false") if args.model_process == "both" else (args.model_process,):
        args.model_process = mode == "true"
        result = run(args)
        for t, rss, p99 in result.pop("samples")[:: max(1, int(args.duration // 20))]:
            print(f"t={t:7.1f}s  rss={rss:8.1f} MB  image_cb_p99={p99:6.3f} ms")
        print(json.dumps(result, indent=2))
        passed = (
            result["rss_growth"] <= args.max_growth
            and result["image_callback_p99_ms_max"] is not None
            and result["image_callback_p99_ms_max"] < args.max_p99_ms
            and result["node_exit_code"] == 0
        )
        print(("PASS" if passed else "FAIL") + f" (model_process={args.model_process})")
        ok = ok and passed
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
