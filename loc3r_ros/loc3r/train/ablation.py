"""The paper's localization ablation on synthetic rooms, in one command.

    python -m loc3r.train.ablation [--steps=N] [--out=runs/ablation] \
        --cut3r_dir=runs/default_model/cut3r_run/cut3r \
        --vision_init=runs/default_model/vision_run/vision_tower.safetensors

The pretrained parts come from make_default_model's run (without them CUT3R and the vision
tower are random, and the camera prior carries no pose).

Three tiny Loc3R-VLMs are trained on the same data, steps and seed, and evaluated by the same
`loc3r eval` code on the same held-out rooms: *situation only* (no layout loss, no camera
tokens), *+ layout* (the BEV layout loss) and *+ camera prior* (layout loss and CUT3R camera
tokens: the full method), with the embedded model's recipe. Any TrainConfig key can be given;
the data (episodes, CUT3R camera tokens, tokenizer) is built once. Writes ``ablation.json`` and
``ablation.md`` to ``--out`` and prints the table with the random and majority baselines and
the time each run took.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from loc3r.train.make_default_model import EMBEDDED_RECIPE
from loc3r.train.pipeline import evaluate, prepare_run
from loc3r.train.train_vlm import TrainConfig, Trainer, build_model

VARIANTS = (
    ("situation only", {"use_camera_tokens": False, "layout_weight": 0.0}),
    ("+ layout", {"use_camera_tokens": False}),
    ("+ camera prior", {}),
)
COLUMNS = ("acc_0_5m", "acc_1_0m", "acc_15deg", "acc_30deg")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def table(rows: list[dict]) -> str:
    """Markdown: one row per variant, then the baselines (percentages)."""
    lines = [
        "| variant | Acc@0.5m | Acc@1.0m | Acc@15° | Acc@30° | EM | EM direction | train time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        report = row["report"]
        loc, answers = report["model"]["localization"], report["model"]["answers"]
        lines.append(
            f"| {row['name']} | " + " | ".join(_pct(loc[c]) for c in COLUMNS)
            + f" | {_pct(answers['em'])} | {_pct(answers['em_by_type'].get('direction'))}"
            f" | {row['train_seconds'] / 60:.1f} min |"
        )  # fmt: skip
    report = rows[-1]["report"]
    rand, major = report["random"]["localization"], report["majority"]["answers"]
    lines.append("| random | " + " | ".join(_pct(rand[c]) for c in COLUMNS) + " | | | |")
    lines.append(
        f"| majority | | | | | {_pct(major['em'])} | "
        f"{_pct(major['em_by_type'].get('direction'))} | |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Build the data once, train and evaluate the three variants, print the table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    config = TrainConfig.from_args([*EMBEDDED_RECIPE, "--out=runs/ablation", *argv])
    start = time.perf_counter()
    run = prepare_run(config)
    data_seconds = time.perf_counter() - start
    rows = []
    for name, changes in VARIANTS:
        variant = replace(config, out=str(Path(config.out) / name.strip("+ ").replace(" ", "_")),
                          **changes)  # fmt: skip
        model = build_model(variant, run.model.tokenizer, run.cut3r.config.dec_embed_dim)
        began = time.perf_counter()
        history = Trainer(variant, model, run.train_samples).fit()
        seconds = time.perf_counter() - began
        report = evaluate(model, run.eval_episodes, variant.image_size, progress=False)
        report.pop("cases")
        final_loss = history[-1]["loss"] if history else None
        rows.append({"name": name, "changes": changes, "train_seconds": round(seconds, 1),
                     "final_loss": final_loss, "report": report})  # fmt: skip
        print(f"{name}: {json.dumps(report['model']['localization'])}", flush=True)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    markdown = table(rows)
    total = time.perf_counter() - start
    summary = {"steps": config.steps, "data_seconds": round(data_seconds, 1),
               "total_seconds": round(total, 1), "rows": rows}  # fmt: skip
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    (out / "ablation.md").write_text(markdown)
    print(markdown)
    print(f"{config.steps} steps per variant; data {data_seconds / 60:.1f} min, "
          f"total {total / 60:.1f} min")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
