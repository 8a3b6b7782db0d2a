"""Motion honesty: a camera that never moves yields a camera path that does not move.

The engine with the embedded bundle (its geometric pose source) is fed one view, again and again
with sensor noise, as a static camera on a tripod would give: a rendered view of a textured room,
and a real photograph (matplotlib's sample picture: real texture, noise and blur).
"""

from __future__ import annotations

import numpy as np
import pytest

from loc3r.engine import EngineConfig, KeyframeConfig, SceneEngine
from loc3r.engine.models import load_bundle
from loc3r.scenes import EpisodeConfig, make_episode

SEC = 1_000_000_000


@pytest.fixture(scope="module")
def embedded():
    return load_bundle()


def still_view(source: str, seed: int) -> np.ndarray:
    """A 320 px view: a rendered textured room, or a crop of a real photograph."""
    if source == "photograph":
        import cv2
        import matplotlib.cbook

        path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        photo = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        return cv2.resize(photo[50:550, :], (320, 320), interpolation=cv2.INTER_AREA)
    config = EpisodeConfig(frames=1, image_size=320, look="textured")
    return make_episode(seed, config).frames[0].rgb


def static_clip(frames: int, seed: int = 920_000, source: str = "room") -> list[np.ndarray]:
    """One 320 px view with sigma-3 sensor noise on every frame."""
    view = still_view(source, seed)
    rng = np.random.default_rng(seed)
    noisy = [view + rng.normal(0.0, 3.0, view.shape) for _ in range(frames)]
    return [np.clip(f, 0, 255).astype(np.uint8) for f in noisy]


def camera_path(bundle, clip: list[np.ndarray], keyframes: KeyframeConfig) -> np.ndarray:
    """(K, 3) camera centres in the scene frame after streaming `clip` at 2 Hz."""
    engine = SceneEngine(EngineConfig(keyframes=keyframes), model=None)
    engine.set_models(bundle.model, bundle.perception, bundle.num_query_frames)
    try:
        for i, image in enumerate(clip):
            engine.add_frame(image, i * SEC // 2)
        assert engine.worker.wait_idle(120.0)
        view = engine.scene_view()
        return np.array([pose[:3, 3] for pose in view.camera_poses])
    finally:
        engine.close()


@pytest.mark.parametrize("source", ["room", "photograph"])
def test_a_still_camera_stays_still_and_keeps_one_keyframe(embedded, source):
    clip = static_clip(24, source=source)
    every = KeyframeConfig(max_interval_s=1.0, duplicate_change=0.0)  # force a keyframe per 1 s
    centres = camera_path(embedded, clip, every)
    assert len(centres) >= 10
    drift = np.linalg.norm(centres - centres[0], axis=1).max()
    assert drift <= 0.05, drift
    assert len(camera_path(embedded, clip, KeyframeConfig())) == 1  # the default: no copies


def test_the_tiny_cut3r_alone_would_report_motion(embedded):
    """What the geometric source replaces (so the test above can fail)."""
    from loc3r.engine.perception import Perception, PerceptionConfig

    cut3r_only = Perception(embedded.perception.model, PerceptionConfig(image_size=64))
    poses = [cut3r_only.step(image).pose_c2w for image in static_clip(12)]
    drift = max(np.linalg.norm(p[:3, 3] - poses[0][:3, 3]) for p in poses)
    assert drift > 0.05, drift
