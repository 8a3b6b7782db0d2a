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


@pytest.mark.parametrize(
    "bad", ["left", [], ["left", ""], ["left", 3], {"left": 1}, None, [["left"]]]
)
def test_a_malformed_answer_vocabulary_is_a_load_error(bundle_dir, tmp_path, bad):
    import shutil

    from loc3r.engine.models import read_bundle_spec

    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    spec = json.loads((copy / "bundle.json").read_text())
    (copy / "bundle.json").write_text(json.dumps({**spec, "answer_vocabulary": bad}))
    for load in (read_bundle_spec, load_bundle):
        with pytest.raises(ModelLoadError, match="bundle.json: answer_vocabulary: .*strings"):
            load(copy)


def test_the_bundle_declares_its_answer_vocabulary(bundle_dir, tmp_path):
    import torch

    from loc3r.engine.models import save_bundle

    bundle = load_bundle(bundle_dir)
    vlm = bundle.model.vlm
    assert vlm.answer_vocabulary is None  # no field: free decoding, as before
    vocabulary = ["left", "right", "in front", "behind"]
    with pytest.raises(ValueError, match="answer vocabulary"):  # checked before writing
        save_bundle(tmp_path / "bad", vlm, bundle.perception.model, cut3r_image_size=64,
                    num_query_frames=4, answer_vocabulary=["left", ""])  # fmt: skip
    assert not (tmp_path / "bad").exists()
    path = save_bundle(tmp_path / "vocab", vlm, bundle.perception.model, cut3r_image_size=64,
                       num_query_frames=4, answer_vocabulary=vocabulary)  # fmt: skip
    assert json.loads((path / "bundle.json").read_text())["answer_vocabulary"] == vocabulary
    loaded = load_bundle(path)
    assert loaded.model.vlm.answer_vocabulary == tuple(vocabulary)
    images = [frame(i) for i in range(4)]
    tokens = torch.stack([p.camera_token for p in loaded.perception.run_fresh(images)])
    scene = loaded.model.encode_scene(images, tokens)
    for question in ("What is on my left?", "How many chairs are there?", "Anything?"):
        answer, _, probability = loaded.model.answer(scene, question, "I am sitting on the bed")
        assert answer in vocabulary
        # its share of the vocabulary's mass: the most likely entry holds at least 1/len
        assert 1 / len(vocabulary) - 1e-6 <= probability <= 1.0
        scores = loaded.model.vlm.score_answers(scene.prefix, question, "I am sitting on the bed")
        assert probability == pytest.approx(float(scores.softmax(-1).max()), rel=1e-5)


def test_the_embedded_model_answers_within_its_vocabulary():
    from loc3r.engine.models import DEFAULT_MODEL_DIR, read_bundle_spec
    from loc3r.scenes import EpisodeConfig, answer_vocabulary
    from loc3r.train.pipeline import predict_cases
    from loc3r.train.synthetic_data import build_episodes

    expected = sorted(answer_vocabulary())
    assert read_bundle_spec(DEFAULT_MODEL_DIR)["answer_vocabulary"] == expected
    bundle = load_bundle()
    vlm = bundle.model.vlm
    assert vlm.answer_vocabulary == tuple(expected)
    size = bundle.model.image_size
    config = EpisodeConfig(frames=bundle.num_query_frames, image_size=size)
    grid = math.ceil((size // 14) / 2)
    episodes = build_episodes([1000000, 1000001], config, bundle.perception, grid, False)
    cases = predict_cases(vlm, episodes, size, progress=False)
    assert len(cases) > 30 and all(c.prediction in expected for c in cases)


QUESTIONS = [
    ("What is on my left, next to the tall lamp by the window?", "I am sitting on the bed"),
    ("Which way?", "I stand by the door"),
]


def engine_replies(bundle) -> list[tuple[str, float, float, float]]:
    config = EngineConfig(keyframes=KeyframeConfig(min_interval_s=0.0, min_change=0.0))
    engine = SceneEngine(config)
    try:
        engine.set_models(bundle.model, bundle.perception, bundle.num_query_frames)
        for i in range(6):
            engine.add_frame(frame(i), i * SEC)
        replies = []
        for question, situation in QUESTIONS:
            result = engine.ask(question, situation)
            replies.append(
                (result.answer, result.pose.x, result.pose.y, result.confidence.answer_probability)
            )
        return replies
    finally:
        engine.close()


def test_every_decoding_mode_answers_as_the_dynamic_cache(bundle_dir):
    """static and graphs (the one-token step and the text pass compiled at load; inductor on
    the CPU) change how answers are computed, not what they are (float32, tiny random bundle)."""
    import torch
    from torch._dynamo.utils import counters

    from loc3r.vlm.static_decoding import capacity, is_static

    expected = engine_replies(load_bundle(bundle_dir))
    assert any(answer for answer, *_ in expected)
    for mode in ("static", "graphs"):
        torch._dynamo.reset()
        graphs_before = counters["stats"]["unique_graphs"]
        bundle = load_bundle(bundle_dir, decoding=mode)
        compiled_at_load = counters["stats"]["unique_graphs"] - graphs_before
        vlm = bundle.model.vlm
        assert vlm.static_decoding is not None
        assert (vlm.static_decoding.compile is not None) == (mode == "graphs")
        assert compiled_at_load == (2 if mode == "graphs" else 0)
        got = engine_replies(bundle)
        for (answer, x, y, p), (answer_0, x_0, y_0, p_0) in zip(got, expected, strict=True):
            assert answer == answer_0, mode
            assert (x, y) == (pytest.approx(x_0, abs=1e-5), pytest.approx(y_0, abs=1e-5))
            assert p == pytest.approx(p_0, rel=1e-4)
        images = [frame(i) for i in range(2)]  # a scene shorter than the bundle's 4 frames
        tokens = torch.stack([p.camera_token for p in bundle.perception.run_fresh(images)])
        short = bundle.model.encode_scene(images, tokens)
        assert is_static(short.prefix.cache)
        bundle.model.answer(short, "Which way?", "I stand by the door")
        if mode == "graphs":  # one shape for every scene of up to 4 frames: nothing recompiled
            assert capacity(short.prefix.cache) == vlm.static_decoding.min_capacity
            assert counters["stats"]["unique_graphs"] - graphs_before == compiled_at_load


def test_decoding_modes_that_do_not_apply_are_load_errors(bundle_dir, tmp_path):
    import shutil

    with pytest.raises(ModelLoadError, match="decoding must be one of dynamic, static, graphs"):
        load_bundle(bundle_dir, decoding="fast")
    copy = tmp_path / "vocab"
    shutil.copytree(bundle_dir, copy)
    spec = json.loads((copy / "bundle.json").read_text())
    (copy / "bundle.json").write_text(json.dumps({**spec, "answer_vocabulary": ["left", "right"]}))
    for mode in ("static", "graphs"):
        with pytest.raises(ModelLoadError, match="answers from a vocabulary of 2 entries"):
            load_bundle(copy, decoding=mode)
    assert load_bundle(copy).model.vlm.answer_vocabulary == ("left", "right")


def test_the_node_and_cli_offer_the_decoding_modes():
    from loc3r.engine.models import DECODING_MODES
    from loc3r_ros.params import PARAMS_BY_NAME

    assert PARAMS_BY_NAME["decoding"].choices == DECODING_MODES
    assert PARAMS_BY_NAME["decoding"].default == "dynamic"
    from loc3r.cli import build_parser

    args = build_parser().parse_args(["ask", "clip.mp4", "--question", "q"])
    assert args.decoding == "dynamic"
    for mode in DECODING_MODES:
        parsed = build_parser().parse_args(
            ["ask", "clip.mp4", "--question", "q", "--decoding", mode]
        )
        assert parsed.decoding == mode
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ask", "clip.mp4", "--question", "q", "--decoding", "fast"])
