"""The from-scratch recipes run end to end at toy size: default model (all stages) and ablation."""

from __future__ import annotations

import json

import pytest
import torch

from loc3r.engine.models import ModelLoadError, load_bundle
from loc3r.train import ablation, make_default_model
from loc3r.train.config import TrainConfig
from loc3r.train.pipeline import camera_tokens_mode

TOY = [
    "--train_episodes=3", "--eval_episodes=1", "--frames=2", "--image_size=56", "--hidden=32",
    "--layers=1", "--heads=2", "--kv_heads=1", "--intermediate=64", "--vision_hidden=16",
    "--vision_layers=1", "--vocab_size=320", "--batch_size=4", "--micro_batch=2",
    "--warmup_steps=1", "--steps=2", "--save_every=1000",
]  # fmt: skip
STAGES = [
    "--vision.steps=3", "--vision.episodes=2", "--vision.eval_episodes=1",
    "--vision.batch_frames=4", "--cut3r.steps=2", "--cut3r.train_episodes=2",
    "--cut3r.eval_episodes=1", "--cut3r.batch_size=2",
]  # fmt: skip


def test_make_default_model_from_scratch(tmp_path):
    target = tmp_path / "bundle"
    argv = [f"--out={tmp_path / 'run'}", f"--target={target}", *TOY, *STAGES,
            "--cut3r_image_size=96", "--workers=2"]  # fmt: skip
    assert make_default_model.main(argv) == 0
    report = json.loads((target / "eval.json").read_text())
    assert {"vision", "cut3r", "model", "random", "majority", "ceiling", "train"} <= set(report)
    assert report["cut3r"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert report["cut3r"]["rooms"] == 2
    # the CUT3R stage trains at the size the bundle runs it at, on the run's render size
    cut3r_run = json.loads((tmp_path / "run" / "cut3r_run" / "report.json").read_text())
    assert (cut3r_run["config"]["cut3r_size"], cut3r_run["config"]["workers"]) == (96, 2)
    assert cut3r_run["config"]["render_size"] == 56
    assert json.loads((target / "bundle.json").read_text())["cut3r_image_size"] == 96
    assert json.loads((target / "cut3r" / "config.json").read_text())["config"]["img_size"] == [
        96, 96
    ]  # fmt: skip
    assert report["train"]["config"]["vision_init"].endswith("vision_tower.safetensors")
    bundle = load_bundle(target)  # the node and the CLI load what was written
    assert bundle.num_query_frames == 2

    continued = tmp_path / "continued"  # its VLM trained further: no tower or CUT3R stage
    out, init = f"--out={tmp_path / 'run2'}", f"--vlm_init={target / 'vlm'}"  # CUT3R: beside it
    argv = [out, f"--target={continued}", *TOY, "--steps=1", init, "--stream_video=True"]
    assert make_default_model.main(argv) == 0
    report = json.loads((continued / "eval.json").read_text())
    assert not {"vision", "cut3r"} & set(report) and report["train"]["steps_done"] == 1
    spec = json.loads((continued / "bundle.json").read_text())
    assert spec["training_scenes"]["stream_video"] is True  # loc3r eval streams it the same way
    assert "stream_video" not in json.loads((target / "bundle.json").read_text())["training_scenes"]
    assert spec["description"].endswith("(1 steps on synthetic rooms, continuing a saved model)")
    assert load_bundle(continued).num_query_frames == 2
    assert report["train"]["config"]["cut3r_dir"] == str(target / "cut3r")
    with pytest.raises(SystemExit, match="name its CUT3R with --cut3r_dir"):
        make_default_model.main([*argv[:-1], f"--vlm_init={tmp_path / 'run2' / 'final'}"])


def test_the_cut3r_stage_runs_at_the_bundles_cut3r_size(tmp_path):
    argv = [f"--out={tmp_path / 'run'}", f"--target={tmp_path / 'b'}", *TOY, *STAGES,
            "--cut3r.cut3r_size=128"]  # fmt: skip
    with pytest.raises(SystemExit, match="--cut3r_image_size=64; set that instead"):
        make_default_model.main(argv)
    assert not (tmp_path / "run").exists()  # refused before any stage ran


def test_a_lora_run_ships_a_bundle_with_the_adapters_merged(tmp_path):
    target = tmp_path / "bundle"
    argv = [f"--out={tmp_path / 'run'}", f"--target={target}", *TOY, *STAGES, "--lora_rank=2"]
    assert make_default_model.main(argv) == 0
    bundle = load_bundle(target)  # plain weights: a strict load of the plain model
    assert not any("lora" in k for k in bundle.model.vlm.state_dict())
    report = json.loads((target / "eval.json").read_text())
    assert report["train"]["config"]["lora_rank"] == 2


def test_ablation_table(tmp_path, capsys):
    # the shipped recipe's camera prior: geometric poses and points, the point embedding and
    # the position pointer (which the variants without camera tokens cannot have)
    recipe = ["--camera_prior=geometric", "--point_embedding=True", "--position_pointer=True"]
    assert ablation.main([f"--out={tmp_path}", *TOY, *recipe]) == 0
    table = (tmp_path / "ablation.md").read_text()
    for row in ("situation only", "+ layout", "+ camera prior", "random", "majority"):
        assert f"| {row} |" in table
    summary = json.loads((tmp_path / "ablation.json").read_text())
    changes = [r["changes"] for r in summary["rows"]]
    assert [c["use_camera_tokens"] for c in changes[:2]] == [False, False]
    assert [c.get("layout_weight") for c in changes] == [0.0, None, None]
    assert [c["point_embedding"] for c in changes[:2]] == [False, False]
    assert "point_embedding" not in changes[2] and "use_camera_tokens" not in changes[2]
    assert [c["position_pointer"] for c in changes] == [False, False, False]
    assert "steps per variant" in capsys.readouterr().out


def test_ablation_in_forked_workers_gives_the_sequential_numbers(tmp_path):
    assert ablation.main([f"--out={tmp_path / 'one'}", *TOY]) == 0
    assert ablation.main([f"--out={tmp_path / 'two'}", "--jobs=2", *TOY]) == 0
    one, two = (json.loads((tmp_path / d / "ablation.json").read_text()) for d in ("one", "two"))
    assert two["jobs"] == 2
    assert [r["name"] for r in two["rows"]] == [name for name, _ in ablation.VARIANTS]
    for a, b in zip(one["rows"], two["rows"], strict=True):
        assert a["final_loss"] == b["final_loss"]
        assert a["report"]["model"] == b["report"]["model"]
    assert (tmp_path / "two" / "situation_only" / "metrics.jsonl").exists()


def test_ablation_refuses_a_bad_jobs_value(tmp_path):
    for bad in ("--jobs=0", "--jobs=two"):
        with pytest.raises(SystemExit, match="--jobs"):
            ablation.main([f"--out={tmp_path}", bad, *TOY])


def test_an_oracle_run_never_writes_into_a_bundle(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bundle.json").write_text("{}")
    for target in ([], [f"--target={tmp_path / 'b'}"]):  # the embedded one, another bundle
        argv = [f"--out={tmp_path / 'run'}", *target, "--camera_prior=oracle", *TOY, *STAGES]
        with pytest.raises(SystemExit, match="holds a bundle"):
            make_default_model.main(argv)
    assert not (tmp_path / "run").exists()  # refused before any stage ran


@pytest.mark.parametrize("points", [False, True], ids=["poses", "poses_and_points"])
def test_an_oracle_camera_prior_run_writes_its_report_but_no_bundle(tmp_path, points):
    target = tmp_path / "oracle"
    argv = [f"--out={tmp_path / 'run'}", f"--target={target}", "--camera_prior=oracle", *TOY,
            *STAGES, f"--point_embedding={points}"]  # fmt: skip
    assert make_default_model.main(argv) == 0
    report = json.loads((target / "eval.json").read_text())
    assert report["train"]["config"]["camera_prior"] == "oracle"
    assert report["model"]["localization"]["n"] > 0
    assert not (target / "bundle.json").exists()  # the node could not stream CUT3R for it
    assert (target / "vlm" / "model.safetensors").is_file()  # for the bounds, in a bundle
    config = json.loads((target / "vlm" / "config.json").read_text())
    assert config["loc3r"]["point_embedding"] == points


@pytest.mark.parametrize("points", [False, True], ids=["poses", "poses_and_points"])
def test_a_geometric_prior_run_on_textured_scans_ships_a_bundle_that_states_its_poses(
    tmp_path, points
):
    import numpy as np
    import torch

    from loc3r.engine.perception import pose_token, token_points
    from loc3r.scenes import answer_vocabulary

    target = tmp_path / "bundle"
    geometric = ["--camera_prior=geometric", "--look=textured", "--walk=scan",
                 "--render_size=224", "--cut3r.steps=1", f"--point_embedding={points}"]  # fmt: skip
    argv = [f"--out={tmp_path / 'run'}", f"--target={target}", *TOY, *STAGES, *geometric]
    assert make_default_model.main(argv) == 0
    spec = json.loads((target / "bundle.json").read_text())
    tokens = "geometry" if points else "pose"
    assert spec["pose_source"] == "geometric" and spec["camera_tokens"] == tokens
    assert spec["answer_vocabulary"] == sorted(answer_vocabulary())  # the synthetic corpus'
    assert spec["training_scenes"] == {"look": "textured", "walk": "scan", "render_size": 224}
    bundle = load_bundle(target)
    assert bundle.model.vlm.answer_vocabulary == tuple(spec["answer_vocabulary"])
    frames = [np.random.default_rng(i).integers(0, 256, (96, 128, 3), np.uint8) for i in range(2)]
    out = bundle.perception.run_fresh(frames)
    width = bundle.perception.token_width
    for frame in out:  # the tokens state the poses the engine publishes (and the points)
        pose = pose_token(frame.pose_c2w, width)
        assert torch.equal(frame.camera_token[:12], pose[:12])
        assert torch.equal(frame.camera_token[12 + 12 * points :], pose[12 + 12 * points :])
    assert bundle.model.vlm.config.point_embedding == points
    if points:  # the 56 px toy VLM: 2x2 patches, each with a point in front of the camera
        assert (token_points(out[0].camera_token, 2)[:, 2] > 0).all()
        scene = bundle.model.encode_scene(frames, torch.stack([f.camera_token for f in out]))
        assert bundle.model.answer(scene, "what is on my left?", "I sit")[0] in spec[
            "answer_vocabulary"]  # fmt: skip
        spec["camera_tokens"] = "pose"  # a bundle.json that does not match its VLM
        (target / "bundle.json").write_text(json.dumps(spec))
        with pytest.raises(ModelLoadError, match="point embedding"):
            load_bundle(target)


def test_a_point_embedding_needs_geometric_or_oracle_points(tmp_path):
    argv = [f"--out={tmp_path / 'run'}", f"--target={tmp_path / 'b'}", *TOY, "--cut3r_dir=x",
            "--vision_init=x", "--point_embedding=True"]  # fmt: skip
    with pytest.raises(ValueError, match="point_embedding needs camera_prior='geometric'"):
        make_default_model.main(argv)  # CUT3R's own tokens state no points
    oracle = TrainConfig(point_embedding=True, camera_prior="oracle")
    assert camera_tokens_mode(oracle) == "geometry"  # the true poses and points
    assert camera_tokens_mode(TrainConfig(camera_prior="oracle")) == "cut3r"  # CUT3R's width
    assert camera_tokens_mode(TrainConfig(camera_prior="geometric")) == "pose"


def test_geometry_tokens_wider_than_cut3rs_widen_the_camera_tokens(tmp_path):
    import numpy as np
    import torch

    from loc3r.engine.perception import geometry_token_width, token_points

    target = tmp_path / "bundle"
    geometric = ["--camera_prior=geometric", "--look=textured", "--walk=scan",
                 "--render_size=224", "--cut3r.steps=1", "--point_embedding=True"]  # fmt: skip
    # 84 px: a 3x3 patch grid, geometry tokens of 12 + 27 = 39 values; this CUT3R's are 32
    argv = [f"--out={tmp_path / 'run'}", f"--target={target}", *TOY, *STAGES, *geometric,
            "--image_size=84", "--cut3r.dec_embed_dim=32"]  # fmt: skip
    assert make_default_model.main(argv) == 0
    bundle = load_bundle(target)
    assert bundle.perception.model.config.dec_embed_dim == 32
    assert bundle.perception.token_width == geometry_token_width(3) == 39
    assert bundle.model.vlm.config.cam_token_dim == 39
    frames = [np.random.default_rng(i).integers(0, 256, (96, 128, 3), np.uint8) for i in range(2)]
    out = bundle.perception.run_fresh(frames)
    tokens = torch.stack([f.camera_token for f in out])
    assert tokens.shape == (2, 39)
    assert (token_points(tokens[0], 3)[:, 2] > 0).all()  # all 9 cells: points before the camera
    scene = bundle.model.encode_scene(frames, tokens)
    assert bundle.model.answer(scene, "what is on my left?", "I sit")[0]
