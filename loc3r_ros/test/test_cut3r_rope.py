"""2D RoPE: signed positions, dtype handling, and the fixture's sensitivity to the fp16 cast."""

from pathlib import Path

import numpy as np
import torch

from loc3r.cut3r import load_cut3r
from loc3r.cut3r.rope import RoPE2D

DATA = Path(__file__).parent / "data" / "cut3r_reference"


def test_negative_position_inverts_positive():
    rope = RoPE2D(100.0)
    tokens = torch.randn(2, 3, 5, 16, dtype=torch.float64)
    pos = torch.randint(0, 20, (2, 5, 2))
    back = rope(rope(tokens, pos), -pos)
    assert torch.allclose(back, tokens, atol=1e-6)


def test_position_zero_is_identity_and_norm_preserved():
    rope = RoPE2D(100.0)
    tokens = torch.randn(1, 2, 4, 8)
    assert torch.equal(rope(tokens, torch.zeros(1, 4, 2, dtype=torch.long)), tokens)
    rotated = rope(tokens, torch.randint(-9, 9, (1, 4, 2)))
    assert torch.allclose(rotated.norm(dim=-1), tokens.norm(dim=-1), atol=1e-5)


def test_relative_property():
    """<R(p) q, R(p') k> depends only on p - p' (what makes RoPE relative)."""
    rope = RoPE2D(100.0)
    q, k = (
        torch.randn(1, 1, 1, 8, dtype=torch.float64),
        torch.randn(1, 1, 1, 8, dtype=torch.float64),
    )

    def score(pq, pk):
        a = rope(q, torch.tensor([[pq]]))
        b = rope(k, torch.tensor([[pk]]))
        return float((a * b).sum())

    # angles are tabulated in float32 (as the reference), hence 1e-6 rather than 1e-12
    assert abs(score((3, 5), (1, 2)) - score((-1, 4), (-3, 1))) < 1e-6


def test_float16_tokens_stay_float16():
    rope = RoPE2D(100.0)
    out = rope(torch.randn(1, 2, 3, 8).half(), torch.randint(0, 4, (1, 3, 2)))
    assert out.dtype == torch.float16


def test_fixture_needs_the_float16_encoder_rope():
    """Without the encoder's float16 q/k rounding the reference is missed by far more than 1e-4."""
    model = load_cut3r(DATA / "cut3r_tiny_linear.pth")
    ref = np.load(DATA / "cut3r_tiny_linear.npz")
    images = torch.from_numpy(ref["frames_input"])
    with torch.no_grad():
        exact = model.encode(images)[0].numpy()
        for block in model.enc_blocks:
            block.attn.rope_dtype = torch.float32
        fp32 = model.encode(images)[0].numpy()
    assert np.abs(exact - ref["enc_feat"]).max() <= 1e-4
    assert np.abs(fp32 - ref["enc_feat"]).max() > 2e-4
