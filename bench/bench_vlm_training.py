"""Training throughput of the embedded VLM: samples per second, packed by room or not.

    python bench/bench_vlm_training.py                         # the CPU recipe, 1 and 2 threads
    python bench/bench_vlm_training.py --image-size 224 --threads 2
    python bench/bench_vlm_training.py --device cuda           # bf16 autocast, as the GPU build

Builds the embedded recipe's VLM (loc3r.train.config defaults: hidden 128, 4 layers, point
embedding, 16 frames of room scans) with random weights and random frames, and the situations and
questions of real synthetic rooms (8 situations each, their text lengths as in training). For
each room packing (questions_per_scene 1 = every sample its own row, as before packing; k =
k questions of each room share one pass over its video, loc3r.vlm.packing) it times forward +
backward of one batch (the best of --repeats) and prints one JSON line with samples/s and the
speed-up over k = 1 at the same thread count, measured in this run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loc3r_ros"))

from loc3r.engine.models import DEFAULT_MODEL_DIR  # noqa: E402
from loc3r.engine.perception import geometry_token_width  # noqa: E402
from loc3r.scenes import EpisodeConfig, make_episode  # noqa: E402
from loc3r.train.config import TrainConfig  # noqa: E402
from loc3r.train.pipeline import build_model, patch_grid  # noqa: E402
from loc3r.vlm import TrainSample  # noqa: E402


def rooms(count: int, frames: int, size: int, grid: int, width: int, situations: int):
    """`count` rooms' samples: random frames and tokens, real text (one list per room)."""
    g = torch.Generator().manual_seed(0)
    config = EpisodeConfig(frames=1, image_size=16, situations=situations)  # text only
    out = []
    for seed in range(count):
        records = make_episode(10_000 + seed, config).records
        pixels = torch.rand(frames, 3, size, size, generator=g) * 2 - 1
        tokens = torch.randn(frames, width, generator=g)
        bev = torch.randn(frames, grid, grid, 2, generator=g)
        mask = torch.ones(frames, grid, grid, dtype=torch.bool)
        out.append([
            TrainSample(
                pixel_values=pixels, camera_tokens=tokens, situation=r.situation,
                question=r.question, answer=r.answers[0],
                position=torch.tensor(r.position, dtype=torch.float32), yaw=float(r.yaw),
                bev_targets=bev, bev_mask=mask,
                anchor_cells=torch.rand(frames, grid, grid, generator=g) > 0.8,
            )
            for r in records
        ])  # fmt: skip
    return out


def main() -> int:
    """Build, time each packing, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="samples per forward")
    parser.add_argument("--packing", default="1,2,4,8", help="questions per room to time")
    parser.add_argument("--threads", default="1,2", help="CPU thread counts to time")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast)")
    args = parser.parse_args()
    config = TrainConfig(
        image_size=args.image_size, point_embedding=True, camera_prior="geometric",
        grounding_weight=0.5, egocentric_weight=0.0,
    )  # fmt: skip
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR / "vlm"))
    grid = patch_grid(config)  # 4 at 112 px, 8 at 224
    width = geometry_token_width(grid)
    device = torch.device(args.device)
    model = build_model(config, tokenizer, width).to(device).train()
    packings = [int(k) for k in args.packing.split(",")]
    data = rooms(args.batch, args.frames, args.image_size, grid, width, max(packings))
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )

    def batch_of(per_room: int) -> list[TrainSample]:
        picked = [room[k] for room in data for k in range(min(per_room, len(room)))]
        return picked[: args.batch]

    def seconds(batch: list[TrainSample]) -> float:
        best = float("inf")
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with autocast:
                loss = model.forward_train(batch)["loss"]
            loss.backward()
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return best

    threads = [int(t) for t in args.threads.split(",")] if device.type == "cpu" else [0]
    results = []
    for count in threads:
        if count:
            torch.set_num_threads(count)
        base = None
        for per_room in packings:
            batch = batch_of(per_room)
            took = seconds(batch)
            rate = len(batch) / took
            base = base or rate
            results.append({
                "threads": count, "questions_per_scene": per_room, "samples": len(batch),
                "seconds": round(took, 3), "samples_per_s": round(rate, 1),
                "speed_up": round(rate / base, 2),
            })  # fmt: skip
    print(json.dumps({
        "device": str(device), "image_size": args.image_size, "frames": args.frames,
        "torch": torch.__version__, "results": results,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
