"""Train a tiny CUT3R on synthetic rooms so that its camera tokens carry pose.

    python -m loc3r.train.train_cut3r [--key=value ...]     # writes <out>/cut3r (our format)

The objective follows the CUT3R paper for metric data: a confidence-aware regression of the
pointmaps in the frame's own camera and in the first camera's frame,
``c * ||x^ - x|| / s - alpha * log c`` over valid pixels (s = the sequence's mean GT point
distance), plus the pose loss ``||q^ - q|| + ||t^ - t|| / s`` of every frame's camera-to-first-
camera pose (unit quaternion, real part first and non-negative, as the pose head emits it).
Gradients flow through the recurrent state across each sequence's frames.

The frames go through exactly the inference pre-processing (`preprocess_frame`, as `Perception`
does); targets are ray-cast at the pre-processed image's pixels with the matching intrinsics.
After training, `evaluate` reports pose and pointmap errors and a linear probe: how much of the
camera pose (R^2) a ridge regression reads from the camera tokens, for the trained model and for
its random initialisation.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from loc3r.cut3r import Cut3r, Cut3rConfig
from loc3r.cut3r.checkpoint import load_pretrained, save_pretrained
from loc3r.cut3r.heads import pose_encoding_to_c2w
from loc3r.cut3r.preprocess import preprocess_frame
from loc3r.scenes import EpisodeConfig, make_episode
from loc3r.scenes.render import camera_points, render
from loc3r.train.config import Pacer, config_from_args, lr_at, resolve_training_device
from loc3r.train.parallel import parallel_map


@dataclass
class Cut3rTrainConfig:
    """Every knob of a CUT3R training run (CLI keys)."""

    out: str = "runs/cut3r_tiny"
    seed: int = 0
    steps: int = 1500
    batch_size: int = 4  # sequences per step
    frames: int = 8  # frames per sequence (the VLM's frames per scene)
    look: str = "flat"  # rooms: "flat", "textured" or "furnished" (loc3r.scenes.episode.LOOKS)
    walk: str = "sweep"  # walks: "sweep", "scan" or "room_scan" (loc3r.scenes.episode)
    render_size: int = 112  # the VLM's frame size; CUT3R sees it pre-processed
    cut3r_size: int = 64  # long edge after pre-processing (Perception's image_size)
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    conf_alpha: float = 0.2
    pose_weight: float = 1.0
    train_episodes: int = 300
    # training rooms are the seeds train_seed_offset .. + train_episodes (a tuning run on top of
    # `init` takes rooms its first run did not see)
    train_seed_offset: int = 0
    eval_episodes: int = 20
    eval_seed_offset: int = 1_000_000
    log_every: int = 10
    # model sizes (the rest as Cut3rConfig.tiny)
    patch_size: int = 8  # 8 or 16 (pre-processing crops to multiples of 16)
    enc_embed_dim: int = 64
    enc_depth: int = 2
    dec_embed_dim: int = 24  # also the camera token's width, unless a geometry token is wider
    dec_depth: int = 3
    dec_num_heads: int = 2
    state_size: int = 16
    init: str = ""  # a saved CUT3R directory to start from (its sizes must equal the run's)
    window: int = 0  # > 0: train on this many consecutive frames of each walk (re-based on
    # the window's first camera), a shorter-baseline curriculum; 0: whole walks. Held-out
    # evaluation always runs on whole walks.
    reverse_prob: float = 0.0  # chance to play a training walk backwards (it then turns the
    # other way: the synthetic walks all turn left, which a model can learn as a prior instead
    # of matching frames)
    threads: int = 1  # CPU threads of the training steps (the command sets them)
    device: str = "auto"  # "auto" (CUDA when there is one), "cpu" or "cuda"; fp32 either way
    workers: int = 1  # processes that render the rooms (a GPU machine's cores)
    # > 0: the training rooms render for at most this long (the first of the seeds that finish
    # in time, at least one): as many rooms as the cores give, for a GPU build
    render_within_s: float = 0.0
    # > 0: training stops after this long; after PACE_STEPS steps the number of steps (and so
    # the LR schedule) is fitted to it
    time_budget_s: float = 0.0

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> Cut3rTrainConfig:
        """Defaults, then --config YAML, then --key=value overrides (type-checked)."""
        return config_from_args(cls, argv)


@dataclass
class Sequence:
    """One episode as CUT3R training data (T frames)."""

    images: torch.Tensor  # (T, 3, H, W) in [-1, 1], pre-processed like inference
    pts_self: torch.Tensor  # (T, H, W, 3) metres, own camera (OpenCV axes)
    pts_world: torch.Tensor  # (T, H, W, 3) metres, first camera's frame
    valid: torch.Tensor  # (T, H, W) bool
    pose: torch.Tensor  # (T, 7) [t, q_wxyz], camera-to-first-camera


def pose_encoding(c2w: np.ndarray) -> np.ndarray:
    """4x4 -> [t, q_wxyz] with w >= 0 (the pose head's convention)."""
    x, y, z, w = Rotation.from_matrix(c2w[:3, :3]).as_quat()
    quat = np.array([w, x, y, z])
    if quat[0] < 0:
        quat = -quat
    return np.concatenate([c2w[:3, 3], quat])


def make_sequence(seed: int, config: Cut3rTrainConfig) -> Sequence:
    """Render one episode and its pointmap/pose targets at CUT3R's input pixels."""
    episode = make_episode(
        seed,
        EpisodeConfig(
            frames=config.frames, image_size=config.render_size, look=config.look, walk=config.walk
        ),
    )
    first_inv = np.linalg.inv(episode.frames[0].pose_c2w)
    images, pts_self, pts_world, valid, poses = [], [], [], [], []
    for frame in episode.frames:
        pre = preprocess_frame(frame.rgb, size=config.cut3r_size)
        (height, width), (x0, y0) = pre.true_shape, pre.crop_xy
        scale = pre.resized_hw[1] / pre.original_hw[1]
        K = frame.K.copy()  # noqa: N806
        K[:2] *= scale
        K[0, 2] -= x0
        K[1, 2] -= y0
        target = render(episode.room, frame.pose_c2w, K, (height, width))
        local = camera_points(target.depth, K)
        rel = first_inv @ frame.pose_c2w
        images.append(pre.image[0])
        pts_self.append(local)
        pts_world.append(local @ rel[:3, :3].T + rel[:3, 3])
        valid.append(np.isfinite(target.depth) & (target.depth > 0))
        poses.append(pose_encoding(rel))
    as_tensor = lambda a: torch.from_numpy(np.stack(a)).float()  # noqa: E731
    return Sequence(
        torch.stack(images), as_tensor(pts_self), as_tensor(pts_world),
        torch.from_numpy(np.stack(valid)), as_tensor(poses),
    )  # fmt: skip


def make_sequences(
    seeds: range, config: Cut3rTrainConfig, within_s: float = 0.0, progress: bool = True
) -> list[Sequence]:
    """The rooms' sequences in seed order, rendered on `config.workers` processes.

    With `within_s` > 0: the first of them that finish within that many seconds (at least one).
    """
    deadline = time.monotonic() + within_s if within_s > 0 else None
    return parallel_map(
        make_sequence, list(seeds), config, config.workers, "sequences", progress, deadline
    )


def window(sequence: Sequence, start: int, length: int, backwards: bool = False) -> Sequence:
    """Frames [start, start + length) as a sequence of their own (re-based on its first camera).

    Poses and world points become those a stream starting at that frame must predict;
    `backwards` plays the window in reverse (its first camera is then frame start + length - 1).
    """
    frames = torch.arange(start, start + length)
    if backwards:
        frames = frames.flip(0)
    c2w = pose_encoding_to_c2w(sequence.pose[frames].double())
    rebased = torch.linalg.inv(c2w[0]) @ c2w
    pts_self = sequence.pts_self[frames]
    pts_world = pts_self.double() @ rebased[:, None, :3, :3].transpose(-1, -2)
    pts_world = pts_world + rebased[:, None, None, :3, 3]
    poses = np.stack([pose_encoding(m) for m in rebased.cpu().numpy()])
    return Sequence(
        sequence.images[frames], pts_self, pts_world.float(), sequence.valid[frames],
        torch.from_numpy(poses).float().to(sequence.pose.device),
    )  # fmt: skip


def to_device(sequence: Sequence, device: torch.device) -> Sequence:
    """The sequence (or batch) with every field on `device`."""
    return Sequence(*(getattr(sequence, f).to(device) for f in Sequence.__annotations__))


def resident(sequences: list[Sequence], device: torch.device) -> list[Sequence]:
    """The training rooms on the GPU when they take at most half its free memory; else as they are.

    On the GPU a step stacks its batch there instead of copying it from the CPU.
    """
    if device.type != "cuda" or not sequences:
        return sequences
    size = sum(getattr(s, f).nbytes for s in sequences for f in Sequence.__annotations__)
    free, _ = torch.cuda.mem_get_info(device)
    return [to_device(s, device) for s in sequences] if size <= free / 2 else sequences


def stack(sequences: list[Sequence]) -> Sequence:
    """Batch sequences: every field gains a leading batch dimension."""
    return Sequence(
        *(torch.stack([getattr(s, f) for s in sequences]) for f in Sequence.__annotations__)
    )


def run_stream(model: Cut3r, images: torch.Tensor) -> list:
    """Differentiable CUT3R over (B, T, 3, H, W) from a fresh state."""
    state = model.init_state(images.shape[0], grad=True)
    return [model.forward_step(state, images[:, t]) for t in range(images.shape[1])]


def conf_regression(pred, conf, target, valid, scale, alpha: float) -> torch.Tensor:
    """Confidence-aware pointmap loss over valid pixels (scale-normalised distances)."""
    dist = (pred - target).norm(dim=-1) / scale[:, None, None]
    loss = conf * dist - alpha * torch.log(conf)
    return loss[valid].mean()


def sequence_loss(model: Cut3r, batch: Sequence, config: Cut3rTrainConfig) -> dict:
    """The training objective of one batch of sequences (means over frames)."""
    outputs = run_stream(model, batch.images)
    scale = torch.stack([
        batch.pts_world[b].norm(dim=-1)[batch.valid[b]].mean() for b in range(len(batch.images))
    ]).clamp(min=1e-3)  # fmt: skip
    parts = {"pts_self": 0.0, "pts_world": 0.0, "pose": 0.0}
    for t, out in enumerate(outputs):
        valid, alpha = batch.valid[:, t], config.conf_alpha
        parts["pts_self"] += conf_regression(
            out.pts3d_self, out.conf_self, batch.pts_self[:, t], valid, scale, alpha
        )
        parts["pts_world"] += conf_regression(
            out.pts3d_world, out.conf_world, batch.pts_world[:, t], valid, scale, alpha
        )
        rotation = (out.pose_encoding[:, 3:] - batch.pose[:, t, 3:]).norm(dim=-1)
        translation = (out.pose_encoding[:, :3] - batch.pose[:, t, :3]).norm(dim=-1) / scale
        parts["pose"] += (rotation + translation).mean()
    parts = {k: v / len(outputs) for k, v in parts.items()}
    parts["loss"] = parts["pts_self"] + parts["pts_world"] + config.pose_weight * parts["pose"]
    return parts


@torch.no_grad()
def depth_errors(model: Cut3r, sequences: list[Sequence]) -> dict[str, float]:
    """How far the pointmaps' depth (z in each frame's own camera) is from the truth.

    `depth_error_summary` of every frame: the geometric pose source takes metric scale and
    every patch's point from this depth.
    """
    device = getattr(model, "device", torch.device("cpu"))

    def frames():
        for seq in sequences:
            outputs = model.run([seq.images[t : t + 1].to(device) for t in range(len(seq.images))])
            for t, out in enumerate(outputs):
                truth = torch.where(seq.valid[t], seq.pts_self[t, ..., 2], torch.zeros(()))
                yield out.pts3d_self[0, ..., 2].float().cpu(), truth

    return depth_error_summary(frames())


def depth_error_summary(frames: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Predicted and true z-depth maps -> the error figures the trainers report.

    The per-pixel absolute relative error (|z / z_true - 1|, median over the pixels with
    z_true > 0) and the spread of each frame's scale (the 10th and 90th percentile of its median
    z / z_true); {} when no pixel is valid.
    """
    relative, ratios = [], []
    for predicted, truth in frames:
        valid = truth > 0
        if bool(valid.any()):
            ratio = predicted[valid] / truth[valid]
            relative.append((ratio - 1).abs().numpy())
            ratios.append(float(ratio.median()))
    if not ratios:
        return {}
    p10, p90 = np.percentile(ratios, [10, 90])
    return {
        "median_depth_abs_rel": float(np.median(np.concatenate(relative))),
        "frame_scale_p10": float(p10),
        "frame_scale_p90": float(p90),
    }


@torch.no_grad()
def camera_tokens_and_poses(model: Cut3r, sequences: list[Sequence]) -> tuple[np.ndarray, ...]:
    """Camera tokens, predicted and true poses of every frame (frames 1.. of each sequence)."""
    tokens, predicted, truth = [], [], []
    device = model.device
    for seq in sequences:
        outputs = model.run([seq.images[t : t + 1].to(device) for t in range(len(seq.images))])
        for t, out in enumerate(outputs[1:], 1):
            tokens.append(out.camera_token[0].float().cpu().numpy())
            predicted.append(out.pose_encoding[0].float().cpu().numpy())
            truth.append(seq.pose[t].numpy())
    return np.array(tokens), np.array(predicted), np.array(truth)


def pose_features(encodings: np.ndarray) -> np.ndarray:
    """[t_xyz, sin/cos of the heading about the camera's y (down) axis]: what a probe reads."""
    rot = Rotation.from_quat(np.concatenate([encodings[:, 4:7], encodings[:, 3:4]], 1))
    forward = rot.apply([0.0, 0.0, 1.0])
    heading = np.arctan2(forward[:, 0], forward[:, 2])
    return np.concatenate([encodings[:, :3], np.sin(heading)[:, None], np.cos(heading)[:, None]], 1)


def probe_r2(train_x, train_y, test_x, test_y, ridge: float = 1e-2) -> float:
    """R^2 on held-out frames of a ridge regression from camera tokens to pose features."""
    mean_x, std_x = train_x.mean(0), train_x.std(0) + 1e-6
    a = np.c_[(train_x - mean_x) / std_x, np.ones(len(train_x))]
    weights = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ train_y)
    pred = np.c_[(test_x - mean_x) / std_x, np.ones(len(test_x))] @ weights
    residual = ((test_y - pred) ** 2).sum(0)
    total = ((test_y - test_y.mean(0)) ** 2).sum(0) + 1e-12
    return float(np.mean(1 - residual / total))


def pose_errors(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translation errors (m) and rotation errors (deg) between [t, q_wxyz] encodings."""
    trans_err = np.linalg.norm(predicted[:, :3] - truth[:, :3], axis=1)
    dots = np.abs((predicted[:, 3:] * truth[:, 3:]).sum(1)).clip(max=1.0)
    return trans_err, np.degrees(2 * np.arccos(dots))


def evaluate(model: Cut3r, train: list[Sequence], held_out: list[Sequence]) -> dict:
    """Pose errors on held-out sequences, and the camera-token probe.

    The same walks played backwards turn the other way: a model that learned the walks'
    turning as a prior, instead of matching frames, has much larger errors on them.
    """
    model.eval()
    tokens_tr, _, truth_tr = camera_tokens_and_poses(model, train)
    tokens_te, pred_te, truth_te = camera_tokens_and_poses(model, held_out)
    trans_err, rot_err = pose_errors(pred_te, truth_te)
    backwards = [window(s, 0, len(s.images), backwards=True) for s in held_out]
    _, pred_bw, truth_bw = camera_tokens_and_poses(model, backwards)
    trans_bw, rot_bw = pose_errors(pred_bw, truth_bw)
    return {
        "frames": len(truth_te),
        "median_translation_error_m": float(np.median(trans_err)),
        "median_rotation_error_deg": float(np.median(rot_err)),
        "median_translation_m": float(np.median(np.linalg.norm(truth_te[:, :3], axis=1))),
        "backwards_median_translation_error_m": float(np.median(trans_bw)),
        "backwards_median_rotation_error_deg": float(np.median(rot_bw)),
        "probe_r2": probe_r2(
            tokens_tr, pose_features(truth_tr), tokens_te, pose_features(truth_te)
        ),
        **depth_errors(model, held_out),
    }


MODEL_SIZES = (
    "patch_size", "enc_embed_dim", "enc_depth", "dec_embed_dim", "dec_depth", "dec_num_heads",
    "state_size",
)  # fmt: skip


def model_config(config: Cut3rTrainConfig) -> Cut3rConfig:
    """Cut3rConfig.tiny() with the run's sizes, its nominal image size the run's input size."""
    if config.patch_size not in (8, 16):
        raise ValueError(f"patch_size={config.patch_size}: 8 or 16 (crops are multiples of 16)")
    side = config.cut3r_size // config.patch_size * config.patch_size
    return replace(
        Cut3rConfig.tiny(),
        img_size=(side, side),
        **{name: getattr(config, name) for name in MODEL_SIZES},
    )


def initial_model(config: Cut3rTrainConfig) -> Cut3r:
    """A fresh model of the run's sizes, or the `init` checkpoint (which must have them)."""
    if not config.init:
        return Cut3r(model_config(config))
    model = load_pretrained(config.init)
    expected = model_config(config)
    sizes = expected.to_dict()
    differ = {
        k: (v, sizes[k])
        for k, v in model.config.to_dict().items()
        if v != sizes[k] and k != "img_size"  # nominal: a tuning run may change it
    }
    if differ:
        detail = ", ".join(f"{k}={a} (run: {b})" for k, (a, b) in sorted(differ.items()))
        raise ValueError(f"--init={config.init} does not match the run's model sizes: {detail}")
    model.config.img_size = expected.img_size
    return model.train()


def train(config: Cut3rTrainConfig, progress: bool = True) -> dict:
    """Build data, train, evaluate against the random initialisation, save; returns the report."""
    threads, tf32 = torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32
    torch.set_num_threads(config.threads)
    try:
        return _train(config, progress)
    finally:  # as they were, for the stages that follow in make_default_model
        torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _train(config: Cut3rTrainConfig, progress: bool) -> dict:
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    device = resolve_training_device(config.device)  # before any rendering
    seeds = range(config.train_seed_offset, config.train_seed_offset + config.train_episodes)
    held_seeds = range(config.eval_seed_offset, config.eval_seed_offset + config.eval_episodes)
    if seeds and held_seeds and seeds.start < held_seeds.stop and held_seeds.start < seeds.stop:
        raise ValueError(
            f"training rooms {seeds.start}-{seeds.stop - 1} overlap the held-out rooms "
            f"{held_seeds.start}-{held_seeds.stop - 1}"
        )
    if config.workers < 1 or config.render_within_s < 0 or config.time_budget_s < 0:
        raise ValueError("workers >= 1; render_within_s and time_budget_s: seconds >= 0")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights, TF32 matmuls
    train_data = make_sequences(seeds, config, config.render_within_s, progress)
    held_out = make_sequences(held_seeds, config, progress=False)
    render_s = time.perf_counter() - start
    model = initial_model(config).to(device)
    probe_train = train_data[: config.eval_episodes * 4]  # evaluated from the CPU
    train_data = resident(train_data, device)
    before = evaluate(model, probe_train, held_out)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95),
                                  weight_decay=config.weight_decay)  # fmt: skip
    rng = np.random.default_rng(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    history = []
    bar = tqdm(total=config.steps, desc="cut3r", disable=not progress)
    pacer = Pacer(config.time_budget_s)
    with open(out / "metrics.jsonl", "w") as log:
        model.train()
        step = 0
        while step < config.steps and not pacer.spent():
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            chosen = [train_data[i] for i in rng.choice(len(train_data), config.batch_size)]
            length = config.window if 0 < config.window < config.frames else config.frames
            if length < config.frames or config.reverse_prob > 0:
                starts = rng.integers(0, config.frames - length + 1, len(chosen))
                backwards = rng.random(len(chosen)) < config.reverse_prob
                picks = zip(chosen, starts, backwards, strict=True)
                chosen = [window(seq, int(s), length, bool(b)) for seq, s, b in picks]
            batch = to_device(stack(chosen), device)
            parts = sequence_loss(model, batch, config)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            metrics = {k: float(v.detach()) for k, v in parts.items()}
            metrics.update(step=step + 1, lr=lr, grad_norm=float(grad_norm))
            history.append(metrics)
            if (step + 1) % config.log_every == 0 or step == 0:
                log.write(json.dumps(metrics) + "\n")
                log.flush()
            step += 1
            bar.update(1)
            if (fitted := pacer.fitted(step, config.steps)) < config.steps:
                config = replace(config, steps=fitted)  # the schedule fitted to the budget
                bar.total = fitted
    bar.close()
    model.eval()
    after = evaluate(model, probe_train, held_out)
    save_pretrained(model.cpu(), out / "cut3r")
    report = {
        "config": asdict(config),
        "device": str(device),
        "rooms": len(train_data),
        "steps_done": len(history),
        "paced": pacer.note,
        "render_seconds": round(render_s, 1),
        "random_init": before,
        "trained": after,
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": float(np.mean([h["loss"] for h in history[-20:]])) if history else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    """Train and print the report."""
    config = Cut3rTrainConfig.from_args(argv)
    if config.threads < 1:
        raise SystemExit(f"threads={config.threads}: expected >= 1")
    report = train(config)
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=2))
    return 0 if math.isfinite(report["final_loss"] or 0.0) else 1


if __name__ == "__main__":
    sys.exit(main())
