"""Shared test set-up: deterministic torch, reference-data paths, isolated ROS 2 graphs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The reference fixtures: the copies in test/data, or another set in the same layout (for
# example ../shared/fixtures) named by LOC3R_FIXTURES_DIR.
DATA_DIR = Path(os.environ.get("LOC3R_FIXTURES_DIR") or Path(__file__).parent / "data")
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder of the reference data (cut3r_reference, llava_video_reference, eval_reference)."""
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
