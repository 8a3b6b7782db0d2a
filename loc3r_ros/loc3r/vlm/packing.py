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


# one row before padding: embeddings, labels, positions, block (0: prefix, k: k-th sample's
# text), pooled-patch index
Row = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


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
    device = model.device
    before, after = model.prefix_ids()
    rows: list[Row] = []
    sample_row: dict[int, int] = {}
    pos_at: dict[int, int] = {}
    answer_start: dict[int, int] = {}
    scene_sample: list[int] = []
    for row, group in enumerate(scene_groups(samples)):
        first = samples[group[0]]
        video, patch_index = model.video_embeddings(first.pixel_values, first.camera_tokens)
        prefix = torch.cat([model.embed(before), video, model.embed(after)])
        pieces, labels, positions, blocks = [prefix], [], [], []
        labels.append(torch.full((len(prefix),), -100, dtype=torch.long, device=device))
        positions.append(torch.arange(len(prefix), device=device))
        blocks.append(torch.zeros(len(prefix), dtype=torch.long, device=device))
        offset = len(prefix)
        for block, i in enumerate(group, start=1):
            sample = samples[i]
            situation = model.situation_ids(sample.situation or default_situation)
            question, answer = model.question_ids(sample.question), model.answer_ids(sample.answer)
            text = situation + question + answer
            block_labels = torch.full((len(text),), -100, dtype=torch.long, device=device)
            block_labels[len(text) - len(answer) :] = torch.tensor(answer, device=device)
            pieces.append(model.embed(text))
            labels.append(block_labels)
            positions.append(torch.arange(len(prefix), len(prefix) + len(text), device=device))
            blocks.append(torch.full((len(text),), block, dtype=torch.long, device=device))
            sample_row[i] = row
            pos_at[i] = offset + len(situation) - 2
            answer_start[i] = offset + len(text) - len(answer)
            offset += len(text)
        patch_at = torch.full((offset,), -1, dtype=torch.long, device=device)
        patch_at[len(before) : len(before) + len(video)] = patch_index
        rows.append((torch.cat(pieces), torch.cat(labels), torch.cat(positions),
                     torch.cat(blocks), patch_at))  # fmt: skip
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
    labels = torch.full((len(rows), length), -100, dtype=torch.long, device=first.device)
    position_ids = torch.zeros(len(rows), length, dtype=torch.long, device=first.device)
    patch_at = torch.full((len(rows), length), -1, dtype=torch.long, device=first.device)
    block = torch.full((len(rows), length), -1, dtype=torch.long, device=first.device)
    for r, (e, lab, pos, blk, patches) in enumerate(rows):
        n = len(e)
        embeds[r, :n], labels[r, :n], position_ids[r, :n] = e, lab, pos
        block[r, :n], patch_at[r, :n] = blk, patches
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
