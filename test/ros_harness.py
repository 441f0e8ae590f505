"""Shared pieces of the cross-process ROS tests: a node process, a publisher, a recorder."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from sirenpose_ros.ros import spawn
from sirenpose_ros.ros.messages import ns_to_stamp
from sirenpose_ros.ros.recorder import OutputRecorder

IMAGE_TOPIC = "/cam/image_raw"
INFO_TOPIC = "/cam/camera_info"


def image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str = "cam_optical") -> Image:
    h, w = rgb.shape[:2]
    msg = Image(height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3, data=rgb.tobytes())
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    return msg


def info_msg(K: np.ndarray, w: int, h: int, stamp_ns: int, frame_id: str = "cam_optical") -> CameraInfo:
    msg = CameraInfo(width=w, height=h, distortion_model="plumb_bob", d=[0.0] * 5,
                     k=[float(v) for v in np.asarray(K).reshape(9)],
                     r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
                     p=[float(K[0, 0]), 0, float(K[0, 2]), 0, 0, float(K[1, 1]), float(K[1, 2]), 0, 0, 0, 1.0, 0])
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    return msg


class RosSession:
    """A node process plus, in this process, a publisher of camera frames and a recorder."""

    def __init__(self, tmp: Path, params: dict | None = None, namespace: str = "",
                 compressed: bool = False, image_topic: str = IMAGE_TOPIC,
                 info_topic: str = INFO_TOPIC) -> None:
        import os
        self.ns = namespace
        p = f"{namespace}/" if namespace else ""
        remaps = {"image": image_topic, "camera_info": info_topic,
                  "image/compressed": image_topic + "/compressed"}
        self.log = tmp / f"node{namespace.replace('/', '_')}.log"
        self.proc = spawn.start(spawn.node_command(params or {}, remaps, namespace or None),
                                dict(os.environ), self.log)
        if not rclpy.ok():
            rclpy.init()
        self.node = rclpy.create_node(f"test_camera{namespace.replace('/', '_')}")
        qos = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=10)
        self.pub_image = self.node.create_publisher(CompressedImage if compressed else Image,
                                                    image_topic + ("/compressed" if compressed else ""), qos)
        self.pub_info = self.node.create_publisher(CameraInfo, info_topic, qos)
        self.rec = OutputRecorder(ns=p.rstrip("/"), name=f"rec{namespace.replace('/', '_')}")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.executor.add_node(self.rec)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def wait_connected(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while (self.pub_image.get_subscription_count() == 0 or self.pub_info.get_subscription_count() == 0
               or self.rec.count_publishers(f"{self.ns}/odom" if self.ns else "/odom") == 0):
            assert self.proc.poll() is None, f"node exited early:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, f"node not connected:\n{self.log.read_text()}"
            time.sleep(0.05)
        time.sleep(0.3)

    def node_log(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, f"node died while waiting for {what}:\n{self.node_log()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.node_log()[-3000:]}"
            time.sleep(0.02)

    def settle(self, quiet: float = 2.0, timeout: float = 60.0) -> None:
        """Wait until no new odometry arrived for ``quiet`` seconds (the node caught up)."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() - since < quiet and time.monotonic() < deadline:
            n = len(self.rec.odom)
            if n != last:
                last, since = n, time.monotonic()
            time.sleep(0.05)

    def play(self, rgb_frames, stamps_ns, K, lockstep_timeout: float = 15.0) -> None:
        """Publish frames one by one; in lockstep, wait for the node to answer each frame (odom,
        or its counters moving) so results do not depend on this machine's speed."""
        h, w = rgb_frames[0].shape[:2]
        for rgb, stamp in zip(rgb_frames, stamps_ns):
            self.pub_info.publish(info_msg(K, w, h, int(stamp)))
            before = self.processed()
            self.pub_image.publish(image_msg(rgb, int(stamp)))
            self.wait_for(lambda: self.processed() > before, lockstep_timeout, f"frame {stamp}")

    def diagnostics(self) -> dict[str, str]:
        """This session's node's latest diagnostics (/diagnostics is shared by every node)."""
        name = f"{self.ns}/sirenpose:"
        with self.rec.lock:
            msgs = list(self.rec.diagnostics)
        for msg in reversed(msgs):
            for status in msg.status:
                if status.name.startswith(name):
                    return {kv.key: kv.value for kv in status.values}
        return {}

    def counter(self, name: str) -> int:
        return int(self.diagnostics().get(name, 0))

    def processed(self) -> int:
        """Frames the node finished (from its odometry and diagnostics)."""
        d = self.diagnostics()
        return max(len(self.rec.odom), sum(int(d.get(k, 0)) for k in (
            "frames_processed", "bad_image", "no_camera_info", "size_mismatch", "duplicate_stamp",
            "camera_info_unmatched")))

    def close(self) -> int:
        rc = spawn.stop(self.proc)
        self.executor.shutdown()
        self.rec.destroy_node()
        self.node.destroy_node()
        return rc
