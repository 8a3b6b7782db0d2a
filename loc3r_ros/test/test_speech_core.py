"""Speech core (no ROS): audio checks, VAD, LM, PocketSphinx on espeak-ng speech, split, WER, TTS.

espeak-ng and pocketsphinx are required: tests using them fail (not skip) when they are missing,
since CI installs both.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pocketsphinx
import pytest

from loc3r.scenes.world import CATALOGUE
from loc3r.speech.asr import (
    AsrConfig,
    PocketSphinxRecognizer,
    SpeechRecognizer,
    WhisperConfig,
    WhisperRecognizer,
    make_recognizer,
)
from loc3r.speech.audio import (
    AudioClip,
    AudioConfig,
    clip_from_bytes,
    decode_audio,
    resample,
    validate_clip,
)
from loc3r.speech.corpus import (
    CorpusConfig,
    build_corpus,
    plural,
    question_templates,
    situation_templates,
)
from loc3r.speech.errors import SpeechBackendError, SpeechInputError
from loc3r.speech.lm import BOS, EOS, LmConfig, arpa_text, build_language_model, pronounce
from loc3r.speech.split import split_utterance
from loc3r.speech.tts import (
    EspeakConfig,
    EspeakSynthesizer,
    PiperConfig,
    PiperSynthesizer,
    SpeechSynthesizer,
    TtsConfig,
    make_synthesizer,
)
from loc3r.speech.vad import StreamingVad, VadConfig, find_speech
from loc3r.speech.wer import corpus_wer, normalise_words, wer, word_errors

os.environ.setdefault("OMP_NUM_THREADS", "1")
RATE = 16000


@pytest.fixture(scope="module")
def tts() -> EspeakSynthesizer:
    return EspeakSynthesizer()  # raises SpeechBackendError (test error) without espeak-ng


@pytest.fixture(scope="module")
def corpus():
    return build_corpus()


@pytest.fixture(scope="module")
def recognizer(corpus) -> PocketSphinxRecognizer:
    return PocketSphinxRecognizer(corpus=corpus)  # raises without pocketsphinx


def speech16(tts: EspeakSynthesizer, text: str) -> np.ndarray:
    return resample(tts.synthesize(text), RATE).samples


# --- audio: bytes -> clip -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample_format", "encode"),
    [
        ("S16LE", lambda x: (x * 32768).round().clip(-32768, 32767).astype("<i2").tobytes()),
        ("F32LE", lambda x: x.astype("<f4").tobytes()),
        ("U8", lambda x: (x * 128 + 128).round().clip(0, 255).astype("u1").tobytes()),
    ],
)
def test_clip_from_bytes_formats_and_downmix(sample_format, encode):
    left = np.array([0.5, -0.5, 0.25, 0.0], np.float32)
    right = np.array([0.5, 0.5, -0.25, -1.0], np.float32)
    stereo = np.stack([left, right], axis=1).reshape(-1)  # interleaved L R L R
    clip = clip_from_bytes(encode(stereo), sample_format, channels=2, sample_rate=22050)
    assert clip.sample_rate == 22050 and clip.samples.dtype == np.float32
    tolerance = 1 / 100 if sample_format == "U8" else 1e-4
    np.testing.assert_allclose(clip.samples, (left + right) / 2, atol=tolerance)
    mono = clip_from_bytes(encode(left), sample_format, channels=1, sample_rate=8000)
    np.testing.assert_allclose(mono.samples, left, atol=tolerance)


def test_resample_keeps_duration_and_pitch():
    t = np.arange(22050) / 22050
    clip = AudioClip(0.5 * np.sin(2 * np.pi * 440 * t), 22050)
    out = resample(clip, RATE)
    assert out.sample_rate == RATE and len(out.samples) == RATE
    spectrum = np.abs(np.fft.rfft(out.samples))
    assert abs(np.argmax(spectrum) * RATE / len(out.samples) - 440) <= 1.0
    assert abs(out.rms() - clip.rms()) < 0.01


def test_valid_speech_decodes_to_16k(tts):
    clip = tts.synthesize("what is behind me")
    out = decode_audio(clip.to_pcm16(), "S16LE", 1, clip.sample_rate)
    assert out.sample_rate == RATE
    assert abs(out.duration_s - clip.duration_s) < 0.01


def _noise(seconds: float, rms: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, rms, int(seconds * rate)).astype(np.float32)


def _s16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def _bad_cases() -> dict[str, tuple[bytes, str, int, int, str]]:
    t = np.arange(RATE) / RATE
    loud_tone = np.clip(2.0 * np.sin(2 * np.pi * 220 * t), -1, 1)
    with_nan = np.full(RATE, 0.1, np.float32)
    with_nan[100] = np.nan
    return {
        "empty": (b"", "S16LE", 1, RATE, "empty"),
        "odd byte count": (b"\x00\x01\x02", "S16LE", 1, RATE, "not a multiple of the frame size"),
        "stereo frame split": (b"\x00" * 6, "S16LE", 2, RATE, "not a multiple of the frame size"),
        "nan": (with_nan.astype("<f4").tobytes(), "F32LE", 1, RATE, "NaN"),
        "rate too low": (_s16(_noise(1, 0.1, 4000)), "S16LE", 1, 4000, "sample rate 4000"),
        "rate too high": (_s16(_noise(1, 0.1, 192000)), "S16LE", 1, 192000, "sample rate"),
        "too short": (_s16(_noise(0.1, 0.1)), "S16LE", 1, RATE, "too short"),
        "too long": (_s16(_noise(31, 0.1)), "S16LE", 1, RATE, "too long"),
        "silence": (bytes(2 * RATE), "S16LE", 1, RATE, "silent"),
        "near silence": (_s16(_noise(1, 2e-4)), "S16LE", 1, RATE, "silent"),
        "clipped": (_s16(loud_tone), "S16LE", 1, RATE, "clipped"),
        "white noise": (_s16(_noise(2, 0.05)), "S16LE", 1, RATE, "no speech"),
        "loud white noise": (_s16(_noise(2, 0.25)), "S16LE", 1, RATE, "no speech"),
        "bad format": (bytes(4 * RATE), "S24LE", 1, RATE, "sample format"),
        "no channels": (bytes(4), "S16LE", 0, RATE, "channel"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_audio_is_rejected_with_a_message(case):
    data, sample_format, channels, rate, message = _bad_cases()[case]
    with pytest.raises(SpeechInputError, match=message) as info:
        decode_audio(data, sample_format, channels, rate)
    assert len(str(info.value)) > 10


def test_validation_limits_are_configurable(tts):
    clip = tts.synthesize("what is on my left")
    validate_clip(clip)
    with pytest.raises(SpeechInputError, match="too long"):
        validate_clip(clip, AudioConfig(max_duration_s=0.5))
    inf_clip = AudioClip(np.array([0.1, np.inf] * 8000), RATE)
    with pytest.raises(SpeechInputError, match="infinite"):
        validate_clip(inf_clip)


# --- VAD ------------------------------------------------------------------------------------


def test_vad_finds_two_utterances_separated_by_silence(tts):
    first = speech16(tts, "i am sitting on the bed facing the window")
    second = speech16(tts, "what is on my left")
    gap = np.zeros(RATE, np.float32)
    x = np.concatenate([first, gap, second]) + _noise(
        (len(first) + len(gap) + len(second)) / RATE, 0.003
    )
    segments = find_speech(x, RATE)
    assert len(segments) == 2, [(s.start_s, s.end_s) for s in segments]
    gap_start, gap_end = len(first) / RATE, (len(first) + len(gap)) / RATE
    assert segments[0].start_s < 0.3 and gap_start - 0.3 < segments[0].end_s < gap_end
    assert gap_start < segments[1].start_s < gap_end and segments[1].end_s > x.size / RATE - 0.4
    assert segments[1].samples.size == segments[1].end - segments[1].start


def test_vad_drops_clicks_and_hiss():
    x = _noise(3, 0.002)
    x[RATE : RATE + 800] += _noise(0.05, 0.5, seed=1)  # 50 ms click
    x[2 * RATE : 2 * RATE + 8000] += _noise(0.5, 0.2, seed=2)  # 0.5 s hiss (white, unvoiced)
    assert find_speech(x, RATE) == []


def test_streaming_vad_memory_is_bounded_over_ten_minutes(tts):
    speech = speech16(tts, "what is the closest object behind me")
    pause = np.zeros(int(1.5 * RATE), np.float32)
    pattern = np.concatenate([speech, pause])
    pattern = pattern + _noise(pattern.size / RATE, 0.003)
    repeats = math.ceil(600 * RATE / pattern.size)  # >= 10 minutes of audio
    config = VadConfig(max_utterance_s=8.0)
    vad = StreamingVad(RATE, config)
    rng = np.random.default_rng(0)
    found, max_buffered, fed = [], 0, 0
    for _ in range(repeats):
        start = 0
        while start < pattern.size:  # chunks of random size, like a microphone driver
            size = int(rng.integers(160, 8000))
            found += vad.feed(pattern[start : start + size])
            max_buffered = max(max_buffered, vad.buffered_samples)
            start += size
        fed += pattern.size
    found += vad.flush()
    assert fed >= 600 * RATE
    assert len(found) == repeats
    bound = int(8.0 * RATE) + int(0.2 * RATE) + vad.frame_len
    assert vad.max_buffered_samples <= bound
    assert max_buffered <= vad.max_buffered_samples
    assert max_buffered < 2 * speech.size  # in practice only one utterance is ever held
    period = pattern.size / RATE
    starts = np.array([s.start_s for s in found])
    np.testing.assert_allclose(np.diff(starts[1:]), period, atol=0.1)  # one per repeat


def test_streaming_vad_cuts_utterances_longer_than_the_maximum(tts):
    speech = speech16(tts, "is the lamp on my left on my right in front of me or behind me")
    x = np.tile(speech, math.ceil(12 * RATE / speech.size))  # no pauses: one long utterance
    x = x + _noise(x.size / RATE, 0.002)
    vad = StreamingVad(RATE, VadConfig(max_utterance_s=3.0))
    segments = [s for i in range(0, x.size, 1000) for s in vad.feed(x[i : i + 1000])]
    segments += vad.flush()
    assert len(segments) >= 4
    assert all(s.duration_s <= 3.0 + 1e-9 for s in segments)
    assert any(s.forced_cut for s in segments)
    assert vad.buffered_samples == 0


def test_vad_webrtc_backend_is_optional():
    try:
        import webrtcvad  # noqa: F401
    except ImportError:
        with pytest.raises(SpeechBackendError, match="webrtcvad"):
            StreamingVad(RATE, VadConfig(backend="webrtc"))
    StreamingVad(RATE, VadConfig(backend="auto"))


# --- corpus and language model --------------------------------------------------------------


def test_corpus_comes_from_the_scene_catalogue(corpus):
    vocabulary = set(corpus.vocabulary())
    assert set(CATALOGUE) <= vocabulary
    assert {plural(k) for k in CATALOGUE} <= vocabulary
    assert "shelves" in vocabulary
    examples = [
        "i am sitting on the bed facing the window",
        "i am standing next to the red chair facing the door",
    ]
    assert set(examples) <= set(situation_templates())
    questions = set(question_templates())
    for q in [
        "what is on my left",
        "what is behind me",
        "how far is the sofa",
        "how many chairs are there",
        "what colour is the table",
        "which is closer the lamp or the plant",
    ]:
        assert q in questions
    assert all(len(u.split()) > 8 for u in corpus.utterances)
    assert len(corpus.utterances) > 100


def _arpa_model(text: str):
    """Parse ARPA text into {n: {gram: (logp, logbo)}}."""
    model: dict[int, dict[tuple[str, ...], tuple[float, float]]] = defaultdict(dict)
    order = 0
    for line in text.splitlines():
        if line.startswith("\\") and line.endswith("-grams:"):
            order = int(line[1])
            continue
        parts = line.split()
        if order and len(parts) >= order + 1:
            gram = tuple(parts[1 : order + 1])
            bo = float(parts[order + 1]) if len(parts) > order + 1 else 0.0
            model[order][gram] = (float(parts[0]), bo)
    return model


def _arpa_prob(model, history: tuple[str, ...], word: str) -> float:
    gram = (*history, word)
    if gram in model[len(gram)]:
        return 10 ** model[len(gram)][gram][0]
    backoff = 10 ** model[len(history)].get(history, (0.0, 0.0))[1] if history else 1.0
    return backoff * _arpa_prob(model, history[1:], word)


def test_arpa_model_distributions_sum_to_one():
    sentences = [s.split() for s in ["what is on my left", "what is behind me", "how far is it"]]
    text = arpa_text(sentences, LmConfig(order=3))
    assert text.startswith("\\data\\") and text.rstrip().endswith("\\end\\")
    model = _arpa_model(text)
    vocab = [g[0] for g in model[1] if g[0] != BOS]
    assert EOS in vocab
    for history in [(BOS,), ("what",), ("is",), (BOS, "what"), ("what", "is"), ("my", "left")]:
        total = sum(_arpa_prob(model, history, w) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-4), history
    assert _arpa_prob(model, ("what", "is"), "on") > _arpa_prob(model, ("what", "is"), "far")


def test_pronunciations_for_words_missing_from_the_dictionary():
    cmudict = {"color": ["K AH L ER"], "t": ["T IY"], "v": ["V IY"], "meter": ["M IY T ER"]}
    assert pronounce("color", cmudict) == ["K AH L ER"]
    assert pronounce("colour", cmudict) == ["K AH L ER"]
    assert pronounce("metre", cmudict) == ["M IY T ER"]
    assert pronounce("tv", cmudict) == ["T IY V IY"]
    assert pronounce("xylophonic", cmudict) == []


def test_extra_objects_join_the_vocabulary_when_pronounceable(tmp_path):
    small = build_corpus(CorpusConfig(rooms=0, extra_objects=("Piano", "blorptastic")))
    assert "what colour is the piano" in small.questions
    assert "how many pianos are there" in small.questions
    cmudict = Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"
    lm = build_language_model(small.sentences(), tmp_path, cmudict)
    assert "piano" in lm.vocabulary and "blorptastic" not in lm.vocabulary
    assert lm.dropped and all("blorptastic" in s for s in lm.dropped)
    assert lm.arpa_path.is_file() and "piano" in lm.dict_path.read_text()


def test_language_model_vocabulary_is_the_corpus(recognizer, corpus):
    assert recognizer.language_model.dropped == []
    assert set(recognizer.vocabulary) == set(corpus.vocabulary())
    assert isinstance(recognizer, SpeechRecognizer)


# --- THE KEY TEST: spoken situation + question -> PocketSphinx -> WER ------------------------

VOICES = ["en-us", "en-gb", "en-gb-x-rp", "en-us-nyc", "en-029", "en-gb-scotland", "en-us+f3"]


def test_pocketsphinx_transcribes_espeak_utterances(corpus, recognizer):
    rng = np.random.default_rng(2024)
    picks = rng.choice(len(corpus.utterances), 20, replace=False)
    pairs, started, audio_s, split_ok = [], time.perf_counter(), 0.0, 0
    for i, index in enumerate(picks):
        reference = corpus.utterances[int(index)]
        voice, speed = VOICES[i % len(VOICES)], 140 + (50 * i) // 19  # 140..190 wpm
        spoken = EspeakSynthesizer(EspeakConfig(voice=voice, speed_wpm=speed)).synthesize(reference)
        assert spoken.sample_rate == 22050
        # The full front end: raw 22.05 kHz bytes -> validated 16 kHz clip -> recogniser.
        clip = decode_audio(spoken.to_pcm16(), "S16LE", 1, spoken.sample_rate)
        audio_s += clip.duration_s
        transcript = recognizer.transcribe(clip)
        assert transcript.backend == "pocketsphinx"
        assert 0.0 <= transcript.confidence <= 1.0
        pairs.append((reference, transcript.text))
        errors = word_errors(reference, transcript.text)
        print(f"{voice:15s} {speed} wpm  errors {errors.errors:2d}  {transcript.text!r}")
        want = split_utterance(reference)
        try:
            split_ok += split_utterance(transcript.text) == want
        except SpeechInputError:
            pass
    elapsed = time.perf_counter() - started
    result = corpus_wer(pairs)
    print(
        f"corpus WER {result.wer:.3f} ({result.substitutions} sub, {result.deletions} del, "
        f"{result.insertions} ins / {result.reference_words} words); {audio_s:.0f} s of audio "
        f"in {elapsed:.1f} s; {split_ok}/20 transcripts split exactly like the reference"
    )
    assert result.wer <= 0.15
    assert split_ok >= 12


def test_pocketsphinx_hears_nothing_in_silence(recognizer):
    transcript = recognizer.transcribe(AudioClip(np.zeros(RATE, np.float32), RATE))
    assert transcript.text == "" or transcript.confidence < 0.9


# --- split ----------------------------------------------------------------------------------

SPLIT_CASES = [
    (
        "i am sitting on the bed facing the window what is on my left",
        ("i am sitting on the bed facing the window", "what is on my left?"),
    ),
    (
        "I am standing next to the red chair, facing the door. How many chairs are there?",
        ("I am standing next to the red chair, facing the door", "How many chairs are there?"),
    ),
    ("what is behind me", ("", "what is behind me?")),
    ("Is the lamp on my left?", ("", "Is the lamp on my left?")),
    (
        "i am facing the door is the lamp on my left",
        ("i am facing the door", "is the lamp on my left?"),
    ),
    (
        "I'm lying on the sofa which is closer the lamp or the plant",
        ("I'm lying on the sofa", "which is closer the lamp or the plant?"),
    ),
    (
        "standing next to the desk how far is the sofa",
        ("standing next to the desk", "how far is the sofa?"),
    ),
    (
        "next to the bed facing the door what colour is the table",
        ("next to the bed facing the door", "what colour is the table?"),
    ),
    ("what is on my left? i am facing the door", ("i am facing the door", "what is on my left?")),
    ("okay please what is behind me", ("", "what is behind me?")),
    (
        "i am sitting on the chair that is next to the door where is the tv",
        ("i am sitting on the chair that is next to the door", "where is the tv?"),
    ),
    (
        "how far am i from the door if i am facing the window",
        ("", "how far am i from the door if i am facing the window?"),
    ),
    (
        "i am standing by the shelf can you tell me what is in front of me",
        ("i am standing by the shelf", "can you tell me what is in front of me?"),
    ),
    (
        "i am standing next to the table facing the window is the door on my left on my right "
        "in front of me or behind me",
        (
            "i am standing next to the table facing the window",
            "is the door on my left on my right in front of me or behind me?",
        ),
    ),
    (
        "I am on the bed. I face the door. Should I turn left to see the tv?",
        ("I am on the bed, I face the door", "Should I turn left to see the tv?"),
    ),
    ("tell me what is behind me", ("", "tell me what is behind me?")),
]


@pytest.mark.parametrize(("text", "expected"), SPLIT_CASES)
def test_split_utterance(text, expected):
    assert tuple(split_utterance(text)) == expected


@pytest.mark.parametrize("text", ["i am sitting on the bed facing the window", "", "   ", "okay"])
def test_split_without_a_question_raises(text):
    with pytest.raises(SpeechInputError, match="no question heard"):
        split_utterance(text)


# --- WER ------------------------------------------------------------------------------------


def test_wer_known_cases():
    assert wer("what is on my left", "what is on my left") == 0.0
    assert wer("what is on my left", "what is on my right") == pytest.approx(1 / 5)
    assert wer("what is on my left", "what is my left") == pytest.approx(1 / 5)
    assert wer("what is on my left", "so what is on my left now") == pytest.approx(2 / 5)
    assert wer("a b c d", "") == 1.0
    assert wer("", "") == 0.0
    result = word_errors("the red chair is behind me", "a red chair behind me now")
    assert (result.substitutions, result.deletions, result.insertions) == (1, 1, 1)
    assert wer("What colour is the table?", "what color is the table") == 0.0
    assert wer("I'm 2 metres away.", "i am two meters away") == 0.0
    assert normalise_words("How far, in METRES?") == ["how", "far", "in", "meters"]
    total = corpus_wer([("a b c d", "a b c d"), ("a b", "a x")])
    assert total.errors == 1 and total.reference_words == 6 and total.wer == pytest.approx(1 / 6)


# --- TTS and backends -----------------------------------------------------------------------


def test_espeak_synthesizes_speech(tts):
    assert isinstance(tts, SpeechSynthesizer)
    clip = tts.synthesize("The lamp is on your left.")
    assert clip.sample_rate == 22050 and 0.5 < clip.duration_s < 5.0
    assert clip.rms() > 0.01 and np.abs(clip.samples).max() <= 1.0
    assert len(find_speech(resample(clip).samples, RATE)) >= 1
    leading_dash = tts.synthesize("-v --help")  # text is never parsed as options
    assert leading_dash.duration_s > 0.3


def test_espeak_errors_are_clear(tts):
    with pytest.raises(SpeechInputError, match="empty"):
        tts.synthesize("   ")
    with pytest.raises(SpeechInputError, match="too long"):
        EspeakSynthesizer(EspeakConfig(max_chars=20)).synthesize("the lamp is on your left " * 3)
    with pytest.raises(SpeechBackendError, match="espeak-ng is not installed"):
        EspeakSynthesizer(EspeakConfig(executable="/nonexistent/espeak-ng"))
    with pytest.raises(SpeechBackendError, match="unknown espeak-ng voice"):
        EspeakSynthesizer(EspeakConfig(voice="no-such-voice"))
    with pytest.raises(SpeechBackendError, match="unknown espeak-ng voice"):
        EspeakSynthesizer(EspeakConfig(voice="en-us+no-such-variant"))
    for voice in VOICES + ["en-gb-x-rp+m3", "English_(America)"]:
        EspeakSynthesizer(EspeakConfig(voice=voice))


def test_factories_and_missing_backends(tmp_path):
    assert isinstance(make_synthesizer(TtsConfig()), EspeakSynthesizer)
    with pytest.raises(SpeechBackendError, match="not installed|not found"):
        PiperSynthesizer(PiperConfig(model_path=str(tmp_path / "voice.onnx"), executable="nope"))
    missing = tmp_path / "whisper-small"
    with pytest.raises(SpeechBackendError, match="Whisper model directory not found"):
        WhisperRecognizer(WhisperConfig(model_dir=str(missing)))
    with pytest.raises(SpeechBackendError, match="Whisper model directory not found"):
        make_recognizer(AsrConfig(backend="whisper", whisper=WhisperConfig(model_dir="")))
    missing.mkdir()
    with pytest.raises(SpeechBackendError, match="no config.json"):
        WhisperRecognizer(WhisperConfig(model_dir=str(missing)))
