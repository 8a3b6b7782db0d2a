"""The models in a child process, so that a node's callbacks never wait for the GIL.

In one process, the Python between a transformer's kernels (thousands of small ops per query)
holds the GIL often enough to delay a camera callback by milliseconds. `load_bundle_in_process`
starts a child process (``spawn``) that loads the bundle and serves three channels, each with its
own thread there: *perception* (one CUT3R step per keyframe, stream resets, fresh runs),
*model* (scene encoding, localize, answer) and *geometry* (the scene view for RViz: floor fit and
point-cloud downsampling). The parent gets a `Bundle` whose `perception`, `model` and `geometry`
are proxies with the same methods as the in-process ones, so the scene engine does not know the
difference. Encoded scenes stay in the child (their KV caches are large); the parent
holds integer handles, and the child keeps the most recent `SCENES_KEPT` of them.

Errors raised in the child come back as the same exception (a `Loc3rError` for bad text, ...);
a child that dies or stops answering turns into a `ModelProcessError` on the next call, never a
hang: every wait is bounded by `call_timeout_s`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import traceback
from collections import OrderedDict
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import torch

from loc3r.engine.domain import DomainVerdict
from loc3r.engine.models import DEFAULT_MODEL_DIR, Bundle, ModelLoadError, read_bundle_spec
from loc3r.engine.perception import FramePerception, PerceptionConfig
from loc3r.engine.scene_engine import AgentPose
from loc3r.engine.scene_frame import SceneView
from loc3r.engine.scene_geometry import KeyframeGeometry, SceneGeometry
from loc3r.errors import Loc3rError

SCENES_KEPT = 4  # encoded scenes the child keeps (the engine uses the newest one)
START_TIMEOUT_S = 300.0  # loading a 7B model from a slow disk takes a while
COMPILE_TIMEOUT_S = 600.0  # and more with decoding "graphs": two graphs compile at load (the
# one-token step and the text pass; not yet timed for a 7B model on a GPU)


class ModelProcessError(Loc3rError):
    """The model process is gone, timed out, or failed in a way that has no better class."""


@dataclass(frozen=True)
class SceneHandle:
    """An encoded scene that lives in the model process."""

    index: int
    domain: DomainVerdict | None = None  # the domain check of its frames (see engine.domain)


def _serve_channel(conn: Connection, handlers: dict) -> None:
    """Answer requests on one pipe until it closes: (method, args) -> ("ok"|"error", value)."""
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", handlers[method](*args))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
            reply = ("error", exc)
        try:
            try:
                conn.send(reply)
            except (BrokenPipeError, OSError):
                return
            except Exception as exc:  # noqa: BLE001 - a value or exception that does not pickle
                conn.send(("error", ModelProcessError(f"{type(exc).__name__}: {exc}")))
        except (BrokenPipeError, OSError):
            return


def _child_main(model_dir: str, device: str, threads: int, niceness: int, decoding: str,
                perception_conn: Connection, model_conn: Connection,
                geometry_conn: Connection) -> None:  # fmt: skip
    """Entry point of the child: load, report, then serve the three channels."""
    from loc3r.engine.models import load_bundle

    torch.set_num_threads(threads if threads > 0 else max(1, (os.cpu_count() or 2) - 1))
    if niceness > 0:
        os.nice(niceness)  # the camera callbacks of the parent come first on a busy CPU
    try:
        bundle = load_bundle(model_dir or None, device, decoding)
    except Exception as exc:  # noqa: BLE001
        message = str(exc) if isinstance(exc, ModelLoadError) else traceback.format_exc(limit=3)
        model_conn.send(("error", ModelLoadError(message)))
        return
    scenes: OrderedDict[int, object] = OrderedDict()
    counter = iter(range(1, 1 << 62))

    def scene(handle: SceneHandle) -> object:
        if handle.index not in scenes:
            raise ModelProcessError("that encoded scene was dropped; ask again")
        return scenes[handle.index]

    def encode_scene(images, camera_tokens) -> SceneHandle:
        encoded = bundle.model.encode_scene(images, camera_tokens)
        handle = SceneHandle(next(counter), bundle.model.domain(encoded))
        scenes[handle.index] = encoded
        while len(scenes) > SCENES_KEPT:
            scenes.popitem(last=False)
        return handle

    perception = bundle.perception
    model_handlers = {
        "encode_scene": encode_scene,
        "localize": lambda h, situation: bundle.model.localize(scene(h), situation),
        "answer": lambda h, q, s: bundle.model.answer(scene(h), q, s),
    }
    perception_handlers = {
        "step": perception.step,
        "reset": perception.reset,
        "run_fresh": perception.run_fresh,
        "set_intrinsics": perception.set_intrinsics,
    }
    info = {
        "num_query_frames": bundle.num_query_frames,
        "description": bundle.description,
        "perception_config": perception.config,
    }
    geometry_handlers = {"update_and_view": SceneGeometry().update_and_view}
    model_conn.send(("ok", info))
    for conn, handlers in ((perception_conn, perception_handlers),
                           (geometry_conn, geometry_handlers)):  # fmt: skip
        threading.Thread(target=_serve_channel, args=(conn, handlers), daemon=True).start()
    _serve_channel(model_conn, model_handlers)


class _Channel:
    """One request/reply pipe to the child, used by one caller at a time."""

    def __init__(self, conn: Connection, process: mp.process.BaseProcess, timeout_s: float):
        self._conn = conn
        self._process = process
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._broken: str | None = None

    def call(self, method: str, *args, timeout_s: float | None = None):
        with self._lock:
            if self._broken:
                raise ModelProcessError(self._broken)
            try:
                self._conn.send((method, args))
                if not self._conn.poll(timeout_s or self._timeout_s):
                    self._broken = f"the model process did not answer {method} in time"
                    raise ModelProcessError(self._broken)
                status, value = self._conn.recv()
            except (EOFError, BrokenPipeError, ConnectionResetError, OSError) as exc:
                code = self._process.exitcode
                self._broken = f"the model process exited (code {code}): {type(exc).__name__}"
                raise ModelProcessError(self._broken) from None
        if status == "error":
            raise value
        return value


class RemotePerception:
    """`Perception`'s methods, run in the model process."""

    def __init__(self, channel: _Channel, config: PerceptionConfig) -> None:
        self._channel = channel
        self.config = config

    def step(self, image: np.ndarray) -> FramePerception:
        """One CUT3R step on the child's stream."""
        return self._channel.call("step", np.ascontiguousarray(image))

    def reset(self) -> None:
        """Start a new stream."""
        self._channel.call("reset")

    def run_fresh(self, images: list[np.ndarray]) -> list[FramePerception]:
        """CUT3R from a fresh state over exactly `images`."""
        return self._channel.call("run_fresh", [np.ascontiguousarray(i) for i in images])

    def set_intrinsics(
        self, intrinsics: tuple[float, float, float, float] | None, image_hw: tuple[int, int] | None
    ) -> bool:
        """`Perception.set_intrinsics` in the child (it waits for a step in progress there)."""
        config = replace(self.config, intrinsics=intrinsics, intrinsics_hw=image_hw)  # validates
        applied_now = self._channel.call("set_intrinsics", intrinsics, image_hw)
        self.config = config
        return applied_now


class RemoteSceneModel:
    """The engine's SituatedModel, run in the model process (scenes are handles)."""

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel

    def encode_scene(self, images: list[np.ndarray], camera_tokens: torch.Tensor) -> SceneHandle:
        """Encode the video part of the prompt in the child; returns its handle."""
        return self._channel.call("encode_scene", [np.ascontiguousarray(i) for i in images],
                                  camera_tokens)  # fmt: skip

    def localize(self, scene: SceneHandle, situation: str) -> AgentPose:
        """Situated pose."""
        return self._channel.call("localize", scene, situation)

    def answer(
        self, scene: SceneHandle, question: str, situation: str
    ) -> tuple[str, AgentPose, float]:
        """Answer, situated pose and the answer's probability."""
        return self._channel.call("answer", scene, question, situation)

    def domain(self, scene: SceneHandle) -> DomainVerdict | None:
        """The domain check, made in the child when the scene was encoded."""
        return scene.domain


class RemoteSceneGeometry:
    """The engine's SceneGeometry, kept in the model process."""

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel

    def update_and_view(
        self,
        generation: int,
        added: list[KeyframeGeometry],
        alive: list[int],
        given_up: np.ndarray | None,
        voxel: float,
        max_points: int,
    ) -> SceneView | None:
        """Send the new keyframes, get the view back."""
        return self._channel.call(
            "update_and_view", generation, added, alive, given_up, voxel, max_points
        )


class ModelProcess:
    """The child process and its three channels (close() ends it)."""

    def __init__(self, model_dir: str | Path | None, device: str = "cpu", threads: int = 0,
                 niceness: int = 5, call_timeout_s: float = 120.0,
                 decoding: str = "dynamic") -> None:  # fmt: skip
        context = mp.get_context("spawn")
        perception_parent, perception_child = context.Pipe()
        model_parent, model_child = context.Pipe()
        geometry_parent, geometry_child = context.Pipe()
        self.process = context.Process(
            target=_child_main, name="loc3r-models", daemon=True,
            args=(str(model_dir or ""), device, threads, niceness, decoding, perception_child,
                  model_child, geometry_child),
        )  # fmt: skip
        self.process.start()
        for conn in (perception_child, model_child, geometry_child):
            conn.close()
        self.perception_channel = _Channel(perception_parent, self.process, call_timeout_s)
        self.model_channel = _Channel(model_parent, self.process, call_timeout_s)
        self.geometry_channel = _Channel(geometry_parent, self.process, call_timeout_s)
        self._conns = (perception_parent, model_parent, geometry_parent)
        try:
            start_timeout = START_TIMEOUT_S + (COMPILE_TIMEOUT_S if decoding == "graphs" else 0)
            if not model_parent.poll(start_timeout):
                raise ModelLoadError(f"the model process did not start in {start_timeout:.0f} s")
            status, value = model_parent.recv()
        except (EOFError, OSError):
            self.close()
            raise ModelLoadError(
                f"the model process exited while loading (code {self.process.exitcode})"
            ) from None
        except ModelLoadError:
            self.close()
            raise
        if status == "error":
            self.close()
            raise value
        self.info = value

    def bundle(self) -> Bundle:
        """A Bundle whose perception, model and scene geometry run in this process."""
        return Bundle(
            model=RemoteSceneModel(self.model_channel),
            perception=RemotePerception(self.perception_channel, self.info["perception_config"]),
            num_query_frames=int(self.info["num_query_frames"]),
            description=f"{self.info['description']} (in a model process)",
            geometry=RemoteSceneGeometry(self.geometry_channel),
        )

    @property
    def alive(self) -> bool:
        """Whether the child is running."""
        return self.process.is_alive()

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the child (closing the pipes ends its loops); terminate, then kill, if it lingers.

        At most about 2 x `timeout_s`: a child busy in a long computation is not waited for.
        """
        for conn in self._conns if hasattr(self, "_conns") else ():
            conn.close()
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def load_bundle_in_process(
    model_dir: str | Path | None = None,
    device: str = "cpu",
    threads: int = 0,
    niceness: int = 5,
    decoding: str = "dynamic",
) -> tuple[Bundle, ModelProcess]:
    """Start a model process for `model_dir` (default: embedded); raises ModelLoadError.

    `threads`: torch CPU threads in it (0 = all cores but one, which stays for the node);
    `niceness`: added to its scheduling niceness, so camera callbacks win on a busy CPU;
    `decoding`: see load_bundle.
    """
    read_bundle_spec(Path(model_dir) if model_dir else DEFAULT_MODEL_DIR)  # fail fast
    process = ModelProcess(model_dir, device, threads, niceness, decoding=decoding)
    return process.bundle(), process
