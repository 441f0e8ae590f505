"""Test-session set-up: DDS never leaves this host, and each run gets a private domain."""
import os

from sirenpose_ros.ros.dds import confine_this_process, private_domain_id

# Before any test imports rclpy: child processes inherit this environment too.
confine_this_process(private_domain_id())
os.environ.setdefault("PYTHONUNBUFFERED", "1")
