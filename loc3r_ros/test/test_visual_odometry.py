"""Textured scan walks and the geometric pose source (loc3r.engine.visual_odometry)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from loc3r.cut3r import preprocess_frame
from loc3r.engine.visual_odometry import (
    DepthMap,
    OdometryConfig,
    VisualOdometry,
    batch_poses,
    registration_rate,
)
from loc3r.scenes import EpisodeConfig, make_episode
from loc3r.scenes.render import camera_pose, intrinsics, render
from loc3r.scenes.textures import make_look
from loc3r.scenes.world import generate_room

HELD_OUT = range(910_000, 910_004)  # seeds no training run uses
SCAN = EpisodeConfig(frames=8, image_size=224, look="textured", walk="scan")


def _pose_errors(estimated: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Translation (m) and rotation (deg) between two 4x4 poses."""
    delta = Rotation.from_matrix(estimated[:3, :3].T @ true[:3, :3]).magnitude()
    return float(np.linalg.norm(estimated[:3, 3] - true[:3, 3])), math.degrees(delta)


def _odometry(frames, order) -> dict[int, np.ndarray]:
    """Poses (first frame of `order` = identity) of frames fed in `order`, with true depth."""
    odometry = VisualOdometry(frames[0].K)
    return {i: odometry.add(frames[i].rgb, DepthMap(frames[i].depth)).pose_c2w for i in order}


def _heading_steps(episode) -> np.ndarray:
    """Degrees the camera's heading turns between consecutive frames (signed)."""
    headings = [math.atan2(f.pose_c2w[1, 2], f.pose_c2w[0, 2]) for f in episode.frames]
    return np.degrees(np.angle(np.exp(1j * np.diff(headings))))


@pytest.fixture(scope="module")
def scan_episodes():
    return [make_episode(seed, SCAN) for seed in HELD_OUT]


def test_scan_walks_turn_both_ways_smoothly_and_are_deterministic():
    turns = []
    for seed in range(20):
        episode = make_episode(seed, EpisodeConfig(frames=16, image_size=16, walk="scan"))
        headings = [math.atan2(f.pose_c2w[1, 2], f.pose_c2w[0, 2]) for f in episode.frames]
        steps = np.degrees(np.abs(np.angle(np.exp(1j * np.diff(headings)))))
        assert steps.max() <= SCAN.max_turn_deg + 1.0  # + what pitch and roll add to it
        turns.append(float(np.sum(np.angle(np.exp(1j * np.diff(headings))))))
    assert min(turns) < -0.5 and max(turns) > 0.5  # left and right turns both occur
    again = make_episode(3, EpisodeConfig(frames=16, image_size=16, walk="scan"))
    first = make_episode(3, EpisodeConfig(frames=16, image_size=16, walk="scan"))
    assert all(
        np.array_equal(a.pose_c2w, b.pose_c2w)
        for a, b in zip(again.frames, first.frames, strict=True)
    )


def test_room_scans_see_the_whole_room_and_their_frames_still_overlap():
    """room_scan: the scan turning 270-400 degrees (capped per frame), to see most of the room."""
    from loc3r.train.synthetic_data import relative_pose_errors

    def turns(walk: str) -> list[float]:
        out = []
        for seed in range(20):
            config = EpisodeConfig(frames=24, image_size=16, walk=walk)
            steps = _heading_steps(make_episode(seed, config))
            assert np.abs(steps).max() <= config.max_turn_deg + 1.0
            out.append(abs(float(steps.sum())))
        return out

    room, scan = turns("room_scan"), turns("scan")
    assert min(room) >= 150.0 and np.median(room) >= 200.0  # measured: 163 and 233 degrees
    assert np.median(room) > np.median(scan) + 50.0
    # with true depth, the matcher registers consecutive frames of textured room scans
    scan = EpisodeConfig(frames=24, image_size=224, look="textured", walk="room_scan")
    episode = make_episode(HELD_OUT[0], scan)
    odometry = VisualOdometry(episode.frames[0].K)
    poses = [odometry.add(f.rgb, DepthMap(f.depth)).pose_c2w for f in episode.frames]
    assert registration_rate([f.rgb for f in episode.frames], episode.frames[0].K) >= 0.9
    errors = relative_pose_errors(poses, [f.pose_c2w for f in episode.frames])
    # drift accumulates over 24 frames without loop closure: measured 0.27 m, 8-frame scans 0.18 m
    assert np.median(errors[:, 0]) <= 0.35 and np.median(errors[:, 1]) <= 5.0


def test_room_scans_render_evenly_spaced_steps_of_one_scan_whatever_the_frame_count():
    """Fewer frames sample the same room scan (they do not see less of the room)."""
    from loc3r.scenes.episode import ROOM_SCAN_STEPS, camera_walk

    def walk(seed: int, frames: int) -> list[np.ndarray]:
        room = generate_room(seed)
        config = EpisodeConfig(frames=frames, walk="room_scan")
        return camera_walk(room, config, np.random.default_rng(seed))

    for seed in range(5):
        video = walk(seed, ROOM_SCAN_STEPS)
        for frames in (1, 2, 16):
            picked = np.linspace(0, ROOM_SCAN_STEPS - 1, frames).round().astype(int)
            sampled = walk(seed, frames)
            assert len(sampled) == frames
            assert all(np.array_equal(video[i], p) for i, p in zip(picked, sampled, strict=True))
        longer = walk(seed, ROOM_SCAN_STEPS + 8)  # more frames than steps: every step rendered
        assert len(longer) == ROOM_SCAN_STEPS + 8
    # so 16 frames turn as far as the scan does; a plain scan of 16 frames turns less
    turned = {}
    for walk_name in ("room_scan", "scan"):
        totals = []
        for seed in range(20):
            episode = make_episode(seed, EpisodeConfig(frames=16, image_size=16, walk=walk_name))
            totals.append(abs(float(_heading_steps(episode).sum())))
        turned[walk_name] = float(np.median(totals))
    assert turned["room_scan"] >= 200.0 and turned["room_scan"] > turned["scan"] + 50.0


def test_textured_surfaces_look_the_same_from_every_view():
    room = generate_room(5)
    look = make_look(room, 5)
    K = intrinsics(128, 75.0)  # noqa: N806
    centre = np.array([room.width / 2, room.depth / 2, 1.4])
    a = render(room, camera_pose(centre, 0.3), K, (128, 128), look)
    b = render(room, camera_pose(centre + [0.2, 0.1, 0.0], 0.45, 0.05), K, (128, 128), look)
    # the surface point of each pixel of a, projected into b
    v, u = np.mgrid[0:128, 0:128] + 0.5
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    world = (rays * a.depth[..., None]) @ a.pose_c2w[:3, :3].T + a.pose_c2w[:3, 3]
    cam_b = (world - b.pose_c2w[:3, 3]) @ b.pose_c2w[:3, :3]
    pix = cam_b[..., :2] / cam_b[..., 2:] * K[0, 0] + K[0, 2]
    cols, rows = np.floor(pix[..., 0]).astype(int), np.floor(pix[..., 1]).astype(int)
    inside = (cols >= 0) & (cols < 128) & (rows >= 0) & (rows < 128) & (cam_b[..., 2] > 0)
    visible = inside.copy()  # not hidden in b: b's depth there equals the point's depth
    visible[inside] = np.abs(b.depth[rows[inside], cols[inside]] - cam_b[..., 2][inside]) < 0.01
    assert visible.mean() > 0.3
    diff = np.abs(a.rgb[visible].astype(int) - b.rgb[rows[visible], cols[visible]].astype(int))
    assert np.median(diff) <= 6  # same point, same colour (up to pixel-grid sampling)
    assert a.rgb.std() > 20  # and there is texture to see


def test_a_classical_matcher_registers_textured_scans_and_not_the_flat_sweeps(scan_episodes):
    rates = [registration_rate([f.rgb for f in e.frames], e.frames[0].K) for e in scan_episodes]
    assert np.mean(rates) >= 0.9, rates
    flat = [make_episode(seed, EpisodeConfig(frames=8, image_size=224)) for seed in HELD_OUT]
    flat_rates = [registration_rate([f.rgb for f in e.frames], e.frames[0].K) for e in flat]
    assert np.mean(flat_rates) <= 0.2, flat_rates  # what the embedded model was trained on


def test_geometric_poses_match_the_true_walk(scan_episodes):
    translation, rotation = [], []
    for episode in scan_episodes:
        first = np.linalg.inv(episode.frames[0].pose_c2w)
        poses = _odometry(episode.frames, range(len(episode.frames)))
        for index, pose in poses.items():
            t, r = _pose_errors(pose, first @ episode.frames[index].pose_c2w)
            translation.append(t)
            rotation.append(r)
    assert np.median(translation) <= 0.25 and np.median(rotation) <= 5.0
    moved = [np.linalg.norm(e.frames[-1].pose_c2w[:3, 3] - e.frames[0].pose_c2w[:3, 3])
             for e in scan_episodes]  # fmt: skip
    assert np.median(translation) < 0.5 * np.median(moved)  # better than standing still


def test_played_backwards_the_stream_finds_the_same_relative_poses(scan_episodes):
    for episode in scan_episodes:
        count = len(episode.frames)
        true = [np.linalg.inv(episode.frames[0].pose_c2w) @ f.pose_c2w for f in episode.frames]
        for order in (range(count), range(count - 1, -1, -1)):
            poses = _odometry(episode.frames, order)
            errors = [_pose_errors(np.linalg.inv(poses[0]) @ poses[i], true[i])
                      for i in range(1, count)]  # fmt: skip
            t, r = np.median(errors, axis=0)
            assert t <= 0.25 and r <= 5.0, (list(order), errors)


def test_shuffled_the_batch_solve_finds_the_same_relative_poses(scan_episodes):
    rng = np.random.default_rng(0)
    for episode in scan_episodes:
        count = len(episode.frames)
        order = np.r_[0, rng.permutation(np.arange(1, count))]
        images = [f.rgb for f in episode.frames]
        depths = [DepthMap(f.depth) for f in episode.frames]
        forward = batch_poses(images, episode.frames[0].K, depths)
        shuffled = batch_poses([images[i] for i in order], episode.frames[0].K,
                               [depths[i] for i in order])  # fmt: skip
        unshuffled = dict(zip(order.tolist(), shuffled, strict=True))
        registered = [i for i in range(1, count) if forward[i] is not None]
        assert len(registered) >= count - 2  # a frame may match no other (it keeps None)
        assert registered == [i for i in range(1, count) if unshuffled[i] is not None]
        errors = [_pose_errors(forward[i], unshuffled[i]) for i in registered]
        t, r = np.median(errors, axis=0)
        assert t <= 0.1 and r <= 2.0, (order, errors)


def test_a_still_camera_stays_still_under_sensor_noise():
    room = generate_room(11)
    look = make_look(room, 11)
    K = intrinsics(224, 75.0)  # noqa: N806
    view = render(room, camera_pose(np.array([room.width / 2, room.depth / 2, 1.4]), 1.0), K,
                  (224, 224), look)  # fmt: skip
    rng = np.random.default_rng(1)
    odometry = VisualOdometry(K)
    for index in range(12):
        noisy = np.clip(view.rgb + rng.normal(0, 3.0, view.rgb.shape), 0, 255).astype(np.uint8)
        frame = odometry.add(noisy, DepthMap(view.depth))
        t, r = _pose_errors(frame.pose_c2w, np.eye(4))
        assert frame.registered and (frame.static or index == 0)
        assert t <= 0.05 and r <= 0.5


def test_depth_of_a_cut3r_crop_is_sampled_where_the_crop_shows_it():
    image = np.zeros((120, 200, 3), np.uint8)
    prepared = preprocess_frame(image, size=64)
    height, width = prepared.true_shape
    depth = np.arange(height * width, dtype=np.float64).reshape(height, width) + 1.0
    depth_map = DepthMap.from_crop(depth, (120, 200), prepared.resized_hw, prepared.crop_xy)
    x0, y0 = prepared.crop_xy
    scale = prepared.resized_hw[1] / 200
    row, col = 5, 7  # a crop pixel, and the image pixel at its centre
    image_xy = np.array([[(col + 0.5 - (-x0)) / scale, (row + 0.5 - (-y0)) / scale]])
    assert depth_map.sample(image_xy)[0] == depth[row, col]
    assert np.isnan(depth_map.sample(np.array([[-50.0, 10.0], [1e4, 1e4]]))).all()


def test_bad_input_is_a_clear_error_and_a_blank_frame_keeps_the_pose():
    with pytest.raises(ValueError, match="intrinsics"):
        VisualOdometry(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="ratio"):
        OdometryConfig(ratio=1.5)
    odometry = VisualOdometry(intrinsics(64))
    with pytest.raises(ValueError, match="uint8"):
        odometry.add(np.zeros((64, 64, 3), np.float32))
    odometry.add(np.full((64, 64, 3), 128, np.uint8))
    held = np.eye(4)
    held[0, 3] = 0.3
    blank = odometry.add(np.full((64, 64, 3), 90, np.uint8), fallback_pose=held)
    assert not blank.registered and np.array_equal(blank.pose_c2w, held)
    assert not odometry.add(np.zeros((64, 64), np.uint8)).registered
