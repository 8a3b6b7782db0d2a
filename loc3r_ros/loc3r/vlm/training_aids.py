"""Training aids of the shipped recipe (ours, not in the paper): grounding, egocentric.

The embedded model is trained from scratch, without the vision-language alignment LLaVA-Video
brings, so its recipe (loc3r.train.make_default_model: --grounding_weight=0.5,
--egocentric_weight=0.5) adds losses to the paper's. They are training only: inference is the
paper's model (loc3r_vlm) whatever they are set to, and all are off by default.

- Grounding (L_ground, `LossWeights.grounding`): in the last LLM layer, head 0 of <Pos> and head 2
  of <Ori> should look at the patches that show the situation's anchor object ("next to the
  bed"), head 1 of <Ori> at its target object ("facing the window"), and head 3 of the token that
  starts the answer at the object the answer is about ("is the lamp on my left?"); the loss is
  -log of the attention mass on those patches (losses.grounding_nll). `trace_situation` reads the
  same heads back for diagnostics (loc3r.eval.bounds).
- Egocentric (L_ego, `LossWeights.egocentric`; the head exists with
  `Loc3rVLMConfig.enable_egocentric_head`): a linear head on the last hidden state of the token
  that starts the answer regresses where the question's object is in the agent's frame (metres
  ahead, to the left; smooth L1). Direction questions ("is the lamp on my left?") need exactly
  that; the loss asks the LM for it densely, where the answer's cross-entropy gives one of four
  words.

Options the experiments tried and dropped (reading the position from the attended layout, the
answer token grounding the situation too, other grounding layers, a head of the answer's first
token sent to the situation's <Pos> <Ori> or to its anchor's word) are in docs/experiments.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from loc3r.vlm.losses import grounding_nll, heading_from_bins
from loc3r.vlm.recipe_aids import point_pose

if TYPE_CHECKING:
    from loc3r.vlm.loc3r_vlm import Loc3rVLM, PosePrediction, TrainSample
    from loc3r.vlm.packing import PackedBatch

# (query: 0 = <Pos>, 1 = <Ori>, 2 = the token before the answer; attention head; object) that the
# grounding loss supervises
GROUNDING_HEADS = ((0, 0, "anchor"), (1, 1, "target"), (1, 2, "anchor"), (2, 3, "question"))
GROUNDING_LAYER = -1  # the LLM layer whose attention the grounding loss supervises: the last


def egocentric_head(hidden: int) -> nn.Linear:
    """The egocentric head: an LLM hidden state -> (metres ahead, metres to the left)."""
    return nn.Linear(hidden, 2)


def grounding_attention(
    attention: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    rows: torch.Tensor,
    queries: torch.Tensor,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention probabilities of some query tokens, as `attention` (Qwen2Attention) has them.

    hidden (B, L, H) is the layer's normed input, position_embeddings its RoPE (cos, sin) of
    shape (1 or B, L, head_dim); rows (N,) pick sequences and queries (N, Q) token positions in
    them; allowed (B, 1, L, L) bool is the attention mask the forward ran with (None: causal).
    Returns (N, heads, Q, L): the same numbers eager or SDPA attention uses, for a few rows
    only, so training can supervise them whatever the kernel.
    """
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    cos, sin = (t.expand(hidden.shape[0], -1, -1) for t in position_embeddings)
    count, num_queries = queries.shape
    length, head_dim = hidden.shape[1], attention.head_dim
    q = attention.q_proj(hidden[rows[:, None], queries]).view(count, num_queries, -1, head_dim)
    k = attention.k_proj(hidden[rows]).view(count, length, -1, head_dim)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # (N, heads, Q, d), (N, kv_heads, L, d)
    q = apply_rotary_pos_emb(q, q, cos[rows[:, None], queries], sin[rows[:, None], queries])[0]
    k = apply_rotary_pos_emb(k, k, cos[rows], sin[rows])[1]
    k = k.repeat_interleave(attention.num_key_value_groups, dim=1)  # as transformers' repeat_kv
    scores = (q @ k.transpose(-1, -2)).float() * attention.scaling
    if allowed is None:
        hidden_keys = (
            torch.arange(length, device=hidden.device)[None, None, None] > queries[:, None, :, None]
        )
    else:
        hidden_keys = ~allowed[rows[:, None], 0, queries][:, None]  # (N, 1, Q, L)
    return scores.masked_fill(hidden_keys, float("-inf")).softmax(-1)


def _grounding_layer(model: Loc3rVLM) -> nn.Module:
    return model.base.language_model.model.layers[GROUNDING_LAYER].self_attn


@contextmanager
def grounding_capture(
    model: Loc3rVLM, samples: list[TrainSample], batch: PackedBatch
) -> Iterator[dict]:
    """Within the block, the training forward leaves the grounding attention in the dict.

    Only with L_ground on and samples that name their objects' patches: "probs" (N, heads, 3,
    L) of <Pos>, <Ori> and the answer's first token, one row per such sample (in order,
    `_grounded`), over its packed row (loc3r.vlm.packing).
    """
    captured: dict[str, torch.Tensor] = {}
    grounded = _grounded(samples) if _captures(model) else []
    if not grounded:
        yield captured
        return
    index = torch.tensor([batch.rows[i] for i in grounded], device=model.device)
    queries = torch.tensor([batch.queries(i) for i in grounded], device=model.device)

    def capture(module, args, kwargs, output) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        captured["probs"] = grounding_attention(
            module, hidden, kwargs["position_embeddings"], index, queries, batch.allowed
        )

    handle = _grounding_layer(model).register_forward_hook(capture, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def _captures(model: Loc3rVLM) -> bool:
    """Whether a loss reads the grounding layer's attention (L_ground)."""
    return model.config.weights.grounding > 0


def _grounded(samples: list[TrainSample]) -> list[int]:
    """The samples that name at least one of their objects' patches."""
    return [i for i, s in enumerate(samples) if _names_cells(s)]


def _names_cells(sample: TrainSample) -> bool:
    """Whether the sample names the patches of at least one of its objects."""
    cells = (sample.anchor_cells, sample.target_cells, sample.question_cells)
    return any(c is not None for c in cells)


def grounding_losses(
    model: Loc3rVLM,
    captured: dict,
    samples: list[TrainSample],
    batch: PackedBatch,
    logits: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """{"ground": L_ground} when its weight is on, else {}.

    Zero without objects; always reported when on, so every DDP rank logs the same keys.
    """
    if not _captures(model):
        return {}
    grounded = _grounded(samples)
    if not grounded or "probs" not in captured:
        return {"ground": logits.sum() * 0.0}
    probs = captured["probs"]
    picked, on_object = [], []
    for n, i in enumerate(grounded):
        patch_at = batch.patch_at[batch.rows[i]]
        where = (patch_at >= 0).nonzero().flatten()  # the video's patch tokens
        sample = samples[i]
        cells = {
            "anchor": sample.anchor_cells,
            "target": sample.target_cells,
            "question": sample.question_cells,
        }
        for query, head, name in GROUNDING_HEADS:
            if head >= probs.shape[1] or cells[name] is None:
                continue
            flat = cells[name].reshape(-1).to(model.device)
            mask = torch.zeros(probs.shape[-1], dtype=torch.bool, device=model.device)
            mask[where] = flat[patch_at[where]]
            picked.append(probs[n, head, query])
            on_object.append(mask)
    if not picked:
        return {"ground": probs.sum() * 0.0}
    return {"ground": grounding_nll(torch.stack(picked), torch.stack(on_object))}


def egocentric_losses(
    model: Loc3rVLM, states: torch.Tensor, samples: list[TrainSample], batch: PackedBatch
) -> dict[str, torch.Tensor]:
    """{"ego": L_ego} when the model has the egocentric head, else {}.

    states (R, L, H) are the LLM's last hidden states of the packed rows; samples without an
    object offset (counting questions, real datasets) do not count, and with none the loss is
    zero (the head still used, so every DDP rank reports it).
    """
    if model.egocentric_head is None:
        return {}
    rows = [i for i, s in enumerate(samples) if s.object_offset is not None]
    if not rows:
        return {"ego": model.egocentric_head(states[:1, 0]).float().sum() * 0.0}
    index = torch.tensor([batch.rows[i] for i in rows], device=model.device)
    starts = torch.tensor([batch.queries(i)[2] for i in rows], device=model.device)
    predicted = model.egocentric_head(states[index, starts])
    target = torch.stack([samples[i].object_offset.float() for i in rows])
    return {"ego": F.smooth_l1_loss(predicted.float(), target.to(model.device))}


@dataclass
class SituationTrace:
    """Where <Pos> and <Ori> look and where the layout head puts the video patches (diagnostics).

    P is the number of video patch tokens (camera and newline tokens left out), frame-major.
    """

    patch_index: torch.Tensor  # (P,) pooled-patch index of each token: frame * g * g + cell
    attention: torch.Tensor  # (heads, Q, P) <Pos>, <Ori> (, answer) attention on them
    layout: torch.Tensor | None  # (P, 2) the layout head's (x, y), metres; None without the head
    pose: PosePrediction  # what localize() returns for the same situation
    # with the position pointer (loc3r.vlm.position_pointer), else None: f_pos's own (x, y)
    # before the pointer, the pointer's own (x, y), its attention on the patches (P,), its gate
    head_xy: torch.Tensor | None = None
    pointer_xy: torch.Tensor | None = None
    pointer_attention: torch.Tensor | None = None
    pointer_gate: float | None = None
    # with the heading pointer (loc3r.vlm.heading_pointer), else None: f_ori's own heading, the
    # pointer's own (radians), its attention on the patches (P,), its gate
    head_yaw: float | None = None
    pointer_yaw: float | None = None
    heading_attention: torch.Tensor | None = None
    heading_gate: float | None = None
    # with a question and the egocentric head: its (ahead, left) metres at the token that
    # predicts the answer's first word (what L_ego trains), else None
    egocentric: torch.Tensor | None = None


@torch.inference_mode()
def trace_situation(
    model: Loc3rVLM,
    pixel_values: torch.Tensor,
    camera_tokens: torch.Tensor | None,
    situation: str,
    question: str | None = None,
) -> SituationTrace:
    """One uncached forward over [video] [situation] <Pos> <Ori> ([question]): for diagnostics.

    The attention is the grounding layer's, as the grounding loss supervises it, of <Pos>,
    <Ori> and, with a question, the token that predicts the answer's first token; the layout
    is the layout head's output (which only training uses otherwise).
    """
    video, patch_index = model.video_embeddings(pixel_values, camera_tokens)
    before, after = model.prefix_ids()
    situation_ids = after + model.situation_ids(situation)
    question_ids = model.question_ids(question) if question is not None else []
    embeds = torch.cat([model.embed(before), video, model.embed(situation_ids + question_ids)])
    store: dict = {}

    def capture(module, args, kwargs, output) -> None:
        store["hidden"] = kwargs.get("hidden_states", args[0] if args else None)
        store["rope"] = kwargs["position_embeddings"]

    attention = _grounding_layer(model)
    handle = attention.register_forward_hook(capture, with_kwargs=True)
    try:
        states = model.base.language_model.model(inputs_embeds=embeds[None]).last_hidden_state
    finally:
        handle.remove()
    pos_at = len(before) + len(video) + len(situation_ids) - 2
    queries = [pos_at, pos_at + 1] + ([len(embeds) - 1] if question_ids else [])
    probs = grounding_attention(
        attention, store["hidden"], store["rope"],
        torch.tensor([0], device=model.device), torch.tensor([queries], device=model.device),
    )[0]  # fmt: skip
    patches = (patch_index >= 0).nonzero().flatten()
    positions = patches + len(before)
    states = states[0]
    layout = None
    if model.layout_head is not None:
        layout = model.layout_head(states[positions])[:, :2].float()
    pose = model.read_pose(states[pos_at], states[pos_at + 1], states[positions])
    trace = SituationTrace(patch_index[patches], probs[:, :, positions], layout, pose)
    if question_ids and model.egocentric_head is not None:
        trace.egocentric = model.egocentric_head(states[-1]).float()
    if model.reads_patches:
        _trace_pointers(model, trace, states[pos_at], states[pos_at + 1], states[positions])
    return trace


def _trace_pointers(
    model: Loc3rVLM,
    trace: SituationTrace,
    pos_hidden: torch.Tensor,
    ori_hidden: torch.Tensor,
    patches: torch.Tensor,
) -> None:
    """Fill the trace's pointer fields from <Pos>'s and <Ori>'s states (H,) and the patches'."""
    own_xy = model.f_pos(pos_hidden)[:2].float()
    own_yaw, _ = heading_from_bins(model.f_ori(ori_hidden).float().softmax(-1))
    pose = point_pose(model, pos_hidden[None], ori_hidden[None], patches[None], own_xy[None],
                      own_yaw[None])  # fmt: skip
    if model.position_pointer is not None:
        trace.head_xy = own_xy
        trace.pointer_xy = pose.pointed_xy[0]
        trace.pointer_attention = pose.xy_attention[0]
        gate = model.position_pointer.gate(pos_hidden[None]).float()
        trace.pointer_gate = float(torch.sigmoid(gate))
    if model.heading_pointer is not None:
        trace.head_yaw = float(own_yaw)
        trace.pointer_yaw = float(pose.pointed_yaw[0])
        trace.heading_attention = pose.yaw_attention[0]
        trace.heading_gate = float(
            torch.sigmoid(model.heading_pointer.gate(ori_hidden[None]).float())
        )
