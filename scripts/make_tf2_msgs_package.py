"""Write an ament_cmake interface package `tf2_msgs` from message definition files.

Used by setup_env.sh where the ROS 2 install lacks tf2_msgs (PyPI wheels): Debian's ros-tf2-msgs
ships the definitions (/usr/share/tf2_msgs). Only TFMessage, TF2Error and FrameGraph are generated:
they are all /tf publishers and listeners need. Usage: make_tf2_msgs_package.py SRC_DIR OUT_DIR
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

INTERFACES = ("msg/TFMessage.msg", "msg/TF2Error.msg", "srv/FrameGraph.srv")

PACKAGE_XML = """<?xml version="1.0"?>
<package format="3">
  <name>tf2_msgs</name>
  <version>0.0.0</version>
  <description>tf2 messages generated from system definitions for loc3r_ros.</description>
  <maintainer email="maintainers@loc3r-ros.dev">loc3r_ros maintainers</maintainer>
  <license>BSD-3-Clause</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>geometry_msgs</depend>
  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
"""

CMAKE = """cmake_minimum_required(VERSION 3.16)
project(tf2_msgs)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
find_package(geometry_msgs REQUIRED)
rosidl_generate_interfaces(${{PROJECT_NAME}} {files} DEPENDENCIES geometry_msgs)
ament_export_dependencies(rosidl_default_runtime)
ament_package()
"""


def main(argv: list[str]) -> int:
    """Copy the definitions and write package.xml and CMakeLists.txt."""
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, out = Path(argv[1]), Path(argv[2])
    missing = [name for name in INTERFACES if not (src / name).is_file()]
    if missing:
        print(f"missing tf2_msgs definitions in {src}: {missing}", file=sys.stderr)
        return 1
    for name in INTERFACES:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, out / name)
    (out / "package.xml").write_text(PACKAGE_XML)
    (out / "CMakeLists.txt").write_text(CMAKE.format(files=" ".join(f'"{n}"' for n in INTERFACES)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
