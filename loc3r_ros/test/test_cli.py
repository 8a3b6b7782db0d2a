"""The offline CLI: answers as JSON, a BEV picture, and clear errors for bad input."""

from __future__ import annotations

import json

import cv2
import pytest
from tiny_bundle import make_tiny_bundle

from loc3r.cli import main
from loc3r.engine.models import DEFAULT_MODEL_DIR, ModelLoadError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("cli") / "bundle")


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("scene") / "frames"
    assert main(["scene", str(out), "--count", "6", "--size", "64"]) == 0
    return out


def test_scene_as_trained_renders_rooms_like_the_models_training_rooms(tmp_path, capsys):
    from loc3r.scenes import EpisodeConfig, make_episode

    model = tmp_path / "model"
    model.mkdir()
    spec = {
        "format": "loc3r_bundle",
        "num_query_frames": 3,
        "training_scenes": {"look": "textured", "walk": "room_scan", "render_size": 48},
    }
    (model / "bundle.json").write_text(json.dumps(spec))
    out = tmp_path / "frames"
    assert main(["scene", str(out), "--seed", "5", "--as-trained", "--model", str(model)]) == 0
    frames = sorted(out.glob("*.png"))
    assert len(frames) == 3 and cv2.imread(str(frames[0])).shape == (48, 48, 3)
    config = EpisodeConfig(frames=3, image_size=48, look="textured", walk="room_scan")
    expected = make_episode(5, config).frames[2].rgb
    assert (cv2.cvtColor(cv2.imread(str(frames[2])), cv2.COLOR_BGR2RGB) == expected).all()
    # an option given wins over the bundle's
    assert main(["scene", str(tmp_path / "b"), "--as-trained", "--model", str(model),
                 "--count", "2", "--look", "flat"]) == 0  # fmt: skip
    config = EpisodeConfig(frames=2, image_size=48, look="flat", walk="room_scan")
    flat = make_episode(3, config).frames[1].rgb
    got = cv2.cvtColor(cv2.imread(str(tmp_path / "b" / "000001.png")), cv2.COLOR_BGR2RGB)
    assert len(list((tmp_path / "b").glob("*.png"))) == 2 and (got == flat).all()
    # the embedded bundle: its frames per query, at its render size
    embedded = json.loads((DEFAULT_MODEL_DIR / "bundle.json").read_text())
    size = embedded["training_scenes"]["render_size"]
    assert main(["scene", str(tmp_path / "c"), "--as-trained"]) == 0
    assert len(list((tmp_path / "c").glob("*.png"))) == embedded["num_query_frames"]
    assert cv2.imread(str(tmp_path / "c" / "000000.png")).shape == (size, size, 3)
    capsys.readouterr()
    assert main(["scene", str(tmp_path / "e"), "--model", str(model)]) == 2  # without --as-trained
    assert "--as-trained" in json.loads(capsys.readouterr().out)["error"]
    spec["training_scenes"]["walk"] = "zigzag"  # a bundle.json that names no walk we have
    (model / "bundle.json").write_text(json.dumps(spec))
    assert main(["scene", str(tmp_path / "d"), "--as-trained", "--model", str(model)]) == 2
    assert "training_scenes" in json.loads(capsys.readouterr().out)["error"]


def test_eval_scene_options_default_to_the_models_training_rooms(tmp_path):
    from types import SimpleNamespace

    from loc3r.cli import build_parser
    from loc3r.eval.run import scene_config, scenes_like_training
    from loc3r.scenes import EpisodeConfig

    spec = {
        "format": "loc3r_bundle",
        "num_query_frames": 16,
        "training_scenes": {  # a key of a later version is passed over
            "look": "textured",
            "walk": "room_scan",
            "render_size": 224,
            "lighting": "dusk",
        },
    }
    (tmp_path / "bundle.json").write_text(json.dumps(spec))
    bundle = SimpleNamespace(model=SimpleNamespace(image_size=224))
    args = build_parser().parse_args(["eval", "--model", str(tmp_path)])
    scenes_like_training(args, bundle)
    assert (args.look, args.walk, args.render_size, args.image_size) == (
        "textured", "room_scan", 224, 224)  # fmt: skip
    given = build_parser().parse_args(["eval", "--model", str(tmp_path), "--walk", "scan",
                                       "--render-size", "128", "--image-size", "112"])  # fmt: skip
    scenes_like_training(given, bundle)
    assert (given.look, given.walk, given.render_size, given.image_size) == (
        "textured", "scan", 128, 112)  # fmt: skip
    # the rooms they give; --stream-video streams every step of the video (EpisodeConfig)
    assert scene_config(args, 16) == EpisodeConfig(
        frames=16, image_size=224, look="textured", walk="room_scan")  # fmt: skip
    streamed = build_parser().parse_args(["eval", "--model", str(tmp_path), "--stream-video"])
    assert scene_config(scenes_like_training(streamed, bundle), 8).stream_video
    # a bundle trained on streamed videos is streamed unless --no-stream-video says otherwise
    spec["training_scenes"]["stream_video"] = True
    (tmp_path / "bundle.json").write_text(json.dumps(spec))
    as_trained = build_parser().parse_args(["eval", "--model", str(tmp_path)])
    assert scenes_like_training(as_trained, bundle).stream_video is True
    plain = build_parser().parse_args(["eval", "--model", str(tmp_path), "--no-stream-video"])
    assert scenes_like_training(plain, bundle).stream_video is False
    spec["training_scenes"]["stream_video"] = "yes"  # not a bool: the bundle.json is refused
    (tmp_path / "bundle.json").write_text(json.dumps(spec))
    with pytest.raises(ModelLoadError, match="stream_video must be true or false"):
        scenes_like_training(build_parser().parse_args(["eval", "--model", str(tmp_path)]), bundle)
    del spec["training_scenes"]["stream_video"]
    del spec["training_scenes"]  # an older bundle: flat sweeps at the model's size
    (tmp_path / "bundle.json").write_text(json.dumps(spec))
    old = scenes_like_training(build_parser().parse_args(["eval", "--model", str(tmp_path)]),
                               SimpleNamespace(model=SimpleNamespace(image_size=112)))  # fmt: skip
    assert (old.look, old.walk, old.render_size, old.image_size) == ("flat", "sweep", 0, 112)


def test_eval_streams_videos_of_synthetic_rooms_only(tmp_path, capsys):
    for source in (["--data", str(tmp_path)], ["--predictions", str(tmp_path / "p.jsonl")]):
        assert main(["eval", *source, "--stream-video"]) == 2
        assert "--stream-video streams synthetic room scans" in capsys.readouterr().err


def run(capsys, *argv) -> tuple[int, dict]:
    code = main(list(argv))
    return code, json.loads(capsys.readouterr().out)


def test_scene_writes_frames_and_truth(scene_dir):
    assert len(list(scene_dir.glob("*.png"))) == 6
    truth = json.loads((scene_dir / "questions.json").read_text())
    assert truth and {"situation", "question", "answers", "position", "yaw"} <= set(truth[0])
    objects = json.loads((scene_dir / "objects.json").read_text())
    assert objects and {"label", "x", "y"} == set(objects[0])


def test_ask_prints_answer_pose_and_draws_bev(capsys, bundle, scene_dir, tmp_path):
    png = tmp_path / "bev.png"
    code, out = run(capsys, "ask", str(scene_dir), "--question", "What is on my left?",
                    "--situation", "I am sitting on the bed", "--model", str(bundle),
                    "--bev-png", str(png), "--bev-objects", str(scene_dir / "objects.json"),
                    "--bev-truth", "0.5", "-0.2", "30")  # fmt: skip
    assert code == 0, out
    assert isinstance(out["answer"], str) and out["frames_used"] == 4
    assert {"x", "y", "yaw_deg", "sigma_x"} <= set(out["pose"])
    image = cv2.imread(str(png))
    assert image is not None and image.shape == (960, 960, 3) and image.std() > 0
    assert out["bev_png"] == str(png)
    small = tmp_path / "small.png"
    code, out = run(capsys, "localize", str(scene_dir), "--situation", "I am by the door",
                    "--model", str(bundle), "--bev-png", str(small),
                    "--bev-size", "400")  # fmt: skip
    assert code == 0 and cv2.imread(str(small)).shape == (400, 400, 3)
    code, out = run(capsys, "localize", str(scene_dir), "--situation", "I am by the door",
                    "--model", str(bundle), "--mode", "streaming")  # fmt: skip
    assert code == 0 and "answer" not in out and out["pose"]["sigma_y"] > 0


@pytest.mark.parametrize(
    ("make_source", "argv", "reason"),
    [
        (lambda d: d / "missing.mp4", ["--question", "q"], "no such video"),
        (lambda d: d, ["--question", " "], "question is empty"),
        (lambda d: d, ["--question", "x" * 100_001], "too long"),
        (lambda d: d, ["--question", "why\x00"], "control character"),
        (lambda d: d, ["--question", "q", "--bev-png", "b.png", "--bev-size", "50"], "128 pixels"),
    ],
)
def test_bad_input_gives_a_clear_error(capsys, bundle, scene_dir, make_source, argv, reason):
    code, out = run(capsys, "ask", str(make_source(scene_dir)), *argv, "--model", str(bundle))
    assert code == 2 and reason in out["error"]


@pytest.mark.parametrize("name", ["questions.json", "000000.png", "missing.json"])
def test_bad_bev_objects_file_gives_a_clear_error(capsys, bundle, scene_dir, tmp_path, name):
    code, out = run(capsys, "ask", str(scene_dir), "--question", "q", "--model", str(bundle),
                    "--bev-png", str(tmp_path / "b.png"), "--bev-objects",
                    str(scene_dir / name))  # fmt: skip
    assert code == 2 and name in out["error"]


def test_corrupt_video_and_missing_model(capsys, bundle, tmp_path, scene_dir):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00garbage" * 50)
    code, out = run(capsys, "ask", str(bad), "--question", "q", "--model", str(bundle))
    assert code == 2 and "video" in out["error"]
    code, out = run(capsys, "ask", str(scene_dir), "--question", "q", "--model", str(tmp_path))
    assert code == 2 and "no bundle.json" in out["error"]


def test_one_frame_no_frames_and_non_utf8(capsys, bundle, scene_dir, tmp_path):
    single = tmp_path / "one"
    single.mkdir()
    first = sorted(scene_dir.glob("*.png"))[0]
    (single / first.name).write_bytes(first.read_bytes())
    code, out = run(capsys, "localize", str(single), "--situation", "I am on the bed",
                    "--model", str(bundle))  # fmt: skip
    assert code == 2 and "1 decodable frame(s)" in out["error"]
    assert "needs at least 4" in out["error"]
    code, out = run(capsys, "localize", str(single), "--situation", "I am on the bed",
                    "--model", str(bundle), "--min-frames", "1")  # fmt: skip
    assert code == 0 and out["frames_used"] == 1 and out["warnings"] == []
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = run(capsys, "ask", str(empty), "--question", "q", "--model", str(bundle))
    assert code == 2 and "no images" in out["error"]
    # a non-UTF-8 byte on the command line arrives as a lone surrogate (surrogateescape)
    code, out = run(
        capsys, "ask", str(scene_dir), "--question", "caf\udce9?", "--model", str(bundle)
    )
    assert code == 2 and "not valid UTF-8" in out["error"]


def test_partial_read_is_a_warning_in_the_json(capsys, bundle, scene_dir, tmp_path):
    folder = tmp_path / "partial"
    folder.mkdir()
    for png in sorted(scene_dir.glob("*.png")):
        (folder / png.name).write_bytes(png.read_bytes())
    (folder / "000003.png").write_bytes(b"broken")
    (folder / "readme.txt").write_text("not an image")
    code = main(["ask", str(folder), "--question", "What is on my left?", "--model", str(bundle)])
    printed = capsys.readouterr()
    out = json.loads(printed.out)
    assert code == 0, out
    assert "loc3r: warning: 1 frame(s)" in printed.err  # said on stderr too
    read = out["input"]
    assert (read["frames_declared"], read["frames_decoded"], read["failed_at"]) == (6, 5, [3])
    assert read["span_s"] == 0.5 and out["warnings"] == read["warnings"]
    assert any("000003.png (unreadable image)" in w for w in out["warnings"])
    assert any("readme.txt" in w for w in out["warnings"])
    for name in ("000000.png", "000001.png", "000002.png"):
        (folder / name).write_bytes(b"broken")
    code, out = run(capsys, "ask", str(folder), "--question", "q", "--model", str(bundle))
    assert code == 2 and "2 decodable frame(s)" in out["error"] and "000000.png" in out["error"]


def test_a_given_calibration_reaches_the_geometric_pose_source(capsys, tmp_path):
    """The embedded bundle's pose source is geometric: a longer lens moves its camera path."""
    room = tmp_path / "room"
    assert main(["scene", str(room), "--as-trained", "--seed", "4"]) == 0
    capsys.readouterr()
    argv = ["localize", str(room), "--situation", "I am by the door", "--bev-png",
            str(tmp_path / "a.png")]  # fmt: skip
    code, estimated = run(capsys, *argv)
    assert code == 0 and estimated["intrinsics"] == "estimated"
    size = json.loads((DEFAULT_MODEL_DIR / "bundle.json").read_text())["training_scenes"]
    side = size["render_size"]
    given = ["--intrinsics", str(1.5 * side), str(1.5 * side), str(side / 2), str(side / 2)]
    code, calibrated = run(capsys, *argv, *given)
    assert code == 0 and calibrated["intrinsics"] == [1.5 * side, 1.5 * side, side / 2, side / 2]
    assert calibrated["pose"] != estimated["pose"]  # other camera poses, other tokens
    code, out = run(capsys, *argv, "--intrinsics", "0", "0", "0", "0")
    assert code == 2 and "intrinsics" in out["error"]
