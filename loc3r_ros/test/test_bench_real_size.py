"""bench/bench_real_size.py and bench/numerics_cuda.py at tiny size on the CPU.

The released size needs a GPU (`bash bench/run_on_h200.sh` through the device tool; results in
bench/results/); here: the same code path at tiny shapes, the JSON written figure by figure,
the refusal to build 7B on the CPU, the released shapes counted on the meta device, and the
numerics script against itself.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load("bench_real_size")


def _figure(data: dict, dotted: str):
    node = data
    for key in dotted.split("."):
        assert isinstance(node, dict) and key in node, f"{dotted} missing"
        node = node[key]
    return node


def _tiny(tmp_path: Path, *extra: str) -> list[str]:
    """Tiny CPU arguments; the graph phases compile with aot_eager (inductor's C++ takes ~1 min)."""
    backend = [] if "--graphs-backend" in extra else ["--graphs-backend", "aot_eager"]
    return ["--size", "tiny", "--device", "cpu", "--frames", "4", "--out", str(tmp_path / "b.json"),
            *backend, *extra]  # fmt: skip


def test_tiny_cpu_run_reports_every_figure(bench, tmp_path):
    profile = ("--profile-dir", str(tmp_path / "prof"))
    assert bench.main(_tiny(tmp_path, *profile)) == 0
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["status"] == "complete" and data["errors"] == {}
    assert data["completed_phases"] == list(bench.PHASES)
    for dotted in bench.REQUIRED_FIGURES:
        value = _figure(data, dotted)
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, dotted
    assert data["train"]["loss_finite"] is True
    # float32 on the CPU: the static cache, compiled or not, decodes the dynamic cache's tokens
    assert data["static"]["same_answer_as_dynamic"] is True
    assert data["graphs"]["same_answer_as_dynamic"] is True
    assert data["graphs"]["compile_options"] == {"fullgraph": True, "backend": "aot_eager"}
    # the one-token step and the text pass (the situation and the ~50-token question share
    # one padded shape), compiled once: new scenes reuse both
    assert data["graphs"]["dynamo_graphs"] == 2
    assert data["static"]["dynamo_graphs"] == 0
    assert data["graphs"]["new_scene_ask_s"] > 0 and data["static"]["new_scene_ask_s"] > 0
    assert data["cut3r_graphs"]["dynamo_graphs"] == 2  # frame 0 and the rest, once per shape
    assert data["cut3r_graphs"]["relative_token_difference"] < 1e-4
    for target, figures in (
        ("warm_localize_s", (data["warm_localize"]["seconds"], data["graphs"]["warm_localize_s"])),
        ("cold_query_s", (data["cold"]["query_s"], data["graphs"]["cold_query_s"])),
        ("warm_ask_s", (data["warm_ask"]["seconds"], data["graphs"]["warm_ask_s"])),
    ):
        assert data["targets"][target]["measured"] == min(figures), target
    fastest = max(data["cut3r"]["fps"], data["cut3r_graphs"]["fps"])
    assert data["targets"]["cut3r_fps"]["measured"] == fastest
    assert (
        bench.best_cut3r_fps(
            {
                "cut3r": {"fps": 10.0},
                "cut3r_graphs": {"fps": 50.0, "relative_token_difference": 0.5},
            }
        )
        == 10.0
    )  # a compiled stream that disagrees with eager does not count
    fastest = min(data["warm_ask"]["seconds"], data["graphs"]["warm_ask_s"])
    assert data["targets"]["warm_ask_s"]["measured"] == fastest
    assert data["shapes"]["question_text_tokens"] == 50
    assert data["shapes"]["answer_new_tokens"] == 20
    assert data["shapes"]["scene_prefix_tokens"] < data["shapes"]["train_sequence_tokens"]
    assert data["cut3r"]["frames"] == 4
    assert data["targets"]["applies"] is False  # the targets are for the released size on CUDA
    assert "rtx4090_24gb" not in data
    assert "cpu_time_total" in (tmp_path / "prof" / "profile.txt").read_text()
    projection = data["projection"]
    expected = 4200 * 64 * projection["seconds_per_sample"] / 3600
    assert projection["gpu_hours"] == pytest.approx(expected, abs=0.01)
    assert "steps * global_batch * seconds_per_sample / 3600" in projection["formula"]


def test_stop_after_leaves_the_figures_measured_so_far(bench, tmp_path):
    assert bench.main(_tiny(tmp_path, "--stop-after", "cut3r", "--skip-train")) == 0
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["status"] == "stopped after cut3r"
    assert data["completed_phases"] == ["build", "cut3r"]
    assert data["cut3r"]["ms_per_frame"] > 0 and "cold" not in data and "train" not in data


def test_an_interrupted_run_keeps_a_valid_json_of_what_it_measured(bench, tmp_path, monkeypatch):
    class Interrupted(BaseException):
        pass

    def interrupt(self, which):
        raise Interrupted

    monkeypatch.setattr(bench.Bench, "warm_phases", interrupt)
    with pytest.raises(Interrupted):
        bench.main(_tiny(tmp_path, "--skip-train"))
    data = json.loads((tmp_path / "b.json").read_text())  # written atomically, figure by figure
    assert data["status"] == "running"
    assert data["completed_phases"] == ["build", "cut3r", "cut3r_graphs", "cold"]
    assert data["cold"]["query_s"] > 0 and data["cold"]["with_cut3r_s"] > 0
    assert not list(tmp_path.glob("*.tmp"))


def test_sigterm_records_the_kill_and_keeps_the_figures(tmp_path):
    out = tmp_path / "b.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(BENCH_DIR / "bench_real_size.py"), *_tiny(tmp_path)]
    cmd[cmd.index("4")] = "64"  # a long run, killed once CUT3R has been measured
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if out.exists() and "cut3r" in json.loads(out.read_text())["completed_phases"]:
                break
            assert process.poll() is None, "the bench ended before it was killed"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 124
    finally:
        if process.poll() is None:
            process.kill()
    data = json.loads(out.read_text())
    assert data["status"] == "killed by signal 15"
    assert data["cut3r"]["fps"] > 0


def test_released_size_is_never_built_on_the_cpu(bench, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--size", "released", "--device", "cpu", "--out", str(tmp_path / "b.json")])
    assert exit_info.value.code == 2
    assert "cuda only" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_released_shapes_on_the_meta_device(bench, tmp_path):
    assert (
        bench.main(["--size", "released", "--shapes-only", "--out", str(tmp_path / "s.json")]) == 0
    )
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["status"] == "shapes_only" and data["device"] == "meta"
    params = data["params"]
    assert params["llm"] == 7_612_641_792  # Qwen2-7B with 151647 + 2 vocabulary rows
    assert params["vision_tower"] == 397_747_744  # SigLIP so400m/14-384, 26 of its 27 layers
    assert params["cut3r"] == 793_307_858  # CUT3R 512 DPT
    shapes = data["shapes"]
    assert shapes["video_tokens_per_frame"] == 211  # 14 x (14 + newline) + the camera token
    assert shapes["siglip"]["patches_per_frame"] == 729
    assert shapes["cut3r"]["image_hw"] == [384, 512]
    assert shapes["cut3r"]["state_size"] == 768 and shapes["cut3r"]["local_mem_size"] == 256
    assert shapes["llm"]["hidden_size"] == 3584 and shapes["llm"]["num_key_value_heads"] == 4
    assert shapes["dtype"] == "bfloat16"
    assert 16 < data["weights_gib"] < 17.5


def test_numerics_script_against_itself_on_the_cpu(tmp_path):
    numerics = _load("numerics_cuda")
    assert numerics.main(["--device", "cpu", "--out", str(tmp_path / "n.json")]) == 0
    data = json.loads((tmp_path / "n.json").read_text())
    assert data["pass"] is True and data["errors"] == {} and data["status"] == "complete"
    for variant in ("linear", "dpt"):
        errors = data["cut3r"][variant]["fp32_device_vs_cpu"]
        assert set(errors) >= {"camera_token", "pts3d_in_other_view", "conf"}
        assert max(errors.values()) == 0.0
        assert max(data["cut3r"][variant]["fp32_device_vs_reference"].values()) <= 1e-4
        assert all(
            math.isfinite(v) for v in data["cut3r"][variant]["bf16_device_vs_cpu_rel"].values()
        )
    assert data["llava"]["fp32_greedy_tokens_equal_cpu"] is True
    assert data["llava"]["fp32_greedy_tokens_equal_reference"] is True
    assert max(data["llava"]["fp32_device_vs_cpu"].values()) == 0.0
    assert len(data["llava"]["bf16_greedy_tokens"]) > 0


def test_gpu_session_script_is_valid_bash_and_names_real_phases(bench):
    import re

    script = BENCH_DIR / "run_on_h200.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "numerics_cuda.py --device cuda" in text
    assert text.count("bench_real_size.py --size released --device cuda") == 2
    phase_lists = re.findall(r"--phases ([a-z0-9_,]+)", text)
    assert len(phase_lists) == 2
    named = {p for phases in phase_lists for p in phases.split(",")}
    assert named <= set(bench.PHASES)
    assert {"graphs", "cut3r_graphs", "cold", "train", "profile"} <= named
    timeouts = [int(t) for t in re.findall(r"timeout -k \d+ (\d+) ", text)]
    assert len(timeouts) == 4 and sum(timeouts) <= 520  # + kill graces: inside a 570 s call


def test_phases_selects_what_runs(bench, tmp_path):
    args = _tiny(tmp_path, "--phases", "warm_localize")
    assert bench.main(args) == 0
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["completed_phases"] == ["build", "cut3r", "warm_localize"]  # cut3r: always
    assert data["warm_localize"]["seconds"] > 0 and "cold" not in data and "graphs" not in data
    with pytest.raises(SystemExit):
        bench.main(_tiny(tmp_path, "--phases", "cut3r,warp"))
