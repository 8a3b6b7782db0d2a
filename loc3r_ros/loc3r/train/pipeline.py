"""Everything around a training run: tokenizer, CUT3R, episodes, model, and evaluation."""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoTokenizer

from loc3r.cut3r import Cut3r, Cut3rConfig, load_cut3r
from loc3r.engine.mono_depth import MonoDepth, load_mono_depth
from loc3r.engine.perception import Perception, PerceptionConfig
from loc3r.eval.report import EvalCase, evaluate_cases
from loc3r.eval.text_ceiling import ceiling_report, episodes_ceiling
from loc3r.scenes import EpisodeConfig
from loc3r.train.config import TrainConfig
from loc3r.train.synthetic_data import EpisodeData, build_episodes, corpus, train_tokenizer
from loc3r.vlm import Loc3rVLM, Loc3rVLMConfig, LossWeights, TrainSample

CUT3R_IMAGE_SIZE = 64


@dataclass
class Run:
    """The pieces of a run."""

    model: Loc3rVLM
    cut3r: Cut3r
    train_episodes: list[EpisodeData]
    eval_episodes: list[EpisodeData]
    train_samples: list[TrainSample]
    depth: MonoDepth | None = None  # the geometric pose source's depth network, if any


def episode_config(config: TrainConfig) -> EpisodeConfig:
    """Episodes rendered at the VLM's image size."""
    return EpisodeConfig(
        frames=config.frames,
        image_size=config.render_size or config.image_size,
        look=config.look,
        walk=config.walk,
        stream_video=config.stream_video,
    )


def patch_grid(config: TrainConfig) -> int:
    """Pooled patches per side of the tiny VLM's frames (14 px patches, pooled by pool_stride)."""
    if config.pool_stride < 1:
        raise ValueError(f"pool_stride: 1 (every patch) or more, not {config.pool_stride}")
    check_pooling(config.image_size // 14, config.pool_stride, config.pool_mode)
    return math.ceil((config.image_size // 14) / config.pool_stride)


def check_pooling(grid: int, stride: int, mode: str) -> None:
    """ValueError when `mode` cannot pool a grid x grid patch grid by `stride` into whole cells.

    Bilinear pooling resamples any grid (LLaVA-Video's 27 patches by 2); "average" and "max"
    pool stride x stride blocks, so the stride must divide the grid.
    """
    if mode != "bilinear" and grid % stride:
        raise ValueError(f"a {grid}x{grid} patch grid does not pool by {stride} ({mode})")


def camera_tokens_mode(config: TrainConfig) -> str:
    """What the camera tokens state: CUT3R's z'_t, the geometric poses, or poses and points.

    The oracle prior states the true poses in CUT3R's width, or with the point embedding the
    true poses and points (a diagnostic upper bound: `oracle_geometry_tokens`).
    """
    if config.point_embedding and config.camera_prior not in ("geometric", "oracle"):
        raise ValueError(
            "point_embedding needs camera_prior='geometric' (its posed pointmaps) or 'oracle'"
        )
    if config.point_embedding:
        return "geometry"
    return "pose" if config.camera_prior == "geometric" else "cut3r"


def perception_config(config: TrainConfig) -> PerceptionConfig:
    """CUT3R as the run's bundle will use it: the geometric prior states its poses in the tokens."""
    geometric = config.camera_prior == "geometric"
    return PerceptionConfig(
        image_size=config.cut3r_image_size,
        pose_source="geometric" if geometric else "cut3r",
        camera_tokens=camera_tokens_mode(config),
        token_grid=patch_grid(config),
    )


def load_depth(config: TrainConfig) -> MonoDepth | None:
    """The run's depth network for the geometric pose source (`depth_dir`), if it names one."""
    if not config.depth_dir:
        return None
    if config.camera_prior != "geometric":
        raise ValueError(
            f"depth_dir serves camera_prior='geometric', not {config.camera_prior!r} "
            "(set --camera_prior=geometric)"
        )
    return load_mono_depth(config.depth_dir)


def load_or_make_cut3r(config: TrainConfig) -> Cut3r:
    """The frozen CUT3R of the run: a trained directory, or a seeded random tiny one."""
    if config.cut3r_dir:
        return load_cut3r(config.cut3r_dir)
    torch.manual_seed(config.seed + 17)
    return Cut3r(Cut3rConfig.tiny()).eval().requires_grad_(False)


# TrainConfig keys that size the tiny model (loc3r.vlm.tiny.tiny_llava_config's arguments)
TINY_SIZES = ("hidden", "layers", "heads", "kv_heads", "intermediate", "image_size",
              "vision_hidden", "vision_layers", "pool_stride", "pool_mode")  # fmt: skip
# Loc3RVLMConfig fields a continued model must share with the run (its inputs and heads)
CONTINUED_HEADS = ("cam_token_dim", "use_camera_tokens", "enable_layout_head",
                   "enable_egocentric_head", "point_embedding")  # fmt: skip


def build_model(config: TrainConfig, tokenizer, cam_dim: int) -> Loc3rVLM:
    """The Loc3R-VLM to train: LLaVA-Video from `base_model_dir` or a tiny one, seeded.

    New parts (f_cam, heads, <Pos>/<Ori> embeddings) are random; with `lora_rank` the LLM gets
    LoRA adapters and its own weights are frozen. `vlm_init` continues a saved tiny model instead.
    """
    from loc3r.vlm.tiny import build_tiny_loc3r

    torch.manual_seed(config.seed)
    vlm_config = Loc3rVLMConfig(
        cam_token_dim=cam_dim,
        use_camera_tokens=config.use_camera_tokens,
        enable_layout_head=config.layout_weight > 0,
        max_new_tokens=8,
        enable_egocentric_head=config.egocentric_weight > 0,
        point_embedding=config.point_embedding,
        position_pointer=config.position_pointer,
        egocentric_readout=config.egocentric_readout,
        readout_objects=config.readout_objects,
        readout_anchor=config.readout_anchor,
        heading_pointer=config.heading_pointer,
        ground_pointers=config.ground_pointers,
        weights=LossWeights(
            bev=config.layout_weight,
            situation=config.situation_weight,
            ori=config.ori_weight,
            grounding=config.grounding_weight,
            egocentric=config.egocentric_weight,
        ),
    )
    if config.base_model_dir:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        model = Loc3rVLM.from_base(
            config.base_model_dir, config.vision_tower_dir or config.base_model_dir, vlm_config,
            dtype=dtype,
        )  # fmt: skip
        return add_lora(model, config)
    sizes = {name: getattr(config, name) for name in TINY_SIZES}
    if config.vlm_init:
        model = continue_from(config.vlm_init, vlm_config, sizes)
    else:
        model = build_tiny_loc3r(tokenizer, vlm_config, **sizes)
    if config.vision_init:  # (never with vlm_init: prepare_run refuses the pair)
        from safetensors.torch import load_file

        from loc3r.vlm.checkpoint import load_state_strict

        load_state_strict(model.base.vision_tower, load_file(config.vision_init))
    model.base.vision_tower.requires_grad_(config.train_vision_tower)
    return add_lora(model, config)


def continue_from(directory: str, vlm_config: Loc3rVLMConfig, sizes: dict) -> Loc3rVLM:
    """A saved tiny Loc3R-VLM to train further, with the run's loss weights.

    ValueError when its sizes or heads are not the run's (a run continues the model it builds).
    A run may add the position or heading pointer (each starts with its gate closed), the
    egocentric read-out, its object picking or its knowing the anchor (each starts adding
    nothing), ground the pointers or not, drop the egocentric
    loss (--egocentric_weight=0: the head stays, frozen; inference never reads it), pool the
    video patches by another `pool_stride` or `pool_mode`, and show the tower frames of another
    `image_size` (`resize_vision_tower`): no weight depends on the number of video tokens
    except f_cam's input, whose geometry tokens carry a point per cell; that input is rebuilt
    when the cells change (`regrid_camera_input`).
    """
    from loc3r.vlm.egocentric_readout import EgocentricReadout
    from loc3r.vlm.heading_pointer import HeadingPointer
    from loc3r.vlm.position_pointer import PositionPointer
    from loc3r.vlm.tiny import tiny_llava_config

    model = Loc3rVLM.from_pretrained(directory)
    saved = model.base.config
    expected = tiny_llava_config(vocab_size=saved.text["vocab_size"], **sizes)
    cells = saved.pooled_grid
    before = (saved.vision["image_size"], saved.pool_stride, saved.mm_spatial_pool_mode)
    after = (expected.vision["image_size"], expected.pool_stride, expected.mm_spatial_pool_mode)
    if before[0] != after[0]:
        resize_vision_tower(model, after[0])
    differ = [f"text.{k}" for k, v in expected.text.items() if saved.text.get(k) != v]
    differ += [f"vision.{k}" for k, v in expected.vision.items() if saved.vision.get(k) != v]
    try:
        check_pooling(saved.grid, after[1], after[2])
    except ValueError as error:
        raise ValueError(f"vlm_init={directory}: {error}") from None
    saved.pool_stride, saved.mm_spatial_pool_mode = after[1:]
    if before != after:  # the run's keys, not the saved model's: say so
        print(
            f"vlm_init={directory}: frames of {before[0]} px pooled by {before[1]} "
            f"({before[2]}) become {after[0]} px pooled by {after[1]} ({after[2]})",
            file=sys.stderr,
        )
    if saved.pooled_grid != cells and model.config.point_embedding:
        regrid_camera_input(model, vlm_config.cam_token_dim)
    differ += [k for k in CONTINUED_HEADS if getattr(model.config, k) != getattr(vlm_config, k)]
    if model.config.enable_egocentric_head and not vlm_config.enable_egocentric_head:
        differ.remove("enable_egocentric_head")  # its loss weight is 0: kept as it was (no decay)
        model.egocentric_head.requires_grad_(False)
    aids = (
        "position_pointer", "egocentric_readout", "heading_pointer", "readout_objects",
        "readout_anchor",
    )  # fmt: skip
    for aid in aids:  # added by a run, never dropped
        if getattr(model.config, aid) and not getattr(vlm_config, aid):
            differ.append(aid)
    if differ:
        raise ValueError(f"vlm_init={directory}: its model differs from the run's in {differ}")
    if vlm_config.position_pointer and not model.config.position_pointer:
        if model.layout_head is None:
            raise ValueError(f"vlm_init={directory}: the position pointer needs its layout head")
        model.position_pointer = PositionPointer(saved.text["hidden_size"]).to(model.device)
        model.config.position_pointer = True
    if vlm_config.egocentric_readout and not model.config.egocentric_readout:
        if model.layout_head is None:
            raise ValueError(f"vlm_init={directory}: the egocentric read-out needs its layout head")
        readout = EgocentricReadout(saved.text["hidden_size"])  # adds nothing until trained
        model.egocentric_readout = readout.to(model.device)
        model.config.egocentric_readout = True
    if vlm_config.readout_objects and not model.config.readout_objects:
        if model.egocentric_readout is None:
            raise ValueError(f"vlm_init={directory}: readout_objects needs the egocentric read-out")
        model.egocentric_readout.add_objects()  # adds nothing until trained
        model.config.readout_objects = True
    if vlm_config.heading_pointer and not model.config.heading_pointer:
        if model.layout_head is None:
            raise ValueError(f"vlm_init={directory}: the heading pointer needs its layout head")
        model.heading_pointer = HeadingPointer(saved.text["hidden_size"]).to(model.device)
        model.config.heading_pointer = True
    if vlm_config.readout_anchor and not model.config.readout_anchor:
        if model.egocentric_readout is None or model.position_pointer is None:
            raise ValueError(
                f"vlm_init={directory}: readout_anchor needs the egocentric read-out and the "
                "position pointer"
            )
        model.egocentric_readout.add_anchor()  # adds nothing until trained
        model.config.readout_anchor = True
    model.config.ground_pointers = vlm_config.ground_pointers
    model.config.weights = vlm_config.weights
    return model


def resize_vision_tower(model: Loc3rVLM, image_size: int) -> None:
    """The tower rebuilt for frames of `image_size` px: its weights, position table interpolated.

    SigLIP's position embedding is a table of one row per patch of the grid it was built for;
    the new grid's rows are that table, as an image, resized bicubically (what
    `interpolate_pos_encoding` does at each call, done once). The other weights do not depend on
    the frame size. Leaves the random state as it was. ValueError when the size is not whole
    patches.
    """
    from loc3r.vlm.llava_video import build_vision_tower

    config = model.base.config
    patch = config.vision["patch_size"]
    if image_size <= 0 or image_size % patch:
        raise ValueError(f"image_size {image_size} is not a whole number of {patch} px patches")
    old_grid, new_grid = config.grid, image_size // patch
    tower = model.base.vision_tower
    state = tower.state_dict()
    key = f"{model.base.vision_body_prefix}embeddings.position_embedding.weight"
    table = state[key]
    image = table.float().reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2)
    image = torch.nn.functional.interpolate(
        image, size=(new_grid, new_grid), mode="bicubic", align_corners=False
    )
    state[key] = image.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1).to(table.dtype)
    config.vision = {**config.vision, "image_size": image_size}
    weight = next(tower.parameters())
    with torch.random.fork_rng(devices=[]):  # the new tower's random init, overwritten below
        resized = build_vision_tower(config)
    resized = resized.to(device=weight.device, dtype=weight.dtype)
    resized.load_state_dict(state)
    resized.requires_grad_(weight.requires_grad)
    model.base.vision_tower = resized


def regrid_camera_input(model: Loc3rVLM, width: int) -> None:
    """f_cam rebuilt for geometry tokens of the model's (new) grid, `width` values wide.

    A geometry token is the pose (`POSE_VALUES`) and then a point per patch cell, so another
    grid moves, adds or drops cells: the cells' old weights would read the wrong ones. They
    start at zero, the pose's are kept, and each patch still gets its own point from the point
    embedding: the camera tokens state the pose to the model as they did. Takes no random draws.
    ValueError when `width` cannot hold the grid's geometry token.
    """
    from loc3r.engine.perception import POSE_VALUES, geometry_token_width

    grid = model.base.config.pooled_grid
    if width < (needed := geometry_token_width(grid)):
        raise ValueError(
            f"a {grid}x{grid} grid needs camera tokens of {needed} values, not {width}"
        )
    old = model.f_cam[0]
    new = torch.nn.Linear(width, old.out_features, device="meta")
    new = new.to_empty(device=old.weight.device).to(old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :POSE_VALUES] = old.weight[:, :POSE_VALUES]
        new.bias.copy_(old.bias)
    model.f_cam[0] = new
    model.config.cam_token_dim = width


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_lora(model: Loc3rVLM, config: TrainConfig) -> Loc3rVLM:
    """LoRA adapters (peft) on the LLM's linear layers when `lora_rank` > 0; LLM frozen.

    The projector, f_cam, the heads and the input/output embeddings (which hold the new
    <Pos>/<Ori> rows) stay fully trainable.
    """
    if config.lora_rank <= 0:
        return model
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:
        raise SystemExit("lora_rank > 0 needs the peft package: pip install peft") from exc
    llm = model.base.language_model
    llm.requires_grad_(False)
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules=list(LORA_TARGETS))  # fmt: skip
    inject_adapter_in_model(lora, llm.model)
    llm.get_input_embeddings().requires_grad_(True)
    llm.lm_head.requires_grad_(True)
    return model


def prepare_run(config: TrainConfig, progress: bool = True) -> Run:
    """Tokenizer, CUT3R, train/eval episodes (with cached camera tokens) and the model."""
    if config.data_root and config.camera_prior == "oracle":
        raise ValueError("camera_prior='oracle' needs synthetic rooms (their true poses)")
    if config.render_within_s < 0 or (config.render_within_s > 0 and config.data_root):
        raise ValueError("render_within_s: seconds >= 0, for synthetic rooms only")
    if config.base_model_dir and (config.pool_stride, config.pool_mode) != (2, "bilinear"):
        raise ValueError(
            "pool_stride and pool_mode are the tiny VLM's; LLaVA-Video pools its patches 2x2, "
            "bilinearly"
        )
    out = Path(config.out)
    episodes_cfg = episode_config(config)
    start = config.train_seed_offset
    train_seeds = list(range(start, start + config.train_episodes))
    eval_seeds = [config.eval_seed_offset + i for i in range(config.eval_episodes)]
    if start < 0 or (set(train_seeds) & set(eval_seeds) and not config.data_root):
        raise ValueError(
            f"train_seed_offset={start}: training rooms {start}..{start + len(train_seeds) - 1} "
            "must be seeds >= 0 that the held-out rooms (eval_seed_offset) do not use"
        )
    if config.vlm_init and (config.base_model_dir or config.tokenizer_dir or config.vision_init):
        raise ValueError(
            "vlm_init continues a tiny model with its own tokenizer and tower: leave "
            "base_model_dir, tokenizer_dir and vision_init empty"
        )
    tokenizer_source = config.tokenizer_dir or config.base_model_dir or config.vlm_init
    if tokenizer_source:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    else:
        tokenizer_dir = out / "tokenizer"
        if (tokenizer_dir / "tokenizer.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        else:
            lines = corpus(train_seeds[: min(200, len(train_seeds))], episodes_cfg)
            main_rank = os.environ.get("RANK", "0") == "0"  # one writer under DDP
            tokenizer = train_tokenizer(
                lines, tokenizer_dir if main_rank else None, config.vocab_size
            )
    cut3r = load_or_make_cut3r(config)
    depth = load_depth(config)
    perception = Perception(cut3r, perception_config(config), depth)
    # the model before the rooms: a --vlm_init that does not fit the run fails now, not after
    # the rendering
    model = build_model(config, tokenizer, perception.token_width)
    grid = patch_grid(config)
    if config.data_root:
        from loc3r.train.dataset_data import build_dataset_episodes

        def episodes_of(split: str) -> list[EpisodeData]:
            return build_dataset_episodes(config.data_root, split, config.frames, perception,
                                          grid, progress, config.max_scenes)  # fmt: skip

        train, held_out = episodes_of(config.train_split), episodes_of(config.eval_split)
    else:
        train_cfg = replace(episodes_cfg, situations=config.train_situations)
        prior = config.camera_prior
        size, workers = config.image_size, config.workers
        deadline = time.monotonic() + config.render_within_s if config.render_within_s > 0 else None
        train = build_episodes(train_seeds, train_cfg, perception, grid, progress, prior, size,
                               workers, deadline)  # fmt: skip
        held_out = build_episodes(eval_seeds, episodes_cfg, perception, grid, progress, prior,
                                  size, workers)  # fmt: skip
    samples = [s for e in train for s in e.samples(config.image_size)]
    return Run(model, cut3r, train, held_out, samples, depth)


@torch.inference_mode()
def predict_cases(
    model: Loc3rVLM, episodes: list[EpisodeData], image_size: int, progress: bool = True
) -> list[EvalCase]:
    """Run the model on every question of `episodes` (one scene prefix per episode)."""
    model.eval()
    cases = []
    for episode in tqdm(episodes, desc="eval", disable=not progress):
        samples = episode.samples(image_size)
        prefix = model.encode_scene(samples[0].pixel_values, samples[0].camera_tokens)
        for index, (record, sample) in enumerate(zip(episode.records, samples, strict=True)):
            answer, pose = model.answer(prefix, sample.question, sample.situation)
            cases.append(
                EvalCase(
                    id=f"{episode.seed}-{index}",
                    question=record.question,
                    prediction=answer,
                    references=list(record.answers),
                    question_type=record.question_type,
                    scene_id=f"synthetic-{episode.seed}",
                    gt_position=[float(v) for v in record.position],
                    gt_yaw=float(record.yaw),
                    pred_positions=[[float(v) for v in pose.xy.tolist()]],
                    pred_yaws=[float(pose.yaw)],
                )
            )
    return cases


def evaluate(
    model: Loc3rVLM,
    episodes: list[EpisodeData],
    image_size: int,
    progress: bool = True,
    answer_variant: str = "leo",
    localization_variant: str = "sqa3d",
) -> dict:
    """`loc3r eval`'s report of the model on held-out episodes.

    With both baselines and, for synthetic rooms, the ceiling (loc3r.eval.text_ceiling).
    """
    cases = predict_cases(model, episodes, image_size, progress)
    report = evaluate_cases(cases, answer_variant, localization_variant)
    ceiling = episodes_ceiling(episodes)
    if ceiling is not None:
        report["ceiling"] = ceiling_report(ceiling, cases, answer_variant, localization_variant)
    return report
