"""CUT3R checkpoint loading: strictness, safety against malicious pickles, format round trips."""

import argparse
import json
import os
import pickle
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR

from loc3r.cut3r import (
    Cut3r,
    Cut3rCheckpointError,
    Cut3rConfig,
    Cut3rConfigError,
    UnsafeCheckpointError,
    load_cut3r,
    load_official,
    parse_constructor_string,
    save_official,
    save_pretrained,
)
from loc3r.cut3r.checkpoint import read_official_checkpoint
from loc3r.cut3r.convert import main as convert_main

DATA = DATA_DIR / "cut3r_reference"
LINEAR = DATA / "cut3r_tiny_linear.pth"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def official():
    args, state_dict = read_official_checkpoint(LINEAR)
    return args.model, {k: v.contiguous() for k, v in state_dict.items()}


def _save(path, model_string, state_dict, **extra):
    torch.save({"args": argparse.Namespace(model=model_string), "model": state_dict, **extra}, path)
    return path


# ----------------------------------------------------------------- constructor string parsing
def test_parse_official_string(official):
    kwargs = parse_constructor_string(official[0])
    resolved = json.loads(LINEAR.with_suffix(".json").read_text())["config_resolved"]
    assert kwargs["state_size"] == resolved["state_size"]
    assert kwargs["depth_mode"] == tuple(
        float(v) if v in ("inf", "-inf") else v for v in resolved["depth_mode"]
    )
    assert kwargs["img_size"] == tuple(resolved["croco_kwargs"]["img_size"])


@pytest.mark.parametrize(
    "text",
    [
        "ARCroco3DStereo(ARCroco3DStereoConfig(state_size=__import__('os').system('true')))",
        "ARCroco3DStereo(ARCroco3DStereoConfig(state_size=open('/etc/passwd')))",
        "ARCroco3DStereo(ARCroco3DStereoConfig(head_type=x.y))",
        "ARCroco3DStereo(ARCroco3DStereoConfig(state_size=1+1))",
        "os.system('true')",
        "ARCroco3DStereo(ARCroco3DStereoConfig(**{'a': 1}))",
        "ARCroco3DStereo(ARCroco3DStereoConfig(state_size=1, state_size=2))",
        "ARCroco3DStereo(ARCroco3DStereoConfig(",
    ],
)
def test_parse_rejects_non_literals(text):
    with pytest.raises(Cut3rConfigError):
        parse_constructor_string(text)


def test_config_rejects_unsupported_and_unknown():
    with pytest.raises(Cut3rConfigError, match="unsupported ARCroco3DStereoConfig keywords"):
        Cut3rConfig.from_constructor_kwargs({"bogus": 1})
    with pytest.raises(Cut3rConfigError, match="pose_head"):
        Cut3rConfig.from_constructor_string(
            "ARCroco3DStereo(ARCroco3DStereoConfig(pos_embed='RoPE100', output_mode='pts3d+pose'))"
        )
    with pytest.raises(Cut3rConfigError, match="head width"):
        Cut3rConfig(enc_embed_dim=96, enc_num_heads=16)


def test_config_string_and_dict_round_trip():
    for config in (Cut3rConfig.tiny(), Cut3rConfig.dpt_512(), Cut3rConfig.linear_224()):
        assert Cut3rConfig.from_constructor_string(config.to_constructor_string()) == config
        assert Cut3rConfig.from_dict(config.to_dict()) == config


# ------------------------------------------------------------------------- corrupt checkpoints
def test_truncated_file(tmp_path):
    data = LINEAR.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(Cut3rCheckpointError, match="truncated|not a"):
        load_cut3r(bad)


def test_missing_file(tmp_path):
    with pytest.raises(Cut3rCheckpointError, match="not found"):
        load_cut3r(tmp_path / "nope.pth")


def test_wrong_shapes_named(tmp_path, official):
    text, state = official
    state = dict(state)
    state["dec_norm.weight"] = torch.zeros(65)
    with pytest.raises(Cut3rCheckpointError, match=r"mis-shaped.*dec_norm\.weight"):
        load_cut3r(_save(tmp_path / "shape.pth", text, state))


def test_missing_keys_named(tmp_path, official):
    text, state = official
    state = {k: v for k, v in state.items() if not k.startswith("pose_retriever.read_blocks.1")}
    with pytest.raises(Cut3rCheckpointError, match=r"missing keys.*pose_retriever\.read_blocks\.1"):
        load_cut3r(_save(tmp_path / "missing.pth", text, state))


def test_unexpected_keys_named(tmp_path, official):
    text, state = official
    state = {**state, "extra.weight": torch.zeros(3)}
    with pytest.raises(Cut3rCheckpointError, match=r"unexpected keys.*extra\.weight"):
        load_cut3r(_save(tmp_path / "extra.pth", text, state))


def test_config_mismatch_named(tmp_path, official):
    text, state = official
    with pytest.raises(Cut3rCheckpointError, match="mis-shaped"):
        load_cut3r(
            _save(tmp_path / "cfg.pth", text.replace("state_size=16", "state_size=25"), state)
        )


def test_module_prefix_is_stripped(tmp_path, official):
    text, state = official
    model = load_cut3r(
        _save(tmp_path / "ddp.pth", text, {f"module.{k}": v for k, v in state.items()})
    )
    assert torch.equal(model.state_dict()["pose_token"], state["pose_token"])


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_non_cut3r_pickles(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(Cut3rCheckpointError, match="missing top-level keys"):
        load_cut3r(plain)
    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(Cut3rCheckpointError, match="top level is Tensor"):
        load_cut3r(tensor_only)
    no_string = tmp_path / "nostring.pth"
    torch.save({"args": argparse.Namespace(lr=1.0), "model": {"a": torch.zeros(1)}}, no_string)
    with pytest.raises(Cut3rCheckpointError, match="no 'ARCroco3DStereo"):
        load_cut3r(no_string)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"args": "x", "model": [1, 2]}))
    with pytest.raises(Cut3rCheckpointError):
        load_cut3r(raw)
    text_file = tmp_path / "text.pth"
    text_file.write_text("hello")
    with pytest.raises(Cut3rCheckpointError):
        load_cut3r(text_file)


class _WritesFile:
    """Unpickling this calls os.system / exec, which would create `marker`."""

    def __init__(self, marker, via):
        self.marker, self.via = str(marker), via

    def __reduce__(self):
        if self.via == "os.system":
            return (os.system, (f"touch {self.marker}",))
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("via", ["os.system", "exec"])
@pytest.mark.parametrize("container", ["torch_zip", "raw_pickle"])
def test_malicious_pickle_never_executes(tmp_path, via, container):
    marker = tmp_path / "pwned.txt"
    payload = {"args": _WritesFile(marker, via), "model": {}}
    path = tmp_path / "evil.pth"
    if container == "torch_zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UnsafeCheckpointError) as info:
        load_cut3r(path)
    assert ("system" in str(info.value)) or ("exec" in str(info.value))
    assert not marker.exists()


def test_omegaconf_like_args_become_inert_data(tmp_path, official, monkeypatch):
    """A Hydra/OmegaConf object in 'args' loads as inert data; its model string is found."""
    text, state = official
    executed = []

    class DictConfig:  # stands in for omegaconf.dictconfig.DictConfig
        def __init__(self, content):
            self._content = content

        def __setstate__(self, st):
            executed.append("setstate")  # would run if the real class were used
            self.__dict__.update(st)

    fake_root = types.ModuleType("omegaconf")
    fake_mod = types.ModuleType("omegaconf.dictconfig")
    DictConfig.__module__, DictConfig.__qualname__ = "omegaconf.dictconfig", "DictConfig"
    fake_mod.DictConfig = DictConfig
    monkeypatch.setitem(sys.modules, "omegaconf", fake_root)
    monkeypatch.setitem(sys.modules, "omegaconf.dictconfig", fake_mod)
    path = tmp_path / "hydra.pth"
    args = DictConfig({"model": text, "lr": 1e-4, "nested": DictConfig({"x": 1})})
    torch.save({"args": args, "model": state, "epoch": 3}, path)
    monkeypatch.delitem(sys.modules, "omegaconf.dictconfig")
    monkeypatch.delitem(sys.modules, "omegaconf")

    model, model_string = load_official(path)
    assert model_string == text
    assert executed == []
    assert "omegaconf" not in sys.modules


# ---------------------------------------------------------------------------------- round trips
def test_pth_to_safetensors_to_pth_identical(tmp_path, official):
    text, state = official
    out_dir = tmp_path / "converted"
    assert convert_main([str(LINEAR), str(out_dir)]) == 0
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "config.json").is_file()
    back = tmp_path / "back.pth"
    assert convert_main(["--to-pth", str(out_dir), str(back)]) == 0
    args, state_back = read_official_checkpoint(back)
    assert args.model == text
    assert set(state_back) == set(state)
    for key, value in state.items():
        assert state_back[key].dtype == value.dtype
        assert torch.equal(state_back[key], value), key
    reloaded = load_cut3r(out_dir)
    for key, value in state.items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_dpt_round_trip_handles_aliased_modules(tmp_path):
    model = load_official(DATA / "cut3r_tiny_dpt.pth")[0]
    save_pretrained(model, tmp_path / "dpt")
    reloaded = load_cut3r(tmp_path / "dpt")
    key = "downstream_head.dpt_self.scratch.layer_rn.0.weight"
    assert torch.equal(reloaded.state_dict()[key], model.state_dict()[key])
    save_official(reloaded, tmp_path / "dpt.pth")
    again = load_cut3r(tmp_path / "dpt.pth")
    assert torch.equal(again.state_dict()[key], model.state_dict()[key])


def test_convert_cli_reports_errors(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04broken")
    assert convert_main([str(bad), str(tmp_path / "out")]) == 2
    assert convert_main(["--to-pth", str(tmp_path / "missing_dir"), str(tmp_path / "x.pth")]) == 2


def test_convert_cli_as_module(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "loc3r_ros"), "OMP_NUM_THREADS": "1"}
    out_dir = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "loc3r.cut3r.convert", str(LINEAR), str(out_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    assert (out_dir / "model.safetensors").is_file()


def test_safetensors_dir_errors(tmp_path):
    model = Cut3r(Cut3rConfig.tiny())
    save_pretrained(model, tmp_path / "ok")
    (tmp_path / "ok" / "config.json").write_text("{not json")
    with pytest.raises(Cut3rCheckpointError, match="invalid JSON"):
        load_cut3r(tmp_path / "ok")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Cut3rCheckpointError, match="missing"):
        load_cut3r(empty)
    assert zipfile.is_zipfile(LINEAR)
