"""Do the answers read the situation? How far its words move the model's answers.

    python -m loc3r.eval.situation_use [--model DIR] [--seeds 1000000:1000020] [--out F.json]

Loc3R-VLM answers after [video] [situation] <Pos> <Ori> [question], so a situated answer ("what is
the closest object on my left?") should change when the situation puts the agent elsewhere. On
held-out synthetic rooms this changes one word of each question's situation, the anchor's kind
("next to the bed" -> "next to the sofa") or the faced object's, and reports per question type the
mean total variation distance between the answer distributions (softmax over the bundle's closed
answer vocabulary) before and after: 0 means the answers do not read that word at all, 1 that they
change completely. Two references give the scale: the same question and situation over another
room's video (how far the video moves the answers), and how far f_pos moves with the word (that
the pose reads it).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from loc3r.eval.report import print_and_save
from loc3r.scenes.situations import SITTABLE
from loc3r.scenes.world import CATALOGUE

CHANGES = ("anchor word", "target word", "another room's video")
# make_situation's text: "I am <verb> the [colour] <kind>, facing the [colour] <kind>"
SITUATION = re.compile(
    r"^(?P<head>I am (?:sitting on|standing next to) the (?:\w+ )?)(?P<anchor>\w+)"
    r"(?P<middle>, facing the (?:\w+ )?)(?P<target>\w+)$"
)


def swap_kind(situation: str, role: str) -> str | None:
    """`situation` with one kind ("anchor" or "target") replaced; None if not make_situation's.

    The new kind is the next in the catalogue that the situation does not name and, for an
    anchor the agent sits on, one it can sit on (so the text stays one make_situation could
    write, but for a colour the new kind may not come in).
    """
    if role not in ("anchor", "target"):
        raise ValueError(f"role: 'anchor' or 'target', not {role!r}")
    match = SITUATION.match(situation)
    if match is None or match["anchor"] not in CATALOGUE or match["target"] not in CATALOGUE:
        return None
    kinds = list(CATALOGUE)
    start = kinds.index(match[role])
    named = {match["anchor"], match["target"]}
    sitting = role == "anchor" and match["head"].startswith("I am sitting on")
    other = next(
        k
        for k in kinds[start + 1 :] + kinds[:start]
        if k not in named and (k in SITTABLE or not sitting)
    )
    parts = {**match.groupdict(), role: other}
    return f"{parts['head']}{parts['anchor']}{parts['middle']}{parts['target']}"


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """Half the L1 distance of two probability vectors: 0 (equal) to 1 (disjoint)."""
    return 0.5 * float((p - q).abs().sum())


def measure(vlm, episodes: list, image_size: int, progress: bool = True) -> dict:
    """Per question type, the mean total variation of each change (module docstring)."""
    if vlm.answer_vocabulary is None:
        raise ValueError("the model has no closed answer vocabulary: its answers have no "
                         "distribution to compare")  # fmt: skip
    if len(episodes) < 2:
        raise ValueError("needs two rooms or more (another room's video is the reference)")
    vlm.eval()
    distances: dict[str, dict[str, list[float]]] = {}
    moved: dict[str, list[float]] = {"anchor word": [], "target word": []}

    def encode(episode):
        samples = episode.samples(image_size)
        return vlm.encode_scene(samples[0].pixel_values, samples[0].camera_tokens)

    # two scene prefixes alive at a time (a static cache pool holds a few): a room's is the
    # previous room's reference, then its own
    other = encode(episodes[0])
    for index, episode in enumerate(tqdm(episodes, desc="situations", disable=not progress)):
        prefix = other
        other = encode(episodes[(index + 1) % len(episodes)])
        shifts: dict[str, float] = {}  # f_pos's move by changed situation (shared by questions)
        for record in episode.records:
            answers = vlm.score_answers(prefix, record.question, record.situation).softmax(-1)
            rows = distances.setdefault(record.question_type, {change: [] for change in CHANGES})
            elsewhere = vlm.score_answers(other, record.question, record.situation).softmax(-1)
            rows["another room's video"].append(total_variation(answers, elsewhere))
            for role in ("anchor", "target"):
                changed = swap_kind(record.situation, role)
                if changed is None:
                    continue
                scores = vlm.score_answers(prefix, record.question, changed).softmax(-1)
                rows[f"{role} word"].append(total_variation(answers, scores))
                if changed not in shifts:
                    pose = vlm.localize(prefix, record.situation).xy
                    shifts[changed] = float((vlm.localize(prefix, changed).xy - pose).norm())
                moved[f"{role} word"].append(shifts[changed])
    return {
        "questions": {t: len(rows["another room's video"]) for t, rows in distances.items()},
        "total_variation": {
            t: {c: float(np.mean(v)) if v else None for c, v in rows.items()}
            for t, rows in sorted(distances.items())
        },
        "f_pos_moved_m": {c: float(np.median(v)) if v else None for c, v in moved.items()},
    }


def markdown(report: dict) -> str:
    """The report as a Markdown table."""

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        "| question type | questions | " + " | ".join(CHANGES) + " |",
        "|---|---|" + "---|" * len(CHANGES),
    ]
    for kind, row in report["total_variation"].items():
        values = " | ".join(cell(row[c]) for c in CHANGES)
        lines.append(f"| {kind} | {report['questions'][kind]} | {values} |")
    moved = report["f_pos_moved_m"]
    lines.append(
        f"\nTotal variation of the answer distribution (0: unchanged, 1: disjoint). f_pos moves "
        f"{cell(moved['anchor word'])} m (median) with the anchor word, "
        f"{cell(moved['target word'])} m with the target word."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Render the held-out rooms, change the situations' words, print (and save) the report."""
    from loc3r.engine.models import load_bundle
    from loc3r.eval.run import add_scene_arguments, parse_seeds, scene_config, scenes_like_training
    from loc3r.train.synthetic_data import build_episodes

    parser = argparse.ArgumentParser(
        prog="python -m loc3r.eval.situation_use",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="", help="model directory (default: embedded)")
    parser.add_argument("--seeds", default="1000000:1000020", help="synthetic scenes A:B (B excl.)")
    parser.add_argument("--frames", type=int, default=0, help="frames per scene (default: model)")
    add_scene_arguments(parser)
    parser.add_argument("--out", type=Path, help="JSON report to write")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
        if len(seeds) < 2:
            raise ValueError(f"--seeds {args.seeds!r}: two rooms or more")
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    bundle = load_bundle(args.model or None)
    scenes_like_training(args, bundle)
    vlm = bundle.model.vlm
    if vlm.answer_vocabulary is None:
        parser.error("the model has no closed answer vocabulary (bundle.json answer_vocabulary)")
    config = scene_config(args, args.frames or bundle.num_query_frames)
    episodes = build_episodes(
        seeds, config, bundle.perception, vlm.base.config.pooled_grid,
        progress=not args.no_progress, image_size=args.image_size,
    )  # fmt: skip
    with torch.inference_mode():
        report = measure(vlm, episodes, args.image_size, progress=not args.no_progress)
    report.update(model=args.model or "embedded", seeds=args.seeds,
                  seconds=round(time.perf_counter() - start, 1))  # fmt: skip
    print_and_save(report, markdown(report), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
