"""The launch file's inputs, the default parameter file and the RViz config stay consistent."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO_ROOT

from loc3r_ros.launch_support import (
    LAUNCH_ARGUMENTS,
    default_params_yaml,
    node_parameter_overrides,
    ros_arguments,
    speech_parameter_overrides,
)
from loc3r_ros.params import PARAMS_BY_NAME

PKG = REPO_ROOT / "loc3r_ros"


def test_config_yaml_lists_every_parameter_with_its_default():
    text = (PKG / "config" / "loc3r.yaml").read_text()
    assert text == default_params_yaml()
    params = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert params == {name: spec.default for name, spec in PARAMS_BY_NAME.items()}


def test_launch_overrides_are_typed_and_validated():
    values = {name: default for name, (default, _) in LAUNCH_ARGUMENTS.items()}
    assert node_parameter_overrides(values) == {"use_sim_time": False}
    values.update(image_topic="/cam/color", device="cuda", use_sim_time="true")
    assert node_parameter_overrides(values) == {
        "use_sim_time": True,
        "image_topic": "/cam/color",
        "device": "cuda",
    }
    with pytest.raises(ValueError, match="device must be one of"):
        node_parameter_overrides({**values, "device": "tpu"})
    with pytest.raises(ValueError, match="expected true/false"):
        node_parameter_overrides({**values, "use_sim_time": "maybe"})
    assert ros_arguments({"log_level": "WARN"}) == ["--log-level", "warn"]
    with pytest.raises(ValueError, match="unknown level"):
        ros_arguments({"log_level": "loud"})


def test_speech_bridge_follows_the_namespace():
    values = {name: default for name, (default, _) in LAUNCH_ARGUMENTS.items()}
    assert values["use_speech"] == "false"
    assert speech_parameter_overrides(values) == {"use_sim_time": False}
    values.update(namespace="/robot1/", use_sim_time="true")
    assert speech_parameter_overrides(values) == {
        "use_sim_time": True,
        "ask_service": "/robot1/loc3r/ask",
    }


def test_rviz_config_uses_the_published_topics_and_fixed_frame():
    rviz = yaml.safe_load((PKG / "rviz" / "loc3r.rviz").read_text())
    manager = rviz["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == PARAMS_BY_NAME["scene_frame"].default
    topics = {d["Name"]: d["Topic"]["Value"] for d in manager["Displays"] if "Topic" in d}
    assert topics["Agent pose"] == "/loc3r/agent_pose_cov"
    assert topics["Camera"] == PARAMS_BY_NAME["image_topic"].default


def test_node_starts_from_the_installed_config_file(tmp_path):
    """What launch passes (the yaml + overrides) is accepted by the installed node."""
    from ros_graph import executable, isolate_ros_graph

    isolate_ros_graph()
    config = REPO_ROOT / "install" / "loc3r_ros" / "share" / "loc3r_ros" / "config" / "loc3r.yaml"
    assert config.exists(), "config/loc3r.yaml is not installed by setup.py"
    proc = subprocess.run(
        [
            str(executable("loc3r_node")),
            "--ros-args",
            "--params-file",
            str(config),
            "-p",
            "device:=tpu",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )
    assert proc.returncode != 0
    assert "device must be one of cpu, cuda, auto" in proc.stdout + proc.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("launch_ros") is None, reason="launch_ros is not installed here"
)
def test_launch_description_builds():
    spec = importlib.util.spec_from_file_location(
        "loc3r_launch", PKG / "launch" / "loc3r.launch.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["loc3r_launch"] = module
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {a.name for a in description.entities if hasattr(a, "name")}
    assert set(LAUNCH_ARGUMENTS) <= names
