"""Synthetic scene generator benchmark: frames per second on this CPU.

    python bench/bench_scenes.py                 # 1000 frames at 128 px (target: < 2 minutes)
    python bench/bench_scenes.py --frames 2000 --size 256
    python bench/bench_scenes.py --frames 320 --size 224 --look textured --walk room_scan
                                                 # what the GPU build renders per room

Renders whole episodes (room generation, camera walk, ray casting of RGB + metric depth,
situations and questions) in one process on one thread, and prints the rate, the time per
frame and the total against the target as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loc3r_ros"))

from loc3r.scenes import EpisodeConfig, make_episode  # noqa: E402

TARGET_S = 120.0


def main() -> int:
    """Render, time, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--per-episode", type=int, default=16)
    parser.add_argument("--seed", type=int, default=50_000)
    parser.add_argument("--look", default="flat", help="flat, textured or furnished")
    parser.add_argument("--walk", default="sweep", help="sweep, scan or room_scan")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config = EpisodeConfig(
        frames=args.per_episode, image_size=args.size, look=args.look, walk=args.walk
    )
    rendered = questions = episodes = 0
    start = time.perf_counter()
    while rendered < args.frames:
        episode = make_episode(args.seed + episodes, config)
        rendered += len(episode.frames)
        questions += len(episode.records)
        episodes += 1
    seconds = time.perf_counter() - start
    result = {
        "frames": rendered, "size": args.size, "look": args.look, "walk": args.walk,
        "episodes": episodes, "questions": questions,
        "seconds": round(seconds, 2), "frames_per_s": round(rendered / seconds, 1),
        "ms_per_frame": round(1000 * seconds / rendered, 2),
        "target_s_for_1000_at_128": TARGET_S,
        "scaled_to_1000_frames_s": round(seconds * 1000 / rendered, 2),
    }  # fmt: skip
    print(json.dumps(result))
    default = args.size == 128 and args.look == "flat"  # the target is for the default frames
    return 0 if (not default or result["scaled_to_1000_frames_s"] < TARGET_S) else 1


if __name__ == "__main__":
    sys.exit(main())
