"""A bundle built from checkpoints in the real formats (lmms-lab LLaVA-Video, CUT3R .pth)."""

from __future__ import annotations

import json

import numpy as np
import torch

from loc3r.engine.make_bundle import main as make_bundle
from loc3r.engine.models import load_bundle
from loc3r.vlm.checkpoint import read_checkpoint


def test_bundle_from_real_formats(data_dir, tmp_path, capsys):
    llava = data_dir / "llava_video_reference"
    out = tmp_path / "bundle"
    code = make_bundle([
        "--out", str(out), "--cut3r", str(data_dir / "cut3r_reference" / "cut3r_tiny_linear.pth"),
        "--cut3r-size", "224", "--frames", "2",
        "--llava-video", str(llava / "tiny_llava_video"),
        "--vision-tower", str(llava / "siglip_vision_tower"),
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    spec = json.loads((out / "bundle.json").read_text())
    assert spec["cut3r_image_size"] == 224 and spec["num_query_frames"] == 2
    bundle = load_bundle(out)
    vlm = bundle.model.vlm
    assert vlm.config.cam_token_dim == bundle.perception.model.config.dec_embed_dim
    base_rows = int(np.load(llava / "reference_outputs.npz")["embedding_rows_after_resize"])
    assert len(vlm.tokenizer) == base_rows + 2  # the base tokenizer + <Pos> + <Ori>
    base = read_checkpoint(llava / "tiny_llava_video", torch.float32, vlm.base.vision_body_prefix)
    state = vlm.base.state_dict()
    for name in ("mm_projector.0.weight", "language_model.model.layers.1.mlp.up_proj.weight"):
        torch.testing.assert_close(state[name], base[name], rtol=0, atol=0)
    frames = [np.full((40, 60, 3), 40 * i, np.uint8) for i in range(2)]
    tokens = torch.stack([bundle.perception.step(f).camera_token for f in frames])
    scene = bundle.model.encode_scene(frames, tokens)
    pose = bundle.model.localize(scene, "I am on the bed")
    assert np.isfinite([pose.x, pose.y, pose.yaw]).all()


def test_bad_arguments_give_a_clear_error(tmp_path, capsys):
    code = make_bundle(
        [
            "--out",
            str(tmp_path / "b"),
            "--cut3r",
            str(tmp_path / "missing.pth"),
            "--loc3r-vlm",
            str(tmp_path),
        ]
    )
    assert code == 2 and "error:" in capsys.readouterr().err
