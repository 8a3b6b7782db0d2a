"""Weights by name: hub repos and URLs fetched from a loopback server, pinned, verified, cached.

A fake hub on 127.0.0.1 (HF_ENDPOINT points at it) serves the tiny fixtures in the real layouts:
an lmms-lab LLaVA-Video checkpoint (two shards), a SigLIP config, an official CUT3R .pth. The
bundle built from them answers through the engine; then offline use, and every failure.
"""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from fake_hub import FakeHub, Repo

from loc3r.engine import EngineConfig, KeyframeConfig, SceneEngine
from loc3r.engine.make_bundle import main as make_bundle
from loc3r.engine.model_fetch import FetchError, Source, fetch_url, parse_source, read_lock
from loc3r.engine.models import load_bundle

LLAVA, SIGLIP = "lmms-lab/tiny-llava-video", "google/tiny-siglip"


@pytest.fixture
def hub(data_dir, tmp_path, monkeypatch):
    llava = data_dir / "llava_video_reference"
    fake = FakeHub(
        repos={
            LLAVA: Repo.from_folder(llava / "tiny_llava_video", "llava"),
            SIGLIP: Repo.from_folder(llava / "siglip_vision_tower", "siglip"),
        },
        files={"cut3r.pth": (data_dir / "cut3r_reference" / "cut3r_tiny_linear.pth").read_bytes()},
    )
    base = fake.start()
    for name in ("HF_HUB_OFFLINE", "LOC3R_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", base)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("LOC3R_HOME", str(tmp_path / "loc3r"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    fake.base = base
    yield fake
    fake.stop()


def build(tmp_path, hub, *extra: str) -> tuple[int, str]:
    argv = ["--out", str(tmp_path / "bundle"), "--llava-video", LLAVA, "--vision-tower", SIGLIP,
            "--cut3r", f"{hub.base}/files/cut3r.pth", "--cut3r-size", "224", "--frames", "2",
            "--lock", str(tmp_path / "lock.json"), *extra]  # fmt: skip
    return make_bundle(argv), str(tmp_path / "bundle")


def answers(bundle_dir: str) -> str:
    """Ask the engine a question over two frames with the bundle; returns the answer."""
    bundle = load_bundle(bundle_dir)
    config = EngineConfig(keyframes=KeyframeConfig(min_interval_s=0.0, min_change=0.0),
                          num_query_frames=2, mode="faithful")  # fmt: skip
    engine = SceneEngine(config)
    engine.set_models(bundle.model, bundle.perception, 2)
    try:
        for i in range(2):
            engine.add_frame(np.full((40, 60, 3), 60 * i + 20, np.uint8), i * 10**9)
        return engine.ask("What is on my left?", "I am on the bed").answer
    finally:
        engine.close()


def test_bundle_from_hub_names_and_a_url_resumes_pins_and_answers(hub, tmp_path, capsys):
    hub.cut_once.add("files/cut3r.pth")  # the first download stops halfway
    hub.cut_once.add(f"{LLAVA}/model-00001-of-00002.safetensors")  # a hub file too
    code, out = build(tmp_path, hub, "--name", "tiny")
    assert code == 2
    assert "connection closed after" in capsys.readouterr().err  # a clear error, then resume
    assert not Path(out).exists()
    code, out = build(tmp_path, hub, "--name", "tiny")
    assert code == 0, capsys.readouterr().err
    ranged = [r for r in hub.requested("/files/cut3r.pth") if r[2]]
    assert ranged and ranged[-1][2].startswith("bytes=") and ranged[-1][2] != "bytes=0-"
    # huggingface_hub retried the hub file cut off halfway; the copy kept matches the hub's hash
    assert len(hub.requested("model-00001-of-00002.safetensors")) == 2
    assert isinstance(answers(out), str)
    lock = read_lock(tmp_path / "lock.json")["models"]["tiny"]
    assert lock["llava_video"] == {"repo": LLAVA, "revision": hub.repos[LLAVA].commit}
    assert lock["vision_tower"]["revision"] == hub.repos[SIGLIP].commit
    expected = hashlib.sha256(hub.files["cut3r.pth"]).hexdigest()
    assert lock["cut3r"] == {"url": f"{hub.base}/files/cut3r.pth", "sha256": expected}
    assert not hub.requested(f"{SIGLIP}/resolve/main/model.safetensors")  # config only
    assert hub.requested("model-00002-of-00002.safetensors")  # both shards of the index
    assert not list(tmp_path.glob(".bundle.tmp-*"))


def test_named_model_works_offline_from_a_warm_cache_and_names_what_a_cold_one_lacks(
    hub, tmp_path, monkeypatch, capsys
):
    assert build(tmp_path, hub, "--name", "tiny")[0] == 0
    capsys.readouterr()
    hub.stop()  # no network from here on
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lock = str(tmp_path / "lock.json")
    warm = tmp_path / "warm"
    assert make_bundle(["--model", "tiny", "--lock", lock, "--out", str(warm)]) == 0
    assert isinstance(answers(str(warm)), str)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "cold_hf"))
    monkeypatch.setenv("LOC3R_HOME", str(tmp_path / "cold_loc3r"))
    code = make_bundle(["--model", "tiny", "--lock", lock, "--out", str(tmp_path / "cold")])
    err = capsys.readouterr().err
    assert code == 2 and "offline and not in the cache" in err
    assert "python -m loc3r.engine.make_bundle --model tiny" in err  # the command that fetches
    assert f"{LLAVA}@{read_lock(lock)['models']['tiny']['llava_video']['revision']}" in err
    assert not (tmp_path / "cold").exists()
    code = make_bundle(["--model", "nope", "--lock", lock])
    assert code == 2 and "no model named 'nope'" in capsys.readouterr().err


def test_a_corrupted_hub_file_is_rejected_and_no_bundle_is_left(hub, tmp_path, capsys):
    hub.corrupt.add(f"{LLAVA}/model-00002-of-00002.safetensors")
    code, out = build(tmp_path, hub)
    err = capsys.readouterr().err
    assert code == 2 and "does not match the hub's" in err and "model-00002" in err
    assert not Path(out).exists() and not list(tmp_path.glob(".bundle.tmp-*"))
    hub.corrupt.clear()  # fixed upstream: the next run downloads it again and succeeds
    assert build(tmp_path, hub)[0] == 0


def test_url_checksum_404_timeout_and_full_disk_are_clear_errors(hub, tmp_path, monkeypatch):
    with pytest.raises(FetchError, match="does not match the expected"):
        fetch_url(Source("url", f"{hub.base}/files/cut3r.pth", sha256="0" * 64), "cmd")
    assert not list((tmp_path / "loc3r").rglob("cut3r.pth*"))  # the wrong file is removed
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_url(Source("url", f"{hub.base}/files/missing.pth"), "cmd")
    hub.slow.add("files/cut3r.pth")
    with pytest.raises(FetchError, match="timed out"):
        fetch_url(Source("url", f"{hub.base}/files/cut3r.pth"), "cmd", timeout_s=0.5)
    hub.slow.clear()

    def full_disk(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("loc3r.engine.model_fetch._download", full_disk)
    with pytest.raises(FetchError, match="disk full"):
        fetch_url(Source("url", f"{hub.base}/files/cut3r.pth"), "cmd")
    from loc3r.engine.model_fetch import fetch

    with pytest.raises(FetchError, match="missing-repo: cannot resolve main: 404.*no such repo"):
        fetch(Source("hub", "lmms-lab/missing-repo", "main"), "llava_video", "cmd")


def test_sources_are_parsed_and_the_shipped_lock_names_the_real_models(tmp_path):
    assert parse_source("lmms-lab/LLaVA-Video-7B-Qwen2@abc") == Source(
        "hub", "lmms-lab/LLaVA-Video-7B-Qwen2", "abc"
    )
    one = parse_source("org/cut3r/cut3r_512_dpt_4_64.pth", single_file=True)
    assert (one.location, one.filename, one.revision) == (
        "org/cut3r",
        "cut3r_512_dpt_4_64.pth",
        None,
    )
    assert parse_source("https://x.org/a.pth").kind == "url"
    assert parse_source(str(tmp_path)).kind == "path"
    for bad in ("", "not a repo", "a/b/c"):
        with pytest.raises(FetchError):
            parse_source(bad)
    models = read_lock()["models"]  # config/models.lock.json
    real = models["loc3r-llava-video-7b"]
    assert real["llava_video"]["repo"] == "lmms-lab/LLaVA-Video-7B-Qwen2"
    assert real["vision_tower"]["repo"] == "google/siglip-so400m-patch14-384"
    assert real["cut3r_size"] == 512 and real["frames"] == 32
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FetchError, match="invalid JSON"):
        read_lock(tmp_path / "bad.json")
    assert json.loads(json.dumps(read_lock(tmp_path / "absent.json"))) == {
        "format": "loc3r_models_lock", "models": {}
    }  # fmt: skip
