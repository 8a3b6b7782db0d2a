"""Text validation, keyframe selection and the engine's behaviour without a model."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest

from loc3r.engine import AgentPose, EngineConfig, KeyframeBuffer, KeyframeConfig, SceneEngine
from loc3r.errors import BusyError, InputError, NotReadyError
from loc3r.text_input import clean_text

SEC = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "question is empty"),
        ("  \n\t ", "question is empty"),
        (b"\xff\xfe bad", "not valid UTF-8"),
        ("x" * 2001, "too long: 2001 characters (limit 2000)"),
        ("ok\x00then", "control character (U+0000)"),
        ("lone \ud800 surrogate", "lone surrogate"),
        (42, "must be text"),
    ],
)
def test_clean_text_rejects_with_a_reason(text, reason):
    with pytest.raises(InputError, match=re.escape(reason)):
        clean_text(text, field="question")


def test_clean_text_normalises_whitespace_and_unicode():
    assert clean_text(" What is\non my  left? ", field="q") == "What is on my left?"
    assert clean_text("cafe\u0301".encode(), field="q") == "caf\u00e9"
    assert clean_text("", field="situation", required=False) == ""


def frame(value: int) -> np.ndarray:
    img = np.zeros((32, 48, 3), np.uint8)
    img[:, : (value % 48) + 1] = 200
    return img


def test_keyframes_need_time_and_motion():
    buf = KeyframeBuffer(KeyframeConfig(min_interval_s=0.5, max_interval_s=3.0, min_change=0.05))
    still = frame(10)
    assert buf.offer(still, 0) is not None
    assert buf.offer(frame(40), SEC // 4) is None  # too soon
    assert buf.offer(still, SEC) is None  # no motion
    assert buf.offer(frame(40), SEC) is not None  # motion after the interval
    assert buf.offer(frame(40), 5 * SEC) is None  # max interval, but a copy of the last one
    assert buf.offer(frame(43), 6 * SEC) is not None  # max interval: small changes count
    assert [k.index for k in buf.snapshot()] == [0, 1, 2]
    assert buf.duplicates == 1


def test_a_still_camera_keeps_one_keyframe_not_copies():
    rng = np.random.default_rng(0)
    view = rng.integers(0, 256, (120, 160, 3)).astype(np.uint8)
    noisy = lambda: np.clip(view + rng.normal(0, 3.0, view.shape), 0, 255).astype(np.uint8)  # noqa: E731
    buf = KeyframeBuffer(KeyframeConfig(min_interval_s=0.25, max_interval_s=2.0))
    for i in range(600):  # five minutes at 2 Hz of one view with sensor noise
        buf.offer(noisy(), i * SEC // 2)
    assert len(buf) == 1 and buf.duplicates > 100
    every = KeyframeBuffer(KeyframeConfig(max_interval_s=2.0, duplicate_change=0.0))
    for i in range(20):  # duplicate_change=0: one every max_interval_s, as before
        every.offer(noisy(), i * SEC // 2)
    assert len(every) == 5


def test_capacity_bounds_memory_and_keeps_newest_and_coverage():
    buf = KeyframeBuffer(KeyframeConfig(min_interval_s=0.0, min_change=0.0, capacity=8))
    for i in range(1000):
        buf.offer(frame(i), i * SEC)
    frames = buf.snapshot()
    assert 4 <= len(frames) <= 8
    assert frames[-1].stamp_ns == 999 * SEC
    stamps = np.array([f.stamp_ns for f in frames], dtype=np.float64)
    gaps = np.diff(stamps)
    assert gaps.max() <= 2.5 * gaps.min()  # thinning keeps roughly uniform coverage


def test_time_going_backwards_starts_a_new_scene():
    buf = KeyframeBuffer(KeyframeConfig(min_interval_s=0.0, min_change=0.0))
    buf.offer(frame(1), 10 * SEC)
    buf.offer(frame(2), 11 * SEC)
    buf.offer(frame(3), 5 * SEC)
    assert [k.stamp_ns for k in buf.snapshot()] == [5 * SEC]


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((32, 32), np.uint8),
        np.zeros((32, 32, 3), np.float32),
        np.zeros((4, 4, 3), np.uint8),
    ],
)
def test_malformed_images_are_counted_and_rejected(bad):
    buf = KeyframeBuffer()
    with pytest.raises(InputError):
        buf.offer(bad, 0)
    assert buf.rejected_invalid == 1 and len(buf) == 0


class SlowPipeline:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()

    def encode_scene(self, images, camera_tokens):
        assert camera_tokens is None  # no perception stage in these tests
        return len(images)

    def localize(self, scene, situation):
        self.started.set()
        self.release.wait(5)
        return AgentPose(1.0, 2.0, 0.5, 0.1, 0.2, 0.05)

    def answer(self, scene, question, situation):
        return f"{scene} frames; {situation}", self.localize(scene, situation), 0.5

    def domain(self, scene):
        return None  # no domain model


def test_engine_reports_missing_model_and_frames():
    engine = SceneEngine(EngineConfig(), model=None)
    with pytest.raises(NotReadyError, match="no model loaded"):
        engine.ask("What is here?")
    engine = SceneEngine(EngineConfig(), model=SlowPipeline())
    with pytest.raises(NotReadyError, match="no frames yet"):
        engine.localize("I am on the bed")


def test_engine_serialises_queries_and_says_busy():
    pipeline = SlowPipeline()
    engine = SceneEngine(EngineConfig(query_timeout_s=0.05), model=pipeline)
    engine.add_frame(frame(3), 0)
    results = []
    worker = threading.Thread(target=lambda: results.append(engine.localize("I am on the bed")))
    worker.start()
    assert pipeline.started.wait(5)
    with pytest.raises(BusyError, match="busy"):
        engine.ask("What is on my left?", "I am on the bed")
    pipeline.release.set()
    worker.join(5)
    (result,) = results
    assert result.pose.x == 1.0 and result.num_frames == 1
    assert result.pose.position_sigma == pytest.approx(np.sqrt((0.01 + 0.04) / 2))
    answer = engine.ask("What is on my left?")
    assert answer.answer == "1 frames; I am standing in the room" and answer.pose is None


def test_keyframes_are_stored_downscaled():
    buf = KeyframeBuffer(KeyframeConfig(max_side=64, duplicate_change=0.0))
    big = np.zeros((480, 640, 3), np.uint8)
    keyframe = buf.offer(big, 0)
    assert keyframe.image.shape == (48, 64, 3)
    small = np.zeros((20, 30, 3), np.uint8)
    assert buf.offer(small, 10 * SEC).image.shape == (20, 30, 3)


def test_lazy_full_decode_only_for_keyframes():
    buf = KeyframeBuffer(KeyframeConfig(min_interval_s=0.5, max_side=512, duplicate_change=0.0))
    calls = []

    def full(value):
        def load():
            calls.append(value)
            return np.full((96, 128, 3), value, np.uint8)

        return load

    preview = np.full((6, 8, 3), 10, np.uint8)  # a 1/16 decode: smaller than a frame may be
    assert buf.offer(preview, 0, full(10)).image.shape == (96, 128, 3)
    assert buf.offer(preview, SEC // 10, full(20)) is None  # too soon: never decoded
    assert calls == [10]
    with pytest.raises(InputError):
        buf.offer(preview, 5 * SEC, lambda: np.zeros((4, 4, 3), np.uint8))
    assert buf.rejected_invalid == 1
