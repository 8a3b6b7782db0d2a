"""Training configuration: TrainConfig, config classes from YAML/CLI, the learning-rate schedule."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TypeVar

import torch
import yaml

ConfigT = TypeVar("ConfigT")
# TrainConfig keys removed on 2026-12-04 (docs/experiments.md has what they measured; their code
# is in git commit 7295583)
REMOVED_KEYS = ("grounding_layer", "position_readout", "answer_grounding", "grounding_views")


def _removed_note(cls: type, keys) -> str:
    """What to say about unknown keys that are removed TrainConfig keys ("" for none)."""
    removed = sorted(set(keys) & set(REMOVED_KEYS)) if cls is TrainConfig else []
    return f"; {removed} removed on 2026-12-04 (git commit 7295583 has them)" if removed else ""


def module_summary(doc: str | None) -> str:
    """The first line of a module docstring ("" without one)."""
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


@dataclass
class TrainConfig:
    """Every knob of a training run (the YAML/CLI keys)."""

    out: str = "runs/loc3r_tiny"
    seed: int = 0
    steps: int = 2000
    epochs: float = 0.0  # > 0: steps = ceil(epochs * samples / batch_size) (replaces steps)
    batch_size: int = 16  # global batch (samples per optimizer step, all processes together)
    micro_batch: int = 8  # samples per forward pass and process
    # > 1: a batch takes this many questions of each room it draws (of different situations
    # first), and they share one pass over the room's video (loc3r.vlm.packing); a multiple of
    # it must make micro_batch
    questions_per_scene: int = 1
    train_threads: int = 0  # > 0: CPU threads of the training steps (0: as the process has)
    lr: float = 1e-3  # peak learning rate (the paper: 1e-5 for the 7B model)
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    save_every: int = 500
    log_every: int = 10
    # data
    train_episodes: int = 400
    # training rooms are the seeds train_seed_offset .. + train_episodes (none of them a held-out
    # room's): an offset gives a continued model (vlm_init) rooms it has not seen
    train_seed_offset: int = 0
    eval_episodes: int = 40
    eval_seed_offset: int = 1_000_000  # held-out episodes use seeds from here
    frames: int = 8
    image_size: int = 112
    train_situations: int = 4  # situations per training room (held-out rooms always have 4)
    workers: int = 1  # processes that render episodes (a GPU machine's cores)
    time_budget_s: float = 0.0  # > 0: training stops (and saves) after this long
    # > 0: training rooms render for at most this long (the first of the train_episodes seeds
    # that finish in time; at least one): as many rooms as the cores give, for a GPU build
    render_within_s: float = 0.0
    look: str = "flat"  # rooms: "flat" colours, "textured" or "furnished" (loc3r.scenes.episode)
    walk: str = "sweep"  # camera walks: "sweep" (one turn left), "scan" (both ways, smooth) or
    # "room_scan" (a scan that sees most of the room: use 16-32 frames; loc3r.scenes.episode)
    render_size: int = 0  # rendered frame size (the pose source matches features at it);
    # frames are stored at image_size; 0 = image_size
    stream_video: bool = False  # CUT3R and the pose source see every step of a room scan's
    # video, the VLM its sampled frames (as the node's pose source sees every keyframe)
    # model (tiny): see loc3r.vlm.tiny
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 384
    vision_hidden: int = 64
    vision_layers: int = 2
    # 2: each frame's patch grid pooled 2x2 as LLaVA-Video does (4x4 cells at 112 px); 1: every
    # 14 px patch is a video token (8x8 at 112 px: small objects get cells of their own)
    pool_stride: int = 2
    # how the cells pool their patches: "bilinear" (LLaVA-Video's; at stride 2 the mean of
    # each 2x2), "average" (the mean of each stride x stride block, at any stride) or "max"
    pool_mode: str = "bilinear"
    vocab_size: int = 600
    # objective / ablations
    use_camera_tokens: bool = True
    # SigLIP is frozen in the paper because it is pretrained. The tiny tower is pretrained too
    # (loc3r.train.pretrain_vision, vision_init) and frozen by default; True trains it with the
    # VLM's losses (a continued run can start it: --vlm_init with --train_vision_tower=True)
    train_vision_tower: bool = False
    vision_init: str = ""  # tiny tower weights from loc3r.train.pretrain_vision (safetensors)
    layout_weight: float = 0.05  # 0 disables the layout loss (and head)
    situation_weight: float = 0.075
    ori_weight: float = 3.5
    # training aids (not in the paper; see loc3r.vlm.training_aids), synthetic rooms only (their
    # records name the objects), 0 = off: attention supervision of <Pos>, <Ori> and the answer
    grounding_weight: float = 0.0
    # the question's object in the agent's frame, regressed at the answer's first token
    egocentric_weight: float = 0.0
    cut3r_dir: str = ""  # our CUT3R directory or an official .pth; "" = a seeded random tiny one
    cut3r_image_size: int = 64  # CUT3R input long edge (512 for the official DPT checkpoint)
    # a monocular depth network (loc3r.train.train_depth's <out>/depth) whose depth the geometric
    # pose source takes instead of CUT3R's; "" = CUT3R's (a continued model: the one beside it)
    depth_dir: str = ""
    # "oracle": camera tokens state the true poses instead of CUT3R's (synthetic rooms only;
    # geometry tokens also get each cell's true point: synthetic_data.oracle_geometry_tokens):
    # what the VLM reaches with a perfect camera prior, an upper bound, never a bundle;
    # "geometric": they state the geometric pose source's poses (loc3r.engine.perception), and
    # the bundle's engine does the same
    camera_prior: str = "cut3r"
    # input aid (ours, geometric prior only): the camera tokens also state each patch's 3D point
    # (CUT3R's pointmap posed by the geometric source) and the VLM adds its embedding to the
    # patch (loc3r.vlm.point_embedding)
    point_embedding: bool = False
    # read-out aid (ours, needs the layout head): <Pos> also points at patches and reads their
    # layout, mixed with f_pos's position by a learned gate (loc3r.vlm.position_pointer)
    position_pointer: bool = False
    # read-out aid (ours, needs the layout head): the token that predicts the answer's first word
    # is told where the object it attends to is from the agent's pose (its ahead / left and
    # distance; loc3r.vlm.egocentric_readout)
    egocentric_readout: bool = False
    # with it: the read-out also picks an object by its place (its attention weighs ahead, left
    # and distance) and hands over the picked patches' states, for "what is closest ..."
    readout_objects: bool = False
    # with it and the position pointer: the read-out's attention also weighs the anchor's patches
    # (the position pointer's attention), to leave out the object the agent is at ("nearest")
    readout_anchor: bool = False
    # read-out aid (ours, needs the layout head): <Ori> also points at patches and reads the
    # bearing to them from the position, mixed with f_ori's heading by a learned gate
    # (loc3r.vlm.heading_pointer)
    heading_pointer: bool = False
    # the pointers' attention grounded on their objects, the anchor for <Pos>'s and the faced
    # object for <Ori>'s, under grounding_weight (Loc3rVLMConfig.ground_pointers)
    ground_pointers: bool = False
    tokenizer_dir: str = ""  # "" = train one on the synthetic corpus into <out>/tokenizer
    # a saved tiny Loc3R-VLM (a bundle's vlm/ directory) to continue training from: its weights
    # and its tokenizer replace the seeded ones (the run's sizes and heads, its loss weights)
    vlm_init: str = ""
    # real models and data (the paper's recipe: see config/train_paper.yaml)
    base_model_dir: str = ""  # LLaVA-Video checkpoint (lmms-lab/LLaVA-Video-7B-Qwen2); "" = tiny
    vision_tower_dir: str = ""  # its SigLIP (google/siglip-so400m-patch14-384)
    data_root: str = ""  # a dataset in our format (loc3r.datasets); "" = synthetic rooms
    train_split: str = "train"
    eval_split: str = "val"
    max_scenes: int = 0  # 0 = all scenes of a split
    lora_rank: int = 0  # > 0: LoRA adapters on the LLM's attention/MLP (peft), LLM frozen
    lora_alpha: float = 16.0
    parallel: str = "ddp"  # ddp | fsdp (shards the model across GPUs; for the 7B model)

    @classmethod
    def from_args(
        cls, argv: list[str] | None = None, description: str | None = None
    ) -> TrainConfig:
        """Defaults, then --config YAML, then --key=value overrides (type-checked).

        `description` is the --help line of the command parsing it (see config_from_args).
        """
        return config_from_args(cls, argv, description)


def config_from_args(
    cls: type[ConfigT], argv: list[str] | None = None, description: str | None = None
) -> ConfigT:
    """A config dataclass from defaults, then --config YAML, then --key=value (type-checked).

    --help prints `description`; by default the first line of the docstring of the module that
    defines `cls` (a command's own config class sits in the command's module).
    """
    if description is None:
        description = module_summary(sys.modules[cls.__module__].__doc__)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help=f"YAML file with {cls.__name__} keys")
    known, rest = parser.parse_known_args(argv)
    values = asdict(cls())
    if known.config:
        loaded = yaml.safe_load(Path(known.config).read_text()) or {}
        unknown = set(loaded) - set(values)
        if unknown:
            raise SystemExit(
                f"unknown keys in {known.config}: {sorted(unknown)}{_removed_note(cls, unknown)}"
            )
        values.update(loaded)
    types = {f.name: type(values[f.name]) for f in fields(cls)}
    for item in rest:
        if not item.startswith("--") or "=" not in item:
            raise SystemExit(f"expected --key=value, got {item!r}")
        key, text = item[2:].split("=", 1)
        key = key.replace("-", "_")
        if key not in types:
            raise SystemExit(f"unknown key {key!r} (see {cls.__name__}){_removed_note(cls, [key])}")
        kind = types[key]
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise SystemExit(f"--{key} takes true/false, got {text!r}")
            values[key] = text.lower() in ("true", "1")
        else:
            try:
                values[key] = kind(text)
            except ValueError:
                raise SystemExit(f"--{key} takes {kind.__name__}, got {text!r}") from None
    return cls(**values)


PACE_FROM = 5  # steps before this one are not timed (CUDA, allocator and cache warm-up)
PACE_STEPS = 20  # with a time budget, the steps (and LR schedule) are fitted after these


class Pacer:
    """Fits a run's steps to a time budget.

    The pace of steps PACE_FROM..PACE_STEPS, then 95 % of the budget that is left at that pace
    (the LR schedule follows the fitted steps).
    """

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.budget_s, self.clock = budget_s, clock
        self.start = clock()
        self._paced_from: float | None = None
        self.note = ""  # how the steps were fitted ("" when they were not)

    def spent(self) -> bool:
        """The budget (if any) is used up."""
        return self.budget_s > 0 and self.clock() - self.start > self.budget_s

    def fitted(self, done: int, planned: int) -> int:
        """Called after each step (`done` steps so far in this run): the steps to plan for."""
        if self.budget_s <= 0 or done not in (PACE_FROM, PACE_STEPS):
            return planned
        now = self.clock()
        if done == PACE_FROM:
            self._paced_from = now
            return planned
        paced_from = self.start if self._paced_from is None else self._paced_from
        per_step = (now - paced_from) / (PACE_STEPS - PACE_FROM)
        left = 0.95 * self.budget_s - (now - self.start)
        steps = min(planned, PACE_STEPS + max(1, int(left / max(per_step, 1e-9))))
        if steps < planned:
            self.note = f"{per_step * 1000:.0f} ms/step: {steps} steps"
        return steps


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up then cosine decay to min_lr_ratio * lr (a pure function of the step)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def resolve_training_device(name: str) -> torch.device:
    """The device of `name`: auto (CUDA when there is one), cpu or cuda (an error without it)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return torch.device(name)
