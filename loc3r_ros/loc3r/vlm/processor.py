"""Pre-processing of LLaVA-Video: frames to pixel values, ChatML prompts with a video placeholder.

Frames: PIL bicubic resize of the uint8 image to 384 x 384 (aspect ratio not kept), x / 255 in
float64 stored as float32, then (x - 0.5) / 0.5 in float32, channels first (LLaVA-NeXT's
SigLipImageProcessor with its hard-coded settings). Prompt: the qwen_1_5 (ChatML) template, the
user turn starting with "<image>" and a newline, and LLaVA-Video's time instruction.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from loc3r.vlm.llava_video import IMAGE_TOKEN_INDEX

SYSTEM_PROMPT = "You are a helpful assistant."
VIDEO_PLACEHOLDER = "<image>"


def frames_to_pixel_values(frames: list[np.ndarray] | np.ndarray, size: int = 384) -> torch.Tensor:
    """(T, H, W, 3) uint8 RGB frames -> (T, 3, size, size) float32 in [-1, 1]."""
    out = []
    for frame in frames:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frames must be (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
        resized = np.asarray(Image.fromarray(frame).resize((size, size), Image.BICUBIC))
        scaled = (resized.astype(np.float64) * (1.0 / 255.0)).astype(np.float32)
        normalised = (scaled - np.float32(0.5)) / np.float32(0.5)
        out.append(normalised.transpose(2, 0, 1))
    if not out:
        raise ValueError("no frames")
    return torch.from_numpy(np.ascontiguousarray(np.stack(out)))


def time_instruction(num_frames: int, duration_s: float, frame_times_s: list[float]) -> str:
    """LLaVA-Video's time instruction, exactly as its model card writes it."""
    times = ",".join(f"{t:.2f}s" for t in frame_times_s)
    return (
        f"The video lasts for {duration_s:.2f} seconds, and {num_frames} frames are uniformly "
        f"sampled from it. These frames are located at {times}.Please answer the following "
        "questions related to this video."
    )


def chat_prompt(user_text: str, system: str = SYSTEM_PROMPT) -> str:
    """qwen_1_5 (ChatML) prompt for one user turn, ending with the assistant header."""
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user_text}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def tokenize_with_video(prompt: str, tokenizer) -> torch.Tensor:
    """Token ids of `prompt` with IMAGE_TOKEN_INDEX where "<image>" stands.

    Each side is tokenised separately, no special tokens added (tokenizer_image_token's way).
    """
    chunks = prompt.split(VIDEO_PLACEHOLDER)
    if len(chunks) != 2:
        raise ValueError(f"the prompt must contain {VIDEO_PLACEHOLDER!r} exactly once")
    before = tokenizer(chunks[0], add_special_tokens=False)["input_ids"]
    after = tokenizer(chunks[1], add_special_tokens=False)["input_ids"]
    return torch.tensor([*before, IMAGE_TOKEN_INDEX, *after], dtype=torch.long)
