"""Engine queries: frame sampling, the scene-prefix cache, streaming vs faithful perception."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from loc3r.cut3r import Cut3r, Cut3rConfig
from loc3r.engine import AgentPose, EngineConfig, KeyframeConfig, SceneEngine, sample_uniform
from loc3r.engine.perception import Perception, PerceptionConfig
from loc3r.errors import NotReadyError

SEC = 1_000_000_000


class RecordingModel:
    """A stand-in VLM: the 'scene' is a digest of the inputs; answers derive from it."""

    def __init__(self) -> None:
        self.encoded: list[tuple[int, torch.Tensor | None]] = []
        self.lock = threading.Lock()

    def encode_scene(self, images, camera_tokens):
        with self.lock:
            self.encoded.append((len(images), camera_tokens))
        digest = float(sum(int(im.sum()) for im in images) % 9973)
        if camera_tokens is not None:
            digest += float(camera_tokens.sum())
        return {"digest": digest, "frames": len(images)}

    def localize(self, scene, situation):
        return AgentPose(scene["digest"] % 7, len(situation) / 10, 0.1, 0.2, 0.3, 0.05)

    def answer(self, scene, question, situation):
        return f"{scene['frames']}:{question}", self.localize(scene, situation), 0.25

    def domain(self, scene):
        return None  # no domain model


def frame(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def make_engine(perception=None, **overrides) -> tuple[SceneEngine, RecordingModel]:
    model = RecordingModel()
    keyframes = KeyframeConfig(min_interval_s=0.0, min_change=0.0, capacity=64)
    config = EngineConfig(keyframes=keyframes, num_query_frames=4, **overrides)
    return SceneEngine(config, model=model, perception=perception), model


@pytest.mark.parametrize(("count", "available"), [(4, 2), (4, 4), (4, 10), (32, 200), (1, 5)])
def test_sample_uniform_covers_first_and_last(count, available):
    picked = sample_uniform(count, available)
    assert picked == sorted(set(picked)) and len(picked) == min(count, available)
    assert picked[0] == 0
    if count > 1:
        assert picked[-1] == available - 1


def test_warm_queries_reuse_the_prefix_and_match_a_cold_run():
    engine, model = make_engine(refresh_after_keyframes=3)
    for i in range(10):
        engine.add_frame(frame(i), i * SEC)
    cold = engine.ask("What is on my left?", "I am on the bed")
    warm = engine.ask("What is on my left?", "I am on the bed")
    assert not cold.cached and warm.cached and len(model.encoded) == 1
    assert (warm.answer, warm.pose) == (cold.answer, cold.pose)
    assert warm.num_frames == 4 and warm.first_stamp_ns == 0 and warm.last_stamp_ns == 9 * SEC
    assert "encode_scene" in cold.timings and "encode_scene" not in warm.timings

    other, _ = make_engine(refresh_after_keyframes=3)  # a fresh engine on the same frames
    for i in range(10):
        other.add_frame(frame(i), i * SEC)
    again = other.ask("What is on my left?", "I am on the bed")
    assert (again.answer, again.pose) == (cold.answer, cold.pose)

    engine.add_frame(frame(10), 10 * SEC)
    engine.add_frame(frame(11), 11 * SEC)
    assert engine.ask("q").cached  # 2 new keyframes < 3
    engine.add_frame(frame(12), 12 * SEC)
    refreshed = engine.ask("q")
    assert not refreshed.cached and refreshed.last_stamp_ns == 12 * SEC
    assert len(model.encoded) == 2


def test_reset_drops_the_prefix_and_the_frames():
    engine, model = make_engine()
    engine.add_frame(frame(1), SEC)
    engine.localize("I am by the door")
    engine.reset()
    with pytest.raises(NotReadyError, match="no frames yet"):
        engine.localize("I am by the door")
    engine.add_frame(frame(2), 2 * SEC)
    assert not engine.localize("I am by the door").cached


def test_concurrent_queries_never_corrupt_the_cache():
    engine, model = make_engine()
    for i in range(6):
        engine.add_frame(frame(i), i * SEC)
    expected = engine.ask("same question", "same situation")
    results, errors = [], []

    def worker() -> None:
        try:
            results.append(engine.ask("same question", "same situation"))
        except Exception as exc:  # pragma: no cover - would fail the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 8
    assert all((r.answer, r.pose) == (expected.answer, expected.pose) for r in results)
    assert len(model.encoded) == 1


@pytest.fixture(scope="module")
def perception() -> Perception:
    torch.manual_seed(0)
    model = Cut3r(Cut3rConfig.tiny()).eval()
    return Perception(
        model, PerceptionConfig(image_size=64, points_per_frame=64, min_confidence=1.0)
    )


def test_streaming_and_faithful_camera_tokens(perception):
    # each engine owns its stream state; they share the CUT3R weights
    streaming, model_s = make_engine(Perception(perception.model, perception.config))
    faithful, model_f = make_engine(
        Perception(perception.model, perception.config), mode="faithful"
    )
    try:
        for i in range(8):
            streaming.add_frame(frame(i), i * SEC)
            faithful.add_frame(frame(i), i * SEC)
        streaming.ask("q")
        faithful.ask("q")
        (_, tokens_s), (_, tokens_f) = model_s.encoded[0], model_f.encoded[0]
        dim = perception.model.config.dec_embed_dim
        assert tokens_s.shape == tokens_f.shape == (4, dim)
        picked = sample_uniform(4, 8)
        stream = perception.run_fresh([frame(i) for i in range(8)])
        expected_s = torch.stack([stream[i].camera_token for i in picked])
        expected_f = torch.stack(
            [p.camera_token for p in perception.run_fresh([frame(i) for i in picked])]
        )
        torch.testing.assert_close(tokens_s, expected_s)
        torch.testing.assert_close(tokens_f, expected_f)
        torch.testing.assert_close(tokens_s[0], tokens_f[0])  # frame 0 sees the same state
        assert not torch.allclose(tokens_s[1:], tokens_f[1:])  # later ones differ
    finally:
        streaming.close()
        faithful.close()
