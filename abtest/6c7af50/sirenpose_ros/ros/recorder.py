"""Subscribes to everything the live node publishes and keeps it, for the demo and the tests."""
from __future__ import annotations

import threading

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from tf2_msgs.msg import TFMessage

from sirenpose_ros.ros.messages import cloud2_to_array, matrix_from, stamp_to_ns, transform_to_matrix


def pose_to_matrix(pose) -> np.ndarray:
    """geometry_msgs/Pose -> 4x4 (the same fields as a Transform, under other names)."""
    return matrix_from(pose.position, pose.orientation)


class OutputRecorder(Node):
    def __init__(self, ns: str = "", name: str = "sirenpose_recorder") -> None:
        super().__init__(name)
        reliable = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                              history=HistoryPolicy.KEEP_LAST, depth=100)
        latched = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             history=HistoryPolicy.KEEP_LAST, depth=10)
        self.lock = threading.Lock()
        self.odom: list[Odometry] = []
        self.tf: list = []               # TransformStamped from /tf
        self.tf_static: dict[tuple[str, str], np.ndarray] = {}
        self.clouds: list[tuple[int, str, np.ndarray]] = []   # (stamp, frame, array) - last few
        self.map_cloud: tuple[int, str, np.ndarray] | None = None
        self.diagnostics: list[DiagnosticArray] = []
        self.n_clouds = 0
        p = f"{ns.rstrip('/')}/" if ns else ""
        self.create_subscription(Odometry, f"{p}odom", self._on_odom, reliable)
        self.create_subscription(PointCloud2, f"{p}cloud", self._on_cloud, reliable)
        self.create_subscription(PointCloud2, f"{p}map_cloud", self._on_map, latched)
        self.create_subscription(TFMessage, "/tf", self._on_tf, reliable)
        self.create_subscription(TFMessage, "/tf_static", self._on_tf_static, latched)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, reliable)

    def _on_odom(self, msg: Odometry) -> None:
        with self.lock:
            self.odom.append(msg)

    def _on_cloud(self, msg: PointCloud2) -> None:
        arr = cloud2_to_array(msg).copy()
        with self.lock:
            self.n_clouds += 1
            self.clouds = self.clouds[-4:] + [(stamp_to_ns(msg.header.stamp), msg.header.frame_id, arr)]

    def _on_map(self, msg: PointCloud2) -> None:
        arr = cloud2_to_array(msg).copy()
        with self.lock:
            self.map_cloud = (stamp_to_ns(msg.header.stamp), msg.header.frame_id, arr)

    def _on_tf(self, msg: TFMessage) -> None:
        with self.lock:
            self.tf.extend(msg.transforms)

    def _on_tf_static(self, msg: TFMessage) -> None:
        with self.lock:
            for t in msg.transforms:
                self.tf_static[(t.header.frame_id, t.child_frame_id)] = transform_to_matrix(t.transform)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diagnostics = self.diagnostics[-20:] + [msg]

    def latest_diagnostics(self) -> dict[str, str]:
        with self.lock:
            if not self.diagnostics:
                return {}
            return {kv.key: kv.value for s in self.diagnostics[-1].status for kv in s.values}

    def base_trajectory(self) -> tuple[np.ndarray, np.ndarray]:
        """(stamps_ns, T_odom_base) from the odometry messages."""
        with self.lock:
            msgs = list(self.odom)
        stamps = np.array([stamp_to_ns(m.header.stamp) for m in msgs], dtype=np.int64)
        T = np.array([pose_to_matrix(m.pose.pose) for m in msgs]).reshape(-1, 4, 4)
        return stamps, T

    def camera_extrinsic(self, base_frame: str = "base_link") -> np.ndarray:
        """T_base_cam as the node latched it on /tf_static."""
        with self.lock:
            static = [T for (parent, _), T in self.tf_static.items() if parent == base_frame]
        if not static:
            raise RuntimeError(f"no {base_frame} -> camera transform received on /tf_static")
        return static[0]

    def camera_trajectory(self, base_frame: str = "base_link") -> tuple[np.ndarray, np.ndarray]:
        """(stamps_ns, T_world_cam) in the pipeline's world (the first camera optical frame),
        using the base -> camera transform the node latched on /tf_static."""
        T_base_cam = self.camera_extrinsic(base_frame)
        T_cam_base = np.linalg.inv(T_base_cam)
        stamps, T_odom_base = self.base_trajectory()
        return stamps, T_cam_base @ T_odom_base @ T_base_cam
