"""The semantic embedding (ours, not in the paper): each video token told what its patches show.

The embedded model's vision tower is tiny and frozen, and the tiny LM finds the objects a
situation names too rarely (docs/experiments.md). The VLM pools 2x2 patches into one video token
by averaging their features, so a chair that fills one patch is a quarter of its cell, averaged
with the floor around it. The semantic embedding is a second tiny tower of the same shape with
heads that say, for each 14 px patch, which object kind it shows and in what colour; it is
trained on the renderer's labels (`python -m loc3r.train.pretrain_vision --probe_hidden=128`,
whose <out>/ holds vision_tower.safetensors and patch_heads.safetensors; its docstring says
which of the VLM's sizes and scenes to pass) and frozen, as the tower is. Max-pooling the heads'
probabilities over a cell keeps what any of its patches shows: the cell says "chair" however
little of it the chair fills. A projection that starts at zero adds them to the video token, as
the point embedding adds the patch's point, so a model continued with it starts as it was, and a
word of the situation ("the lamp") can find its patches through one direction of the token.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import load_file
from torch import nn

from loc3r.vlm.checkpoint import load_state_strict, materialise_position_ids
from loc3r.vlm.llava_video import LlavaVideoConfig, build_vision_tower, tower_features

HEADS = ("kind", "colour")  # the probe's heads the embedding reads (its depth head is not read)


def probe_head(vision_dim: int, classes: int, probe_hidden: int = 0) -> nn.Module:
    """A linear head, or with probe_hidden > 0 one hidden GELU layer (pretrain_vision's too)."""
    if probe_hidden == 0:
        return nn.Linear(vision_dim, classes)
    return nn.Sequential(
        nn.Linear(vision_dim, probe_hidden), nn.GELU(), nn.Linear(probe_hidden, classes)
    )


class SemanticEmbedding(nn.Module):
    """(T, 3, S, S) pixels -> (T, p*p, hidden): max-pooled kind and colour probabilities.

    The tower has the shape (and attention kernel) of the VLM's (`llava`); the tower and the
    heads are frozen, the projection learns.
    """

    def __init__(
        self, llava: LlavaVideoConfig, hidden: int, classes: tuple[int, int], probe_hidden: int = 0
    ) -> None:
        super().__init__()
        self.tower = build_vision_tower(llava)
        vision_dim = llava.mm_hidden_size
        kinds, colours = classes
        self.classes = (kinds, colours)  # what the heads tell apart
        self.kind = probe_head(vision_dim, kinds, probe_hidden)
        self.colour = probe_head(vision_dim, colours, probe_hidden)
        for frozen in (self.tower, self.kind, self.colour):
            frozen.requires_grad_(False)
        self.proj = nn.Linear(kinds + colours, hidden)
        nn.init.zeros_(self.proj.weight)  # the tokens start as they were
        nn.init.zeros_(self.proj.bias)

    def materialise_buffers(self) -> None:
        """The tower's position ids, which a meta-device build (from_pretrained) leaves empty."""
        materialise_position_ids(self.tower)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(T, 3, S, S) -> (T, g*g, C): the tower's last layer (as LlavaVideoModel's)."""
        return tower_features(self.tower, pixel_values.to(self.proj.weight.dtype))

    def probabilities(self, features: torch.Tensor, pooled_grid: int) -> torch.Tensor:
        """(T, g*g, C) -> (T, p*p, kinds + colours): each head's softmax, max over a cell."""
        count, patches, _ = features.shape
        side = round(patches**0.5)
        if side * side != patches:
            raise ValueError(f"expected a square grid of patch features, got {patches}")
        features = features.to(self.proj.weight.dtype)
        probs = torch.cat([self.kind(features).softmax(-1), self.colour(features).softmax(-1)], -1)
        grid = probs.transpose(1, 2).reshape(count, -1, side, side)
        pooled = F.adaptive_max_pool2d(grid, pooled_grid)  # what any patch of the cell shows
        return pooled.flatten(2).transpose(1, 2)

    def forward(self, pixel_values: torch.Tensor, pooled_grid: int) -> torch.Tensor:
        """The embedding added to each video token of the pooled grid."""
        return self.proj(self.probabilities(self.features(pixel_values), pooled_grid))

    def load_probe(self, directory: str | Path) -> None:
        """The tower and heads of a pretrain_vision output; ValueError when they do not fit."""
        directory = Path(directory)
        for name in ("vision_tower.safetensors", "patch_heads.safetensors"):
            if not (directory / name).is_file():
                raise ValueError(f"{directory} has no {name} (a pretrain_vision output?)")
        # LlavaCheckpointError (a ValueError) when the tower's shapes are not the model's
        load_state_strict(self.tower, load_file(str(directory / "vision_tower.safetensors")))
        self.load_heads(load_file(str(directory / "patch_heads.safetensors")))

    def load_heads(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy the probe's kind and colour heads (patch_heads.safetensors); ValueError if unfit."""
        for name in HEADS:
            for part, value in getattr(self, name).state_dict(keep_vars=True).items():
                key = f"{name}.{part}"
                if key not in tensors:
                    raise ValueError(f"the patch heads have no {key} (another probe depth?)")
                if tensors[key].shape != value.shape:
                    raise ValueError(
                        f"patch head {key} is {tuple(tensors[key].shape)}, the model's "
                        f"{tuple(value.shape)} (another tower width or classes?)"
                    )
                with torch.no_grad():
                    value.copy_(tensors[key])


def head_classes(tensors: dict[str, torch.Tensor]) -> tuple[tuple[int, int], int]:
    """((kinds, colours), probe_hidden) of patch heads (patch_heads.safetensors); else ValueError.

    A linear head has `<name>.weight`, one with a hidden layer `<name>.0.weight` and
    `<name>.2.weight` (probe_head).
    """
    classes, widths = [], []
    for name in HEADS:
        if f"{name}.weight" in tensors:
            classes.append(int(tensors[f"{name}.weight"].shape[0]))
            widths.append(0)
        elif f"{name}.0.weight" in tensors and f"{name}.2.weight" in tensors:
            classes.append(int(tensors[f"{name}.2.weight"].shape[0]))
            widths.append(int(tensors[f"{name}.0.weight"].shape[0]))
        else:
            raise ValueError(f"the patch heads have no {name} head")
    if widths[0] != widths[1]:
        raise ValueError(f"the kind and colour heads differ in depth or width: {widths}")
    return (classes[0], classes[1]), widths[0]
