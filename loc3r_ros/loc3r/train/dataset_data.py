"""Training data from a dataset in our on-disk format (ScanNet + SQA3D after conversion, ...).

Per scene: `frames` frames sampled uniformly over the stream (as the paper samples 32 of a
video), CUT3R run once over exactly those frames (it is frozen: camera tokens are cached), BEV
layout targets from each frame's depth and pose in the scene's BEV frame (no depth: no layout
targets for that frame), and the scene's annotations as QA records. The result has the same
shape as the synthetic episodes, so the trainer and `evaluate` do not know the difference.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from loc3r.datasets.format import DatasetError, read_annotations, read_scene
from loc3r.engine.frame_buffer import sample_uniform
from loc3r.scenes import bev_targets
from loc3r.scenes.situations import QARecord
from loc3r.train.synthetic_data import EpisodeData


def build_dataset_episodes(
    root: str | Path,
    split: str,
    frames: int,
    perception,
    grid: int,
    progress: bool = True,
    max_scenes: int = 0,
) -> list[EpisodeData]:
    """One EpisodeData per scene of `split` (scenes in the order they first appear)."""
    by_scene: dict[str, list] = defaultdict(list)
    for note in read_annotations(root, split):
        by_scene[note.scene_id].append(note)
    scene_ids = list(by_scene)[: max_scenes or None]
    episodes = []
    for number, scene_id in enumerate(
        tqdm(scene_ids, desc=f"{split} scenes", disable=not progress)
    ):
        scene = read_scene(root, scene_id)
        picked = [scene[i] for i in sample_uniform(frames, len(scene))]
        images = np.stack([f.rgb for f in picked])
        if perception is not None:
            tokens = torch.stack([p.camera_token for p in perception.run_fresh(list(images))])
        else:
            tokens = torch.zeros(len(images), 1)
        bev = scene.bev_frame()
        targets = np.zeros((len(picked), grid, grid, 2))
        masks = np.zeros((len(picked), grid, grid), dtype=bool)
        for t, frame in enumerate(picked):
            if frame.depth_mm is not None:
                targets[t], masks[t] = bev_targets(frame, bev, grid, mode="mean")
        records = [
            QARecord(note.question_type, note.situation, note.question, list(note.answers),
                     (float(note.position[0]), float(note.position[1])), float(note.yaw),
                     {"question_id": note.question_id})
            for note in by_scene[scene_id]
        ]  # fmt: skip
        episodes.append(
            EpisodeData(
                seed=number, frames=images, camera_tokens=tokens,
                bev_targets=torch.from_numpy(targets), bev_mask=torch.from_numpy(masks),
                records=records,
            )
        )  # fmt: skip
    if not episodes:
        raise DatasetError(f"{root}: split {split!r} has no annotated scene")
    return episodes
