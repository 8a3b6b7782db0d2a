"""LLaVA-Video (lmms-lab/LLaVA-Video-7B-Qwen2) from transformers blocks, in its original layout.

The base model of Loc3R-VLM: SigLIP vision tower (frozen), a 2-layer GELU projector, per-frame
bilinear pooling of the 27x27 patch grid to 14x14 with a newline embedding after each row
(mm_newline_position "grid": 210 tokens per frame), and a Qwen2 causal LM. Facts pinned by the
reference fixture (test/data/llava_video_reference, made with the original LLaVA-NeXT code):
- vision features: the SigLIP encoder truncated to `num_hidden_layers + 1 + mm_vision_select_layer`
  layers (the original deletes the last layer), last hidden state, before post_layernorm;
- projector: Linear -> exact (erf) GELU -> Linear, applied per token before pooling;
- pooling: torch bilinear interpolation to ceil(27 / 2), align_corners False, no antialias;
- newline: one `image_newline` after each row of 14 pooled tokens; frames in time order;
- vocabulary: embed_tokens and lm_head cut to len(tokenizer) rows, as the original builder does.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from loc3r.errors import Loc3rError

IMAGE_TOKEN_INDEX = -200  # placeholder id of the video in input_ids (LLaVA's convention)

# config.json keys of the LLaVA checkpoint that belong to the Qwen2 language model.
_QWEN2_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range",
    "rms_norm_eps", "use_cache", "tie_word_embeddings", "rope_theta", "use_sliding_window",
    "sliding_window", "max_window_layers", "attention_dropout", "bos_token_id", "eos_token_id",
)  # fmt: skip


class LlavaCheckpointError(Loc3rError, ValueError):
    """A LLaVA-Video checkpoint directory does not match the model (message names the keys)."""


@dataclass
class LlavaVideoConfig:
    """What the video path of LLaVA-Video needs; `from_pretrained` reads it from config.json."""

    text: dict  # Qwen2Config kwargs
    vision: dict  # SiglipVisionConfig kwargs (the hub tower, before truncation)
    mm_hidden_size: int = 1152
    mm_vision_select_layer: int = -2
    mm_projector_type: str = "mlp2x_gelu"
    mm_spatial_pool_mode: str = "bilinear"
    mm_newline_position: str = "grid"
    pool_stride: int = 2  # get_2dPool's default argument (the config's stride is not read)
    attn_implementation: str = "sdpa"  # "sdpa" (default) or "eager"
    raw: dict = field(default_factory=dict, repr=False)  # the full config.json

    def __post_init__(self) -> None:
        if self.mm_projector_type != "mlp2x_gelu":
            raise ValueError(f"unsupported mm_projector_type {self.mm_projector_type!r}")
        if self.mm_spatial_pool_mode not in ("bilinear", "average", "max"):
            raise ValueError(f"unsupported mm_spatial_pool_mode {self.mm_spatial_pool_mode!r}")
        if self.mm_newline_position not in ("grid", "no_token"):
            raise ValueError(f"unsupported mm_newline_position {self.mm_newline_position!r}")
        if self.mm_vision_select_layer >= 0:
            raise ValueError("mm_vision_select_layer must be negative (counted from the end)")

    @property
    def vision_layers_kept(self) -> int:
        """Encoder layers left after LLaVA's truncation (select_layer -2 drops the last one)."""
        return self.vision["num_hidden_layers"] + 1 + self.mm_vision_select_layer

    @property
    def grid(self) -> int:
        """Patches per side of one frame (27 for 384 / 14)."""
        return self.vision["image_size"] // self.vision["patch_size"]

    @property
    def pooled_grid(self) -> int:
        """Pooled tokens per side (ceil(27 / 2) = 14)."""
        return math.ceil(self.grid / self.pool_stride)

    @property
    def tokens_per_frame(self) -> int:
        """Video tokens per frame: 14 x 15 = 210 with grid newlines."""
        newline = 1 if self.mm_newline_position == "grid" else 0
        return self.pooled_grid * (self.pooled_grid + newline)

    @classmethod
    def from_dirs(
        cls, model_dir: str | Path, vision_tower_dir: str | Path, **overrides
    ) -> LlavaVideoConfig:
        """Read config.json of the checkpoint and of the SigLIP vision tower."""
        raw = json.loads((Path(model_dir) / "config.json").read_text())
        vision_raw = json.loads((Path(vision_tower_dir) / "config.json").read_text())
        vision_raw = vision_raw.get("vision_config", vision_raw)  # full SigLIP or vision-only
        missing = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size") if k not in raw]
        if missing:
            raise LlavaCheckpointError(f"{model_dir}/config.json lacks {missing}")
        vision_keys = (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps",
            "attention_dropout",
        )  # fmt: skip
        return cls(
            text={k: raw[k] for k in _QWEN2_KEYS if k in raw},
            vision={k: vision_raw[k] for k in vision_keys if k in vision_raw},
            mm_hidden_size=raw.get("mm_hidden_size", vision_raw["hidden_size"]),
            mm_vision_select_layer=raw.get("mm_vision_select_layer", -2),
            mm_projector_type=raw.get("mm_projector_type", "mlp2x_gelu"),
            mm_spatial_pool_mode=raw.get("mm_spatial_pool_mode", "bilinear"),
            mm_newline_position=raw.get("mm_newline_position", "grid"),
            raw=raw,
            **overrides,
        )


@functools.cache
def _cache_keyword(decoder_type: type) -> str:
    """`cache` if the decoder type's forward takes that keyword, else `past_key_values`."""
    parameters = inspect.signature(decoder_type.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(model: nn.Module, cache) -> dict:
    """The KV cache as a transformers decoder's forward takes it.

    `cache=` where the forward has that keyword (transformers 5 deprecates `past_key_values`
    and removes it in 5.40), `past_key_values=` where it has not.
    """
    return {_cache_keyword(type(model)): cache}


def repeating_period(tokens: list[int], repeats: int) -> int:
    """The shortest n such that `tokens` end with one n-gram `repeats` times in a row; 0: none.

    [5, 7, 7, 7] with repeats 3 -> 1; [1, 2, 1, 2, 1, 2] -> 2; [5, 7, 7] -> 0.
    """
    for period in range(1, len(tokens) // repeats + 1):
        tail = tokens[-period:]
        if all(
            tokens[len(tokens) - (k + 1) * period : len(tokens) - k * period] == tail
            for k in range(1, repeats)
        ):
            return period
    return 0


@dataclass
class SamplingConfig:
    """Sampled decoding instead of greedy (transformers' order: temperature, top-k, top-p)."""

    temperature: float = 0.7
    top_k: int = 20
    top_p: float = 0.8
    seed: int | None = None  # a fixed seed makes sampling reproducible

    def __post_init__(self) -> None:
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("need temperature > 0, 0 < top_p <= 1 and top_k >= 0")
        self._generator = torch.Generator()
        if self.seed is not None:
            self._generator.manual_seed(self.seed)

    def pick(self, scores: torch.Tensor) -> int:
        """Sample one token id from (V,) scores."""
        logits = scores.float().cpu() / self.temperature
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(-1)
        ordered, order = probs.sort(descending=True)
        outside = ordered.cumsum(-1) - ordered > self.top_p  # keep the smallest set >= top_p
        ordered[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, ordered)
        return int(torch.multinomial(probs / probs.sum(), 1, generator=self._generator))


def build_vision_tower(config: LlavaVideoConfig) -> SiglipVisionModel:
    """SigLIP as LLaVA-Video keeps it: the layers up to `mm_vision_select_layer`, no head."""
    vision = SiglipVisionConfig(**{**config.vision, "num_hidden_layers": config.vision_layers_kept})
    vision.vision_use_head = False
    vision._attn_implementation = config.attn_implementation
    return SiglipVisionModel(vision)


def vision_body(tower: nn.Module) -> nn.Module:
    """The module holding SigLIP's embeddings/encoder (transformers 4.x nests it)."""
    return getattr(tower, "vision_model", tower)


def tower_features(tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The tower's last kept layer, before post_layernorm: (T, 3, S, S) -> (T, patches, C)."""
    body = vision_body(tower)
    return body.encoder(inputs_embeds=body.embeddings(pixel_values)).last_hidden_state


class LlavaVideoModel(nn.Module):
    """SigLIP + projector + pooled grid tokens + Qwen2, the LLaVA-Video video path."""

    def __init__(self, config: LlavaVideoConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_tower = build_vision_tower(config)
        hidden = config.text["hidden_size"]
        self.mm_projector = nn.Sequential(
            nn.Linear(config.mm_hidden_size, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        self.image_newline = nn.Parameter(torch.zeros(hidden))
        text = Qwen2Config(**config.text)
        text._attn_implementation = config.attn_implementation
        self.language_model = Qwen2ForCausalLM(text)

    # --- video tokens ---------------------------------------------------------------------------
    @property
    def vision_body(self) -> nn.Module:
        """The module holding SigLIP's embeddings/encoder (transformers 4.x nests it)."""
        return vision_body(self.vision_tower)

    @property
    def vision_body_prefix(self) -> str:
        """State-dict prefix of `vision_body` inside `vision_tower` ("vision_model." or "")."""
        return "vision_model." if hasattr(self.vision_tower, "vision_model") else ""

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(T, 3, 384, 384) in [-1, 1] -> (T, 729, mm_hidden) SigLIP features.

        The truncated tower's last layer, before post_layernorm.
        """
        return tower_features(self.vision_tower, pixel_values.to(self.dtype))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(T, 729, D) projected tokens -> (T, 196, D) pooled per frame (get_2dPool)."""
        frames, tokens, dim = features.shape
        side = self.config.grid
        if tokens != side * side:
            raise ValueError(f"expected {side * side} tokens per frame, got {tokens}")
        grid = features.view(frames, side, side, dim).permute(0, 3, 1, 2)
        out_side = self.config.pooled_grid
        mode = self.config.mm_spatial_pool_mode
        if mode == "bilinear":
            grid = F.interpolate(grid, size=(out_side, out_side), mode="bilinear")
        elif mode == "average":
            grid = F.avg_pool2d(grid, self.config.pool_stride)
        else:
            grid = F.max_pool2d(grid, self.config.pool_stride)
        return grid.permute(0, 2, 3, 1).reshape(frames, -1, dim)

    def add_newlines(self, pooled: torch.Tensor) -> torch.Tensor:
        """(T, 196, D) -> (T, 210, D): one image_newline after each row of each frame."""
        if self.config.mm_newline_position != "grid":
            return pooled
        frames, _, dim = pooled.shape
        side = self.config.pooled_grid
        rows = pooled.view(frames, side, side, dim)
        newline = self.image_newline.to(pooled.dtype).expand(frames, side, 1, dim)
        return torch.cat([rows, newline], dim=2).reshape(frames, -1, dim)

    def frame_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(T, 3, 384, 384) -> (T, 210, hidden): each frame's video tokens, in order."""
        projected = self.mm_projector(self.vision_features(pixel_values))
        return self.add_newlines(self.pool(projected))

    # --- language model -------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype of the model."""
        return self.image_newline.dtype

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (no placeholders) -> embeddings."""
        return self.language_model.get_input_embeddings()(input_ids)

    def splice(self, input_ids: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """(S,) ids with one IMAGE_TOKEN_INDEX + (N, hidden) video -> (1, S-1+N, hidden) embeds."""
        if input_ids.dim() != 1:
            raise ValueError("splice takes one unbatched sequence of ids")
        where = (input_ids == IMAGE_TOKEN_INDEX).nonzero().flatten()
        if len(where) != 1:
            raise ValueError(f"expected one video placeholder in input_ids, found {len(where)}")
        i = int(where[0])
        before, after = self.embed_tokens(input_ids[:i]), self.embed_tokens(input_ids[i + 1 :])
        return torch.cat([before, video.to(before.dtype), after], dim=0)[None]

    def resize_vocabulary(self, rows: int) -> None:
        """Keep the first `rows` rows of the input embeddings and the LM head (or grow them)."""
        self.language_model.resize_token_embeddings(rows, mean_resizing=False)

    @torch.inference_mode()
    def generate_greedy(
        self,
        inputs_embeds: torch.Tensor,
        *,
        max_new_tokens: int = 64,
        stop_ids: tuple[int, ...] = (),
        repetition_penalty: float = 1.0,
        past_key_values=None,
        position_offset: int = 0,
        sampling: SamplingConfig | None = None,
        stop_repeats: int = 0,
        logits_processor=None,
        step=None,
        prefill=None,
    ) -> tuple[list[int], list[torch.Tensor]]:
        """Greedy decoding with the KV cache; returns new token ids and each step's raw logits.

        Decoding ends after a token of `stop_ids` (returned last) or `max_new_tokens` tokens.
        `repetition_penalty` follows transformers' rule on the tokens generated so far (the
        prompt is not penalised because generation runs from embeddings): a positive logit is
        divided by it, a negative one multiplied. `logits_processor` (a transformers
        LogitsProcessorList, or any callable of the same signature) then sees the tokens
        generated so far as (1, n) ids and the (1, V) scores. `stop_repeats` > 1 is a loop guard:
        when the tokens end with one n-gram repeated that many times in a row (see
        `repeating_period`), decoding stops and the copies after the first are dropped (with
        their logits). `past_key_values` / `position_offset` continue from a cached prefix (the
        prefix's length); a StaticCache is written at those positions (static_decoding), and
        `step`, a compiled copy of the language model, then runs the one-token steps, and
        `prefill(inputs_embeds, position_offset)`, when given, the multi-token first pass: it
        writes the inputs to the cache and returns the logits after their last token.
        """
        from transformers import DynamicCache

        from loc3r.vlm.static_decoding import forward_at

        tokens: list[int] = []
        step_logits: list[torch.Tensor] = []
        past_key_values = DynamicCache() if past_key_values is None else past_key_values
        embeds = inputs_embeds
        offset = position_offset
        for _ in range(max_new_tokens):
            if prefill is not None and embeds.shape[1] > 1:
                logits = prefill(embeds, offset)
            else:
                out = forward_at(self.language_model, past_key_values, embeds, offset, step)
                logits = out.logits[0, -1].to(torch.float32, copy=True)  # a replay reuses out
            offset += embeds.shape[1]
            step_logits.append(logits)
            scores = logits.clone()
            if repetition_penalty != 1.0 and tokens:
                seen = torch.tensor(sorted(set(tokens)), device=scores.device)
                picked = scores[seen]
                scores[seen] = torch.where(
                    picked > 0, picked / repetition_penalty, picked * repetition_penalty
                )
            if logits_processor is not None:
                ids = torch.tensor([tokens], dtype=torch.long, device=scores.device)
                scores = logits_processor(ids, scores[None])[0]
            token = int(scores.argmax()) if sampling is None else sampling.pick(scores)
            tokens.append(token)
            if token in stop_ids:
                break
            if stop_repeats > 1 and (period := repeating_period(tokens, stop_repeats)):
                del tokens[len(tokens) - (stop_repeats - 1) * period :]
                del step_logits[len(tokens) :]
                break
            embeds = self.embed_tokens(torch.tensor([[token]], device=embeds.device))
        return tokens, step_logits
