"""Training data from procedural episodes: frames, cached CUT3R camera tokens, BEV targets, QA.

CUT3R is frozen, so each episode's camera tokens are computed once (CUT3R streamed over exactly
the frames the VLM sees, as the paper trains) and cached with the episode. Also trains the small
byte-level BPE tokenizer of the embedded model on the synthetic corpus (tokenizers library).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from loc3r.engine.perception import geometry_token, pose_token
from loc3r.scenes import EpisodeConfig, bev_targets, make_episode, object_cover
from loc3r.scenes.render import Frame, camera_points
from loc3r.scenes.situations import QARecord
from loc3r.train.parallel import parallel_map
from loc3r.vlm import TrainSample, frames_to_pixel_values
from loc3r.vlm.losses import egocentric_offset

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GROUNDING_VIEWS = ("all", "first")
CAMERA_PRIORS = ("cut3r", "oracle", "geometric")
MIN_OBJECT_COVER = 0.1  # a pooled patch shows an object when it covers this much of the cell


@dataclass
class EpisodeData:
    """One episode ready for training (CPU tensors)."""

    seed: int
    frames: np.ndarray  # (T, S, S, 3) uint8
    camera_tokens: torch.Tensor  # (T, Cd)
    bev_targets: torch.Tensor  # (T, g, g, 2)
    bev_mask: torch.Tensor  # (T, g, g) bool
    records: list[QARecord]
    object_cover: torch.Tensor | None = None  # (T, g, g, objects) cell fractions; None: unknown
    # the camera prior's pose error against the renderer's truth, frames 1..T-1, relative to
    # the first frame: (T-1, 2) metres and degrees; None for the oracle prior
    pose_errors: np.ndarray | None = None

    def cells_of(self, record: QARecord, key: str, views: str = "all") -> torch.Tensor | None:
        """(T, g, g) bool: the pooled patches showing the record's `key` object (anchor_id ...).

        views="first" keeps only the first frame that shows it (a read-out of loc3r.eval.bounds).
        """
        if views not in GROUNDING_VIEWS:
            raise ValueError(f"views={views!r}: expected one of {GROUNDING_VIEWS}")
        object_id = record.fields.get(key)
        if self.object_cover is None or object_id is None:
            return None
        cells = self.object_cover[..., int(object_id)] >= MIN_OBJECT_COVER
        if views == "first":  # frames up to the first showing it (those before show nothing)
            cells = cells & (cells.flatten(1).any(1).cumsum(0) <= 1)[:, None, None]
        return cells

    def samples(self, image_size: int) -> list[TrainSample]:
        """One TrainSample per question (pixel values shared; every view of each object)."""
        pixels = frames_to_pixel_values(list(self.frames), size=image_size)

        def offset(record: QARecord) -> torch.Tensor | None:
            point = record.fields.get("object_position")
            if point is None:
                return None
            return torch.tensor(egocentric_offset(record.position, record.yaw, point))

        return [
            TrainSample(
                pixel_values=pixels,
                camera_tokens=self.camera_tokens,
                situation=r.situation,
                question=r.question,
                answer=r.answers[0],
                position=torch.tensor(r.position, dtype=torch.float32),
                yaw=float(r.yaw),
                bev_targets=self.bev_targets,
                bev_mask=self.bev_mask,
                anchor_cells=self.cells_of(r, "anchor_id"),
                target_cells=self.cells_of(r, "target_id"),
                question_cells=self.cells_of(r, "object_id"),
                object_offset=offset(r),
            )
            for r in self.records
        ]


def oracle_camera_tokens(poses_c2w: list[np.ndarray], width: int) -> torch.Tensor:
    """(T, width) camera tokens that state each true camera-to-first-camera pose exactly.

    `pose_token` of inv(c2w_0) @ c2w_t (the pose CUT3R's head predicts from its camera token).
    A diagnostic upper bound for synthetic rooms, where the poses are known: the VLM with a
    perfect camera prior.
    """
    first_inverse = np.linalg.inv(poses_c2w[0])
    return torch.stack([pose_token(first_inverse @ pose, width) for pose in poses_c2w])


def oracle_geometry_tokens(frames: list[Frame], grid: int, width: int) -> torch.Tensor:
    """(T, width) geometry tokens that state each true pose and the true point of every cell.

    The pose as `oracle_camera_tokens`, then the renderer's depth unprojected into the first
    camera's frame and pooled over the whole frame (`geometry_token`): what the geometric pose
    source and CUT3R's depth would state if both were exact (a diagnostic upper bound).
    """
    first_inverse = np.linalg.inv(frames[0].pose_c2w)
    tokens = []
    for frame in frames:
        relative = first_inverse @ frame.pose_c2w
        points = camera_points(frame.depth, frame.K) @ relative[:3, :3].T + relative[:3, 3]
        surface = np.isfinite(frame.depth) & (frame.depth > 0)
        points[~surface] = np.nan  # no surface: left out of the cell's mean
        tokens.append(geometry_token(relative, points, grid, width))
    return torch.stack(tokens)


def build_episodes(
    seeds: list[int],
    config: EpisodeConfig,
    perception,
    grid: int,
    progress: bool = True,
    camera_prior: str = "cut3r",
    image_size: int = 0,
    workers: int = 1,
    deadline: float | None = None,
) -> list[EpisodeData]:
    """Render episodes and cache their camera tokens and layout targets.

    camera_prior="cut3r" streams `perception`'s CUT3R over the frames (over every step of the
    walk's video when the episodes have one: `EpisodeConfig.stream_video`) and takes its tokens;
    "geometric" streams it too and takes the tokens that state its poses (`perception` must have
    camera_tokens="pose", as the bundle's engine will); "oracle" states the true poses
    (`oracle_camera_tokens`, as wide as CUT3R's), and for a perception with geometry tokens the
    true points of every cell too (`oracle_geometry_tokens`). Frames rendered larger than
    `image_size` (for the geometric pose source's feature matching) are stored shrunk to it.
    `workers` > 1 builds them on that many forked processes (the same episodes, in order).
    `deadline` (a `time.monotonic()` value) keeps the episodes finished by then: the first of
    `seeds`.
    """
    if camera_prior not in CAMERA_PRIORS:
        raise ValueError(f"camera_prior={camera_prior!r}: expected one of {CAMERA_PRIORS}")
    tokens = getattr(getattr(perception, "config", None), "camera_tokens", None)
    if camera_prior == "geometric" and tokens not in ("pose", "geometry"):
        raise ValueError(
            "camera_prior='geometric' needs a perception with camera_tokens='pose' or 'geometry'"
        )
    shared = (config, perception, grid, camera_prior, image_size)
    return parallel_map(build_episode, seeds, shared, workers, "episodes", progress, deadline)


def build_episode(seed: int, shared: tuple) -> EpisodeData:
    """One episode of `build_episodes` (shared: config, perception, grid, prior, image size)."""
    config, perception, grid, camera_prior, image_size = shared
    if camera_prior == "oracle" or perception is None:  # nothing streams the video
        config = replace(config, stream_video=False)
    episode = make_episode(seed, config)
    pose_errors = None
    frames = np.stack([f.rgb for f in episode.frames])
    if camera_prior == "oracle":
        width = perception.token_width
        if getattr(getattr(perception, "config", None), "camera_tokens", None) == "geometry":
            tokens = oracle_geometry_tokens(episode.frames, grid, width)
        else:
            tokens = oracle_camera_tokens([f.pose_c2w for f in episode.frames], width)
    elif perception is not None:  # streamed over the whole video when the episode has one
        images, steps = episode.stream()
        perceived = perception.run_fresh(images)
        perceived = [perceived[i] for i in steps]
        tokens = torch.stack([p.camera_token for p in perceived])
        pose_errors = relative_pose_errors(
            [p.pose_c2w for p in perceived], [f.pose_c2w for f in episode.frames]
        )
    else:
        tokens = torch.zeros(len(frames), 1)
    if image_size and frames.shape[1] > image_size:
        frames = np.stack([cv2.resize(f, (image_size, image_size), interpolation=cv2.INTER_AREA)
                           for f in frames])  # fmt: skip
    objects = len(episode.room.objects)
    cover = np.stack([object_cover(f.object_id, objects, grid) for f in episode.frames])
    targets, masks = zip(
        *(bev_targets(f, episode.frame, grid, mode="mean") for f in episode.frames), strict=True
    )
    return EpisodeData(
        seed=seed,
        frames=frames,
        camera_tokens=tokens,
        bev_targets=torch.from_numpy(np.stack(targets)),
        bev_mask=torch.from_numpy(np.stack(masks)),
        records=episode.records,
        object_cover=torch.from_numpy(cover),
        pose_errors=pose_errors,
    )


def pose_error_summary(errors: list[np.ndarray]) -> dict[str, float | int]:
    """Frames, median and 90th percentile of stacked (N, 2) `relative_pose_errors`."""
    stacked = np.concatenate(errors)
    return {
        "frames": len(stacked),
        "median_position_error_m": round(float(np.median(stacked[:, 0])), 4),
        "median_rotation_error_deg": round(float(np.median(stacked[:, 1])), 3),
        "p90_position_error_m": round(float(np.quantile(stacked[:, 0], 0.9)), 4),
        "p90_rotation_error_deg": round(float(np.quantile(stacked[:, 1], 0.9)), 3),
    }


def relative_pose_errors(estimated: list[np.ndarray], true: list[np.ndarray]) -> np.ndarray:
    """(T-1, 2): position (m) and rotation (deg) error of frames 1.. relative to frame 0.

    Both are 4x4 camera-to-world poses; each trajectory is taken relative to its first frame
    (the estimate's world is its first camera), so the errors are those of the relative poses.
    """
    from scipy.spatial.transform import Rotation

    start_est, start_true = np.linalg.inv(estimated[0]), np.linalg.inv(true[0])
    rows = []
    for est, ref in zip(estimated[1:], true[1:], strict=True):
        a, b = start_est @ est, start_true @ ref
        angle = Rotation.from_matrix(a[:3, :3].T @ b[:3, :3]).magnitude()
        rows.append((np.linalg.norm(a[:3, 3] - b[:3, 3]), np.degrees(angle)))
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def corpus(episodes_seeds: list[int], config: EpisodeConfig) -> list[str]:
    """Every situation, question and answer text of some episodes (for the tokenizer)."""
    lines = []
    text_only = replace(config, frames=2, stream_video=False)  # no video is read here
    for seed in episodes_seeds:
        for record in make_episode(seed, text_only).records:
            lines += [record.situation, record.question, *record.answers]
    return lines


def train_tokenizer(lines: list[str], out_dir: Path | None, vocab_size: int = 600):
    """A byte-level BPE tokenizer with Qwen2's special tokens.

    Saved for AutoTokenizer when `out_dir` is given. Training is deterministic, so every DDP rank
    gets the same tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    chat = ["system", "user", "assistant", "You are a helpful assistant."]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(lines + chat * 50, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(str(out_dir))
    return fast
