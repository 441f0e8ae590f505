"""Keeps DDS traffic on this host for every process the project's tools and tests start.

Kilted ignores ROS_LOCALHOST_ONLY. Two ways keep discovery and data on the host:
- ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (rmw's own setting; large best-effort messages such as
  640x480 images are lost with Fast DDS's default UDP transport), or
- the project's Fast DDS profile (config/fastdds_localhost.xml: shared memory + UDP bound to
  127.0.0.1, no built-in transports) with ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT so that
  rmw leaves the profile alone. Images and dense clouds then arrive intact. Tools and tests use
  this one; without the profile file they fall back to LOCALHOST, never to the open network.
"""
from __future__ import annotations

import os

from sirenpose_ros.resources import config_file

PROFILE_NAME = "fastdds_localhost.xml"


def private_domain_id(seed: int | None = None) -> int:
    """A domain id in [20, 99] derived from the process id (ids above ~100 can collide with
    ephemeral ports), so that parallel test runs do not see each other."""
    return 20 + ((os.getpid() if seed is None else seed) % 80)


def local_dds_env(domain_id: int | None = None, base: dict | None = None) -> dict[str, str]:
    """A copy of ``base`` (default: os.environ) with DDS confined to this host. The domain id is
    set only when given (tests and demos pass :func:`private_domain_id`)."""
    env = dict(os.environ if base is None else base)
    env.pop("ROS_STATIC_PEERS", None)
    env.pop("ROS_LOCALHOST_ONLY", None)
    try:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(config_file(PROFILE_NAME))
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SYSTEM_DEFAULT"
    except FileNotFoundError:
        env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["RMW_IMPLEMENTATION"] = env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    return env


def confine_this_process(domain_id: int | None = None) -> None:
    """Apply :func:`local_dds_env` to this process; call it before rclpy.init()."""
    env = local_dds_env(domain_id)
    for key in ("ROS_STATIC_PEERS", "ROS_LOCALHOST_ONLY", "FASTDDS_DEFAULT_PROFILES_FILE"):
        if key not in env:
            os.environ.pop(key, None)
    os.environ.update(env)


def is_confined(env: dict | None = None) -> bool:
    """True when this environment cannot discover peers beyond this host."""
    env = os.environ if env is None else env
    rng = env.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "").upper()
    if rng in ("LOCALHOST", "OFF"):
        return True
    profile = env.get("FASTDDS_DEFAULT_PROFILES_FILE", "")
    return rng == "SYSTEM_DEFAULT" and profile.endswith(PROFILE_NAME) and os.path.isfile(profile)
