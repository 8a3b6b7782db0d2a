"""2D RoPE: signed positions, dtype handling, the fixture's sensitivity to the fp16 cast, and
the per-token table cache (bit-identical to the uncached form, reused across frames)."""

import numpy as np
import pytest
import torch
from conftest import DATA_DIR

from loc3r.cut3r import Cut3r, Cut3rConfig, load_cut3r
from loc3r.cut3r.rope import RoPE2D

DATA = DATA_DIR / "cut3r_reference"


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


# ------------------------------------------------------------------ cached per-token tables
def _signed_positions(batch: int, num: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randint(-40, 300, (batch, num, 2), generator=gen)
    pos[:, 0] = -1  # the camera token
    return pos


def _reference_any_rank(rope: RoPE2D, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The old uncached gather-and-rotate form, for (B, ..., N, Dh) tokens."""
    flat = tokens.reshape(tokens.shape[0], -1, *tokens.shape[-2:])
    return rope._reference_rotate(flat, pos).reshape(tokens.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 7, 16), (2, 3, 2, 7, 16), (1, 4, 7, 64)])
def test_cached_rotation_is_bit_identical_to_the_uncached_form(dtype, shape):
    rope = RoPE2D(100.0)
    tokens = (torch.randn(shape) * 3).to(dtype)
    pos = _signed_positions(shape[0], shape[-2], seed=shape[-1])
    expected = _reference_any_rank(rope, tokens, pos)
    for _ in range(2):  # first call builds the tables, the second reuses them
        out = rope(tokens, pos)
        assert out.dtype == dtype
        assert torch.equal(out, expected)
    # a non-contiguous q/k view of a fused qkv projection (what SelfAttention passes)
    qkv = torch.randn(shape[0], shape[-2], 3, 2, shape[-1]).to(dtype).transpose(1, 3)
    qk = qkv[:, :, :2]
    assert torch.equal(rope(qk, pos), _reference_any_rank(rope, qk.contiguous(), pos))


def test_tables_are_reused_and_keyed_by_positions_width_dtype_device():
    rope = RoPE2D(100.0)
    pos = _signed_positions(1, 6, seed=0)
    cos, sin = rope.token_tables(pos, 16, torch.device("cpu"), torch.float32)
    assert rope.calls_built == 1
    again = rope.token_tables(pos, 16, torch.device("cpu"), torch.float32)
    assert again[0] is cos and again[1] is sin and rope.calls_built == 1
    for _ in range(3):  # frames of a stream: no rebuild
        rope(torch.randn(1, 2, 6, 16), pos)
    assert rope.calls_built == 1
    half = rope.token_tables(pos, 16, torch.device("cpu"), torch.float16)
    assert half[0].dtype == torch.float16 and rope.calls_built == 2
    wide = rope.token_tables(pos, 32, torch.device("cpu"), torch.float32)
    assert wide[0].shape == (1, 6, 32) and rope.calls_built == 3
    meta = rope.token_tables(pos, 16, torch.device("meta"), torch.float32)
    assert meta[0].device.type == "meta" and rope.calls_built == 4
    # equal content but another tensor: its own entry (identity, not content, is the key)
    rope.token_tables(pos.clone(), 16, torch.device("cpu"), torch.float32)
    assert rope.calls_built == 5
    assert rope.token_tables(pos, 16, torch.device("cpu"), torch.float32)[0] is cos


def test_in_place_change_of_positions_rebuilds_the_tables():
    rope = RoPE2D(100.0)
    pos = _signed_positions(1, 5, seed=1)
    tokens = torch.randn(1, 2, 5, 8)
    rope(tokens, pos)
    pos[0, 2] = torch.tensor([7, -3])
    assert torch.equal(rope(tokens, pos), rope._reference_rotate(tokens, pos))
    assert rope.calls_built == 2


def test_inference_tensor_positions_are_not_cached_but_correct():
    rope = RoPE2D(100.0)
    with torch.inference_mode():
        pos = _signed_positions(1, 5, seed=2)
        tokens = torch.randn(1, 2, 5, 8)
        assert torch.equal(rope(tokens, pos), rope._reference_rotate(tokens, pos))
        rope(tokens, pos)
    assert rope.calls_built == 2 and not rope._token_cache


def test_moving_the_module_clears_the_tables():
    rope = RoPE2D(100.0)
    rope(torch.randn(1, 2, 5, 8), _signed_positions(1, 5, seed=3))
    assert rope._token_cache and rope._cache
    rope.to(torch.float64)
    assert not rope._token_cache and not rope._cache


def _tiny_model() -> Cut3r:
    torch.manual_seed(0)
    return Cut3r(Cut3rConfig.tiny()).eval()


def test_a_stream_builds_its_tables_once():
    """One table per (positions, dtype) of a step: encoder fp16, head fp32, image and state
    streams of the decoders; later frames (and the memory read from frame 1 on) reuse them."""
    model = _tiny_model()
    frames = torch.rand(4, 1, 3, 48, 64) * 2 - 1
    with torch.inference_mode():  # as the engine runs it
        state = model.init_state()
        model.step(state, frames[0])
        built = model.rope.calls_built
        assert built == 4
        for frame in frames[1:]:
            model.step(state, frame)
        assert model.rope.calls_built == built
        _, pos_a = model.encode(frames[0])
        _, pos_b = model.encode(frames[1])
    assert pos_a is pos_b and not pos_a.is_inference()


def test_cached_model_equals_the_uncached_rope(monkeypatch):
    """Whole stream (float16 encoder RoPE, signed camera position, state positions) with the
    cached tables vs the old per-call gather-and-rotate RoPE: bit-identical."""
    model = _tiny_model()
    gen = torch.Generator().manual_seed(4)
    frames = [torch.rand(1, 3, 48, 64, generator=gen) * 2 - 1 for _ in range(3)]
    cached = model.run(frames, return_intermediates=True)
    monkeypatch.setattr(RoPE2D, "forward", _reference_any_rank)
    uncached = model.run(frames, return_intermediates=True)
    for a, b in zip(cached, uncached, strict=True):
        for name in ("pose_encoding", "pts3d_self", "pts3d_world", "conf_self", "conf_world"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        for name, value in a.intermediates.items():
            assert torch.equal(value, b.intermediates[name]), name
