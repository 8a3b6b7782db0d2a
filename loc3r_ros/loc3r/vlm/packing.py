"""Scene packing: the questions of one scene share one pass over its video in training.

A training sample is [system, video, situation, <Pos>, <Ori>, question, answer]; the video is
most of its tokens (16 frames of 17 tokens against about 100 of text in the embedded recipe).
Samples of the same scene (the same `pixel_values` tensor, as EpisodeData.samples gives them)
go into one row: the shared prefix [system, video, newline] once, then each sample's own text,
every text block seeing the prefix and itself only, at the positions it would have alone. Each
sample's tokens therefore get exactly the hidden states they get unpacked (what
test_vlm_packing checks), at a fraction of the tokens; the layout loss counts each scene's
patches once. The same prefix, then [situation] <Pos> <Ori> [question] is what inference runs
on its KV cache (Loc3rVLM.encode_scene, answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from loc3r.vlm.loc3r_vlm import Loc3rVLM, TrainSample


# one row before padding: embeddings (n, H), then per token: label, position, block (0: prefix,
# k: the k-th sample's text), pooled-patch index
Row = tuple[torch.Tensor, list[int], list[int], list[int], list[int]]


@dataclass
class PackedBatch:
    """A training batch as LM rows: one row per scene, the samples' text blocks after its video.

    R rows of length L; the per-sample lists are in the order of the samples given.
    """

    embeds: torch.Tensor  # (R, L, H)
    labels: torch.Tensor  # (R, L) answer token ids, -100 elsewhere
    position_ids: torch.Tensor  # (R, L) RoPE positions: each text block starts after the prefix
    allowed: torch.Tensor  # (R, 1, L, L) bool: which tokens each token attends to
    patch_at: torch.Tensor  # (R, L) pooled-patch index of the video's patch tokens, -1 elsewhere
    rows: list[int]  # per sample: its row
    pos_at: list[int]  # per sample: where its <Pos> is in the row (<Ori> follows)
    answer_start: list[int]  # per sample: where its first answer token is
    scene_sample: list[int]  # per row: the first sample of its scene (for the layout targets)

    def attention_mask(self, attn_implementation: str) -> torch.Tensor:
        """`allowed` as the LM takes a prepared 4D mask (as transformers' masking_utils makes them).

        Bool for SDPA; additive (0 or the dtype's minimum) for eager attention.
        """
        if attn_implementation not in ("sdpa", "eager"):
            raise ValueError(
                f"packed rows need SDPA or eager attention (a 4D mask), not {attn_implementation!r}"
            )
        if attn_implementation == "sdpa":
            return self.allowed
        lowest = torch.finfo(self.embeds.dtype).min
        zero = torch.zeros((), dtype=self.embeds.dtype, device=self.embeds.device)
        return torch.where(self.allowed, zero, lowest)

    def queries(self, sample: int) -> list[int]:
        """Positions of a sample's <Pos>, <Ori> and the token that predicts its first answer."""
        return [self.pos_at[sample], self.pos_at[sample] + 1, self.answer_start[sample] - 1]


def scene_groups(samples: list[TrainSample]) -> list[list[int]]:
    """Sample indices grouped by scene (the same pixel_values and camera_tokens objects)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, sample in enumerate(samples):
        groups.setdefault((id(sample.pixel_values), id(sample.camera_tokens)), []).append(i)
    return list(groups.values())


def pack_samples(
    model: Loc3rVLM, samples: list[TrainSample], default_situation: str
) -> PackedBatch:
    """The rows of `samples` (see the module docstring), scenes in order of first appearance.

    Samples without a situation take `default_situation`.
    """
    before, after = model.prefix_ids()
    rows: list[Row] = []
    sample_row: dict[int, int] = {}
    pos_at: dict[int, int] = {}
    answer_start: dict[int, int] = {}
    scene_sample: list[int] = []
    for row, group in enumerate(scene_groups(samples)):
        first = samples[group[0]]
        video, patch_index = model.video_embeddings(first.pixel_values, first.camera_tokens)
        prefix = len(before) + len(video) + len(after)
        # the row's ids after the video, labels, positions and blocks as Python lists: one
        # embedding call and one host-to-device copy per row (not per sample) in _pad
        ids, labels = list(after), [-100] * prefix
        positions, blocks = list(range(prefix)), [0] * prefix
        for block, i in enumerate(group, start=1):
            sample = samples[i]
            situation = model.situation_ids(sample.situation or default_situation)
            question, answer = model.question_ids(sample.question), model.answer_ids(sample.answer)
            text = situation + question + answer
            sample_row[i] = row
            pos_at[i] = len(labels) + len(situation) - 2
            answer_start[i] = len(labels) + len(text) - len(answer)
            ids += text
            labels += [-100] * (len(text) - len(answer)) + answer
            positions += range(prefix, prefix + len(text))
            blocks += [block] * len(text)
        embeds = torch.cat([model.embed(before), video, model.embed(ids)])
        patch_at = [-1] * len(labels)
        patch_at[len(before) : len(before) + len(video)] = patch_index.tolist()
        rows.append((embeds, labels, positions, blocks, patch_at))
        scene_sample.append(group[0])
    return _pad(rows, sample_row, pos_at, answer_start, scene_sample, len(samples))


def _pad(
    rows: list[Row],
    sample_row: dict[int, int],
    pos_at: dict[int, int],
    answer_start: dict[int, int],
    scene_sample: list[int],
    count: int,
) -> PackedBatch:
    """Stack the rows, padded to the longest; padding attends to itself only (no empty rows)."""
    length = max(len(r[0]) for r in rows)
    first = rows[0][0]
    embeds = first.new_zeros(len(rows), length, first.shape[-1])

    def padded(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (length - len(values))

    # labels, positions, blocks and patch indices (padding: -100, 0, -1, -1), copied once
    table = torch.tensor(
        [
            [padded(lab, -100), padded(pos, 0), padded(blk, -1), padded(pat, -1)]
            for _, lab, pos, blk, pat in rows
        ],
        dtype=torch.long,
    ).to(first.device)  # (R, 4, L)
    labels, position_ids, block, patch_at = table.unbind(1)
    for r, (e, *_) in enumerate(rows):
        embeds[r, : len(e)] = e
    index = torch.arange(length, device=first.device)
    causal = index[None, :, None] >= index[None, None, :]  # (1, query, key)
    same_or_prefix = (block[:, None, :] == 0) | (block[:, None, :] == block[:, :, None])
    real = (block >= 0)[:, None, :] & (block >= 0)[:, :, None]
    allowed = causal & same_or_prefix & real
    allowed |= torch.eye(length, dtype=torch.bool, device=first.device)[None]
    return PackedBatch(
        embeds, labels, position_ids, allowed[:, None], patch_at,
        [sample_row[i] for i in range(count)], [pos_at[i] for i in range(count)],
        [answer_start[i] for i in range(count)], scene_sample,
    )  # fmt: skip
