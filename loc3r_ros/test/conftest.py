"""Shared test set-up: deterministic torch, reference-data paths, isolated ROS 2 graphs."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder of the reference data copies (cut3r_reference, llava_video_reference, ...)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def tokenizer_dir(data_dir) -> Path:
    """The tiny LLaVA-Video tokenizer of the reference fixture (Qwen2's special tokens)."""
    return data_dir / "llava_video_reference" / "tiny_llava_video"


@pytest.fixture
def model(tokenizer_dir):
    """A seeded random tiny Loc3R-VLM (test files may define their own `model`)."""
    import torch
    from transformers import AutoTokenizer

    from loc3r.vlm.tiny import build_tiny_loc3r

    torch.manual_seed(0)
    return build_tiny_loc3r(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
