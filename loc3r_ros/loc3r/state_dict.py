"""Strict state-dict comparison for the checkpoint loaders (nothing loads with strict=False)."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def state_dict_mismatch(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], examples: int = 5
) -> str | None:
    """What differs between a model's state dict and a checkpoint's tensors, or None.

    Names the missing keys, the unexpected keys and the mis-shaped keys (with both shapes).
    """
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(given))
        if tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[:examples]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:examples]})")
    if mismatched:
        parts.append(f"{len(mismatched)} mis-shaped keys (e.g. {mismatched[:examples]})")
    return "; ".join(parts) if parts else None
