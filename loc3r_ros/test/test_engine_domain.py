"""The domain check: fitted on training-domain clips, it flags clips unlike them (engine.domain),
its calibration command (eval.domain), and the verdict in every reply (CLI)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from tiny_bundle import make_tiny_bundle

from loc3r.cli import main as cli_main
from loc3r.engine.domain import (
    FILE_NAME,
    IMAGE_STATISTICS,
    ClipFeatures,
    DomainModel,
    Gaussian,
    Roughness,
    image_statistics,
)
from loc3r.engine.models import DEFAULT_MODEL_DIR, ModelLoadError, load_bundle


def clips(rng, count: int, shift: float = 0.0, spread: float = 1.0) -> list[np.ndarray]:
    """(T=4, P=9, D=6) patch features: correlated Gaussian patches, optionally moved."""
    mix = np.random.default_rng(99).normal(size=(6, 6))
    return [rng.normal(size=(4, 9, 6)) @ mix * spread + shift for _ in range(count)]


def test_gaussian_distance_is_about_one_per_dimension_in_domain():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(5000, 8)) * np.arange(1, 9)
    gaussian = Gaussian.fit(vectors, shrinkage=0.0)
    assert np.median(gaussian.distance(rng.normal(size=(2000, 8)) * np.arange(1, 9))) == (
        pytest.approx(0.97, abs=0.05)
    )
    assert gaussian.distance(np.full((1, 8), 20.0))[0] > 3
    with pytest.raises(ValueError, match="more samples than feature dimensions"):
        Gaussian.fit(vectors[:8])


def test_held_out_clips_pass_and_moved_or_noisier_clips_are_flagged(tmp_path):
    rng = np.random.default_rng(1)
    model = DomainModel.fit(clips(rng, 200))
    held_out = model.calibrate(clips(rng, 200), quantile=0.95)
    assert np.median(held_out) == pytest.approx(1.0, abs=0.1)
    assert np.mean(np.array(held_out) > model.threshold) == pytest.approx(0.05, abs=0.011)
    fresh = [model.verdict(c).in_domain for c in clips(rng, 200)]
    assert 0.85 <= np.mean(fresh) <= 1.0  # the flag rate holds on clips the threshold never saw
    moved = model.verdict(clips(rng, 1, shift=3.0)[0])
    noisy = model.verdict(clips(rng, 1, spread=3.0)[0])
    for verdict in (moved, noisy):
        assert not verdict.in_domain and verdict.score > model.threshold
        assert "unlike the model's training data" in verdict.note
    model.description = "test rooms"
    path = model.save(tmp_path)
    assert path.name == FILE_NAME
    loaded = DomainModel.load(tmp_path)
    probe = clips(rng, 1, shift=1.0)[0]
    assert loaded.score(probe) == pytest.approx(model.score(probe), rel=1e-9)
    assert (loaded.threshold, loaded.scales, loaded.description) == (
        model.threshold, model.scales, "test rooms"
    )  # fmt: skip
    assert DomainModel.load(tmp_path / "missing") is None


def smooth_frames(rng, count: int = 4, size: int = 32) -> torch.Tensor:
    """(count, 3, size, size) blurred noise: pixels like a photograph's (neighbours alike)."""
    raw = rng.normal(size=(count, size, size, 3)).astype(np.float32)
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 3.0) for f in raw])
    return torch.from_numpy(blurred / blurred.std()).permute(0, 3, 1, 2)


def test_image_statistics_tell_sensor_noise_from_pictures_and_survive_blank_frames():
    rng = np.random.default_rng(3)
    smooth = image_statistics(smooth_frames(rng))
    noise = image_statistics(torch.from_numpy(rng.normal(size=(4, 3, 32, 32))))
    blank = image_statistics(torch.zeros(2, 3, 32, 32))
    assert smooth.shape == (4, IMAGE_STATISTICS) and blank.shape == (2, IMAGE_STATISTICS)
    assert (smooth > 0.7).all() and (np.abs(noise) < 0.1).all()
    assert np.isfinite(blank).all() and (blank == 1.0).all()  # no division by zero


def test_roughness_flags_noise_whose_tower_features_look_in_domain(tmp_path):
    rng = np.random.default_rng(4)

    def clip(pixels: torch.Tensor) -> ClipFeatures:  # the tower's features: in domain always
        return ClipFeatures(clips(rng, 1)[0], image_statistics(pixels))

    model = DomainModel.fit([clip(smooth_frames(rng)) for _ in range(200)])
    assert model.roughness is not None
    held_out = [clip(smooth_frames(rng)) for _ in range(200)]
    model.calibrate(held_out, quantile=0.99)
    assert max(model.roughness.score(c.images) for c in held_out) < 1.0  # rarely rougher
    assert model.verdict(clip(smooth_frames(rng))).in_domain
    blank = clip(torch.zeros(4, 3, 32, 32))  # smoother than any training frame: not rough
    assert model.roughness.score(blank.images) == 0.0
    noisy = clip(torch.from_numpy(rng.normal(size=(4, 3, 32, 32))))
    verdict = model.verdict(noisy)
    assert not verdict.in_domain and verdict.score > 3 * model.threshold, verdict
    # the same clip read by a check without the roughness passes: the tower alone misses it
    towers_only = DomainModel(model.patch, model.frame, model.scales, model.threshold)
    assert towers_only.verdict(noisy).in_domain
    with pytest.raises(ValueError, match="pixel statistics"):
        model.score(noisy.patches)  # the pixels are needed
    model.save(tmp_path)
    loaded = DomainModel.load(tmp_path)
    assert loaded.roughness is not None and loaded.scales == model.scales
    assert loaded.score(noisy) == pytest.approx(model.score(noisy), rel=1e-9)
    (tmp_path / "old").mkdir()
    towers_only.save(tmp_path / "old")  # a file written before the roughness
    assert DomainModel.load(tmp_path / "old").roughness is None
    for median, low, match in (
        (np.ones(4), np.ones(4), "below its median"),  # would divide by zero
        (np.ones(4), np.full(4, np.nan), "finite"),
        (np.ones(3), np.zeros(3), "medians and lows"),
    ):
        with pytest.raises(ValueError, match=match):
            Roughness(median, low)


def test_corrupt_domain_file_is_a_clear_load_error(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundle")
    (bundle / FILE_NAME).write_bytes(b"\x00garbage")
    with pytest.raises(ModelLoadError, match="not a loc3r domain model"):
        load_bundle(bundle)
    with pytest.raises(ValueError, match="positive"):
        DomainModel(Gaussian(np.zeros(2), np.eye(2)), Gaussian(np.zeros(4), np.eye(4)), (1, 1), 0)


def test_the_embedded_model_flags_noise_and_photographs_but_not_its_rooms(capsys, tmp_path):
    import matplotlib.cbook

    bundle = load_bundle(DEFAULT_MODEL_DIR)
    assert bundle.model.domain_model is not None  # shipped with it
    frames, size = bundle.num_query_frames, bundle.model.image_size
    rooms = tmp_path / "rooms"  # a room like those it trained on, at their frame count
    assert cli_main(["scene", str(rooms), "--as-trained", "--seed", "7"]) == 0
    capsys.readouterr()
    photo = cv2.imread(str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    noise, pan = tmp_path / "noise", tmp_path / "photo"
    noise.mkdir(), pan.mkdir()
    rng = np.random.default_rng(0)
    for i in range(frames):
        cv2.imwrite(str(noise / f"{i}.png"), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        x = 160 * i // frames
        cv2.imwrite(str(pan / f"{i}.png"), cv2.resize(photo[100:500, x : x + 400], (size, size)))
    verdicts = {}
    for name, source in (("rooms", rooms), ("noise", noise), ("photo", pan)):
        code = cli_main(["ask", str(source), "--question", "What is on my left?",
                         "--situation", "I am by the door"])  # fmt: skip
        printed = capsys.readouterr()
        assert code == 0, printed
        out = json.loads(printed.out)
        verdicts[name] = out["confidence"]
        assert 0.0 < out["confidence"]["answer_probability"] <= 1.0
        assert out["confidence"]["cut3r_confidence"] >= 1.0  # CUT3R's confidence is 1 + exp(.)
        if not out["confidence"]["in_domain"]:
            assert "unlike the model's training data" in printed.err
    assert verdicts["rooms"]["in_domain"] is True and verdicts["rooms"]["note"] == ""
    for name in ("noise", "photo"):
        assert verdicts[name]["in_domain"] is False, verdicts[name]
        assert verdicts[name]["domain_score"] > verdicts[name]["domain_threshold"]
        assert "treat the answer and the pose as unreliable" in verdicts[name]["note"]


def test_calibration_command_writes_a_domain_model_the_engine_loads(capsys, tmp_path):
    from loc3r.eval.domain import main as domain_main

    bundle = make_tiny_bundle(tmp_path / "bundle")
    assert load_bundle(bundle).model.domain_model is None  # no verdict without one
    argv = ["--model", str(bundle), "--fit-seeds", "1:31", "--check-seeds", "40:60",
            "--test-seeds", "60:70", "--image-size", "56", "--write"]  # fmt: skip
    assert domain_main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fit_frames"] == 120 and report["in_domain_clips"] == 20
    assert report["in_domain_flagged"] <= 0.05 and report["test_clips"] == 10
    assert {"photo:grace_hopper", "sensor_noise"} <= set(report["outside_scores"])
    loaded = load_bundle(bundle).model.domain_model
    assert loaded.threshold == pytest.approx(report["threshold"], abs=1e-4)
    assert domain_main(["--model", str(bundle), "--quantile", "1.5"]) == 2
