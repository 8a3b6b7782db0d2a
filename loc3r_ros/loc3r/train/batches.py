"""Which training samples each optimizer step takes: seeded, so a resumed run takes the same.

Two orders: `batch_indices`, a permutation of all samples per epoch (questions from anywhere),
and `SceneBatches`, rooms in chunks of several questions each (TrainConfig.questions_per_scene),
which the VLM packs into one row per room (loc3r.vlm.packing).
"""

from __future__ import annotations

import math

import numpy as np

from loc3r.vlm import TrainSample
from loc3r.vlm.packing import scene_groups


def batch_indices(step: int, num_samples: int, batch: int, seed: int) -> list[int]:
    """The global batch of a step: a seeded permutation per epoch (resume gives the same data)."""
    per_epoch = num_samples // batch
    epoch, offset = divmod(step, per_epoch)
    order = np.random.default_rng(seed + epoch).permutation(num_samples)
    return order[offset * batch : (offset + 1) * batch].tolist()


def scene_chunks(
    scenes: list[list[int]], situations: list[str], per_scene: int, rng: np.random.Generator
) -> list[list[int]]:
    """One epoch of each room's questions in chunks of `per_scene`, room by room.

    A room's questions are shuffled, then taken a situation at a time (one question of each
    situation before a second of any), so a chunk spans situations. A room's last chunk is
    filled up with its other questions (repeating one only when the room has fewer than
    per_scene), so every chunk has per_scene and every question is in one.
    """
    chunks = []
    for scene in scenes:
        order = [scene[i] for i in rng.permutation(len(scene))]
        seen: dict[str, int] = {}
        rank = []
        for i in order:
            rank.append(seen.get(situations[i], 0))
            seen[situations[i]] = rank[-1] + 1
        order = [order[k] for k in np.argsort(rank, kind="stable")]
        for start in range(0, len(order), per_scene):
            chunk = order[start : start + per_scene]
            missing = per_scene - len(chunk)
            if missing:
                others = [i for i in scene if i not in chunk] or chunk
                chunk += [int(i) for i in rng.choice(others, missing, missing > len(others))]
            chunks.append(chunk)
    return chunks


class SceneBatches:
    """Global batches of batch / per_scene rooms, per_scene questions of each (scene_chunks).

    An epoch is every room's chunks in a seeded order (the chunks that do not make a whole
    batch wait for a later epoch's order); `batches(step)` is a pure function of the step and
    the seed, so a resumed run takes the same data. One epoch's chunks are kept.
    """

    def __init__(self, samples: list[TrainSample], batch: int, per_scene: int, seed: int) -> None:
        if per_scene < 1 or batch % per_scene:
            raise ValueError(f"questions_per_scene={per_scene} must be >= 1 and divide the batch")
        self.scenes = scene_groups(samples)
        self.situations = [s.situation for s in samples]
        self.per_scene, self.seed = per_scene, seed
        self.rooms_per_batch = batch // per_scene
        chunks = sum(math.ceil(len(scene) / per_scene) for scene in self.scenes)
        if chunks < self.rooms_per_batch:
            raise ValueError(
                f"{len(self.scenes)} rooms give {chunks} chunks of {per_scene} questions, fewer "
                f"than the {self.rooms_per_batch} a batch of {batch} takes"
            )
        self.steps_per_epoch = chunks // self.rooms_per_batch
        self._kept: tuple[int, list[list[int]]] = (-1, [])  # (epoch, its chunks in order)

    def epoch(self, epoch: int) -> list[list[int]]:
        """The chunks of an epoch in the order its steps take them."""
        if self._kept[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            chunks = scene_chunks(self.scenes, self.situations, self.per_scene, rng)
            self._kept = (epoch, [chunks[k] for k in rng.permutation(len(chunks))])
        return self._kept[1]

    def __call__(self, step: int) -> list[int]:
        """The sample indices of a step's global batch, room by room."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        rooms = self.rooms_per_batch
        return [
            i for chunk in self.epoch(epoch)[offset * rooms : (offset + 1) * rooms] for i in chunk
        ]
