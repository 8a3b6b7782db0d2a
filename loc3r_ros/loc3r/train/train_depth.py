"""Train the monocular depth network of the embedded default's geometric pose source.

    python -m loc3r.train.train_depth [--key=value ...]     # writes <out>/depth (MonoDepth)

Frames of synthetic room scans go through CUT3R's pre-processing at `image_size`; the target is
the z-depth ray-cast at the pre-processed pixels (`train_cut3r.make_sequence`). The loss is the
mean absolute error of log-depth over valid pixels (metric: the rooms have true sizes, so the
network learns the scale as well as the shape), with horizontal flips and brightness/contrast
jitter. The report gives the held-out median |z / z_true - 1| and the spread of each frame's
scale, the figures `train_cut3r` reports for CUT3R's depth on the same rooms.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from loc3r.engine.mono_depth import (
    MonoDepth,
    MonoDepthConfig,
    load_mono_depth,
    read_mono_depth_config,
    save_mono_depth,
)
from loc3r.train.config import Pacer, config_from_args, lr_at, resolve_training_device
from loc3r.train.parallel import parallel_map
from loc3r.train.train_cut3r import Cut3rTrainConfig, depth_error_summary, make_sequence


@dataclass
class DepthTrainConfig:
    """Every knob of a depth network training run (CLI keys)."""

    # the network: its input's long side and its widths (MonoDepthConfig), comma-separated
    image_size: int = 128
    widths: str = "24,48,64,96,128"
    init: str = ""  # a saved depth network to continue (its sizes must equal the run's)
    out: str = "runs/mono_depth"
    # rooms (loc3r.scenes): the embedded default's textured room scans
    look: str = "textured"
    walk: str = "room_scan"
    frames: int = 16
    render_size: int = 224
    # the steps: AdamW, linear warm-up then cosine decay (config.lr_at)
    seed: int = 0
    steps: int = 2000
    batch_size: int = 24  # frames per step
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    train_episodes: int = 1200
    train_seed_offset: int = 34000
    eval_episodes: int = 20
    eval_seed_offset: int = 9610000  # the rooms train_cut3r's depth figures are measured on
    jitter: float = 0.4  # brightness gain in 1 +- jitter / 2, offset in +- jitter / 4
    log_every: int = 10
    threads: int = 1
    device: str = "auto"  # "auto" (CUDA when there is one), "cpu" or "cuda"
    workers: int = 1  # processes that render the rooms
    render_within_s: float = 0.0  # > 0: as many training rooms as render in this long
    time_budget_s: float = 0.0  # > 0: the steps are fitted to this long (config.Pacer)

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> DepthTrainConfig:
        """Defaults, then --config YAML, then --key=value overrides (type-checked)."""
        return config_from_args(cls, argv)

    def network(self) -> MonoDepthConfig:
        """The network's sizes."""
        try:
            widths = tuple(int(w) for w in self.widths.split(","))
        except ValueError:
            raise ValueError(f"widths={self.widths!r}: expected comma-separated integers") from None
        return MonoDepthConfig(image_size=self.image_size, widths=widths)

    @property
    def train_seeds(self) -> range:
        """The training rooms' seeds."""
        return range(self.train_seed_offset, self.train_seed_offset + self.train_episodes)

    @property
    def held_out_seeds(self) -> range:
        """The held-out rooms' seeds."""
        return range(self.eval_seed_offset, self.eval_seed_offset + self.eval_episodes)

    def check(self) -> MonoDepthConfig:
        """ValueError for a run that cannot work (before anything renders); the network's sizes."""
        network = self.network()
        seeds, held = self.train_seeds, self.held_out_seeds
        counts = {
            "train_episodes": self.train_episodes, "eval_episodes": self.eval_episodes,
            "batch_size": self.batch_size, "workers": self.workers, "threads": self.threads,
            "steps": self.steps, "frames": self.frames, "log_every": self.log_every,
        }  # fmt: skip
        if small := [f"{key}={value}" for key, value in counts.items() if value < 1]:
            raise ValueError(f"{', '.join(small)}: expected >= 1")
        if min(self.train_seed_offset, self.eval_seed_offset, self.warmup_steps) < 0:
            raise ValueError("train_seed_offset, eval_seed_offset and warmup_steps must be >= 0")
        if self.render_within_s < 0 or self.time_budget_s < 0:
            raise ValueError("render_within_s and time_budget_s must be >= 0")
        if not 0 <= self.jitter < 2:  # a brightness gain of 1 - jitter / 2 stays positive
            raise ValueError(f"jitter={self.jitter}: expected 0 <= jitter < 2")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1 and self.weight_decay >= 0):
            raise ValueError("expected lr > 0, 0 <= min_lr_ratio <= 1 and weight_decay >= 0")
        if seeds.start < held.stop and held.start < seeds.stop:
            raise ValueError(
                f"training rooms {seeds.start}-{seeds.stop - 1} overlap the held-out rooms "
                f"{held.start}-{held.stop - 1}"
            )
        if self.init:
            saved = read_mono_depth_config(self.init)
            if saved != network:
                raise ValueError(f"--init={self.init} has sizes {saved}, the run {network}")
        return network


@dataclass
class DepthFrames:
    """Pre-processed frames and their true z-depth (0 where nothing was hit)."""

    images: torch.Tensor  # (N, 3, H, W) float16 in [-1, 1]
    depth: torch.Tensor  # (N, H, W) float16 metres

    def __len__(self) -> int:
        return len(self.images)


def room_frames(seed: int, config: DepthTrainConfig) -> DepthFrames:
    """One room scan's frames at the network's input size, with their true depth."""
    sequence = make_sequence(
        seed,
        Cut3rTrainConfig(
            frames=config.frames, look=config.look, walk=config.walk,
            render_size=config.render_size, cut3r_size=config.image_size,
        ),
    )  # fmt: skip
    depth = torch.where(sequence.valid, sequence.pts_self[..., 2], torch.zeros(()))
    return DepthFrames(sequence.images.half(), depth.half())


def render_frames(
    seeds: range, config: DepthTrainConfig, within_s: float = 0.0, progress: bool = True
) -> DepthFrames:
    """The rooms' frames in seed order on `config.workers` processes (`within_s`: a time cap)."""
    deadline = time.monotonic() + within_s if within_s > 0 else None
    rooms = parallel_map(
        room_frames, list(seeds), config, config.workers, "depth rooms", progress, deadline
    )
    return DepthFrames(
        torch.cat([r.images for r in rooms]), torch.cat([r.depth for r in rooms])
    )  # fmt: skip


def resident(frames: DepthFrames, device: torch.device) -> DepthFrames:
    """The frames on the GPU when they take at most half its free memory; else as they are."""
    if device.type != "cuda":
        return frames
    free, _ = torch.cuda.mem_get_info(device)
    if frames.images.nbytes + frames.depth.nbytes > free / 2:
        return frames
    return DepthFrames(frames.images.to(device), frames.depth.to(device))


def augment(
    images: torch.Tensor, depth: torch.Tensor, jitter: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flips (of image and depth) and brightness/contrast jitter."""
    n = len(images)
    flip = torch.rand(n, generator=generator, device=images.device) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    depth = torch.where(flip[:, None, None], depth.flip(-1), depth)
    shape = (n, 1, 1, 1)
    gain = 1 + jitter * (torch.rand(shape, generator=generator, device=images.device) - 0.5)
    offset = jitter / 2 * (torch.rand(shape, generator=generator, device=images.device) - 0.5)
    return (images * gain + offset).clamp(-1, 1), depth


def log_depth_loss(model: MonoDepth, images: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Mean |log z^ - log z| over valid pixels (z > 0)."""
    predicted = model(images).clamp_min(1e-6).log()
    valid = depth > 0
    if not bool(valid.any()):
        return predicted.sum() * 0.0
    return (predicted[valid] - depth[valid].log()).abs().mean()


@torch.no_grad()
def depth_errors(model: MonoDepth, frames: DepthFrames, chunk: int = 64) -> dict[str, float]:
    """Held-out median |z / z_true - 1| over valid pixels, and each frame's scale spread."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device

    def pairs():
        for i in range(0, len(frames), chunk):
            predicted = model(frames.images[i : i + chunk].to(device).float()).cpu()
            yield from zip(predicted, frames.depth[i : i + chunk].float(), strict=True)

    try:
        return depth_error_summary(pairs())
    finally:
        model.train(was_training)


def train(config: DepthTrainConfig, progress: bool = True) -> dict:
    """Render, train, evaluate on held-out rooms, save; returns the report."""
    config.check()  # before any rendering
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config, progress)
    finally:
        torch.set_num_threads(threads)


def _train(config: DepthTrainConfig, progress: bool) -> dict:
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    network = config.network()
    device = resolve_training_device(config.device)
    model = load_mono_depth(config.init).requires_grad_(True) if config.init else MonoDepth(network)
    model = model.to(device).train()
    train_frames = render_frames(config.train_seeds, config, config.render_within_s, progress)
    held_out = render_frames(config.held_out_seeds, config, progress=False)
    render_s = time.perf_counter() - start
    train_frames = resident(train_frames, device)
    before = depth_errors(model, held_out)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    generator = torch.Generator(device=device).manual_seed(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    losses: list[float] = []
    pacer = Pacer(config.time_budget_s)
    bar = tqdm(total=config.steps, desc="depth", disable=not progress)
    with open(out / "metrics.jsonl", "w") as log:
        step = 0
        while step < config.steps and not pacer.spent():
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = torch.randint(
                0, len(train_frames), (config.batch_size,), generator=generator, device=device
            ).to(train_frames.images.device)
            images, depth = augment(
                train_frames.images[index].to(device).float(),
                train_frames.depth[index].to(device).float(), config.jitter, generator,
            )  # fmt: skip
            loss = log_depth_loss(model, images, depth)
            if not torch.isfinite(loss):  # diverged: stop before NaN weights are saved
                raise FloatingPointError(
                    f"depth network loss {float(loss.detach())} at step {step}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            if step % config.log_every == 0 or step == 1:
                log.write(json.dumps({"step": step, "lr": lr, "loss": losses[-1]}) + "\n")
                log.flush()
            bar.update(1)
            if (fitted := pacer.fitted(step, config.steps)) < config.steps:
                config = replace(config, steps=fitted)
                bar.total = fitted
    bar.close()
    model.eval()
    after = depth_errors(model, held_out)
    save_mono_depth(model.cpu(), out / "depth")
    report = {
        "config": asdict(config),
        "device": str(device),
        "rooms": len(train_frames) // config.frames,
        "frames": len(train_frames),
        "steps_done": len(losses),
        "paced": pacer.note,
        "render_seconds": round(render_s, 1),
        "random_init": before,
        "trained": after,
        "first_loss": losses[0] if losses else None,
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    """Train and print the report."""
    config = DepthTrainConfig.from_args(argv)
    try:
        config.check()
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    report = train(config)
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=2))
    return 0 if math.isfinite(report["final_loss"] or 0.0) else 1


if __name__ == "__main__":
    sys.exit(main())
