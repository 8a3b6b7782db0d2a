"""Loading LLaVA-Video checkpoints in the lmms-lab layout by an explicit key map.

Directory layout (lmms-lab/LLaVA-Video-7B-Qwen2): config.json (LLaVA fields), sharded
model-*.safetensors + model.safetensors.index.json (or one model.safetensors), Qwen2 tokenizer
files.
The SigLIP tower's config comes from its own directory (a local copy of
google/siglip-so400m-patch14-384; the weights of the truncated tower are in the checkpoint).

Every checkpoint tensor must map onto a model parameter and every parameter must be filled:
otherwise LlavaCheckpointError lists what is missing, unused or mis-shaped. Nothing is loaded
with strict=False.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from loc3r.state_dict import state_dict_mismatch
from loc3r.vlm.llava_video import (
    LlavaCheckpointError,
    LlavaVideoConfig,
    LlavaVideoModel,
    vision_body,
)

_PREFIXES = (  # checkpoint prefix -> our module prefix, first match wins
    ("model.vision_tower.vision_tower.vision_model.", "vision_tower.{vision_body}"),
    ("model.mm_projector.", "mm_projector."),
    ("model.image_newline", "image_newline"),
    ("lm_head.", "language_model.lm_head."),
    ("model.", "language_model.model."),
)


def map_checkpoint_key(key: str, vision_body: str = "") -> str:
    """lmms-lab key -> our parameter name.

    `vision_body` is where SigLIP's modules sit inside our SiglipVisionModel: "vision_model."
    in transformers 4.x, "" in 5.x (see LlavaVideoModel.vision_body_prefix).
    """
    for old, new in _PREFIXES:
        if key.startswith(old):
            return new.format(vision_body=vision_body) + key[len(old) :]
    raise LlavaCheckpointError(f"unexpected checkpoint key {key!r}")


def shard_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (via the index when sharded)."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({model_dir / name for name in weight_map.values()})
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    missing = [f.name for f in files if not f.exists()]
    if not files or missing:
        raise LlavaCheckpointError(f"{model_dir}: safetensors shards missing: {missing or 'all'}")
    return files


def read_checkpoint(
    model_dir: Path, dtype: torch.dtype, vision_body: str = ""
) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, renamed to our parameter names and cast to `dtype`."""
    tensors: dict[str, torch.Tensor] = {}
    for file in shard_files(model_dir):
        try:
            with safe_open(str(file), framework="pt") as shard:
                for key in shard.keys():  # noqa: SIM118 - safe_open has no __iter__
                    tensors[map_checkpoint_key(key, vision_body)] = shard.get_tensor(key).to(dtype)
        except LlavaCheckpointError:
            raise
        except Exception as exc:
            raise LlavaCheckpointError(f"cannot read {file.name}: {exc}") from exc
    return tensors


def load_state_strict(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy `tensors` into `model`; LlavaCheckpointError on missing/unexpected/mis-shaped keys."""
    problem = state_dict_mismatch(model.state_dict(), tensors)
    if problem:
        raise LlavaCheckpointError(f"checkpoint does not match the model: {problem}")
    model.load_state_dict(tensors, strict=True)


def materialise_position_ids(tower: torch.nn.Module) -> None:
    """A SigLIP tower's position ids, which a meta-device build leaves empty."""
    embeddings = vision_body(tower).embeddings
    embeddings.position_ids = torch.arange(embeddings.num_positions).expand((1, -1))


def materialise_buffers(model: LlavaVideoModel) -> None:
    """Recompute the non-persistent buffers that a meta-device build leaves empty.

    RoPE tables are built in float32 whatever the weights' dtype (the original code rounds them
    to the load dtype, which costs up to 2e-3 in bfloat16).
    """
    materialise_position_ids(model.vision_tower)
    text_model = model.language_model.model
    text_model.rotary_emb = type(text_model.rotary_emb)(config=model.language_model.config)


def load_llava_video(
    model_dir: str | Path,
    vision_tower_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> tuple[LlavaVideoModel, object]:
    """Load model and tokenizer; the vocabulary is cut to len(tokenizer) like the original."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise LlavaCheckpointError(f"{model_dir} has no config.json")
    config = LlavaVideoConfig.from_dirs(
        model_dir, vision_tower_dir, attn_implementation=attn_implementation
    )
    with torch.device("meta"):
        model = LlavaVideoModel(config)
    model = model.to_empty(device="cpu").to(dtype)
    load_state_strict(model, read_checkpoint(model_dir, dtype, model.vision_body_prefix))
    materialise_buffers(model)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model.resize_vocabulary(len(tokenizer))
    return model.to(device).eval(), tokenizer
