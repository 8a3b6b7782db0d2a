"""Cross-process test: loc3r_speech as a managed node, driven through the lifecycle services.

One bridge cannot load its recogniser (Whisper from a directory that does not exist): configure
fails with the reason and the node stays alive. Another (PocketSphinx) goes through every
transition; an espeak-ng utterance is asked in each state. No loc3r_node runs: an utterance that
gets through the recogniser is answered "/loc3r/ask is not available", which shows it was heard.
"""

from __future__ import annotations

import pytest
from ros_graph import NodeProcess, call, isolate_ros_graph, ros_test_node, spin_until

isolate_ros_graph()
rclpy = pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from loc3r_interfaces.msg import AudioChunk  # noqa: E402
from loc3r_interfaces.srv import AskSpoken  # noqa: E402

from loc3r.speech.tts import EspeakSynthesizer  # noqa: E402

ASK_SERVICE = "/lifecycle_test_nobody/ask"  # nobody serves it


class Bridge:
    """A loc3r_speech process under a name of its own, and the clients of one test node."""

    def __init__(self, node, name: str, log_path, *params: str) -> None:
        args = ["-p", "autostart:=false", "-p", f"ask_service:={ASK_SERVICE}",
                "-p", "status_period_s:=0.2", *params]  # fmt: skip
        self.name = name
        self.process = NodeProcess(
            "loc3r_speech", "--ros-args", "-r", f"__node:={name}", *args, log_path=log_path
        )
        self.node = node
        self.change_client = node.create_client(ChangeState, f"/{name}/change_state")
        self.state_client = node.create_client(GetState, f"/{name}/get_state")
        self.ask_client = node.create_client(AskSpoken, f"/{name}/ask_spoken")
        for client in (self.change_client, self.state_client, self.ask_client):
            assert client.wait_for_service(timeout_sec=30.0), self.process.log()
        self.diagnostics: list[tuple[str, dict]] = []

    def change(self, transition_id: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return call(self.node, self.change_client, request, timeout=60.0).success

    def state(self) -> str:
        return call(self.node, self.state_client, GetState.Request()).current_state.label

    def ask(self, audio: AudioChunk) -> AskSpoken.Response:
        return call(self.node, self.ask_client, AskSpoken.Request(audio=audio), timeout=60.0)

    def diagnostic(self, predicate, timeout: float = 20.0) -> tuple[str, dict]:
        seen = len(self.diagnostics)
        found = spin_until(
            self.node, lambda: any(predicate(d) for d in self.diagnostics[seen:]), timeout
        )
        assert found, (self.diagnostics[-1:], self.process.log()[-2000:])
        return [d for d in self.diagnostics[seen:] if predicate(d)][-1]

    def record(self, message: DiagnosticArray) -> None:
        for status in message.status:
            if status.name.startswith(f"/{self.name}"):
                self.diagnostics.append((status.message, {v.key: v.value for v in status.values}))


@pytest.fixture(scope="module")
def client():
    with ros_test_node("speech_lifecycle_client") as node:
        yield node


@pytest.fixture(scope="module")
def utterance() -> AudioChunk:
    clip = EspeakSynthesizer().synthesize("I am on the bed. What is on my left?")
    audio = AudioChunk(
        sample_rate=clip.sample_rate, channels=1, sample_format=AudioChunk.FORMAT_S16LE
    )
    audio.data = clip.to_pcm16()
    return audio


def test_a_recogniser_that_cannot_load_fails_configure_and_the_node_stays(
    client, utterance, tmp_path
):
    whisper = ["-p", "asr_backend:=whisper", "-p", "whisper_model_dir:=/nonexistent/whisper"]
    bridge = Bridge(client, "speech_broken", tmp_path / "broken.log", *whisper)
    client.create_subscription(DiagnosticArray, "/diagnostics", bridge.record, 10)
    try:
        assert bridge.state() == "unconfigured"
        reply = bridge.ask(utterance)
        assert reply.success is False and reply.message.startswith("unconfigured")
        assert bridge.change(Transition.TRANSITION_CONFIGURE) is False
        assert bridge.state() == "unconfigured" and bridge.process.proc.poll() is None
        message, values = bridge.diagnostic(lambda d: "unavailable" in d[0])
        assert "speech recognition unavailable" in message and values["lifecycle"] == "unconfigured"
        assert "configure failed" in bridge.process.log()
        assert bridge.change(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN) is True
        assert bridge.process.proc.wait(timeout=20) == 0
    finally:
        bridge.process.stop()


def test_every_transition_with_an_utterance_asked_in_each_state(client, utterance, tmp_path):
    bridge = Bridge(client, "speech_managed", tmp_path / "managed.log",
                    "-p", "release_model_on_deactivate:=true")  # fmt: skip
    client.create_subscription(DiagnosticArray, "/diagnostics", bridge.record, 10)
    try:
        assert bridge.change(Transition.TRANSITION_CONFIGURE) is True
        assert bridge.state() == "inactive"
        assert bridge.ask(utterance).message.startswith("inactive: the node is not active")
        assert bridge.diagnostic(lambda d: d[1]["lifecycle"] == "inactive")

        assert bridge.change(Transition.TRANSITION_ACTIVATE) is True
        heard = bridge.ask(utterance)
        assert heard.success is False and heard.transcript  # the recogniser heard it ...
        assert ASK_SERVICE in heard.message  # ... and it went to the (absent) Ask service
        assert bridge.diagnostic(lambda d: d[1]["lifecycle"] == "active")[1]["asr_runs"] == "1"

        assert bridge.change(Transition.TRANSITION_DEACTIVATE) is True
        reply = bridge.ask(utterance)
        assert reply.message.startswith("inactive") and "released on deactivate" in reply.message

        assert bridge.change(Transition.TRANSITION_ACTIVATE) is True  # loads it again
        assert bridge.ask(utterance).transcript

        assert bridge.change(Transition.TRANSITION_DEACTIVATE) is True
        assert bridge.change(Transition.TRANSITION_CLEANUP) is True
        assert bridge.state() == "unconfigured"
        assert bridge.ask(utterance).message.startswith("unconfigured")
        assert bridge.change(Transition.TRANSITION_CONFIGURE) is True  # again, after cleanup
        assert bridge.change(Transition.TRANSITION_ACTIVATE) is True
        assert bridge.change(Transition.TRANSITION_ACTIVE_SHUTDOWN) is True
        assert bridge.process.proc.wait(timeout=20) == 0
    finally:
        bridge.process.stop()
