"""Parameters of the speech bridge (loc3r_speech), declared once like params.py does for loc3r_node.

Same `ParamSpec` mechanism: each entry has a default, a description and bounds or choices; the
node declares them with descriptors and rejects bad values with a reason.
"""

from __future__ import annotations

from loc3r_ros.params import ParamSpec
from loc3r_ros.params import markdown_table as params_table

SPEECH_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "autostart",
        True,
        "Configure and activate at start (the recogniser loads in the background); false: wait "
        "for a lifecycle manager (ros2 lifecycle set /loc3r_speech configure, then activate)",
        read_only=True,
    ),
    ParamSpec(
        "release_model_on_deactivate",
        False,
        "Deactivate also frees the recogniser and synthesiser; activate loads them again",
    ),
    ParamSpec(
        "audio_topic",
        "audio/input",
        "Audio input topic (loc3r_interfaces/AudioChunk); relative names resolve in the "
        "node's namespace",
        read_only=True,
    ),
    ParamSpec(
        "audio_qos_reliability",
        "reliable",
        "QoS reliability of the audio subscription (best_effort also matches reliable publishers)",
        choices=("reliable", "best_effort"),
        read_only=True,
    ),
    ParamSpec(
        "ask_service",
        "/loc3r/ask",
        "The loc3r_node Ask service the transcribed questions go to",
        read_only=True,
    ),
    ParamSpec(
        "asr_backend",
        "pocketsphinx",
        "Speech recogniser: PocketSphinx with the domain language model, or Whisper",
        choices=("pocketsphinx", "whisper"),
        read_only=True,
    ),
    ParamSpec(
        "whisper_model_dir",
        "",
        "Local Whisper checkpoint directory (transformers format), for asr_backend whisper",
        read_only=True,
    ),
    ParamSpec(
        "whisper_device",
        "cpu",
        "Torch device of Whisper (cpu, cuda, cuda:0, ...)",
        read_only=True,
    ),
    ParamSpec(
        "tts_backend",
        "espeak",
        "Speech synthesiser of the answers: espeak-ng or Piper",
        choices=("espeak", "piper"),
        read_only=True,
    ),
    ParamSpec(
        "voice",
        "en-us",
        "espeak-ng voice (see espeak-ng --voices=en; variants like en-us+f3)",
        read_only=True,
    ),
    ParamSpec("speed", 160, "espeak-ng speaking rate, words per minute", 80, 500, read_only=True),
    ParamSpec(
        "piper_model",
        "",
        "Piper voice model (.onnx, with its .onnx.json next to it), for tts_backend piper",
        read_only=True,
    ),
    ParamSpec(
        "max_utterance_s",
        20.0,
        "Longest utterance accepted (service audio, or one streamed utterance), seconds",
        1.0,
        120.0,
        read_only=True,
    ),
    ParamSpec(
        "vad_threshold_db",
        12.0,
        "Voice activity: frame level above the noise floor that counts as speech, dB",
        3.0,
        40.0,
        read_only=True,
    ),
    ParamSpec(
        "vad_hangover_ms",
        600.0,
        "Silence that ends a streamed utterance, milliseconds (sentence pauses are ~350 ms)",
        100.0,
        5000.0,
        read_only=True,
    ),
    ParamSpec(
        "stream_idle_s",
        1.0,
        "An open streamed utterance is closed when no audio arrives for this long, seconds",
        0.1,
        60.0,
        read_only=True,
    ),
    ParamSpec(
        "situation_carry_s",
        10.0,
        "A streamed situation without a question is prepended to the next utterance heard "
        "within this time, seconds (0 = off)",
        0.0,
        600.0,
    ),
    ParamSpec(
        "ask_timeout_s",
        60.0,
        "How long to wait for the Ask service to reply, seconds",
        0.1,
        600.0,
    ),
    ParamSpec(
        "tts_timeout_s", 30.0, "Longest speech synthesis run, seconds", 1.0, 600.0, read_only=True
    ),
    ParamSpec(
        "max_pending",
        2,
        "Spoken requests (service calls and streamed utterances) in progress at once; more get "
        "'busy' at once",
        1,
        100,
    ),
    ParamSpec(
        "use_microphone",
        False,
        "Publish the default microphone on audio_topic (needs sounddevice and PortAudio)",
        read_only=True,
    ),
    ParamSpec(
        "play_answers",
        False,
        "Play the answers to streamed utterances on the default speaker (needs sounddevice)",
        read_only=True,
    ),
    ParamSpec(
        "status_period_s",
        1.0,
        "Period of /diagnostics, seconds",
        0.05,
        60.0,
        read_only=True,
    ),
)

SPEECH_PARAMS_BY_NAME = {spec.name: spec for spec in SPEECH_PARAMS}


def validate(name: str, value: object) -> str | None:
    """Why (name, value) is rejected, or None when it is fine."""
    spec = SPEECH_PARAMS_BY_NAME.get(name)
    return None if spec is None else spec.check(value)


def markdown_table() -> str:
    """The speech parameter table of the README (a test keeps the README equal to it)."""
    return params_table(SPEECH_PARAMS)


if __name__ == "__main__":
    print(markdown_table())
