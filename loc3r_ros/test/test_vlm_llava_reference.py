"""LLaVA-Video base: the lmms-lab layout loads fully and reproduces the original code's outputs."""

from __future__ import annotations

import json
import shutil

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


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def loaded(ref, request):
    root, _ = ref
    torch.manual_seed(0)
    return load_llava_video(
        root / "tiny_llava_video", root / "siglip_vision_tower", attn_implementation=request.param
    )


def test_every_checkpoint_tensor_is_mapped_and_equal(ref, loaded):
    root, _ = ref
    model, _ = loaded
    index = json.loads((root / "tiny_llava_video" / "model.safetensors.index.json").read_text())
    keys = set(index["weight_map"])
    mapped = {map_checkpoint_key(k, model.vision_body_prefix) for k in keys}
    state = model.state_dict()
    assert len(mapped) == len(keys) == len(state) == 69
    assert mapped == set(state)
    raw = read_checkpoint(root / "tiny_llava_video", torch.float32, model.vision_body_prefix)
    for name, tensor in raw.items():
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            tensor = tensor[:560]  # vocabulary cut to len(tokenizer)
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0)


def test_pipeline_reproduces_reference(ref, loaded):
    _, d = ref
    model, tokenizer = loaded
    assert len(tokenizer) == int(d["embedding_rows_after_resize"]) == 560
    pixels = frames_to_pixel_values(d["frames_uint8"])
    np.testing.assert_array_equal(pixels.numpy(), d["pixel_values"])
    with torch.no_grad():
        features = model.vision_features(pixels)
        np.testing.assert_allclose(features.numpy(), d["vision_tower_features"], atol=1e-5)
        projected = model.mm_projector(features)
        pooled = model.pool(projected)
        np.testing.assert_allclose(pooled.numpy(), d["pooled_features"], atol=1e-5)
        video = model.frame_tokens(pixels).reshape(-1, 64)
        np.testing.assert_allclose(video.numpy(), d["video_features_with_newlines"], atol=1e-5)
        times = (d["frame_indices"] / 10.0).tolist()
        prompt = chat_prompt(
            "<image>\n"
            + time_instruction(4, 4.0, times)
            + "\nPlease describe this video in detail."
        )
        assert prompt == str(d["prompt"])
        ids = tokenize_with_video(prompt, tokenizer)
        np.testing.assert_array_equal(ids.numpy(), d["input_ids"][0])
        embeds = model.splice(ids, video)
        np.testing.assert_allclose(embeds.numpy(), d["inputs_embeds"], atol=1e-5)
        logits = model.language_model(inputs_embeds=embeds).logits
        assert np.abs(logits.numpy() - d["logits"]).max() <= 1e-4
        tokens, steps = model.generate_greedy(
            embeds, max_new_tokens=8, stop_ids=(558, 556), repetition_penalty=1.05
        )
        assert tokens == d["greedy_token_ids"][0].tolist()
        assert np.abs(torch.stack(steps).numpy() - d["greedy_step_logits"][0]).max() <= 1e-4
        plain, _ = model.generate_greedy(embeds, max_new_tokens=8, stop_ids=(558, 556))
        assert plain == d["greedy_token_ids_no_repetition_penalty"][0].tolist()


def _copy_checkpoint(ref, tmp_path):
    root, _ = ref
    target = tmp_path / "ckpt"
    shutil.copytree(root / "tiny_llava_video", target)
    return root, target


def test_checkpoint_with_a_wrong_shape_names_the_key(ref, tmp_path):
    root, target = _copy_checkpoint(ref, tmp_path)
    shard = target / "model-00002-of-00002.safetensors"
    tensors = load_file(shard)
    key = next(k for k in tensors if k.endswith("mm_projector.2.bias"))
    tensors[key] = torch.zeros(3, dtype=tensors[key].dtype)
    save_file(tensors, shard)
    with pytest.raises(LlavaCheckpointError, match="mm_projector.2.bias"):
        load_llava_video(target, root / "siglip_vision_tower")


def test_checkpoint_with_missing_and_extra_keys(ref, tmp_path):
    root, target = _copy_checkpoint(ref, tmp_path)
    shard = target / "model-00002-of-00002.safetensors"
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
    (target / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(LlavaCheckpointError, match="shards missing"):
        load_llava_video(target, root / "siglip_vision_tower")
    with pytest.raises(LlavaCheckpointError, match="unexpected checkpoint key"):
        map_checkpoint_key("vision_tower.other.weight")
