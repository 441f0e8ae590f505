"""The live ROS 2 node: camera in, TF / odometry / path / point clouds / diagnostics out.

Threading: subscription callbacks only store the newest frame in a one-slot buffer (counting the
frames they overwrite); a worker thread runs the pipeline and publishes. The executor thread
therefore never waits behind inference, so /tf, /clock, services and parameter requests stay
responsive. Every output carries the input image's stamp.
"""
from __future__ import annotations

import collections
import sys
import threading
import time
import traceback

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry, Path
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage

from sirenpose_ros.core.config import make_config, pipeline_params
from sirenpose_ros.core.params import ParamError, ParamSpec, validate
from sirenpose_ros.core.pipeline import Pipeline
from sirenpose_ros.core.types import Frame, FrameResult, TrackingState
from sirenpose_ros.ros import messages as M
from sirenpose_ros.ros.node_params import NODE_PARAMS

# Optical frame (z forward, x right, y down) expressed in a camera body frame (x forward, y left,
# z up), REP-103.
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
LOG_THROTTLE_S = 5.0


def rpy_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    cr, sr, cp, sp, cy, sy = (np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch),
                              np.cos(yaw), np.sin(yaw))
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    desc = ParameterDescriptor(description=f"{spec.description} Allowed: {spec.allowed()}.",
                               read_only=True)
    if spec.type is float and (spec.min is not None or spec.max is not None):
        desc.floating_point_range = [FloatingPointRange(
            from_value=float(-1e300 if spec.min is None else spec.min),
            to_value=float(1e300 if spec.max is None else spec.max), step=0.0)]
    elif spec.type is int and (spec.min is not None or spec.max is not None):
        desc.integer_range = [IntegerRange(
            from_value=int(-(2**62) if spec.min is None else spec.min),
            to_value=int(2**62 if spec.max is None else spec.max), step=1)]
    return desc


class Counters:
    """Monotonic event counters shown in /diagnostics (thread-safe enough: += under the GIL)."""
    NAMES = ("frames_received", "frames_processed", "frames_dropped", "bad_image", "size_mismatch",
             "no_camera_info", "bad_camera_info", "time_jump_back", "duplicate_stamp",
             "pipeline_error", "resets", "tracking_lost")

    def __init__(self) -> None:
        self.values = dict.fromkeys(self.NAMES, 0)

    def inc(self, name: str, n: int = 1) -> None:
        self.values[name] += n


class SirenPoseNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("sirenpose", **kwargs)
        self.p = self._declare(NODE_PARAMS)
        self.core_cfg = make_config(self._declare(pipeline_params()))
        self.pipeline = Pipeline(self.core_cfg)

        self.counters = Counters()
        self._slot: Image | CompressedImage | None = None
        self._slot_received = 0.0
        self._cond = threading.Condition()
        self._stop = False
        self._reset_requested = False
        self._camera = None
        self._camera_error = ""
        self._last_stamp_ns: int | None = None
        self._state = TrackingState.INITIALIZING
        self._in_times: collections.deque = collections.deque(maxlen=200)
        self._out_times: collections.deque = collections.deque(maxlen=200)
        self._latency_ms: collections.deque = collections.deque(maxlen=500)
        self._last_timings: dict[str, float] = {}
        self._path = Path()
        self._static_tf_sent_for: str | None = None
        self._last_log: dict[str, float] = {}

        t_base_body = np.eye(4)
        t_base_body[:3, :3] = rpy_matrix(self.p["camera_roll"], self.p["camera_pitch"], self.p["camera_yaw"])
        t_base_body[:3, 3] = [self.p["camera_x"], self.p["camera_y"], self.p["camera_z"]]
        t_body_opt = np.eye(4)
        t_body_opt[:3, :3] = R_BODY_OPTICAL
        # The pipeline's world frame is the first camera's optical frame; odom is the first base
        # frame, so odom <- world is the fixed base <- camera extrinsic.
        self.T_base_cam = t_base_body @ t_body_opt
        self.T_cam_base = np.linalg.inv(self.T_base_cam)

        self._make_interfaces()
        self._worker = threading.Thread(target=self._work, name="sirenpose-worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"sirenpose ready: image '{self._image_topic}' ({self.p['image_transport']}, "
            f"{self.p['input_qos']} QoS), camera_info '{self._info_topic}', "
            f"odom '{self.p['odom_frame']}' -> base '{self.p['base_frame']}'")

    # ----------------------------------------------------------------------------- set-up
    def _declare(self, specs: list[ParamSpec]) -> dict:
        values = {}
        for spec in specs:
            try:
                param = self.declare_parameter(spec.name, spec.default, _descriptor(spec))
            except Exception as exc:  # rclpy raises several types for out-of-range / wrong type
                raise ParamError(f"parameter '{spec.name}': {exc}; expected {spec.allowed()}") from exc
            values[spec.name] = param.value
        return validate(specs, values)

    def _make_interfaces(self) -> None:
        depth = self.p["input_queue_depth"]
        if self.p["input_qos"] == "sensor_data":
            in_qos = QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT,
                                durability=qos_profile_sensor_data.durability,
                                history=HistoryPolicy.KEEP_LAST, depth=depth)
        else:
            in_qos = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                                history=HistoryPolicy.KEEP_LAST, depth=depth)
        if self.p["image_transport"] == "compressed":
            self._image_topic = "image/compressed"
            self.create_subscription(CompressedImage, self._image_topic, self._on_image, in_qos)
        else:
            self._image_topic = "image"
            self.create_subscription(Image, self._image_topic, self._on_image, in_qos)
        self._info_topic = "camera_info"
        self.create_subscription(CameraInfo, self._info_topic, self._on_camera_info, in_qos)

        out_qos = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                             history=HistoryPolicy.KEEP_LAST, depth=10)
        latched = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             history=HistoryPolicy.KEEP_LAST, depth=1)
        self.pub_odom = self.create_publisher(Odometry, "odom", out_qos)
        self.pub_path = self.create_publisher(Path, "path", out_qos)
        self.pub_cloud = self.create_publisher(PointCloud2, "cloud", out_qos)
        self.pub_map = self.create_publisher(PointCloud2, "map_cloud", latched)
        self.pub_tf = self.create_publisher(TFMessage, "/tf", QoSProfile(
            reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=100))
        self.pub_tf_static = self.create_publisher(TFMessage, "/tf_static", latched)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", out_qos)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_timer(self.p["diagnostics_period"], self._publish_diagnostics)

    # ----------------------------------------------------------------------------- callbacks
    def _on_image(self, msg) -> None:
        now = time.monotonic()
        with self._cond:
            if self._slot is not None:
                self.counters.inc("frames_dropped")
            self._slot = msg
            self._slot_received = now
            self._cond.notify()
        self.counters.inc("frames_received")
        self._in_times.append(now)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            camera = M.camera_model_from_info(msg)
        except ValueError as exc:
            self.counters.inc("bad_camera_info")
            self._camera_error = str(exc)
            self._warn("camera_info", f"rejected CameraInfo: {exc}")
            return
        self._camera = camera
        self._camera_error = ""

    def _on_reset(self, request, response):
        self._reset_requested = True
        with self._cond:
            self._cond.notify()
        response.success = True
        response.message = "pipeline reset requested; it re-initialises on the next frames"
        return response

    def _warn(self, key: str, text: str) -> None:
        """Rate-limited warning, one stream per ``key`` (rclpy's throttle is per call site)."""
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) >= LOG_THROTTLE_S:
            self._last_log[key] = now
            self.get_logger().warning(text)

    # ----------------------------------------------------------------------------- worker
    def _work(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._stop and not self._reset_requested:
                    self._cond.wait()
                if self._stop:
                    return
                msg, received = self._slot, self._slot_received
                self._slot = None
            if self._reset_requested:
                self._reset_requested = False
                self._reset("reset service called")
            if msg is None:
                continue
            try:
                self._process(msg, received)
            except Exception as exc:  # never let a bug kill the worker: count, log, reset
                self.counters.inc("pipeline_error")
                self.get_logger().error(f"pipeline error, resetting: {exc}\n{traceback.format_exc()}")
                self._reset("pipeline error")

    def _reset(self, why: str) -> None:
        self.pipeline.reset()
        self._path.poses.clear()
        self._state = TrackingState.INITIALIZING
        self.counters.inc("resets")
        self.get_logger().info(f"pipeline reset: {why}")

    def _process(self, msg, received: float) -> None:
        stamp_ns = M.stamp_to_ns(msg.header.stamp)
        if self._last_stamp_ns is not None:
            if stamp_ns < self._last_stamp_ns:
                self.counters.inc("time_jump_back")
                self._warn("time_jump", f"image stamp went back by "
                           f"{(self._last_stamp_ns - stamp_ns) / 1e9:.3f} s (bag loop?): resetting")
                self._reset("time jumped backwards")
            elif stamp_ns == self._last_stamp_ns:
                self.counters.inc("duplicate_stamp")
                self._warn("duplicate", f"duplicate image stamp {stamp_ns} ns: frame skipped")
                return
        camera = self._camera
        if camera is None:
            self.counters.inc("no_camera_info")
            why = f" (last one rejected: {self._camera_error})" if self._camera_error else ""
            self._warn("no_info", f"no valid CameraInfo on '{self._info_topic}' yet{why}: "
                       "frame skipped")
            return
        t0 = time.perf_counter()
        try:
            gray, rgb = M.decode_image_msg(msg, self.core_cfg.image_16bit_significant_bits)
        except ValueError as exc:
            self.counters.inc("bad_image")
            self._warn("bad_image", f"image rejected: {exc}")
            return
        if gray.shape != (camera.height, camera.width):
            self.counters.inc("size_mismatch")
            self._warn("size", f"image is {gray.shape[1]}x{gray.shape[0]} but CameraInfo says "
                       f"{camera.width}x{camera.height}: frame skipped")
            return
        decode_ms = (time.perf_counter() - t0) * 1e3
        self._last_stamp_ns = stamp_ns
        result = self.pipeline.process(Frame(stamp_ns, gray, rgb, camera))
        result.timings_ms["decode"] = decode_ms
        if result.reset:
            self.counters.inc("resets")
        if result.state is TrackingState.LOST and self._state is not TrackingState.LOST:
            self.counters.inc("tracking_lost")
            self._warn("lost", f"tracking lost at {stamp_ns / 1e9:.3f} s: {result.message}")
        self._state = result.state
        self._last_timings = result.timings_ms
        frame_id = self.p["camera_frame"] or msg.header.frame_id or "camera_optical_frame"
        self._publish(result, frame_id)
        self.counters.inc("frames_processed")
        now = time.monotonic()
        self._out_times.append(now)
        self._latency_ms.append((now - received) * 1e3)

    # ----------------------------------------------------------------------------- outputs
    def _publish(self, result: FrameResult, camera_frame: str) -> None:
        stamp = M.ns_to_stamp(result.stamp_ns)
        odom, base = self.p["odom_frame"], self.p["base_frame"]
        if self.p["publish_camera_tf"] and self._static_tf_sent_for != camera_frame:
            self.pub_tf_static.publish(TFMessage(transforms=[
                M.transform_msg(self.T_base_cam, stamp, base, camera_frame)]))
            self._static_tf_sent_for = camera_frame
        T_odom_world = self.T_base_cam
        if result.state is TrackingState.TRACKING and result.T_world_cam is not None:
            T_odom_base = T_odom_world @ result.T_world_cam @ self.T_cam_base
            transforms = []
            if self.p["publish_map_tf"]:
                transforms.append(M.transform_msg(np.eye(4), stamp, self.p["map_frame"], odom))
            if self.p["publish_odom_tf"]:
                transforms.append(M.transform_msg(T_odom_base, stamp, odom, base))
            if transforms:
                self.pub_tf.publish(TFMessage(transforms=transforms))
            pose_cov, twist, twist_cov = self._odom_uncertainty(result, T_odom_base)
            self.pub_odom.publish(M.odometry_msg(T_odom_base, stamp, odom, base,
                                                 pose_cov, twist, twist_cov))
            self._path.poses.append(M.pose_stamped_msg(T_odom_base, stamp, odom))
            if len(self._path.poses) > self.p["path_max_poses"]:
                del self._path.poses[: len(self._path.poses) - self.p["path_max_poses"]]
            if self.pub_path.get_subscription_count():
                self._path.header.stamp = stamp
                self._path.header.frame_id = odom
                self.pub_path.publish(self._path)
        n = self.counters.values["frames_processed"]
        if (result.cloud is not None and len(result.cloud)
                and n % self.p["cloud_publish_period"] == 0 and self.pub_cloud.get_subscription_count()):
            self.pub_cloud.publish(M.cloud2_msg(M.cloud_to_array(result.cloud, T_odom_world), stamp, odom))
        if result.map_cloud is not None and self.pub_map.get_subscription_count():
            self.pub_map.publish(M.cloud2_msg(M.cloud_to_array(result.map_cloud, T_odom_world), stamp, odom))

    def _odom_uncertainty(self, result: FrameResult, T_odom_base: np.ndarray):
        """Pose covariance in odom, twist (and its covariance) in base, from the camera's."""
        R_ow = self.T_base_cam[:3, :3]
        pose_cov = None
        if result.covariance is not None:
            J = np.kron(np.eye(2), R_ow)
            pose_cov = J @ result.covariance @ J.T
        twist = None
        if result.velocity_world is not None:
            v_cam, w = R_ow @ result.velocity_world[:3], R_ow @ result.velocity_world[3:]
            lever = T_odom_base[:3, 3] - (T_odom_base @ self.T_base_cam)[:3, 3]
            R_base_odom = T_odom_base[:3, :3].T
            twist = np.concatenate([R_base_odom @ (v_cam + np.cross(w, lever)), R_base_odom @ w])
        return pose_cov, twist, None

    def _publish_diagnostics(self) -> None:
        def rate(times) -> float:
            if len(times) < 2 or time.monotonic() - times[-1] > 2.0:
                return 0.0
            return (len(times) - 1) / max(times[-1] - times[0], 1e-6)
        lat = np.asarray(self._latency_ms) if self._latency_ms else np.zeros(1)
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: tracking",
                                  hardware_id="monocular camera")
        if self._state is TrackingState.TRACKING:
            status.level, status.message = DiagnosticStatus.OK, "tracking"
        elif self._state is TrackingState.LOST:
            status.level, status.message = DiagnosticStatus.WARN, "tracking lost"
        else:
            status.level, status.message = DiagnosticStatus.WARN, "initialising"
        if self._camera is None:
            status.level, status.message = DiagnosticStatus.ERROR, "no valid CameraInfo"
        values = {"state": self._state.value, "input_rate_hz": f"{rate(self._in_times):.1f}",
                  "output_rate_hz": f"{rate(self._out_times):.1f}",
                  "latency_p50_ms": f"{np.percentile(lat, 50):.1f}",
                  "latency_p99_ms": f"{np.percentile(lat, 99):.1f}",
                  "runtime": "cpu", **{k: str(v) for k, v in self.counters.values.items()},
                  **{f"stage_{k}_ms": f"{v:.1f}" for k, v in self._last_timings.items()}}
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)

    def shutdown(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._worker.join(timeout=5.0)


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=argv if argv is not None else sys.argv)
    try:
        node = SirenPoseNode()
    except ParamError as exc:
        rclpy.logging.get_logger("sirenpose").fatal(f"invalid parameter, not starting: {exc}")
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
