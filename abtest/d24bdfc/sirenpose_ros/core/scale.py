"""Metric scale for a monocular estimate, from an aligned depth image or a known camera height.

Monocular odometry is up to scale. Two scale sources are supported:
- ``depth``: an aligned metric depth image (RGB-D driver, stereo); the scale is the robust median
  of metric depth / estimated depth over the tracked static keypoints;
- ``camera_height``: the camera's known height above a flat ground; the ground plane is fitted
  (RANSAC) to static keypoints below the camera, with its normal near the known "up" direction,
  and the scale is known height / estimated height.
Samples are gathered per frame; the scale is their median once ``scale_min_frames`` frames gave
one, then kept (``scale_update`` false) or re-estimated over the recent frames (true).
"""
from __future__ import annotations

from collections import deque

import numpy as np

from sirenpose_ros.core.params import ParamSpec

PARAMS = [
    ParamSpec("scale_source", "none",
              "Metric scale source: 'none' (output up to scale, fixed at initialisation), "
              "'depth' (aligned depth image on topic 'depth'), or 'camera_height' (known height "
              "of the camera over a flat ground, parameter scale_camera_height).",
              choices=("none", "depth", "camera_height")),
    ParamSpec("scale_camera_height", 0.0,
              "Camera height above the ground plane in metres (scale_source 'camera_height').",
              0.0, 100.0),
    ParamSpec("scale_min_frames", 10, "Frames with a scale sample needed before scale is used.", 1, 10000),
    ParamSpec("scale_update", False,
              "Keep re-estimating the scale over the last scale_window frames (true) or fix it "
              "once estimated (false: no jumps in odometry).", ),
    ParamSpec("scale_window", 100, "Frames kept for the running scale estimate.", 1, 100000),
    ParamSpec("scale_depth_min", 0.1, "Metric depths below this (m) are ignored.", 0.0, 1000.0),
    ParamSpec("scale_depth_max", 20.0, "Metric depths above this (m) are ignored.", 0.0, 1000.0),
]


class ScaleEstimator:
    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self._samples: deque = deque(maxlen=cfg.scale_window)
        self._fixed: float | None = None

    def reset(self) -> None:
        self._samples.clear()
        self._fixed = None

    @property
    def scale(self) -> float | None:
        """Metres per estimate unit, or None (no source, or not enough samples yet)."""
        if self._fixed is not None:
            return self._fixed
        if len(self._samples) < self.cfg.scale_min_frames:
            return None
        s = float(np.exp(np.median(np.log(np.asarray(self._samples)))))
        if not self.cfg.scale_update:
            self._fixed = s
        return s

    def add_depth(self, est_depth: np.ndarray, metric_depth: np.ndarray, min_points: int = 20) -> float | None:
        """One frame's pairs (estimate units, metres); returns this frame's sample or None."""
        c = self.cfg
        ok = (np.isfinite(est_depth) & (est_depth > 0) & np.isfinite(metric_depth)
              & (metric_depth > c.scale_depth_min) & (metric_depth < c.scale_depth_max))
        if ok.sum() < min_points:
            return None
        s = float(np.median(metric_depth[ok] / est_depth[ok]))
        self._samples.append(s)
        return s

    def add_ground(self, points_cam: np.ndarray, up_cam: np.ndarray, rng: np.random.Generator | None = None,
                   iterations: int = 100, inlier_ratio: float = 0.02, max_tilt_deg: float = 15.0) -> float | None:
        """One frame's static 3D points in the camera frame (estimate units) and the unit "up"
        direction in the camera frame (from the extrinsic); returns this frame's sample or None."""
        h = self.cfg.scale_camera_height
        pts = points_cam[np.all(np.isfinite(points_cam), axis=1)]
        up = np.asarray(up_cam, dtype=np.float64)
        up = up / np.linalg.norm(up)
        below = pts[pts @ up < 0]              # ground is below the camera
        if h <= 0 or len(below) < 20:
            return None
        rng = rng or np.random.default_rng(0)
        scene = np.median(np.linalg.norm(below, axis=1))
        tol = inlier_ratio * scene
        idx = rng.integers(0, len(below), size=(iterations, 3))
        a, b, c = below[idx[:, 0]], below[idx[:, 1]], below[idx[:, 2]]
        n = np.cross(b - a, c - a)
        norm = np.linalg.norm(n, axis=1)
        good = norm > 1e-12
        n[good] /= norm[good, None]
        n *= np.sign(n @ up)[:, None]                      # normals point up
        tilt_ok = good & (n @ up > np.cos(np.radians(max_tilt_deg)))
        if not tilt_ok.any():
            return None
        d = -np.sum(n * a, axis=1)                         # plane: n.x + d = 0
        dist = np.abs(below @ n[tilt_ok].T + d[tilt_ok])   # (P, H)
        counts = (dist < tol).sum(axis=0)
        best = int(np.argmax(counts))
        if counts[best] < max(10, 0.3 * len(below)):
            return None
        inliers = below[dist[:, best] < tol]
        # Refine by least squares on the inliers (SVD of the centred points).
        centre = inliers.mean(axis=0)
        normal = np.linalg.svd(inliers - centre)[2][-1]
        normal *= np.sign(normal @ up)
        height = float(abs(normal @ centre))               # camera is the origin
        if height <= 0:
            return None
        s = h / height
        self._samples.append(s)
        return s
