"""CUDA numerics on the public fixtures: CUT3R and LLaVA-Video on the device against the CPU.

    python bench/numerics_cuda.py --device cuda --out numerics.json
    python bench/numerics_cuda.py --device cpu --out numerics.json    # the script against itself

For each CUT3R fixture (tiny official-format checkpoints, linear and DPT heads) and the
LLaVA-Video fixture (tiny lmms-lab-layout checkpoint): the float32 pipeline on `--device` against
the float32 CPU pipeline (max abs error per output, greedy tokens equal), the same against the
recorded reference outputs, and bfloat16 on the device (errors reported, not judged; with
`--device cpu` too, which exercises the path). float32 on CUDA runs with TF32 off (matmul and
cuDNN), so it is comparable to the CPU at 1e-4. The JSON is rewritten atomically after every
comparison; `pass` says whether every float32 error is <= 1e-4 and the greedy tokens are equal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "loc3r_ros"))

from loc3r.cut3r import load_cut3r  # noqa: E402
from loc3r.vlm import frames_to_pixel_values, load_llava_video  # noqa: E402

DATA = ROOT / "loc3r_ros" / "test" / "data"
TOL = 1e-4
CUT3R_FIELDS = {  # reference npz name -> Cut3rOutput attribute
    "camera_token": "camera_token",
    "camera_pose": "pose_encoding",
    "camera_pose_c2w": "pose_c2w",
    "pts3d_in_self_view": "pts3d_self",
    "pts3d_in_other_view": "pts3d_world",
    "conf_self": "conf_self",
    "conf": "conf_world",
    "rgb": "rgb",
}


class Report:
    """JSON written atomically after every figure."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict = {"status": "running", "errors": {}}

    def set(self, dotted: str, value) -> None:
        node = self.data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
            os.replace(tmp, self.path)


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """Max abs error relative to the largest magnitude of `b`."""
    return max_abs(a, b) / max(float(np.abs(b).max()), 1e-12)


def run_cut3r(path: Path, frames: np.ndarray, device: str, dtype: torch.dtype) -> dict:
    model = load_cut3r(path, device=device, dtype=dtype)
    tensors = [torch.from_numpy(frames[i : i + 1]).to(device) for i in range(len(frames))]
    outputs = model.run(tensors)
    return {
        name: np.stack([getattr(o, attr)[0].float().cpu().numpy() for o in outputs])
        for name, attr in CUT3R_FIELDS.items()
        if getattr(outputs[0], attr) is not None
    }


def check_cut3r(report: Report, device: str) -> bool:
    ok = True
    for variant in ("linear", "dpt"):
        root = DATA / "cut3r_reference"
        path = root / f"cut3r_tiny_{variant}.pth"
        ref = dict(np.load(root / f"cut3r_tiny_{variant}.npz"))
        cpu = run_cut3r(path, ref["frames_input"], "cpu", torch.float32)
        dev = run_cut3r(path, ref["frames_input"], device, torch.float32)
        key = f"cut3r.{variant}"
        errors = {f: max_abs(dev[f], cpu[f]) for f in cpu}
        report.set(f"{key}.fp32_device_vs_cpu", errors)
        report.set(f"{key}.fp32_device_vs_reference", {f: max_abs(dev[f], ref[f]) for f in dev})
        report.set(f"{key}.fp32_cpu_vs_reference", {f: max_abs(cpu[f], ref[f]) for f in cpu})
        passed = max(errors.values()) <= TOL
        report.set(f"{key}.fp32_pass", passed)
        ok &= passed
        bf16 = run_cut3r(path, ref["frames_input"], device, torch.bfloat16)
        report.set(f"{key}.bf16_device_vs_cpu_abs", {f: max_abs(bf16[f], cpu[f]) for f in cpu})
        report.set(f"{key}.bf16_device_vs_cpu_rel", {f: rel(bf16[f], cpu[f]) for f in cpu})
    return ok


def run_llava(root: Path, d: dict, device: str, dtype: torch.dtype) -> dict:
    model, _ = load_llava_video(
        root / "tiny_llava_video", root / "siglip_vision_tower", dtype=dtype, device=device
    )
    hidden = model.config.text["hidden_size"]
    with torch.inference_mode():
        pixels = frames_to_pixel_values(d["frames_uint8"]).to(device)
        features = model.vision_features(pixels)
        video = model.frame_tokens(pixels).reshape(-1, hidden)
        ids = torch.from_numpy(d["input_ids"][0]).to(device)
        embeds = model.splice(ids, video)
        logits = model.language_model(inputs_embeds=embeds).logits
        tokens, steps = model.generate_greedy(
            embeds, max_new_tokens=8, stop_ids=(558, 556), repetition_penalty=1.05
        )
    return {
        "vision_tower_features": features.float().cpu().numpy(),
        "video_features_with_newlines": video.float().cpu().numpy(),
        "logits": logits.float().cpu().numpy(),
        "greedy_step_logits": torch.stack(steps).float().cpu().numpy(),
        "greedy_token_ids": tokens,
    }


def check_llava(report: Report, device: str) -> bool:
    root = DATA / "llava_video_reference"
    d = dict(np.load(root / "reference_outputs.npz"))
    cpu = run_llava(root, d, "cpu", torch.float32)
    dev = run_llava(root, d, device, torch.float32)
    arrays = [k for k in cpu if k != "greedy_token_ids"]
    errors = {k: max_abs(dev[k], cpu[k]) for k in arrays}
    steps = min(len(dev["greedy_step_logits"]), len(cpu["greedy_step_logits"]))
    errors["greedy_step_logits"] = max_abs(
        dev["greedy_step_logits"][:steps], cpu["greedy_step_logits"][:steps]
    )
    same_tokens = dev["greedy_token_ids"] == cpu["greedy_token_ids"]
    report.set("llava.fp32_device_vs_cpu", errors)
    report.set("llava.fp32_greedy_tokens_equal_cpu", same_tokens)
    reference = d["greedy_token_ids"][0].tolist()
    report.set("llava.fp32_greedy_tokens_equal_reference", dev["greedy_token_ids"] == reference)
    report.set(
        "llava.fp32_device_vs_reference",
        {k: max_abs(dev[k].reshape(d[k].shape), d[k]) for k in ("vision_tower_features", "logits",
                                                                 "video_features_with_newlines")},
    )  # fmt: skip
    passed = max(errors.values()) <= TOL and same_tokens
    report.set("llava.fp32_pass", passed)
    bf16 = run_llava(root, d, device, torch.bfloat16)
    report.set("llava.bf16_device_vs_cpu_abs", {k: max_abs(bf16[k], cpu[k]) for k in arrays
                                                if k != "greedy_step_logits"})  # fmt: skip
    report.set("llava.bf16_device_vs_cpu_rel", {k: rel(bf16[k], cpu[k]) for k in arrays
                                                if k != "greedy_step_logits"})  # fmt: skip
    report.set("llava.bf16_greedy_tokens", bf16["greedy_token_ids"])
    report.set("llava.bf16_greedy_tokens_equal_cpu", bf16["greedy_token_ids"] == cpu[
        "greedy_token_ids"])  # fmt: skip
    report.set("llava.greedy_tokens_cpu", cpu["greedy_token_ids"])
    report.set("llava.greedy_tokens_device", dev["greedy_token_ids"])
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    report = Report(args.out)
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "tf32": False}
    if args.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    report.set("env", env)
    report.set("tolerance", TOL)
    results = {}
    for name, check in (("cut3r", check_cut3r), ("llava", check_llava)):
        start = time.perf_counter()
        try:
            results[name] = check(report, args.device)
        except Exception as exc:
            report.data["errors"][name] = f"{type(exc).__name__}: {str(exc)[:2000]}"
            results[name] = False
        report.set(f"seconds.{name}", round(time.perf_counter() - start, 2))
    report.set("pass", all(results.values()))
    report.set("status", "complete")
    print(json.dumps(report.data, indent=2, default=str))
    return 0 if report.data["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
