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
from dataclasses import asdict, dataclass, fields, replace
from datetime import timedelta
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
    epochs: float = 0.0  # > 0: steps = ceil(epochs * samples / batch_size) (replaces steps)
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
    train_situations: int = 4  # situations per training room (held-out rooms always have 4)
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
    vision_init: str = ""  # tiny tower weights from loc3r.train.pretrain_vision (safetensors)
    layout_weight: float = 0.05  # 0 disables the layout loss (and head)
    situation_weight: float = 0.075
    ori_weight: float = 3.5
    # attention supervision of <Pos>, <Ori> and the answer (not in the paper; see loc3r_vlm):
    # synthetic rooms only (their records name the objects), 0 = off
    grounding_weight: float = 0.0
    grounding_layer: int = -1
    # "attended_layout" (ours): position = layout of the patches <Pos>'s grounding head attends
    # to, plus f_pos's offset; "hidden": f_pos alone (the paper)
    position_readout: str = "hidden"
    # what the answer token's grounding heads look at: "question" (its object) or "situation"
    # (also the anchor and the faced object; ours, see loc3r_vlm)
    answer_grounding: str = "question"
    # the question's object in the agent's frame, regressed at the answer's first token (ours;
    # synthetic rooms, whose records know the object), 0 = off
    egocentric_weight: float = 0.0
    grounding_views: str = "all"  # "all": every frame showing the object; "first": only the
    # first frame that shows it (its layout needs the least camera motion: CUT3R's pose drifts)
    cut3r_dir: str = ""  # our CUT3R directory or an official .pth; "" = a seeded random tiny one
    cut3r_image_size: int = 64  # CUT3R input long edge (512 for the official DPT checkpoint)
    # "oracle": camera tokens state the true poses instead of CUT3R's (synthetic rooms only):
    # what the VLM reaches with a perfect camera prior, an upper bound, never a bundle
    camera_prior: str = "cut3r"
    tokenizer_dir: str = ""  # "" = train one on the synthetic corpus into <out>/tokenizer
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
    """The Loc3R-VLM to train: LLaVA-Video from `base_model_dir` or a tiny one, seeded.

    New parts (f_cam, heads, <Pos>/<Ori> embeddings) are random; with `lora_rank` the LLM gets
    LoRA adapters and its own weights are frozen.
    """
    from loc3r.vlm.tiny import build_tiny_loc3r

    torch.manual_seed(config.seed)
    vlm_config = Loc3rVLMConfig(
        cam_token_dim=cam_dim,
        use_camera_tokens=config.use_camera_tokens,
        enable_layout_head=config.layout_weight > 0,
        max_new_tokens=8,
        grounding_layer=config.grounding_layer,
        position_readout=config.position_readout,
        answer_grounding=config.answer_grounding,
        enable_egocentric_head=config.egocentric_weight > 0,
        weights=LossWeights(
            bev=config.layout_weight,
            situation=config.situation_weight,
            ori=config.ori_weight,
            grounding=config.grounding_weight,
            egocentric=config.egocentric_weight,
        ),
    )
    if config.base_model_dir:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        model = Loc3rVLM.from_base(
            config.base_model_dir, config.vision_tower_dir or config.base_model_dir, vlm_config,
            dtype=dtype,
        )  # fmt: skip
        return add_lora(model, config)
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
    if config.vision_init:
        from safetensors.torch import load_file

        from loc3r.vlm.checkpoint import load_state_strict

        load_state_strict(model.base.vision_tower, load_file(config.vision_init))
    model.base.vision_tower.requires_grad_(config.train_vision_tower)
    return add_lora(model, config)


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_lora(model: Loc3rVLM, config: TrainConfig) -> Loc3rVLM:
    """LoRA adapters (peft) on the LLM's linear layers when `lora_rank` > 0; LLM frozen.

    The projector, f_cam, the heads and the input/output embeddings (which hold the new
    <Pos>/<Ori> rows) stay fully trainable.
    """
    if config.lora_rank <= 0:
        return model
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:
        raise SystemExit("lora_rank > 0 needs the peft package: pip install peft") from exc
    llm = model.base.language_model
    llm.requires_grad_(False)
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules=list(LORA_TARGETS))  # fmt: skip
    inject_adapter_in_model(lora, llm.model)
    llm.get_input_embeddings().requires_grad_(True)
    llm.lm_head.requires_grad_(True)
    return model


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
                totals[key] = totals.get(key, 0.0) + float(value.detach()) / self.accumulation
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, config.grad_clip)
        self.optimizer.step()
        self.step += 1
        if self.ddp:  # report the global mean
            packed = torch.tensor(list(totals.values()))
            dist.all_reduce(packed)
            totals = dict(zip(totals, (packed / self.world).tolist(), strict=True))
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
