"""Speech bridge across processes: loc3r_node and loc3r_speech from the colcon install, Fast DDS.

loc3r_node runs the embedded default model on a few synthetic frames published from here. An
espeak-ng utterance goes to ~/ask_spoken (and, in chunks, to the audio topic); bad audio is
rejected with a message and never reaches /loc3r/ask (no new /loc3r/result, and the bridge's
own ask_calls counter on /diagnostics stays put).
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from ros_graph import NodeProcess, call, executable, isolate_ros_graph, spin_until

isolate_ros_graph()
rclpy = pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from loc3r_interfaces.msg import AudioChunk, SituatedResult, Status  # noqa: E402
from loc3r_interfaces.srv import AskSpoken  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from loc3r.speech.tts import EspeakSynthesizer  # noqa: E402
from loc3r.speech.wer import wer  # noqa: E402
from loc3r_ros.conversions import rgb_to_image_msg  # noqa: E402
from loc3r_ros.speech_node import looks_like_situation, speakable  # noqa: E402

IMAGE_TOPIC = "/speech_cam/image_raw"
AUDIO_TOPIC = "/speech_test/audio"
SITUATION = "I am sitting on the bed facing the window"
QUESTION = "What is on my left?"
UTTERANCE = f"{SITUATION}. {QUESTION}"
LATCHED = QoSProfile(
    depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE
)
SPEECH_DIAG = "/loc3r_speech: loc3r"


def s16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes()


def chunk(data: bytes, rate: int, fmt: int = AudioChunk.FORMAT_S16LE, channels: int = 1):
    msg = AudioChunk(sample_rate=rate, channels=channels, sample_format=fmt)
    msg.data = data
    return msg


@pytest.fixture(scope="module")
def tts():
    return EspeakSynthesizer()


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech")
    server = NodeProcess(
        "loc3r_node",
        "--ros-args",
        "-p", f"image_topic:={IMAGE_TOPIC}",
        "-p", "image_qos_reliability:=reliable",
        "-p", "keyframe_min_interval_s:=0.0",
        "-p", "keyframe_min_change:=0.0",
        "-p", "status_period_s:=0.2",
        log_path=root / "loc3r_node.log",
    )  # fmt: skip
    speech = NodeProcess(
        "loc3r_speech",
        "--ros-args",
        "-p", f"audio_topic:={AUDIO_TOPIC}",
        "-p", "status_period_s:=0.2",
        "-p", "max_pending:=1",
        log_path=root / "loc3r_speech.log",
    )  # fmt: skip
    rclpy.init()
    node = rclpy.create_node("speech_test")
    got: dict[str, list] = {k: [] for k in ("status", "result", "diag", "transcript", "answer")}
    got["answer_audio"] = []
    node.create_subscription(Status, "/loc3r/status", got["status"].append, 10)
    node.create_subscription(SituatedResult, "/loc3r/result", got["result"].append, LATCHED)
    node.create_subscription(
        DiagnosticArray,
        "/diagnostics",
        lambda m: got["diag"].extend(s for s in m.status if s.name == SPEECH_DIAG),
        10,
    )
    node.create_subscription(String, "/loc3r_speech/transcript", got["transcript"].append, 10)
    node.create_subscription(String, "/loc3r_speech/answer", got["answer"].append, 10)
    node.create_subscription(
        AudioChunk, "/loc3r_speech/answer_audio", got["answer_audio"].append, 10
    )
    ask_spoken = node.create_client(AskSpoken, "/loc3r_speech/ask_spoken")
    audio_pub = node.create_publisher(AudioChunk, AUDIO_TOPIC, 100)
    image_pub = node.create_publisher(Image, IMAGE_TOPIC, 10)
    logs = lambda: server.log() + "\n--- speech ---\n" + speech.log()  # noqa: E731
    assert ask_spoken.wait_for_service(timeout_sec=60), logs()
    ready = spin_until(
        node, lambda: got["status"] and got["status"][-1].state == Status.STATE_READY, 60
    )
    assert ready, f"model never became ready:\n{logs()}"
    rng = np.random.default_rng(0)
    for i in range(10):
        msg = rgb_to_image_msg(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), Image)
        msg.header.stamp.sec, msg.header.frame_id = 1000 + i, "camera"
        image_pub.publish(msg)
        spin_until(node, lambda: False, 0.1)
    assert spin_until(node, lambda: got["status"][-1].keyframes >= 8, 30), logs()
    speech_ready = spin_until(node, lambda: got["diag"] and got["diag"][-1].message == "ready", 60)
    assert speech_ready, f"speech bridge never became ready:\n{logs()}"
    yield node, ask_spoken, audio_pub, got, logs
    node.destroy_node()
    rclpy.shutdown()
    assert speech.stop() == 0, logs()
    assert server.stop() == 0, logs()


def diag_values(node, got) -> dict[str, str]:
    """Values of a speech diagnostics message published after this call."""
    seen = len(got["diag"])
    assert spin_until(node, lambda: len(got["diag"]) > seen, 5)
    return {kv.key: kv.value for kv in got["diag"][-1].values}


def test_spoken_question_is_answered_in_words_and_audio(graph, tts):
    node, ask_spoken, _, got, logs = graph
    clip = tts.synthesize(UTTERANCE)  # 22050 Hz: the bridge resamples
    results = len(got["result"])
    reply = call(node, ask_spoken, AskSpoken.Request(audio=chunk(s16(clip.samples), 22050)), 90)
    assert reply.success, f"{reply.message}\n{logs()}"
    assert reply.message == "ok"
    assert wer(UTTERANCE, reply.transcript) <= 0.2, reply.transcript
    assert reply.question == "what is on my left?"
    assert "bed" in reply.situation and "window" in reply.situation
    assert reply.answer.strip()
    audio = reply.answer_audio
    assert audio.sample_rate > 0 and audio.sample_format == AudioChunk.FORMAT_S16LE
    assert len(audio.data) > 2 * 0.1 * audio.sample_rate  # at least 0.1 s of speech
    assert reply.has_pose and reply.pose.header.frame_id == "loc3r_world"
    assert np.isfinite(reply.pose.pose.pose.position.x) and reply.latency_s > 0
    # the bridge really asked loc3r_node, and published what it heard and answered
    assert spin_until(node, lambda: len(got["result"]) > results, 5)
    assert got["result"][-1].question == "what is on my left?" and got["result"][-1].has_pose
    # the spoken reply carries loc3r_node's confidence in its answer
    probability = got["result"][-1].confidence.answer_probability
    assert 0.0 < probability <= 1.0 and reply.confidence.answer_probability == probability
    assert spin_until(node, lambda: got["transcript"] and got["answer_audio"], 5)
    assert got["transcript"][-1].data == reply.transcript
    assert got["answer"][-1].data == reply.answer
    values = diag_values(node, got)
    assert int(values["answered"]) >= 1 and float(values["mean_asr_latency_s"]) > 0


def bad_requests(tts) -> dict[str, tuple[AudioChunk, str]]:
    rate = 16000
    rng = np.random.default_rng(1)
    speech = tts.synthesize(UTTERANCE)
    loud = np.clip(speech.samples * 20.0, -1, 1)
    return {
        "silence": (chunk(bytes(4 * rate), rate), "silent"),
        "white noise": (chunk(s16(rng.normal(0, 0.05, 2 * rate)), rate), "no speech"),
        "clipped": (chunk(s16(loud), speech.sample_rate), "clipped"),
        "4 kHz": (chunk(s16(rng.normal(0, 0.1, 8000)), 4000), "sample rate 4000"),
        "odd bytes": (chunk(s16(speech.samples) + b"\x00", speech.sample_rate), "multiple"),
        "format code": (chunk(s16(speech.samples), speech.sample_rate, fmt=7), "sample_format 7"),
        "no channels": (chunk(s16(speech.samples), speech.sample_rate, channels=0), "channel"),
        "empty": (chunk(b"", rate), "empty"),
    }


def test_bad_audio_is_rejected_without_asking(graph, tts):
    node, ask_spoken, _, got, logs = graph
    before = diag_values(node, got)
    results = len(got["result"])
    cases = bad_requests(tts)
    for name, (audio, expected) in cases.items():
        reply = call(node, ask_spoken, AskSpoken.Request(audio=audio), 30)
        assert reply.success is False, name
        assert expected in reply.message, f"{name}: {reply.message!r}"
        assert reply.transcript == "" and reply.answer == "" and not reply.answer_audio.data
    after = diag_values(node, got)
    assert after["ask_calls"] == before["ask_calls"]  # the bridge never called /loc3r/ask
    assert int(after["rejected"]) - int(before["rejected"]) == len(cases)
    spin_until(node, lambda: False, 0.5)
    assert len(got["result"]) == results  # and loc3r_node answered nothing new


def test_audio_stream_is_cut_into_an_utterance_and_answered(graph, tts):
    node, _, audio_pub, got, logs = graph
    for key in ("transcript", "answer", "answer_audio"):
        got[key].clear()
    clip = tts.synthesize(UTTERANCE)
    rate = clip.sample_rate
    silence = np.zeros(rate // 2, np.float32)
    stream = np.concatenate([silence, clip.samples, silence, silence, silence])
    stream += np.random.default_rng(2).normal(0, 1e-3, len(stream)).astype(np.float32)  # room
    step = rate // 10  # 100 ms chunks
    for start in range(0, len(stream), step):
        audio_pub.publish(chunk(s16(stream[start : start + step]), rate))
        spin_until(node, lambda: False, 0.01)
    assert spin_until(node, lambda: got["answer"] and got["answer_audio"], 60), logs()
    assert len(got["transcript"]) == 1, [m.data for m in got["transcript"]]  # one utterance
    assert wer(UTTERANCE, got["transcript"][0].data) <= 0.2, got["transcript"][0].data
    assert got["answer"][0].data.strip() and len(got["answer_audio"][0].data) > 0
    values = diag_values(node, got)
    assert int(values["utterances"]) == 1 and values["chunks_rejected"] == "0"
    assert int(values["vad_buffered_samples"]) < rate  # nothing left open


def test_bad_stream_chunks_are_dropped_and_counted(graph):
    node, _, audio_pub, got, logs = graph
    before = diag_values(node, got)
    noise = s16(np.random.default_rng(4).normal(0, 0.01, 1600))
    for bad in (
        chunk(noise + b"\x00", 16000),  # odd byte count
        chunk(noise, 4000),  # rate below 8 kHz
        chunk(noise, 16000, fmt=9),  # unknown sample format
        chunk(np.full(400, np.nan, "<f4").tobytes(), 16000, fmt=AudioChunk.FORMAT_F32LE),
    ):
        audio_pub.publish(bad)
    rejected = int(before["chunks_rejected"])

    def counted() -> bool:
        values = {kv.key: kv.value for kv in got["diag"][-1].values}
        return int(values["chunks_rejected"]) >= rejected + 4

    assert spin_until(node, counted, 10), logs()
    after = diag_values(node, got)
    assert int(after["chunks_rejected"]) - int(before["chunks_rejected"]) == 4
    assert after["ask_calls"] == before["ask_calls"]


def test_situation_before_a_pause_is_kept_for_the_question(graph, tts):
    """A long pause cuts situation and question apart; the bridge joins them again."""
    node, _, audio_pub, got, logs = graph
    for key in ("transcript", "answer"):
        got[key].clear()
    results = len(got["result"])
    first, second = tts.synthesize(SITUATION), tts.synthesize(QUESTION)
    rate = first.sample_rate
    pause = np.zeros(int(1.5 * rate), np.float32)  # longer than vad_hangover_ms
    stream = np.concatenate([pause[:rate], first.samples, pause, second.samples, pause])
    stream += np.random.default_rng(3).normal(0, 1e-3, len(stream)).astype(np.float32)
    step = rate // 10
    for start in range(0, len(stream), step):
        audio_pub.publish(chunk(s16(stream[start : start + step]), rate))
        spin_until(node, lambda: False, 0.01)
    assert spin_until(node, lambda: got["answer"] and len(got["result"]) > results, 60), logs()
    assert len(got["transcript"]) == 2, [m.data for m in got["transcript"]]
    result = got["result"][-1]
    assert result.question == "what is on my left?"
    assert "bed" in result.situation and result.has_pose


def test_too_many_requests_get_busy(graph, tts):
    node, ask_spoken, _, got, logs = graph
    audio = chunk(s16(tts.synthesize(UTTERANCE).samples), 22050)
    # an earlier streamed utterance may still hold the one slot (speaking its answer), and one
    # diagnostics message can be older than the result that ended the last test: wait until
    # five fresh messages in a row (1 s at status_period_s 0.2) report the slot free
    seen = len(got["diag"])

    def idle() -> bool:
        fresh = [{kv.key: kv.value for kv in m.values} for m in got["diag"][seen:]]
        return len(fresh) >= 5 and all(v["pending"] == "0" for v in fresh[-5:])

    assert spin_until(node, idle, 60), logs()
    futures = [ask_spoken.call_async(AskSpoken.Request(audio=audio)) for _ in range(3)]
    assert spin_until(node, lambda: all(f.done() for f in futures), 90), logs()
    replies = [f.result() for f in futures]
    assert sum(r.success for r in replies) >= 1, [r.message for r in replies]
    busy = [r for r in replies if not r.success]
    assert busy and all(r.message.startswith("busy") for r in busy), [r.message for r in busy]


def test_invalid_parameters_stop_the_node():
    isolate_ros_graph()
    proc = subprocess.run(
        [str(executable("loc3r_speech")), "--ros-args", "-p", "asr_backend:=kaldi"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )
    assert proc.returncode != 0
    assert "asr_backend must be one of pocketsphinx, whisper" in proc.stdout + proc.stderr


def test_text_helpers():
    assert speakable("one\x07 two\n") == "one two"
    assert looks_like_situation("i am sitting on the bed")
    assert looks_like_situation("facing the door")
    assert not looks_like_situation("the the")
    assert not looks_like_situation("")
