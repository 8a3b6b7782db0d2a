"""loc3r: the ROS-free core of loc3r_ros (CUT3R, Loc3R-VLM, scene engine, data, evaluation).

Nothing under this package imports rclpy; the ROS layer lives in the sibling package `loc3r_ros`.
"""

__version__ = "0.1.0"
