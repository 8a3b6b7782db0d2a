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
