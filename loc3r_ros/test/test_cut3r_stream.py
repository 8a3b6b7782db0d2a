"""CUT3R streaming API on a tiny random model: stream == run, constant state, dtypes, errors."""

import numpy as np
import pytest
import torch

from loc3r.cut3r import Cut3r, Cut3rConfig, Cut3rInputError, Cut3rOutput, preprocess_frame


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Cut3r(Cut3rConfig.tiny()).eval()


@pytest.fixture(scope="module")
def frames():
    gen = torch.Generator().manual_seed(1)
    return [torch.rand(1, 3, 48, 64, generator=gen) * 2 - 1 for _ in range(6)]


def _assert_outputs_equal(a: Cut3rOutput, b: Cut3rOutput):
    for name in (
        "camera_token",
        "pose_c2w",
        "pose_encoding",
        "pts3d_self",
        "pts3d_world",
        "conf_self",
        "conf_world",
        "rgb",
    ):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_stream_equals_run(model, frames):
    batch = model.run(frames)
    state = model.init_state()
    for i, frame in enumerate(frames):
        out = model.step(state, frame)
        assert out.frame_index == i
        _assert_outputs_equal(out, batch[i])
    assert state.frame_index == len(frames)


def test_output_shapes_and_ranges(model, frames):
    out = model.run(frames[:2])[1]
    dim = model.config.dec_embed_dim
    assert out.camera_token.shape == (1, dim)
    assert out.pose_c2w.shape == (1, 4, 4) and out.pose_encoding.shape == (1, 7)
    assert out.pts3d_self.shape == out.pts3d_world.shape == (1, 48, 64, 3)
    assert out.conf_self.shape == out.conf_world.shape == (1, 48, 64)
    assert bool((out.conf_self >= 1).all()) and bool((out.conf_world >= 1).all())
    assert out.pts3d_self[..., 2].min() >= 0  # own-view depth forced positive
    assert torch.allclose(out.pose_encoding[:, 3:].norm(dim=-1), torch.ones(1), atol=1e-5)
    assert out.pose_encoding[0, 3] >= 0
    rot = out.pose_c2w[0, :3, :3]
    assert torch.allclose(rot @ rot.T, torch.eye(3), atol=1e-5)
    assert torch.allclose(out.pose_c2w[0, :3, 3], out.pose_encoding[0, :3])


def test_state_size_constant_and_changing(model, frames):
    state = model.init_state()
    sizes, shapes = [], []
    previous = state.state_feat.clone()
    for frame in frames:
        model.step(state, frame)
        sizes.append(state.num_elements())
        shapes.append((tuple(state.state_feat.shape), tuple(state.memory.shape)))
        assert not torch.equal(previous, state.state_feat)  # the state really updates
        previous = state.state_feat.clone()
    assert len(set(sizes)) == 1 and len(set(shapes)) == 1
    cfg = model.config
    assert shapes[0] == (
        (1, cfg.state_size, cfg.dec_embed_dim),
        (1, cfg.local_mem_size, 2 * cfg.dec_embed_dim),
    )


def test_first_frame_uses_pose_token_later_memory(model, frames):
    outs = model.run(frames[:2], return_intermediates=True)
    assert torch.equal(outs[0].intermediates["pose_token_in"], model.pose_token[:, 0].detach())
    assert not torch.equal(
        outs[1].intermediates["pose_token_in"], outs[0].intermediates["pose_token_in"]
    )


def test_update_false_keeps_state(model, frames):
    state = model.init_state()
    model.step(state, frames[0])
    feat, memory = state.state_feat.clone(), state.memory.clone()
    a = model.step(state, frames[1], update=False)
    assert torch.equal(state.state_feat, feat) and torch.equal(state.memory, memory)
    state.frame_index = 1
    b = model.step(state, frames[1])
    _assert_outputs_equal(a, b)


def test_reset_restores_initial_state(model, frames):
    state = model.init_state()
    for frame in frames[:3]:
        model.step(state, frame)
    state.reset()
    fresh = model.init_state()
    assert torch.equal(state.state_feat, fresh.state_feat)
    assert torch.equal(state.memory, fresh.memory)


def test_batched_streams_match_single_streams(model, frames):
    pair = [torch.cat([frames[i], frames[-1 - i]]) for i in range(3)]
    batched = model.run(pair)
    first = model.run(frames[:3])
    for i in range(3):
        assert torch.allclose(batched[i].camera_token[0], first[i].camera_token[0], atol=1e-5)
        assert torch.allclose(batched[i].pts3d_world[0], first[i].pts3d_world[0], atol=1e-4)


def test_numpy_input_is_preprocessed(model):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(40, 70, 3), dtype=np.uint8)
    state = model.init_state()
    out = model.step(state, image)
    expected = preprocess_frame(image, size=max(model.config.img_size))
    assert out.pts3d_self.shape[1:3] == expected.true_shape
    again = model.run([expected])[0]
    assert torch.equal(out.camera_token, again.camera_token)


def test_input_errors(model):
    state = model.init_state()
    with pytest.raises(Cut3rInputError, match="multiple of patch"):
        model.step(state, torch.zeros(1, 3, 30, 64))
    with pytest.raises(Cut3rInputError, match=r"\(B, 3, H, W\)"):
        model.step(state, torch.zeros(1, 4, 32, 32))
    with pytest.raises(Cut3rInputError, match="float"):
        model.step(state, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(Cut3rInputError, match="batch"):
        model.step(state, torch.zeros(2, 3, 32, 32))
    with pytest.raises(Cut3rInputError, match="Cut3rState"):
        model.step("state", torch.zeros(1, 3, 32, 32))
    with pytest.raises(Cut3rInputError):
        model.run([])
    assert state.frame_index == 0


def test_bfloat16_backbone_runs_close_to_float32(frames):
    torch.manual_seed(0)
    reference = Cut3r(Cut3rConfig.tiny()).eval()
    low = Cut3r(Cut3rConfig.tiny()).eval()
    low.load_state_dict(reference.state_dict())
    low.set_compute_dtype(torch.bfloat16)
    assert low.compute_dtype == torch.bfloat16
    assert low.downstream_head.pose_head.mlp.fc1.weight.dtype == torch.float32
    ref_out, low_out = reference.run(frames[:3]), low.run(frames[:3])
    for a, b in zip(ref_out, low_out, strict=True):
        assert b.camera_token.dtype == torch.float32 and torch.isfinite(b.pts3d_world).all()
        assert (a.camera_token - b.camera_token).abs().max() < 0.25
        assert (a.pose_c2w - b.pose_c2w).abs().max() < 0.1


def test_cpu_autocast_runs(model, frames):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = model.run(frames[:2])
    assert outs[1].pose_c2w.dtype == torch.float32
    assert torch.isfinite(outs[1].camera_token).all()


@pytest.mark.parametrize(
    ("head", "backend", "tolerance"),
    [
        ("linear", "aot_eager", 1e-5),
        ("dpt", "aot_eager", 1e-5),
        # inductor fuses kernels and so reorders float sums: ~1e-4 after six recurrent frames
        ("dpt", "inductor", 1e-3),
    ],
)
def test_the_compiled_step_streams_as_the_eager_one(frames, head, backend, tolerance):
    """compile_step traces a whole frame as one graph (fullgraph) and changes no output.

    Two graphs per stream shape (frame 0 reads the pose token, later frames the memory), then
    reused by every later frame and stream; gradients and intermediates stay eager.
    """
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    config = Cut3rConfig.tiny() if head == "linear" else Cut3rConfig.from_dict(
        {**Cut3rConfig.tiny().to_dict(), "head_type": "dpt", "patch_size": 16}
    )  # fmt: skip
    model = Cut3r(config).eval()
    expected = model.run(frames)
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    model.compile_step({"backend": backend})
    for _ in range(2):  # two streams: the second compiles nothing
        state = model.init_state()
        for frame, reference in zip(frames, expected, strict=True):
            out = model.step(state, frame)
            for name in ("camera_token", "pose_encoding", "pts3d_world", "conf_world"):
                torch.testing.assert_close(getattr(out, name), getattr(reference, name),
                                           rtol=tolerance, atol=tolerance)  # fmt: skip
        assert counters["stats"]["unique_graphs"] - before == 2
    traced = model.step(model.init_state(), frames[0], return_intermediates=True)
    assert "dec_block_out" in traced.intermediates  # the eager path
    assert counters["stats"]["unique_graphs"] - before == 2
    model.compile_step(None)
    assert model._compiled_frame is None


def test_a_model_compiled_before_any_eager_frame_keeps_its_caches_clean(frames):
    """Traced frames neither read nor fill RoPE's tables, so compiling first changes nothing."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = Cut3r(Cut3rConfig.tiny()).eval()
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    model.compile_step({"backend": "aot_eager"})
    batched = [torch.cat([f, f.flip(-1)]) for f in frames[:3]]  # two streams at once
    compiled = model.run(batched)
    assert counters["stats"]["unique_graphs"] - before == 2
    assert model.rope._cache == {} and model.rope._token_cache == {}
    model.compile_step(None)
    for out, reference in zip(compiled, model.run(batched), strict=True):
        torch.testing.assert_close(out.camera_token, reference.camera_token, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.pts3d_world, reference.pts3d_world, rtol=1e-5, atol=1e-5)
