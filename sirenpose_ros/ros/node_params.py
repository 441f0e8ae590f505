"""Parameters of the ROS adapter (frames, topics, QoS, publishing); the core declares its own."""
from __future__ import annotations

from sirenpose_ros.core.params import ParamSpec

NODE_PARAMS: list[ParamSpec] = [
    ParamSpec("odom_frame", "odom", "Frame of the continuous odometry (REP-105)."),
    ParamSpec("base_frame", "base_link", "Robot body frame; odometry child frame."),
    ParamSpec("map_frame", "map", "Global frame; map -> odom is published only if publish_map_tf."),
    ParamSpec("camera_frame", "",
              "Camera optical frame name; empty = take it from the image header's frame_id."),
    ParamSpec("publish_odom_tf", True, "Publish odom -> base_frame on /tf."),
    ParamSpec("publish_map_tf", False,
              "Publish map -> odom (identity until loop closure exists) on /tf."),
    ParamSpec("publish_camera_tf", True,
              "Publish base_frame -> camera optical frame from camera_x..camera_yaw on /tf_static. "
              "Turn off when the robot's URDF already provides it."),
    ParamSpec("camera_x", 0.0, "Camera position in base_frame, metres (x forward).", -100.0, 100.0),
    ParamSpec("camera_y", 0.0, "Camera position in base_frame, metres (y left).", -100.0, 100.0),
    ParamSpec("camera_z", 0.0, "Camera position in base_frame, metres (z up).", -100.0, 100.0),
    ParamSpec("camera_roll", 0.0, "Camera body roll in base_frame, rad (body x forward).", -3.1416, 3.1416),
    ParamSpec("camera_pitch", 0.0, "Camera body pitch in base_frame, rad (positive looks down).",
              -3.1416, 3.1416),
    ParamSpec("camera_yaw", 0.0, "Camera body yaw in base_frame, rad.", -3.1416, 3.1416),
    ParamSpec("input_qos", "sensor_data",
              "QoS of the image and camera_info subscriptions: 'sensor_data' (best effort, keep "
              "last) or 'reliable' (keep last).", choices=("sensor_data", "reliable")),
    ParamSpec("input_queue_depth", 5, "History depth of the input subscriptions.", 1, 100),
    ParamSpec("image_transport", "raw",
              "'raw' subscribes sensor_msgs/Image on 'image'; 'compressed' subscribes "
              "sensor_msgs/CompressedImage on 'image/compressed'.", choices=("raw", "compressed")),
    ParamSpec("cloud_publish_period", 1, "Publish the dense cloud every N processed frames.", 1, 1000),
    ParamSpec("path_max_poses", 10000, "Poses kept in the published nav_msgs/Path.", 1, 1000000),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", 0.1, 60.0),
]
