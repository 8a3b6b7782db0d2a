"""loc3r_ros: the thin ROS 2 layer (nodes and message conversions) over the `loc3r` core."""
