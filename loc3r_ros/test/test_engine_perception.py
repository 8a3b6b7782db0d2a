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


@pytest.fixture(scope="module")
def shipped_cut3r():
    from loc3r.cut3r import load_cut3r
    from loc3r.engine.models import DEFAULT_MODEL_DIR

    return load_cut3r(DEFAULT_MODEL_DIR / "cut3r")


def test_geometric_pose_source_follows_a_held_out_walk_with_the_shipped_cut3r(shipped_cut3r):
    """Poses from two-view geometry, scaled by the shipped tiny CUT3R's depth, focal read off it."""
    from scipy.spatial.transform import Rotation

    from loc3r.scenes import EpisodeConfig, make_episode

    config = EpisodeConfig(frames=8, image_size=224, look="textured", walk="scan")
    errors = {"cut3r": [], "geometric": []}
    for seed in range(910_000, 910_004):
        episode = make_episode(seed, config)
        first = np.linalg.inv(episode.frames[0].pose_c2w)
        for source, found in errors.items():
            stream = Perception(shipped_cut3r, PerceptionConfig(image_size=64, pose_source=source))
            for frame in episode.frames:
                out = stream.step(frame.rgb)
                true = first @ frame.pose_c2w
                turn = Rotation.from_matrix(out.pose_c2w[:3, :3].T @ true[:3, :3]).magnitude()
                found.append((np.linalg.norm(out.pose_c2w[:3, 3] - true[:3, 3]), np.degrees(turn)))
                if source == "geometric" and len(out.points):
                    assert out.pose_registered is not None
                    # the points sit where the pose puts the camera: in front of it
                    local = (out.points - out.pose_c2w[:3, 3]) @ out.pose_c2w[:3, :3]
                    assert np.median(local[:, 2]) > 0
    geometric = np.median(errors["geometric"], axis=0)
    assert geometric[0] <= 0.25 and geometric[1] <= 5.0, geometric
    cut3r = np.median(errors["cut3r"], axis=0)
    assert cut3r[0] > 2 * geometric[0] and cut3r[1] > 2 * geometric[1]  # what it replaces


def test_a_still_camera_is_still_with_the_geometric_source(shipped_cut3r):
    from loc3r.scenes import EpisodeConfig, make_episode

    view = make_episode(910_010, EpisodeConfig(frames=1, image_size=224, look="textured")).frames[0]
    rng = np.random.default_rng(2)
    stream = Perception(shipped_cut3r, PerceptionConfig(image_size=64, pose_source="geometric"))
    still = PerceptionConfig(image_size=64)
    cut3r = Perception(shipped_cut3r, still)
    drift = {"geometric": [], "cut3r": []}
    for _ in range(10):
        noisy = np.clip(view.rgb + rng.normal(0, 3.0, view.rgb.shape), 0, 255).astype(np.uint8)
        drift["geometric"].append(np.linalg.norm(stream.step(noisy).pose_c2w[:3, 3]))
        drift["cut3r"].append(np.linalg.norm(cut3r.step(noisy).pose_c2w[:3, 3]))
    assert max(drift["geometric"]) <= 0.05
    assert max(drift["cut3r"]) > 0.05  # the shipped CUT3R alone would walk


def test_pose_source_and_intrinsics_are_validated():
    with pytest.raises(ValueError, match="pose_source"):
        PerceptionConfig(pose_source="gps")
    with pytest.raises(ValueError, match="intrinsics"):
        PerceptionConfig(intrinsics=(0.0, 100.0, 32.0, 24.0))
