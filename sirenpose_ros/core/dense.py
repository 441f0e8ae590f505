"""Stages 4-5: SIREN field fit + dense depth, and the dense cloud with the bounded voxel map
(ROS-free).

:class:`DenseStage` owns the dense state (the field and the voxel map) and turns one
:class:`DenseInput` (plain arrays: what the pose stage knows of a frame) into one
:class:`DenseOutput`. Because inputs and outputs are plain, the same stage runs either in the
pipeline's process or in a child process (:class:`DenseProcess`, ``core/child.py``), where its
Python work (field steps, rendering, back-projection, voxel fusion) no longer holds the GIL
against the pose stage. One code path computes the output in both places.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

from sirenpose_ros.core import cloud as cloud_mod
from sirenpose_ros.core import field as field_mod
from sirenpose_ros.core.camera import CameraModel
from sirenpose_ros.core.child import ChildStage, ChildWorker, serve
from sirenpose_ros.core.types import Cloud


@dataclass
class DenseInput:
    """One tracked frame, as the dense stage needs it."""
    stamp_ns: int
    world: int                   # the pose stage's map generation: a new one resets dense state
    cam: CameraModel             # camera at the processing resolution
    input_width: int             # width of the input image (depth pixel -> input pixel scale)
    xn: np.ndarray               # (N, 2) undistorted normalised keypoint coordinates
    p_dyn: np.ndarray            # (N,) dynamic probability
    ids: np.ndarray              # (N,) track ids as the window knows them (a track that
                                 # slipped gets a new one): the velocities' history key
    landmark_depth: np.ndarray   # (N,) depth of each keypoint's landmark, NaN = none
    T_world_cam: np.ndarray      # (4, 4)
    is_keyframe: bool
    rgb_small: np.ndarray | None  # colour on the cloud grid (h, w, 3), or None
    far: np.ndarray | None = None  # (N,) inverse-depth upper bound ("at least this far") of
                                   # untriangulated tracks (SlidingWindowEstimator.far_bounds)


@dataclass
class DenseOutput:
    depth: np.ndarray            # (h, w) float32, NaN = unknown
    depth_scale: float           # depth pixel -> input pixel
    dynamic_map: np.ndarray | None
    cloud: Cloud | None
    map_cloud: Cloud | None      # the fused static map (keyframes only)
    timings_ms: dict
    keypoint_velocity: np.ndarray | None = None  # (N, 3) float32 world velocity per keypoint as
                                                 # the cloud carries it: 0 static, NaN unknown


def cloud_grid(cam: CameraModel, cfg) -> tuple[int, int]:
    """(h, w) of the dense depth and cloud for a processing camera."""
    ds = int(cfg.cloud_downsample)
    return max(2, cam.height // ds), max(2, cam.width // ds)


def small_rgb(rgb: np.ndarray | None, cam: CameraModel, cfg) -> np.ndarray | None:
    """The frame's colour on the cloud grid. Area averaging (cv2.resize grid); it differs from
    the field's corner-aligned grid by under half a small pixel, which only matters for colour at
    depth edges."""
    if rgb is None or not cfg.cloud_enabled:
        return None
    h, w = cloud_grid(cam, cfg)
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)


class DenseStage:
    """The field, the voxel map and what turns a :class:`DenseInput` into a :class:`DenseOutput`."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.field = field_mod.DepthFieldEstimator(cfg)
        self.voxels = cloud_mod.VoxelMap(cfg)
        self.world = None
        self.ground_world = None     # floor plane (normal, offset) in world coordinates
        self._rng = np.random.default_rng(int(cfg.field_seed))
        self.velocity = cloud_mod.TrackVelocity(cfg.cloud_velocity_window_s,
                                                cfg.cloud_velocity_depth_window_s,
                                                cfg.cloud_velocity_min_frames)

    @property
    def device_type(self) -> str:
        return self.field.device.type

    def reset(self) -> None:
        self.field.reset()
        self.voxels.clear()
        self.ground_world = None
        self._rng = np.random.default_rng(int(self.cfg.field_seed))
        self.velocity.reset()

    def _ground_depth(self, job: DenseInput, h: int, w: int) -> np.ndarray | None:
        """(h, w) depth of the floor plane on the field's grid (+inf above the horizon), or None
        while no floor is known. The plane is fitted to this frame's static keypoints with
        landmark depth; when too few lie on it (the floor hidden, untextured), the last plane
        found is used, kept in world coordinates so that it follows the camera."""
        cfg = self.cfg
        T = np.asarray(job.T_world_cam, np.float64)
        R, t = T[:3, :3], T[:3, 3]
        d = job.landmark_depth
        sel = np.isfinite(d) & (d > 0) & (job.p_dyn < cfg.window_dynamic_threshold)
        X = np.column_stack([job.xn[sel] * d[sel, None], d[sel]])
        plane = field_mod.fit_ground_plane(X, cfg.field_ground_max_tilt_deg,
                                           cfg.field_ground_inlier,
                                           cfg.field_ground_min_inliers, self._rng)
        if plane is not None:
            n, c = plane
            self.ground_world = (R @ n, c + float((R @ n) @ t))
        elif self.ground_world is not None:
            n_w, c_w = self.ground_world
            n, c = R.T @ n_w, c_w - float(n_w @ t)
        else:
            return None
        cam = job.cam
        W, H = cam.width, cam.height
        xn = (np.arange(w) * (W - 1) / max(w - 1, 1) - cam.cx) / cam.fx
        yn = (np.arange(h) * (H - 1) / max(h - 1, 1) - cam.cy) / cam.fy
        return field_mod.plane_depth(n, c, xn[None, :], yn[:, None])

    def frozen_field(self):
        """A read-only copy of the field for the joint refinement in another process, or None
        while it is not fitted."""
        return field_mod.FrozenField(self.field) if self.field.fitted else None

    def run(self, job: DenseInput) -> DenseOutput | None:
        """Field update + render and the cloud for one frame; None while there is nothing to fit
        (no landmark depth yet and an empty field)."""
        if job.world != self.world:
            self.reset()
            self.world = job.world
        if not (np.any(np.isfinite(job.landmark_depth)) or self.field.fitted):
            return None
        cfg = self.cfg
        cam = job.cam
        W, H = cam.width, cam.height
        timings = {}
        t0 = time.perf_counter()
        time_s = job.stamp_ns * 1e-9
        depth, xn, p_dyn, far = job.landmark_depth, job.xn, job.p_dyn, job.far
        have = np.isfinite(depth) & (depth > 0)
        inv = np.where(have, 1.0 / np.where(have, depth, 1.0), np.nan)
        xs, invs, ws = [xn[have]], [inv[have]], [1.0 - p_dyn[have]]
        kind = [np.zeros(int(have.sum()), bool)]
        if far is not None:
            # Untriangulated static tracks: "at least this far" from their parallax (see
            # SlidingWindowEstimator.far_bounds), one-sided samples for the field. Only tracks
            # the window would triangulate (not flagged dynamic): a moving point's parallax says
            # nothing about its depth (one moving along with the camera shows none and would
            # push the field far).
            sel = ~have & (p_dyn < cfg.window_dynamic_threshold) & np.isfinite(far) & (far > 0)
            xs.append(xn[sel])
            invs.append(far[sel])
            ws.append(1.0 - p_dyn[sel])
            kind.append(np.ones(int(sel.sum()), bool))
        xs, invs, kind = np.concatenate(xs), np.concatenate(invs), np.concatenate(kind)
        # Undistorted pixel positions (pinhole) in the working image, normalised to [-1, 1].
        u = cam.fx * xs[:, 0] + cam.cx
        v = cam.fy * xs[:, 1] + cam.cy
        uv_norm = np.stack([2.0 * u / (W - 1) - 1.0, 2.0 * v / (H - 1) - 1.0], axis=1).astype(np.float32)
        self.field.update(time_s, uv_norm, invs.astype(np.float32),
                          np.clip(np.concatenate(ws), 0.0, 1.0).astype(np.float32), bound=kind)
        h, w = cloud_grid(cam, cfg)
        inv = self.field.render(time_s, h, w)
        with np.errstate(divide="ignore", invalid="ignore"):
            dense_depth = np.where(inv > 0, 1.0 / inv, np.nan).astype(np.float32)
        near = None
        # Pixels where a moving point's depth is observable: the upright bound below, with the
        # region's floor contact in view. Elsewhere a moving point's depth is the background
        # the field renders, or at best an upper bound: its velocity stays unknown.
        observable = moving = np.zeros((h, w), bool)
        regions = np.zeros((h, w), np.int32)         # 8-connected moving regions (0: none)
        if cfg.field_upright_occluder:
            # Moving objects have no keypoint depth: the field shows the background they hide.
            # Upright objects are in front of the floor hidden behind their lowest pixels.
            near, dyn = self._nearest_keypoint(job, h, w)
            moving = dyn > cfg.field_upright_threshold
            floor = (self._ground_depth(job, h, w)
                     if cfg.field_ground_plane and moving.any() else None)
            if floor is not None:
                # The field has no floor keypoints under the object either: the plane gives
                # the floor hidden there, where an object standing on it touches it. Static
                # pixels keep the field's depth: near the horizon a plane tilted by a degree is
                # off by more than the field (on easy it pulled the far floor in by 10-20 %).
                dense_depth = np.where(moving, np.minimum(dense_depth, floor), dense_depth)
            dense_depth = field_mod.upright_occluder_bound(dense_depth, moving)
            regions = cv2.connectedComponents(moving.astype(np.uint8), connectivity=8)[1]
            cut = field_mod.regions_touching_bottom(moving, regions)
            observable = moving & ~cut
            if cfg.field_upright_cutoff == "unknown":
                # A moving region that reaches the image bottom hides where it stands: the floor
                # seen at the bottom row only says it is at most that far (on large_dynamic and
                # close_object the objects are 1.9-2.6x nearer than even the true floor there),
                # and neither its motion (the window's trajectory fit collapses towards the
                # camera) nor anything else in the frame bounds it from the near side.
                dense_depth = np.where(cut, np.nan, dense_depth).astype(np.float32)
        if cfg.field_occluder_bound:
            # Moving objects have no keypoint depth: the field shows the background behind
            # them. They occlude that background, so cap them at the depth around them.
            if near is None:
                near, dyn = self._nearest_keypoint(job, h, w)
            dense_depth = field_mod.occluder_depth_bound(
                dense_depth, dyn > cfg.cloud_dynamic_threshold, cfg.field_occluder_percentile,
                cfg.field_occluder_rim_px * (w - 1) / (W - 1))
        timings["field"] = (time.perf_counter() - t0) * 1e3
        out = DenseOutput(dense_depth, job.input_width / w, None, None, None, timings)
        if not cfg.cloud_enabled:
            return out
        t0 = time.perf_counter()
        # The field's grid is corner-aligned (small pixel j at working pixel j (W-1)/(w-1)) and
        # lives in undistorted pinhole coordinates: back-project with the matching pinhole K.
        K_small = cloud_mod.scale_intrinsics(cam.K, (H, W), (h, w))
        if near is None:
            near, dyn = self._nearest_keypoint(job, h, w)
        out.dynamic_map = dyn
        kv = self._keypoint_velocity(job, dense_depth, moving, regions, observable, time_s)
        out.keypoint_velocity = kv
        # Per pixel the velocity of its nearest keypoint (NaN where that one's is unknown);
        # pixels far from every keypoint count as static (dynamic probability = prior), so 0.
        vel = np.take(np.concatenate([kv, np.zeros((1, 3), np.float32)]),
                      np.where(near >= 0, near, len(kv)), axis=0)
        out.cloud = cloud_mod.backproject(dense_depth, K_small, job.T_world_cam, job.rgb_small, dyn,
                                          vel, max_depth=cfg.cloud_max_depth)
        if job.is_keyframe:
            self.voxels.insert(out.cloud)          # fuses only points below cloud_dynamic_threshold
            out.map_cloud = self.voxels.cloud()
        timings["cloud"] = (time.perf_counter() - t0) * 1e3
        return out

    @staticmethod
    def _grid_px(job: DenseInput, h: int, w: int) -> np.ndarray:
        """(N, 2) keypoint positions (u, v) on the field's corner-aligned h x w grid."""
        cam = job.cam
        W, H = cam.width, cam.height
        u = (cam.fx * job.xn[:, 0] + cam.cx) * (w - 1) / (W - 1)
        v = (cam.fy * job.xn[:, 1] + cam.cy) * (h - 1) / (H - 1)
        return np.stack([u, v], axis=1)

    def _nearest_keypoint(self, job: DenseInput, h: int, w: int):
        """(h, w) int64 index of each pixel's nearest keypoint on the field's corner-aligned
        grid (-1 beyond pipeline_dynamic_radius_px), and the (h, w) dynamic probability it
        spreads (the graph prior at -1)."""
        W = job.cam.width
        radius = self.cfg.pipeline_dynamic_radius_px * (w - 1) / (W - 1)
        n = len(job.p_dyn)
        # The index as a float32 value (exact below 2^24): one transform serves every value.
        idx = cloud_mod.densify_keypoint_values(self._grid_px(job, h, w),
                                                np.arange(n, dtype=np.float32), h, w, radius)[..., 0]
        near = np.where(np.isfinite(idx), idx, -1).astype(np.int64)
        p = np.concatenate([job.p_dyn.astype(np.float32), [np.float32(self.cfg.graph_prior)]])
        return near, np.take(p, np.where(near >= 0, near, n)).astype(np.float32)

    def _keypoint_velocity(self, job: DenseInput, depth: np.ndarray, moving_mask: np.ndarray,
                           regions: np.ndarray, observable: np.ndarray, time_s: float) -> np.ndarray:
        """(N, 3) float32 world velocity per keypoint: 0 for static ones (dynamic probability
        up to cloud_dynamic_threshold), for moving ones the slope of where this output puts
        them over the last frames (TrackVelocity), NaN where unknown. A keypoint's position is
        its ray at the depth of its grid pixel (the depth its cloud point gets), observable
        when that pixel is in ``observable`` and its depth is finite and within range; its
        region (for the image-scale neighbours) is the connected part of ``moving_mask`` it
        lies in (its label in ``regions``)."""
        cfg = self.cfg
        h, w = depth.shape
        px = self._grid_px(job, h, w)
        iu = np.rint(px[:, 0])
        iv = np.rint(px[:, 1])
        inside = (iu >= 0) & (iu < w) & (iv >= 0) & (iv < h)
        iu = np.clip(iu, 0, w - 1).astype(np.int64)
        iv = np.clip(iv, 0, h - 1).astype(np.int64)
        z = depth[iv, iu].astype(np.float64)
        with np.errstate(invalid="ignore"):
            ok = inside & observable[iv, iu] & np.isfinite(z) & (z > 0) & (z <= cfg.cloud_max_depth)
        T = np.asarray(job.T_world_cam, np.float64)
        rays = np.column_stack([job.xn, np.ones(len(z))]) @ T[:3, :3].T
        region = np.where(inside & moving_mask[iv, iu], regions[iv, iu], -1)
        vel = self.velocity.update(time_s, job.ids, job.xn, T[:3, 3], rays, z, ok, region)
        moving = job.p_dyn > cfg.cloud_dynamic_threshold
        return np.where(moving[:, None], vel, 0.0).astype(np.float32)


def _make_stage(cfg):
    stage = DenseStage(cfg)
    return stage, stage.device_type


class DenseProcess(ChildStage):
    """A :class:`DenseStage` in a child process, behind the same calls. The dense thread and the
    map thread (frozen field for the joint refinement) both use it: one request at a time."""

    def __init__(self, cfg_values: dict, start_timeout_s: float = 180.0):
        self._child = ChildWorker("sirenpose_ros.core.dense", dict(cfg_values), "dense worker",
                                  start_timeout_s)
        self._lock = threading.Lock()
        self.device_type = self._child.info

    def _call(self, *msg):
        with self._lock:
            return self._child.call(*msg)

    def run(self, job: DenseInput) -> DenseOutput | None:
        return self._call("run", job)

    def reset(self) -> None:
        self._call("reset")

    def frozen_field(self):
        return self._call("frozen_field")


if __name__ == "__main__":
    # The stage of the importable module, not of ``__main__``: what it returns is pickled by
    # class path, and the parent knows these classes as sirenpose_ros.core.dense.*.
    from sirenpose_ros.core.dense import _make_stage
    serve(_make_stage)
