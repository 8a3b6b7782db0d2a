"""Per-frame cost of CUT3R streaming: must not grow with the number of frames seen.

Runs `Cut3r.step` on a small random model over N frames (default 200) and prints the per-frame
time around frame 5 and around the last frame (medians over a window) and their ratio.
Exit status 1 if the ratio exceeds --max-ratio (default 1.3).

    OMP_NUM_THREADS=1 python bench/bench_cut3r_stream.py --frames 200
    python bench/bench_cut3r_stream.py --frames 30        # quick check
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loc3r_ros"))

from loc3r.cut3r import Cut3r, Cut3rConfig  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200, help="frames to stream (>= 15)")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--head", choices=("linear", "dpt"), default="linear")
    parser.add_argument("--window", type=int, default=5, help="frames in each timing window")
    parser.add_argument("--max-ratio", type=float, default=1.3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps on a separate state")
    args = parser.parse_args()
    if args.frames < 5 + 2 * args.window:
        parser.error(f"--frames must be >= {5 + 2 * args.window}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = Cut3rConfig.tiny(args.head)
    model = Cut3r(config).eval().requires_grad_(False)
    frames = torch.rand(args.frames, 1, 3, args.height, args.width) * 2 - 1
    warm = model.init_state()
    for i in range(args.warmup):  # untimed: allocator / kernel selection warm-up
        model.step(warm, frames[i % args.frames])
    state = model.init_state()
    times = []
    for i in range(args.frames):
        start = time.perf_counter()
        model.step(state, frames[i])
        times.append(time.perf_counter() - start)
    early = statistics.median(times[5 : 5 + args.window])
    late = statistics.median(times[-args.window :])
    ratio = late / early
    print(
        f"config: tiny/{args.head}, {model.num_parameters()} params, frames {args.frames}, "
        f"{args.height}x{args.width}, state elements {state.num_elements()}"
    )
    print(f"per-frame step time at frame 5:   {early * 1e3:.2f} ms (median of {args.window})")
    print(
        f"per-frame step time at frame {args.frames}: {late * 1e3:.2f} ms (median of {args.window})"
    )
    print(f"ratio late/early: {ratio:.3f} (limit {args.max_ratio})")
    return 0 if ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
