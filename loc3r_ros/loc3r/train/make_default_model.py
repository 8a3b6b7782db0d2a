"""Reproduce the embedded default model from scratch (no downloads), and evaluate it.

    python -m loc3r.train.make_default_model                 # ~25 min on one CPU core
    python -m loc3r.train.make_default_model --steps=200     # smoke run (any TrainConfig key)

Trains a tokenizer on the synthetic corpus, renders the training and held-out episodes, trains a
tiny Loc3R-VLM on the joint objective with a frozen tiny CUT3R, evaluates it against the random
and majority baselines on held-out rooms, and writes the model bundle to
loc3r/assets/default_model (bundle.json, vlm/, cut3r/) with eval.json beside it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from loc3r.engine.models import DEFAULT_MODEL_DIR, save_bundle
from loc3r.train.pipeline import CUT3R_IMAGE_SIZE, evaluate, prepare_run
from loc3r.train.train_vlm import TrainConfig, Trainer


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate, save."""
    argv = list(sys.argv[1:] if argv is None else argv)
    target = DEFAULT_MODEL_DIR
    if any(a.startswith("--target=") for a in argv):
        target = Path(next(a for a in argv if a.startswith("--target=")).split("=", 1)[1])
        argv = [a for a in argv if not a.startswith("--target=")]
    torch.set_num_threads(1)
    config = TrainConfig.from_args(["--out=runs/default_model", *argv])
    start = time.perf_counter()
    run = prepare_run(config)
    trainer = Trainer(config, run.model, run.train_samples)
    history = trainer.fit()
    report = evaluate(run.model, run.eval_episodes, config.image_size)
    report.pop("cases")
    report["train"] = {
        "steps": config.steps,
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "samples": len(run.train_samples),
        "seconds": round(time.perf_counter() - start, 1),
    }
    save_bundle(
        target,
        run.model,
        run.cut3r,
        cut3r_image_size=CUT3R_IMAGE_SIZE,
        num_query_frames=config.frames,
        description=f"embedded tiny Loc3R-VLM ({config.steps} steps on synthetic rooms)",
    )
    (target / "eval.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
