"""The paper's localization ablation on synthetic rooms, in one command.

    python -m loc3r.train.ablation [--steps=N] [--jobs=3] [--out=runs/ablation] \
        --cut3r_dir=runs/default_model/cut3r_run/cut3r \
        --vision_init=runs/default_model/vision_run/vision_tower.safetensors

The pretrained parts come from make_default_model's run (without them CUT3R and the vision
tower are random, and the camera prior carries no pose).

Three tiny Loc3R-VLMs are trained on the same data, steps and seed, and evaluated by the same
`loc3r eval` code on the same held-out rooms: *situation only* (no layout loss, no camera
tokens), *+ layout* (the BEV layout loss) and *+ camera prior* (layout loss and CUT3R camera
tokens: the full method), with the embedded model's recipe. The position pointer (ours) is off in
all three, and without camera tokens so is the point embedding (it reads their points). Any
TrainConfig key can be given; the data (episodes, CUT3R camera tokens, tokenizer) is built once.
Writes ``ablation.json`` and ``ablation.md`` to ``--out`` and prints the table with the random
and majority baselines and the time each run took.

``--jobs=N`` (CPU only) trains the variants in N forked processes of one thread each, which
share the data built once; the numbers are those of ``--jobs=1`` (same seeds, same order of
samples). On two cores ``--jobs=3`` is the fastest: three runs at two thirds of the speed end
together, where two jobs leave one core idle for the third run.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from loc3r.train.config import TrainConfig, module_summary
from loc3r.train.make_default_model import EMBEDDED_RECIPE
from loc3r.train.pipeline import Run, build_model, evaluate, prepare_run
from loc3r.train.train_vlm import Trainer

# Without the camera prior the patches are not told their 3D points either (the point embedding
# reads them from the camera tokens), and the position and heading pointers, which read the
# layout, are off in all three: the ablation is the paper's, on the recipe's data and sizes.
NO_POINTERS = {"position_pointer": False, "heading_pointer": False, "readout_anchor": False}
VARIANTS = (
    ("situation only", {"use_camera_tokens": False, "layout_weight": 0.0,
                        "point_embedding": False, **NO_POINTERS}),
    ("+ layout", {"use_camera_tokens": False, "point_embedding": False, **NO_POINTERS}),
    ("+ camera prior", dict(NO_POINTERS)),
)  # fmt: skip
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


_RUN: Run | None = None  # the data the forked workers share (set before they start)
_CONFIG: TrainConfig | None = None


def train_variant(index: int, progress: bool = True) -> dict:
    """Train and evaluate VARIANTS[index] on the prepared run; its table row."""
    assert _RUN is not None and _CONFIG is not None, "prepare the run first"
    torch.set_num_threads(1)
    name, changes = VARIANTS[index]
    variant = replace(_CONFIG, out=str(Path(_CONFIG.out) / name.strip("+ ").replace(" ", "_")),
                      **changes)  # fmt: skip
    model = build_model(variant, _RUN.model.tokenizer, _RUN.model.config.cam_token_dim)
    began = time.perf_counter()
    history = Trainer(variant, model, _RUN.train_samples).fit(progress=progress)
    seconds = time.perf_counter() - began
    report = evaluate(model, _RUN.eval_episodes, variant.image_size, progress=False)
    report.pop("cases")
    final_loss = history[-1]["loss"] if history else None
    print(f"{name}: {json.dumps(report['model']['localization'])}", flush=True)
    return {"name": name, "changes": changes, "train_seconds": round(seconds, 1),
            "final_loss": final_loss, "report": report}  # fmt: skip


def train_variants(jobs: int) -> list[dict]:
    """Every variant's row, in VARIANTS order: one after the other, or in forked workers."""
    if jobs == 1:
        return [train_variant(i) for i in range(len(VARIANTS))]
    # fork shares the prepared data with the workers without pickling it (Linux, CPU)
    context = multiprocessing.get_context("fork")
    with context.Pool(min(jobs, len(VARIANTS))) as pool:
        return pool.starmap(train_variant, [(i, False) for i in range(len(VARIANTS))])


def main(argv: list[str] | None = None) -> int:
    """Build the data once, train and evaluate the three variants, print the table."""
    global _RUN, _CONFIG
    argv = list(sys.argv[1:] if argv is None else argv)
    jobs_args = [a for a in argv if a.startswith("--jobs=")]
    argv = [a for a in argv if not a.startswith("--jobs=")]
    try:
        jobs = int(jobs_args[-1].split("=", 1)[1]) if jobs_args else 1
    except ValueError:
        raise SystemExit(f"--jobs takes a whole number, got {jobs_args[-1]!r}") from None
    if jobs < 1:
        raise SystemExit("--jobs must be at least 1")
    if jobs > 1 and (
        torch.cuda.is_available() or "fork" not in multiprocessing.get_all_start_methods()
    ):
        raise SystemExit("--jobs > 1 forks CPU workers (Linux, no GPU); use --jobs=1 here")
    torch.set_num_threads(1)
    config = TrainConfig.from_args(
        [*EMBEDDED_RECIPE, "--out=runs/ablation", *argv], module_summary(__doc__)
    )
    start = time.perf_counter()
    _RUN, _CONFIG = prepare_run(config), config
    data_seconds = time.perf_counter() - start
    try:
        rows = train_variants(jobs)
    finally:
        _RUN = _CONFIG = None
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    markdown = table(rows)
    total = time.perf_counter() - start
    summary = {"steps": config.steps, "jobs": jobs, "data_seconds": round(data_seconds, 1),
               "total_seconds": round(total, 1), "rows": rows}  # fmt: skip
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    (out / "ablation.md").write_text(markdown)
    print(markdown)
    print(f"{config.steps} steps per variant, {jobs} job(s); data {data_seconds / 60:.1f} min, "
          f"total {total / 60:.1f} min")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
