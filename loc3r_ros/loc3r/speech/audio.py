"""Audio clips: raw bytes to float mono, resampling to 16 kHz, and checks that reject bad audio.

`decode_audio` is the entry point for audio from outside (a ROS message, a file): it converts,
validates and resamples, and raises `SpeechInputError` with a message a user can act on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.signal import resample_poly

from loc3r.speech.errors import SpeechInputError
from loc3r.speech.vad import VadConfig, find_speech

SAMPLE_FORMATS: dict[str, tuple[str, int]] = {
    "S16LE": ("<i2", 2),
    "F32LE": ("<f4", 4),
    "U8": ("u1", 1),
}
ASR_RATE = 16000


@dataclass
class AudioClip:
    """Mono float32 samples (nominally in [-1, 1]) at `sample_rate` Hz."""

    samples: np.ndarray
    sample_rate: int

    def __post_init__(self) -> None:
        self.samples = np.ascontiguousarray(self.samples, dtype=np.float32).reshape(-1)
        self.sample_rate = int(self.sample_rate)
        if self.sample_rate <= 0:
            raise SpeechInputError(f"sample rate must be positive, got {self.sample_rate} Hz")

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate

    def rms(self) -> float:
        """Root-mean-square level (0 for an empty clip)."""
        if len(self.samples) == 0:
            return 0.0
        return float(np.sqrt(np.mean(np.square(self.samples, dtype=np.float64))))

    def to_pcm16(self) -> bytes:
        """Little-endian signed 16-bit PCM of the samples (clipped to [-1, 1])."""
        return (np.clip(self.samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


@dataclass(frozen=True)
class AudioConfig:
    """Limits applied by `validate_clip` (and `decode_audio`)."""

    min_duration_s: float = 0.3
    max_duration_s: float = 30.0
    min_sample_rate: int = 8000
    max_sample_rate: int = 96000
    silence_rms: float = 1e-3  # about -60 dBFS: quieter clips are "silence"
    clip_level: float = 0.999  # |sample| at or above this counts as full scale
    max_clipped_fraction: float = 0.01
    require_speech: bool = True  # run the VAD and reject clips without an utterance
    target_rate: int = ASR_RATE
    vad: VadConfig = field(default_factory=VadConfig)


def clip_from_bytes(data: bytes, sample_format: str, channels: int, sample_rate: int) -> AudioClip:
    """Interleaved raw audio to a mono float clip (channels averaged, values clipped to [-1, 1]).

    NaN and infinite float samples are kept, for `validate_clip` to report.
    """
    if sample_format not in SAMPLE_FORMATS:
        raise SpeechInputError(
            f"unsupported sample format {sample_format!r} (use one of {', '.join(SAMPLE_FORMATS)})"
        )
    if channels < 1:
        raise SpeechInputError(f"channel count must be >= 1, got {channels}")
    dtype, width = SAMPLE_FORMATS[sample_format]
    frame_size = width * channels
    if len(data) % frame_size:
        raise SpeechInputError(
            f"audio byte length {len(data)} is not a multiple of the frame size {frame_size} "
            f"({channels} channel(s) of {sample_format})"
        )
    raw = np.frombuffer(data, dtype=dtype)
    if sample_format == "S16LE":
        samples = raw.astype(np.float32) / 32768.0
    elif sample_format == "U8":
        samples = (raw.astype(np.float32) - 128.0) / 128.0
    else:
        samples = raw.astype(np.float32)
    samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float64).astype(np.float32)
    with np.errstate(invalid="ignore"):
        samples = np.clip(samples, -1.0, 1.0)
    return AudioClip(samples, sample_rate)


def resample(clip: AudioClip, rate: int = ASR_RATE) -> AudioClip:
    """Polyphase resampling (scipy `resample_poly`, anti-aliased) to `rate` Hz."""
    if clip.sample_rate == rate:
        return clip
    g = math.gcd(clip.sample_rate, rate)
    out = resample_poly(clip.samples.astype(np.float64), rate // g, clip.sample_rate // g)
    return AudioClip(np.clip(out, -1.0, 1.0).astype(np.float32), rate)


def validate_clip(clip: AudioClip, config: AudioConfig | None = None) -> None:
    """Raise `SpeechInputError` saying what is wrong with `clip`, or return if it is usable."""
    cfg = config or AudioConfig()
    x = clip.samples
    if len(x) == 0:
        raise SpeechInputError("no audio received (the clip is empty)")
    if not np.all(np.isfinite(x)):
        raise SpeechInputError("audio contains NaN or infinite samples")
    if not cfg.min_sample_rate <= clip.sample_rate <= cfg.max_sample_rate:
        raise SpeechInputError(
            f"unsupported sample rate {clip.sample_rate} Hz "
            f"(supported: {cfg.min_sample_rate}-{cfg.max_sample_rate} Hz)"
        )
    if clip.duration_s < cfg.min_duration_s:
        raise SpeechInputError(
            f"audio too short: {clip.duration_s:.2f} s (at least {cfg.min_duration_s:.1f} s)"
        )
    if clip.duration_s > cfg.max_duration_s:
        raise SpeechInputError(
            f"audio too long: {clip.duration_s:.1f} s (at most {cfg.max_duration_s:.1f} s)"
        )
    clipped = float(np.mean(np.abs(x) >= cfg.clip_level))
    if clipped > cfg.max_clipped_fraction:
        raise SpeechInputError(
            f"audio is clipped: {100 * clipped:.1f}% of samples at full scale "
            "(lower the microphone gain)"
        )
    rms = clip.rms()
    if rms < cfg.silence_rms:
        level = 20 * math.log10(max(rms, 1e-10))
        raise SpeechInputError(f"audio is silent (level {level:.0f} dBFS); nothing was said")
    if cfg.require_speech and not find_speech(x, clip.sample_rate, cfg.vad):
        raise SpeechInputError("no speech found in the audio (only noise or background sound)")


def decode_audio(
    data: bytes,
    sample_format: str,
    channels: int,
    sample_rate: int,
    config: AudioConfig | None = None,
) -> AudioClip:
    """Raw bytes to a validated mono clip at `config.target_rate` (16 kHz by default)."""
    cfg = config or AudioConfig()
    clip = clip_from_bytes(data, sample_format, channels, sample_rate)
    validate_clip(clip, cfg)
    return resample(clip, cfg.target_rate)
