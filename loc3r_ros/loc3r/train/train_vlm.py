"""Train Loc3R-VLM on the joint objective (answers, layout, position, orientation).

One script for every scale (nanoGPT's recipe):
    python -m loc3r.train.train_vlm --out runs/tiny                         # one CPU process
    torchrun --nproc_per_node 2 -m loc3r.train.train_vlm --out runs/tiny    # DDP (gloo on CPU)
    python -m loc3r.train.train_vlm --config configs/paper.yaml             # the paper's recipe
Configuration: TrainConfig defaults, then a YAML file (--config), then --key=value overrides
(type-checked; unknown keys are errors). CUT3R and SigLIP are frozen; CUT3R camera tokens are
computed once per episode and cached. AdamW, linear warm-up then cosine decay, gradient
accumulation, gradient clipping, bf16 autocast on CUDA, checkpoint + exact resume, JSON-lines
metrics (and TensorBoard when installed), tqdm progress.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from loc3r.vlm import Loc3rVLM, Loc3rVLMConfig, LossWeights, TrainSample


@dataclass
class TrainConfig:
    """Every knob of a training run (the YAML/CLI keys)."""

    out: str = "runs/loc3r_tiny"
    seed: int = 0
    steps: int = 2000
    batch_size: int = 16  # global batch (samples per optimizer step, all processes together)
    micro_batch: int = 8  # samples per forward pass and process
    lr: float = 1e-3  # peak learning rate (the paper: 1e-5 for the 7B model)
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    save_every: int = 500
    log_every: int = 10
    # data
    train_episodes: int = 400
    eval_episodes: int = 40
    eval_seed_offset: int = 1_000_000  # held-out episodes use seeds from here
    frames: int = 8
    image_size: int = 112
    # model (tiny): see loc3r.vlm.tiny
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 384
    vision_hidden: int = 64
    vision_layers: int = 2
    vocab_size: int = 600
    # objective / ablations
    use_camera_tokens: bool = True
    # SigLIP is frozen in the paper because it is pretrained; a tiny tower built from scratch
    # has learned nothing to keep, so the embedded model trains it (true for it, false for 7B)
    train_vision_tower: bool = False
    layout_weight: float = 0.05  # 0 disables the layout loss (and head)
    situation_weight: float = 0.075
    ori_weight: float = 3.5
    cut3r_dir: str = ""  # our CUT3R directory; "" = a seeded random tiny CUT3R
    tokenizer_dir: str = ""  # "" = train one on the synthetic corpus into <out>/tokenizer

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> TrainConfig:
        """Defaults, then --config YAML, then --key=value overrides (type-checked)."""
        return config_from_args(cls, argv)


def config_from_args(cls, argv: list[str] | None = None):
    """A config dataclass from defaults, then --config YAML, then --key=value (type-checked)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file with TrainConfig keys")
    known, rest = parser.parse_known_args(argv)
    values = asdict(cls())
    if known.config:
        loaded = yaml.safe_load(Path(known.config).read_text()) or {}
        unknown = set(loaded) - set(values)
        if unknown:
            raise SystemExit(f"unknown keys in {known.config}: {sorted(unknown)}")
        values.update(loaded)
    types = {f.name: type(values[f.name]) for f in fields(cls)}
    for item in rest:
        if not item.startswith("--") or "=" not in item:
            raise SystemExit(f"expected --key=value, got {item!r}")
        key, text = item[2:].split("=", 1)
        key = key.replace("-", "_")
        if key not in types:
            raise SystemExit(f"unknown key {key!r} (see TrainConfig)")
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


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up then cosine decay to min_lr_ratio * lr (a pure function of the step)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def batch_indices(step: int, num_samples: int, batch: int, seed: int) -> list[int]:
    """The global batch of a step: a seeded permutation per epoch (resume gives the same data)."""
    per_epoch = num_samples // batch
    epoch, offset = divmod(step, per_epoch)
    order = np.random.default_rng(seed + epoch).permutation(num_samples)
    return order[offset * batch : (offset + 1) * batch].tolist()


def build_model(config: TrainConfig, tokenizer, cam_dim: int) -> Loc3rVLM:
    """A tiny Loc3R-VLM for `tokenizer`, seeded."""
    from loc3r.vlm.tiny import build_tiny_loc3r

    torch.manual_seed(config.seed)
    vlm_config = Loc3rVLMConfig(
        cam_token_dim=cam_dim,
        use_camera_tokens=config.use_camera_tokens,
        enable_layout_head=config.layout_weight > 0,
        max_new_tokens=8,
        weights=LossWeights(
            bev=config.layout_weight, situation=config.situation_weight, ori=config.ori_weight
        ),
    )
    model = build_tiny_loc3r(
        tokenizer,
        vlm_config,
        hidden=config.hidden,
        layers=config.layers,
        heads=config.heads,
        kv_heads=config.kv_heads,
        intermediate=config.intermediate,
        image_size=config.image_size,
        vision_hidden=config.vision_hidden,
        vision_layers=config.vision_layers,
    )
    model.base.vision_tower.requires_grad_(config.train_vision_tower)
    return model


class Trainer:
    """Runs the optimisation of one TrainConfig (single process or DDP)."""

    def __init__(self, config: TrainConfig, model: Loc3rVLM, samples: list[TrainSample]) -> None:
        self.config = config
        self.ddp = "RANK" in os.environ
        if self.ddp and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
        self.rank = dist.get_rank() if self.ddp else 0
        self.world = dist.get_world_size() if self.ddp else 1
        if config.batch_size % (config.micro_batch * self.world):
            raise ValueError("batch_size must be a multiple of micro_batch * world size")
        self.accumulation = config.batch_size // (config.micro_batch * self.world)
        self.device = (
            torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
        self.model = model.to(self.device)
        self.samples = samples
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in self.trainable if p.dim() >= 2]
        no_decay = [p for p in self.trainable if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=(0.9, 0.95),
        )  # fmt: skip
        self.wrapped = (
            torch.nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=True)
            if self.ddp
            else self.model
        )
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        self.step = 0
        self.out = Path(config.out)

    @property
    def is_main(self) -> bool:
        """Only rank 0 logs and saves."""
        return self.rank == 0

    def _rank_slice(self, indices: list[int]) -> list[int]:
        per_rank = len(indices) // self.world
        return indices[self.rank * per_rank : (self.rank + 1) * per_rank]

    def train_step(self) -> dict[str, float]:
        """One optimizer step over the global batch; returns the mean loss parts."""
        config = self.config
        indices = self._rank_slice(
            batch_indices(self.step, len(self.samples), config.batch_size, config.seed)
        )
        lr = lr_at(self.step, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in range(self.accumulation):
            chunk = indices[micro * config.micro_batch : (micro + 1) * config.micro_batch]
            batch = [self.samples[i] for i in chunk]
            last = micro == self.accumulation - 1
            sync = contextlib.nullcontext() if (last or not self.ddp) else self.wrapped.no_sync()
            with sync, self.autocast:
                parts = self.wrapped(batch)
                (parts["loss"] / self.accumulation).backward()
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach()) / self.accumulation
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, config.grad_clip)
        self.optimizer.step()
        self.step += 1
        if self.ddp:  # report the global mean
            packed = torch.tensor(list(totals.values()))
            dist.all_reduce(packed)
            totals = dict(zip(totals, (packed / self.world).tolist(), strict=True))
        return {**totals, "lr": lr, "grad_norm": float(grad_norm)}

    def save(self, name: str = "checkpoint.pt") -> Path | None:
        """Model (unwrapped), optimizer and step; rank 0 only."""
        if not self.is_main:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / name
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "config": asdict(self.config),
        }
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        return path

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint written by save (weights_only: tensors and plain data)."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])

    def fit(self, progress: bool = True) -> list[dict]:
        """Train until config.steps; logs JSON lines in <out>/metrics.jsonl."""
        history = []
        log = None
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            log = open(self.out / "metrics.jsonl", "a")  # noqa: SIM115
        bar = tqdm(
            total=self.config.steps, initial=self.step, disable=not (progress and self.is_main)
        )
        start = time.perf_counter()
        try:
            self.model.train()
            while self.step < self.config.steps:
                metrics = self.train_step()
                metrics["step"] = self.step
                metrics["elapsed_s"] = round(time.perf_counter() - start, 2)
                history.append(metrics)
                if log and (self.step % self.config.log_every == 0 or self.step == 1):
                    log.write(json.dumps(metrics) + "\n")
                    log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}")
                if self.step % self.config.save_every == 0:
                    self.save()
        finally:
            bar.close()
            if log:
                log.close()
        self.model.eval()
        return history


def main(argv: list[str] | None = None) -> int:
    """Build data and model, train, save the final model."""
    from loc3r.train.pipeline import prepare_run

    config = TrainConfig.from_args(argv)
    run = prepare_run(config)
    trainer = Trainer(config, run.model, run.train_samples)
    checkpoint = Path(config.out) / "checkpoint.pt"
    if checkpoint.exists():
        trainer.resume(checkpoint)
    trainer.fit()
    trainer.save()
    if trainer.is_main:
        trainer.model.save_pretrained(Path(config.out) / "final")
    if trainer.ddp:
        dist.barrier()  # rank 0 has written everything before anyone leaves
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
