"""Voice-activity segmentation: energy above an adaptive noise floor, with hangover and pre-roll.

Works on plain float arrays (mono, [-1, 1]) so it has no dependency on the rest of the package.
`StreamingVad` is fed chunks of any size and returns finished utterances; its memory is bounded
by one utterance (at most `max_utterance_s`) plus the pre-roll plus one partial frame, however
long the stream runs. `find_speech` runs the same machine over a whole clip.

A frame is speech when its level is `threshold_db` above the noise floor and above an absolute
`min_level_dbfs`. The floor is the minimum of the smoothed frame level over the last
`floor_window_s` (minimum statistics): pauses between words keep it at the noise level during
speech, and it follows a rising background after one window. An utterance is kept when it
spans `min_speech_s` and holds `min_voiced_s` of voiced frames (low spectral flatness), which
rejects bursts of hiss. `find_speech` starts the floor at a low percentile of the clip's frame
levels, so speech at the very start of a clip is found. With `backend="webrtc"` (or
"auto" and the `webrtcvad` package installed) WebRTC's classifier replaces the energy rule for
frames above `min_level_dbfs`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from loc3r.speech.errors import SpeechBackendError, SpeechInputError

_LEVEL_FLOOR_DB = -100.0
_WEBRTC_RATES = (8000, 16000, 32000, 48000)


@dataclass(frozen=True)
class VadConfig:
    """Parameters of the voice-activity segmenter (times in seconds or milliseconds)."""

    frame_ms: float = 30.0
    threshold_db: float = 12.0  # speech: level above the noise floor by this much
    min_level_dbfs: float = -55.0  # frames quieter than this are never speech
    floor_window_s: float = 5.0  # minimum-statistics window of the noise floor
    smoothing: float = 0.5  # weight of the new frame in the smoothed level used for the floor
    max_flatness: float = 0.3  # spectral flatness below this = voiced (tonal) frame
    min_voiced_s: float = 0.1  # an utterance needs this much voiced speech (rejects hiss)
    initial_floor_dbfs: float | None = None  # floor before any audio; None = first frame level
    hangover_ms: float = 300.0  # keep an utterance open this long after its last speech frame
    pre_roll_ms: float = 200.0  # audio kept before the onset
    min_speech_s: float = 0.25  # shorter bursts (clicks, coughs) are dropped
    max_utterance_s: float = 30.0  # longer speech is cut into pieces of at most this length
    backend: Literal["energy", "webrtc", "auto"] = "energy"
    webrtc_mode: int = 2  # webrtcvad aggressiveness 0..3

    def __post_init__(self) -> None:
        if self.frame_ms <= 0 or self.hangover_ms < 0 or self.pre_roll_ms < 0:
            raise ValueError("frame_ms must be > 0, hangover_ms and pre_roll_ms >= 0")
        if self.max_utterance_s <= self.min_speech_s:
            raise ValueError("max_utterance_s must be larger than min_speech_s")
        if self.backend not in ("energy", "webrtc", "auto"):
            raise ValueError(f"unknown VAD backend {self.backend!r}")


@dataclass
class SpeechSegment:
    """One utterance: samples [start, end) of the stream (pre-roll and hangover included)."""

    start: int
    end: int
    samples: np.ndarray
    sample_rate: int
    forced_cut: bool = False  # ended because it reached max_utterance_s, speech continues

    @property
    def start_s(self) -> float:
        """Start time in seconds from the beginning of the stream."""
        return self.start / self.sample_rate

    @property
    def end_s(self) -> float:
        """End time in seconds from the beginning of the stream."""
        return self.end / self.sample_rate

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return (self.end - self.start) / self.sample_rate


def frame_levels_db(frames: np.ndarray) -> np.ndarray:
    """RMS level in dBFS of each row of `frames` (floored at -100 dB)."""
    power = np.mean(np.square(frames, dtype=np.float64), axis=-1)
    return np.maximum(10.0 * np.log10(power + 1e-12), _LEVEL_FLOOR_DB)


def spectral_flatness(frames: np.ndarray) -> np.ndarray:
    """Geometric over arithmetic mean of each frame's power spectrum (~0.56 hiss, <0.1 vowels)."""
    window = np.hanning(frames.shape[-1])
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2 + 1e-12
    return np.exp(np.mean(np.log(power), axis=-1)) / np.mean(power, axis=-1)


def _webrtc_classifier(config: VadConfig, sample_rate: int) -> Callable[[np.ndarray], bool] | None:
    """WebRTC frame classifier; None for the energy backend; raises if webrtc is missing."""
    if config.backend == "energy":
        return None
    try:
        import webrtcvad
    except ImportError:
        if config.backend == "auto":
            return None
        raise SpeechBackendError(
            "VAD backend 'webrtc' needs the webrtcvad package (pip install webrtcvad)"
        ) from None
    if sample_rate not in _WEBRTC_RATES or config.frame_ms not in (10.0, 20.0, 30.0):
        if config.backend == "auto":
            return None
        raise SpeechBackendError(
            f"webrtcvad needs 10/20/30 ms frames at {_WEBRTC_RATES} Hz, got "
            f"{config.frame_ms} ms at {sample_rate} Hz"
        )
    vad = webrtcvad.Vad(config.webrtc_mode)

    def classify(frame: np.ndarray) -> bool:
        pcm = (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        return bool(vad.is_speech(pcm, sample_rate))

    return classify


class _SlidingMin:
    """Minimum over the last `size` values pushed (monotonic deque, O(1) amortised)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._count = 0
        self._items: deque[tuple[int, float]] = deque()

    def push(self, value: float) -> float:
        while self._items and self._items[-1][1] >= value:
            self._items.pop()
        self._items.append((self._count, value))
        if self._items[0][0] <= self._count - self._size:
            self._items.popleft()
        self._count += 1
        return self._items[0][1]


class StreamingVad:
    """Incremental segmenter: `feed(chunk)` returns the utterances that finished in that chunk."""

    def __init__(self, sample_rate: int, config: VadConfig | None = None) -> None:
        self.config = config or VadConfig()
        if not 1000 <= sample_rate <= 384000:
            raise SpeechInputError(f"VAD: unsupported sample rate {sample_rate} Hz")
        self.sample_rate = sample_rate
        cfg = self.config
        self.frame_len = max(1, round(sample_rate * cfg.frame_ms / 1000.0))
        frame_s = self.frame_len / sample_rate
        self._hangover_frames = round(cfg.hangover_ms / 1000.0 / frame_s)
        self._pre_roll_len = round(cfg.pre_roll_ms / 1000.0 * sample_rate)
        self._max_len = max(self.frame_len, int(cfg.max_utterance_s * sample_rate))
        self._min_speech_len = round(cfg.min_speech_s * sample_rate)
        self._min_voiced_len = round(cfg.min_voiced_s * sample_rate)
        self._classify = _webrtc_classifier(cfg, sample_rate)
        self._floor = _SlidingMin(max(1, round(cfg.floor_window_s / frame_s)))
        self._smoothed: float | None = None
        if cfg.initial_floor_dbfs is not None:
            self._floor.push(cfg.initial_floor_dbfs)  # expires after one floor window
        self._pending = np.zeros(0, np.float32)
        self._pre_roll = np.zeros(0, np.float32)
        self._buffer = np.zeros(self._max_len, np.float32)  # the current utterance
        self._fill = 0
        self._in_speech = False
        self._utt_start = 0  # stream index of _buffer[0]
        self._onset: int | None = None  # stream index of the first speech frame in the buffer
        self._speech_end = 0  # stream index just after the last speech frame
        self._continued = False  # the utterance continues one cut at max_utterance_s
        self._voiced = 0  # samples of voiced speech frames in the utterance
        self._silent_frames = 0
        self._position = 0  # stream index of the next frame to process

    @property
    def buffered_samples(self) -> int:
        """Samples held right now (utterance + pre-roll + partial frame): bounded by design."""
        return self._fill + len(self._pre_roll) + len(self._pending)

    @property
    def max_buffered_samples(self) -> int:
        """Upper bound of `buffered_samples`."""
        return self._max_len + self._pre_roll_len + self.frame_len

    @property
    def in_speech(self) -> bool:
        """True while an utterance is open."""
        return self._in_speech

    def feed(self, chunk: np.ndarray) -> list[SpeechSegment]:
        """Process a chunk of mono float samples; return the utterances it completed."""
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(chunk)):
            raise SpeechInputError("VAD: audio contains NaN or infinite samples")
        data = np.concatenate([self._pending, chunk]) if len(self._pending) else chunk
        n_frames = len(data) // self.frame_len
        used = n_frames * self.frame_len
        self._pending = data[used:].copy()
        frames = data[:used].reshape(n_frames, self.frame_len)
        levels = frame_levels_db(frames)
        voiced = spectral_flatness(frames) < self.config.max_flatness
        done: list[SpeechSegment] = []
        for frame, level, tonal in zip(frames, levels, voiced, strict=True):
            segment = self._step(frame, float(level), bool(tonal))
            if segment is not None:
                done.append(segment)
        return done

    def flush(self) -> list[SpeechSegment]:
        """End of stream: close the open utterance (if long enough) and reset."""
        done: list[SpeechSegment] = []
        if self._in_speech:
            tail = self._pending[: self._max_len - self._fill]
            self._buffer[self._fill : self._fill + len(tail)] = tail
            self._fill += len(tail)
            segment = self._close(forced=False)
            if segment is not None:
                done.append(segment)
        self._position += len(self._pending)
        self._pending = np.zeros(0, np.float32)
        self._pre_roll = np.zeros(0, np.float32)
        return done

    def _is_speech(self, frame: np.ndarray, level: float) -> bool:
        smoothed = level if self._smoothed is None else self._smoothed
        smoothed += self.config.smoothing * (level - smoothed)
        self._smoothed = smoothed
        floor = self._floor.push(smoothed)
        if level < self.config.min_level_dbfs:
            return False
        if self._classify is not None:
            return self._classify(frame)
        return level >= floor + self.config.threshold_db

    def _step(self, frame: np.ndarray, level: float, tonal: bool) -> SpeechSegment | None:
        speech = self._is_speech(frame, level)
        start = self._position
        self._position += len(frame)
        segment = None
        if not self._in_speech:
            if not speech:
                if self._pre_roll_len:
                    kept = np.concatenate([self._pre_roll, frame])
                    self._pre_roll = kept[-self._pre_roll_len :]
                return None
            pre = self._pre_roll[max(0, len(self._pre_roll) - (self._max_len - len(frame))) :]
            self._pre_roll = np.zeros(0, np.float32)
            self._buffer[: len(pre)] = pre
            self._open(start - len(pre), continued=False)
            self._fill = len(pre)
        elif self._fill + len(frame) > self._max_len:
            segment = self._close(forced=True)
            self._open(start, continued=True)
        self._buffer[self._fill : self._fill + len(frame)] = frame
        self._fill += len(frame)
        if speech:
            if self._onset is None:
                self._onset = start
            self._voiced += len(frame) if tonal else 0
            self._speech_end = start + len(frame)
            self._silent_frames = 0
        else:
            self._silent_frames += 1
            if self._silent_frames > self._hangover_frames:
                return self._close(forced=False)
        return segment

    def _open(self, start: int, continued: bool) -> None:
        """Start an utterance whose buffer begins at stream index `start`."""
        self._in_speech = True
        self._utt_start = start
        self._fill = 0
        self._onset = None
        self._voiced = 0
        self._continued = continued
        self._silent_frames = 0

    def _close(self, forced: bool) -> SpeechSegment | None:
        """Emit the buffered utterance if it holds enough speech; go idle."""
        speech_len = 0 if self._onset is None else self._speech_end - self._onset
        long_enough = speech_len >= self._min_speech_len or forced or self._continued
        keep = self._onset is not None and long_enough and self._voiced >= self._min_voiced_len
        segment = None
        if keep:
            samples = self._buffer[: self._fill].copy()
            start = self._utt_start
            segment = SpeechSegment(start, start + self._fill, samples, self.sample_rate, forced)
        self._fill = 0
        self._in_speech = False
        self._onset = None
        self._silent_frames = 0
        return segment


def find_speech(
    samples: np.ndarray, sample_rate: int, config: VadConfig | None = None
) -> list[SpeechSegment]:
    """All utterances of a whole clip (same machine as `StreamingVad`, then flushed)."""
    cfg = config or VadConfig()
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if cfg.initial_floor_dbfs is None:
        frame_len = max(1, round(sample_rate * cfg.frame_ms / 1000.0))
        n_frames = len(samples) // frame_len
        if n_frames:
            levels = frame_levels_db(samples[: n_frames * frame_len].reshape(n_frames, frame_len))
            cfg = replace(cfg, initial_floor_dbfs=float(np.percentile(levels, 10)))
    vad = StreamingVad(sample_rate, cfg)
    return vad.feed(samples) + vad.flush()
