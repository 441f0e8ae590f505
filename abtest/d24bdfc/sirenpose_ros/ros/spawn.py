"""Starting and stopping the project's ROS processes (node, replay) from tools and tests."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path


def _ros_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def node_command(params: dict | None = None, remaps: dict | None = None,
                 namespace: str | None = None, log_level: str = "info") -> list[str]:
    """``python -m sirenpose_ros.ros.node --ros-args ...`` (works with or without a ROS install)."""
    cmd = [sys.executable, "-m", "sirenpose_ros.ros.node", "--ros-args", "--log-level", log_level]
    if namespace:
        cmd += ["-r", f"__ns:={namespace}"]
    for src, dst in (remaps or {}).items():
        cmd += ["-r", f"{src}:={dst}"]
    for name, value in (params or {}).items():
        cmd += ["-p", f"{name}:={_ros_value(value)}"]
    return cmd


def start(cmd: list[str], env: dict, log_path: str | Path | None = None) -> subprocess.Popen:
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGINT (clean shutdown), then SIGTERM, then SIGKILL; returns the exit code."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()
