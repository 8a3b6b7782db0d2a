"""Cross-process: loc3r_node takes a model by name (`model:=NAME`), fetches it from a hub.

The hub is a loopback fake (fake_hub.py) serving the tiny fixtures in the real layouts; the
lock file (LOC3R_MODELS_LOCK) names them. The node builds the bundle on first use, loads it and
localizes and answers (decoding from a static KV cache: `decoding:=static`); a name the lock does
not know, or a decoding mode the model cannot use, is a clear failure, and the node keeps serving.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fake_hub import FakeHub, Repo
from ros_graph import NodeProcess, call, isolate_ros_graph, ros_test_node, spin_until

isolate_ros_graph()
rclpy = pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros

from loc3r_interfaces.msg import Status  # noqa: E402
from loc3r_interfaces.srv import Ask, Localize  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from loc3r_ros.conversions import rgb_to_image_msg  # noqa: E402


@pytest.fixture
def hub(data_dir, tmp_path, monkeypatch):
    llava = data_dir / "llava_video_reference"
    fake = FakeHub(
        repos={
            "lmms-lab/tiny-llava-video": Repo.from_folder(llava / "tiny_llava_video", "l"),
            "google/tiny-siglip": Repo.from_folder(llava / "siglip_vision_tower", "s"),
        },
        files={"cut3r.pth": (data_dir / "cut3r_reference" / "cut3r_tiny_linear.pth").read_bytes()},
    )
    base = fake.start()
    lock = tmp_path / "models.lock.json"
    lock.write_text(json.dumps({"format": "loc3r_models_lock", "models": {"tiny": {
        "llava_video": {"repo": "lmms-lab/tiny-llava-video", "revision": None},
        "vision_tower": {"repo": "google/tiny-siglip", "revision": None},
        "cut3r": {"url": f"{base}/files/cut3r.pth", "sha256": None},
        "cut3r_size": 224, "frames": 2, "description": "tiny, by name"}}}))  # fmt: skip
    for name, value in {"HF_ENDPOINT": base, "HF_HOME": str(tmp_path / "hf"),
                        "LOC3R_HOME": str(tmp_path / "loc3r"), "HF_HUB_DISABLE_XET": "1",
                        "LOC3R_MODELS_LOCK": str(lock)}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield fake, lock
    fake.stop()


@pytest.fixture
def ros():
    with ros_test_node("model_by_name_test") as node:
        yield node


def test_node_fetches_a_named_model_and_localizes(hub, ros, tmp_path):
    fake, lock = hub
    server = NodeProcess(
        "loc3r_node", "--ros-args", "-r", "__node:=named", "-p", "model:=tiny",
        "-p", "image_topic:=/named_cam", "-p", "status_period_s:=0.2", "-p", "decoding:=static",
        "-p", "keyframe_min_interval_s:=0.0", "-p", "keyframe_min_change:=0.0",
        log_path=tmp_path / "named.log",
    )  # fmt: skip
    try:
        statuses: list[Status] = []
        ros.create_subscription(Status, "/named/status", statuses.append, 10)
        ready = spin_until(
            ros, lambda: bool(statuses) and statuses[-1].state == Status.STATE_READY, 120
        )
        assert ready and statuses[-1].state == Status.STATE_READY, server.log()
        assert fake.requested("model-00002-of-00002.safetensors")  # fetched from the hub
        pinned = json.loads(lock.read_text())["models"]["tiny"]
        assert len(pinned["llava_video"]["revision"]) == 40 and len(pinned["cut3r"]["sha256"]) == 64
        assert (tmp_path / "loc3r" / "bundles" / "tiny" / "bundle.json").exists()
        publisher = ros.create_publisher(Image, "/named_cam", 10)
        for i in range(3):
            publisher.publish(rgb_to_image_msg(np.full((40, 60, 3), 50 * i, np.uint8), Image))
            spin_until(ros, lambda: False, 0.2)
        assert spin_until(ros, lambda: statuses[-1].keyframes >= 2, 20), statuses[-1]
        client = ros.create_client(Localize, "/named/localize")
        assert client.wait_for_service(timeout_sec=10)
        reply = call(ros, client, Localize.Request(situation="I am on the bed"), 60)
        assert reply.success, reply.message
        ask = ros.create_client(Ask, "/named/ask")
        assert ask.wait_for_service(timeout_sec=10)
        for question in ("What is on my left, next to the lamp by the window?", "Left?"):
            request = Ask.Request(question=question, situation="I am on the bed")
            reply = call(ros, ask, request, 60)
            assert reply.success and reply.has_pose, reply.message
            assert 0.0 <= reply.confidence.answer_probability <= 1.0  # random tiny LM: ~0
            assert reply.answer  # free text from the static cache
    finally:
        assert server.stop() == 0, server.log()


@pytest.mark.parametrize(
    ("parameter", "waits_for", "also_says"),
    [
        ("model:=no-such-model", "no model named", ("'no-such-model'", "tiny")),
        # the embedded model scores an answer vocabulary: no static cache for it
        ("decoding:=static", "from a vocabulary", ("'static'", "use 'dynamic'")),
    ],
    ids=["unknown model name", "decoding the model cannot use"],
)
def test_a_model_that_cannot_load_is_a_clear_status(hub, ros, tmp_path, parameter, waits_for,
                                                    also_says):  # fmt: skip
    server = NodeProcess(
        "loc3r_node", "--ros-args", "-r", "__node:=unloaded", "-p", parameter,
        "-p", "status_period_s:=0.2", log_path=tmp_path / "unloaded.log",
    )  # fmt: skip
    try:
        statuses: list[Status] = []
        ros.create_subscription(Status, "/unloaded/status", statuses.append, 10)
        said = spin_until(ros, lambda: bool(statuses) and waits_for in statuses[-1].message, 60)
        assert said, (statuses[-1:], server.log())
        assert all(text in statuses[-1].message for text in also_says), statuses[-1].message
        assert statuses[-1].state == Status.STATE_NO_MODEL  # and the node keeps serving
    finally:
        assert server.stop() == 0, server.log()
