"""LLaVA-Video base: the lmms-lab layout loads fully and reproduces the original code's outputs.

What is particular to the fixture set (the question, the video's duration and frame times, the
vocabulary size, the generation settings and length, the shard names) is read from its files.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from loc3r.vlm import (
    LlavaCheckpointError,
    chat_prompt,
    frames_to_pixel_values,
    load_llava_video,
    map_checkpoint_key,
    time_instruction,
    tokenize_with_video,
)
from loc3r.vlm.checkpoint import read_checkpoint


@pytest.fixture(scope="module")
def ref(data_dir):
    root = data_dir / "llava_video_reference"
    return root, dict(np.load(root / "reference_outputs.npz"))


def _weight_map(root: Path) -> dict[str, str]:
    """Checkpoint key -> shard file name, from the checkpoint's index."""
    index = json.loads((root / "tiny_llava_video" / "model.safetensors.index.json").read_text())
    return index["weight_map"]


def greedy_settings(root: Path, d: dict) -> dict:
    """The settings of the recorded greedy call.

    generation_config.json's stop ids and repetition penalty (the model card's call picks them
    up), and as many new tokens as were recorded.
    """
    config = json.loads((root / "tiny_llava_video" / "generation_config.json").read_text())
    eos = config["eos_token_id"]
    return {
        "max_new_tokens": d["greedy_token_ids"].shape[1],
        "stop_ids": tuple(eos) if isinstance(eos, list) else (eos,),
        "repetition_penalty": config["repetition_penalty"],
    }


def _prompt_values(prompt: str) -> tuple[float, list[float], str]:
    """Duration, frame times and question the reference prompt was built from.

    The fixture records them only inside its prompt: the user turn is "<image>", the time
    instruction and the question, one per line.
    """
    user = prompt.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    _, instruction, question = user.split("\n", 2)
    duration = re.search(r"lasts for ([0-9.]+) seconds", instruction)
    times = re.search(r"located at ([0-9.]+s(?:,[0-9.]+s)*)", instruction)
    assert duration and times, instruction
    return float(duration[1]), [float(t[:-1]) for t in times[1].split(",")], question


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def loaded(ref, request):
    root, _ = ref
    torch.manual_seed(0)
    return load_llava_video(
        root / "tiny_llava_video", root / "siglip_vision_tower", attn_implementation=request.param
    )


def test_every_checkpoint_tensor_is_mapped_and_equal(ref, loaded):
    root, d = ref
    model, tokenizer = loaded
    keys = set(_weight_map(root))
    mapped = {map_checkpoint_key(k, model.vision_body_prefix) for k in keys}
    state = model.state_dict()
    assert len(mapped) == len(keys) == len(state)
    assert mapped == set(state)
    rows = int(d["embedding_rows_after_resize"])
    assert rows == len(tokenizer)
    raw = read_checkpoint(root / "tiny_llava_video", torch.float32, model.vision_body_prefix)
    assert len(raw) == len(keys)
    for name, tensor in raw.items():
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            tensor = tensor[:rows]  # vocabulary cut to len(tokenizer)
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0)


def test_pipeline_reproduces_reference(ref, loaded):
    root, d = ref
    model, tokenizer = loaded
    assert len(tokenizer) == int(d["embedding_rows_after_resize"]) == d["logits"].shape[-1]
    pixels = frames_to_pixel_values(d["frames_uint8"])
    np.testing.assert_array_equal(pixels.numpy(), d["pixel_values"])
    with torch.no_grad():
        features = model.vision_features(pixels)
        np.testing.assert_allclose(features.numpy(), d["vision_tower_features"], atol=1e-5)
        projected = model.mm_projector(features)
        pooled = model.pool(projected)
        np.testing.assert_allclose(pooled.numpy(), d["pooled_features"], atol=1e-5)
        video = model.frame_tokens(pixels).flatten(0, 1)  # frames one after the other
        np.testing.assert_allclose(video.numpy(), d["video_features_with_newlines"], atol=1e-5)
        duration, times, question = _prompt_values(str(d["prompt"]))
        frames = len(d["frame_indices"])
        assert frames == len(d["frames_uint8"]) == len(times)
        prompt = chat_prompt(
            "<image>\n" + time_instruction(frames, duration, times) + "\n" + question
        )
        assert prompt == str(d["prompt"])
        ids = tokenize_with_video(prompt, tokenizer)
        np.testing.assert_array_equal(ids.numpy(), d["input_ids"][0])
        embeds = model.splice(ids, video)
        np.testing.assert_allclose(embeds.numpy(), d["inputs_embeds"], atol=1e-5)
        logits = model.language_model(inputs_embeds=embeds).logits
        assert np.abs(logits.numpy() - d["logits"]).max() <= 1e-4
    check_greedy(model, embeds, greedy_settings(root, d), d)


def check_greedy(model, embeds: torch.Tensor, settings: dict, d: dict) -> None:
    """Greedy generation from `embeds` gives the recorded tokens and step logits."""
    with torch.no_grad():
        tokens, steps = model.generate_greedy(embeds, **settings)
        assert tokens == d["greedy_token_ids"][0].tolist()
        assert np.abs(torch.stack(steps).numpy() - d["greedy_step_logits"][0]).max() <= 1e-4
        settings = {**settings, "repetition_penalty": 1.0}  # the recorded call without penalty
        plain, _ = model.generate_greedy(embeds, **settings)
        assert plain == d["greedy_token_ids_no_repetition_penalty"][0].tolist()


def _copy_checkpoint(ref, tmp_path):
    root, _ = ref
    target = tmp_path / "ckpt"
    # plain copies: the tests rewrite and delete files, and the fixtures may be read-only
    shutil.copytree(root / "tiny_llava_video", target, copy_function=shutil.copyfile)
    target.chmod(0o755)
    return root, target


def test_a_shorter_recorded_generation_is_followed(ref, loaded):
    """A set that recorded fewer greedy steps is checked for that many: the length is read."""
    root, d = ref
    model, _ = loaded
    keep = max(1, d["greedy_token_ids"].shape[1] // 2)
    greedy = ("greedy_token_ids", "greedy_step_logits", "greedy_token_ids_no_repetition_penalty")
    shorter = {**d, **{key: d[key][:, :keep] for key in greedy}}
    settings = greedy_settings(root, shorter)
    assert settings["max_new_tokens"] == keep
    check_greedy(model, torch.from_numpy(d["inputs_embeds"]), settings, shorter)


def _shard_of(root: Path, target: Path, suffix: str) -> Path:
    """The copied shard that holds the checkpoint key ending in `suffix`."""
    return target / next(v for k, v in _weight_map(root).items() if k.endswith(suffix))


def test_checkpoint_with_a_wrong_shape_names_the_key(ref, tmp_path):
    root, target = _copy_checkpoint(ref, tmp_path)
    shard = _shard_of(root, target, "mm_projector.2.bias")
    tensors = load_file(shard)
    key = next(k for k in tensors if k.endswith("mm_projector.2.bias"))
    tensors[key] = torch.zeros(3, dtype=tensors[key].dtype)
    save_file(tensors, shard)
    with pytest.raises(LlavaCheckpointError, match="mm_projector.2.bias"):
        load_llava_video(target, root / "siglip_vision_tower")


def test_checkpoint_with_missing_and_extra_keys(ref, tmp_path):
    root, target = _copy_checkpoint(ref, tmp_path)
    shard = _shard_of(root, target, "mm_projector.2.bias")
    tensors = load_file(shard)
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    tensors["model.mm_projector.9.weight"] = torch.zeros(1)
    save_file(tensors, shard)
    with pytest.raises(LlavaCheckpointError) as err:
        load_llava_video(target, root / "siglip_vision_tower")
    assert "1 missing keys" in str(err.value) and "unexpected keys" in str(err.value)
    assert "model.mm_projector.9.weight" not in str(err.value)  # reported under our name
    assert "mm_projector.9.weight" in str(err.value)


def test_missing_shard_and_unknown_key(ref, tmp_path):
    root, target = _copy_checkpoint(ref, tmp_path)
    (target / sorted(set(_weight_map(root).values()))[0]).unlink()
    with pytest.raises(LlavaCheckpointError, match="shards missing"):
        load_llava_video(target, root / "siglip_vision_tower")
    with pytest.raises(LlavaCheckpointError, match="unexpected checkpoint key"):
        map_checkpoint_key("vision_tower.other.weight")
