"""Two cameras, two sirenpose nodes: live.launch.py once per camera, each in its own namespace.

    ros2 launch sirenpose_ros multi_camera.launch.py \
        front_image_topic:=/front/image_raw front_camera_info_topic:=/front/camera_info \
        rear_image_topic:=/rear/image_raw rear_camera_info_topic:=/rear/camera_info \
        front_params_file:=/path/front.yaml rear_params_file:=/path/rear.yaml

Each node's outputs (odom, path, cloud, map_cloud, services) move under its namespace
(/cam_front/odom, /cam_front/sirenpose/reset, ...). /tf and /diagnostics stay global, so give
each camera its own parameter file with its extrinsics (camera_x..camera_yaw or TF) and a
distinct odom_frame (or publish_odom_tf: false for all but one camera): two nodes publishing the
same odom -> base_link transform would fight on /tf. Nothing else is shared; this file declares
no global action (no environment, no remapping of the other camera's topics).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

PACKAGE = 'sirenpose_ros'


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    default_params = os.path.join(share, 'config', 'live.yaml')

    # Names are spelled out per camera (no generated names) so that every argument can be
    # checked statically (test_launch_static.py).
    arguments = [
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Both nodes run on /clock (true when replaying a bag).'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description='Log level of both nodes.'),
        DeclareLaunchArgument('front_namespace', default_value='cam_front',
                              description='Namespace of the front camera node and its outputs.'),
        DeclareLaunchArgument('front_image_topic', default_value='/front/image_raw',
                              description='sensor_msgs/Image topic of the front camera.'),
        DeclareLaunchArgument('front_camera_info_topic', default_value='/front/camera_info',
                              description='sensor_msgs/CameraInfo topic of the front camera.'),
        DeclareLaunchArgument('front_params_file', default_value=default_params,
                              description='Parameter file of the front node (extrinsics, '
                                          'odom_frame, ...).'),
        DeclareLaunchArgument('front_image_transport', default_value='raw',
                              choices=['raw', 'compressed'],
                              description="'compressed' subscribes <front_image_topic>/compressed."),
        DeclareLaunchArgument('rear_namespace', default_value='cam_rear',
                              description='Namespace of the rear camera node and its outputs.'),
        DeclareLaunchArgument('rear_image_topic', default_value='/rear/image_raw',
                              description='sensor_msgs/Image topic of the rear camera.'),
        DeclareLaunchArgument('rear_camera_info_topic', default_value='/rear/camera_info',
                              description='sensor_msgs/CameraInfo topic of the rear camera.'),
        DeclareLaunchArgument('rear_params_file', default_value=default_params,
                              description='Parameter file of the rear node (extrinsics, '
                                          'odom_frame, ...).'),
        DeclareLaunchArgument('rear_image_transport', default_value='raw',
                              choices=['raw', 'compressed'],
                              description="'compressed' subscribes <rear_image_topic>/compressed."),
    ]

    # One scoped group per camera: the include's launch configurations stay inside it.
    front = GroupAction(actions=[IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'live.launch.py')),
        launch_arguments={
            'namespace': LaunchConfiguration('front_namespace'),
            'image_topic': LaunchConfiguration('front_image_topic'),
            'camera_info_topic': LaunchConfiguration('front_camera_info_topic'),
            'params_file': LaunchConfiguration('front_params_file'),
            'image_transport': LaunchConfiguration('front_image_transport'),
            'use_sim_time': LaunchConfiguration('use_sim_time'),
            'log_level': LaunchConfiguration('log_level'),
            'rviz': 'false',
        }.items(),
    )])
    rear = GroupAction(actions=[IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'live.launch.py')),
        launch_arguments={
            'namespace': LaunchConfiguration('rear_namespace'),
            'image_topic': LaunchConfiguration('rear_image_topic'),
            'camera_info_topic': LaunchConfiguration('rear_camera_info_topic'),
            'params_file': LaunchConfiguration('rear_params_file'),
            'image_transport': LaunchConfiguration('rear_image_transport'),
            'use_sim_time': LaunchConfiguration('use_sim_time'),
            'log_level': LaunchConfiguration('log_level'),
            'rviz': 'false',
        }.items(),
    )])

    return LaunchDescription(arguments + [front, rear])
