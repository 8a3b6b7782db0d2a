"""Loc3R-VLM (arXiv 2603.18002): LLaVA-Video taught 3D by a camera prior, layout, situation heads.

- Camera pose prior: f_cam, a 2-layer MLP on each frame's CUT3R camera token z'_t, gives one LLM
  token c_t placed right before the frame's vision tokens: [c_t, v_t1 .. v_tn].
- Layout reconstruction (training only, `enable_layout_head`): a linear head on the LLM's
  last-layer hidden states of the vision tokens predicts each patch's BEV (x, y, s_x, s_y).
- Situation modelling: new tokens <Pos> and <Ori> after the situation text; f_pos (2-layer MLP)
  reads (x, y, s_x, s_y) from <Pos>'s last hidden state, f_ori 36 heading-bin logits from <Ori>'s.
- Prompt order: [video] [situation] <Pos> <Ori> [question] [answer]; causal attention lets the
  two tokens see the video and the situation, not the question.
Choices the paper leaves open, marked (?): f_cam/f_pos/f_ori widths (the LLM's) and GELU, sigma =
softplus + floor (Loc3rVLMConfig fields); newline tokens stay in the video, as in LLaVA-Video.
Positions are metres in the first frame's gravity-aligned BEV frame; yaw is radians, CCW about +z.
What the embedded bundle's recipe adds (ours, each off by default: a model without them is the
paper's) lives beside this file: the aids' modules (point_embedding tells each patch its 3D
point; position_pointer, heading_pointer and egocentric_readout read the patches' layout for the
pose and the answer), built by recipe_aids, which also runs the read-out aids (the point
embedding runs in video_embeddings), and the extra training losses in training_aids.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer

from loc3r.vlm import recipe_aids, training_aids
from loc3r.vlm.heading_pointer import heading_error
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
    heading_from_bins,
    orientation_kl,
    total_loss,
)
from loc3r.vlm.packing import pack_samples
from loc3r.vlm.processor import SYSTEM_PROMPT
from loc3r.vlm.static_decoding import (
    StaticDecoding,
    check_room,
    forward_at,
    forward_text,
    is_static,
    rewind,
)

POS_TOKEN = "<Pos>"
ORI_TOKEN = "<Ori>"
DEFAULT_SITUATION = "I am standing in the room"
# options removed (name -> the value it had when off, the git commit that still has its code);
# checkpoints saved before their removal carry them
REMOVED_OPTIONS = {
    "position_readout": ("hidden", "7295583"),
    "answer_grounding": ("question", "7295583"),
    "grounding_layer": (-1, "7295583"),
    # the semantic embedding (a second tiny tower told each video token what its patches show)
    "semantic_classes": ([], "2f61514"),
    "semantic_probe_hidden": (0, "2f61514"),
    # the read-out's spread for counting (b40: the spread did not tell one object from two)
    "readout_spread": (False, "5d813da"),
}
# loss weights removed the same way (LossWeights fields): the reading losses, tried and dropped
REMOVED_WEIGHTS = {
    "answer_reads_situation": (0.0, "a5fc376"),
    "answer_reads_anchor": (0.0, "a5fc376"),
}


def drop_removed(data: dict, removed: dict[str, tuple[object, str]]) -> dict:
    """`data` without the removed keys; ValueError for one set to anything but its off value."""
    data = dict(data)
    for key, (off, commit) in removed.items():
        if key in data and (value := data.pop(key)) != off:
            raise ValueError(
                f"{key}={value!r}: the option was removed (only {off!r} loads); its code is in "
                f"git commit {commit}"
            )
    return data


@dataclass
class Loc3rVLMConfig:
    """Loc3R-VLM additions to the base model."""

    # the camera token's width: CUT3R's decoder width (z'_t), or a wider geometry token's
    # (loc3r.engine.perception.camera_token_width)
    cam_token_dim: int = 768
    cam_hidden: int = 0  # f_cam hidden width (?); 0 = the LLM hidden size
    head_hidden: int = 0  # f_pos / f_ori hidden width (?); 0 = the LLM hidden size
    num_ori_bins: int = 36  # 10-degree heading bins over [-pi, pi)
    min_sigma: float = 0.01  # sigma = softplus(raw) + min_sigma, metres (?)
    use_camera_tokens: bool = True  # the camera prior (ablation switch)
    enable_layout_head: bool = True  # the layout head exists (used by training only)
    enable_egocentric_head: bool = False  # training aid (ours): see training_aids
    point_embedding: bool = False  # input aid (ours): geometry camera tokens, see point_embedding
    position_pointer: bool = False  # read-out aid (ours): see position_pointer (needs the layout)
    # read-out aid (ours): the answer is told where the object it reads is from the agent's pose
    # (see egocentric_readout; needs the layout)
    egocentric_readout: bool = False
    # with it (ours): the read-out also picks an object by its place and hands over its states
    # (see egocentric_readout)
    readout_objects: bool = False
    # with it and the position pointer (ours): the read-out's attention knows the anchor's patches
    # (the pointer's attention) and can leave them out (see egocentric_readout)
    readout_anchor: bool = False
    # read-out aid (ours): <Ori> points at the faced object; the heading is the bearing to it
    # (see heading_pointer; needs the layout)
    heading_pointer: bool = False
    # training setting (ours): the pointers' attention grounded on their objects, the anchor for
    # <Pos>, the faced object for <Ori> (parts pointer_ground and heading_ground, w_ground)
    ground_pointers: bool = False
    system_prompt: str = SYSTEM_PROMPT
    max_new_tokens: int = 32
    stop_repeats: int = 3  # loop guard: stop when one n-gram ends the answer 3 times; 0 = off
    do_sample: bool = False  # greedy by default; True samples with the settings below
    temperature: float = 0.7  # LLaVA-Video's generation_config values
    top_k: int = 20
    top_p: float = 0.8
    weights: LossWeights = field(default_factory=LossWeights)  # with the aids' (ours), 0 = off

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Loc3rVLMConfig:
        """Inverse of to_dict; a removed option loads only with the value it had when off."""
        data = drop_removed(data, REMOVED_OPTIONS)
        weights = LossWeights(**drop_removed(data.pop("weights", {}), REMOVED_WEIGHTS))
        return cls(**data, weights=weights)


def check_answer_vocabulary(answers) -> tuple[str, ...]:
    """A list of non-empty strings -> its entries as a tuple (repeats dropped); else ValueError."""
    if not isinstance(answers, (list, tuple)) or not answers:
        raise ValueError(
            f"the answer vocabulary must be a non-empty list of strings, not {answers!r:.80}"
        )
    bad = [a for a in answers if not isinstance(a, str) or not a.strip()]
    if bad:
        raise ValueError(
            f"the answer vocabulary has entries that are not non-empty strings: {bad[:5]!r}"
        )
    return tuple(dict.fromkeys(answers))


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
    # (P,) the position pointer's attention over the video's patches (None without it)
    anchor_attention: torch.Tensor | None = field(default=None, repr=False)


@dataclass
class ScenePrefix:
    """The encoded video part of the prompt and the LLM's KV cache over it."""

    cache: object  # transformers DynamicCache, or StaticCache with static decoding
    length: int  # tokens in the prefix
    num_frames: int
    last_hidden: torch.Tensor = field(repr=False, default=None)  # (length, H), for visualisation
    ticket: int = -1  # with a static cache: the claim on it (StaticDecoding.check_owner)
    patch_positions: torch.Tensor | None = field(repr=False, default=None)  # (P,) patch tokens


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
    # training aids' targets (ours; see training_aids): the patches that show the situation's
    # objects, (T, g, g) bool each, and the question's object in the agent frame (ahead, left)
    anchor_cells: torch.Tensor | None = None  # the anchor object
    target_cells: torch.Tensor | None = None  # the object faced
    question_cells: torch.Tensor | None = None  # the object the answer is about
    object_offset: torch.Tensor | None = None  # (2,) metres


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
        self.egocentric_head = (
            training_aids.egocentric_head(hidden) if config.enable_egocentric_head else None
        )
        recipe_aids.add_aids(self, hidden)  # the shipped recipe's (ours), each off by default
        self.static_decoding: StaticDecoding | None = None
        self._add_special_tokens()
        self.set_answer_vocabulary(None)
        self.base.vision_tower.requires_grad_(False)  # SigLIP stays frozen

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
        vocab = self.tokenizer.get_vocab()
        ends = ("<|im_end|>", "<|endoftext|>", self.tokenizer.eos_token)  # end of answer, text
        self.stop_ids = tuple(dict.fromkeys(vocab[t] for t in ends if t in vocab))

    def set_answer_vocabulary(self, answers: list[str] | None) -> None:
        """Answer only with one of `answers` (see check_answer_vocabulary); None: free decoding.

        A model whose answers come from a closed set (the embedded one: the synthetic corpus')
        declares it in its bundle (bundle.json "answer_vocabulary"); `answer` then scores every
        entry and returns the most likely one.
        """
        if answers is None:
            self.answer_vocabulary, self._vocabulary_ids = None, None
            return
        if self.static_decoding is not None:
            raise ValueError("an answer vocabulary is scored in batches: not with static decoding")
        self.answer_vocabulary = check_answer_vocabulary(answers)
        self._vocabulary_ids = [self.answer_ids(a) for a in self.answer_vocabulary]

    def use_static_decoding(self, settings: StaticDecoding | None) -> None:
        """Decode free answers from a fixed-size KV cache (see static_decoding); None: dynamic.

        Applies to scenes encoded from now on. Not with an answer vocabulary, whose entries are
        scored as one batch over a cache that grows.
        """
        if settings is not None and self.answer_vocabulary is not None:
            raise ValueError("static decoding is for free answers; this model has a vocabulary")
        self.static_decoding = settings

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
        pixel_values = pixel_values.to(self.device)
        frames = self.base.frame_tokens(pixel_values)  # (T, 210, H)
        count, per_frame, hidden = frames.shape
        side = self.base.config.pooled_grid
        newline = 1 if per_frame == side * (side + 1) else 0
        patch = torch.arange(side * side, device=self.device).view(side, side)
        row = torch.cat([patch, torch.full((side, newline), -1, device=self.device)], dim=1)
        index = (
            row.reshape(1, -1) + (torch.arange(count, device=self.device) * side * side)[:, None]
        )
        index = torch.where(row.reshape(1, -1) < 0, -1, index)  # (T, 210)
        keep = (row.reshape(-1) >= 0).nonzero().flatten()  # the patch tokens of a frame
        if self.config.use_camera_tokens:
            if camera_tokens is None or camera_tokens.shape != (count, self.config.cam_token_dim):
                shape = None if camera_tokens is None else tuple(camera_tokens.shape)
                raise ValueError(
                    f"expected camera tokens of shape ({count}, {self.config.cam_token_dim}), "
                    f"got {shape}"
                )
            camera_tokens = camera_tokens.to(self.device)
            if self.point_embedding is not None:  # input aid (ours): add each patch's 3D point
                from loc3r.engine.perception import token_points

                points = self.point_embedding(token_points(camera_tokens, side))  # (T, g*g, H)
                frames = frames.index_add(1, keep, points.to(frames.dtype))
            cam = self.f_cam(camera_tokens.to(frames.dtype))[:, None]  # (T, 1, H)
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

    def read_pose(
        self,
        pos_hidden: torch.Tensor,
        ori_hidden: torch.Tensor,
        patch_hidden: torch.Tensor | None = None,
    ) -> PosePrediction:
        """Hidden states of <Pos> and <Ori> (H,) -> PosePrediction.

        With a pointer, `patch_hidden` (P, H) are the video's patch tokens' states.
        """
        out = self.f_pos(pos_hidden).float()
        probs = self.f_ori(ori_hidden).float().softmax(-1)
        yaw, spread = heading_from_bins(probs)
        xy, anchor = out[:2], None
        if self.reads_patches:
            if patch_hidden is None:
                raise ValueError("the position and heading pointers need the video's patch states")
            pointed = recipe_aids.point_pose(self, pos_hidden[None], ori_hidden[None],
                                             patch_hidden[None], xy[None], yaw[None])  # fmt: skip
            xy, yaw = pointed.xy[0], pointed.yaw[0]
            if pointed.xy_attention is not None:
                anchor = pointed.xy_attention[0].detach()
        return PosePrediction(
            xy, self._sigma(out[2:]), float(yaw.detach()), float(spread.detach()), probs, anchor
        )

    @property
    def reads_patches(self) -> bool:
        """Whether the pose reads the video's patch states (a position or heading pointer)."""
        return self.position_pointer is not None or self.heading_pointer is not None

    # --- training ---------------------------------------------------------------------------------
    def forward_train(self, samples: list[TrainSample]) -> dict[str, torch.Tensor]:
        """Losses of a batch: ce, bev, pos, ori (and the aids': ground, ego, pointer...), "loss".

        Samples of one scene share a row (loc3r.vlm.packing): the same losses as one row each,
        except that the layout loss counts a scene's patches once however many samples it has.
        """
        batch = pack_samples(self, samples, DEFAULT_SITUATION)
        # the training aids (ours) add their parts only when on: see training_aids
        decoder = self.base.language_model.model
        mask = batch.attention_mask(decoder.config._attn_implementation)
        with training_aids.grounding_capture(self, samples, batch) as grounding:
            out = decoder(
                inputs_embeds=batch.embeds, attention_mask=mask, position_ids=batch.position_ids
            )
        states = out.last_hidden_state  # (R, L, H) after the final norm
        parts: dict[str, torch.Tensor] = {}
        situated = [i for i, s in enumerate(samples) if s.position is not None]
        answer_states = states  # with the egocentric read-out, its additions at the answers
        if situated:
            rows = torch.tensor([batch.rows[i] for i in situated], device=self.device)
            cols = torch.tensor([batch.pos_at[i] for i in situated], device=self.device)
            pos_out = self.f_pos(states[rows, cols]).float()
            xy, sigma = pos_out[:, :2], self._sigma(pos_out[:, 2:])
            target = torch.stack([samples[i].position.float() for i in situated]).to(self.device)
            ori_logits = self.f_ori(states[rows, cols + 1]).float()
            yaw = torch.tensor([samples[i].yaw for i in situated], device=self.device)
            own_yaw, _ = heading_from_bins(ori_logits.softmax(-1))
            anchors: dict[int, torch.Tensor] = {}  # each row's position pointer attention
            if self.reads_patches:  # f_ori's heading detached: f_ori keeps L_ori alone
                pose, masses, anchors = recipe_aids.point_in_rows(
                    self, states, samples, batch, situated, rows, cols, xy, own_yaw.detach()
                )
                xy = pose.xy
                if pose.pointed_xy is not None:
                    parts["pointer"] = gaussian_nll_2d(pose.pointed_xy, sigma.detach(), target)
                if pose.pointed_vector is not None:
                    parts["heading_pointer"] = heading_error(pose.pointed_vector, yaw)
                    parts["heading"] = heading_error(pose.yaw_vector, yaw)
                    own_yaw = pose.yaw
                parts |= masses  # (none unless ground_pointers)
            parts["pos"] = gaussian_nll_2d(xy, sigma, target)
            parts["ori"] = orientation_kl(ori_logits, yaw, self.config.weights.ori_sigma)
            if self.egocentric_readout is not None:
                answer_states, parts["readout_ground"] = recipe_aids.read_egocentric(
                    self, states, samples, batch, situated, xy, own_yaw, anchors
                )
        elif self.egocentric_readout is not None:  # reported whenever on (DDP ranks agree)
            parts["readout_ground"] = states.sum() * 0.0
        logits = self.base.language_model.lm_head(answer_states)
        parts["ce"] = answer_cross_entropy(logits, batch.labels)
        parts |= training_aids.grounding_losses(self, grounding, samples, batch, logits)
        parts |= training_aids.egocentric_losses(self, states, samples, batch)

        scenes = [
            (row, samples[i])
            for row, i in enumerate(batch.scene_sample)
            if samples[i].bev_targets is not None
        ]
        if self.layout_head is not None and scenes:
            preds, sigmas, targets, valid = [], [], [], []
            for row, sample in scenes:  # each scene's patches once
                patch_at = batch.patch_at[row]
                where = (patch_at >= 0).nonzero().flatten()
                out_bev = self.layout_head(states[row, where]).float()
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
        patch_positions = (patch_index >= 0).nonzero().flatten() + len(before)
        static = self.static_decoding
        lm = self.base.language_model
        cache, ticket = (
            (DynamicCache(), -1) if static is None else static.take_cache(lm, embeds.shape[1])
        )
        out = forward_at(lm.model, cache, embeds, 0)
        last = out.last_hidden_state[0]
        return ScenePrefix(cache, embeds.shape[1], len(pixel_values), last, ticket, patch_positions)

    def _check_scene(self, prefix: ScenePrefix) -> None:
        """A static cache must still hold this scene (a newer one may have taken it)."""
        if is_static(prefix.cache) and self.static_decoding is not None:
            self.static_decoding.check_owner(prefix.cache, prefix.ticket)

    def _continue(self, prefix: ScenePrefix, ids: list[int], offset: int) -> torch.Tensor:
        """(1, len(ids), H) last hidden states of `ids` forwarded at `offset` after the prefix.

        With compiled static decoding the text runs padded through the compiled decoder
        (`forward_text`), else eagerly.
        """
        return self._forward_text(prefix, self.embed(ids)[None], offset)

    def _forward_text(self, prefix: ScenePrefix, embeds: torch.Tensor, offset: int) -> torch.Tensor:
        """`_continue` of (1, L, H) embeddings."""
        decoder = self.base.language_model.model
        if is_static(prefix.cache) and self.static_decoding is not None:
            return forward_text(decoder, self.static_decoding, prefix.cache, embeds, offset)
        check_room(prefix.cache, offset, embeds.shape[1])
        return forward_at(decoder, prefix.cache, embeds, offset).last_hidden_state

    def _situate(self, prefix: ScenePrefix, situation_ids: list[int]) -> PosePrediction:
        """Forward [situation] <Pos> <Ori> after the prefix (left in the cache); read the pose."""
        states = self._continue(prefix, situation_ids, prefix.length)[0]
        patches = None
        if self.reads_patches:
            if prefix.patch_positions is None or prefix.last_hidden is None:
                raise ValueError("the pose's pointers need a scene prefix from encode_scene")
            patches = prefix.last_hidden[prefix.patch_positions]
        return self.read_pose(states[-2], states[-1], patches)

    @torch.inference_mode()
    def localize(self, prefix: ScenePrefix, situation: str) -> PosePrediction:
        """One forward over [situation] <Pos> <Ori> after the cached scene prefix."""
        self._check_scene(prefix)
        try:
            return self._situate(prefix, self.situation_ids(situation))
        finally:
            rewind(prefix.cache, prefix.length)  # back to the scene prefix

    def _sampling(self) -> SamplingConfig | None:
        config = self.config
        return (
            SamplingConfig(config.temperature, config.top_k, config.top_p)
            if config.do_sample
            else None
        )

    @torch.inference_mode()
    def answer(
        self, prefix: ScenePrefix, question: str, situation: str
    ) -> tuple[str, PosePrediction]:
        """Pose from the situation, then the answer to the question (greedy by default).

        Free decoding ends at the end of the answer (<|im_end|>, <|endoftext|>, the tokenizer's
        eos), after max_new_tokens, or when the answer loops (stop_repeats: one copy is kept).
        With an answer vocabulary the answer is always one of its entries (score_answers).
        """
        text, pose, _ = self.answer_with_probability(prefix, question, situation)
        return text, pose

    @torch.inference_mode()
    def answer_with_probability(
        self, prefix: ScenePrefix, question: str, situation: str
    ) -> tuple[str, PosePrediction, float]:
        """`answer`, and the model's probability of that answer.

        With an answer vocabulary: the answer's share of the vocabulary's probability mass
        (softmax of score_answers). Free text: the probability of the generated token sequence,
        its end token included (the product of each step's softmax at the chosen token).
        """
        self._check_scene(prefix)  # before the try: a stale scene must not rewind another's cache
        try:
            situation_ids = self.situation_ids(situation)
            pose = self._situate(prefix, situation_ids)
            offset = prefix.length + len(situation_ids)
            question_ids = self.question_ids(question)
            if self.answer_vocabulary is not None:
                scores = self._score_answers(prefix, question_ids, offset, pose)
                sampling = self._sampling()
                best = int(scores.argmax()) if sampling is None else sampling.pick(scores)
                probability = float(scores.softmax(-1)[best])
                return self.answer_vocabulary[best], pose, probability
            check_room(prefix.cache, offset, len(question_ids) + self.config.max_new_tokens)
            static = self.static_decoding if is_static(prefix.cache) else None
            prefill = None
            compiled = static is not None and static.compile is not None
            if compiled or self.egocentric_readout is not None:  # the first, multi-token pass

                def prefill(embeds: torch.Tensor, at: int) -> torch.Tensor:
                    last = self._forward_text(prefix, embeds, at)[0, -1]
                    last = recipe_aids.egocentric_state(self, prefix, last, pose)
                    return self.base.language_model.lm_head(last).float()

            tokens, logits = self.base.generate_greedy(
                self.embed(question_ids)[None],
                max_new_tokens=self.config.max_new_tokens,
                stop_ids=self.stop_ids,
                past_key_values=prefix.cache,
                position_offset=offset,
                sampling=self._sampling(),
                stop_repeats=self.config.stop_repeats,
                step=None if static is None else static.step(self.base.language_model),
                prefill=prefill,
            )
            log_p = sum(
                float(step.float().reshape(-1).log_softmax(-1)[token])
                for token, step in zip(tokens, logits, strict=True)
            )
            text = self.tokenizer.decode(
                [t for t in tokens if t not in self.stop_ids], skip_special_tokens=True
            )
            return text.strip(), pose, math.exp(log_p)
        finally:
            rewind(prefix.cache, prefix.length)  # back to the scene prefix

    @torch.inference_mode()
    def score_answers(
        self,
        prefix: ScenePrefix,
        question: str,
        situation: str,
        pose: PosePrediction | None = None,
    ) -> torch.Tensor:
        """(len(answer_vocabulary),) log-likelihoods of the vocabulary's answers to the question.

        log p(answer tokens, <|im_end|> | scene, situation, question): the sequence probability
        of the model generating exactly that entry and stopping. `pose` replaces the pose read
        from the situation where the egocentric read-out takes one (what the answers give from
        another pose, e.g. the true one; diagnostics); None: the situation's own. A `pose`
        without the position pointer's attention takes the situation's (readout_anchor).
        """
        if self.answer_vocabulary is None:
            raise ValueError("the model has no answer vocabulary")
        try:
            situation_ids = self.situation_ids(situation)
            read = self._situate(prefix, situation_ids)
            offset = prefix.length + len(situation_ids)
            question_ids = self.question_ids(question)
            if pose is not None and pose.anchor_attention is None:  # where the model says it is
                pose = replace(pose, anchor_attention=read.anchor_attention)
            return self._score_answers(prefix, question_ids, offset, read if pose is None else pose)
        finally:
            rewind(prefix.cache, prefix.length)  # back to the scene prefix

    def _score_answers(
        self,
        prefix: ScenePrefix,
        question_ids: list[int],
        offset: int,
        pose: PosePrediction | None = None,
        chunk: int = 64,
    ) -> torch.Tensor:
        """Forward the question after the cache, then every answer as one batch (`chunk` rows).

        `pose` is the agent's, for the egocentric read-out (needed with it).

        The batch shares the cache, repeated along the batch dimension and cut back to the one
        row afterwards (the caller crops the tokens). Answers are right-padded: under causal
        attention no answer token sees a pad, and the pads' outputs are not read.
        """
        decoder, head = self.base.language_model.model, self.base.language_model.lm_head
        if self.egocentric_readout is not None and pose is None:
            raise ValueError("the egocentric read-out needs the agent's pose")
        last = self._continue(prefix, question_ids, offset)[0, -1]
        last = recipe_aids.egocentric_state(self, prefix, last, pose)  # unchanged without one
        first = head(last).float().log_softmax(-1)  # the answer's first token
        offset += len(question_ids)
        scores = []
        for start in range(0, len(self._vocabulary_ids), chunk):
            answers = self._vocabulary_ids[start : start + chunk]
            width = max(len(a) for a in answers) - 1  # every answer ends with <|im_end|>
            rows = torch.tensor(
                [a[:-1] + [a[-1]] * (width + 1 - len(a)) for a in answers], device=self.device
            )
            targets = torch.tensor(
                [a[1:] + [a[-1]] * (width + 1 - len(a)) for a in answers], device=self.device
            )
            valid = (
                torch.arange(width, device=self.device)[None]
                < torch.tensor([len(a) - 1 for a in answers], device=self.device)[:, None]
            )
            positions = torch.arange(offset, offset + width, device=self.device)
            length = prefix.cache.get_seq_length()
            prefix.cache.batch_repeat_interleave(len(answers))
            try:
                out = decoder(
                    inputs_embeds=self.base.embed_tokens(rows),
                    position_ids=positions[None].expand(len(answers), -1),
                    use_cache=True,
                    **cache_kwargs(decoder, prefix.cache),
                )
            finally:
                prefix.cache.batch_select_indices(torch.tensor([0], device=self.device))
                if (extra := prefix.cache.get_seq_length() - length) > 0:
                    prefix.cache.crop(-extra)  # a negative value removes that many
            logp = head(out.last_hidden_state).float().log_softmax(-1)
            rest = logp.gather(-1, targets[..., None])[..., 0].masked_fill(~valid, 0.0).sum(-1)
            scores.append(first[rows[:, 0]] + rest)
        return torch.cat(scores)

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
        try:
            loc3r_config = Loc3rVLMConfig.from_dict(config["loc3r"])
        except ValueError as exc:
            raise LlavaCheckpointError(f"{directory}: {exc}") from exc
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
            model = cls(base, tokenizer, loc3r_config)
        model = model.to_empty(device="cpu").to(dtype)
        load_state_strict(model, {k: v.to(dtype) for k, v in tensors.items()})
        materialise_buffers(model.base)
        return model.to(device=device).eval()
