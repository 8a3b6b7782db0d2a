"""The monocular depth network of the geometric pose source: shapes, files, resampling, bundles."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from tiny_bundle import make_tiny_bundle

from loc3r.cut3r import Cut3r, Cut3rConfig, preprocess_frame
from loc3r.engine.mono_depth import (
    MAX_DEPTH_M,
    MIN_DEPTH_M,
    MonoDepth,
    MonoDepthConfig,
    load_mono_depth,
    resample_depth,
    save_mono_depth,
)
from loc3r.engine.perception import Perception, PerceptionConfig

SMALL = MonoDepthConfig(image_size=64, widths=(4, 8, 8))


def image(height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_depth_is_positive_metric_and_at_the_input_resolution():
    torch.manual_seed(0)
    model = MonoDepth(SMALL).eval()
    depth = model(torch.rand(2, 3, 48, 64) * 2 - 1)
    assert depth.shape == (2, 48, 64)
    depth = depth.detach()
    assert float(depth.min()) >= MIN_DEPTH_M * 0.999 and float(depth.max()) <= MAX_DEPTH_M * 1.001
    assert model.log_depth(torch.zeros(1, 3, 48, 64)).shape == (1, 24, 32)
    z, frame = model.frame_depth(image())
    assert z.shape == frame.true_shape == (48, 64)


@pytest.mark.parametrize(("size", "widths"), [(60, (4, 8)), (16, (4, 8)), (64, (4,)), (64, (4, 0))])
def test_bad_sizes_are_refused(size, widths):
    with pytest.raises(ValueError, match="image_size|widths"):
        MonoDepthConfig(image_size=size, widths=widths)


def test_save_and_load_give_the_same_depth(tmp_path):
    torch.manual_seed(1)
    model = MonoDepth(SMALL).train()
    model(torch.rand(4, 3, 48, 64))  # batch-norm statistics move: they must be saved too
    model.eval()
    path = save_mono_depth(model, tmp_path / "depth")
    loaded = load_mono_depth(path)
    assert loaded.config == SMALL and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(1, 3, 48, 64) * 2 - 1
    assert torch.equal(model(x), loaded(x))


def test_broken_files_are_clear_errors(tmp_path):
    path = save_mono_depth(MonoDepth(SMALL), tmp_path / "depth")
    with pytest.raises(ValueError, match="cannot read"):
        load_mono_depth(tmp_path / "missing")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "format": "cut3r"}))
    with pytest.raises(ValueError, match="not a loc3r_mono_depth config"):
        load_mono_depth(path)
    (path / "config.json").write_text(json.dumps({**config, "widths": [4, 8, 16]}))
    with pytest.raises(ValueError, match=r"expected \(16"):
        load_mono_depth(path)
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="corrupt"):
        load_mono_depth(path)
    (path / "model.safetensors").unlink()  # a config without its weights
    with pytest.raises(ValueError, match=r"depth network in .*depth"):
        load_mono_depth(path)
    diverged = MonoDepth(SMALL)
    with torch.no_grad():
        next(diverged.parameters()).fill_(float("nan"))
    save_mono_depth(diverged, path)
    with pytest.raises(ValueError, match="non-finite depth network weights"):
        load_mono_depth(path)


def test_resampling_maps_through_the_image():
    """A depth linear in the image's x and y, seen on crops of other sizes (both axes cropped)."""
    for height, width in ((120, 200), (200, 120)):  # the first crops the height, the second both
        rgb = image(height, width)
        source = preprocess_frame(rgb, size=128)
        target = preprocess_frame(rgb, size=64)
        assert target.crop_xy != (0, 0)

        def depth_at(frame, hw):  # 1 + x / 100 + y / 50 at each map pixel's centre in the image
            h, w = hw
            rows, cols = np.mgrid[0:h, 0:w] + 0.5
            x = (cols * frame.true_shape[1] / w + frame.crop_xy[0]) * (
                frame.original_hw[1] / frame.resized_hw[1]
            )
            y = (rows * frame.true_shape[0] / h + frame.crop_xy[1]) * (
                frame.original_hw[0] / frame.resized_hw[0]
            )
            return (1 + x / 100 + y / 50).astype(np.float32)

        source_depth = depth_at(source, source.true_shape)
        for hw in (target.true_shape, (target.true_shape[0] // 2, target.true_shape[1] // 2)):
            resampled = resample_depth(source_depth, source, target, hw)
            assert resampled.shape == hw
            inner = (slice(2, -2), slice(2, -2))  # bilinear is exact on a linear map, off the edge
            np.testing.assert_allclose(resampled[inner], depth_at(target, hw)[inner], atol=1e-3)
        same = resample_depth(source_depth, source, source, source.true_shape)
        np.testing.assert_allclose(same, source_depth, atol=1e-5)


def test_a_wider_crop_gets_no_depth_where_the_network_saw_nothing():
    """CUT3R at 512 on a 16:9 frame keeps rows that the network's 128 px crop cuts off."""
    rgb = image(720, 1280)
    source = preprocess_frame(rgb, size=128)  # 128 x 64 of a 128 x 72 resize: 4 rows cut
    target = preprocess_frame(rgb, size=512)  # 512 x 288: every row
    assert source.crop_xy[1] > 0 and target.crop_xy == (0, 0)
    depth = np.full(source.true_shape, 2.0, np.float32)
    resampled = resample_depth(depth, source, target, target.true_shape)
    seen = np.isfinite(resampled)
    rows = np.flatnonzero(seen.all(axis=1))  # the width is not cropped: whole rows or none
    assert seen.sum() == len(rows) * seen.shape[1] and np.all(np.diff(rows) == 1)
    # 64 of the resize's 72 rows, 4 target rows each, and half a source pixel (2 rows) each side
    assert 256 <= len(rows) <= 260 and rows[0] == 288 - 1 - rows[-1]
    np.testing.assert_allclose(resampled[seen], 2.0)
    torch.manual_seed(5)
    model = MonoDepth(SMALL).eval()  # 64 px: a 64 x 32 crop of a 64 x 36 resize
    small = preprocess_frame(rgb, size=64)
    cut3r_points = np.ones((*target.true_shape, 3))
    moved = model.rescale_pointmap(rgb, cut3r_points, target)
    unseen = ~np.isfinite(resample_depth(model.frame_depth(rgb)[0], small, target,
                                         target.true_shape))  # fmt: skip
    assert unseen[0].all() and unseen.any(axis=1).sum() < len(unseen) // 4
    np.testing.assert_array_equal(moved[unseen], cut3r_points[unseen])  # CUT3R's points kept
    assert np.isfinite(moved).all() and not np.allclose(moved[~unseen], 1.0)


def test_the_pointmap_moves_along_its_rays_to_the_network_depth():
    torch.manual_seed(2)
    model = MonoDepth(SMALL).eval()
    rgb = image()
    frame = preprocess_frame(rgb, size=64)
    rng = np.random.default_rng(3)
    points = rng.normal(size=(*frame.true_shape, 3))
    points[..., 2] = rng.uniform(0.5, 4.0, frame.true_shape)
    points[0, 0, 2] = -1.0  # CUT3R behind the camera: that point is kept
    moved = model.rescale_pointmap(rgb, points, frame)
    depth, own = model.frame_depth(rgb)
    expected_z = resample_depth(depth, own, frame, frame.true_shape)
    np.testing.assert_allclose(moved[..., 2].ravel()[1:], expected_z.ravel()[1:], rtol=1e-5)
    np.testing.assert_array_equal(moved[0, 0], points[0, 0])
    rays, moved_rays = points[..., :2] / points[..., 2:], moved[..., :2] / moved[..., 2:]
    np.testing.assert_allclose(moved_rays, rays, rtol=1e-5, atol=1e-8)  # same directions


def test_perception_takes_the_network_depth_for_the_geometric_source():
    torch.manual_seed(4)
    cut3r = Cut3r(Cut3rConfig.tiny()).eval()
    depth = MonoDepth(SMALL).eval()
    with pytest.raises(ValueError, match="geometric pose source only"):
        Perception(cut3r, PerceptionConfig(image_size=64), depth)
    config = PerceptionConfig(image_size=64, pose_source="geometric", camera_tokens="geometry",
                              token_grid=2)  # fmt: skip
    frames = [image(seed=i) for i in range(3)]
    plain = Perception(cut3r, config).run_fresh(frames)
    with_depth = Perception(cut3r, config, depth).run_fresh(frames)
    frame = preprocess_frame(frames[0], size=64)
    cut3r_points = cut3r.step(cut3r.init_state(), frame).pts3d_self[0].double().numpy()
    moved = depth.rescale_pointmap(frames[0], cut3r_points, frame)
    # the first frame is the world's origin: its kept points are the network's, where CUT3R's
    # were (the same pixels: the confidence that picks them is CUT3R's in both)
    np.testing.assert_allclose(plain[0].pose_c2w, np.eye(4), atol=1e-12)
    flat, moved_flat = cut3r_points.reshape(-1, 3), moved.reshape(-1, 3)
    index = {tuple(p): i for i, p in enumerate(flat.astype(np.float32))}
    kept = [index[tuple(p)] for p in plain[0].points]
    assert len(kept) > 10
    np.testing.assert_allclose(with_depth[0].points, moved_flat[kept], rtol=1e-5, atol=1e-6)
    assert not torch.equal(with_depth[0].camera_token, plain[0].camera_token)


def test_a_bundle_ships_its_depth_network(tmp_path):
    from loc3r.engine.models import ModelLoadError, load_bundle, save_bundle

    bundle = load_bundle(make_tiny_bundle(tmp_path / "tiny"))
    depth = MonoDepth(SMALL).eval()
    vlm, cut3r = bundle.model.vlm, bundle.perception.model
    with pytest.raises(ValueError, match="geometric pose source only"):
        save_bundle(tmp_path / "bad", vlm, cut3r, cut3r_image_size=64, num_query_frames=4,
                    depth=depth)  # fmt: skip
    path = save_bundle(tmp_path / "with_depth", vlm, cut3r, cut3r_image_size=64,
                       num_query_frames=4, pose_source="geometric", depth=depth)  # fmt: skip
    spec = json.loads((path / "bundle.json").read_text())
    assert spec["depth_source"] == "mono_depth"
    loaded = load_bundle(path)
    assert isinstance(loaded.perception.depth, MonoDepth)
    x = torch.rand(1, 3, 48, 64) * 2 - 1
    assert torch.equal(loaded.perception.depth(x), depth(x))
    assert load_bundle(tmp_path / "tiny").perception.depth is None  # no key: CUT3R's depth
    (path / "bundle.json").write_text(json.dumps({**spec, "depth_source": "lidar"}))
    with pytest.raises(ModelLoadError, match="depth_source='lidar'"):
        load_bundle(path)
    (path / "bundle.json").write_text(json.dumps(spec))
    shutil.rmtree(path / "depth")
    with pytest.raises(ModelLoadError, match="cannot load .*depth network"):
        load_bundle(path)
    (path / "bundle.json").write_text(json.dumps({**spec, "pose_source": "cut3r"}))
    save_mono_depth(depth, path / "depth")
    with pytest.raises(ModelLoadError, match="geometric pose source only"):
        load_bundle(path)
