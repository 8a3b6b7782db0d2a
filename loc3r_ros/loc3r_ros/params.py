"""The node's parameters, declared once: this table feeds the node, the launch file and the README.

Each entry has a default, a description, and bounds or choices; the node declares them with
descriptors and rejects bad values with a reason (see `validate`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter of loc3r_node."""

    name: str
    default: object
    description: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    read_only: bool = False  # fixed after start-up (model paths, topics, frames)

    def check(self, value: object) -> str | None:
        """Return why `value` is not acceptable, or None."""
        expected = type(self.default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            return f"{self.name} must be {expected.__name__}, got {type(value).__name__}"
        if self.min is not None and value < self.min:
            return f"{self.name} must be >= {self.min}, got {value}"
        if self.max is not None and value > self.max:
            return f"{self.name} must be <= {self.max}, got {value}"
        if self.choices and value not in self.choices:
            return f"{self.name} must be one of {', '.join(self.choices)}, got '{value}'"
        return None


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "image_topic",
        "/camera/image_raw",
        "Camera image topic (sensor_msgs/Image, or "
        "sensor_msgs/CompressedImage when image_compressed is true)",
        read_only=True,
    ),
    ParamSpec("image_compressed", False, "Subscribe to a CompressedImage topic", read_only=True),
    ParamSpec(
        "camera_info_topic",
        "",
        "Optional sensor_msgs/CameraInfo topic: its intrinsics go to the geometric pose source "
        "(instead of a focal length read off CUT3R) and to diagnostics",
        read_only=True,
    ),
    ParamSpec(
        "image_qos_reliability",
        "best_effort",
        "QoS reliability of the image subscription",
        choices=("best_effort", "reliable"),
        read_only=True,
    ),
    ParamSpec(
        "image_qos_depth", 5, "QoS history depth of the image subscription", 1, 1000, read_only=True
    ),
    ParamSpec(
        "scene_frame",
        "loc3r_world",
        "Scene frame: gravity-aligned, z up, origin at the "
        "first camera (all poses are published in it)",
        read_only=True,
    ),
    ParamSpec(
        "agent_frame", "loc3r_agent", "TF child frame of the situated agent pose", read_only=True
    ),
    ParamSpec(
        "camera_frame",
        "loc3r_camera",
        "TF child frame of the latest CUT3R camera pose",
        read_only=True,
    ),
    ParamSpec(
        "parent_frame",
        "",
        "Robot frame to anchor the scene in (e.g. map or odom); empty = the scene frame is a "
        "root. Needs TF parent -> the camera frame of the images",
        read_only=True,
    ),
    ParamSpec(
        "model_dir",
        "",
        "Loc3R-VLM checkpoint directory; empty = the embedded default model",
        read_only=True,
    ),
    ParamSpec(
        "model",
        "",
        "A model name from config/models.lock.json (e.g. loc3r-llava-video-7b): fetched, "
        "verified and built into ~/.cache/loc3r/bundles on first use, offline afterwards; "
        "overrides model_dir",
        read_only=True,
    ),
    ParamSpec(
        "device",
        "cpu",
        "Torch device for the models",
        choices=("cpu", "cuda", "auto"),
        read_only=True,
    ),
    ParamSpec(
        "decoding",
        "dynamic",
        "How answers are decoded: dynamic (a KV cache that grows), static (one of fixed size), "
        "graphs (static, the one-token step and the text passes compiled at load: CUDA graphs "
        "on CUDA; loading takes longer). static and graphs are for models that write free "
        "answers (not the embedded one)",
        choices=("dynamic", "static", "graphs"),
        read_only=True,
    ),
    ParamSpec(
        "autostart",
        True,
        "Configure and activate at start (the model loads in the background while frames "
        "buffer; a failed load leaves the node active, answering why); false: wait for a "
        "lifecycle manager (ros2 lifecycle set /loc3r configure, then activate)",
        read_only=True,
    ),
    ParamSpec(
        "release_model_on_deactivate",
        False,
        "Deactivate also frees the model (its process, GPU memory); activate loads it again",
    ),
    ParamSpec(
        "model_process",
        True,
        "Run the models in a child process, so that image callbacks never wait for the GIL "
        "held by model threads (false: threads in the node's process)",
        read_only=True,
    ),
    ParamSpec(
        "model_threads",
        0,
        "Torch CPU threads of the model process (0 = all cores but one, which stays for the node)",
        0,
        256,
        read_only=True,
    ),
    ParamSpec(
        "model_niceness",
        5,
        "Scheduling niceness added to the model process, so camera callbacks win on a busy CPU",
        0,
        19,
        read_only=True,
    ),
    ParamSpec(
        "engine_mode",
        "streaming",
        "CUT3R camera tokens from the running stream (streaming) or re-run over exactly the "
        "frames the VLM sees (faithful, as in the paper)",
        choices=("streaming", "faithful"),
        read_only=True,
    ),
    ParamSpec(
        "num_query_frames",
        0,
        "Frames the VLM sees per query; 0 = the model's own setting (32 for the paper's model)",
        0,
        256,
        read_only=True,
    ),
    ParamSpec(
        "max_text_chars", 2000, "Longest question or situation accepted, characters", 1, 100000
    ),
    ParamSpec(
        "query_timeout_s",
        30.0,
        "How long a query waits for the model before replying 'busy', seconds",
        0.0,
        600.0,
    ),
    ParamSpec(
        "max_pending_queries",
        4,
        "Queries allowed to wait for the model; more get 'busy' at once",
        1,
        1000,
    ),
    ParamSpec(
        "keyframe_min_interval_s",
        0.25,
        "Minimum camera time between keyframes, seconds",
        0.0,
        60.0,
        read_only=True,
    ),
    ParamSpec(
        "keyframe_max_interval_s",
        2.0,
        "A keyframe is taken after this long even without motion, seconds",
        0.01,
        600.0,
        read_only=True,
    ),
    ParamSpec(
        "keyframe_min_change",
        0.03,
        "Mean absolute thumbnail change (0..1) that counts as motion",
        0.0,
        1.0,
        read_only=True,
    ),
    ParamSpec(
        "keyframe_duplicate_change",
        0.01,
        "Thumbnail change below which a frame only repeats the last keyframe: a still camera "
        "keeps one keyframe (0: one every keyframe_max_interval_s regardless)",
        0.0,
        1.0,
        read_only=True,
    ),
    ParamSpec(
        "keyframe_capacity",
        64,
        "Keyframes kept in memory (older ones are thinned out)",
        2,
        100000,
        read_only=True,
    ),
    ParamSpec(
        "keyframe_max_side",
        512,
        "Keyframes are stored downscaled to this long side, pixels",
        16,
        8192,
        read_only=True,
    ),
    ParamSpec(
        "viz_period_s",
        1.0,
        "Period of the camera path / point cloud / camera TF updates, seconds",
        0.05,
        60.0,
        read_only=True,
    ),
    ParamSpec(
        "cloud_voxel_m",
        0.05,
        "Voxel size of the published point cloud, metres",
        0.001,
        10.0,
        read_only=True,
    ),
    ParamSpec(
        "cloud_max_points",
        50000,
        "Most points in the published point cloud",
        100,
        10000000,
        read_only=True,
    ),
    ParamSpec(
        "status_period_s",
        1.0,
        "Period of ~/status and /diagnostics, seconds",
        0.05,
        60.0,
        read_only=True,
    ),
)

PARAMS_BY_NAME = {spec.name: spec for spec in PARAMS}


def validate(name: str, value: object) -> str | None:
    """Why (name, value) is rejected, or None when it is fine."""
    spec = PARAMS_BY_NAME.get(name)
    return None if spec is None else spec.check(value)


def accept_parameters(params, store: dict, check=None) -> str | None:
    """Validate every (name, value) of a parameter update, then apply all or none to `store`.

    Returns the first rejection reason (nothing is applied then), or None.
    """
    check = check or validate
    for param in params:
        reason = check(param.name, param.value)
        if reason:
            return reason
    for param in params:
        store[param.name] = param.value
    return None


def markdown_table(specs: tuple[ParamSpec, ...] | list[ParamSpec] | None = None) -> str:
    """The parameter table of the README (a test keeps the README equal to it)."""
    rows = ["| parameter | default | range / choices | description |", "|---|---|---|---|"]
    for spec in PARAMS if specs is None else specs:
        if spec.choices:
            bounds = ", ".join(spec.choices)
        elif spec.min is not None or spec.max is not None:
            bounds = f"{spec.min} .. {spec.max}"
        else:
            bounds = ""
        default = f"`{spec.default!r}`" if isinstance(spec.default, str) else f"`{spec.default}`"
        note = " (read-only)" if spec.read_only else ""
        rows.append(f"| `{spec.name}` | {default} | {bounds} | {spec.description}{note} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
