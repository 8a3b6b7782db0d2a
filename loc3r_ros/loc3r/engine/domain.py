"""Is the input like what the model was trained on? A one-class check on vision features.

The check reads the vision tower's patch features (what the LM sees through) of a clip's frames
two ways: each patch on its own, and each frame as the mean and standard deviation of its
patches. A Gaussian (mean and shrunk covariance) of each is fitted on frames of the training
rooms; a clip's two scores are the mean Mahalanobis distances per dimension of its patches and
of its frames, each divided by its median over held-out training-domain clips, and the clip's
score is the larger (about 1 for a typical clip: patches catch noise and odd textures, frames
catch odd layouts and colours). The threshold is a quantile of held-out training-domain clips'
scores, so the rate at which in-domain clips are flagged is known. `python -m loc3r.eval.domain`
fits it into a bundle (domain.safetensors) and reports how often it flags real photographs. A
bundle without that file (the 7B model, trained on real scans) gets no verdict.
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


@torch.inference_mode()
def frame_features(vlm, pixel_values: torch.Tensor) -> np.ndarray:
    """(T, 3, S, S) pixels -> (T, P, D) float64: the vision tower's patch features."""
    features = vlm.base.vision_features(pixel_values.to(vlm.device)).float()
    return features.cpu().double().numpy()


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


class DomainModel:
    """Patch and frame Gaussians of the training domain, their scales and the threshold."""

    def __init__(
        self,
        patch: Gaussian,
        frame: Gaussian,
        scales: tuple[float, float] = (1.0, 1.0),
        threshold: float = 1.0,
        description: str = "",
    ) -> None:
        if patch.precision.shape[0] * 2 != frame.precision.shape[0]:
            raise ValueError("the frame Gaussian must be twice as wide as the patch Gaussian")
        if not all(np.isfinite(v) and v > 0 for v in (*scales, threshold)):
            raise ValueError(f"scales and threshold must be positive: {scales}, {threshold}")
        self.patch, self.frame = patch, frame
        self.scales = (float(scales[0]), float(scales[1]))
        self.threshold = float(threshold)
        self.description = description

    @classmethod
    def fit(cls, clips: list[np.ndarray]) -> DomainModel:
        """Gaussians of in-domain clips' (T, P, D) patch features (uncalibrated)."""
        patches = np.concatenate([c.reshape(-1, c.shape[-1]) for c in clips])
        frames = np.concatenate([frame_vectors(c) for c in clips])
        return cls(Gaussian.fit(patches), Gaussian.fit(frames))

    def raw_scores(self, patches: np.ndarray) -> tuple[float, float]:
        """A clip's mean patch distance and mean frame distance (unscaled)."""
        patch = self.patch.distance(patches.reshape(-1, patches.shape[-1])).mean()
        return float(patch), float(self.frame.distance(frame_vectors(patches)).mean())

    def score(self, patches: np.ndarray) -> float:
        """A clip's score: the larger of its scaled patch and frame scores (about 1 = typical)."""
        patch, frame = self.raw_scores(patches)
        return max(patch / self.scales[0], frame / self.scales[1])

    def calibrate(self, clips: list[np.ndarray], quantile: float) -> list[float]:
        """Scales = medians of held-out in-domain clips' scores; threshold = their `quantile`.

        Returns those clips' final scores.
        """
        raw = np.array([self.raw_scores(c) for c in clips])
        self.scales = (float(np.median(raw[:, 0])), float(np.median(raw[:, 1])))
        scores = [self.score(c) for c in clips]
        self.threshold = float(np.quantile(scores, quantile))
        return scores

    def verdict(self, patches: np.ndarray) -> DomainVerdict:
        """Score a clip's (T, P, D) patch features and say whether they look like training data."""
        score = self.score(patches)
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
            return cls(
                Gaussian(t["patch_mean"], t["patch_precision"]),
                Gaussian(t["frame_mean"], t["frame_precision"]),
                tuple(float(v) for v in meta["scales"]),
                float(meta["threshold"]),
                str(meta.get("description", "")),
            )
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{path}: not a loc3r domain model ({exc})") from exc
