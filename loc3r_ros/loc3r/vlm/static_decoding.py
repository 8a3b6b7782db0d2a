"""Decoding from a fixed-size KV cache, so that the one-token step can run as a CUDA graph.

A transformers DynamicCache grows by one token per step: every step allocates, and a graph
captured once cannot replay. A StaticCache holds the scene prefix plus `extra_tokens`
(situation, question and answer); each step writes its keys and values into the next slot, in
place. After a question the cache is rewound to the scene prefix, as a dynamic one is cropped
(`rewind`; the stale slots are overwritten by the next text and masked until then).
With `compile` set, the one-token step goes through `torch.compile` (on CUDA, mode
"reduce-overhead" records it as a CUDA graph: one launch per token instead of hundreds), and so
do the text passes before it (the situation, then the question; `forward_text`): each is padded
to a multiple of `text_bucket` tokens, so that texts of most lengths share one compiled shape
(a text whose padding passes `compiled_text_tokens` or the cache's end runs eagerly).
The pads' keys and values land in the slots after the text, which the cache is then rewound
past; the next text overwrites them, and until then causal attention never reads them.

Shapes and addresses stay fixed, so that a compiled and recorded step replays rather than being
compiled or recorded again:
- the capacity is rounded up to `capacity_multiple` tokens and is at least `min_capacity`
  (`load_bundle` sets it to a full scene's, so every scene of up to that many frames has one
  shape);
- caches come from a pool of `pool_size` per capacity, reused oldest first (their tensors, and
  so the graphs recorded on them, are kept). A scene whose cache a newer scene took is refused
  with a clear error (`StaleSceneError`): encode it again.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import StaticCache

from loc3r.errors import Loc3rError
from loc3r.vlm.llava_video import cache_kwargs


class StaleSceneError(Loc3rError):
    """A scene's static KV cache now holds a newer scene."""


@dataclass
class StaticDecoding:
    """Settings and cache pool of static-cache decoding (`Loc3rVLM.use_static_decoding`)."""

    extra_tokens: int = 1024  # room after the scene prefix: situation + question + answer
    capacity_multiple: int = 1024  # cache length rounded up to this (stable compiled shapes)
    min_capacity: int = 0  # at least this many slots (a full scene's: one shape for all)
    pool_size: int = 4  # caches kept per capacity (the model process keeps 4 scenes)
    compile: dict | None = None  # torch.compile options of the one-token step and the text
    # passes; None: eager
    text_bucket: int = 64  # compiled text passes are padded to a multiple of this many tokens
    compiled_text_tokens: int = 256  # longer padded texts run eagerly: each bucket is a compiled
    # shape, and torch stops recompiling a function after 8 (`recompile_limit`)
    _compiled: dict[int, Callable] = field(default_factory=dict, init=False, repr=False)
    _pools: dict[int, list] = field(default_factory=dict, init=False, repr=False)
    _owner: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _tickets: itertools.count = field(default_factory=itertools.count, init=False, repr=False)

    def __post_init__(self) -> None:
        sizes = (self.extra_tokens, self.capacity_multiple, self.pool_size, self.text_bucket)
        if min(sizes) < 1 or self.compiled_text_tokens < 0:
            raise ValueError(
                "extra_tokens, capacity_multiple, pool_size and text_bucket must be positive, "
                "compiled_text_tokens >= 0"
            )

    def capacity_for(self, prefix_length: int) -> int:
        """Slots of the cache for a prefix of `prefix_length` tokens."""
        return _round_up(max(prefix_length + self.extra_tokens, self.min_capacity),
                         self.capacity_multiple)  # fmt: skip

    def take_cache(self, language_model: nn.Module, prefix_length: int) -> tuple[object, int]:
        """An empty StaticCache for the prefix, from the pool, and the ticket that owns it."""
        slots = self.capacity_for(prefix_length)
        pool = self._pools.setdefault(slots, [])
        if len(pool) < self.pool_size:
            cache = StaticCache(config=language_model.config, max_cache_len=slots)
        else:
            cache = pool.pop(0)  # the oldest scene's
            cache.reset()  # in place: the tensors' addresses stay
        pool.append(cache)
        ticket = next(self._tickets)
        self._owner[id(cache)] = ticket
        return cache, ticket

    def check_owner(self, cache, ticket: int) -> None:
        """Raise StaleSceneError when a newer scene has taken `cache` from the scene's `ticket`."""
        if self._owner.get(id(cache)) != ticket:
            raise StaleSceneError(
                f"this scene's KV cache was reused by a newer scene (static decoding keeps "
                f"{self.pool_size} scenes): encode the scene again"
            )

    def step(self, language_model: nn.Module) -> Callable:
        """The one-token forward of `language_model`: compiled once per model when asked."""
        return self._compiled_or_eager(language_model)

    def text_step(self, decoder: nn.Module) -> Callable | None:
        """The compiled text pass of `decoder` (the LM without its head); None: not compiled."""
        return None if self.compile is None else self._compiled_or_eager(decoder)

    def padded_length(self, length: int) -> int:
        """Tokens a compiled text pass of `length` tokens runs: the next multiple of the bucket."""
        return _round_up(length, self.text_bucket)

    def _compiled_or_eager(self, module: nn.Module) -> Callable:
        if self.compile is None:
            return module
        key = id(module)
        if key not in self._compiled:
            self._compiled[key] = torch.compile(module, dynamic=False, **self.compile)
        return self._compiled[key]


def _round_up(count: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is at least `count`."""
    return math.ceil(count / multiple) * multiple


def is_static(cache) -> bool:
    """Whether `cache` is a transformers StaticCache (asked at every decoding step)."""
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


def rewind(cache, length: int) -> None:
    """Cut a KV cache back to its first `length` tokens (the scene prefix).

    A dynamic cache is cropped. A static one whose layers count the tokens written
    (`cumulative_length`, transformers >= 5.2x) gets that count set back, so the next text
    writes right after the prefix; in older versions the slots are addressed by the
    `cache_position` each forward passes, and the later slots are masked as the future.
    """
    extra = int(cache.get_seq_length()) - length
    if extra <= 0:
        return
    if not is_static(cache):
        cache.crop(-extra)  # a negative value removes that many (transformers 4 and 5)
        return
    layers = [x for x in getattr(cache, "layers", []) if hasattr(x, "cumulative_length")]
    for layer in layers:
        if isinstance(layer.cumulative_length, torch.Tensor):
            layer.cumulative_length.fill_(length)  # in place: a recorded graph reads it
        else:
            layer.cumulative_length = length
    if layers and int(cache.get_seq_length()) != length:
        raise RuntimeError(f"the static KV cache did not rewind to {length} tokens")


def forward_at(model: nn.Module, cache, embeds: torch.Tensor, offset: int, step=None):
    """`model` (a decoder or a causal LM) over `embeds` (1, L, H) at positions offset.. in `cache`.

    A static cache also gets the slots as `cache_position` (what older transformers address it
    by). `step`, a compiled version of `model`, runs instead for one-token inputs.
    """
    length = embeds.shape[1]
    kwargs = _forward_kwargs(model, cache, offset, length, embeds.device)
    if step is not None and length == 1:
        _new_replay(embeds)
        return step(inputs_embeds=embeds, **kwargs)
    return model(inputs_embeds=embeds, **kwargs)


def forward_text(
    decoder: nn.Module,
    settings: StaticDecoding,
    cache,
    embeds: torch.Tensor,
    offset: int,
) -> torch.Tensor:
    """(1, L, H) last hidden states of `embeds` (1, L, H) at positions offset.. of a static cache.

    With compilation (`settings.compile`) the compiled copy of `decoder` runs the text padded
    with zeros to `settings.padded_length` tokens, and the cache is then rewound to the text's
    end (`rewind`), so the pads' slots count as free again. A text whose padded length passes
    `compiled_text_tokens` or the cache's end runs eagerly instead (no new compiled shape).
    """
    length = embeds.shape[1]
    check_room(cache, offset, length)
    padded = settings.padded_length(length)
    text_step = settings.text_step(decoder)
    if (
        text_step is None
        or padded > settings.compiled_text_tokens
        or offset + padded > capacity(cache)
    ):
        return forward_at(decoder, cache, embeds, offset).last_hidden_state
    pads = embeds.new_zeros(1, padded - length, embeds.shape[2])
    kwargs = _forward_kwargs(decoder, cache, offset, padded, embeds.device)
    _new_replay(embeds)
    out = text_step(inputs_embeds=torch.cat([embeds, pads], dim=1), **kwargs)
    hidden = out.last_hidden_state[:, :length].clone()  # a replay reuses its output's memory
    rewind(cache, offset + length)
    return hidden


def _forward_kwargs(model: nn.Module, cache, offset: int, length: int, device) -> dict:
    """The keywords of a forward of `length` tokens at positions offset.. in `cache`."""
    positions = torch.arange(offset, offset + length, device=device)
    kwargs = {"position_ids": positions[None], "use_cache": True, **cache_kwargs(model, cache)}
    if is_static(cache):
        kwargs["cache_position"] = positions
    return kwargs


def _new_replay(embeds: torch.Tensor) -> None:
    """Before each call of a compiled module on CUDA: its previous outputs may be overwritten."""
    mark_step = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
    if mark_step is not None and embeds.is_cuda:
        mark_step()
