"""Pretrain the tiny vision tower on synthetic rooms (what SigLIP's pretraining is to the 7B).

    python -m loc3r.train.pretrain_vision [--key=value ...]  # <out>/vision_tower.safetensors

In the paper the vision tower (SigLIP so400m) is pretrained and stays frozen. The embedded model's
tower is tiny and built from scratch, so it is given the same status by a short supervised
pretraining on rendered frames: from the features the VLM reads (the tower's last kept layer),
heads (linear, or with one hidden layer: --probe_hidden) predict, for every patch, the kind of
object it shows (or a room surface), the object's colour, and the log depth; the labels come from
the renderer's object ids and depth. The tower is then loaded (TrainConfig.vision_init) and
frozen while Loc3R-VLM trains.

--tower_init=<a tower or a VLM directory> starts from a trained tower; --train_tower=False trains
the heads alone, a probe of that tower (pass the VLM's --image_size, --vision_hidden and
--vision_layers, and its scenes: --look, --walk, --frames, --render_size).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from loc3r.scenes import EpisodeConfig, make_episode
from loc3r.scenes.world import CATALOGUE, COLOURS
from loc3r.train.config import config_from_args, lr_at, resolve_training_device
from loc3r.train.parallel import parallel_map
from loc3r.vlm import frames_to_pixel_values
from loc3r.vlm.checkpoint import load_state_strict
from loc3r.vlm.llava_video import LlavaVideoModel
from loc3r.vlm.loc3r_vlm import mlp
from loc3r.vlm.tiny import tiny_llava_config

KINDS = ("surface", *CATALOGUE)  # class 0: wall, floor or ceiling
COLOUR_NAMES = ("none", *COLOURS)


@dataclass
class VisionPretrainConfig:
    """Every knob of the pretraining (CLI keys; sizes must match the VLM's TrainConfig)."""

    out: str = "runs/vision_pretrain"
    seed: int = 0
    steps: int = 3000
    batch_frames: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.01
    episodes: int = 300
    eval_episodes: int = 10
    eval_seed_offset: int = 1_000_000
    frames: int = 8
    image_size: int = 112
    render_size: int = 0  # rendered frame size, resized to image_size as the VLM does (0: equal)
    look: str = "flat"  # rooms: "flat", "textured" or "furnished" (loc3r.scenes.episode.LOOKS)
    walk: str = "sweep"  # walks: "sweep", "scan" or "room_scan" (loc3r.scenes.episode)
    vision_hidden: int = 64
    vision_layers: int = 2
    device: str = "auto"  # "auto" (CUDA when there is one), "cpu" or "cuda"
    workers: int = 1  # processes that render the frames
    # start from this tower: a vision_tower.safetensors of this script, or a Loc3R-VLM directory
    # (its model.safetensors); with train_tower=False only the heads learn, a probe of the frozen
    # tower the VLM reads (<out>/patch_heads.safetensors)
    tower_init: str = ""
    train_tower: bool = True
    probe_hidden: int = 0  # the heads' hidden width (0: linear heads, as for pretraining)
    # > 0: training stops after this many seconds of steps (a guard for a timed GPU build;
    # the learning-rate schedule still assumes `steps`)
    time_budget_s: float = 0.0

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> VisionPretrainConfig:
        """Defaults, then --config YAML, then --key=value overrides (type-checked)."""
        return config_from_args(cls, argv)


def patch_labels(frame, room, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grid, grid) kind index, colour index and log depth at each patch centre."""
    height, width = frame.object_id.shape
    rows = ((np.arange(grid) + 0.5) * height / grid).astype(int)
    cols = ((np.arange(grid) + 0.5) * width / grid).astype(int)
    ids = frame.object_id[np.ix_(rows, cols)]
    by_id = {obj.id: obj for obj in room.objects}
    kinds = np.zeros((grid, grid), np.int64)
    colours = np.zeros((grid, grid), np.int64)
    for (i, j), obj_id in np.ndenumerate(ids):
        if obj_id >= 0:
            obj = by_id[int(obj_id)]
            kinds[i, j] = KINDS.index(obj.kind)
            colours[i, j] = COLOUR_NAMES.index(obj.colour)
    depth = np.log(np.clip(frame.depth[np.ix_(rows, cols)], 0.1, 20.0))
    return kinds, colours, depth.astype(np.float32)


def episode_data(seed: int, shared: tuple) -> tuple:
    """Pixel values and patch labels of one episode's frames (shared: config, grid)."""
    config, grid = shared
    episode_config = EpisodeConfig(
        frames=config.frames,
        image_size=config.render_size or config.image_size,
        look=config.look,
        walk=config.walk,
    )
    episode = make_episode(seed, episode_config)
    pixels = frames_to_pixel_values([f.rgb for f in episode.frames], config.image_size)
    labels = [patch_labels(frame, episode.room, grid) for frame in episode.frames]
    return pixels, *(np.stack(part) for part in zip(*labels, strict=True))


def make_data(seeds, config: VisionPretrainConfig, grid: int, progress: bool):
    """Pixel values and patch labels of every frame of the episodes of `seeds`."""
    parts = parallel_map(episode_data, list(seeds), (config, grid), config.workers, "frames",
                         progress)  # fmt: skip
    pixels, kinds, colours, depths = zip(*parts, strict=True)
    as_tensor = lambda a: torch.from_numpy(np.concatenate(a))  # noqa: E731
    return torch.cat(pixels), as_tensor(kinds), as_tensor(colours), as_tensor(depths)


def probe_head(vision_dim: int, classes: int, probe_hidden: int = 0) -> torch.nn.Module:
    """A linear head, or with probe_hidden > 0 one hidden GELU layer."""
    if probe_hidden == 0:
        return torch.nn.Linear(vision_dim, classes)
    return mlp(vision_dim, probe_hidden, classes)


class PatchHeads(torch.nn.Module):
    """Read-outs of kind, colour and log depth per patch: linear, or with one hidden layer."""

    def __init__(self, dim: int, probe_hidden: int = 0) -> None:
        super().__init__()
        self.kind = probe_head(dim, len(KINDS), probe_hidden)
        self.colour = probe_head(dim, len(COLOUR_NAMES), probe_hidden)
        self.depth = probe_head(dim, 1, probe_hidden)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, N, C) features -> kind logits, colour logits, log depth."""
        return self.kind(features), self.colour(features), self.depth(features)[..., 0]


def losses(model, heads, pixels, kinds, colours, depths) -> dict[str, torch.Tensor]:
    """Cross-entropy of kind and colour, L1 of log depth (means over patches); accuracies.

    ``object_kind_acc`` is the kind accuracy on the patches that show an object (NaN if none).
    """
    features = model.vision_features(pixels)  # (B, g*g, C)
    kind_logits, colour_logits, depth_pred = heads(features)
    parts = {
        "kind": F.cross_entropy(kind_logits.flatten(0, 1), kinds.flatten()),
        "colour": F.cross_entropy(colour_logits.flatten(0, 1), colours.flatten()),
        "depth": (depth_pred - depths.flatten(1)).abs().mean(),
    }
    parts["loss"] = parts["kind"] + parts["colour"] + parts["depth"]
    with torch.no_grad():
        kind_truth = kinds.flatten(1)
        kind_right = kind_logits.argmax(-1) == kind_truth
        parts["kind_acc"] = kind_right.float().mean()
        on_objects = kind_truth > 0  # most patches show walls or floor: the hard part
        parts["object_kind_acc"] = (
            kind_right[on_objects].float().mean() if on_objects.any() else torch.tensor(np.nan)
        )
        parts["colour_acc"] = (colour_logits.argmax(-1) == colours.flatten(1)).float().mean()
    return parts


def build_vision_model(config: VisionPretrainConfig) -> LlavaVideoModel:
    """A tiny LLaVA-Video whose tower has the VLM's sizes (the LLM part is unused here)."""
    llava = tiny_llava_config(vocab_size=16, hidden=32, layers=1, intermediate=64,
                              image_size=config.image_size, vision_hidden=config.vision_hidden,
                              vision_layers=config.vision_layers)  # fmt: skip
    return LlavaVideoModel(llava)


def tower_weights(path: str) -> dict[str, torch.Tensor]:
    """The tower of a vision_tower.safetensors or of a Loc3R-VLM directory's model.safetensors.

    ValueError when the file holds no tower.
    """
    source = Path(path)
    if source.is_dir():
        source = source / "model.safetensors"
    tensors = load_file(str(source))
    prefix = "base.vision_tower."
    if any(name.startswith(prefix) for name in tensors):
        tensors = {n[len(prefix) :]: t for n, t in tensors.items() if n.startswith(prefix)}
    if not any(name.startswith("embeddings.") for name in tensors):
        raise ValueError(f"{source} holds no vision tower (a model without one, or heads?)")
    return tensors


def pretrain(config: VisionPretrainConfig, progress: bool = True) -> dict:
    """Train the heads (and the tower unless train_tower=False), save both, report accuracies.

    The accuracies are the held-out rooms' patch accuracies (eval_seed_offset).
    """
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    device = resolve_training_device(config.device)
    model = build_vision_model(config)
    if config.tower_init:  # before the rendering: a tower that does not fit fails at once
        load_state_strict(model.vision_tower, tower_weights(config.tower_init))
    grid = model.config.grid
    train = make_data(range(config.episodes), config, grid, progress)
    held = make_data(range(config.eval_seed_offset, config.eval_seed_offset + config.eval_episodes),
                     config, grid, progress)  # fmt: skip
    train = tuple(t.to(device) for t in train)
    held = tuple(t.to(device) for t in held)
    model.vision_tower.requires_grad_(config.train_tower)
    heads = PatchHeads(config.vision_hidden, config.probe_hidden)
    model, heads = model.to(device), heads.to(device)
    params = [*heads.parameters()]
    if config.train_tower:
        params += [*model.vision_tower.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    history = []
    began = time.perf_counter()
    for step in tqdm(range(config.steps), desc="vision", disable=not progress):
        if (
            config.time_budget_s > 0
            and step > 0
            and time.perf_counter() - began > config.time_budget_s
        ):
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        count = min(config.batch_frames, len(train[0]))
        pick = torch.from_numpy(rng.choice(len(train[0]), count, replace=False)).to(device)
        parts = losses(model, heads, *(t[pick] for t in train))
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in parts.items()})
    with torch.no_grad():
        evaluation = {k: float(v) for k, v in losses(model, heads, *held).items()}
    held = tuple(t.cpu() for t in held)
    train = tuple(t.cpu() for t in train)
    majority_kind = float((held[1] == torch.mode(train[1].flatten()).values).float().mean())
    tower = {k: v.detach().cpu().contiguous() for k, v in model.vision_tower.state_dict().items()}
    save_file(tower, str(out / "vision_tower.safetensors"))
    head_weights = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    save_file(head_weights, str(out / "patch_heads.safetensors"))
    report = {
        "config": asdict(config),
        "held_out": evaluation,
        "majority_kind_acc": majority_kind,
        "steps_done": len(history),
        "first_loss": history[0]["loss"],
        "final_loss": float(np.mean([h["loss"] for h in history[-20:]])),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    """Pretrain and print the report."""
    torch.set_num_threads(1)
    report = pretrain(VisionPretrainConfig.from_args(argv))
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
