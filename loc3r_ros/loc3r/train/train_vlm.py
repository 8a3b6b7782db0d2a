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

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from loc3r.train.batches import SceneBatches, batch_indices
from loc3r.train.config import Pacer, TrainConfig, lr_at, module_summary
from loc3r.train.pipeline import prepare_run
from loc3r.vlm import Loc3rVLM, TrainSample
from loc3r.vlm.losses import LOSS_PARTS


def mean_parts(
    sums: dict[str, float], counts: dict[str, int], device: torch.device, ddp: bool
) -> dict[str, float]:
    """Each loss part's mean over the micro-batches (under DDP: of every rank) that reported it.

    A micro-batch without a situated sample has no pos, ori or pointer part, so ranks can hold
    different parts: each rank packs (sum, count) of every name in LOSS_PARTS, in that order,
    and one all-reduce (on `device`: NCCL reduces CUDA tensors only) adds them up.
    """
    unknown = set(sums) - set(LOSS_PARTS)
    if unknown:
        raise ValueError(f"loss parts not in LOSS_PARTS: {sorted(unknown)}")
    packed = torch.tensor(
        [[sums.get(name, 0.0), counts.get(name, 0)] for name in LOSS_PARTS],
        dtype=torch.float64,
        device=device,
    )
    if ddp:
        dist.all_reduce(packed)
    return {
        name: total / count
        for name, (total, count) in zip(LOSS_PARTS, packed.tolist(), strict=True)
        if count > 0
    }


def shard_model(model: Loc3rVLM, device: torch.device) -> Loc3rVLM:
    """FSDP (fully_shard) for models that do not fit one GPU.

    Each LLM decoder layer is its own unit (gathered only while it runs); the rest (vision
    tower, embeddings, projector, heads: called in pieces, not through one forward) is the
    root unit, gathered for the whole step.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in model.base.language_model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def merge_lora(state: dict, config: TrainConfig) -> dict:
    """Weights with LoRA adapters folded in (W + B A * alpha / r), in the plain model's keys."""
    if config.lora_rank <= 0:
        return state
    scale = config.lora_alpha / config.lora_rank
    merged = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            prefix, name = key.split(".base_layer.")
            if name == "weight" and f"{prefix}.lora_A.default.weight" in state:
                lora_a = state[f"{prefix}.lora_A.default.weight"].float()
                lora_b = state[f"{prefix}.lora_B.default.weight"].float()
                value = (value.float() + scale * lora_b @ lora_a).to(value.dtype)
            key = f"{prefix}.{name}"
        merged[key] = value
    return merged


class Trainer:
    """Runs the optimisation of one TrainConfig (single process, DDP or FSDP under torchrun)."""

    def __init__(self, config: TrainConfig, model: Loc3rVLM, samples: list[TrainSample]) -> None:
        self.config = config
        self.ddp = "RANK" in os.environ
        if self.ddp and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            # a rank that dies or hangs turns into an error on the others after this long
            minutes = float(os.environ.get("LOC3R_DIST_TIMEOUT_MIN", "30"))
            dist.init_process_group(backend, timeout=timedelta(minutes=minutes))
        self.rank = dist.get_rank() if self.ddp else 0
        self.world = dist.get_world_size() if self.ddp else 1
        if config.batch_size % (config.micro_batch * self.world):
            raise ValueError("batch_size must be a multiple of micro_batch * world size")
        if config.questions_per_scene < 1 or config.micro_batch % config.questions_per_scene:
            raise ValueError("questions_per_scene must be >= 1 and divide micro_batch")
        self.scene_batches = (
            SceneBatches(samples, config.batch_size, config.questions_per_scene, config.seed)
            if config.questions_per_scene > 1
            else None
        )
        self.accumulation = config.batch_size // (config.micro_batch * self.world)
        self.device = (
            torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
        self.model = model.to(self.device)
        self.samples = samples
        if config.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"parallel must be ddp or fsdp, got {config.parallel!r}")
        self.fsdp = self.ddp and config.parallel == "fsdp"
        if self.fsdp:
            self.wrapped = shard_model(self.model, self.device)
        elif self.ddp:
            self.wrapped = torch.nn.parallel.DistributedDataParallel(
                self.model, find_unused_parameters=True
            )
        else:
            self.wrapped = self.model
        # the optimizer is built after sharding (FSDP replaces the parameters)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in self.trainable if p.dim() >= 2]
        no_decay = [p for p in self.trainable if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=(0.9, 0.95),
        )  # fmt: skip
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        self.step = 0
        self.stopped_early = ""  # why fit stopped before config.steps
        self.paced = ""  # how a time budget set the number of steps (and so the LR schedule)
        if self.ddp and config.time_budget_s > 0:  # ranks would stop at different steps
            raise ValueError("time_budget_s needs a single process (not DDP/FSDP)")
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
        if self.scene_batches is not None:
            drawn = self.scene_batches(self.step)
        else:
            drawn = batch_indices(self.step, len(self.samples), config.batch_size, config.seed)
        indices = self._rank_slice(drawn)
        lr = lr_at(self.step, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for micro in range(self.accumulation):
            chunk = indices[micro * config.micro_batch : (micro + 1) * config.micro_batch]
            batch = [self.samples[i] for i in chunk]
            last = micro == self.accumulation - 1
            if self.fsdp:
                self.wrapped.set_requires_gradient_sync(last)
                sync = contextlib.nullcontext()
            else:
                sync = (
                    contextlib.nullcontext() if (last or not self.ddp) else self.wrapped.no_sync()
                )
            with sync, self.autocast:
                parts = self.wrapped(batch)
                (parts["loss"] / self.accumulation).backward()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
                counts[key] = counts.get(key, 0) + 1
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, config.grad_clip)
        self.optimizer.step()
        self.step += 1
        totals = mean_parts(sums, counts, self.device, self.ddp)  # under DDP the global mean
        return {**totals, "lr": lr, "grad_norm": float(grad_norm)}

    def _states(self) -> tuple[dict, dict]:
        """Full (unsharded) model and optimizer state dicts (collective under FSDP)."""
        if not self.fsdp:
            return self.model.state_dict(), self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(self.model, self.optimizer, options=options)

    def final_state_dict(self) -> dict:
        """The model's full weights (gathered from every rank under FSDP)."""
        return self._states()[0] if self.fsdp else self.model.state_dict()

    def save(self, name: str = "checkpoint.pt") -> Path | None:
        """Model (unwrapped, full), optimizer and step; written by rank 0 only."""
        model_state, optimizer_state = self._states()  # every rank takes part under FSDP
        if not self.is_main:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / name
        state = {
            "model": model_state,
            "optimizer": optimizer_state,
            "step": self.step,
            "config": asdict(self.config),
        }
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        return path

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint written by save (weights_only: tensors and plain data)."""
        state = torch.load(
            path, map_location="cpu" if self.fsdp else self.device, weights_only=True
        )
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            set_state_dict(
                self.model, self.optimizer, model_state_dict=state["model"],
                optim_state_dict=state["optimizer"],
                options=StateDictOptions(full_state_dict=True),
            )  # fmt: skip
        else:
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
        threads = torch.get_num_threads()
        if self.config.train_threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(self.config.train_threads)
        try:
            self.model.train()
            budget = self.config.time_budget_s
            pacer, first = Pacer(budget), self.step
            while self.step < self.config.steps:
                if pacer.spent():
                    self.stopped_early = f"time budget {budget:.0f} s spent at step {self.step}"
                    break
                metrics = self.train_step()
                fitted = pacer.fitted(self.step - first, self.config.steps - first) + first
                if fitted < self.config.steps:  # the schedule fitted to the budget
                    self.config = replace(self.config, steps=fitted)
                    bar.total = self.config.steps
                    self.paced = pacer.note
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
            torch.set_num_threads(threads)
            bar.close()
            if log:
                log.close()
        self.model.eval()
        return history


def main(argv: list[str] | None = None) -> int:
    """Build data and model, train, save the final model."""
    config = TrainConfig.from_args(argv, module_summary(__doc__))
    run = prepare_run(config)
    if config.epochs > 0:
        steps = math.ceil(config.epochs * len(run.train_samples) / config.batch_size)
        config = replace(config, steps=steps)
    trainer = Trainer(config, run.model, run.train_samples)
    checkpoint = Path(config.out) / "checkpoint.pt"
    if checkpoint.exists():
        trainer.resume(checkpoint)
    trainer.fit()
    trainer.save()
    weights = merge_lora(trainer.final_state_dict(), config)  # collective under FSDP
    if trainer.is_main:
        trainer.model.save_pretrained(Path(config.out) / "final", weights)
    if trainer.ddp:
        dist.barrier()  # rank 0 has written everything before anyone leaves
        if "LOCAL_RANK" not in os.environ:
            dist.destroy_process_group()
        # a torchrun worker keeps its group: destroying it can hang (pytorch/pytorch#75097,
        # seen here once in CI) and nothing is pending after the barrier; see exit_process
    return 0


def exit_process(code: int) -> None:
    """Leave the process; a torchrun worker skips the teardown of its process group and Python.

    After a clean run (final barrier passed, files closed) both can fail a worker that has
    finished its work: `destroy_process_group` may hang, and Gloo threads that still hold
    tensors abort interpreter teardown with SIGABRT ("terminate called without an active
    exception"); each was seen once in CI. Nothing is left to clean up, so a worker exits at once.
    """
    if "LOCAL_RANK" in os.environ:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_process(main())
