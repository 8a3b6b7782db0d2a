"""Is the input like what the model was trained on? A one-class check on vision features.

The check reads the vision tower's patch features (what the LM sees through) of a clip's frames
two ways: each patch on its own, and each frame as the mean and standard deviation of its
patches. A Gaussian (mean and shrunk covariance) of each is fitted on frames of the training
rooms; a clip's two scores are the mean Mahalanobis distances per dimension of its patches and
of its frames, each divided by its median over held-out training-domain clips. A third score
reads the pixels: how much less alike neighbouring pixels are than in the training frames
(`Roughness`; sensor noise, which a vision tower trained on varied textures can map among its
rooms' features). The clip's score is the largest (about 1 for a typical clip). The threshold is
a quantile of held-out training-domain clips' scores, so the rate at which in-domain clips are
flagged is known. `python -m loc3r.eval.domain` fits it into a bundle (domain.safetensors) and
reports how often it flags real photographs. A bundle without that file (the 7B model, trained
on real scans) gets no verdict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

FILE_NAME = "domain.safetensors"


@dataclass
class DomainVerdict:
    """The check's answer for one clip."""

    score: float  # mean per-frame distance from the training frames (about 1 = typical)
    threshold: float
    in_domain: bool
    note: str  # a sentence for the user ("" when in domain)


@dataclass
class ClipFeatures:
    """What the check reads of a clip: vision-tower patch features and pixel statistics."""

    patches: np.ndarray  # (T, P, D) float64
    images: np.ndarray | None = None  # (T, IMAGE_STATISTICS) float64; None: not measured


IMAGE_STATISTICS = 4  # per frame: neighbour correlation at 1 and 2 pixels, across and down
NEIGHBOUR_OFFSETS = (1, 2)


def image_statistics(pixel_values: torch.Tensor) -> np.ndarray:
    """(T, 3, S, S) pixels -> (T, 4): how alike neighbouring pixels of each grey frame are.

    The correlation of pixels 1 and 2 apart, horizontally and vertically: near 1 in any
    photograph or rendering, near 0 in sensor noise, 1 for a blank frame. (Colours and layouts
    are the vision features' part.)
    """
    grey = pixel_values.detach().double().cpu().mean(1)

    def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
        b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
        spread = (a.square().sum(1) * b.square().sum(1)).sqrt()
        return torch.where(spread > 1e-12, (a * b).sum(1) / spread.clamp_min(1e-12), 1.0)

    stats = []
    for k in NEIGHBOUR_OFFSETS:
        stats.append(correlation(grey[:, :, :-k], grey[:, :, k:]))
        stats.append(correlation(grey[:, :-k, :], grey[:, k:, :]))
    return torch.stack(stats, 1).numpy()


@torch.inference_mode()
def frame_features(vlm, pixel_values: torch.Tensor) -> ClipFeatures:
    """(T, 3, S, S) pixels -> the vision tower's patch features and the pixels' statistics."""
    features = vlm.base.vision_features(pixel_values.to(vlm.device)).float()
    return ClipFeatures(features.cpu().double().numpy(), image_statistics(pixel_values))


def _features(clip: ClipFeatures | np.ndarray) -> ClipFeatures:
    """A bare (T, P, D) array is patch features alone."""
    return clip if isinstance(clip, ClipFeatures) else ClipFeatures(np.asarray(clip))


@dataclass
class Gaussian:
    """Mean and precision of in-domain feature vectors."""

    mean: np.ndarray  # (D,)
    precision: np.ndarray  # (D, D)

    @classmethod
    def fit(cls, vectors: np.ndarray, shrinkage: float = 0.1) -> Gaussian:
        """Mean and covariance shrunk towards its mean variance (stable with few samples)."""
        if vectors.ndim != 2 or len(vectors) <= vectors.shape[1]:
            raise ValueError(f"need more samples than feature dimensions, got {vectors.shape}")
        cov = np.cov(vectors, rowvar=False)
        target = np.eye(len(cov)) * np.trace(cov) / len(cov)
        return cls(vectors.mean(0), np.linalg.inv((1 - shrinkage) * cov + shrinkage * target))

    def distance(self, vectors: np.ndarray) -> np.ndarray:
        """(N, D) -> (N,) Mahalanobis distance per dimension, sqrt(d^2 / D)."""
        centred = vectors - self.mean
        squared = np.einsum("nd,de,ne->n", centred, self.precision, centred)
        return np.sqrt(np.maximum(squared, 0.0) / len(self.mean))


def frame_vectors(patches: np.ndarray) -> np.ndarray:
    """(T, P, D) patch features -> (T, 2D): each frame's patch mean and standard deviation."""
    return np.concatenate([patches.mean(1), patches.std(1)], axis=1)


@dataclass
class Roughness:
    """How much rougher than the training frames a clip's pixels are (one-sided).

    Per statistic of `image_statistics`, the training frames' median and 1st percentile; a
    frame's score is the mean over statistics of how far it falls below the median, in units of
    (median - 1st percentile), and nothing above it (smooth or blank frames are the vision
    features' part). A clip's score is its frames' mean: well below 1 for training clips, about 1
    for frames as rough as the roughest 1 % of them (3.7 for sensor noise, embedded bundle).
    """

    median: np.ndarray  # (IMAGE_STATISTICS,)
    low: np.ndarray  # (IMAGE_STATISTICS,) 1st percentile

    def __post_init__(self) -> None:
        self.median, self.low = np.asarray(self.median), np.asarray(self.low)
        if self.median.shape != (IMAGE_STATISTICS,) or self.low.shape != self.median.shape:
            raise ValueError(f"the roughness needs {IMAGE_STATISTICS} medians and lows")
        if not (np.isfinite(self.median).all() and np.isfinite(self.low).all()):
            raise ValueError("the roughness's medians and lows must be finite")
        if not (self.median - self.low > 0).all():
            raise ValueError("each low must lie below its median")

    @classmethod
    def fit(cls, images: np.ndarray) -> Roughness:
        """From (N, IMAGE_STATISTICS) statistics of training frames."""
        median, low = np.median(images, 0), np.percentile(images, 1, axis=0)
        return cls(median, np.minimum(low, median - 1e-6))

    def score(self, images: np.ndarray) -> float:
        """A clip's (T, IMAGE_STATISTICS) statistics -> its score."""
        below = np.maximum(self.median - images, 0.0) / (self.median - self.low)
        return float(below.mean())


class DomainModel:
    """The training domain: patch and frame Gaussians, their scales, the threshold, roughness.

    Clips are ClipFeatures, or (T, P, D) patch feature arrays when the model reads no pixels
    (domain files written before `Roughness` have none, and are read as before).
    """

    def __init__(
        self,
        patch: Gaussian,
        frame: Gaussian,
        scales: tuple[float, float] = (1.0, 1.0),
        threshold: float = 1.0,
        description: str = "",
        roughness: Roughness | None = None,
    ) -> None:
        if patch.precision.shape[0] * 2 != frame.precision.shape[0]:
            raise ValueError("the frame Gaussian must be twice as wide as the patch Gaussian")
        if len(scales) != 2 or not all(np.isfinite(v) and v > 0 for v in (*scales, threshold)):
            raise ValueError(f"two positive scales and a positive threshold: {scales}, {threshold}")
        self.patch, self.frame, self.roughness = patch, frame, roughness
        self.scales = (float(scales[0]), float(scales[1]))
        self.threshold = float(threshold)
        self.description = description

    @classmethod
    def fit(cls, clips: list[ClipFeatures | np.ndarray]) -> DomainModel:
        """Gaussians of in-domain clips' features (uncalibrated); pixels if every clip has them."""
        clips = [_features(c) for c in clips]
        patches = np.concatenate([c.patches.reshape(-1, c.patches.shape[-1]) for c in clips])
        frames = np.concatenate([frame_vectors(c.patches) for c in clips])
        roughness = None
        if all(c.images is not None for c in clips):
            roughness = Roughness.fit(np.concatenate([c.images for c in clips]))
        return cls(Gaussian.fit(patches), Gaussian.fit(frames), roughness=roughness)

    def raw_scores(self, clip: ClipFeatures | np.ndarray) -> tuple[float, float]:
        """A clip's mean patch distance and mean frame distance (unscaled)."""
        patches = _features(clip).patches
        patch = self.patch.distance(patches.reshape(-1, patches.shape[-1])).mean()
        return float(patch), float(self.frame.distance(frame_vectors(patches)).mean())

    def score(self, clip: ClipFeatures | np.ndarray) -> float:
        """A clip's score: the largest of its scaled patch and frame scores and its roughness."""
        patch, frame = self.raw_scores(clip)
        score = max(patch / self.scales[0], frame / self.scales[1])
        if self.roughness is None:
            return score
        images = _features(clip).images
        if images is None:
            raise ValueError("this domain model reads pixel statistics: pass ClipFeatures")
        return max(score, self.roughness.score(images))

    def calibrate(self, clips: list[ClipFeatures | np.ndarray], quantile: float) -> list[float]:
        """Scales = medians of held-out in-domain clips' scores; threshold = their `quantile`.

        Returns those clips' final scores.
        """
        raw = np.array([self.raw_scores(c) for c in clips])
        self.scales = (float(np.median(raw[:, 0])), float(np.median(raw[:, 1])))
        scores = [self.score(c) for c in clips]
        self.threshold = float(np.quantile(scores, quantile))
        return scores

    def verdict(self, clip: ClipFeatures | np.ndarray) -> DomainVerdict:
        """Score a clip's features and say whether they look like training data."""
        score = self.score(clip)
        inside = score <= self.threshold
        note = (
            ""
            if inside
            else (
                f"these frames are unlike the model's training data (domain score {score:.2f}, "
                f"threshold {self.threshold:.2f}; trained on {self.description or 'its data'}): "
                "treat the answer and the pose as unreliable"
            )
        )
        return DomainVerdict(score, self.threshold, inside, note)

    def save(self, directory: str | Path) -> Path:
        """Write domain.safetensors into a bundle directory."""
        path = Path(directory) / FILE_NAME
        meta = {
            "threshold": repr(self.threshold),
            "scales": [repr(v) for v in self.scales],
            "description": self.description,
        }
        tensors = {
            "patch_mean": self.patch.mean,
            "patch_precision": self.patch.precision,
            "frame_mean": self.frame.mean,
            "frame_precision": self.frame.precision,
        }
        if self.roughness is not None:
            tensors |= {"pixel_median": self.roughness.median, "pixel_low": self.roughness.low}
        save_file(tensors, str(path), metadata={"loc3r_domain": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, directory: str | Path) -> DomainModel | None:
        """The bundle's domain model, or None when it has none. ValueError when unreadable."""
        path = Path(directory) / FILE_NAME
        if not path.exists():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as handle:
                meta = json.loads(handle.metadata()["loc3r_domain"])
            t = {k: v.astype(np.float64) for k, v in load_file(str(path)).items()}
            roughness = None
            if "pixel_median" in t:
                roughness = Roughness(t["pixel_median"], t["pixel_low"])
            return cls(
                Gaussian(t["patch_mean"], t["patch_precision"]),
                Gaussian(t["frame_mean"], t["frame_precision"]),
                tuple(float(v) for v in meta["scales"]),
                float(meta["threshold"]),
                str(meta.get("description", "")),
                roughness,
            )
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{path}: not a loc3r domain model ({exc})") from exc
