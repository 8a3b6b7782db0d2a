"""Speech recognisers: PocketSphinx with a domain language model, Whisper via transformers.

Both take an `AudioClip` (resampled to 16 kHz here if needed) and return a `Transcript`.
PocketSphinx runs on a CPU in a fraction of real time; its generic English LM is replaced by an
n-gram model of the situation / question corpus (`corpus.py`, `lm.py`), which is what makes it
usable. Whisper is optional: it needs `transformers` and a model directory on disk.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from loc3r.speech.audio import ASR_RATE, AudioClip, resample
from loc3r.speech.corpus import Corpus, CorpusConfig, build_corpus, normalise
from loc3r.speech.errors import SpeechBackendError
from loc3r.speech.lm import LanguageModel, LmConfig, build_language_model


@dataclass(frozen=True)
class Transcript:
    """What a recogniser heard."""

    text: str
    confidence: float | None  # in [0, 1] where the backend gives one, else None
    backend: str


@runtime_checkable
class SpeechRecognizer(Protocol):
    """Anything that turns a clip into a transcript."""

    def transcribe(self, clip: AudioClip) -> Transcript:
        """Recognise the speech in `clip`."""
        ...


@dataclass(frozen=True)
class PocketSphinxConfig:
    """PocketSphinx model files and the domain language model."""

    acoustic_model: str | None = None  # directory; None = the en-us model bundled with the wheel
    cmudict: str | None = None  # pronunciation source; None = the bundled CMUdict
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    extra_sentences: tuple[str, ...] = ()  # more domain sentences for the LM
    lm: LmConfig = field(default_factory=LmConfig)
    lm_dir: str | None = None  # where domain.arpa / domain.dict are written; None = temp dir
    language_weight: float | None = None  # decoder "lw"; None = PocketSphinx default
    beam: float | None = None  # decoder "beam"; None = default
    # Gaussian noise added before decoding, in dB relative to the clip's RMS level (None: off).
    # PocketSphinx's front end breaks down on digital silence (exact zeros between words, as
    # synthesisers and noise gates produce): on espeak-ng speech the WER drops from ~47% to ~3%
    # with this floor. Microphone audio already has a noise floor of this order.
    comfort_noise_db: float | None = -25.0
    noise_seed: int = 0


class PocketSphinxRecognizer:
    """CMU PocketSphinx 5 decoder with the bundled en-us acoustic model and a domain n-gram LM."""

    backend = "pocketsphinx"

    def __init__(self, config: PocketSphinxConfig | None = None, corpus: Corpus | None = None):
        """Build the domain LM from `corpus` (default: `build_corpus(config.corpus)`)."""
        self.config = cfg = config or PocketSphinxConfig()
        try:
            import pocketsphinx
        except ImportError:
            raise SpeechBackendError(
                "the pocketsphinx backend needs the pocketsphinx package (pip install pocketsphinx)"
            ) from None
        model_root = Path(pocketsphinx.get_model_path())
        hmm = Path(cfg.acoustic_model) if cfg.acoustic_model else model_root / "en-us" / "en-us"
        cmudict = Path(cfg.cmudict) if cfg.cmudict else model_root / "en-us" / "cmudict-en-us.dict"
        for path, what in (
            (hmm, "acoustic model directory"),
            (cmudict, "pronunciation dictionary"),
        ):
            if not path.exists():
                raise SpeechBackendError(f"PocketSphinx {what} not found: {path}")
        corpus = corpus if corpus is not None else build_corpus(cfg.corpus)
        sentences = corpus.sentences() + [normalise(s) for s in cfg.extra_sentences]
        if cfg.lm_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="loc3r_lm_")
            lm_dir = Path(self._tmp.name)
        else:
            lm_dir = Path(cfg.lm_dir)
        self.language_model: LanguageModel = build_language_model(
            sentences, lm_dir, cmudict, cfg.lm
        )
        options: dict[str, Any] = {
            "hmm": str(hmm),
            "lm": str(self.language_model.arpa_path),
            "dict": str(self.language_model.dict_path),
            "samprate": ASR_RATE,
            "loglevel": "FATAL",
        }
        if cfg.language_weight is not None:
            options["lw"] = cfg.language_weight
        if cfg.beam is not None:
            options["beam"] = cfg.beam
        self._lock = threading.Lock()  # one decoder: one utterance at a time
        try:
            self._decoder = pocketsphinx.Decoder(**options)
        except (RuntimeError, ValueError) as exc:
            raise SpeechBackendError(f"PocketSphinx failed to start: {exc}") from None

    @property
    def vocabulary(self) -> list[str]:
        """Words the recogniser can output."""
        return self.language_model.vocabulary

    def transcribe(self, clip: AudioClip) -> Transcript:
        """Decode the whole clip as one utterance."""
        clip16 = resample(clip, ASR_RATE)
        samples = clip16.samples
        if self.config.comfort_noise_db is not None and len(samples):
            level = clip16.rms() * 10.0 ** (self.config.comfort_noise_db / 20.0)
            rng = np.random.default_rng(self.config.noise_seed)
            samples = samples + rng.normal(0.0, level, len(samples)).astype(np.float32)
        pcm = AudioClip(samples, ASR_RATE).to_pcm16()
        decoder = self._decoder
        with self._lock:
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
            hyp = decoder.hyp()
            text = " ".join(hyp.hypstr.split()) if hyp is not None else ""
            # Confidence: mean lattice posterior of the recognised words (no fillers, silences).
            posteriors = [
                min(1.0, max(0.0, float(seg.prob)))
                for seg in (decoder.seg() if text else [])
                if not _is_filler(seg.word)
            ]
        if not text:
            return Transcript("", 0.0, self.backend)
        confidence = float(np.mean(posteriors)) if posteriors else 0.0
        return Transcript(text, confidence, self.backend)


def _is_filler(word: str) -> bool:
    """Sentence markers, silence and noise tokens of a PocketSphinx segmentation."""
    return word in ("<s>", "</s>", "<sil>") or word.startswith(("[", "+"))


@dataclass(frozen=True)
class WhisperConfig:
    """A Whisper checkpoint in a local directory (transformers format)."""

    model_dir: str = ""
    device: str = "cpu"  # "cpu", "cuda", "cuda:0", ...
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    language: str | None = "en"


class WhisperRecognizer:
    """transformers "automatic-speech-recognition" pipeline over a local Whisper model."""

    backend = "whisper"

    def __init__(self, config: WhisperConfig) -> None:
        self.config = config
        model_dir = Path(config.model_dir).expanduser() if config.model_dir else None
        if model_dir is None or not model_dir.is_dir():
            raise SpeechBackendError(
                f"Whisper model directory not found: {config.model_dir!r} "
                "(download a checkpoint, e.g. openai/whisper-small, and set model_dir)"
            )
        if not (model_dir / "config.json").is_file():
            raise SpeechBackendError(f"{model_dir} is not a transformers model (no config.json)")
        try:
            import torch
            from transformers import pipeline
        except ImportError as exc:
            raise SpeechBackendError(
                f"the whisper backend needs torch and transformers: {exc}"
            ) from None
        kwargs: dict[str, Any] = {}
        if config.language:
            kwargs["generate_kwargs"] = {"language": config.language, "task": "transcribe"}
        self._generate_kwargs = kwargs
        try:
            self._pipe = pipeline(
                "automatic-speech-recognition",
                model=str(model_dir),
                device=config.device,
                dtype=getattr(torch, config.dtype),
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise SpeechBackendError(f"cannot load Whisper from {model_dir}: {exc}") from None

    def transcribe(self, clip: AudioClip) -> Transcript:
        """Transcribe the clip (confidence is not available from the pipeline: None)."""
        clip16 = resample(clip, ASR_RATE)
        audio = {"raw": clip16.samples, "sampling_rate": ASR_RATE}
        result = self._pipe(audio, **self._generate_kwargs)
        return Transcript(" ".join(str(result["text"]).split()), None, self.backend)


@dataclass(frozen=True)
class AsrConfig:
    """Which recogniser to build, and its settings."""

    backend: Literal["pocketsphinx", "whisper"] = "pocketsphinx"
    pocketsphinx: PocketSphinxConfig = field(default_factory=PocketSphinxConfig)
    whisper: WhisperConfig = field(default_factory=WhisperConfig)


def make_recognizer(config: AsrConfig | None = None) -> SpeechRecognizer:
    """The recogniser named by `config.backend`."""
    cfg = config or AsrConfig()
    if cfg.backend == "pocketsphinx":
        return PocketSphinxRecognizer(cfg.pocketsphinx)
    if cfg.backend == "whisper":
        return WhisperRecognizer(cfg.whisper)
    raise SpeechBackendError(f"unknown speech recognition backend {cfg.backend!r}")
