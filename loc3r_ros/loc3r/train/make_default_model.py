"""Reproduce the embedded default model from scratch (no downloads), and evaluate it.

    python -m loc3r.train.make_default_model                 # CUT3R, then the VLM (one core)
    python -m loc3r.train.make_default_model --steps=200     # smoke run (any TrainConfig key)
    python -m loc3r.train.make_default_model --cut3r_dir=DIR # reuse a trained tiny CUT3R
    python -m loc3r.train.make_default_model --vlm_init=B/vlm  # continue a bundle's VLM (with
                                                             # B/cut3r unless --cut3r_dir)
    python -m loc3r.train.make_default_model --cut3r.steps=500 --vision.steps=500  # stage keys
    python -m loc3r.train.make_default_model --finish_within_s=540  # training fits the time
    python -m loc3r.train.make_default_model --depth_stage=true --depth.time_budget_s=300
                                   # train the pose source's depth network first (--depth.KEY=V)

First pretrains the tiny vision tower (loc3r.train.pretrain_vision; skipped with --vision_init) and
trains the tiny CUT3R on synthetic rooms (loc3r.train.train_cut3r; skipped with --cut3r_dir), with
--depth_stage=true the geometric pose source's depth network (loc3r.train.train_depth; or
--depth_dir=DIR, a trained one), then a tokenizer on the synthetic corpus, renders the training and
held-out episodes, trains a tiny Loc3R-VLM on the joint objective with that CUT3R frozen, evaluates
it with `loc3r eval`'s code against the random and majority baselines on held-out rooms, and writes
the bundle to loc3r/assets/default_model (bundle.json, vlm/, cut3r/) with eval.json beside it. The
embedded recipe differs from the paper's where the tiny scale asks for it: the vision tower's
pretraining is our own (SigLIP's is not available at this size), the situation losses weigh 0.3
instead of 0.075 (a model trained from scratch, not fine-tuned), and the grounding loss (attention
of <Pos>, <Ori> and the answer on the objects named; see loc3r.vlm.training_aids) stands in for the
vision-language alignment a pretrained LLaVA-Video has, and the egocentric loss (the question's
object in the agent's frame, regressed at the answer) pushes the LM towards the geometry that
direction questions need.
It trains on 3000 rooms, each question seen about once (about 5 GB of RAM): on 800 rooms, each
question seen four times, the training position loss went to zero and the positions of held-out
rooms stayed near chance.
The tiny CUT3R is wider than Cut3rConfig.tiny (decoder 96, state 32): the VLM's layout, and so
its positions, are only as good as the camera poses its tokens carry.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from loc3r.engine.models import DEFAULT_MODEL_DIR, save_bundle
from loc3r.scenes import answer_vocabulary
from loc3r.train.config import TrainConfig, module_summary
from loc3r.train.pipeline import camera_tokens_mode, evaluate, load_depth, prepare_run
from loc3r.train.pretrain_vision import VisionPretrainConfig
from loc3r.train.pretrain_vision import pretrain as pretrain_vision
from loc3r.train.train_cut3r import Cut3rTrainConfig
from loc3r.train.train_cut3r import train as train_cut3r
from loc3r.train.train_depth import DepthTrainConfig
from loc3r.train.train_depth import train as train_depth
from loc3r.train.train_vlm import Trainer, merge_lora

EMBEDDED_RECIPE = (
    "--out=runs/default_model",
    "--situation_weight=0.3",
    "--grounding_weight=0.5",
    "--steps=5000",
    "--egocentric_weight=0.5",
    "--train_episodes=3000",
    "--train_situations=4",
)
EVAL_RESERVE_S = 100.0  # what --finish_within_s keeps for evaluating and saving
EMBEDDED_CUT3R_RECIPE = (
    "--dec_embed_dim=96",
    "--dec_num_heads=4",
    "--state_size=32",
    "--steps=3000",
    "--train_episodes=600",
)


def pop_option(argv: list[str], name: str, default: str) -> str:
    """The value of this script's own --name=V (the first one), every --name= removed from argv."""
    prefix = f"--{name}="
    values = [a[len(prefix) :] for a in argv if a.startswith(prefix)]
    argv[:] = [a for a in argv if not a.startswith(prefix)]
    return values[0] if values else default


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate, save."""
    argv = list(sys.argv[1:] if argv is None else argv)
    target = Path(pop_option(argv, "target", str(DEFAULT_MODEL_DIR)))
    # --finish_within_s=N: training gets what is left of N s minus the eval
    finish_within = float(pop_option(argv, "finish_within_s", "0"))
    depth_stage = pop_option(argv, "depth_stage", "false").lower()
    if depth_stage not in ("true", "false", "1", "0"):
        raise SystemExit(f"--depth_stage takes true/false, got {depth_stage!r}")
    depth_stage = depth_stage in ("true", "1")
    # --vision.KEY=V / --cut3r.KEY=V / --depth.KEY=V go to those stages
    stage_args: dict[str, list[str]] = {"vision": [], "cut3r": [], "depth": []}
    for prefix, items in stage_args.items():
        items += ["--" + a[len(prefix) + 3 :] for a in argv if a.startswith(f"--{prefix}.")]
    argv = [a for a in argv if not a.startswith(("--vision.", "--cut3r.", "--depth."))]
    if stage_args["depth"] and not depth_stage:
        raise SystemExit(f"{stage_args['depth'][0]}: --depth.KEY=V needs --depth_stage=true")
    torch.set_num_threads(1)
    config = TrainConfig.from_args([*EMBEDDED_RECIPE, *argv], module_summary(__doc__))
    camera_tokens_mode(config)  # an impossible combination fails now, not after the stages
    if config.camera_prior == "oracle" and (
        target.resolve() == DEFAULT_MODEL_DIR.resolve() or (target / "bundle.json").exists()
    ):  # its vlm/ would replace the bundle's, which the node would then pair with its CUT3R
        raise SystemExit(
            f"--target={target} holds a bundle: an oracle run writes its vlm/ and eval.json to a "
            "directory of its own (--target=DIR)"
        )
    start = time.perf_counter()
    cut3r_report = vision_report = None
    if config.vlm_init and not config.cut3r_dir:  # the CUT3R its camera tokens came from
        beside = Path(config.vlm_init).parent / "cut3r"
        if not beside.is_dir():
            raise SystemExit(f"--vlm_init={config.vlm_init}: name its CUT3R with --cut3r_dir")
        config = replace(config, cut3r_dir=str(beside))
    if config.vlm_init and not config.depth_dir and not depth_stage:  # its tokens' depth
        beside = Path(config.vlm_init).parent / "depth"
        if beside.is_dir() and config.camera_prior == "geometric":
            config = replace(config, depth_dir=str(beside))
    depth_config = None  # the depth stage's, checked before any stage runs
    if depth_stage:
        if config.depth_dir or config.camera_prior != "geometric":
            raise SystemExit(
                "--depth_stage=true trains a depth network for --camera_prior=geometric; "
                f"this run has depth_dir={config.depth_dir!r}, camera_prior={config.camera_prior!r}"
            )
        depth_config = DepthTrainConfig.from_args([
            f"--out={Path(config.out) / 'depth_run'}", f"--frames={config.frames}",
            f"--render_size={config.render_size or config.image_size}", f"--look={config.look}",
            f"--walk={config.walk}", f"--workers={config.workers}", *stage_args["depth"],
        ])  # fmt: skip
        try:
            depth_config.check()  # a run that cannot work fails now, before any stage
        except ValueError as exc:
            raise SystemExit(f"depth stage: {exc}") from None
    elif config.depth_dir:  # a trained one: loaded now (as the run will), not after the stages
        try:
            load_depth(config)
        except ValueError as exc:
            raise SystemExit(f"--depth_dir: {exc}") from None
    cut3r_config = None  # the CUT3R stage's, checked before any stage runs
    if not config.cut3r_dir:
        cut3r_config = Cut3rTrainConfig.from_args([
            f"--out={Path(config.out) / 'cut3r_run'}", f"--frames={config.frames}",
            f"--render_size={config.render_size or config.image_size}",
            f"--cut3r_size={config.cut3r_image_size}", f"--look={config.look}",
            f"--walk={config.walk}", f"--workers={config.workers}",
            *EMBEDDED_CUT3R_RECIPE, *stage_args["cut3r"],
        ])  # fmt: skip
        if cut3r_config.cut3r_size != config.cut3r_image_size:  # the bundle runs it at that size
            raise SystemExit(
                f"--cut3r.cut3r_size={cut3r_config.cut3r_size}: the VLM's camera tokens come "
                f"from CUT3R at --cut3r_image_size={config.cut3r_image_size}; set that instead"
            )
    if not config.vision_init and not config.vlm_init:  # a continued model has its tower
        vision_config = VisionPretrainConfig.from_args([
            f"--out={Path(config.out) / 'vision_run'}", f"--frames={config.frames}",
            f"--image_size={config.image_size}", f"--render_size={config.render_size}",
            f"--vision_hidden={config.vision_hidden}",
            f"--vision_layers={config.vision_layers}", f"--look={config.look}",
            f"--walk={config.walk}", f"--workers={config.workers}", *stage_args["vision"],
        ])  # fmt: skip
        vision_report = pretrain_vision(vision_config)
        config = replace(
            config, vision_init=str(Path(vision_config.out) / "vision_tower.safetensors")
        )
    if cut3r_config is not None:
        cut3r_report = train_cut3r(cut3r_config)
        config = replace(config, cut3r_dir=str(Path(cut3r_config.out) / "cut3r"))
    depth_report = None
    if depth_config is not None:
        try:
            depth_report = train_depth(depth_config)
        except FloatingPointError as exc:  # diverged: no bundle claims a broken network
            raise SystemExit(f"depth stage: {exc}") from None
        config = replace(config, depth_dir=str(Path(depth_config.out) / "depth"))
    stages = {"before_data": round(time.perf_counter() - start, 1)}
    run = prepare_run(config)
    stages["data"] = round(time.perf_counter() - start - sum(stages.values()), 1)
    if finish_within > 0:  # leave EVAL_RESERVE_S for the evaluation and the bundle
        left = finish_within - (time.perf_counter() - start) - EVAL_RESERVE_S
        budget = max(left, 10.0) if config.time_budget_s <= 0 else min(config.time_budget_s, left)
        config = replace(config, time_budget_s=max(budget, 10.0))
    trainer = Trainer(config, run.model, run.train_samples)
    history = trainer.fit()
    stages["train"] = round(time.perf_counter() - start - sum(stages.values()), 1)
    vocabulary = None if config.data_root else sorted(answer_vocabulary())
    run.model.set_answer_vocabulary(vocabulary)  # evaluated as the bundle answers
    report = evaluate(run.model, run.eval_episodes, config.image_size)
    stages["eval"] = round(time.perf_counter() - start - sum(stages.values()), 1)
    report.pop("cases")
    report["train"] = {
        "steps": config.steps,
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "rooms": len(run.train_episodes),
        "samples": len(run.train_samples),
        "stopped_early": trainer.stopped_early,
        "paced": trainer.paced,
        "steps_done": trainer.step,
        "device": str(trainer.device),
        "seconds": round(time.perf_counter() - start, 1),
        "stage_seconds": stages,
        "config": asdict(config),
    }
    if cut3r_report is not None:
        report["cut3r"] = {k: v for k, v in cut3r_report.items() if k != "config"}
    if depth_report is not None:
        report["depth"] = {k: v for k, v in depth_report.items() if k != "config"}
    if vision_report is not None:
        report["vision"] = {k: v for k, v in vision_report.items() if k != "config"}
    continued = ", continuing a saved model" if config.vlm_init else ""
    description = f"embedded tiny Loc3R-VLM ({trainer.step} steps on synthetic rooms{continued})"
    if config.camera_prior != "oracle":  # the node has no true poses: an oracle run gets no bundle
        save_bundle(
            target,
            run.model,
            run.cut3r,
            cut3r_image_size=config.cut3r_image_size,
            num_query_frames=config.frames,
            pose_source="geometric",  # the tiny CUT3R has not learned geometry; see perception
            camera_tokens=camera_tokens_mode(config),
            description=description,
            answer_vocabulary=vocabulary,
            vlm_state=merge_lora(trainer.final_state_dict(), config),  # plain weights
            depth=run.depth,
            training_scenes=None if config.data_root else {
                "look": config.look, "walk": config.walk,
                "render_size": config.render_size or config.image_size,
                **({"stream_video": True} if config.stream_video else {}),
            },  # what `loc3r eval` and `loc3r scene --as-trained` render for it
        )  # fmt: skip
    else:  # its VLM alone: `python -m loc3r.eval.bounds --vlm=<target>/vlm --camera-prior oracle`
        run.model.save_pretrained(target / "vlm", merge_lora(trainer.final_state_dict(), config))
    target.mkdir(parents=True, exist_ok=True)
    (target / "eval.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
