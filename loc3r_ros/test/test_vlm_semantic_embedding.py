"""The semantic embedding (loc3r.vlm.semantic_embedding): a tower tells each cell what it shows."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from loc3r.train.config import TrainConfig
from loc3r.train.pipeline import (
    add_semantic_embedding,
    build_model,
    check_semantic_init,
    continue_from,
    prepare_run,
)
from loc3r.train.pretrain_vision import PatchHeads, VisionPretrainConfig, pretrain, tower_weights
from loc3r.vlm import Loc3rVLMConfig
from loc3r.vlm.llava_video import LlavaVideoConfig
from loc3r.vlm.semantic_embedding import SemanticEmbedding, head_classes
from loc3r.vlm.tiny import build_tiny_loc3r, tiny_llava_config

SIZES = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128,
         "image_size": 56, "vision_hidden": 32, "vision_layers": 2}  # fmt: skip


def tower(width: int) -> LlavaVideoConfig:
    """A VLM config whose tower is `width` wide (one layer kept, 56 px: a 4x4 patch grid)."""
    return tiny_llava_config(vocab_size=16, vision_hidden=width, vision_layers=1)


def probe_heads(vision_dim: int, classes=(3, 2)) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    kinds, colours = classes
    return {"kind.weight": torch.randn(kinds, vision_dim), "kind.bias": torch.randn(kinds),
            "colour.weight": torch.randn(colours, vision_dim), "colour.bias": torch.randn(colours),
            "depth.weight": torch.randn(1, vision_dim), "depth.bias": torch.randn(1)}  # fmt: skip


def test_a_cell_says_what_any_of_its_patches_shows():
    embedding = SemanticEmbedding(tower(4), hidden=8, classes=(3, 2))
    with torch.no_grad():  # kind logits = 10 x the feature: a one-hot feature is one sure kind
        embedding.kind.weight.copy_(10 * torch.eye(3, 4))
        embedding.kind.bias.zero_()
        embedding.colour.weight.zero_()
        embedding.colour.bias.zero_()
    features = torch.zeros(1, 16, 4)  # a 4x4 patch grid of surface (kind 0) ...
    features[..., 0] = 1.0
    features[0, 6] = torch.tensor(
        [0.0, 0.0, 1.0, 0.0]
    )  # ... but patch (1, 2), in cell (0, 1), shows 2
    probs = embedding.probabilities(features, pooled_grid=2)  # 2x2 cells, row-major
    assert probs.shape == (1, 4, 5)
    sure = torch.softmax(torch.tensor([0.0, 0.0, 10.0]), 0)[2]
    torch.testing.assert_close(probs[0, 1, 2], sure)  # one patch in four, and the cell is sure
    assert (probs[0, [0, 2, 3], 2] < 1e-3).all()  # the other cells show no kind 2
    torch.testing.assert_close(probs[0, :, 3:], torch.full((4, 2), 0.5))  # colours: undecided
    mean_pooled = torch.softmax(10 * features[..., :3], -1).view(1, 2, 2, 2, 2, 3).mean((2, 4))
    assert mean_pooled[0, 0, 1, 2] < 0.3  # averaging would have lost it
    pixels = torch.randn(2, 3, 56, 56)
    assert embedding(pixels, 2).shape == (2, 4, 8)
    assert embedding(pixels, 2).abs().sum() == 0  # the projection starts at zero
    with pytest.raises(ValueError, match="square grid"):
        embedding.probabilities(torch.zeros(1, 15, 4), 2)


def test_the_heads_load_from_a_probe_and_refuse_what_does_not_fit():
    heads = probe_heads(4)
    assert head_classes(heads) == ((3, 2), 0)
    embedding = SemanticEmbedding(tower(4), 8, (3, 2))
    embedding.load_heads(heads)
    torch.testing.assert_close(embedding.kind.weight, heads["kind.weight"])
    torch.testing.assert_close(embedding.colour.bias, heads["colour.bias"])
    frozen = [*embedding.tower.parameters(), *embedding.kind.parameters(),
              *embedding.colour.parameters()]  # fmt: skip
    assert not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for p in embedding.proj.parameters())
    with pytest.raises(ValueError, match="another tower width"):
        SemanticEmbedding(tower(6), 8, (3, 2)).load_heads(heads)
    with pytest.raises(ValueError, match="no colour.bias"):
        embedding.load_heads({k: v for k, v in heads.items() if k != "colour.bias"})
    with pytest.raises(ValueError, match="no colour head"):
        head_classes({"kind.weight": heads["kind.weight"]})


def test_a_probe_with_a_hidden_layer_loads_as_such():
    torch.manual_seed(2)
    probe = PatchHeads(4, probe_hidden=6)
    heads = {k: v.clone() for k, v in probe.state_dict().items()}
    assert head_classes(heads) == ((13, 11), 6)
    embedding = SemanticEmbedding(tower(4), 8, (13, 11), probe_hidden=6)
    embedding.load_heads(heads)
    assert embedding.classes == (13, 11)
    features = torch.randn(2, 16, 4)
    kind_probs = probe(features)[0].softmax(-1)
    expected = kind_probs.view(2, 2, 2, 2, 2, 13).amax((2, 4)).reshape(2, 4, 13)
    torch.testing.assert_close(embedding.probabilities(features, 2)[..., :13], expected)
    with pytest.raises(ValueError, match="another probe depth"):
        SemanticEmbedding(tower(4), 8, (13, 11)).load_heads(heads)


def test_a_model_given_the_embedding_answers_as_before_and_keeps_it(tokenizer_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    config = Loc3rVLMConfig(cam_token_dim=24, point_embedding=True)  # 56 px: 2x2 cells
    model = build_tiny_loc3r(tokenizer, config, **SIZES).eval()
    probe = tmp_path / "probe"  # a pretrain_vision output: another tower of the model's shape
    probe.mkdir()
    other = build_tiny_loc3r(tokenizer, config, **SIZES).base.vision_tower.state_dict()
    other = {k: v.contiguous() for k, v in other.items()}
    save_file(other, str(probe / "vision_tower.safetensors"))
    save_file(probe_heads(32), str(probe / "patch_heads.safetensors"))
    pixels, tokens = torch.randn(2, 3, 56, 56), torch.randn(2, 24)
    before, index = model.video_embeddings(pixels, tokens)
    add_semantic_embedding(model, probe)
    assert model.config.semantic_classes == (3, 2) and config.semantic_classes == ()
    for name, value in model.semantic_embedding.tower.state_dict().items():
        assert torch.equal(value, other[name]), name  # the probe's tower, not the VLM's
    after, same_index = model.video_embeddings(pixels, tokens)
    torch.testing.assert_close(after, before)  # the projection starts at zero
    assert torch.equal(index, same_index)
    with torch.no_grad():  # a trained projection changes the patch tokens only
        torch.nn.init.normal_(model.semantic_embedding.proj.weight)
    moved, _ = model.video_embeddings(pixels, tokens)
    changed = (moved - before).abs().sum(-1) > 0
    assert torch.equal(changed, index >= 0)
    meaning = model.semantic_embedding(pixels, 2)  # (frames, cells, hidden), row-major cells
    torch.testing.assert_close((moved - before)[index >= 0], meaning.reshape(-1, 64))
    with pytest.raises(ValueError, match="has a semantic embedding already"):
        add_semantic_embedding(model, probe)
    model.save_pretrained(tmp_path / "semantic")
    loaded = type(model).from_pretrained(tmp_path / "semantic").eval()
    assert loaded.config.semantic_classes == (3, 2)
    torch.testing.assert_close(loaded.video_embeddings(pixels, tokens)[0], moved)
    assert not loaded.semantic_embedding.kind.weight.requires_grad  # the probe stays frozen
    half = type(model).from_pretrained(tmp_path / "semantic", dtype=torch.bfloat16).eval()
    assert half.semantic_embedding.proj.weight.dtype == torch.bfloat16
    half_video = half.video_embeddings(pixels.bfloat16(), tokens.bfloat16())[0].float()
    torch.testing.assert_close(half_video, moved, atol=0.15, rtol=0.05)
    continued = continue_from(str(tmp_path / "semantic"), config, SIZES)  # kept when continued
    assert continued.config.semantic_classes == (3, 2)
    torch.testing.assert_close(continued.eval().video_embeddings(pixels, tokens)[0], moved)
    with pytest.raises(ValueError, match="has a semantic embedding already"):
        check_semantic_init(probe, vlm_init=str(tmp_path / "semantic"))
    narrow = {**SIZES, "vision_hidden": 16}
    with pytest.raises(ValueError, match="does not match"):
        add_semantic_embedding(build_tiny_loc3r(tokenizer, config, **narrow), probe)
    with pytest.raises(ValueError, match="has no vision_tower"):
        add_semantic_embedding(build_tiny_loc3r(tokenizer, config, **SIZES), tmp_path)


def test_a_probe_of_a_frozen_tower_leaves_it_and_feeds_a_run(tokenizer_dir, tmp_path):
    """pretrain_vision --tower_init=<vlm> --train_tower=False: the heads learn, the tower not;
    a run's --semantic_init takes that directory."""
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    sizes = {"image_size": 56, "vision_hidden": 16, "vision_layers": 1}
    vlm_sizes = {**SIZES, **sizes}
    model = build_tiny_loc3r(tokenizer, Loc3rVLMConfig(cam_token_dim=24), **vlm_sizes)
    model.save_pretrained(tmp_path / "vlm")
    config = VisionPretrainConfig(out=str(tmp_path / "probe"), steps=40, warmup_steps=2,
                                  episodes=3, eval_episodes=1, frames=3, batch_frames=6,
                                  tower_init=str(tmp_path / "vlm"), train_tower=False,
                                  render_size=112, **sizes)  # fmt: skip
    report = pretrain(config, progress=False)
    assert report["final_loss"] < report["first_loss"]  # the heads learn
    saved = load_file(str(tmp_path / "probe" / "vision_tower.safetensors"))
    for name, value in model.base.vision_tower.state_dict().items():
        assert torch.equal(saved[name], value), name  # the tower is the VLM's, unchanged
    heads = load_file(str(tmp_path / "probe" / "patch_heads.safetensors"))
    assert head_classes(heads) == ((13, 11), 0)  # every kind and surface; every colour and none
    tower_file = tmp_path / "probe" / "vision_tower.safetensors"
    assert tower_weights(str(tower_file)).keys() == saved.keys()
    with pytest.raises(ValueError, match="holds no vision tower"):
        tower_weights(str(tmp_path / "probe" / "patch_heads.safetensors"))
    run = TrainConfig(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128,
                      semantic_init=str(tmp_path / "probe"), **sizes)  # fmt: skip
    built = build_model(run, tokenizer, cam_dim=24)
    assert built.config.semantic_classes == (13, 11)
    trainable = {id(p) for p in built.parameters() if p.requires_grad}
    assert id(built.semantic_embedding.proj.weight) in trainable
    assert not trainable & {id(p) for p in built.semantic_embedding.tower.parameters()}


def test_a_run_refuses_a_probe_it_cannot_use_before_rendering(tmp_path):
    config = TrainConfig(out=str(tmp_path), base_model_dir=str(tmp_path / "llava"),
                         semantic_init=str(tmp_path / "probe"))  # fmt: skip
    with pytest.raises(ValueError, match="semantic_init is a tiny tower"):
        prepare_run(config, progress=False)
    nothing = TrainConfig(out=str(tmp_path), semantic_init=str(tmp_path), train_episodes=10_000)
    with pytest.raises(ValueError, match="has no vision_tower.safetensors"):
        prepare_run(nothing, progress=False)  # refused before 10000 rooms are rendered
