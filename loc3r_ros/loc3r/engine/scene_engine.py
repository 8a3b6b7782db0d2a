"""The scene engine: camera frames in, situated poses and answers out.

Data path: camera -> `add_frame` (KeyframeBuffer, never blocks) -> perception worker (CUT3R per
keyframe) -> scene memory -> `localize` / `ask` (Loc3R-VLM over sampled keyframes) -> results.

The model side is a `ScenePipeline`: anything that turns keyframes plus text into a pose and an
answer. Without one the engine still buffers frames and answers every query with a clear
"no model loaded" error, so the ROS layer can be exercised on its own.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from loc3r.engine.frame_buffer import Keyframe, KeyframeBuffer, KeyframeConfig
from loc3r.errors import BusyError, NotReadyError
from loc3r.text_input import DEFAULT_MAX_CHARS, clean_text

DEFAULT_SITUATION = "I am standing in the room"


@dataclass
class EngineConfig:
    """Scene engine settings (the ROS node fills it from its parameters)."""

    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    max_text_chars: int = DEFAULT_MAX_CHARS  # longest question/situation accepted
    min_frames: int = 1  # keyframes needed before a query is answered
    query_timeout_s: float = 30.0  # how long a query waits for the model lock before "busy"


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
class QueryResult:
    """What a localize/ask query returns."""

    answer: str  # "" for localize
    pose: AgentPose | None  # None when no situation was given to ask()
    num_frames: int
    first_stamp_ns: int
    last_stamp_ns: int
    latency_s: float
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds


class ScenePipeline(Protocol):
    """The model side of the engine (CUT3R + Loc3R-VLM, or a test double)."""

    def localize(self, keyframes: list[Keyframe], situation: str) -> AgentPose:
        """Estimate the pose of the agent the situation describes."""
        ...

    def ask(
        self, keyframes: list[Keyframe], question: str, situation: str
    ) -> tuple[str, AgentPose]:
        """Answer the question from the situation; also return the situated pose."""
        ...


class SceneEngine:
    """Buffers keyframes and serves situated queries one at a time."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        pipeline: ScenePipeline | None = None,
        no_model_reason: str = "no model loaded",
    ) -> None:
        self.config = config or EngineConfig()
        self.buffer = KeyframeBuffer(self.config.keyframes)
        self.pipeline = pipeline
        self.no_model_reason = no_model_reason
        self._query_lock = threading.Lock()

    def add_frame(self, image: np.ndarray, stamp_ns: int) -> bool:
        """Offer an RGB uint8 frame; True if it became a keyframe (InputError if malformed)."""
        return self.buffer.offer(image, stamp_ns) is not None

    def reset(self) -> None:
        """Forget the scene (keyframes and everything derived from them)."""
        self.buffer.clear()

    def localize(self, situation: str | bytes, *, wait: bool = True) -> QueryResult:
        """Pose of the agent described by `situation`."""
        situation = clean_text(situation, field="situation", max_chars=self.config.max_text_chars)
        return self._run(lambda p, kf: ("", p.localize(kf, situation)), wait)

    def ask(
        self, question: str | bytes, situation: str | bytes = "", *, wait: bool = True
    ) -> QueryResult:
        """Answer `question`; with a situation, from that viewpoint (and return its pose)."""
        limit = self.config.max_text_chars
        question = clean_text(question, field="question", max_chars=limit)
        situation = clean_text(situation, field="situation", max_chars=limit, required=False)

        def query(p: ScenePipeline, kf: list[Keyframe]) -> tuple[str, AgentPose | None]:
            answer, pose = p.ask(kf, question, situation or DEFAULT_SITUATION)
            return answer, pose if situation else None

        return self._run(query, wait)

    def _run(self, query, wait: bool) -> QueryResult:
        if self.pipeline is None:
            raise NotReadyError(self.no_model_reason)
        keyframes = self.buffer.snapshot()
        if len(keyframes) < self.config.min_frames:
            raise NotReadyError(
                f"no frames yet ({len(keyframes)} keyframes, need {self.config.min_frames})"
            )
        timeout = self.config.query_timeout_s if wait else 0.0
        if not self._query_lock.acquire(timeout=timeout):
            raise BusyError("busy: another query is running")
        try:
            start = time.perf_counter()
            answer, pose = query(self.pipeline, keyframes)
            latency = time.perf_counter() - start
        finally:
            self._query_lock.release()
        return QueryResult(
            answer=answer,
            pose=pose,
            num_frames=len(keyframes),
            first_stamp_ns=keyframes[0].stamp_ns,
            last_stamp_ns=keyframes[-1].stamp_ns,
            latency_s=latency,
        )
