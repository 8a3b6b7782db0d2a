"""Everything around a training run: tokenizer, CUT3R, episodes, model, and evaluation."""

from __future__ import annotations

import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoTokenizer

from loc3r.cut3r import Cut3r, Cut3rConfig, load_cut3r
from loc3r.engine.perception import Perception, PerceptionConfig
from loc3r.scenes import EpisodeConfig
from loc3r.train.synthetic_data import EpisodeData, build_episodes, corpus, train_tokenizer
from loc3r.train.train_vlm import TrainConfig, build_model
from loc3r.vlm import Loc3rVLM, TrainSample

CUT3R_IMAGE_SIZE = 64


@dataclass
class Run:
    """The pieces of a run."""

    model: Loc3rVLM
    cut3r: Cut3r
    train_episodes: list[EpisodeData]
    eval_episodes: list[EpisodeData]
    train_samples: list[TrainSample]


def episode_config(config: TrainConfig) -> EpisodeConfig:
    """Episodes rendered at the VLM's image size."""
    return EpisodeConfig(frames=config.frames, image_size=config.image_size)


def load_or_make_cut3r(config: TrainConfig) -> Cut3r:
    """The frozen CUT3R of the run: a trained directory, or a seeded random tiny one."""
    if config.cut3r_dir:
        return load_cut3r(config.cut3r_dir)
    torch.manual_seed(config.seed + 17)
    return Cut3r(Cut3rConfig.tiny()).eval().requires_grad_(False)


def prepare_run(config: TrainConfig, progress: bool = True) -> Run:
    """Tokenizer, CUT3R, train/eval episodes (with cached camera tokens) and the model."""
    out = Path(config.out)
    episodes_cfg = episode_config(config)
    train_seeds = list(range(config.train_episodes))
    eval_seeds = [config.eval_seed_offset + i for i in range(config.eval_episodes)]
    if config.tokenizer_dir:
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_dir)
    else:
        tokenizer_dir = out / "tokenizer"
        if (tokenizer_dir / "tokenizer.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        else:
            lines = corpus(train_seeds[: min(200, len(train_seeds))], episodes_cfg)
            main_rank = os.environ.get("RANK", "0") == "0"  # one writer under DDP
            tokenizer = train_tokenizer(
                lines, tokenizer_dir if main_rank else None, config.vocab_size
            )
    cut3r = load_or_make_cut3r(config)
    perception = Perception(cut3r, PerceptionConfig(image_size=CUT3R_IMAGE_SIZE))
    grid = math.ceil((config.image_size // 14) / 2)
    train = build_episodes(train_seeds, episodes_cfg, perception, grid, progress)
    held_out = build_episodes(eval_seeds, episodes_cfg, perception, grid, progress)
    samples = [s for e in train for s in e.samples(config.image_size)]
    model = build_model(config, tokenizer, cut3r.config.dec_embed_dim)
    return Run(model, cut3r, train, held_out, samples)


def normalise_answer(text: str) -> str:
    """Lower case, no punctuation, single spaces (the exact-match key)."""
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def _angle_error(a: float, b: float) -> float:
    return abs(math.degrees(math.remainder(a - b, 2 * math.pi)))


@torch.inference_mode()
def evaluate(
    model: Loc3rVLM,
    episodes: list[EpisodeData],
    image_size: int,
    train_answers: dict[str, Counter] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Localization accuracy and answer exact match on held-out episodes, with baselines.

    Baselines on the same records: random (uniform position in the bounding box of the
    held-out agent positions, uniform yaw; seeded) and majority answer per question type
    (counted on `train_answers`, else on the held-out records themselves).
    """
    model.eval()
    rng = np.random.default_rng(seed)
    rows = []
    for episode in tqdm(episodes, desc="eval", disable=not progress):
        samples = episode.samples(image_size)
        prefix = model.encode_scene(samples[0].pixel_values, samples[0].camera_tokens)
        for record, sample in zip(episode.records, samples, strict=True):
            answer, pose = model.answer(prefix, sample.question, sample.situation)
            rows.append({
                "type": record.question_type,
                "pos_err": float(np.linalg.norm(pose.xy.numpy() - np.array(record.position))),
                "yaw_err": _angle_error(pose.yaw, record.yaw),
                "em": normalise_answer(answer) == normalise_answer(record.answers[0]),
                "answer": record.answers[0],
                "position": record.position,
                "yaw": record.yaw,
            })  # fmt: skip
    positions = np.array([r["position"] for r in rows])
    low, high = positions.min(0), positions.max(0)
    counts = train_answers or defaultdict(Counter)
    if train_answers is None:
        for r in rows:
            counts[r["type"]][r["answer"]] += 1
    majority = {t: c.most_common(1)[0][0] for t, c in counts.items()}

    def acc(values, threshold) -> float:
        return float(np.mean(np.array(values) < threshold))

    random_pos = [
        float(np.linalg.norm(rng.uniform(low, high) - np.array(r["position"]))) for r in rows
    ]
    random_yaw = [_angle_error(rng.uniform(-math.pi, math.pi), r["yaw"]) for r in rows]
    report = {
        "n": len(rows),
        "model": {
            "acc_0.5m": acc([r["pos_err"] for r in rows], 0.5),
            "acc_1.0m": acc([r["pos_err"] for r in rows], 1.0),
            "acc_15deg": acc([r["yaw_err"] for r in rows], 15.0),
            "acc_30deg": acc([r["yaw_err"] for r in rows], 30.0),
            "em": float(np.mean([r["em"] for r in rows])),
        },
        "random": {
            "acc_0.5m": acc(random_pos, 0.5),
            "acc_1.0m": acc(random_pos, 1.0),
            "acc_15deg": acc(random_yaw, 15.0),
            "acc_30deg": acc(random_yaw, 30.0),
        },
        "em_by_type": {},
    }
    for qtype in sorted({r["type"] for r in rows}):
        of_type = [r for r in rows if r["type"] == qtype]
        report["em_by_type"][qtype] = {
            "n": len(of_type),
            "model": float(np.mean([r["em"] for r in of_type])),
            "majority": float(np.mean([r["answer"] == majority.get(qtype) for r in of_type])),
        }
    report["majority_em"] = float(np.mean([r["answer"] == majority.get(r["type"]) for r in rows]))
    return report


def answer_counts(episodes: list[EpisodeData]) -> dict[str, Counter]:
    """Answers per question type (for the majority baseline)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for episode in episodes:
        for record in episode.records:
            counts[record.question_type][record.answers[0]] += 1
    return counts
