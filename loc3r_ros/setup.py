"""ament_python package loc3r_ros: the ROS layer (loc3r_ros) and the ROS-free core (loc3r)."""

from glob import glob

from setuptools import find_packages, setup

package_name = "loc3r_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["loc3r", "loc3r.*", "loc3r_ros", "loc3r_ros.*"]),
    package_data={"loc3r": ["assets/**/*"]},
    include_package_data=True,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", glob("launch/*.py")),
        (f"share/{package_name}/config", glob("config/*.yaml") + glob("config/*.json")),
        (f"share/{package_name}/rviz", glob("rviz/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="loc3r_ros maintainers",
    maintainer_email="maintainers@loc3r-ros.dev",
    description="Loc3R-VLM on CUT3R for ROS 2: situated localization and 3D question answering.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "loc3r_node = loc3r_ros.loc3r_node:main",
            "loc3r_speech = loc3r_ros.speech_node:main",
            "ask = loc3r_ros.ask_client:main",
            "frame_player = loc3r_ros.frame_player:main",
            "loc3r = loc3r.cli:main",
        ],
    },
)
