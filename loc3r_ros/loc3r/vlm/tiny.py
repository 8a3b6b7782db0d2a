"""Tiny Loc3R-VLM configurations for tests, benchmarks and the embedded default model."""

from __future__ import annotations

from loc3r.vlm.llava_video import LlavaVideoConfig, LlavaVideoModel
from loc3r.vlm.loc3r_vlm import Loc3rVLM, Loc3rVLMConfig


def tiny_llava_config(
    *,
    vocab_size: int,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    image_size: int = 56,
    patch_size: int = 14,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    pool_stride: int = 2,
    pool_mode: str = "bilinear",
    attn_implementation: str = "sdpa",
) -> LlavaVideoConfig:
    """A LLaVA-Video config with the real structure and tiny sizes (56 px -> 2x2 pooled grid).

    `pool_stride` 2 pools each frame's patch grid 2x2 as LLaVA-Video does; 1 keeps every patch.
    `pool_mode` is LLaVA-Video's mm_spatial_pool_mode ("bilinear", "average" or "max").
    """
    return LlavaVideoConfig(
        text={
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "use_sliding_window": False,
            "max_window_layers": layers,
        },
        vision={
            "hidden_size": vision_hidden,
            "intermediate_size": 2 * vision_hidden,
            "num_hidden_layers": vision_layers + 1,  # LLaVA drops the last layer
            "num_attention_heads": 2,
            "num_channels": 3,
            "image_size": image_size,
            "patch_size": patch_size,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
        },
        mm_hidden_size=vision_hidden,
        pool_stride=pool_stride,
        mm_spatial_pool_mode=pool_mode,
        attn_implementation=attn_implementation,
    )


def build_tiny_loc3r(tokenizer, config: Loc3rVLMConfig | None = None, **sizes) -> Loc3rVLM:
    """A randomly initialised tiny Loc3R-VLM around `tokenizer` (vocab = len(tokenizer) + 2)."""
    llava = tiny_llava_config(vocab_size=len(tokenizer) + 2, **sizes)
    return Loc3rVLM(LlavaVideoModel(llava), tokenizer, config or Loc3rVLMConfig(cam_token_dim=24))
