"""Speech synthesis of answers: espeak-ng (default) or Piper, both run as subprocesses.

The text goes to the program on stdin (never on the command line, so it cannot be read as an
option), and the WAV it writes is parsed with the `wave` module into an `AudioClip`.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from loc3r.errors import InputError
from loc3r.speech.audio import AudioClip
from loc3r.speech.errors import SpeechBackendError, SpeechInputError
from loc3r.text_input import clean_text

DEFAULT_MAX_CHARS = 1000


@runtime_checkable
class SpeechSynthesizer(Protocol):
    """Anything that speaks text."""

    def synthesize(self, text: str) -> AudioClip:
        """Audio of `text` spoken."""
        ...


def parse_wav(data: bytes) -> AudioClip:
    """A PCM WAV (8/16/32-bit, any channel count) to a mono float clip.

    Tolerates the 'unknown length' header that programs streaming to stdout write.
    """
    try:
        with wave.open(io.BytesIO(data)) as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise SpeechBackendError(f"synthesiser output is not a readable WAV: {exc}") from None
    dtypes = {1: "u1", 2: "<i2", 4: "<i4"}
    if width not in dtypes:
        raise SpeechBackendError(f"unsupported WAV sample width {width} bytes")
    usable = len(frames) // (width * channels) * width * channels
    raw = np.frombuffer(frames[:usable], dtype=dtypes[width]).astype(np.float64)
    scale = {1: 128.0, 2: 32768.0, 4: 2147483648.0}[width]
    samples = (raw - 128.0) / scale if width == 1 else raw / scale
    return AudioClip(samples.reshape(-1, channels).mean(axis=1), rate)


def _run(command: list[str], text: str, timeout_s: float, name: str) -> bytes:
    """Run a synthesiser with `text` on stdin; its stdout, or a SpeechBackendError."""
    try:
        done = subprocess.run(
            command, input=text.encode("utf-8"), capture_output=True, timeout=timeout_s, check=False
        )
    except FileNotFoundError:
        raise SpeechBackendError(f"{name} is not installed ({command[0]} not found)") from None
    except subprocess.TimeoutExpired:
        raise SpeechBackendError(f"{name} did not finish within {timeout_s:.0f} s") from None
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip()[-300:]
        raise SpeechBackendError(f"{name} failed (exit code {done.returncode}): {detail}")
    return done.stdout


def _check_text(text: str, max_chars: int) -> str:
    """Cleaned text to speak; SpeechInputError when empty, too long or not text."""
    try:
        return clean_text(text, field="text to speak", max_chars=max_chars)
    except InputError as exc:
        raise SpeechInputError(str(exc)) from None


def _espeak_voices(executable: str, listing: str) -> set[str]:
    """Lowercase language codes, names and file names of espeak-ng voices (empty on failure)."""
    try:
        out = subprocess.run([executable, listing], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return set()
    names: set[str] = set()
    for line in out.stdout.decode("utf-8", "replace").splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5:
            names |= {cols[1].lower(), cols[3].lower(), cols[4].lower()}
            names.add(cols[4].rsplit("/", 1)[-1].lower())
    return names


@dataclass(frozen=True)
class EspeakConfig:
    """espeak-ng voice settings."""

    voice: str = "en-us"  # see `espeak-ng --voices=en`; variants like "en-us+f3" work too
    speed_wpm: int = 160
    pitch: int | None = None  # 0..99, None = voice default
    executable: str = "espeak-ng"
    max_chars: int = DEFAULT_MAX_CHARS
    timeout_s: float = 30.0


class EspeakSynthesizer:
    """espeak-ng: small, fast, robotic; available as a Debian package."""

    def __init__(self, config: EspeakConfig | None = None) -> None:
        self.config = config or EspeakConfig()
        if shutil.which(self.config.executable) is None:
            raise SpeechBackendError(
                f"espeak-ng is not installed ({self.config.executable!r} not on PATH; "
                "apt-get install espeak-ng)"
            )
        if not 80 <= self.config.speed_wpm <= 500:
            raise ValueError(f"speed_wpm must be in 80..500, got {self.config.speed_wpm}")
        self._check_voice()

    def _check_voice(self) -> None:
        """espeak-ng silently falls back to its default voice: reject unknown names up front."""
        base, _, variant = self.config.voice.lower().partition("+")
        for name, listing in ((base, "--voices"), (variant, "--voices=variant")):
            if not name:
                continue
            known = _espeak_voices(self.config.executable, listing)
            if known and name not in known:
                raise SpeechBackendError(
                    f"unknown espeak-ng voice {self.config.voice!r} (see espeak-ng {listing})"
                )

    def synthesize(self, text: str) -> AudioClip:
        """Speak `text`; raises SpeechInputError for empty or over-long text."""
        cfg = self.config
        text = _check_text(text, cfg.max_chars)
        command = [cfg.executable, "--stdout", "-v", cfg.voice, "-s", str(cfg.speed_wpm)]
        if cfg.pitch is not None:
            command += ["-p", str(cfg.pitch)]
        return parse_wav(_run(command, text, cfg.timeout_s, "espeak-ng"))


@dataclass(frozen=True)
class PiperConfig:
    """Piper neural TTS: the program and an .onnx voice (with its .onnx.json next to it)."""

    model_path: str = ""
    executable: str = "piper"
    speaker: int | None = None
    max_chars: int = DEFAULT_MAX_CHARS
    timeout_s: float = 60.0


class PiperSynthesizer:
    """Piper (https://github.com/rhasspy/piper), optional, better sounding than espeak-ng."""

    def __init__(self, config: PiperConfig) -> None:
        self.config = config
        if shutil.which(config.executable) is None:
            raise SpeechBackendError(
                f"piper is not installed ({config.executable!r} not on PATH; pip install piper-tts)"
            )
        if not config.model_path or not Path(config.model_path).is_file():
            raise SpeechBackendError(f"Piper voice model not found: {config.model_path!r}")

    def synthesize(self, text: str) -> AudioClip:
        """Speak `text` with the configured voice."""
        cfg = self.config
        text = _check_text(text, cfg.max_chars)
        with tempfile.TemporaryDirectory(prefix="loc3r_piper_") as tmp:
            out = Path(tmp) / "speech.wav"
            command = [cfg.executable, "--model", cfg.model_path, "--output_file", str(out)]
            if cfg.speaker is not None:
                command += ["--speaker", str(cfg.speaker)]
            _run(command, text, cfg.timeout_s, "piper")
            if not out.is_file():
                raise SpeechBackendError("piper wrote no audio")
            return parse_wav(out.read_bytes())


@dataclass(frozen=True)
class TtsConfig:
    """Which synthesiser to build, and its settings."""

    backend: Literal["espeak", "piper"] = "espeak"
    espeak: EspeakConfig = field(default_factory=EspeakConfig)
    piper: PiperConfig = field(default_factory=PiperConfig)


def make_synthesizer(config: TtsConfig | None = None) -> SpeechSynthesizer:
    """The synthesiser named by `config.backend`."""
    cfg = config or TtsConfig()
    if cfg.backend == "espeak":
        return EspeakSynthesizer(cfg.espeak)
    if cfg.backend == "piper":
        return PiperSynthesizer(cfg.piper)
    raise SpeechBackendError(f"unknown speech synthesis backend {cfg.backend!r}")
