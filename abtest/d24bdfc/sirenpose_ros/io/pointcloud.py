"""The point layout of the clouds the node publishes, as NumPy (no ROS needed): the node wraps
these bytes in a PointCloud2, the benchmark measures their cost on machines without ROS."""
from __future__ import annotations

import numpy as np

from sirenpose_ros.core.types import Cloud

# RViz colours a UINT32 field named "rgb" as 0x00RRGGBB.
CLOUD_DTYPE = np.dtype([
    ("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4"), ("dynamic", "<f4"),
    ("vx", "<f4"), ("vy", "<f4"), ("vz", "<f4"),
])


def transform_cloud(cloud: Cloud, T: np.ndarray) -> Cloud:
    """The same points in another frame (4x4 ``T``; its 3x3 part may carry a scale)."""
    R, t = T[:3, :3].astype(np.float32), T[:3, 3].astype(np.float32)
    return Cloud(cloud.xyz @ R.T + t, cloud.rgb, cloud.dynamic, cloud.velocity @ R.T)


def cloud_to_array(cloud: Cloud, T: np.ndarray | None = None) -> np.ndarray:
    """Cloud -> structured array in CLOUD_DTYPE, optionally transformed by 4x4 ``T``."""
    if T is not None:
        cloud = transform_cloud(cloud, T)
    arr = np.empty(len(cloud), CLOUD_DTYPE)
    arr["x"], arr["y"], arr["z"] = cloud.xyz[:, 0], cloud.xyz[:, 1], cloud.xyz[:, 2]
    arr["rgb"] = cloud.rgb
    arr["dynamic"] = cloud.dynamic
    arr["vx"], arr["vy"], arr["vz"] = cloud.velocity[:, 0], cloud.velocity[:, 1], cloud.velocity[:, 2]
    return arr
