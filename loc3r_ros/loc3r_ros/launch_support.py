"""What loc3r.launch.py passes to the nodes, as plain functions (tested without `launch`).

The launch file only maps launch arguments onto these functions, so everything it hands to
loc3r_node is covered by tests that run here, where `launch` is not installed.
"""

from __future__ import annotations

from loc3r_ros.params import PARAMS_BY_NAME, validate

# Launch argument -> node parameter it overrides (empty launch values leave the yaml's value).
LAUNCH_TO_PARAM = {
    "image_topic": "image_topic",
    "camera_info_topic": "camera_info_topic",
    "device": "device",
    "model_dir": "model_dir",
    "model": "model",
    "decoding": "decoding",
    "scene_frame": "scene_frame",
    "autostart": "autostart",
}

LAUNCH_ARGUMENTS: dict[str, tuple[str, str]] = {
    # name: (default, description)
    "namespace": ("", "Namespace of the loc3r nodes (services become /<ns>/loc3r/ask)"),
    "use_sim_time": ("false", "Use /clock (bag replay, simulation)"),
    "params_file": ("", "Parameter file; empty = the package's config/loc3r.yaml"),
    "image_topic": ("", PARAMS_BY_NAME["image_topic"].description),
    "camera_info_topic": ("", PARAMS_BY_NAME["camera_info_topic"].description),
    "device": ("", PARAMS_BY_NAME["device"].description),
    "model_dir": ("", PARAMS_BY_NAME["model_dir"].description),
    "model": ("", PARAMS_BY_NAME["model"].description),
    "decoding": ("", PARAMS_BY_NAME["decoding"].description),
    "scene_frame": ("", PARAMS_BY_NAME["scene_frame"].description),
    "autostart": ("", PARAMS_BY_NAME["autostart"].description + " (also loc3r_speech's)"),
    "use_rviz": ("false", "Start RViz with rviz/loc3r.rviz"),
    "use_speech": ("false", "Start the speech bridge (spoken questions and answers)"),
    "log_level": ("info", "Log level of the nodes (debug, info, warn, error)"),
}


def _as_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got '{text}'")


def node_parameter_overrides(values: dict[str, str]) -> dict[str, object]:
    """Launch argument values (strings) -> typed loc3r_node parameter overrides.

    Only non-empty values override the parameter file. Raises ValueError naming a bad value.
    """
    overrides: dict[str, object] = {"use_sim_time": _as_bool(values.get("use_sim_time", "false"))}
    for arg, param in LAUNCH_TO_PARAM.items():
        text = values.get(arg, "")
        if text == "":
            continue
        spec = PARAMS_BY_NAME[param]
        value: object = (
            type(spec.default)(text) if not isinstance(spec.default, bool) else (_as_bool(text))
        )
        reason = validate(param, value)
        if reason:
            raise ValueError(f"launch argument {arg}: {reason}")
        overrides[param] = value
    return overrides


def speech_parameter_overrides(values: dict[str, str]) -> dict[str, object]:
    """Launch argument values -> loc3r_speech parameter overrides.

    The bridge runs in the same namespace as loc3r_node, so its Ask client points at
    /<namespace>/loc3r/ask (the node's `~/ask`).
    """
    overrides: dict[str, object] = {"use_sim_time": _as_bool(values.get("use_sim_time", "false"))}
    if values.get("autostart", ""):
        overrides["autostart"] = _as_bool(values["autostart"])
    namespace = values.get("namespace", "").strip("/")
    if namespace:
        overrides["ask_service"] = f"/{namespace}/loc3r/ask"
    return overrides


def ros_arguments(values: dict[str, str]) -> list[str]:
    """Extra --ros-args for the nodes (log level)."""
    level = values.get("log_level", "info").strip().lower()
    if level not in ("debug", "info", "warn", "error", "fatal"):
        raise ValueError(f"launch argument log_level: unknown level '{level}'")
    return ["--log-level", level]


def default_params_yaml() -> str:
    """config/loc3r.yaml as it should read: every parameter with its default (a test checks)."""
    lines = [
        "# loc3r_node parameters (defaults). Generated from loc3r_ros/params.py; a test keeps",
        "# it equal. `/**:` applies to the node under any name or namespace.",
        "/**:",
        "  ros__parameters:",
    ]
    for spec in PARAMS_BY_NAME.values():
        value = spec.default
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = f'"{value}"'
        else:
            text = repr(value)
        lines.append(f"    {spec.name}: {text}  # {spec.description}")
    return "\n".join(lines) + "\n"
