"""The live ROS 2 node: camera in, TF / odometry / path / point clouds / diagnostics out.

Threading: subscription callbacks only store the newest frame in a one-slot buffer (counting the
frames they overwrite); a worker thread converts the image and runs the pipeline. The executor
thread therefore never waits behind inference, so /tf, /clock, services and parameter requests
stay responsive. With ``staged_pipeline`` (default) the worker is the frontend stage of
``core.staged.StagedRunner``: the pose stage publishes TF / odometry from its own thread, the
dense stage the clouds, and keyframe mapping runs on a fourth thread, so frame k+1's keypoints,
frame k's pose and frame k-1's cloud are computed at the same time. Otherwise the worker runs the
stages one after the other. Every output carries the input image's stamp.
"""
from __future__ import annotations

import collections
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry, Path as PathMsg
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage

from sirenpose_ros.core.child import error_type
from sirenpose_ros.core.config import make_config, pipeline_params
from sirenpose_ros.core.params import ParamError, ParamSpec, validate
from sirenpose_ros.core.pipeline import Pipeline
from sirenpose_ros.core.scale import ScaleEstimator
from sirenpose_ros.core.staged import StagedRunner
from sirenpose_ros.core.types import Frame, FrameResult, TrackingState
from sirenpose_ros.ros import messages as M
from sirenpose_ros.ros.node_params import NODE_PARAMS
from sirenpose_ros.ros.tf_buffer import TransformStore

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


def extrinsic_from_params(p: dict) -> np.ndarray:
    """T_base_optical from the camera body pose parameters."""
    T = np.eye(4)
    T[:3, :3] = rpy_matrix(p["camera_roll"], p["camera_pitch"], p["camera_yaw"]) @ R_BODY_OPTICAL
    T[:3, 3] = [p["camera_x"], p["camera_y"], p["camera_z"]]
    return T


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


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _gpu_mb() -> float:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.memory_allocated() / 2**20
    return 0.0


class Counters:
    """Monotonic event counters shown in /diagnostics."""
    NAMES = ("frames_received", "frames_processed", "frames_dropped", "bad_image", "size_mismatch",
             "no_camera_info", "bad_camera_info", "camera_info_unmatched", "time_jump_back",
             "duplicate_stamp", "pipeline_error", "gpu_out_of_memory", "resets", "tracking_lost",
             "bad_depth")

    def __init__(self) -> None:
        self.values = dict.fromkeys(self.NAMES, 0)
        self._lock = threading.Lock()

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.values[name] += n


class SirenPoseNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("sirenpose", **kwargs)
        self.p = self._declare(NODE_PARAMS)
        self.core_cfg = make_config(self._declare(pipeline_params()))
        staged = bool(self.p["staged_pipeline"])
        self.pipeline = Pipeline(self.core_cfg, async_mapping=staged)
        self.scale = ScaleEstimator(self.core_cfg)
        # stamp_ns -> (received monotonic, decode ms, camera) of frames handed to the pose stage
        self._frame_meta: dict[int, tuple[float, float]] = {}
        self._runner = (StagedRunner(self.pipeline, self._on_pose_result, self._on_dense_result,
                                     self._on_stage_error) if staged else None)
        self._degrade_requested = False
        self._reset_reason = "reset service called"

        self.counters = Counters()
        self._slot: Image | CompressedImage | None = None
        self._slot_received = 0.0
        self._cond = threading.Condition()
        self._stop = False
        self._reset_requested = False
        self._infos: collections.deque = collections.deque(maxlen=30)   # (stamp_ns, CameraModel)
        self._camera_error = ""
        self._depths: collections.deque = collections.deque(maxlen=10)  # Image messages
        self._last_stamp_ns: int | None = None
        self._state = TrackingState.INITIALIZING
        self._in_times: collections.deque = collections.deque(maxlen=200)
        self._out_times: collections.deque = collections.deque(maxlen=200)
        self._latency_ms: collections.deque = collections.deque(maxlen=500)
        self._last_timings: dict[str, float] = {}
        self._path = PathMsg()
        self._trajectory: collections.deque = collections.deque(maxlen=self.p["trajectory_max_poses"])
        self._last_map = None
        self._last_log: dict[str, float] = {}
        self._io_lock = threading.Lock()   # trajectory / map snapshots for the save services

        self.tf_store = TransformStore()
        self.T_base_cam: np.ndarray | None = None
        # odom <- pipeline world. The world is the camera where the pipeline (re)started; odom
        # stays continuous across resets by anchoring each new world at the last published pose.
        self._T_odom_world: np.ndarray | None = None
        self._last_T_odom_base: np.ndarray | None = None
        self._camera_frame: str | None = None
        if self.p["extrinsics_source"] == "parameters":
            self._set_extrinsic(extrinsic_from_params(self.p), "parameters")

        self._make_interfaces()
        self._worker = threading.Thread(target=self._work, name="sirenpose-worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"sirenpose ready: image '{self._image_topic}' ({self.p['image_transport']}, "
            f"{self.p['input_qos']} QoS), camera_info '{self._info_topic}', odom "
            f"'{self.p['odom_frame']}' -> base '{self.p['base_frame']}', scale source "
            f"'{self.core_cfg.scale_source}', runtime {getattr(self.pipeline, 'runtime', 'cpu')}")

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
        reliability = (ReliabilityPolicy.BEST_EFFORT if self.p["input_qos"] == "sensor_data"
                       else ReliabilityPolicy.RELIABLE)
        in_qos = QoSProfile(reliability=reliability, history=HistoryPolicy.KEEP_LAST, depth=depth)
        if self.p["image_transport"] == "compressed":
            self._image_topic = "image/compressed"
            self.create_subscription(CompressedImage, self._image_topic, self._on_image, in_qos)
        else:
            self._image_topic = "image"
            self.create_subscription(Image, self._image_topic, self._on_image, in_qos)
        self._info_topic = "camera_info"
        self.create_subscription(CameraInfo, self._info_topic, self._on_camera_info, in_qos)
        if self.core_cfg.scale_source == "depth":
            self.create_subscription(Image, "depth", lambda m: self._depths.append(m), in_qos)

        out_qos = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                             history=HistoryPolicy.KEEP_LAST, depth=10)
        latched = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             history=HistoryPolicy.KEEP_LAST, depth=1)
        tf_qos = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                            history=HistoryPolicy.KEEP_LAST, depth=100)
        if self.p["extrinsics_source"] != "parameters":
            self.create_subscription(TFMessage, "/tf_static", self._on_tf, QoSProfile(
                reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                history=HistoryPolicy.KEEP_LAST, depth=100))
            self.create_subscription(TFMessage, "/tf", self._on_tf, tf_qos)
        self.pub_odom = self.create_publisher(Odometry, "odom", out_qos)
        self.pub_path = self.create_publisher(PathMsg, "path", out_qos)
        self.pub_cloud = self.create_publisher(PointCloud2, "cloud", out_qos)
        self.pub_map = self.create_publisher(PointCloud2, "map_cloud", latched)
        self.pub_tf = self.create_publisher(TFMessage, "/tf", tf_qos)
        self.pub_tf_static = self.create_publisher(TFMessage, "/tf_static", latched)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", out_qos)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_service(Trigger, "~/save_trajectory", self._on_save_trajectory)
        self.create_service(Trigger, "~/save_map", self._on_save_map)
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
        self._infos.append((M.stamp_to_ns(msg.header.stamp), camera))
        self._camera_error = ""

    def _on_tf(self, msg: TFMessage) -> None:
        for t in msg.transforms:
            # Our own odom -> base transforms are not extrinsics; skip them cheaply.
            if t.child_frame_id != self.p["base_frame"]:
                self.tf_store.set(t.header.frame_id, t.child_frame_id,
                                  M.transform_to_matrix(t.transform))

    def _on_reset(self, request, response):
        self._reset_requested = True
        with self._cond:
            self._cond.notify()
        response.success = True
        response.message = "pipeline reset requested; it re-initialises on the next frames"
        return response

    def _on_save_trajectory(self, request, response):
        from sirenpose_ros.io.tum import write_tum
        with self._io_lock:
            rows = list(self._trajectory)
        if not rows:
            response.success, response.message = False, "no poses yet"
            return response
        path = self._output_path("trajectory.tum")
        write_tum(path, np.array([r[0] for r in rows], np.int64), np.stack([r[1] for r in rows]))
        response.success, response.message = True, f"wrote {len(rows)} poses (odom -> base) to {path}"
        return response

    def _on_save_map(self, request, response):
        from sirenpose_ros.io.ply import write_ply
        with self._io_lock:
            cloud = self._last_map
        if cloud is None or not len(cloud):
            response.success, response.message = False, "no map yet"
            return response
        path = self._output_path("map.ply")
        write_ply(path, cloud)
        response.success, response.message = True, f"wrote {len(cloud)} points (frame odom) to {path}"
        return response

    def _output_path(self, name: str) -> Path:
        folder = Path(os.path.expanduser(self.p["output_dir"]))
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def _warn(self, key: str, text: str) -> None:
        """Rate-limited warning, one stream per ``key`` (rclpy's throttle is per call site)."""
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) >= LOG_THROTTLE_S:
            self._last_log[key] = now
            self.get_logger().warning(text)

    # ----------------------------------------------------------------------------- worker
    def _work(self) -> None:
        while True:
            if self._runner is not None:
                # Take the newest image only when the frontend stage can start on it, so that
                # it does not age in the worker while the stages are busy.
                self._runner.wait_ready(timeout=1.0)
            with self._cond:
                while self._slot is None and not self._stop and not self._reset_requested:
                    self._cond.wait()
                if self._stop:
                    return
                msg, received = self._slot, self._slot_received
                self._slot = None
            if self._reset_requested:
                self._reset_requested = False
                if self._degrade_requested:
                    self._degrade_requested = False
                    self._drain()
                    how = self.pipeline.degrade() if hasattr(self.pipeline, "degrade") else "reset"
                    self.get_logger().warning(f"GPU out of memory: {how}")
                why, self._reset_reason = self._reset_reason, "reset service called"
                self._reset(why, keep_odom=True)
            if msg is None:
                continue
            try:
                self._process(msg, received)
            except Exception as exc:  # never let a bug kill the worker: count, log, recover
                if self._stop or not self.context.ok():
                    # SIGINT/SIGTERM shut the context down while this frame was in flight: its
                    # publish fails; that is shutdown, not a pipeline error to log and count.
                    return
                if error_type(exc) == "OutOfMemoryError":
                    self.counters.inc("gpu_out_of_memory")
                    how = self.pipeline.degrade() if hasattr(self.pipeline, "degrade") else "reset"
                    self.get_logger().warning(f"GPU out of memory: {how}")
                    self._reset("GPU out of memory", keep_odom=True)
                    continue
                self.counters.inc("pipeline_error")
                self.get_logger().error(f"pipeline error, resetting: {exc}\n{traceback.format_exc()}")
                self._reset("pipeline error", keep_odom=True)

    def _drain(self) -> None:
        """Wait until the stage threads are idle (staged mode)."""
        if self._runner is not None:
            self._runner.drain(timeout=10.0)

    def _on_stage_error(self, stage: str, exc: BaseException) -> None:
        """A stage thread failed on a frame: count and log here; the worker resets (a stage
        thread must not drain the stages it is part of)."""
        if self._stop or not self.context.ok():
            return
        if error_type(exc) == "OutOfMemoryError":
            self.counters.inc("gpu_out_of_memory")
            self._degrade_requested = True
            self._reset_reason = "GPU out of memory"
        else:
            self.counters.inc("pipeline_error")
            self.get_logger().error(f"pipeline error in the {stage} stage, resetting: {exc}\n"
                                    f"{''.join(traceback.format_exception(exc))}")
            self._reset_reason = f"pipeline error ({stage} stage)"
        with self._cond:
            self._reset_requested = True
            self._cond.notify()

    def _reset(self, why: str, keep_odom: bool) -> None:
        """Restart the pipeline. ``keep_odom``: odometry continues from the last pose (REP-105);
        otherwise (time went backwards: a bag loop) it starts again at the origin."""
        self._drain()
        self._frame_meta.clear()      # frames that failed before their pose
        self._anchor_world(keep_odom)
        self.pipeline.reset()
        self.scale.reset()
        self._path.poses.clear()
        self._state = TrackingState.INITIALIZING
        self.counters.inc("resets")
        self.get_logger().info(f"pipeline reset: {why}")

    def _camera_for(self, stamp_ns: int):
        if not self._infos:
            return None
        tol = self.p["camera_info_tolerance"]
        if tol <= 0:
            return self._infos[-1][1]
        stamp, camera = min(self._infos, key=lambda sc: abs(sc[0] - stamp_ns))
        return camera if abs(stamp - stamp_ns) <= tol * 1e9 else None

    def _process(self, msg, received: float) -> None:
        stamp_ns = M.stamp_to_ns(msg.header.stamp)
        if self._last_stamp_ns is not None:
            if stamp_ns < self._last_stamp_ns:
                self.counters.inc("time_jump_back")
                self._warn("time_jump", f"image stamp went back by "
                           f"{(self._last_stamp_ns - stamp_ns) / 1e9:.3f} s (bag loop?): resetting")
                self._reset("time jumped backwards", keep_odom=False)
            elif stamp_ns == self._last_stamp_ns:
                self.counters.inc("duplicate_stamp")
                self._warn("duplicate", f"duplicate image stamp {stamp_ns} ns: frame skipped")
                return
        camera = self._camera_for(stamp_ns)
        if camera is None:
            if self._infos:
                self.counters.inc("camera_info_unmatched")
                self._warn("info_match", f"no CameraInfo within camera_info_tolerance="
                           f"{self.p['camera_info_tolerance']} s of image stamp {stamp_ns}: skipped")
            else:
                self.counters.inc("no_camera_info")
                why = f" (last one rejected: {self._camera_error})" if self._camera_error else ""
                self._warn("no_info", f"no valid CameraInfo on '{self._info_topic}' yet{why}: "
                           "frame skipped")
            return
        t0 = time.perf_counter()
        try:
            gray, rgb = M.decode_image_msg(msg, self.core_cfg.image_16bit_significant_bits,
                                           self.p["max_image_pixels"])
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
        frame_id = self.p["camera_frame"] or msg.header.frame_id or "camera_optical_frame"
        if not self._ensure_extrinsic(frame_id, msg.header.stamp):
            return
        self._last_stamp_ns = stamp_ns
        frame = Frame(stamp_ns, gray, rgb, camera)
        self._frame_meta[stamp_ns] = (received, decode_ms, camera)
        if self._runner is not None:
            self._runner.submit(frame)        # the stage threads publish
            return
        result = self.pipeline.track(frame)
        self._on_pose_result(result)
        self.pipeline.densify(result)
        self._on_dense_result(result)

    def _on_pose_result(self, result: FrameResult) -> None:
        """Pose stage output: scale, TF / odometry / path (pose stage thread when staged)."""
        received, decode_ms, camera = self._frame_meta.pop(result.stamp_ns)
        result.timings_ms["decode"] = decode_ms
        stamp_ns = result.stamp_ns
        if result.reset:
            self.counters.inc("resets")
            self.scale.reset()
        if result.new_world:
            self._anchor_world(keep_odom=True)
        if result.state is TrackingState.LOST and self._state is not TrackingState.LOST:
            self.counters.inc("tracking_lost")
            self._warn("lost", f"tracking lost at {stamp_ns / 1e9:.3f} s: {result.message}")
        self._state = result.state
        self._update_scale(result, camera)
        scale = self._output_scale()
        if scale is not None:
            self._publish_pose(result, scale)
        # Pose latency (what navigation waits for) ends here; the dense stage follows.
        now = time.monotonic()
        self._out_times.append(now)
        self._latency_ms.append((now - received) * 1e3)
        self.counters.inc("frames_processed")

    def _on_dense_result(self, result: FrameResult) -> None:
        """Dense stage output: clouds (dense stage thread when staged)."""
        scale = self._output_scale()
        if scale is not None and self._T_odom_world is not None:
            self._publish_clouds(result, scale)
        self._last_timings = result.timings_ms

    def _ensure_extrinsic(self, camera_frame: str, stamp) -> bool:
        """Resolve base -> camera once per camera frame name (TF, or parameters as fallback)."""
        if self.T_base_cam is not None and self._camera_frame == camera_frame:
            return True
        source = self.p["extrinsics_source"]
        if source == "parameters":
            self._camera_frame = camera_frame
            self._publish_static_tf(stamp)
            return True
        deadline = time.monotonic() + self.p["extrinsics_wait"]
        T = self.tf_store.lookup(self.p["base_frame"], camera_frame)
        while T is None and time.monotonic() < deadline and not self._stop:
            time.sleep(0.02)
            T = self.tf_store.lookup(self.p["base_frame"], camera_frame)
        if T is not None:
            self._set_extrinsic(T, "TF")
            self._camera_frame = camera_frame
            return True
        if source == "tf":
            self._warn("extrinsic", f"no transform {self.p['base_frame']} -> {camera_frame} on TF "
                       "yet (extrinsics_source 'tf'): frame skipped")
            return False
        self._set_extrinsic(extrinsic_from_params(self.p), "parameters (none on TF)")
        self._camera_frame = camera_frame
        self._publish_static_tf(stamp)
        return True

    def _set_extrinsic(self, T_base_cam: np.ndarray, source: str) -> None:
        self.T_base_cam = T_base_cam
        self.T_cam_base = np.linalg.inv(T_base_cam)
        if self._T_odom_world is None:
            # The first world is the first camera's optical frame and odom the first base frame,
            # so odom <- world is the base <- camera extrinsic.
            self._T_odom_world = T_base_cam.copy()
        self.get_logger().info(f"camera extrinsic from {source}: t = {np.round(T_base_cam[:3, 3], 4)}")

    def _publish_static_tf(self, stamp) -> None:
        if self.p["publish_camera_tf"]:
            self.pub_tf_static.publish(TFMessage(transforms=[
                M.transform_msg(self.T_base_cam, stamp, self.p["base_frame"], self._camera_frame)]))

    def _update_scale(self, result: FrameResult, camera) -> None:
        source = self.core_cfg.scale_source
        if source == "none" or result.keypoint_depth is None or result.state is not TrackingState.TRACKING:
            return
        static = result.dynamic_prob < 0.5
        px, z = result.keypoints[static], result.keypoint_depth[static]
        if source == "depth":
            metric = self._metric_depth_at(result.stamp_ns, px, camera)
            if metric is not None:
                self.scale.add_depth(z, metric)
        else:
            xn = camera.undistort_points(px)
            pts = np.column_stack([xn * z[:, None], z])
            up_cam = self.T_cam_base[:3, :3] @ np.array([0.0, 0.0, 1.0])
            self.scale.add_ground(pts, up_cam)

    def _metric_depth_at(self, stamp_ns: int, px: np.ndarray, camera) -> np.ndarray | None:
        """Metric depth (m) at pixels, from the aligned depth image with the nearest stamp."""
        if not self._depths:
            return None
        msg = min(list(self._depths), key=lambda m: abs(M.stamp_to_ns(m.header.stamp) - stamp_ns))
        if abs(M.stamp_to_ns(msg.header.stamp) - stamp_ns) > 0.05e9:
            return None
        try:
            depth = M.depth_image_metres(msg)
        except ValueError as exc:
            self.counters.inc("bad_depth")
            self._warn("depth", f"depth image rejected: {exc}")
            return None
        h, w = depth.shape
        u = np.clip(np.round(px[:, 0] * w / camera.width).astype(int), 0, w - 1)
        v = np.clip(np.round(px[:, 1] * h / camera.height).astype(int), 0, h - 1)
        return depth[v, u]

    # ----------------------------------------------------------------------------- outputs
    def _anchor_world(self, keep_odom: bool) -> None:
        """Place the next pipeline world (the camera at restart) in odom."""
        if self.T_base_cam is None:
            return
        if keep_odom and self._last_T_odom_base is not None:
            self._T_odom_world = self._last_T_odom_base @ self.T_base_cam
        else:
            self._T_odom_world = self.T_base_cam.copy()
            self._last_T_odom_base = None

    def _output_scale(self) -> float | None:
        """Metres per pipeline unit (1.0 without a scale source); None while still unknown."""
        if self.core_cfg.scale_source == "none":
            return 1.0
        s = self.scale.scale
        if s is None:
            self._warn("scale", "waiting for a metric scale estimate: no odometry yet")
        return s

    def _publish_pose(self, result: FrameResult, s: float) -> None:
        if result.state is not TrackingState.TRACKING or result.T_world_cam is None:
            return          # tracking-lost policy: no odometry rather than a guessed one
        stamp = M.ns_to_stamp(result.stamp_ns)
        odom, base = self.p["odom_frame"], self.p["base_frame"]
        T_wc = result.T_world_cam.copy()
        T_wc[:3, 3] *= s
        T_odom_base = self._T_odom_world @ T_wc @ self.T_cam_base
        self._last_T_odom_base = T_odom_base
        transforms = []
        if self.p["publish_map_tf"]:
            transforms.append(M.transform_msg(np.eye(4), stamp, self.p["map_frame"], odom))
        if self.p["publish_odom_tf"]:
            transforms.append(M.transform_msg(T_odom_base, stamp, odom, base))
        if transforms:
            self.pub_tf.publish(TFMessage(transforms=transforms))
        pose_cov, twist = self._odom_uncertainty(result, T_odom_base, s)
        self.pub_odom.publish(M.odometry_msg(T_odom_base, stamp, odom, base, pose_cov, twist, None))
        with self._io_lock:
            self._trajectory.append((result.stamp_ns, T_odom_base))
        self._path.poses.append(M.pose_stamped_msg(T_odom_base, stamp, odom))
        if len(self._path.poses) > self.p["path_max_poses"]:
            del self._path.poses[: len(self._path.poses) - self.p["path_max_poses"]]
        if self.pub_path.get_subscription_count():
            self._path.header.stamp = stamp
            self._path.header.frame_id = odom
            self.pub_path.publish(self._path)

    def _publish_clouds(self, result: FrameResult, s: float) -> None:
        stamp = M.ns_to_stamp(result.stamp_ns)
        odom = self.p["odom_frame"]
        T_out = self._T_odom_world.copy()
        T_out[:3, :3] *= s            # the cloud (and its velocities) scale with the poses
        n = self.counters.values["frames_processed"]
        if (result.cloud is not None and len(result.cloud)
                and n % self.p["cloud_publish_period"] == 0 and self.pub_cloud.get_subscription_count()):
            self.pub_cloud.publish(M.cloud2_msg(M.cloud_to_array(result.cloud, T_out), stamp, odom))
        if result.map_cloud is not None:
            with self._io_lock:
                self._last_map = M.transform_cloud(result.map_cloud, T_out)
            if self.pub_map.get_subscription_count():
                self.pub_map.publish(M.cloud2_msg(M.cloud_to_array(self._last_map), stamp, odom))

    def _odom_uncertainty(self, result: FrameResult, T_odom_base: np.ndarray, s: float):
        """Pose covariance in odom and twist in base, from the camera's (world-frame) ones."""
        R_ow = self._T_odom_world[:3, :3]
        pose_cov = None
        if result.covariance is not None:
            J = np.kron(np.diag([s, 1.0]), R_ow)     # position scales, rotation does not
            pose_cov = J @ result.covariance @ J.T
        twist = None
        if result.velocity_world is not None:
            v_cam, w = s * (R_ow @ result.velocity_world[:3]), R_ow @ result.velocity_world[3:]
            # Velocity of the base origin = camera velocity + w x (base - camera), in odom.
            lever = T_odom_base[:3, 3] - (T_odom_base @ self.T_base_cam)[:3, 3]
            R_base_odom = T_odom_base[:3, :3].T
            twist = np.concatenate([R_base_odom @ (v_cam + np.cross(w, lever)), R_base_odom @ w])
        return pose_cov, twist

    def _publish_diagnostics(self) -> None:
        def rate(times) -> float:
            if len(times) < 2 or time.monotonic() - times[-1] > 2.0:
                return 0.0
            return (len(times) - 1) / max(times[-1] - times[0], 1e-6)
        lat = np.asarray(self._latency_ms) if self._latency_ms else np.zeros(1)
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: visual odometry",
                                  hardware_id="monocular camera")
        if self._state is TrackingState.TRACKING:
            status.level, status.message = DiagnosticStatus.OK, "tracking"
        elif self._state is TrackingState.LOST:
            status.level, status.message = DiagnosticStatus.WARN, "tracking lost"
        else:
            status.level, status.message = DiagnosticStatus.WARN, "initialising"
        if not self._infos:
            status.level, status.message = DiagnosticStatus.ERROR, "no valid CameraInfo"
        scale = self.scale.scale if self.core_cfg.scale_source != "none" else None
        values = {"state": self._state.value, "input_rate_hz": f"{rate(self._in_times):.1f}",
                  "output_rate_hz": f"{rate(self._out_times):.1f}",
                  "latency_p50_ms": f"{np.percentile(lat, 50):.1f}",
                  "latency_p99_ms": f"{np.percentile(lat, 99):.1f}",
                  "runtime": str(getattr(self.pipeline, "runtime", "cpu")),
                  "scale": "up to scale" if scale is None else f"{scale:.4f}",
                  "rss_mb": f"{_rss_mb():.1f}", "gpu_mem_mb": f"{_gpu_mb():.1f}",
                  **{k: str(v) for k, v in self.counters.values.items()},
                  **{f"stage_{k}_ms": f"{v:.1f}" for k, v in self._last_timings.items()}}
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)

    def shutdown(self) -> bool:
        """Stop the worker and the stage threads (5 s in all); False when one is still inside a
        frame after that."""
        deadline = time.monotonic() + 5.0
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._worker.join(timeout=5.0)
        stages_done = True
        if self._runner is not None:
            stages_done = self._runner.close(timeout=max(0.0, deadline - time.monotonic()))
        if self._worker.is_alive() or not stages_done:
            self.get_logger().warning("worker still inside a frame after 5 s: exiting without it")
            return False
        return True


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=argv if argv is not None else sys.argv)
    try:
        node = SirenPoseNode()
    except (ValueError, FileNotFoundError) as exc:   # ParamError, missing or corrupt model file
        rclpy.logging.get_logger("sirenpose").fatal(f"not starting: {exc}")
        rclpy.try_shutdown()
        return 2
    stopped = False
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stopped = node.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    if not stopped:
        # Finalising the interpreter under a worker thread that is still inside torch aborts the
        # process (std::terminate, exit code -6); that frame can no longer be published anyway.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
