"""A tiny random model bundle (CUT3R + Loc3R-VLM) for tests that run the real pipeline."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from loc3r.cut3r import Cut3r, Cut3rConfig
from loc3r.engine.models import save_bundle
from loc3r.vlm import Loc3rVLMConfig
from loc3r.vlm.tiny import build_tiny_loc3r

DATA = Path(__file__).parent / "data"


def make_tiny_bundle(directory: Path, seed: int = 0, image_size: int = 56, frames: int = 4) -> Path:
    """Write a random tiny bundle (CUT3R 64 px; VLM frames of image_size px; frames per query)."""
    torch.manual_seed(seed)
    cut3r = Cut3r(Cut3rConfig.tiny()).eval()
    tokenizer = AutoTokenizer.from_pretrained(
        str(DATA / "llava_video_reference" / "tiny_llava_video")
    )
    config = Loc3rVLMConfig(cam_token_dim=cut3r.config.dec_embed_dim, max_new_tokens=6)
    vlm = build_tiny_loc3r(tokenizer, config, image_size=image_size).eval()
    return save_bundle(
        directory,
        vlm,
        cut3r,
        cut3r_image_size=64,
        num_query_frames=frames,
        description="tiny random test bundle",
    )
