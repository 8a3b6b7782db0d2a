"""ros2 launch loc3r_ros loc3r.launch.py [image_topic:=...] [device:=cuda] [use_rviz:=true] ...

Starts loc3r_node (and optionally RViz and the speech bridge). Every value handed to the nodes
comes from loc3r_ros.launch_support, which is tested without `launch`.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from loc3r_ros.launch_support import (
    LAUNCH_ARGUMENTS,
    node_parameter_overrides,
    ros_arguments,
    speech_parameter_overrides,
)


def _nodes(context):
    values = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
    share = Path(get_package_share_directory("loc3r_ros"))
    params_file = values["params_file"] or str(share / "config" / "loc3r.yaml")
    speech_files = [values["params_file"]] if values["params_file"] else []
    common = {"namespace": values["namespace"], "arguments": ["--ros-args", *ros_arguments(values)]}
    nodes = [
        Node(
            package="loc3r_ros",
            executable="loc3r_node",
            name="loc3r",
            parameters=[params_file, node_parameter_overrides(values)],
            output="screen",
            **common,
        ),
        Node(
            package="rviz2",
            executable="rviz2",
            arguments=["-d", str(share / "rviz" / "loc3r.rviz")],
            condition=IfCondition(values["use_rviz"]),
            namespace=values["namespace"],
        ),
        Node(
            package="loc3r_ros",
            executable="loc3r_speech",
            name="loc3r_speech",
            # a user's params_file may hold a loc3r_speech: section (asr_backend, voice, ...)
            parameters=[*speech_files, speech_parameter_overrides(values)],
            condition=IfCondition(values["use_speech"]),
            output="screen",
            **common,
        ),
    ]
    return nodes


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments of LAUNCH_ARGUMENTS and start the nodes."""
    args = [
        DeclareLaunchArgument(name, default_value=default, description=description)
        for name, (default, description) in LAUNCH_ARGUMENTS.items()
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_nodes)])
