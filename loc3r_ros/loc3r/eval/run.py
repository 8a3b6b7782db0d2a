"""`loc3r eval`: score a predictions file, or run a model on held-out synthetic scenes.

    loc3r eval --predictions preds.jsonl [--answers leo] [--localization sqa3d] [--out DIR]
    loc3r eval [--model DIR] [--seeds 1000000:1000040] [--out DIR]
    loc3r eval [--model DIR] --data ROOT --split test [--out DIR]   # our dataset format

Writes ``report.json`` (aggregates, baselines, every case), ``report.md`` and, when it ran a
model, ``predictions.jsonl`` to ``--out``; prints the Markdown. The variants default to the
SQA3D localization metric and LEO's answer cleaning / EM-R, as the paper's baselines use them.
On synthetic scenes the report adds the ceiling of loc3r.eval.text_ceiling (what perfect
perception could score from the situation's words) beside the random and majority baselines.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from loc3r.eval.answers import ANSWER_VARIANTS
from loc3r.eval.localization import LOCALIZATION_VARIANTS
from loc3r.eval.report import EvalCase, evaluate_cases, markdown_report, read_cases, write_cases
from loc3r.eval.text_ceiling import CeilingCase, ceiling_report, episodes_ceiling
from loc3r.scenes.episode import LOOKS, WALKS

DEFAULT_HELD_OUT = "1000000:1000040"  # the held-out synthetic seeds of the default model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `eval` sub-command's options."""
    parser.add_argument("--predictions", type=Path, help="JSON-lines predictions to score")
    parser.add_argument("--model", default="", help="model directory (default: embedded)")
    parser.add_argument("--seeds", default=DEFAULT_HELD_OUT, help="synthetic scenes A:B (B excl.)")
    parser.add_argument("--data", type=Path, help="dataset root in our format (loc3r.datasets)")
    parser.add_argument("--split", default="test", help="annotation split of --data")
    parser.add_argument("--frames", type=int, default=0, help="frames per scene (default: model)")
    add_scene_arguments(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--answers", choices=ANSWER_VARIANTS, default="leo")
    parser.add_argument("--localization", choices=LOCALIZATION_VARIANTS, default="sqa3d")
    parser.add_argument("--out", type=Path, help="folder for report.json / report.md")
    parser.add_argument("--no-progress", action="store_true")


def add_scene_arguments(parser: argparse.ArgumentParser) -> None:
    """How synthetic held-out rooms are rendered (`loc3r eval` and `loc3r.eval.bounds`).

    Each one left out is the model's: its frame size, and the rooms of its bundle.json's
    training_scenes (flat sweeps for a bundle without them); see `scenes_like_training`.
    """
    parser.add_argument("--image-size", type=int, default=0,
                        help="the VLM's frame size (default: the model's)")  # fmt: skip
    parser.add_argument("--look", choices=LOOKS, help="synthetic rooms: flat, textured or "
                        "furnished (default: those the model was trained on)")  # fmt: skip
    parser.add_argument("--walk", choices=WALKS, help="synthetic camera walks (default: the "
                        "model's)")  # fmt: skip
    parser.add_argument("--render-size", type=int, default=0, help="rendered frame size (default: "
                        "the model's training rooms', else --image-size)")  # fmt: skip
    parser.add_argument("--stream-video", action=argparse.BooleanOptionalAction, default=None,
                        help="synthetic rooms: stream every step of a room scan's video through "
                        "CUT3R and the pose source, as the node streams every keyframe, while the "
                        "model sees the sampled frames (default: as the model was "
                        "trained)")  # fmt: skip


def scenes_like_training(args: argparse.Namespace, bundle) -> argparse.Namespace:
    """Fill the scene options left out (None / 0) from a loaded bundle, in place; returns args.

    The image size is the VLM's; look, walk and render size those of the bundle.json's
    training_scenes, or flat sweeps at the image size for a bundle that does not state them.
    """
    from loc3r.engine.models import DEFAULT_MODEL_DIR, training_scenes

    root = Path(args.model) if getattr(args, "model", "") else DEFAULT_MODEL_DIR
    trained = training_scenes(root)
    args.image_size = args.image_size or bundle.model.image_size
    args.look = args.look or trained.get("look", "flat")
    args.walk = args.walk or trained.get("walk", "sweep")
    args.render_size = args.render_size or trained.get("render_size", 0)
    if getattr(args, "stream_video", None) is None:
        args.stream_video = trained.get("stream_video", False)
    return args


def scene_config(args: argparse.Namespace, frames: int):
    """The EpisodeConfig of held-out rooms from the scene options (after scenes_like_training)."""
    from loc3r.scenes import EpisodeConfig

    return EpisodeConfig(
        frames=frames,
        image_size=args.render_size or args.image_size,
        look=args.look,
        walk=args.walk,
        stream_video=bool(args.stream_video),
    )


def parse_seeds(text: str) -> list[int]:
    """``A:B`` (B exclusive) or comma-separated seeds."""
    try:
        if ":" in text:
            start, stop = (int(v) for v in text.split(":"))
            seeds = list(range(start, stop))
        else:
            seeds = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds must be A:B or a comma list of integers, not {text!r}") from None
    if not seeds:
        raise ValueError(f"--seeds {text!r} selects no scene")
    return seeds


def predict_synthetic(
    args: argparse.Namespace,
) -> tuple[list[EvalCase], dict | None, list[CeilingCase] | None]:
    """Run a model bundle on held-out synthetic episodes.

    Returns its cases, its camera poses' errors and the ceiling's cases (loc3r.eval.text_ceiling).
    """
    from loc3r.engine.models import load_bundle
    from loc3r.train.pipeline import predict_cases
    from loc3r.train.synthetic_data import build_episodes, pose_error_summary

    torch.set_num_threads(max(1, torch.get_num_threads()))
    bundle = load_bundle(args.model or None, args.device)
    scenes_like_training(args, bundle)
    vlm = bundle.model.vlm
    frames = args.frames or bundle.num_query_frames
    grid = bundle.model.vlm.base.config.pooled_grid
    config = scene_config(args, frames)
    episodes = build_episodes(
        parse_seeds(args.seeds), config, bundle.perception, grid,
        progress=not args.no_progress, image_size=args.image_size,
    )  # fmt: skip
    cases = predict_cases(vlm, episodes, args.image_size, progress=not args.no_progress)
    ceiling = episodes_ceiling(episodes)
    errors = [e.pose_errors for e in episodes if e.pose_errors is not None and len(e.pose_errors)]
    pose_source = None
    if errors:
        pose_source = {
            "source": bundle.perception.config.pose_source,
            "stream_video": config.stream_video,  # every video step streamed, or the frames only
            **pose_error_summary(errors),
        }
    return cases, pose_source, ceiling


def predict_dataset(args: argparse.Namespace) -> list[EvalCase]:
    """Run a model bundle over a dataset in our format.

    Per scene: `frames` frames sampled uniformly, CUT3R over exactly them, one scene encoding
    for all of the scene's questions.
    """
    from tqdm import tqdm

    from loc3r.datasets.format import read_annotations, read_scene
    from loc3r.engine.frame_buffer import sample_uniform
    from loc3r.engine.models import load_bundle

    annotations = read_annotations(args.data, args.split)
    bundle = load_bundle(args.model or None, args.device)
    frames = args.frames or bundle.num_query_frames
    by_scene: dict[str, list] = {}
    for note in annotations:
        by_scene.setdefault(note.scene_id, []).append(note)
    cases = []
    for scene_id, notes in tqdm(by_scene.items(), desc="scenes", disable=args.no_progress):
        scene = read_scene(args.data, scene_id)
        images = [scene[i].rgb for i in sample_uniform(frames, len(scene))]
        perceived = bundle.perception.run_fresh(images)
        tokens = torch.stack([p.camera_token for p in perceived])
        prefix = bundle.model.encode_scene(images, tokens)
        for index, note in enumerate(notes):
            answer, pose, _ = bundle.model.answer(prefix, note.question, note.situation)
            key = note.question_id if note.question_id is not None else f"{scene_id}-{index}"
            cases.append(
                EvalCase(
                    id=str(key),
                    question=note.question, prediction=answer, references=list(note.answers),
                    question_type=note.question_type, scene_id=scene_id,
                    gt_position=[float(v) for v in note.position], gt_yaw=float(note.yaw),
                    pred_positions=[[pose.x, pose.y]], pred_yaws=[pose.yaw],
                )
            )  # fmt: skip
    return cases


def run(args: argparse.Namespace) -> dict:
    """Score (running the model first when no predictions are given); write the outputs."""
    start = time.perf_counter()
    if (args.predictions or args.data) and args.stream_video:
        raise ValueError("--stream-video streams synthetic room scans; a dataset scene's sampled "
                         "frames are what its pose source sees")  # fmt: skip
    ceiling = None
    if args.predictions:
        cases, source = read_cases(args.predictions), str(args.predictions)
    elif args.data:
        cases, source = predict_dataset(args), f"model {args.model or 'embedded'} on {args.data}"
    else:
        (cases, pose_source, ceiling), source = (
            predict_synthetic(args),
            f"model {args.model or 'embedded'}",
        )
    report = evaluate_cases(cases, args.answers, args.localization)
    if ceiling is not None:
        report["ceiling"] = ceiling_report(ceiling, cases, args.answers, args.localization)
    report["source"] = source
    if not args.predictions and not args.data and pose_source is not None:
        report["pose_source"] = pose_source  # the camera poses the model's camera tokens state
    report["seconds"] = round(time.perf_counter() - start, 2)
    markdown = markdown_report(report, f"loc3r eval: {source}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=2))
        (args.out / "report.md").write_text(markdown)
        if not args.predictions:
            write_cases(args.out / "predictions.jsonl", cases)
    print(markdown)
    return report
