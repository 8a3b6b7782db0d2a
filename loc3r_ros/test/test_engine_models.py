"""Model bundles: save/load, the engine running the real (tiny, random) pipeline, load errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from tiny_bundle import make_tiny_bundle

from loc3r.engine import EngineConfig, KeyframeConfig, SceneEngine
from loc3r.engine.models import ModelLoadError, load_bundle, resolve_device

SEC = 1_000_000_000


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def frame(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)


def test_engine_answers_with_the_real_pipeline(bundle_dir):
    bundle = load_bundle(bundle_dir)
    config = EngineConfig(keyframes=KeyframeConfig(min_interval_s=0.0, min_change=0.0))
    engine = SceneEngine(config)
    try:
        for i in range(3):
            engine.add_frame(frame(i), i * SEC)  # buffered before the models arrive
        engine.set_models(bundle.model, bundle.perception, bundle.num_query_frames)
        for i in range(3, 8):
            engine.add_frame(frame(i), i * SEC)
        result = engine.ask("What is on my left?", "I am sitting on the bed")
        assert result.num_frames == 4 and result.first_stamp_ns == 0
        assert result.last_stamp_ns == 7 * SEC
        pose = result.pose
        assert all(math.isfinite(v) for v in (pose.x, pose.y, pose.yaw, pose.sigma_x))
        assert pose.sigma_x > 0 and 0 <= pose.yaw_spread <= math.pi
        assert isinstance(result.answer, str)
        assert {"cut3r", "encode_scene", "query"} <= set(result.timings)
        again = engine.localize("I am sitting on the bed")
        assert again.cached and (again.pose.x, again.pose.y) == (pose.x, pose.y)
        view = engine.scene_view(voxel=0.01, max_points=500)
        assert len(view.camera_poses) == len(view.stamps_ns) == 8
        np.testing.assert_allclose(view.camera_poses[0][:3, 3], 0.0, atol=1e-6)  # BEV origin
        assert 0 < len(view.points) <= 500 and view.points.dtype == np.float32
        assert view.frame.source in ("floor_fit", "level_camera") and view.frame.detail
        engine.set_gravity(np.array([0.0, -1.0, 0.0]))
        given = engine.scene_view()
        assert given.frame.source == "given"
        np.testing.assert_allclose(given.camera_poses[0][:3, 3], 0.0, atol=1e-6)
    finally:
        engine.close()


def test_load_errors_name_the_problem(bundle_dir, tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="no bundle.json"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="invalid JSON"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps({"format": "loc3r_bundle"}))
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_bundle(tmp_path)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        resolve_device("cuda")


def test_the_bundle_chooses_the_pose_source(bundle_dir, tmp_path):
    import shutil

    from loc3r.engine.models import DEFAULT_MODEL_DIR, read_bundle_spec

    assert load_bundle(bundle_dir).perception.config.pose_source == "cut3r"  # the default
    assert read_bundle_spec(DEFAULT_MODEL_DIR)["pose_source"] == "geometric"  # the embedded one
    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    spec = json.loads((copy / "bundle.json").read_text())
    (copy / "bundle.json").write_text(json.dumps({**spec, "pose_source": "geometric"}))
    assert load_bundle(copy).perception.config.pose_source == "geometric"
    (copy / "bundle.json").write_text(json.dumps({**spec, "pose_source": "lidar"}))
    with pytest.raises(ModelLoadError, match="pose_source='lidar'"):
        load_bundle(copy)
