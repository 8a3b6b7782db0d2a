"""Scene-engine benchmark on CPU with a small model: ingest, memory, cold vs warm, modes.

    python bench/bench_engine.py                  # small config with the paper's token structure
    python bench/bench_engine.py --model DIR --keyframes 500 --frames 32

The default model is random and tiny in width but has the real token structure: 384 px frames
(27 x 27 SigLIP patches pooled to 14 x 14 + newlines = 210 tokens, + 1 camera token) and 32
frames per query, so the cost split between encoding the video and answering is representative.

Prints, in one run: per-keyframe ingest cost (CUT3R step + buffer) around keyframe 10 and around
keyframe N, resident memory at 10 and N keyframes, cold vs warm query latency with the check that
their outputs are identical, and faithful vs streaming cold latency.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loc3r_ros"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loc3r_ros" / "test"))

from loc3r.engine import EngineConfig, KeyframeConfig, SceneEngine  # noqa: E402
from loc3r.engine.models import load_bundle  # noqa: E402
from loc3r_ros.node_stats import resident_memory_bytes  # noqa: E402

SEC = 1_000_000_000


def frames(count: int, size: int = 96):
    """A panning synthetic sequence (distinct frames)."""
    from loc3r.scenes import EpisodeConfig, make_episode

    episode = make_episode(5, EpisodeConfig(frames=min(count, 64), image_size=size))
    images = [f.rgb for f in episode.frames]
    return [images[i % len(images)] for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    """Run and print the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="")
    parser.add_argument("--keyframes", type=int, default=500)
    parser.add_argument("--frames", type=int, default=32, help="frames per query")
    parser.add_argument("--capacity", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model_dir = args.model
    if not model_dir:
        from tiny_bundle import make_tiny_bundle

        model_dir = str(
            make_tiny_bundle(Path(tempfile.mkdtemp()) / "tiny", image_size=384, frames=args.frames)
        )
    bundle = load_bundle(model_dir or None)
    images = frames(args.keyframes)

    def engine_for(mode: str) -> SceneEngine:
        config = EngineConfig(
            keyframes=KeyframeConfig(min_interval_s=0.0, min_change=0.0, capacity=args.capacity),
            num_query_frames=args.frames,
            mode=mode,
            perception_wait_s=600.0,
        )
        engine = SceneEngine(config)
        engine.set_models(bundle.model, bundle.perception, args.frames)
        return engine

    engine = engine_for("streaming")
    ingest_s, memory = [], {}
    for i, image in enumerate(images):
        start = time.perf_counter()
        engine.add_frame(image, i * SEC)
        engine.worker.wait_idle(60)
        ingest_s.append(time.perf_counter() - start)
        if i + 1 in (10, args.keyframes):
            memory[i + 1] = resident_memory_bytes()
    early = float(np.median(ingest_s[5:15]))
    late = float(np.median(ingest_s[-10:]))

    def timed(call):
        start = time.perf_counter()
        out = call()
        return time.perf_counter() - start, out

    engine._prefix = None  # force a cold query on the final scene
    cold_s, cold = timed(lambda: engine.ask("What is on my left?", "I am sitting on the bed"))
    warm_s, warm = timed(lambda: engine.ask("What is on my left?", "I am sitting on the bed"))
    identical = (cold.answer, cold.pose) == (warm.answer, warm.pose) and warm.cached
    engine.close()

    faithful = engine_for("faithful")
    for i, image in enumerate(images[-args.capacity :]):
        faithful.add_frame(image, i * SEC)
    faithful.worker.wait_idle(600)
    faithful_s, _ = timed(lambda: faithful.ask("What is on my left?", "I am sitting on the bed"))
    faithful.close()

    result = {
        "model": bundle.description,
        "keyframes": args.keyframes,
        "capacity": args.capacity,
        "frames_per_query": args.frames,
        "ingest_ms_per_keyframe_at_10": round(1000 * early, 2),
        f"ingest_ms_per_keyframe_at_{args.keyframes}": round(1000 * late, 2),
        "ingest_ratio": round(late / early, 3),
        "rss_mb_at_10": round(memory[10] / 2**20, 1),
        f"rss_mb_at_{args.keyframes}": round(memory[args.keyframes] / 2**20, 1),
        "cold_query_s": round(cold_s, 4),
        "warm_query_s": round(warm_s, 4),
        "warm_speedup": round(cold_s / warm_s, 1),
        "warm_equals_cold": identical,
        "faithful_cold_query_s": round(faithful_s, 4),
        "streaming_cold_query_s": round(cold_s, 4),
    }
    print(json.dumps(result, indent=2))
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
