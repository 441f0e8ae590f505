"""Conversions between ROS messages and the core's NumPy types. No node state here."""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, Quaternion, TransformStamped, Vector3
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from sirenpose_ros.core.camera import CameraModel
from sirenpose_ros.core.image import decode_compressed, decode_image
from sirenpose_ros.io.pointcloud import CLOUD_DTYPE, cloud_to_array, transform_cloud  # noqa: F401
from sirenpose_ros.io.tum import matrix_to_quat, quat_to_matrix

_POINTFIELD_TYPE = {"<f4": PointField.FLOAT32, "<u4": PointField.UINT32}
CLOUD_FIELDS = [
    PointField(name=name, offset=CLOUD_DTYPE.fields[name][1],
               datatype=_POINTFIELD_TYPE[CLOUD_DTYPE.fields[name][0].str], count=1)
    for name in CLOUD_DTYPE.names
]


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def decode_image_msg(msg: Image | CompressedImage, significant_bits: int = 16,
                     max_pixels: int = 4096 * 4096) -> tuple[np.ndarray, np.ndarray | None]:
    """(gray, rgb|None); raises ImageDecodeError with a message fit for the log."""
    if isinstance(msg, CompressedImage):
        return decode_compressed(msg.format, msg.data, max_pixels=max_pixels)
    return decode_image(msg.encoding, msg.width, msg.height, msg.step, msg.data,
                        bool(msg.is_bigendian), max_pixels, significant_bits=significant_bits)


def depth_image_metres(msg: Image) -> np.ndarray:
    """An aligned depth image in metres (16UC1/mono16: millimetres, 32FC1: metres; REP-118).
    Zero and non-finite depths become NaN. Raises ValueError on other encodings or sizes."""
    enc = msg.encoding.lower()
    if enc in ("16uc1", "mono16"):
        dtype, factor = np.dtype(">u2" if msg.is_bigendian else "<u2"), 1e-3
    elif enc == "32fc1":
        dtype, factor = np.dtype(">f4" if msg.is_bigendian else "<f4"), 1.0
    else:
        raise ValueError(f"depth encoding '{msg.encoding}' not supported; expected 16UC1 (mm) or 32FC1 (m)")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0 or step < w * dtype.itemsize or len(msg.data) < step * h:
        raise ValueError(f"depth image {w}x{h} step {step} does not fit its {len(msg.data)} bytes")
    rows = np.frombuffer(msg.data, np.uint8, count=step * h).reshape(h, step)
    with np.errstate(invalid="ignore", over="ignore"):   # NaN/inf samples become NaN below
        depth = rows[:, : w * dtype.itemsize].copy().view(dtype).reshape(h, w).astype(np.float32) * factor
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth


def matrix_from(translation, rotation) -> np.ndarray:
    """4x4 from a geometry_msgs Vector3/Point and Quaternion."""
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(np.array([rotation.x, rotation.y, rotation.z, rotation.w]))
    T[:3, 3] = [translation.x, translation.y, translation.z]
    return T


def transform_to_matrix(tf) -> np.ndarray:
    """geometry_msgs/Transform -> 4x4."""
    return matrix_from(tf.translation, tf.rotation)


def camera_model_from_info(msg: CameraInfo) -> CameraModel:
    """Raises CameraModelError (a ValueError) for zero/NaN intrinsics or unknown models."""
    return CameraModel.from_camera_info(int(msg.width), int(msg.height), list(msg.k),
                                        list(msg.d), msg.distortion_model)


def _quat(R: np.ndarray) -> Quaternion:
    q = matrix_to_quat(R)
    return Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))


def transform_msg(T: np.ndarray, stamp: Time, parent: str, child: str) -> TransformStamped:
    msg = TransformStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = parent
    msg.child_frame_id = child
    t = T[:3, 3]
    msg.transform.translation = Vector3(x=float(t[0]), y=float(t[1]), z=float(t[2]))
    msg.transform.rotation = _quat(T[:3, :3])
    return msg


def pose_stamped_msg(T: np.ndarray, stamp: Time, frame: str) -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in T[:3, 3])
    msg.pose.orientation = _quat(T[:3, :3])
    return msg


def odometry_msg(T_odom_base: np.ndarray, stamp: Time, odom_frame: str, base_frame: str,
                 pose_cov: np.ndarray | None, twist_base: np.ndarray | None,
                 twist_cov: np.ndarray | None) -> Odometry:
    """Pose in ``odom_frame``, twist in ``base_frame`` (REP-105 / nav_msgs convention)."""
    msg = Odometry()
    msg.header.stamp = stamp
    msg.header.frame_id = odom_frame
    msg.child_frame_id = base_frame
    msg.pose.pose = pose_stamped_msg(T_odom_base, stamp, odom_frame).pose
    if pose_cov is not None:
        msg.pose.covariance = np.asarray(pose_cov, dtype=np.float64).reshape(36).tolist()
    if twist_base is not None:
        v = np.asarray(twist_base, dtype=np.float64)
        msg.twist.twist.linear = Vector3(x=float(v[0]), y=float(v[1]), z=float(v[2]))
        msg.twist.twist.angular = Vector3(x=float(v[3]), y=float(v[4]), z=float(v[5]))
    if twist_cov is not None:
        msg.twist.covariance = np.asarray(twist_cov, dtype=np.float64).reshape(36).tolist()
    return msg


def cloud2_msg(arr: np.ndarray, stamp: Time, frame: str) -> PointCloud2:
    """Structured array in CLOUD_DTYPE -> unorganised PointCloud2 (one copy: tobytes)."""
    msg = PointCloud2()
    msg.header = Header(stamp=stamp, frame_id=frame)
    msg.height = 1
    msg.width = int(arr.shape[0])
    msg.fields = CLOUD_FIELDS
    msg.is_bigendian = False
    msg.point_step = CLOUD_DTYPE.itemsize
    msg.row_step = msg.point_step * msg.width
    # "No invalid points": positions are always finite, but a moving point whose velocity is
    # unknown carries NaN in vx, vy, vz (PCL counts NaN in any float field as invalid).
    msg.is_dense = bool(np.isfinite(arr["vx"]).all()) if "vx" in arr.dtype.names else True
    msg.data = arr.tobytes()
    return msg


def cloud2_to_array(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 written by :func:`cloud2_msg` -> structured array (no copy)."""
    names = [f.name for f in msg.fields]
    if names != list(CLOUD_DTYPE.names) or msg.point_step != CLOUD_DTYPE.itemsize:
        raise ValueError(f"unexpected PointCloud2 layout: fields {names}, point_step {msg.point_step}")
    return np.frombuffer(msg.data, dtype=CLOUD_DTYPE, count=msg.width * msg.height)
