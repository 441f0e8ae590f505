"""Run the sirenpose node on a live camera (optionally with RViz).

    ros2 launch sirenpose_ros live.launch.py image_topic:=/cam/image_raw \
        camera_info_topic:=/cam/camera_info rviz:=true

Several cameras = several launches with distinct ``namespace``s: every node topic (odom, path,
cloud, map_cloud) is relative, so it moves under the namespace; /tf and /diagnostics are global.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = 'sirenpose_ros'


def _in_namespace(namespace, topic):
    """``topic`` (absolute, e.g. '/odom') under ``namespace``: '' -> '/odom', 'r1' -> 'r1/odom'
    (relative, so ROS resolves it to /r1/odom), '/r1/' -> '/r1/odom'."""
    return PythonExpression(["'", namespace, "'.rstrip('/') + '", topic, "'"])


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)

    image_topic = LaunchConfiguration('image_topic')
    camera_info_topic = LaunchConfiguration('camera_info_topic')
    namespace = LaunchConfiguration('namespace')
    params_file = LaunchConfiguration('params_file')
    use_sim_time = LaunchConfiguration('use_sim_time')
    log_level = LaunchConfiguration('log_level')
    image_transport = LaunchConfiguration('image_transport')
    rviz = LaunchConfiguration('rviz')

    arguments = [
        DeclareLaunchArgument(
            'image_topic', default_value='/camera/image_raw',
            description='sensor_msgs/Image topic of the camera (with image_transport:=compressed, '
                        'the node subscribes <image_topic>/compressed).'),
        DeclareLaunchArgument(
            'camera_info_topic', default_value='/camera/camera_info',
            description='sensor_msgs/CameraInfo topic of the same camera (intrinsics, distortion).'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the node and its outputs (one per camera).'),
        DeclareLaunchArgument(
            'params_file', default_value=os.path.join(share, 'config', 'live.yaml'),
            description='ROS 2 parameter file of the node (frames, extrinsics, QoS, pipeline).'),
        DeclareLaunchArgument(
            'use_sim_time', default_value='false',
            description='Run on /clock (true when replaying a bag).'),
        DeclareLaunchArgument(
            'log_level', default_value='info',
            description='Node log level: debug, info, warn, error or fatal.'),
        DeclareLaunchArgument(
            'image_transport', default_value='raw', choices=['raw', 'compressed'],
            description="'raw' subscribes sensor_msgs/Image, 'compressed' "
                        'sensor_msgs/CompressedImage on <image_topic>/compressed.'),
        DeclareLaunchArgument(
            'rviz', default_value='false',
            description='Also start RViz2 with config/sirenpose.rviz.'),
    ]

    node = Node(
        package=PACKAGE,
        executable='sirenpose_node',
        name='sirenpose',
        namespace=namespace,
        # The file first, then the launch arguments, so that these two always win over the file.
        parameters=[
            params_file,
            {
                # value_type=bool: 'true' on the command line must reach the node as a bool, or
                # rclpy refuses use_sim_time (a string).
                'use_sim_time': ParameterValue(use_sim_time, value_type=bool),
                'image_transport': ParameterValue(image_transport, value_type=str),
            },
        ],
        remappings=[
            ('image', image_topic),
            ('image/compressed', [image_topic, '/compressed']),
            ('camera_info', camera_info_topic),
        ],
        arguments=['--ros-args', '--log-level', log_level],
        output='screen',
        emulate_tty=True,
    )

    # The RViz config names the un-namespaced defaults (/odom, /camera/image_raw, ...); remapping
    # them here makes RViz follow the namespace and image_topic given to this launch.
    rviz_node = Node(
        package='rviz2',
        executable='rviz2',
        name='sirenpose_rviz',
        arguments=['-d', os.path.join(share, 'config', 'sirenpose.rviz')],
        parameters=[{'use_sim_time': ParameterValue(use_sim_time, value_type=bool)}],
        remappings=[
            ('/odom', _in_namespace(namespace, '/odom')),
            ('/path', _in_namespace(namespace, '/path')),
            ('/cloud', _in_namespace(namespace, '/cloud')),
            ('/map_cloud', _in_namespace(namespace, '/map_cloud')),
            ('/camera/image_raw', image_topic),
        ],
        condition=IfCondition(rviz),
        output='screen',
    )

    return LaunchDescription(arguments + [node, rviz_node])
