"""Data passed between the pipeline stages. ROS-free: NumPy arrays only.

Conventions (used everywhere in the core):
- Images are row-major HxW (gray, uint8) and HxWx3 (rgb, uint8).
- Pixel coordinates are (u, v) = (column, row), float64/float32, origin at the centre of the
  top-left pixel.
- Camera frame is the optical frame (x right, y down, z forward), REP-103.
- Poses are 4x4 float64 homogeneous matrices T_a_b mapping points from frame b to frame a.
  The pipeline's world frame is the optical frame of the first camera after initialisation.
- Times are integer nanoseconds (the input image stamp).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class TrackingState(str, Enum):
    INITIALIZING = "initializing"   # no map yet, waiting for enough parallax
    TRACKING = "tracking"           # pose is valid
    LOST = "lost"                   # pose could not be estimated; re-initialisation pending


@dataclass
class Frame:
    """One decoded camera frame."""
    stamp_ns: int
    gray: np.ndarray                 # HxW uint8
    rgb: np.ndarray | None           # HxWx3 uint8, None for mono inputs
    camera: "CameraModel"            # noqa: F821  (sirenpose_ros.core.camera)


@dataclass
class Cloud:
    """A coloured point cloud in the world frame (float32 columns, one row per point)."""
    xyz: np.ndarray                  # (N, 3) float32, world frame
    rgb: np.ndarray                  # (N,) uint32, 0x00RRGGBB
    dynamic: np.ndarray              # (N,) float32, probability in [0, 1]
    velocity: np.ndarray             # (N, 3) float32, m/s (scene units/s) in world frame

    @staticmethod
    def empty() -> "Cloud":
        return Cloud(np.zeros((0, 3), np.float32), np.zeros(0, np.uint32),
                     np.zeros(0, np.float32), np.zeros((0, 3), np.float32))

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


@dataclass
class PoseOutput:
    """A frame's pose as soon as the window has solved it, before the motion graph and the map
    update of that frame (they serve later frames and the dense stage, not this pose): what TF
    and odometry need. The frame's :class:`FrameResult` carries the same values."""
    stamp_ns: int
    state: TrackingState
    T_world_cam: np.ndarray | None               # 4x4, camera-to-world; None unless TRACKING
    covariance: np.ndarray | None                # 6x6 (x, y, z, rx, ry, rz) in world frame
    velocity_world: np.ndarray | None            # (6,) linear (3) + angular (3), world frame
    reset: bool                                  # the pipeline re-initialised at this frame
    new_world: bool                              # ... and its world frame restarted here
    message: str                                 # human-readable reason for state changes


@dataclass
class FrameResult:
    """What the pipeline returns for one input frame."""
    stamp_ns: int
    state: TrackingState
    T_world_cam: np.ndarray | None = None       # 4x4, camera-to-world; None unless TRACKING
    covariance: np.ndarray | None = None        # 6x6 (x, y, z, rx, ry, rz) in world frame
    velocity_world: np.ndarray | None = None    # (6,) linear (3) + angular (3), world frame
    is_keyframe: bool = False
    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (K, 2) px
    keypoint_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    dynamic_prob: np.ndarray = field(default_factory=lambda: np.zeros(0))   # (K,)
    keypoint_velocity: np.ndarray | None = None  # (K, 3) world velocity of each keypoint as the
                                                # dense cloud carries it (0 static, NaN unknown);
                                                # None without a dense cloud for this frame
    keypoint_depth: np.ndarray | None = None    # (K,) depth of each keypoint's landmark in this
                                                # camera (estimate units), NaN where none
    depth: np.ndarray | None = None             # h x w depth (reduced resolution), NaN = unknown
    depth_scale: float = 1.0                    # depth pixel -> full-res pixel scale factor
    dynamic_map: np.ndarray | None = None       # dynamic probability on the depth grid (the
                                                # values the cloud's points carry)
    cloud: Cloud | None = None                  # current dense cloud (static + dynamic), world
    map_cloud: Cloud | None = None              # fused static map (only on keyframes)
    reset: bool = False                         # the pipeline re-initialised at this frame
    new_world: bool = False                     # ... and its world frame restarted at this
                                                # camera (not chained to the previous poses)
    message: str = ""                           # human-readable reason for state changes
    timings_ms: dict[str, float] = field(default_factory=dict)
