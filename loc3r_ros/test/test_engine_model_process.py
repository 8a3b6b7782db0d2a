"""Models in a child process: same answers as in-process, errors come back, death is reported."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from tiny_bundle import make_tiny_bundle

from loc3r.engine import EngineConfig, KeyframeConfig, SceneEngine
from loc3r.engine.model_process import ModelProcessError, SceneHandle, load_bundle_in_process
from loc3r.engine.models import ModelLoadError, load_bundle
from loc3r.errors import Loc3rError


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


def _frames(count: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(count)]


def _engine(bundle) -> SceneEngine:
    config = EngineConfig(
        keyframes=KeyframeConfig(min_interval_s=0.0, min_change=0.0, capacity=8),
        num_query_frames=4, perception_wait_s=60.0,
    )  # fmt: skip
    engine = SceneEngine(config)
    engine.set_models(bundle.model, bundle.perception, 4, bundle.geometry)
    for i, frame in enumerate(_frames()):
        engine.add_frame(frame, (i + 1) * 100_000_000)
    return engine


def test_same_results_as_in_process(bundle_dir):
    local = _engine(load_bundle(bundle_dir))
    remote_bundle, process = load_bundle_in_process(bundle_dir)
    try:
        assert process.alive and "model process" in remote_bundle.description
        remote = _engine(remote_bundle)
        for question, situation in [("What is on my left?", "I am on the bed"), ("Count?", "")]:
            a, b = local.ask(question, situation), remote.ask(question, situation)
            assert a.answer == b.answer and (a.pose is None) == (b.pose is None)
            if a.pose is not None:
                assert (a.pose.x, a.pose.y, a.pose.yaw) == pytest.approx(
                    (b.pose.x, b.pose.y, b.pose.yaw),
                    abs=1e-5,  # float32, other thread counts
                )
        pose_a, pose_b = (
            local.localize("I am by the door").pose,
            remote.localize("I am by the door").pose,
        )
        assert (pose_a.x, pose_a.y) == pytest.approx((pose_b.x, pose_b.y), abs=1e-5)
        assert remote.geometry is remote_bundle.geometry  # built in the child
        view, same = remote.scene_view(), local.scene_view()
        assert len(view.points) > 0 and len(view.camera_poses) == 4
        np.testing.assert_allclose(view.points, same.points, atol=1e-5)
        np.testing.assert_allclose(view.frame.bev_from_world, same.frame.bev_from_world, atol=1e-6)
        local.close()
        remote.close()
    finally:
        process.close()
    assert not process.alive


def test_errors_come_back_as_their_own_class(bundle_dir):
    bundle, process = load_bundle_in_process(bundle_dir)
    try:
        with pytest.raises(ModelProcessError, match="dropped"):
            bundle.model.answer(SceneHandle(12345), "What?", "")
        with pytest.raises(Loc3rError):
            bundle.perception.step(np.zeros((3, 3), np.float32))  # not an image
        assert process.alive  # failures do not end the child
        os.kill(process.process.pid, signal.SIGKILL)  # then a dead child is an error, not a hang
        process.process.join(10)
        with pytest.raises(ModelProcessError, match="exited"):
            bundle.perception.step(_frames(1)[0])
        with pytest.raises(ModelProcessError):
            bundle.perception.reset()  # stays broken, answers at once
    finally:
        process.close()


def test_load_failure_is_reported(tmp_path):
    with pytest.raises(ModelLoadError, match="bundle.json"):
        load_bundle_in_process(tmp_path)  # checked before a process starts
    (tmp_path / "bundle.json").write_text('{"format": "loc3r_bundle"}')
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_bundle_in_process(tmp_path)  # the child's loader error comes back


def test_a_camera_calibration_reaches_the_perception_in_the_child(bundle_dir):
    """Kept before the models arrive; a new one restarts perception from the kept keyframes."""
    bundle, process = load_bundle_in_process(bundle_dir)
    try:
        config = EngineConfig(
            keyframes=KeyframeConfig(min_interval_s=0.0, min_change=0.0, capacity=8),
            num_query_frames=4, perception_wait_s=60.0,
        )  # fmt: skip
        engine = SceneEngine(config)
        first = ((100.0, 90.0, 32.0, 24.0), (48, 64))
        assert engine.set_intrinsics(*first) is True  # no models yet: kept
        engine.set_models(bundle.model, bundle.perception, 4, bundle.geometry)
        for i, frame in enumerate(_frames()):
            engine.add_frame(frame, (i + 1) * 100_000_000)
        assert engine.worker.wait_idle(60) and engine.worker.processed == 4
        perceived = bundle.perception.config  # the proxy's copy, set through the child
        assert (perceived.intrinsics, perceived.intrinsics_hw) == first
        assert engine.set_intrinsics(*first) is False  # the same one: nothing restarts
        second = ((80.0, 80.0, 30.0, 20.0), (48, 64))
        assert engine.set_intrinsics(*second) is True
        assert engine.worker.wait_idle(60) and engine.worker.processed == 8  # all 4 again
        assert engine.worker.last_error == ""
        perceived = bundle.perception.config
        assert (perceived.intrinsics, perceived.intrinsics_hw) == second
        assert len(engine.processed_keyframes()) == 4 and engine.ask("Count?", "").answer
        with pytest.raises(ValueError, match="intrinsics"):
            engine.set_intrinsics((0.0, 90.0, 32.0, 24.0), (48, 64))  # an uncalibrated camera
        assert engine.intrinsics == second  # the invalid one was not kept
        engine.close()
    finally:
        process.close()
