"""`loc3r`: the engine without ROS, on a video file or a folder of images.

    loc3r ask VIDEO_OR_DIR --question "What is on my left?" [--situation "I am on the bed"]
    loc3r localize VIDEO_OR_DIR --situation "I am sitting on the bed facing the window"
    loc3r scene OUT_DIR [--seed 3]           # write a synthetic walk-through (frames + truth)
    loc3r scene OUT_DIR --as-trained         # ... like the model's training rooms (bundle.json)
Options: --model DIR (default: the embedded model), --frames N, --min-frames N,
--mode streaming|faithful, --device cpu|cuda|auto, --decoding dynamic|static|graphs (see the
node's decoding parameter), --bev-png FILE (a bird's-eye map: metres, grid,
scale bar, legend; --bev-size, --bev-objects OUT_DIR/objects.json, --bev-truth X Y YAW_DEG).
Prints JSON: answer, pose (scene frame: z up, metres, origin at the first frame), sigma,
confidence (answer probability, CUT3R confidence, whether the frames look like the model's
training data, with a note when not), frames used, timings, and what was read ("input": frames
decoded, failed and where, time span; "warnings" for a partial read). Fewer decodable frames than
the model sees (or --min-frames) is an error. Errors print {"error": ...} and exit with status 2;
no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from loc3r.errors import Loc3rError


def _engine(args):
    from loc3r.engine import EngineConfig, KeyframeConfig, SceneEngine
    from loc3r.engine.models import load_bundle

    bundle = load_bundle(args.model or None, args.device, args.decoding)
    frames = args.frames or bundle.num_query_frames
    config = EngineConfig(
        keyframes=KeyframeConfig(min_interval_s=0.0, min_change=0.0, capacity=max(frames, 2)),
        num_query_frames=frames,
        mode=args.mode,
        perception_wait_s=600.0,
    )
    engine = SceneEngine(config)
    engine.set_models(bundle.model, bundle.perception, frames, bundle.geometry)
    return engine, frames


def _run_query(args) -> dict:
    from loc3r.video_io import read_frames

    start = time.perf_counter()
    if args.bev_png and args.bev_size < 128:
        raise ValueError(f"--bev-size {args.bev_size}: the map needs at least 128 pixels")
    objects = _bev_objects(args.bev_objects) if args.bev_png else []
    engine, count = _engine(args)
    try:
        # the frames the model sees, unless --min-frames accepts fewer
        need = args.min_frames if args.min_frames > 0 else count
        clip = read_frames(args.source, max_frames=count, min_frames=need)
        if args.intrinsics:  # the camera's calibration, for a geometric pose source
            engine.set_intrinsics(tuple(args.intrinsics), clip.frames[0].image.shape[:2])
        for record in clip.frames:
            engine.add_frame(record.image, record.stamp_ns)
        if args.command == "ask":
            result = engine.ask(args.question, args.situation)
        else:
            result = engine.localize(args.situation)
        out: dict = {"answer": result.answer} if args.command == "ask" else {}
        if result.pose is not None:
            pose = result.pose
            out["pose"] = {
                "frame": "scene (z up, metres, origin at the first frame's camera)",
                "x": round(pose.x, 4),
                "y": round(pose.y, 4),
                "yaw_deg": round(math.degrees(pose.yaw), 2),
                "sigma_x": round(pose.sigma_x, 4),
                "sigma_y": round(pose.sigma_y, 4),
                "yaw_spread_deg": round(math.degrees(pose.yaw_spread), 2),
            }
        out["confidence"] = result.confidence.to_dict()
        if result.confidence.note:
            print(f"loc3r: warning: {result.confidence.note}", file=sys.stderr)
        out["frames_used"] = result.num_frames
        out["intrinsics"] = list(args.intrinsics) if args.intrinsics else "estimated"
        out["input"] = clip.report.to_dict()
        out["warnings"] = out["input"]["warnings"]
        for warning in out["warnings"]:
            print(f"loc3r: warning: {warning}", file=sys.stderr)
        out["timings_s"] = {k: round(v, 4) for k, v in result.timings.items()}
        out["total_s"] = round(time.perf_counter() - start, 3)
        if args.bev_png:
            from loc3r.bev_plot import write_bev_png

            truth = args.bev_truth
            write_bev_png(
                args.bev_png,
                engine.scene_view(),
                result.pose,
                args.bev_size,
                objects=objects,
                truth=None if truth is None else (truth[0], truth[1], math.radians(truth[2])),
                situation=args.situation,
                question=getattr(args, "question", ""),
                answer=result.answer,
            )
            out["bev_png"] = str(args.bev_png)
        return out
    finally:
        engine.close()


def _bev_objects(path: Path | None) -> list[tuple[str, float, float]]:
    """(label, x, y) from a JSON list of {"label", "x", "y"} (BEV metres), as `scene` writes."""
    if path is None:
        return []
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
        return [(str(o["label"]), float(o["x"]), float(o["y"])) for o in items]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"--bev-objects {path}: expected a JSON list of {{label, x, y}} ({exc})"
        ) from exc


def _write_scene(args) -> dict:
    import cv2
    import numpy as np

    from loc3r.scenes import EpisodeConfig, make_episode

    look, walk, size, count = args.look, args.walk, args.size, args.count
    if args.model and not args.as_trained:
        raise ValueError("loc3r scene reads --model only with --as-trained")
    if args.as_trained:  # the model's rooms where an option does not say otherwise
        from loc3r.engine.models import DEFAULT_MODEL_DIR, read_bundle_spec, training_scenes

        root = Path(args.model) if args.model else DEFAULT_MODEL_DIR
        spec = read_bundle_spec(root)
        trained = training_scenes(root, spec)
        look, walk = look or trained.get("look"), walk or trained.get("walk")
        size = size or trained.get("render_size")
        count = count or int(spec.get("num_query_frames", 0)) or None
    config = EpisodeConfig(frames=count or 24, image_size=size or 112, look=look or "flat",
                           walk=walk or "sweep")  # fmt: skip
    episode = make_episode(args.seed, config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(episode.frames):
        cv2.imwrite(str(out / f"{i:06d}.png"), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
    truth = [r.to_dict() for r in episode.records]
    (out / "questions.json").write_text(json.dumps(truth, indent=2))
    objects = []
    for o in episode.room.objects:  # where each object is in the BEV frame, for --bev-objects
        x, y = (float(v) for v in episode.frame.points(np.array([o.centre], dtype=float))[0, :2])
        objects.append({"label": o.label, "x": round(x, 4), "y": round(y, 4)})
    (out / "objects.json").write_text(json.dumps(objects, indent=2))
    return {"frames": len(episode.frames), "questions": len(truth), "out": str(out)}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by tests)."""
    parser = argparse.ArgumentParser(prog="loc3r", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("ask", "localize"):
        p = sub.add_parser(name)
        p.add_argument("source", help="video file or folder of images")
        if name == "ask":
            p.add_argument("--question", required=True)
            p.add_argument("--situation", default="")
        else:
            p.add_argument("--situation", required=True)
        p.add_argument("--model", default="", help="model directory (default: embedded)")
        p.add_argument("--frames", type=int, default=0, help="frames the model sees")
        p.add_argument("--min-frames", type=int, default=0,
                       help="fewest decodable frames accepted (default: --frames)")  # fmt: skip
        p.add_argument("--mode", choices=("streaming", "faithful"), default="faithful")
        p.add_argument("--intrinsics", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"),
                       help="the camera's calibration at the frames' size (default: the "
                            "geometric pose source reads the focal length off CUT3R)")  # fmt: skip
        p.add_argument("--device", default="cpu")
        p.add_argument("--decoding", choices=("dynamic", "static", "graphs"), default="dynamic",
                       help="static KV cache; graphs: and the decoding step compiled (CUDA "
                       "graphs), for models that write free answers")  # fmt: skip
        p.add_argument("--bev-png", type=Path, help="write a bird's-eye map (PNG) here")
        p.add_argument("--bev-size", type=int, default=960, help="its width = height, pixels")
        p.add_argument("--bev-objects", type=Path,
                       help="JSON list of {label, x, y} (BEV metres) to label on the map, "
                            "e.g. the objects.json that `loc3r scene` writes")  # fmt: skip
        p.add_argument("--bev-truth", type=float, nargs=3, metavar=("X", "Y", "YAW_DEG"),
                       help="the true agent pose, drawn beside the model's")  # fmt: skip
    from loc3r.eval.run import add_arguments

    add_arguments(sub.add_parser("eval", help="localization and QA metrics (see loc3r.eval.run)"))
    from loc3r.scenes.episode import LOOKS, WALKS

    p = sub.add_parser("scene", help="write a synthetic walk-through")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--count", type=int, default=0, help="frames (default 24)")
    p.add_argument("--size", type=int, default=0, help="pixels (default 112)")
    p.add_argument(
        "--look",
        choices=LOOKS,
        help="flat colours (default), textured, or furnished (textured, "
        "each kind of furniture's details painted on)",
    )
    p.add_argument("--walk", choices=WALKS, help="camera walk (default: sweep)")
    p.add_argument(
        "--as-trained",
        action="store_true",
        help="rooms like the model's training rooms (its bundle.json's "
        "training_scenes and frames per query) where no option says otherwise",
    )
    p.add_argument("--model", default="", help="with --as-trained: model directory (default: "
                   "embedded)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; JSON on stdout."""
    args = build_parser().parse_args(argv)
    if args.command == "eval":
        from loc3r.eval.run import run

        try:
            run(args)
        except (Loc3rError, OSError, ValueError) as exc:
            print(f"loc3r eval: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        out = _write_scene(args) if args.command == "scene" else _run_query(args)
    except (Loc3rError, OSError, ValueError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
