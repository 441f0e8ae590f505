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
    ParamSpec("extrinsics_source", "auto",
              "Where the base -> camera transform comes from: 'tf' (wait for it on /tf_static or "
              "/tf, e.g. from robot_state_publisher), 'parameters' (camera_x..camera_yaw, published "
              "as static TF when publish_camera_tf), or 'auto' (TF if it appears within "
              "extrinsics_wait seconds of the first image, else parameters).",
              choices=("auto", "tf", "parameters")),
    ParamSpec("extrinsics_wait", 1.0, "Seconds to wait for the camera extrinsic on TF.", 0.0, 60.0),
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
    ParamSpec("camera_info_tolerance", 0.0,
              "Pair each image with the CameraInfo whose stamp is within this many seconds; 0 "
              "uses the newest CameraInfo (drivers whose CameraInfo stamps differ from images).",
              0.0, 10.0),
    ParamSpec("max_image_pixels", 4096 * 4096, "Larger images are rejected.", 1, 1 << 28),
    ParamSpec("output_dir", "~/.ros/sirenpose",
              "Folder where the save_trajectory / save_map services write."),
    ParamSpec("trajectory_max_poses", 1000000, "Poses kept for save_trajectory.", 1, 100000000),
    ParamSpec("cloud_publish_period", 1, "Publish the dense cloud every N processed frames.", 1, 1000),
    ParamSpec("path_max_poses", 2000, "Poses kept in the published nav_msgs/Path.", 1, 1000000),
    ParamSpec("staged_pipeline", True,
              "Run the pipeline as overlapped stages on threads (frontend | pose + TF | keyframe "
              "mapping | field + cloud): higher frame rate, the TF never waits for mapping or the "
              "field. False: one worker runs them one after the other (deterministic, for debugging)."),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", 0.1, 60.0),
]
