"""Decoding from a fixed-size KV cache, so that the one-token step can run as a CUDA graph.

A transformers DynamicCache grows by one token per step: every step allocates, and a graph
captured once cannot replay. A StaticCache is allocated once per scene for the scene prefix plus
`extra_tokens` (situation, question and answer); each step writes its keys and values into the
next slot, in place. After a question the cache is cut back to the scene prefix, as a dynamic one
is (transformers' StaticCache counts its written tokens and `crop` moves that count back; the
stale slots are overwritten by the next text and masked until then).
With `compile` set, the one-token step goes through `torch.compile` (on CUDA, mode
"reduce-overhead" records it as a CUDA graph: one launch per token instead of hundreds).

The capacity is rounded up to `capacity_multiple` tokens so that scenes of the same frame count
give the same shapes, and the compiled step is reused rather than recompiled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from loc3r.vlm.llava_video import cache_kwargs


@dataclass
class StaticDecoding:
    """Settings of static-cache decoding (`Loc3rVLM.use_static_decoding`)."""

    extra_tokens: int = 1024  # room after the scene prefix: situation + question + answer
    capacity_multiple: int = 1024  # cache length rounded up to this (stable compiled shapes)
    compile: dict | None = None  # torch.compile options of the one-token step; None: eager
    _compiled: dict[int, Callable] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.extra_tokens < 1 or self.capacity_multiple < 1:
            raise ValueError("extra_tokens and capacity_multiple must be positive")

    def new_cache(self, language_model: nn.Module, prefix_length: int):
        """An empty StaticCache for a prefix of `prefix_length` tokens plus the extra room."""
        from transformers import StaticCache

        needed = prefix_length + self.extra_tokens
        capacity = math.ceil(needed / self.capacity_multiple) * self.capacity_multiple
        return StaticCache(config=language_model.config, max_cache_len=capacity)

    def step(self, language_model: nn.Module) -> Callable:
        """The one-token forward of `language_model`: compiled once per model when asked."""
        if self.compile is None:
            return language_model
        key = id(language_model)
        if key not in self._compiled:
            self._compiled[key] = torch.compile(language_model, dynamic=False, **self.compile)
        return self._compiled[key]


def is_static(cache) -> bool:
    """Whether `cache` is a transformers StaticCache (slots addressed by cache_position)."""
    from transformers import StaticCache

    return isinstance(cache, StaticCache)


def capacity(cache) -> int:
    """Slots of a StaticCache (`get_max_length`; `get_max_cache_shape` in older transformers)."""
    read = getattr(cache, "get_max_length", None) or cache.get_max_cache_shape
    return int(read())


def check_room(cache, position: int, tokens: int) -> None:
    """Raise ValueError when `tokens` more tokens from `position` do not fit the static cache."""
    if is_static(cache) and position + tokens > capacity(cache):
        raise ValueError(
            f"the text needs {tokens} tokens after the scene's {position} but the static KV "
            f"cache holds {capacity(cache)}: shorten it or raise StaticDecoding.extra_tokens"
        )


def forward_at(model: nn.Module, cache, embeds: torch.Tensor, offset: int, step=None):
    """`model` (a decoder or a causal LM) over `embeds` (1, L, H) at positions offset.. in `cache`.

    A static cache is written at those slots (cache_position); a dynamic one appends. `step`, a
    compiled version of `model`, runs instead for one-token inputs.
    """
    length = embeds.shape[1]
    positions = torch.arange(offset, offset + length, device=embeds.device)
    kwargs = {"position_ids": positions[None], "use_cache": True, **cache_kwargs(model, cache)}
    if is_static(cache):
        kwargs["cache_position"] = positions
    if step is not None and length == 1:
        mark_step = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
        if mark_step is not None and embeds.is_cuda:
            mark_step()  # a new replay: the previous step's outputs may be overwritten
        return step(inputs_embeds=embeds, **kwargs)
    return model(inputs_embeds=embeds, **kwargs)
