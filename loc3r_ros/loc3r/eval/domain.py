r"""Fit and calibrate a bundle's domain check (loc3r.engine.domain), and measure it.

    python -m loc3r.eval.domain --model DIR --fit-seeds 5000000:5000150 \
        --check-seeds 5100000:5100300 --test-seeds 5200000:5200100 [--look flat --walk sweep] \
        [--real CLIP ...] [--write]

Fits the in-domain statistics on the frames of synthetic rooms like those the model was trained
on (--fit-seeds), sets the threshold to the --quantile of held-out rooms' clip scores
(--check-seeds: the in-domain clips flagged are then about 1 - quantile; loc3r.engine.domain
says how a clip is scored), and measures the in-domain flag rate on more held-out rooms
(--test-seeds) and how often it flags input unlike the training rooms: real photographs seen by
a camera panning across them (matplotlib's sample photograph, scikit-image's photographs when it
is installed, and every --real video or image folder), and sensor noise. Prints a JSON report;
--write saves domain.safetensors into the bundle (the engine loads it from there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from loc3r.engine.domain import ClipFeatures, DomainModel, frame_features
from loc3r.eval.run import add_scene_arguments, parse_seeds, scenes_like_training
from loc3r.vlm import frames_to_pixel_values

# scikit-image's photographs (stereo_motorcycle: an indoor scene; its left view is used)
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "stereo_motorcycle")


def photographs() -> dict[str, np.ndarray]:
    """Real RGB photographs available offline: matplotlib's sample, scikit-image's if present."""
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    out = {"grace_hopper": cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)}
    try:
        from skimage import data
    except ImportError:
        return out
    for name in SKIMAGE_PHOTOS:
        image = getattr(data, name)()
        image = np.asarray(image[0] if isinstance(image, tuple) else image)
        out[name] = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    return out


def pan_clip(photo: np.ndarray, frames: int, size: int) -> list[np.ndarray]:
    """A camera panning across a photograph: `frames` square crops, left to right, at `size`."""
    height, width = photo.shape[:2]
    side = int(min(height, width) * 0.8)
    xs = np.linspace(0, width - side, frames).round().astype(int)
    y = (height - side) // 2
    return [
        cv2.resize(np.ascontiguousarray(photo[y : y + side, x : x + side]), (size, size))
        for x in xs
    ]


def noise_clip(frames: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Sensor-noise frames (a covered or broken camera)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(frames)]


def synthetic_clips(seeds: list[int], args, frames: int, size: int) -> list[list[np.ndarray]]:
    """The frames of synthetic rooms, rendered as `loc3r eval` renders them."""
    from loc3r.scenes import EpisodeConfig, make_episode

    render = args.render_size or size
    config = EpisodeConfig(frames=frames, image_size=render, look=args.look, walk=args.walk)
    clips = []
    for seed in seeds:
        episode = make_episode(seed, config)
        clips.append([cv2.resize(f.rgb, (size, size)) for f in episode.frames])
    return clips


def run(args: argparse.Namespace) -> dict:
    """Fit, calibrate, measure; write the bundle's domain model with --write."""
    from loc3r.engine.models import DEFAULT_MODEL_DIR, load_bundle
    from loc3r.video_io import read_frames

    root = Path(args.model) if args.model else DEFAULT_MODEL_DIR
    bundle = load_bundle(root, args.device)
    scenes_like_training(args, bundle)
    vlm, size = bundle.model.vlm, bundle.model.image_size
    frames = args.frames or bundle.num_query_frames

    def features(clip: list[np.ndarray]) -> ClipFeatures:
        return frame_features(vlm, frames_to_pixel_values(clip, size=size))

    fit_clips = synthetic_clips(parse_seeds(args.fit_seeds), args, frames, size)
    model = DomainModel.fit([features(c) for c in fit_clips])
    held_out = synthetic_clips(parse_seeds(args.check_seeds), args, frames, size)
    check = model.calibrate([features(c) for c in held_out], args.quantile)
    model.description = f"synthetic rooms ({args.look} look, {args.walk} walks)"
    tested = [model.score(features(c)) for c in synthetic_clips(parse_seeds(args.test_seeds),
                                                                args, frames, size)]  # fmt: skip
    outside: dict[str, float] = {
        f"photo:{name}": model.score(features(pan_clip(photo, frames, size)))
        for name, photo in photographs().items()
    }
    for source in args.real:
        clip = read_frames(source, max_frames=frames).frames
        outside[f"real:{source}"] = model.score(features([r.image for r in clip]))
    outside["sensor_noise"] = model.score(features(noise_clip(frames, size)))
    flagged = {name: score > model.threshold for name, score in outside.items()}
    report = {
        "model": str(root),
        "threshold": round(model.threshold, 4),
        "quantile": args.quantile,
        "fit_frames": len(fit_clips) * frames,
        "in_domain_clips": len(check),
        "in_domain_flagged": round(float(np.mean(np.array(check) > model.threshold)), 4),
        "in_domain_score_median": round(float(np.median(check)), 4),
        "test_clips": len(tested),  # in-domain rooms seen by neither the fit nor the threshold
        "test_flagged": round(float(np.mean(np.array(tested) > model.threshold)), 4),
        "outside_clips": len(outside),
        "outside_flagged": round(float(np.mean(list(flagged.values()))), 4),
        "outside_scores": {name: round(score, 4) for name, score in outside.items()},
        "description": model.description,
    }
    if args.write:
        report["written"] = str(model.save(root))
    return report


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m loc3r.eval.domain", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default="", help="bundle directory (default: embedded)")
    parser.add_argument("--fit-seeds", default="5000000:5000150", help="rooms to fit on, A:B")
    parser.add_argument("--check-seeds", default="5100000:5100300", help="held-out rooms, A:B")
    parser.add_argument("--test-seeds", default="5200000:5200100",
                        help="more held-out rooms, to measure the in-domain flag rate")  # fmt: skip
    parser.add_argument("--quantile", type=float, default=0.99,
                        help="of held-out clip scores: the threshold")  # fmt: skip
    parser.add_argument("--frames", type=int, default=0, help="frames per clip (default: model)")
    parser.add_argument("--real", nargs="*", default=[], help="real videos or image folders")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", action="store_true", help="save domain.safetensors")
    add_scene_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run and print the report (exit status 2 with a message on bad input)."""
    args = build_parser().parse_args(argv)
    if not 0.5 <= args.quantile < 1.0:
        print("--quantile must be in [0.5, 1)", file=sys.stderr)
        return 2
    try:
        report = run(args)
    except (OSError, ValueError) as exc:
        print(f"loc3r.eval.domain: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
