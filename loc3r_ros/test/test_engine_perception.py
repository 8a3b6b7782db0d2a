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


def test_a_calibration_replaces_the_focal_read_off_cut3r_from_the_next_stream(shipped_cut3r):
    """Given intrinsics (e.g. a CameraInfo's) at another image size are scaled to the frames'."""
    from loc3r.scenes import EpisodeConfig, make_episode

    episode = make_episode(910_020, EpisodeConfig(frames=3, image_size=224, look="textured"))
    calibration = ((300.0, 260.0, 330.0, 230.0), (480, 640))  # (h, w): frames are 224 x 224
    scaled = np.array([[300.0 * 224 / 640, 0, 330.0 * 224 / 640], [0, 260.0 * 224 / 480,
                      230.0 * 224 / 480]])  # fmt: skip
    perception = Perception(shipped_cut3r, PerceptionConfig(image_size=64, pose_source="geometric"))
    perception.step(episode.frames[0].rgb)
    estimated = perception.odometry.odometry.K.copy()  # read off CUT3R's pointmap
    assert perception.set_intrinsics(*calibration) is False  # this stream keeps its camera
    perception.step(episode.frames[1].rgb)
    np.testing.assert_allclose(perception.odometry.odometry.K, estimated)
    perception.reset()  # the next stream uses the calibration, scaled to the frames' size
    perception.step(episode.frames[0].rgb)
    shrink = perception.odometry._shrink
    np.testing.assert_allclose(perception.odometry.odometry.K[:2] / shrink, scaled)
    fresh = Perception(shipped_cut3r, PerceptionConfig(image_size=64, pose_source="geometric"))
    assert fresh.set_intrinsics(*calibration) is True  # no frame yet: this stream uses it
    fresh.step(episode.frames[0].rgb)
    np.testing.assert_allclose(fresh.odometry.odometry.K, perception.odometry.odometry.K)
    with pytest.raises(ValueError, match="intrinsics_hw"):
        fresh.set_intrinsics(calibration[0], (0, 448))
    with pytest.raises(ValueError, match="intrinsics must be finite"):
        fresh.set_intrinsics((float("nan"), 1.0, 1.0, 1.0), (448, 448))


def test_a_first_frame_that_fails_leaves_the_stream_open_to_a_calibration(
    shipped_cut3r, monkeypatch
):
    from loc3r.engine.perception import GeometricPoses

    perception = Perception(shipped_cut3r, PerceptionConfig(image_size=64, pose_source="geometric"))

    def no_focal(*args, **kwargs):
        raise ValueError("CUT3R's pointmap gives no focal length; set the camera intrinsics")

    with monkeypatch.context() as patch:
        patch.setattr(GeometricPoses, "add", no_focal)
        with pytest.raises(ValueError, match="set the camera intrinsics"):
            perception.step(frames(1)[0])
    assert perception.set_intrinsics((60.0, 60.0, 32.0, 24.0), (48, 64)) is True  # as advised
    perception.step(frames(1)[0])
    assert perception.odometry.odometry.K[0, 0] == pytest.approx(60.0)


def test_a_pose_token_states_its_pose_back():
    from scipy.spatial.transform import Rotation

    from loc3r.engine.perception import pose_token, token_pose

    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("xyz", [10, -35, 70], degrees=True).as_matrix()
    pose[:3, 3] = [0.4, -1.2, 2.5]
    np.testing.assert_allclose(token_pose(pose_token(pose, 20)), pose, atol=1e-6)  # float32


def test_pose_source_and_intrinsics_are_validated():
    with pytest.raises(ValueError, match="pose_source"):
        PerceptionConfig(pose_source="gps")
    with pytest.raises(ValueError, match="intrinsics"):
        PerceptionConfig(intrinsics=(0.0, 100.0, 32.0, 24.0))


def test_pool_pointmap_averages_each_cell_and_skips_missing_points():
    from loc3r.engine.perception import pool_pointmap

    v, u = np.mgrid[0:8, 0:8].astype(np.float32)
    points = np.stack([u, v, np.ones_like(u)], axis=-1)
    pooled = pool_pointmap(points, 2)
    np.testing.assert_allclose(pooled[0, 0], [1.5, 1.5, 1.0])  # mean of u, v in 0..3
    np.testing.assert_allclose(pooled[1, 0], [1.5, 5.5, 1.0])  # row-major: rows follow v
    points[0:4, 0:4] = np.nan  # the whole first cell missing: zero
    points[4, 4] = np.inf  # one point of the last cell missing: the mean of the others
    pooled = pool_pointmap(points, 2)
    np.testing.assert_array_equal(pooled[0, 0], [0.0, 0.0, 0.0])
    rest = points[4:8, 4:8].reshape(-1, 3)[1:]
    np.testing.assert_allclose(pooled[1, 1], rest.mean(axis=0), rtol=1e-6)


def test_pool_pointmap_places_a_cropped_pointmap_in_the_whole_frame():
    """CUT3R crops a square frame to 4:3; the VLM's cells tile the whole frame."""
    from loc3r.cut3r import preprocess_frame
    from loc3r.engine.perception import pool_pointmap

    frame = preprocess_frame(np.zeros((224, 224, 3), np.uint8), size=64)
    assert frame.true_shape == (48, 64) and frame.crop_xy == (0, 8)  # rows 8..56 of 64
    v, u = np.mgrid[0:48, 0:64].astype(np.float64)
    points = np.stack([u, v + 8, np.ones_like(u)], axis=-1)  # x, y = the frame's own pixel
    pooled = pool_pointmap(points, 4, frame.resized_hw, frame.crop_xy)
    # cell rows cover frame rows 0-16, 16-32, 32-48, 48-64: the crop fills 8-16 of the first
    np.testing.assert_allclose(pooled[:, 0, 1], [11.5, 23.5, 39.5, 51.5])
    np.testing.assert_allclose(pooled[0, :, 0], [7.5, 23.5, 39.5, 55.5])
    pooled_wrong = pool_pointmap(points, 4)  # as if the crop were the whole frame
    assert not np.allclose(pooled_wrong[:, 0, 1], pooled[:, 0, 1])
    tall = pool_pointmap(points, 8, frame.resized_hw, frame.crop_xy)
    assert np.all(tall[0] == 0) and np.all(tall[7] == 0)  # above and below the crop: no points


def test_geometry_tokens_state_the_pose_and_the_pooled_posed_pointmap(perception):
    from loc3r.engine.perception import (
        geometry_token,
        pool_pointmap,
        pose_token,
        token_points,
    )

    width = 48
    pose = np.eye(4)
    pose[:3, 3] = [0.5, -0.25, 2.0]
    points = np.random.default_rng(0).normal(size=(16, 16, 3)).astype(np.float32)
    token = geometry_token(pose, points, 3, width)
    torch.testing.assert_close(token[:12], pose_token(pose, width)[:12])
    torch.testing.assert_close(token_points(token, 3), torch.from_numpy(
        pool_pointmap(points, 3).reshape(9, 3)).float())  # fmt: skip
    assert torch.all(token[12 + 27 :] == 0)
    with pytest.raises(ValueError, match="needs 60 values"):
        geometry_token(pose, points, 4, 48)

    from loc3r.cut3r import preprocess_frame

    cut3r = perception.model
    for source in ("cut3r", "geometric"):  # 24-wide tokens: a 2x2 grid
        config = PerceptionConfig(image_size=64, camera_tokens="geometry", token_grid=2,
                                  pose_source=source)  # fmt: skip
        stream = Perception(cut3r, config)
        state = cut3r.init_state()
        for image in frames(3):
            out = stream.step(image)
            prepared = preprocess_frame(image, size=64)
            with torch.inference_mode():
                direct = cut3r.step(state, prepared)
            if source == "cut3r":
                world = direct.pts3d_world[0].double().numpy()
            else:  # CUT3R's own-view points, posed where the geometric source puts the camera
                own = direct.pts3d_self[0].double().numpy()
                world = own @ out.pose_c2w[:3, :3].T + out.pose_c2w[:3, 3]
            expected = pool_pointmap(world, 2, prepared.resized_hw, prepared.crop_xy)
            torch.testing.assert_close(
                token_points(out.camera_token, 2), torch.from_numpy(expected.reshape(4, 3)),
                rtol=1e-5, atol=1e-5,
            )  # fmt: skip
    with pytest.raises(ValueError, match="token_grid"):
        PerceptionConfig(camera_tokens="geometry")


def test_camera_tokens_widen_to_a_geometry_token_cut3rs_width_cannot_hold(perception):
    from loc3r.engine.perception import camera_token_width, token_points

    assert camera_token_width(96, "geometry", 8) == 12 + 3 * 64  # an 8x8 grid: 204 values
    assert camera_token_width(768, "geometry", 8) == 768  # the DPT CUT3R's tokens hold it
    assert camera_token_width(96, "pose", 8) == camera_token_width(96, "cut3r") == 96
    cut3r = perception.model  # 24-wide tokens
    for mode, grid, width in (("cut3r", 0, 24), ("pose", 0, 24), ("geometry", 2, 24),
                              ("geometry", 3, 39)):  # fmt: skip
        config = PerceptionConfig(image_size=64, camera_tokens=mode, token_grid=grid)
        stream = Perception(cut3r, config)
        assert stream.token_width == width
        out = stream.run_fresh(frames(2))
        assert all(f.camera_token.shape == (width,) for f in out)
        if mode == "geometry":  # every cell of the grid states a point (CUT3R sees them all)
            points = token_points(out[1].camera_token, grid)
            assert points.isfinite().all() and (points.abs().sum(-1) > 0).all()
