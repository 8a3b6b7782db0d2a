"""The perception stage: CUT3R per keyframe in a worker thread, fresh runs equal the stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loc3r.cut3r import Cut3r, Cut3rConfig
from loc3r.engine.frame_buffer import Keyframe
from loc3r.engine.perception import Perception, PerceptionConfig, PerceptionWorker


@pytest.fixture(scope="module")
def perception() -> Perception:
    torch.manual_seed(0)
    model = Cut3r(Cut3rConfig.tiny()).eval()
    return Perception(
        model, PerceptionConfig(image_size=64, points_per_frame=100, min_confidence=1.0)
    )


def frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


def test_step_outputs_are_well_formed(perception):
    perception.reset()
    out = perception.step(frames(1)[0])
    dim = perception.model.config.dec_embed_dim
    assert out.camera_token.shape == (dim,) and out.camera_token.dtype == torch.float32
    assert out.pose_c2w.shape == (4, 4)
    np.testing.assert_allclose(out.pose_c2w[3], [0, 0, 0, 1])
    assert 0 < len(out.points) <= 100 and out.points.shape[1] == 3
    assert out.colors.dtype == np.uint8 and len(out.colors) == len(out.points)
    assert np.all(out.confidence >= 1.0) and np.all(np.diff(out.confidence) <= 0)


def test_worker_matches_a_fresh_run_and_restarts_after_reset(perception):
    images = frames(4)
    expected = perception.run_fresh(images)
    perception.reset()
    worker = PerceptionWorker(perception)
    try:
        keyframes = [Keyframe(i, i, image) for i, image in enumerate(images)]
        for keyframe in keyframes:
            worker.submit(keyframe)
        assert worker.wait_idle(30)
        for keyframe, ref in zip(keyframes, expected, strict=True):
            torch.testing.assert_close(keyframe.perception.camera_token, ref.camera_token)
            np.testing.assert_allclose(keyframe.perception.pose_c2w, ref.pose_c2w, atol=1e-6)
        worker.reset()
        again = [Keyframe(i, i, image) for i, image in enumerate(images[:2])]
        for keyframe in again:
            worker.submit(keyframe)
        assert worker.wait_idle(30)
        torch.testing.assert_close(again[1].perception.camera_token, expected[1].camera_token)
        assert worker.processed == 6 and worker.failed == 0
    finally:
        worker.close()


def test_worker_survives_a_bad_frame(perception):
    worker = PerceptionWorker(perception)
    try:
        bad = Keyframe(0, 0, np.zeros((8, 8, 3), np.float32))  # not uint8
        good = Keyframe(1, 1, frames(1)[0])
        worker.submit(bad)
        worker.submit(good)
        assert worker.wait_idle(30)
        assert worker.failed == 1 and worker.last_error
        assert bad.perception is None and good.perception is not None
    finally:
        worker.close()
