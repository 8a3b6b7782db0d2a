"""The GPU sessions' build scripts run end to end on the CPU at toy size, and what they return
(at most 8 files of 16 MiB) restores into a CUT3R and a bundle that load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loc3r.cut3r.checkpoint import load_pretrained
from loc3r.engine.models import load_bundle

REPO = Path(__file__).resolve().parents[2]
LIMIT = 16 * 1024 * 1024  # what the device tool brings back per file
TOY_VLM = [
    "--frames=2", "--render_size=56", "--image_size=56", "--hidden=32", "--layers=1",
    "--heads=2", "--kv_heads=1", "--intermediate=64", "--vision_hidden=16", "--vision_layers=1",
    "--train_episodes=3", "--eval_episodes=1", "--train_situations=2", "--questions_per_scene=2",
    "--batch_size=4", "--micro_batch=2", "--warmup_steps=1", "--steps=2", "--render_within_s=0",
    "--time_budget_s=0", "--vision.steps=3", "--vision.episodes=2", "--vision.eval_episodes=1",
    "--vision.batch_frames=4", "--vision.time_budget_s=0",
]  # fmt: skip
TOY_CUT3R_STAGE = [
    "--cut3r.steps=2", "--cut3r.train_episodes=2", "--cut3r.eval_episodes=1",
    "--cut3r.batch_size=1", "--cut3r.render_within_s=0", "--cut3r.time_budget_s=0",
]  # fmt: skip

TOY_DEPTH_STAGE = [
    "--depth.steps=2", "--depth.train_episodes=2", "--depth.eval_episodes=1",
    "--depth.batch_size=2", "--depth.render_within_s=0", "--depth.time_budget_s=0",
    "--depth.image_size=32", "--depth.widths=4,8",
]  # fmt: skip


def run_script(name: str, out: Path, run: Path, args: list[str], **env: str) -> None:
    environ = {**os.environ, "OUT": str(out), "RUN": str(run), "PYTHON": sys.executable,
               "WORKERS": "2", **env}  # fmt: skip
    done = subprocess.run(["bash", str(REPO / "scripts" / name), *args], env=environ,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    log = (out / "build.log").read_text() if (out / "build.log").exists() else ""
    assert done.returncode == 0, log[-3000:]


def returned(out: Path) -> list[Path]:
    files = sorted(p for p in out.iterdir() if p.is_file())
    assert len(files) <= 8 and all(p.stat().st_size <= LIMIT for p in files), files
    return files


@pytest.mark.parametrize("start", ["scratch", "shipped"])
def test_the_cut3r_script_returns_its_cut3r_in_parts(tmp_path, start):
    out, run = tmp_path / "out", tmp_path / "run"
    toy = ["--frames=2", "--render_size=56", "--cut3r_size=32", "--train_episodes=2",
           "--eval_episodes=1", "--steps=2", "--batch_size=1", "--render_within_s=0",
           "--time_budget_s=0"]  # fmt: skip
    run_script("gpu_train_cut3r.sh", out, run, toy, CUT3R_FROM=start)
    names = [p.name for p in returned(out)]
    parts = [out / n for n in names if n.startswith("model.safetensors.part-")]
    assert len(parts) == 2  # 16.1 MiB (shipped sizes), 27.8 MiB (the larger encoder)
    assert {"config.json", "report.json", "metrics.jsonl", "build.log"} <= set(names)
    restored = tmp_path / "cut3r"
    restored.mkdir()
    (restored / "config.json").write_bytes((out / "config.json").read_bytes())
    (restored / "model.safetensors").write_bytes(b"".join(p.read_bytes() for p in parts))
    model, trained = load_pretrained(restored), load_pretrained(run / "cut3r")
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.config.img_size == (32, 32)  # tuned at 32 px: saved with it
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["eval_seed_offset"] == 9610000 and report["steps_done"] == 2
    if start == "shipped":  # the shipped one, tuned
        assert report["config"]["init"].endswith("default_model/cut3r")
        assert (model.config.enc_embed_dim, model.config.enc_depth) == (64, 2)
    else:  # a larger encoder from scratch, with the shipped one's camera-token width
        assert report["config"]["init"] == "" and model.config.dec_embed_dim == 96
        assert (model.config.enc_embed_dim, model.config.enc_depth) == (192, 6)


def test_the_cut3r_script_refuses_an_unknown_start(tmp_path):
    out = tmp_path / "out"
    environ = {**os.environ, "OUT": str(out), "RUN": str(tmp_path / "run"),
               "PYTHON": sys.executable, "CUT3R_FROM": "elsewhere"}  # fmt: skip
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_train_cut3r.sh")], env=environ,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "scratch or shipped" in (out / "build.log").read_text()


def test_the_build_script_with_its_cut3r_stage_returns_a_bundle_in_parts(tmp_path):
    out, run = tmp_path / "out", tmp_path / "run"
    run_script("gpu_build_default_model.sh", out, run,
               [*TOY_VLM, *TOY_CUT3R_STAGE, *TOY_DEPTH_STAGE], CUT3R_STAGE="1",
               CUT3R_SIZE="32")  # fmt: skip
    parts = [p for p in returned(out) if p.name.startswith("bundle.tar.part-")]
    assert len(parts) == 2 and (out / "eval.json").exists() and (out / "metrics.jsonl").exists()
    restored = tmp_path / "bundle"
    restored.mkdir()
    tar = subprocess.run(["tar", "-x", "-C", str(restored)], input=b"".join(
        p.read_bytes() for p in sorted(parts)), capture_output=True)  # fmt: skip
    assert tar.returncode == 0, tar.stderr
    bundle = load_bundle(restored)
    spec = json.loads((restored / "bundle.json").read_text())
    assert spec["cut3r_image_size"] == 32 and bundle.num_query_frames == 2
    assert spec["training_scenes"]["look"] == "furnished"  # the script's default look
    # the shipped recipe's aids: the point embedding, the position and heading pointers (grounded),
    # the egocentric read-out picking objects and knowing the anchor
    vlm = bundle.model.vlm
    assert vlm.point_embedding is not None and vlm.position_pointer is not None
    assert vlm.egocentric_readout is not None and vlm.egocentric_readout.place is not None
    assert vlm.egocentric_readout.avoid is not None and vlm.config.readout_anchor
    assert vlm.heading_pointer is not None and vlm.config.ground_pointers
    cut3r_run = json.loads((run / "cut3r_run" / "report.json").read_text())
    assert cut3r_run["config"]["init"].endswith("default_model/cut3r")
    assert cut3r_run["config"]["cut3r_size"] == 32 and cut3r_run["steps_done"] == 2
    # the depth stage (on by default) trained the pose source's depth network, which it ships
    assert spec["depth_source"] == "mono_depth" and bundle.perception.depth is not None
    depth_run = json.loads((run / "depth_run" / "report.json").read_text())
    assert depth_run["steps_done"] == 2 and depth_run["config"]["train_seed_offset"] == 60000
    assert json.loads((out / "eval.json").read_text())["depth"]["steps_done"] == 2


def test_the_build_script_runs_another_cut3r_at_the_size_it_was_trained_at(tmp_path):
    tuned = tmp_path / "tuned"  # as gpu_train_cut3r.sh's model: its config says 32 px
    tuned.mkdir()
    shipped = REPO / "loc3r_ros" / "loc3r" / "assets" / "default_model" / "cut3r"
    (tuned / "model.safetensors").write_bytes((shipped / "model.safetensors").read_bytes())
    config = json.loads((shipped / "config.json").read_text())
    config["config"]["img_size"] = [32, 32]
    (tuned / "config.json").write_text(json.dumps(config))
    out, run = tmp_path / "out", tmp_path / "run"
    run_script("gpu_build_default_model.sh", out, run, TOY_VLM, CUT3R_DIR=str(tuned),
               DEPTH_STAGE="0")  # fmt: skip
    spec = json.loads((run / "bundle" / "bundle.json").read_text())
    assert spec["cut3r_image_size"] == 32 and spec["depth_source"] == "cut3r"
    report = json.loads((out / "eval.json").read_text())
    assert report["train"]["config"]["cut3r_dir"] == str(tuned) and "cut3r" not in report
