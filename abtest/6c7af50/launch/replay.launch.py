"""Play a rosbag2 (MCAP or sqlite3) through the live node, on the bag's clock.

    ros2 launch sirenpose_ros replay.launch.py bag:=/data/run1 rate:=0.5 rviz:=true

The bag's image and camera_info topics must match image_topic / camera_info_topic (the defaults
are /camera/image_raw and /camera/camera_info). The player publishes /clock and the node runs
with use_sim_time, so every output carries the bag's stamps.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, EmitEvent, ExecuteProcess,
                            IncludeLaunchDescription, RegisterEventHandler, SetEnvironmentVariable)
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.substitutions import ExecutableInPackage

PACKAGE = 'sirenpose_ros'


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)

    # Same names and defaults as live.launch.py (test_launch_static checks that they stay equal);
    # use_sim_time is not among them: a replay always runs on the bag's /clock.
    live_arguments = [
        DeclareLaunchArgument('image_topic', default_value='/camera/image_raw',
                              description="The bag's sensor_msgs/Image topic."),
        DeclareLaunchArgument('camera_info_topic', default_value='/camera/camera_info',
                              description="The bag's sensor_msgs/CameraInfo topic."),
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace of the node and its outputs.'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'live.yaml'),
                              description='ROS 2 parameter file of the node.'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description='Node log level: debug, info, warn, error or fatal.'),
        DeclareLaunchArgument('image_transport', default_value='raw',
                              choices=['raw', 'compressed'],
                              description="'compressed' when the bag holds <image_topic>/compressed "
                                          '(sensor_msgs/CompressedImage).'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='Also start RViz2 with config/sirenpose.rviz.'),
    ]
    replay_arguments = [
        DeclareLaunchArgument('bag', description='rosbag2 folder to play (required).'),
        DeclareLaunchArgument('rate', default_value='1.0', description='Playback speed factor.'),
        DeclareLaunchArgument('loop', default_value='1',
                              description='Play the bag this many times (the node resets when '
                                          'time jumps back).'),
        DeclareLaunchArgument('wait_subscribers', default_value='30.0',
                              description='Seconds the player waits for the node to subscribe '
                                          'before it starts (the node loads its models first).'),
        DeclareLaunchArgument('shutdown_when_done', default_value='true',
                              description='End the whole launch when the bag has been played.'),
        DeclareLaunchArgument('dds_localhost', default_value='false',
                              description="Keep this launch's DDS traffic on this host (the "
                                          "package's Fast DDS profile, for every process here; "
                                          'other terminals then need the same environment).'),
    ]

    # Both variables together, for every process of this launch: the player, the node and RViz
    # must share one DDS set-up or they may not discover each other.
    localhost = IfCondition(LaunchConfiguration('dds_localhost'))
    dds_environment = [
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE',
                               os.path.join(share, 'config', 'fastdds_localhost.xml'),
                               condition=localhost),
        # SYSTEM_DEFAULT so that rmw (Iron and later) leaves the profile's transports alone.
        SetEnvironmentVariable('ROS_AUTOMATIC_DISCOVERY_RANGE', 'SYSTEM_DEFAULT',
                               condition=localhost),
    ]

    live = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'live.launch.py')),
        launch_arguments={
            'image_topic': LaunchConfiguration('image_topic'),
            'camera_info_topic': LaunchConfiguration('camera_info_topic'),
            'namespace': LaunchConfiguration('namespace'),
            'params_file': LaunchConfiguration('params_file'),
            'log_level': LaunchConfiguration('log_level'),
            'image_transport': LaunchConfiguration('image_transport'),
            'rviz': LaunchConfiguration('rviz'),
            'use_sim_time': 'true',
        }.items(),
    )

    # ExecuteProcess, not launch_ros Node: Node always appends '--ros-args', which the player's
    # argparse command line would reject. ExecutableInPackage finds the console script that
    # ament_python installs in lib/sirenpose_ros.
    player = ExecuteProcess(
        name='sirenpose_replay',
        cmd=[
            ExecutableInPackage('sirenpose_replay', PACKAGE),
            LaunchConfiguration('bag'),
            '--rate', LaunchConfiguration('rate'),
            '--loop', LaunchConfiguration('loop'),
            '--wait-subscribers', LaunchConfiguration('wait_subscribers'),
            # The player confines itself to this host unless told --network; here it must keep
            # this launch's environment (set above or inherited), the same as the node's.
            '--network',
        ],
        output='screen',
        emulate_tty=True,
    )
    shutdown_when_done = RegisterEventHandler(
        OnProcessExit(
            target_action=player,
            on_exit=[EmitEvent(event=Shutdown(reason='bag played'),
                               condition=IfCondition(LaunchConfiguration('shutdown_when_done')))],
        ))

    return LaunchDescription(
        live_arguments + replay_arguments + dds_environment + [live, player, shutdown_when_done])
