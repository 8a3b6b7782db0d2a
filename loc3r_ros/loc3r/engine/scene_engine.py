"""The scene engine: camera frames in, situated poses and answers out.

Data path: camera -> `add_frame` (KeyframeBuffer, never blocks) -> perception worker (CUT3R per
keyframe) -> scene memory -> `localize` / `ask` (Loc3R-VLM over sampled keyframes) -> results.

Queries sample `num_query_frames` keyframes uniformly (always including the first keyframe, which
anchors the scene frame) and hand their images and CUT3R camera tokens to a `SituatedModel`.
The model's encoding of that video (its "scene prefix": vision features, camera tokens, the LLM's
KV cache of the video part of the prompt) is cached and reused for every question until
`refresh_after_keyframes` new keyframes have arrived. Two perception modes:
- "streaming": camera tokens from the running CUT3R stream (cheap; the robot's default);
- "faithful": CUT3R re-run from a fresh state over exactly the sampled frames, as in the paper.

Without a model the engine still buffers frames and answers every query with a clear
"no model loaded" error, so the ROS layer can be exercised on its own.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from loc3r.engine.domain import DomainVerdict
from loc3r.engine.frame_buffer import Keyframe, KeyframeBuffer, KeyframeConfig, sample_uniform
from loc3r.engine.perception import Perception, PerceptionConfig, PerceptionWorker
from loc3r.engine.scene_frame import SceneView
from loc3r.engine.scene_geometry import KeyframeGeometry, SceneGeometry
from loc3r.errors import BusyError, NotReadyError
from loc3r.text_input import DEFAULT_MAX_CHARS, clean_text

DEFAULT_SITUATION = "I am standing in the room"
MODES = ("streaming", "faithful")


@dataclass
class EngineConfig:
    """Scene engine settings (the ROS node fills it from its parameters)."""

    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    max_text_chars: int = DEFAULT_MAX_CHARS  # longest question/situation accepted
    min_frames: int = 1  # processed keyframes needed before a query is answered
    num_query_frames: int = 32  # frames the VLM sees per query (paper: 32)
    mode: str = "streaming"  # "streaming" | "faithful" (see module docstring)
    refresh_after_keyframes: int = 4  # rebuild the cached scene prefix after this many new ones
    query_timeout_s: float = 30.0  # how long a query waits for the model lock before "busy"
    perception_wait_s: float = 5.0  # how long a query waits for queued keyframes' CUT3R

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.num_query_frames < 1 or self.min_frames < 1:
            raise ValueError("num_query_frames and min_frames must be >= 1")
        if self.refresh_after_keyframes < 1:
            raise ValueError("refresh_after_keyframes must be >= 1")


@dataclass
class AgentPose:
    """A situated agent pose in the scene (BEV) frame: z up, metres, yaw CCW about +z from +x."""

    x: float
    y: float
    yaw: float  # radians, in [-pi, pi)
    sigma_x: float  # metres
    sigma_y: float  # metres
    yaw_spread: float  # circular std of the heading distribution, radians
    height: float = 0.0  # z of the agent in the scene frame, metres (the model predicts 2D)

    @property
    def position_sigma(self) -> float:
        """Root mean square of sigma_x and sigma_y, metres."""
        return float(np.sqrt(0.5 * (self.sigma_x**2 + self.sigma_y**2)))


@dataclass
class Confidence:
    """How sure the model is of a reply, and whether its input looks like its training data."""

    answer_probability: float | None = None  # the model's probability of its answer (ask only)
    cut3r_confidence: float | None = None  # CUT3R's median point confidence of the frames (>= 1)
    domain: DomainVerdict | None = None  # None: the bundle has no domain model

    @property
    def note(self) -> str:
        """One sentence when the input is out of domain ("" otherwise)."""
        return self.domain.note if self.domain is not None else ""

    def to_dict(self) -> dict:
        """JSON-ready values (CLI output)."""
        out: dict = {
            "answer_probability": _rounded(self.answer_probability),
            "cut3r_confidence": _rounded(self.cut3r_confidence),
        }
        if self.domain is None:
            out["in_domain"] = None
        else:
            out["in_domain"] = self.domain.in_domain
            out["domain_score"] = _rounded(self.domain.score)
            out["domain_threshold"] = _rounded(self.domain.threshold)
        out["note"] = self.note
        return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


@dataclass
class QueryResult:
    """What a localize/ask query returns."""

    answer: str  # "" for localize
    pose: AgentPose | None  # None when no situation was given to ask()
    num_frames: int
    first_stamp_ns: int
    last_stamp_ns: int
    latency_s: float
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    cached: bool = False  # the scene prefix came from the cache
    confidence: Confidence = field(default_factory=Confidence)


class SituatedModel(Protocol):
    """Loc3R-VLM as the engine uses it (see loc3r.vlm for the real one)."""

    def encode_scene(self, images: list[np.ndarray], camera_tokens: torch.Tensor) -> object:
        """Encode the video part of the prompt once: (T, H, W, 3) RGB frames + (T, Cd) tokens."""
        ...

    def localize(self, scene: object, situation: str) -> AgentPose:
        """Pose of the agent the situation describes, in the first frame's BEV frame."""
        ...

    def answer(self, scene: object, question: str, situation: str) -> tuple[str, AgentPose, float]:
        """Answer from the situation; also the situated pose and the answer's probability."""
        ...

    def domain(self, scene: object) -> DomainVerdict | None:
        """Whether the encoded frames look like the training data (None: no domain model)."""
        ...


@dataclass
class _ScenePrefix:
    key: tuple
    scene: object
    frames: list[Keyframe]
    built_at_keyframe: int  # newest keyframe index when built
    seconds: dict[str, float]
    cut3r_confidence: float | None = None
    domain: DomainVerdict | None = None


class SceneEngine:
    """Buffers keyframes, runs perception, and serves situated queries one at a time."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        model: SituatedModel | None = None,
        perception: Perception | None = None,
        no_model_reason: str = "no model loaded",
    ) -> None:
        self.config = config or EngineConfig()
        self.buffer = KeyframeBuffer(self.config.keyframes)
        self.model = model
        self.perception = perception
        self.worker = PerceptionWorker(perception) if perception is not None else None
        self.no_model_reason = no_model_reason
        self._query_lock = threading.Lock()
        self._prefix: _ScenePrefix | None = None
        self._generation = 0
        self._given_up: np.ndarray | None = None
        self.intrinsics: tuple[tuple[float, float, float, float], tuple[int, int]] | None = None
        self.geometry = SceneGeometry()  # or the model process's (set_models)
        self._geometry_sent: tuple[int | None, set[int]] = (None, set())
        self._view_lock = threading.Lock()

    def set_models(
        self,
        model: SituatedModel,
        perception: Perception | None,
        num_query_frames: int | None,
        geometry: SceneGeometry | None = None,
    ) -> None:
        """Attach the models once loaded (the engine buffers frames before that).

        `geometry`: where scene views are built (the model process's; default in-process).
        """
        with self._query_lock, self._view_lock:
            self.geometry = geometry or SceneGeometry()
            self._geometry_sent = (None, set())
            if self.worker is not None:
                self.worker.close()
            self.perception = perception
            self.worker = PerceptionWorker(perception) if perception is not None else None
            if self.worker is not None and self.intrinsics is not None:
                self.worker.set_intrinsics(*self.intrinsics)  # known before the models arrived
            if num_query_frames:
                self.config.num_query_frames = num_query_frames
            self.model = model
            self._new_scene()
            if self.worker is not None:  # keyframes buffered before the models arrived
                for keyframe in self.buffer.snapshot():
                    self.worker.submit(keyframe)

    # --- intake ----------------------------------------------------------------------------------
    def add_frame(self, image: np.ndarray, stamp_ns: int, full=None) -> bool:
        """Offer an RGB uint8 frame; True if it became a keyframe (InputError if malformed).

        `full` (optional): a callable giving the full image when `image` is only a preview.
        """
        before = self.buffer.version
        keyframe = self.buffer.offer(image, stamp_ns, full)
        if keyframe is None:
            return False
        if keyframe.index == 0 and before != 0:  # the buffer restarted (time went backwards)
            self._new_scene()
        if self.worker is not None:
            self.worker.submit(keyframe)
        return True

    def set_intrinsics(
        self, intrinsics: tuple[float, float, float, float], image_hw: tuple[int, int]
    ) -> bool:
        """Give the geometric pose source the camera's calibration (e.g. from a CameraInfo).

        (fx, fy, cx, cy) at image_hw = (height, width). A new calibration restarts the scene's
        perception from its buffered keyframes (one stream, one camera model; the keyframes are
        kept), on the perception thread; it is kept for models loaded later. Returns False when
        it is the calibration already in use; ValueError for invalid values.
        """
        PerceptionConfig(intrinsics=tuple(intrinsics), intrinsics_hw=tuple(image_hw))  # validate
        calibration = (tuple(float(v) for v in intrinsics), tuple(int(v) for v in image_hw))
        with self._query_lock, self._view_lock:
            if calibration == self.intrinsics:
                return False
            self.intrinsics = calibration
            if self.worker is not None:
                self.worker.set_intrinsics(*calibration)
                self._new_scene()  # the worker applies it, then starts a stream for these:
                for keyframe in self.buffer.snapshot():
                    self.worker.submit(keyframe)
        return True

    def reset(self) -> None:
        """Forget the scene (keyframes, perception state and the cached prefix)."""
        self.buffer.clear()
        self._new_scene()

    def _new_scene(self) -> None:
        self._generation += 1
        self._prefix = None
        if self.worker is not None:
            self.worker.reset()

    def close(self) -> None:
        """Stop the perception thread."""
        if self.worker is not None:
            self.worker.close()

    @property
    def ready(self) -> bool:
        """A model is loaded."""
        return self.model is not None

    def processed_keyframes(self) -> list[Keyframe]:
        """Keyframes that have perception (all of them when there is no perception stage)."""
        frames = self.buffer.snapshot()
        if self.perception is None:
            return frames
        return [k for k in frames if k.perception is not None]

    # --- the scene, for visualisation -------------------------------------------------------------
    def set_gravity(self, up_world: np.ndarray | None) -> None:
        """Gravity's up direction in CUT3R's world from the caller (IMU/TF), or None to estimate."""
        self._given_up = None if up_world is None else np.asarray(up_world, dtype=np.float64)

    def scene_view(self, voxel: float = 0.05, max_points: int = 50_000) -> SceneView | None:
        """Camera trajectory and reconstruction in the BEV frame (None before any perception).

        Built by `self.geometry`, which gets only the keyframes it has not seen yet (it may live
        in the model process, where its NumPy work does not delay the caller's other threads).
        """
        with self._view_lock:
            generation = self._generation
            frames = [k for k in self.buffer.snapshot() if k.perception is not None]
            if not frames:
                return None
            sent_generation, sent = self._geometry_sent
            known = sent if sent_generation == generation else set()
            added = [
                KeyframeGeometry(
                    k.index,
                    k.stamp_ns,
                    k.perception.pose_c2w,
                    k.perception.points,
                    k.perception.colors,
                )
                for k in frames
                if k.index not in known
            ]
            alive = [k.index for k in frames]
            self._geometry_sent = (None, set())  # unknown until the call succeeds
            view = self.geometry.update_and_view(
                generation, added, alive, self._given_up, voxel, max_points
            )
            self._geometry_sent = (generation, set(alive))
            return view

    # --- queries ---------------------------------------------------------------------------------
    def localize(self, situation: str | bytes, *, wait: bool = True) -> QueryResult:
        """Pose of the agent described by `situation`."""
        situation = clean_text(situation, field="situation", max_chars=self.config.max_text_chars)
        return self._run(lambda model, scene: ("", model.localize(scene, situation), None), wait)

    def ask(
        self, question: str | bytes, situation: str | bytes = "", *, wait: bool = True
    ) -> QueryResult:
        """Answer `question`; with a situation, from that viewpoint (and return its pose)."""
        limit = self.config.max_text_chars
        question = clean_text(question, field="question", max_chars=limit)
        situation = clean_text(situation, field="situation", max_chars=limit, required=False)

        def query(model: SituatedModel, scene: object) -> tuple[str, AgentPose | None, float]:
            answer, pose, probability = model.answer(
                scene, question, situation or DEFAULT_SITUATION
            )
            return answer, pose if situation else None, probability

        return self._run(query, wait)

    def _run(self, query, wait: bool) -> QueryResult:
        if self.model is None:
            raise NotReadyError(self.no_model_reason)
        timeout = self.config.query_timeout_s if wait else 0.0
        if not self._query_lock.acquire(timeout=timeout):
            raise BusyError("busy: another query is running")
        try:
            start = time.perf_counter()
            prefix, cached = self._scene_prefix()
            t_query = time.perf_counter()
            answer, pose, probability = query(self.model, prefix.scene)
            timings = dict(prefix.seconds) if not cached else {}
            timings["query"] = time.perf_counter() - t_query
            latency = time.perf_counter() - start
        finally:
            self._query_lock.release()
        return QueryResult(
            answer=answer,
            pose=pose,
            num_frames=len(prefix.frames),
            first_stamp_ns=prefix.frames[0].stamp_ns,
            last_stamp_ns=prefix.frames[-1].stamp_ns,
            latency_s=latency,
            timings=timings,
            cached=cached,
            confidence=Confidence(probability, prefix.cut3r_confidence, prefix.domain),
        )

    def _scene_prefix(self) -> tuple[_ScenePrefix, bool]:
        """The cached scene prefix, or a new one when the scene moved on enough."""
        if self.worker is not None:  # let queued keyframes finish; else use what is processed
            self.worker.wait_idle(self.config.perception_wait_s)
        frames = self.processed_keyframes()
        if len(frames) < self.config.min_frames:
            queued = len(self.buffer) - len(frames)
            detail = f", {queued} still in CUT3R" if queued else ""
            raise NotReadyError(
                f"no frames yet ({len(frames)} keyframes ready{detail}, need "
                f"{self.config.min_frames})"
            )
        newest = frames[-1].index
        prefix = self._prefix
        if (
            prefix is not None
            and prefix.key[0] == self._generation
            and newest - prefix.built_at_keyframe < self.config.refresh_after_keyframes
        ):
            return prefix, True
        picked = [frames[i] for i in sample_uniform(self.config.num_query_frames, len(frames))]
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        tokens, confidence = self._camera_tokens(picked)
        seconds["cut3r"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        scene = self.model.encode_scene([k.image for k in picked], tokens)
        domain = self.model.domain(scene)
        seconds["encode_scene"] = time.perf_counter() - t1
        key = (self._generation, tuple(k.index for k in picked))
        self._prefix = _ScenePrefix(key, scene, picked, newest, seconds, confidence, domain)
        return self._prefix, False

    def _camera_tokens(self, frames: list[Keyframe]) -> tuple[torch.Tensor | None, float | None]:
        """(T, Cd) CUT3R camera tokens (per the configured mode) and CUT3R's confidence in them.

        The confidence is the median over the frames of each frame's median point confidence
        (CUT3R's are >= 1; higher is surer). Both are None without perception.
        """
        if self.perception is None:
            return None, None
        if self.config.mode == "faithful":
            perceived = self.perception.run_fresh([k.image for k in frames])
        else:
            perceived = [k.perception for k in frames]
        medians = [p.median_confidence for p in perceived if np.isfinite(p.median_confidence)]
        median = float(np.median(medians)) if medians else None
        return torch.stack([p.camera_token for p in perceived]), median
