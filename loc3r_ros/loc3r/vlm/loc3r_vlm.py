"""Loc3R-VLM (arXiv 2603.18002): LLaVA-Video taught 3D by a camera prior, layout, situation heads.

Paper parts and where they live:
- Camera pose prior: f_cam, a 2-layer MLP on each frame's CUT3R camera token z'_t, gives one LLM
  token c_t placed right before the frame's vision tokens: [c_t, v_t1 .. v_tn].
- Layout reconstruction (training only, `enable_layout_head`): a linear head on the LLM's
  last-layer hidden states of the vision tokens predicts each patch's BEV (x, y, s_x, s_y).
- Situation modelling: new tokens <Pos> and <Ori> after the situation text; f_pos (2-layer MLP)
  reads (x, y, s_x, s_y) from <Pos>'s last hidden state, f_ori 36 heading-bin logits from <Ori>'s.
  Prompt order: [video] [situation] <Pos> <Ori> [question] [answer]; causal attention lets the
  two tokens see the video and the situation, not the question.

Grounding loss (ours, training only, weight 0 by default): the embedded model is trained from
scratch, without the vision-language alignment LLaVA-Video brings, so its recipe also supervises
attention: in one LLM layer, head 0 of <Pos> and head 2 of <Ori> should look at the patches that
show the situation's anchor object ("next to the bed"), head 1 of <Ori> at its target object
("facing the window"), and head 3 of the token that starts the answer at the object the answer
is about ("is the lamp on my left?"). See `grounding_attention` and losses.grounding_nll.
With `answer_grounding="situation"` heads 0 and 1 of that answer token also look at the anchor
and the faced object: a direction ("on my left") relates three objects. <Pos> and <Ori> find
theirs in the same (last) layer, so the answer token cannot read them through those two tokens;
it gets only what its own heads attend to there.

Attended-layout read-out (ours, `position_readout="attended_layout"`; the paper's is "hidden"):
the position is f_pos's (x, y) plus the layout head's (x, y) of the video patches, averaged with
the attention of <Pos>'s grounding head (head 0 of `grounding_layer`). A tiny LM trained from
scratch finds the anchor's patches (the grounding loss) but its f_pos stays near a prior; this
read-out takes the position from where it looks, and f_pos learns the offset from there.

Egocentric loss (ours, training only, weight 0 by default): a linear head on the last hidden
state of the token that starts the answer regresses where the question's object is in the
agent's frame (metres ahead, to the left; smooth L1). Direction questions ("is the lamp on my
left?") need exactly that; the loss asks the LM for it densely, where the answer's cross-entropy
gives one of four words.

Choices the paper leaves open (?) are fields of Loc3rVLMConfig with their defaults documented:
f_cam/f_pos/f_ori hidden width (LLM hidden) and activation (GELU); sigma via softplus + floor;
whether newline tokens stay in the video (kept, as LLaVA-Video); the time instruction (off).
Positions are metres in the first frame's gravity-aligned BEV frame; yaw is radians, CCW about +z.
"""

from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer

from loc3r.vlm.llava_video import (
    LlavaVideoConfig,
    LlavaVideoModel,
    SamplingConfig,
    cache_kwargs,
)
from loc3r.vlm.losses import (
    LossWeights,
    answer_cross_entropy,
    gaussian_nll_2d,
    grounding_nll,
    heading_from_bins,
    orientation_kl,
    total_loss,
)
from loc3r.vlm.processor import SYSTEM_PROMPT

POSITION_READOUTS = ("hidden", "attended_layout")
POS_TOKEN = "<Pos>"
ORI_TOKEN = "<Ori>"
DEFAULT_SITUATION = "I am standing in the room"


@dataclass
class Loc3rVLMConfig:
    """Loc3R-VLM additions to the base model."""

    cam_token_dim: int = 768  # CUT3R decoder width (the camera token z'_t)
    cam_hidden: int = 0  # f_cam hidden width (?); 0 = the LLM hidden size
    head_hidden: int = 0  # f_pos / f_ori hidden width (?); 0 = the LLM hidden size
    num_ori_bins: int = 36  # 10-degree heading bins over [-pi, pi)
    min_sigma: float = 0.01  # sigma = softplus(raw) + min_sigma, metres (?)
    use_camera_tokens: bool = True  # the camera prior (ablation switch)
    enable_layout_head: bool = True  # the layout head exists (used by training only)
    enable_egocentric_head: bool = False  # ours, training only: see the module docstring
    grounding_layer: int = -1  # LLM layer whose attention the grounding loss supervises
    position_readout: str = "hidden"  # "hidden": f_pos on <Pos> (paper); "attended_layout": ours
    # what the answer token's grounding heads look at (ours): "question" = its object (head 3);
    # "situation" = also the anchor (head 0) and the faced object (head 1)
    answer_grounding: str = "question"
    system_prompt: str = SYSTEM_PROMPT
    max_new_tokens: int = 32
    do_sample: bool = False  # greedy by default; True samples with the settings below
    temperature: float = 0.7  # LLaVA-Video's generation_config values
    top_k: int = 20
    top_p: float = 0.8
    weights: LossWeights = field(default_factory=LossWeights)

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Loc3rVLMConfig:
        """Inverse of to_dict."""
        data = dict(data)
        weights = LossWeights(**data.pop("weights", {}))
        return cls(**data, weights=weights)


def mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """Linear -> GELU -> Linear."""
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, dim_out))


@dataclass
class PosePrediction:
    """What <Pos> and <Ori> say, in the first frame's BEV frame."""

    xy: torch.Tensor  # (2,) metres
    sigma: torch.Tensor  # (2,) metres
    yaw: float  # radians
    yaw_spread: float  # circular std, radians
    ori_probs: torch.Tensor  # (B,) bin probabilities


# (query: 0 = <Pos>, 1 = <Ori>, 2 = the token before the answer; attention head; object) that the
# grounding loss supervises
GROUNDING_HEADS = ((0, 0, "anchor"), (1, 1, "target"), (1, 2, "anchor"), (2, 3, "question"))
ANSWER_SITUATION_HEADS = ((2, 0, "anchor"), (2, 1, "target"))  # answer_grounding="situation"
ANSWER_GROUNDINGS = ("question", "situation")


def grounding_attention(
    attention: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    rows: torch.Tensor,
    queries: torch.Tensor,
) -> torch.Tensor:
    """Attention probabilities of some query tokens, as `attention` (Qwen2Attention) has them.

    hidden (B, L, H) is the layer's normed input, position_embeddings its RoPE (cos, sin) of
    shape (1 or B, L, head_dim); rows (N,) pick sequences and queries (N, Q) token positions in
    them. Returns (N, heads, Q, L) under causal masking: the same numbers eager or SDPA
    attention uses, for a few rows only, so training can supervise them whatever the kernel.
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
    future = (
        torch.arange(length, device=hidden.device)[None, None, None] > queries[:, None, :, None]
    )
    return scores.masked_fill(future, float("-inf")).softmax(-1)


@dataclass
class ScenePrefix:
    """The encoded video part of the prompt and the LLM's KV cache over it."""

    cache: object  # transformers DynamicCache
    length: int  # tokens in the prefix
    num_frames: int
    last_hidden: torch.Tensor = field(repr=False, default=None)  # (length, H), for visualisation
    # attended-layout read-out only: the grounding layer's input over the prefix (hidden (1,
    # length, H), RoPE cos, sin), the prefix positions of the patch tokens (P,) and their layout
    # (P, 2)
    layer_input: tuple | None = field(repr=False, default=None)
    patch_positions: torch.Tensor | None = field(repr=False, default=None)
    patch_layout: torch.Tensor | None = field(repr=False, default=None)


@dataclass
class SituationTrace:
    """Where <Pos> and <Ori> look and where the layout head puts the video patches (diagnostics).

    P is the number of video patch tokens (camera and newline tokens left out), frame-major.
    """

    patch_index: torch.Tensor  # (P,) pooled-patch index of each token: frame * g * g + cell
    attention: torch.Tensor  # (heads, Q, P) <Pos>, <Ori> (, answer) attention on them
    layout: torch.Tensor | None  # (P, 2) the layout head's (x, y), metres; None without the head
    pose: PosePrediction  # what localize() returns for the same situation


@dataclass
class TrainSample:
    """One training example (tensors on the model's device)."""

    pixel_values: torch.Tensor  # (T, 3, S, S) in [-1, 1]
    camera_tokens: torch.Tensor | None  # (T, cam_token_dim)
    situation: str
    question: str
    answer: str
    position: torch.Tensor | None = None  # (2,) metres, BEV; None = no situation target
    yaw: float | None = None  # radians, BEV
    bev_targets: torch.Tensor | None = None  # (T, g, g, 2) metres per pooled patch
    bev_mask: torch.Tensor | None = None  # (T, g, g) bool
    anchor_cells: torch.Tensor | None = None  # (T, g, g) bool: patches showing the anchor object
    target_cells: torch.Tensor | None = None  # (T, g, g) bool: ... the object faced
    question_cells: torch.Tensor | None = None  # ... the object the answer is about
    object_offset: torch.Tensor | None = None  # (2,) that object in the agent frame (ahead, left)


class Loc3rVLM(nn.Module):
    """LLaVA-Video + f_cam + layout head + f_pos + f_ori, with its tokenizer."""

    def __init__(self, base: LlavaVideoModel, tokenizer, config: Loc3rVLMConfig) -> None:
        super().__init__()
        self.base = base
        self.tokenizer = tokenizer
        self.config = config
        hidden = base.config.text["hidden_size"]
        self.f_cam = mlp(config.cam_token_dim, config.cam_hidden or hidden, hidden)
        self.f_pos = mlp(hidden, config.head_hidden or hidden, 4)
        self.f_ori = mlp(hidden, config.head_hidden or hidden, config.num_ori_bins)
        self.layout_head = nn.Linear(hidden, 4) if config.enable_layout_head else None
        self.egocentric_head = nn.Linear(hidden, 2) if config.enable_egocentric_head else None
        self._add_special_tokens()
        self.base.vision_tower.requires_grad_(False)  # SigLIP stays frozen
        layers = base.config.text["num_hidden_layers"]
        if not -layers <= config.grounding_layer < layers:
            raise ValueError(
                f"grounding_layer {config.grounding_layer} outside the {layers} layers"
            )
        if config.position_readout not in POSITION_READOUTS:
            raise ValueError(
                f"position_readout={config.position_readout!r}: expected one of {POSITION_READOUTS}"
            )
        if config.position_readout == "attended_layout" and self.layout_head is None:
            raise ValueError("position_readout='attended_layout' needs the layout head")
        if config.answer_grounding not in ANSWER_GROUNDINGS:
            raise ValueError(
                f"answer_grounding={config.answer_grounding!r}: expected one of {ANSWER_GROUNDINGS}"
            )
        self.grounding_heads = GROUNDING_HEADS + (
            ANSWER_SITUATION_HEADS if config.answer_grounding == "situation" else ()
        )

    # --- vocabulary -------------------------------------------------------------------------------
    def _add_special_tokens(self) -> None:
        vocab = self.tokenizer.get_vocab()
        new = [t for t in (POS_TOKEN, ORI_TOKEN) if t not in vocab]
        if new:
            self.tokenizer.add_special_tokens({"additional_special_tokens": new})
        rows = len(self.tokenizer)
        embeddings = self.base.language_model.get_input_embeddings()
        if embeddings.num_embeddings < rows:
            self.base.resize_vocabulary(rows)
        self.pos_id = self.tokenizer.convert_tokens_to_ids(POS_TOKEN)
        self.ori_id = self.tokenizer.convert_tokens_to_ids(ORI_TOKEN)
        self.stop_ids = tuple(
            i
            for i in (
                self.tokenizer.convert_tokens_to_ids("<|im_end|>"),
                self.tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            )
            if isinstance(i, int) and i >= 0
        )

    def ids(self, text: str) -> list[int]:
        """Token ids of plain text (no special tokens added)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    # --- pieces of the sequence ----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.f_cam[0].weight.device

    def video_embeddings(
        self, pixel_values: torch.Tensor, camera_tokens: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, 3, S, S) + (T, Cd) -> video embeddings (N, H) and patch-token index (N,).

        Index value p >= 0 marks the p-th pooled patch (frame-major, row-major); -1 marks the
        camera and newline tokens.
        """
        frames = self.base.frame_tokens(pixel_values.to(self.device))  # (T, 210, H)
        count, per_frame, hidden = frames.shape
        side = self.base.config.pooled_grid
        newline = 1 if per_frame == side * (side + 1) else 0
        patch = torch.arange(side * side, device=self.device).view(side, side)
        row = torch.cat([patch, torch.full((side, newline), -1, device=self.device)], dim=1)
        index = (
            row.reshape(1, -1) + (torch.arange(count, device=self.device) * side * side)[:, None]
        )
        index = torch.where(row.reshape(1, -1) < 0, -1, index)  # (T, 210)
        if self.config.use_camera_tokens:
            if camera_tokens is None or camera_tokens.shape != (count, self.config.cam_token_dim):
                shape = None if camera_tokens is None else tuple(camera_tokens.shape)
                raise ValueError(
                    f"expected camera tokens of shape ({count}, {self.config.cam_token_dim}), "
                    f"got {shape}"
                )
            cam = self.f_cam(camera_tokens.to(self.device, frames.dtype))[:, None]  # (T, 1, H)
            frames = torch.cat([cam, frames], dim=1)
            index = torch.cat([torch.full((count, 1), -1, device=self.device), index], dim=1)
        return frames.reshape(-1, hidden), index.reshape(-1)

    def prefix_ids(self) -> tuple[list[int], list[int]]:
        """Ids before the video and right after it (the scene prefix)."""
        before = self.ids(
            f"<|im_start|>system\n{self.config.system_prompt}<|im_end|>\n<|im_start|>user\n"
        )
        return before, self.ids("\n")

    def situation_ids(self, situation: str) -> list[int]:
        """[situation] <Pos> <Ori>."""
        return [*self.ids(situation.strip() + " "), self.pos_id, self.ori_id]

    def question_ids(self, question: str) -> list[int]:
        """[question] then the assistant header."""
        return self.ids(f"\n{question.strip()}<|im_end|>\n<|im_start|>assistant\n")

    def answer_ids(self, answer: str) -> list[int]:
        """[answer] <|im_end|> (what the LM is trained to produce)."""
        return self.ids(f"{answer.strip()}<|im_end|>")

    def embed(self, ids: list[int]) -> torch.Tensor:
        """(L,) ids -> (L, H) embeddings."""
        tensor = torch.tensor(ids, dtype=torch.long, device=self.device)
        return self.base.embed_tokens(tensor)

    # --- heads ------------------------------------------------------------------------------------
    def _sigma(self, raw: torch.Tensor) -> torch.Tensor:
        return F.softplus(raw.float()) + self.config.min_sigma

    @property
    def attends_for_position(self) -> bool:
        """True when the position is read from the attended layout."""
        return self.config.position_readout == "attended_layout"

    def attended_layout(self, attention: torch.Tensor, patch_layout: torch.Tensor) -> torch.Tensor:
        """(P,) attention on the video patches and their (P, 2) layout -> the weighted (x, y)."""
        weights = attention.float()
        return (weights / weights.sum().clamp_min(1e-9)) @ patch_layout.float()

    def read_pose(
        self,
        pos_hidden: torch.Tensor,
        ori_hidden: torch.Tensor,
        attended_xy: torch.Tensor | None = None,
    ) -> PosePrediction:
        """Hidden states of <Pos> and <Ori> (H,) -> PosePrediction.

        attended_xy: the attended layout (attended-layout read-out), which f_pos's (x, y) offsets.
        """
        out = self.f_pos(pos_hidden).float()
        xy = out[:2] if attended_xy is None else out[:2] + attended_xy.float()
        probs = self.f_ori(ori_hidden).float().softmax(-1)
        yaw, spread = heading_from_bins(probs)
        return PosePrediction(
            xy, self._sigma(out[2:]), float(yaw.detach()), float(spread.detach()), probs
        )

    @contextmanager
    def _grounding_layer_input(self, store: dict):
        """Within the block, each forward leaves the grounding layer's input in `store`."""
        attention = self.base.language_model.model.layers[self.config.grounding_layer].self_attn

        def capture(module, args, kwargs, output) -> None:
            store["hidden"] = kwargs.get("hidden_states", args[0] if args else None)
            store["rope"] = kwargs["position_embeddings"]

        handle = attention.register_forward_hook(capture, with_kwargs=True)
        try:
            yield attention
        finally:
            handle.remove()

    # --- training ---------------------------------------------------------------------------------
    def _sample_sequence(self, sample: TrainSample):
        video, patch_index = self.video_embeddings(sample.pixel_values, sample.camera_tokens)
        before, after = self.prefix_ids()
        situation = self.situation_ids(sample.situation or DEFAULT_SITUATION)
        question, answer = self.question_ids(sample.question), self.answer_ids(sample.answer)
        embeds = torch.cat(
            [self.embed(before), video, self.embed(after + situation + question + answer)]
        )
        n_before, n_video = len(before), len(video)
        labels = torch.full((len(embeds),), -100, dtype=torch.long, device=self.device)
        answer_start = len(embeds) - len(answer)
        labels[answer_start:] = torch.tensor(answer, device=self.device)
        pos_at = n_before + n_video + len(after) + len(situation) - 2
        patch_at = torch.full((len(embeds),), -1, dtype=torch.long, device=self.device)
        patch_at[n_before : n_before + n_video] = patch_index
        return embeds, labels, pos_at, patch_at

    def forward_train(self, samples: list[TrainSample]) -> dict[str, torch.Tensor]:
        """Losses of a batch: ce, bev, pos, ori and their weighted total ("loss")."""
        sequences = [self._sample_sequence(s) for s in samples]
        length = max(len(s[0]) for s in sequences)
        hidden = sequences[0][0].shape[-1]
        batch = len(sequences)
        embeds = sequences[0][0].new_zeros(batch, length, hidden)
        labels = torch.full((batch, length), -100, dtype=torch.long, device=self.device)
        mask = torch.zeros(batch, length, dtype=torch.long, device=self.device)
        for i, (e, lab, _, _) in enumerate(sequences):
            embeds[i, : len(e)], labels[i, : len(e)], mask[i, : len(e)] = e, lab, 1
        grounded = [
            i
            for i, s in enumerate(samples)
            if any(c is not None for c in (s.anchor_cells, s.target_cells, s.question_cells))
        ]
        # rows whose attention is needed: the grounded ones (grounding loss), every one with a
        # position target (attended-layout read-out)
        attention_rows = grounded if self.config.weights.grounding > 0 else []
        if self.attends_for_position:
            attention_rows = sorted(
                set(attention_rows) | {i for i, s in enumerate(samples) if s.position is not None}
            )
        row_of = {i: n for n, i in enumerate(attention_rows)}
        captured: dict[str, torch.Tensor] = {}
        handle = None
        if attention_rows:
            rows = torch.tensor(attention_rows, device=self.device)
            queries = torch.tensor(
                [self._grounding_queries(*sequences[i][1:3]) for i in attention_rows],
                device=self.device,
            )
            layers = self.base.language_model.model.layers
            attention = layers[self.config.grounding_layer].self_attn

            def capture(module, args, kwargs, output) -> None:
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                captured["probs"] = grounding_attention(
                    module, hidden, kwargs["position_embeddings"], rows, queries
                )

            handle = attention.register_forward_hook(capture, with_kwargs=True)
        try:
            out = self.base.language_model.model(inputs_embeds=embeds, attention_mask=mask)
        finally:
            if handle is not None:
                handle.remove()
        states = out.last_hidden_state  # (B, L, H) after the final norm
        logits = self.base.language_model.lm_head(states)
        parts = {"ce": answer_cross_entropy(logits, labels)}
        if self.config.weights.grounding > 0:  # always reported, so DDP ranks log the same keys
            parts["ground"] = (
                self._grounding_loss(
                    captured["probs"][[row_of[i] for i in grounded]], grounded, samples, sequences
                )
                if grounded and "probs" in captured
                else logits.sum() * 0.0
            )

        pos_rows = [(i, s[2]) for i, s in enumerate(sequences) if samples[i].position is not None]
        if pos_rows:
            rows = torch.tensor([i for i, _ in pos_rows], device=self.device)
            cols = torch.tensor([p for _, p in pos_rows], device=self.device)
            pos_out = self.f_pos(states[rows, cols]).float()
            target = torch.stack([samples[i].position.float() for i, _ in pos_rows]).to(self.device)
            xy = pos_out[:, :2]
            if self.attends_for_position:
                xy = xy + torch.stack([self._attended_xy(captured["probs"][row_of[i]], states[i],
                                       sequences[i][3]) for i, _ in pos_rows])  # fmt: skip
            parts["pos"] = gaussian_nll_2d(xy, self._sigma(pos_out[:, 2:]), target)
            ori_logits = self.f_ori(states[rows, cols + 1]).float()
            yaw = torch.tensor([samples[i].yaw for i, _ in pos_rows], device=self.device)
            parts["ori"] = orientation_kl(ori_logits, yaw, self.config.weights.ori_sigma)

        ego_rows = [i for i, s in enumerate(samples) if s.object_offset is not None]
        if self.egocentric_head is not None and ego_rows:
            starts = [self._grounding_queries(*sequences[i][1:3])[2] for i in ego_rows]
            rows = torch.tensor(ego_rows, device=self.device)
            predicted = self.egocentric_head(states[rows, torch.tensor(starts, device=self.device)])
            target = torch.stack([samples[i].object_offset.float() for i in ego_rows])
            parts["ego"] = F.smooth_l1_loss(predicted.float(), target.to(self.device))
        elif self.egocentric_head is not None:  # reported (and the head used) on every DDP rank
            parts["ego"] = self.egocentric_head(states[:1, 0]).float().sum() * 0.0

        if self.layout_head is not None and any(s.bev_targets is not None for s in samples):
            preds, sigmas, targets, valid = [], [], [], []
            for i, (_, _, _, patch_at) in enumerate(sequences):
                sample = samples[i]
                if sample.bev_targets is None:
                    continue
                where = (patch_at >= 0).nonzero().flatten()
                out_bev = self.layout_head(states[i, where]).float()
                flat_targets = sample.bev_targets.reshape(-1, 2).to(self.device).float()
                flat_mask = sample.bev_mask.reshape(-1).to(self.device)
                order = patch_at[where]
                preds.append(out_bev[:, :2])
                sigmas.append(self._sigma(out_bev[:, 2:]))
                targets.append(flat_targets[order])
                valid.append(flat_mask[order])
            parts["bev"] = gaussian_nll_2d(
                torch.cat(preds), torch.cat(sigmas), torch.cat(targets), torch.cat(valid)
            )
        parts["loss"] = total_loss(parts, self.config.weights)
        return parts

    def _attended_xy(
        self, probs: torch.Tensor, states: torch.Tensor, patch_at: torch.Tensor
    ) -> torch.Tensor:
        """Attended layout of one training sequence: probs (heads, 3, L) of its queries."""
        where = (patch_at >= 0).nonzero().flatten()
        return self.attended_layout(probs[0, 0, where], self.layout_head(states[where])[:, :2])

    @staticmethod
    def _grounding_queries(labels: torch.Tensor, pos_at: int) -> list[int]:
        """Positions of <Pos>, <Ori> and the token that predicts the first answer token."""
        answer_start = int((labels != -100).nonzero()[0])
        return [pos_at, pos_at + 1, answer_start - 1]

    def _grounding_loss(
        self, probs: torch.Tensor, grounded: list[int], samples: list[TrainSample], sequences: list
    ) -> torch.Tensor:
        """L_ground from (N, heads, 3, L) attention of <Pos>, <Ori>, answer (grounding_heads)."""
        picked, on_object = [], []
        for n, i in enumerate(grounded):
            patch_at = sequences[i][3]
            where = (patch_at >= 0).nonzero().flatten()  # the video's patch tokens
            sample = samples[i]
            cells = {
                "anchor": sample.anchor_cells,
                "target": sample.target_cells,
                "question": sample.question_cells,
            }
            for query, head, name in self.grounding_heads:
                if head >= probs.shape[1] or cells[name] is None:
                    continue
                flat = cells[name].reshape(-1).to(self.device)
                mask = torch.zeros(probs.shape[-1], dtype=torch.bool, device=self.device)
                mask[where] = flat[patch_at[where]]
                picked.append(probs[n, head, query])
                on_object.append(mask)
        if not picked:
            return probs.sum() * 0.0
        return grounding_nll(torch.stack(picked), torch.stack(on_object))

    def forward(self, samples: list[TrainSample]) -> dict[str, torch.Tensor]:
        """Training forward (what DistributedDataParallel wraps): see forward_train."""
        return self.forward_train(samples)

    # --- inference --------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_scene(
        self, pixel_values: torch.Tensor, camera_tokens: torch.Tensor | None
    ) -> ScenePrefix:
        """Run the LLM over [system, user header, video, newline] once; keep its KV cache."""
        from transformers import DynamicCache

        video, patch_index = self.video_embeddings(pixel_values, camera_tokens)
        before, after = self.prefix_ids()
        embeds = torch.cat([self.embed(before), video, self.embed(after)])[None]
        cache = DynamicCache()
        store: dict = {}
        decoder = self.base.language_model.model
        with self._grounding_layer_input(store) if self.attends_for_position else nullcontext():
            out = decoder(inputs_embeds=embeds, use_cache=True, **cache_kwargs(decoder, cache))
        prefix = ScenePrefix(cache, embeds.shape[1], len(pixel_values), out.last_hidden_state[0])
        if self.attends_for_position:
            positions = (patch_index >= 0).nonzero().flatten() + len(before)
            prefix.layer_input = (store["hidden"], *store["rope"])
            prefix.patch_positions = positions
            prefix.patch_layout = self.layout_head(prefix.last_hidden[positions])[:, :2].float()
        return prefix

    def _continue(self, prefix: ScenePrefix, ids: list[int], offset: int):
        embeds = self.embed(ids)[None]
        positions = torch.arange(offset, offset + len(ids), device=self.device)[None]
        decoder = self.base.language_model.model
        return decoder(
            inputs_embeds=embeds,
            position_ids=positions,
            use_cache=True,
            **cache_kwargs(decoder, prefix.cache),
        )

    @staticmethod
    def _truncate(prefix: ScenePrefix) -> None:
        extra = prefix.cache.get_seq_length() - prefix.length
        if extra > 0:
            prefix.cache.crop(-extra)  # a negative value removes that many (transformers 4 and 5)

    def _situate(self, prefix: ScenePrefix, situation_ids: list[int]) -> PosePrediction:
        """Forward [situation] <Pos> <Ori> after the prefix (left in the cache); read the pose."""
        if not self.attends_for_position:
            states = self._continue(prefix, situation_ids, prefix.length).last_hidden_state[0]
            return self.read_pose(states[-2], states[-1])
        if prefix.layer_input is None:
            raise ValueError("this scene prefix was encoded without the attended layout")
        store: dict = {}
        with self._grounding_layer_input(store) as attention:
            states = self._continue(prefix, situation_ids, prefix.length).last_hidden_state[0]
        hidden, cos, sin = prefix.layer_input
        new_cos, new_sin = store["rope"]
        probs = grounding_attention(
            attention,
            torch.cat([hidden, store["hidden"]], dim=1),
            (torch.cat([cos, new_cos], dim=1), torch.cat([sin, new_sin], dim=1)),
            torch.tensor([0], device=self.device),
            torch.tensor([[prefix.length + len(situation_ids) - 2]], device=self.device),
        )  # (1, heads, 1, L): <Pos>'s attention
        attended_xy = self.attended_layout(
            probs[0, 0, 0, prefix.patch_positions], prefix.patch_layout
        )
        return self.read_pose(states[-2], states[-1], attended_xy)

    @torch.inference_mode()
    def localize(self, prefix: ScenePrefix, situation: str) -> PosePrediction:
        """One forward over [situation] <Pos> <Ori> after the cached scene prefix."""
        try:
            return self._situate(prefix, self.situation_ids(situation))
        finally:
            self._truncate(prefix)

    @torch.inference_mode()
    def trace_situation(
        self,
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
        video, patch_index = self.video_embeddings(pixel_values, camera_tokens)
        before, after = self.prefix_ids()
        situation_ids = after + self.situation_ids(situation)
        question_ids = self.question_ids(question) if question is not None else []
        embeds = torch.cat([self.embed(before), video, self.embed(situation_ids + question_ids)])
        store: dict = {}
        with self._grounding_layer_input(store) as attention:
            states = self.base.language_model.model(inputs_embeds=embeds[None]).last_hidden_state
        pos_at = len(before) + len(video) + len(situation_ids) - 2
        queries = [pos_at, pos_at + 1] + ([len(embeds) - 1] if question_ids else [])
        probs = grounding_attention(
            attention, store["hidden"], store["rope"],
            torch.tensor([0], device=self.device), torch.tensor([queries], device=self.device),
        )[0]  # fmt: skip
        patches = (patch_index >= 0).nonzero().flatten()
        positions = patches + len(before)
        states = states[0]
        layout = None
        if self.layout_head is not None:
            layout = self.layout_head(states[positions])[:, :2].float()
        attended = None
        if self.attends_for_position:
            attended = self.attended_layout(probs[0, 0, positions], layout)
        pose = self.read_pose(states[pos_at], states[pos_at + 1], attended)
        return SituationTrace(patch_index[patches], probs[:, :, positions], layout, pose)

    @torch.inference_mode()
    def answer(
        self, prefix: ScenePrefix, question: str, situation: str
    ) -> tuple[str, PosePrediction]:
        """Pose from the situation, then the greedy answer to the question."""
        try:
            situation_ids = self.situation_ids(situation)
            pose = self._situate(prefix, situation_ids)
            offset = prefix.length + len(situation_ids)
            tokens, _ = self.base.generate_greedy(
                self.embed(self.question_ids(question))[None],
                max_new_tokens=self.config.max_new_tokens,
                stop_ids=self.stop_ids,
                past_key_values=prefix.cache,
                position_offset=offset,
                sampling=(
                    SamplingConfig(self.config.temperature, self.config.top_k, self.config.top_p)
                    if self.config.do_sample
                    else None
                ),
            )
            text = self.tokenizer.decode(
                [t for t in tokens if t not in self.stop_ids], skip_special_tokens=True
            )
            return text.strip(), pose
        finally:
            self._truncate(prefix)

    # --- checkpoints ------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, state_dict: dict | None = None) -> Path:
        """config.json + model.safetensors + tokenizer files.

        `state_dict` replaces this module's own (the gathered weights of a sharded model, or
        weights with LoRA adapters merged).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        base = self.base.config
        config = {
            "format": "loc3r_vlm",
            "loc3r": self.config.to_dict(),
            "llava": {
                "text": base.text,
                "vision": base.vision,
                "mm_hidden_size": base.mm_hidden_size,
                "mm_vision_select_layer": base.mm_vision_select_layer,
                "mm_spatial_pool_mode": base.mm_spatial_pool_mode,
                "mm_newline_position": base.mm_newline_position,
                "pool_stride": base.pool_stride,
            },
            "vocab_rows": self.base.language_model.get_input_embeddings().num_embeddings,
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        source = self.state_dict() if state_dict is None else state_dict
        state = {k: v.detach().cpu().contiguous() for k, v in source.items()}
        save_file(state, str(directory / "model.safetensors"))
        self.tokenizer.save_pretrained(str(directory))
        return directory

    @classmethod
    def from_base(
        cls,
        llava_video_dir: str | Path,
        vision_tower_dir: str | Path,
        config: Loc3rVLMConfig,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        attn_implementation: str = "sdpa",
    ) -> Loc3rVLM:
        """A Loc3R-VLM to fine-tune: the lmms-lab LLaVA-Video weights + new (random) f_cam/heads."""
        from loc3r.vlm.checkpoint import load_llava_video

        base, tokenizer = load_llava_video(
            llava_video_dir,
            vision_tower_dir,
            dtype=dtype,
            device="cpu",
            attn_implementation=attn_implementation,
        )
        model = cls(base, tokenizer, config)
        return model.to(device=device, dtype=dtype)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        attn_implementation: str = "sdpa",
    ) -> Loc3rVLM:
        """Load a directory written by save_pretrained (strict: every tensor must match).

        The model is built on the meta device and filled from the file, so a 7B checkpoint is
        materialised once, in `dtype` (bfloat16 on GPUs).
        """
        from loc3r.vlm.checkpoint import (
            LlavaCheckpointError,
            load_state_strict,
            materialise_buffers,
        )

        directory = Path(directory)
        try:
            config = json.loads((directory / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LlavaCheckpointError(f"{directory}: unreadable config.json ({exc})") from exc
        if config.get("format") != "loc3r_vlm":
            raise LlavaCheckpointError(f"{directory} is not a Loc3R-VLM checkpoint")
        llava = LlavaVideoConfig(**config["llava"], attn_implementation=attn_implementation)
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        try:
            tensors = load_file(str(directory / "model.safetensors"))
        except Exception as exc:
            raise LlavaCheckpointError(
                f"{directory}: unreadable model.safetensors ({exc})"
            ) from exc
        with torch.device("meta"):
            base = LlavaVideoModel(llava)
            base.resize_vocabulary(config["vocab_rows"])
            model = cls(base, tokenizer, Loc3rVLMConfig.from_dict(config["loc3r"]))
        model = model.to_empty(device="cpu").to(dtype)
        load_state_strict(model, {k: v.to(dtype) for k, v in tensors.items()})
        materialise_buffers(model.base)
        return model.to(device=device).eval()
