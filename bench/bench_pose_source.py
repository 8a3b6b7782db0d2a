"""Camera-pose error of a bundle's pose source on held-out synthetic room scans.

    python bench/bench_pose_source.py                        # 40 room scans, 16 frames, 224 px
    python bench/bench_pose_source.py --seeds 7800000:7800040 --frames 16 --size 224
    python bench/bench_pose_source.py --stream-video   # the whole 24-step video, as the node

Streams each room's frames through the bundle's perception (`run_fresh`, as `loc3r eval` does)
twice: with the focal length it reads off CUT3R's pointmap, and with the renderer's true
intrinsics given (what a calibrated camera's CameraInfo gives the node). Prints one JSON line:
the median and 90th-percentile position (m) and rotation (deg) errors of frames 2.. relative to
the first, for each, measured in this run. With `--stream-video` the pose source sees every
step of each room scan's video (as the node's sees every keyframe) and the frames are scored.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loc3r_ros"))

from loc3r.engine.models import load_bundle  # noqa: E402
from loc3r.eval.run import parse_seeds  # noqa: E402
from loc3r.scenes import EpisodeConfig, make_episode  # noqa: E402
from loc3r.train.synthetic_data import pose_error_summary, relative_pose_errors  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="bundle directory (default: embedded)")
    parser.add_argument("--seeds", default="7800000:7800040", help="rooms, A:B")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224, help="render size, pixels")
    parser.add_argument("--look", default="textured")
    parser.add_argument("--walk", default="room_scan")
    parser.add_argument("--stream-video", action="store_true", help="stream every video step")
    args = parser.parse_args(argv)
    bundle = load_bundle(args.model or None)
    perception = bundle.perception
    config = EpisodeConfig(frames=args.frames, image_size=args.size, look=args.look,
                           walk=args.walk, stream_video=args.stream_video)  # fmt: skip
    errors: dict[str, list[np.ndarray]] = {"estimated_focal": [], "true_intrinsics": []}
    for seed in parse_seeds(args.seeds):
        episode = make_episode(seed, config)
        images, steps = episode.stream()
        truth = [f.pose_c2w for f in episode.frames]
        K = episode.frames[0].K  # noqa: N806
        for name, intrinsics in (
            ("estimated_focal", None),
            ("true_intrinsics", (K[0, 0], K[1, 1], K[0, 2], K[1, 2])),
        ):
            perception.set_intrinsics(intrinsics, None if intrinsics is None else (args.size,) * 2)
            found = perception.run_fresh(images)
            poses = [found[i].pose_c2w for i in steps]
            errors[name].append(relative_pose_errors(poses, truth))
    report = {
        "pose_source": perception.config.pose_source,
        "rooms": len(errors["estimated_focal"]),
        "frames": args.frames,
        "size": args.size,
        "stream_video": args.stream_video,
        **{name: pose_error_summary(values) for name, values in errors.items()},
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
