"""The per-frame pipeline: Frame -> FrameResult (ROS-free).

Stages (each timed into ``FrameResult.timings_ms``):
1. ``frontend``: keypoints tracked with stable ids (KLT now; a learned frontend later).
2. ``graph``: keypoint graph and per-keypoint dynamic probability (prior before the pose,
   update after it).
3. ``window``: pose (PnP + Gauss-Newton), keyframes, triangulation, windowed bundle adjustment.
4. ``field``: SIREN inverse-depth field fed with landmark depths, rendered at reduced resolution.
5. ``cloud``: the rendered depth back-projected with colour, dynamic probability and velocity;
   static points fused into a voxel map on keyframes.

Two calls split one frame so that a node can publish the pose before the slow dense stages:
``track(frame)`` runs stages 1-3 (pose, keypoints, dynamic probability, keypoint depth) and
``densify(result)`` runs stages 4-5 on that frame (every ``pipeline_dense_every`` tracked frames,
keyframes always); ``process(frame) == densify(track(frame))``. ``densify`` also runs the map work
the pose does not wait for: keyframe triangulation + bundle adjustment and the joint refinement,
on a copy of the window's map (``window.MapJob``) that is committed afterwards.

For overlapped stages on threads (``core/staged.py``) the calls split further:
``observe(frame)`` (image resize + frontend; its own state only) -> ``estimate(observation)``
(graph + window pose; the window under ``self.lock``) -> ``take_dense_job(result)`` ->
``densify_job(job)`` (map work and dense stages; takes ``self.lock`` only to copy and commit the
map). Each call runs on one thread at a time, in frame order per call; different calls may run
concurrently on different frames.

Images wider than ``pipeline_max_image_width`` are downscaled once (INTER_AREA) for all stages;
keypoints are reported in input-image pixels. A change of camera geometry (intrinsics,
distortion or resolution) or a stamp earlier than the previous one resets the pipeline and says
so in ``FrameResult.message``.
"""
from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass, field as dc_field

import cv2
import numpy as np

from sirenpose_ros.core import cloud as cloud_mod
from sirenpose_ros.core import field as field_mod
from sirenpose_ros.core.config import Config, make_config
from sirenpose_ros.core.frontend import KLTFrontend
from sirenpose_ros.core.graph import KeypointGraph
from sirenpose_ros.core.joint import JointWindowRefiner, apply_to_window, snapshot_from_window, warm_start
from sirenpose_ros.core.map_worker import MapWorker, uses_field
from sirenpose_ros.core.params import ParamSpec
from sirenpose_ros.core.types import Cloud, Frame, FrameResult, TrackingState
from sirenpose_ros.core.camera import CameraModel
from sirenpose_ros.core.window import SlidingWindowEstimator

PARAMS = [
    ParamSpec("pipeline_max_image_width", 640, "Images wider than this are downscaled for processing (pixels); keypoints are still reported in input pixels.", 64, 8192),
    ParamSpec("pipeline_blas_threads", 1, "OpenBLAS threads for the estimator's small matrices (1 avoids thread contention that made 40x100 products 100x slower on a busy 2-core CPU); 0 leaves the library default.", 0, 256),
    ParamSpec("pipeline_frontend", "klt", "Keypoint frontend: 'klt' (corners + pyramidal KLT: fast on CPUs, most precise positions) or 'xfeat' (learned XFeat keypoints associated with LighterGlue or mutual nearest neighbours: robust to fast motion and blur, wants a GPU; see xfeat_* parameters).", choices=("klt", "xfeat")),
    ParamSpec("pipeline_torch_threads", 1, "Torch CPU threads (field fit, learned networks on the CPU); 1 avoids OpenMP contention with the estimator on small CPUs; 0 leaves torch's default.", 0, 256),
    ParamSpec("pipeline_dense_every", 1, "Run the dense stages (field fit, cloud) on every N-th tracked frame, and on every keyframe, so that a slow CPU keeps up with the pose stream; 1 = every frame.", 1, 1000),
    ParamSpec("pipeline_overlap_frontend", False, "Staged mode: compute the next frame's keypoints while the pose stage solves the current one (higher frame rate when both stages are busy; a frame may wait for the previous pose, adding up to one pose-stage time of latency). False (default): a frame enters the frontend only when the pose stage is idle (lowest image-to-TF latency; on the H100 it also gave the higher frame rate with the learned frontend, whose many small GPU launches compete with the pose stage for Python's GIL, see docs/benchmarks.md).", None, None),
    ParamSpec("pipeline_map_process", True, "Staged mode: run keyframe triangulation + bundle adjustment and the joint refinement in a child process instead of a thread, so that they do not hold Python's GIL against the pose stage (the joint refinement stays in-process when it reads or trains the field).", None, None),
    ParamSpec("pipeline_map_lag_frames", 2, "Staged mode: after this many frames in a row that wanted a keyframe while the map stage was busy, the next pose waits for the map (a map a few frames old still tracks well; one that falls further behind a fast camera does not).", 1, 1000),
    ParamSpec("pipeline_map_wait_s", 1.0, "Staged mode: when a frame needs a keyframe while the map stage is still inserting the previous one, the next pose waits for it at most this long (seconds).", 0.0, 60.0),
    ParamSpec("pipeline_dynamic_radius_px", 24.0, "Dense dynamic probability: a pixel takes the value of its nearest keypoint within this radius (working-resolution pixels), else the graph prior.", 1.0, 1000.0),
]


def limit_blas_threads(n: int) -> bool:
    """Set the thread count of the OpenBLAS libraries already loaded in this process.

    Same approach as threadpoolctl (not installed here): find the loaded OpenBLAS builds
    (NumPy's and SciPy's) and call their ``*_set_num_threads``. Returns True if any was set.
    """
    try:
        with open("/proc/self/maps") as fh:
            paths = {ln.split()[-1] for ln in fh if "openblas" in ln.lower() and ln.split()[-1].startswith("/")}
    except OSError:
        return False
    names = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
             "openblas_set_num_threads64_", "openblas_set_num_threads")
    done = False
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(ctypes.c_int(int(n)))
                done = True
                break
    return done


def make_frontend(cfg: Config):
    """The keypoint frontend chosen by ``pipeline_frontend``."""
    if cfg.pipeline_frontend == "xfeat":
        from sirenpose_ros.core.xfeat_frontend import XFeatFrontend   # torch + weights: only if used
        return XFeatFrontend(cfg)
    return KLTFrontend(cfg)


@dataclass
class Observation:
    """Output of the frontend stage for one frame (:meth:`Pipeline.observe`)."""
    frame: Frame
    cam: CameraModel                 # camera at the processing resolution
    tracks: object                   # frontend Tracks (ids, px at the processing resolution, age)
    messages: list = dc_field(default_factory=list)
    reset: bool = False              # camera changed or time went back: estimation restarts
    frontend_ms: float = 0.0


class Pipeline:
    def __init__(self, cfg: Config | None = None, async_mapping: bool = False):
        self.cfg = cfg if cfg is not None else make_config()
        if self.cfg.pipeline_blas_threads > 0:
            limit_blas_threads(self.cfg.pipeline_blas_threads)
        if self.cfg.pipeline_torch_threads > 0:
            import torch
            torch.set_num_threads(self.cfg.pipeline_torch_threads)
        self.frontend = make_frontend(self.cfg)
        self.graph = KeypointGraph(self.cfg)
        # async_mapping: the window never inserts keyframes inline; densify_job() does (on the
        # dense thread of core/staged.py).
        self.window = SlidingWindowEstimator(self.cfg, async_mapping=async_mapping)
        self.lock = threading.Lock()   # the window, between the pose and the map stages
        self._map_worker = None
        if async_mapping and self.cfg.pipeline_map_process:
            self._map_worker = MapWorker(dict(self.cfg))
        self._map_committed = threading.Condition(self.lock)
        self.field = field_mod.DepthFieldEstimator(self.cfg) if self.cfg.field_enabled else None
        self.voxels = cloud_mod.VoxelMap(self.cfg)
        self.joint = JointWindowRefiner(self.cfg) if self.cfg.joint_enabled else None
        self._joint_prev = None      # (snapshot, result) of the previous refinement: warm start
        # World velocities of dynamic tracks from the last refinement: sorted ids, (N, 3).
        self._vel_ids = np.zeros(0, np.int64)
        self._vel = np.zeros((0, 3), np.float32)
        self._camera = None          # input camera of the current stream
        self._work_camera = None     # camera at the processing resolution
        self._last_stamp = None
        self._dense_ctx = None       # what densify() needs from the latest track()
        self._tracked_count = 0      # tracked frames since the dense state was reset
        # The pose stage starts a new dense world (field, voxel map, joint warm start) by bumping
        # _world; the dense stage resets its state when a job of a newer world arrives, so
        # the pose stage never touches dense state another thread may be using.
        self._world = 0
        self._dense_world = 0
        self._map_world = 0

    def close(self) -> None:
        """Stop the map worker process, if any (the pipeline is unusable afterwards)."""
        if self._map_worker is not None:
            self._map_worker.close()
            self._map_worker = None

    @property
    def runtime(self) -> str:
        """What runs where, for logs and /diagnostics."""
        parts = [f"frontend {self.cfg.pipeline_frontend}"]
        if self.cfg.pipeline_frontend == "xfeat":
            runners = [getattr(r, "backend", "?") for r in getattr(self.frontend, "runners", [])]
            parts[-1] += f" ({', '.join(runners) or self.cfg.xfeat_backend})"
        if self.field is not None:
            parts.append(f"field {self.field.device.type}")
        return ", ".join(parts)

    def degrade(self) -> str:
        """Answer to a GPU out-of-memory error: release cached GPU memory, then move the dense
        field to the CPU; if it is there already, halve the learned frontend's keypoints.
        Returns what changed. The caller resets the pipeline afterwards."""
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.field is not None and self.field.device.type != "cpu":
            self.cfg = Config({**self.cfg, "field_device": "cpu"})
            self.field = field_mod.DepthFieldEstimator(self.cfg)
            return "SIREN field moved to the CPU"
        if self.cfg.pipeline_frontend == "xfeat" and self.cfg.xfeat_top_k >= 128:
            self.cfg = Config({**self.cfg, "xfeat_top_k": self.cfg.xfeat_top_k // 2})
            self.frontend = make_frontend(self.cfg)
            return f"learned frontend keypoints halved to {self.cfg.xfeat_top_k}"
        return "nothing left to reduce"

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget everything: map, tracks, field, voxel map and the camera of the stream."""
        self._reset_estimation()
        self._camera = None
        self._work_camera = None
        self._last_stamp = None

    def _reset_estimation(self) -> None:
        self.frontend.reset()
        self._reset_pose_state()
        self._reset_dense()

    def _reset_pose_state(self) -> None:
        self.graph.reset()
        self.window.reset()
        self._new_dense_world()

    def _new_dense_world(self) -> None:
        self._tracked_count = 0
        self._world += 1

    def _reset_dense(self) -> None:
        if self.field is not None:
            self.field.reset()
        self.voxels.clear()
        self._dense_world = self._world

    def _set_camera(self, camera) -> None:
        self._camera = camera
        s = min(1.0, self.cfg.pipeline_max_image_width / camera.width)
        self._work_camera = camera if s >= 1.0 else camera.scaled(s)

    # ------------------------------------------------------------------ per frame
    def process(self, frame: Frame) -> FrameResult:
        """Pose and dense output of one frame (offline tools, tests)."""
        return self.densify(self.track(frame))

    def track(self, frame: Frame) -> FrameResult:
        """Stages 1-3: pose, keypoints, dynamic probability and keypoint depth of ``frame``.

        Depth, cloud and map are left empty; pass the result to :meth:`densify` to fill them.
        """
        return self.estimate(self.observe(frame))

    def observe(self, frame: Frame) -> Observation:
        """Stage 1 (frontend stage): stream checks, resize to the processing size, keypoint
        tracks. Touches only the frontend and the stream's camera/stamp."""
        messages, reset = [], False
        if self._camera is not None and not frame.camera.same_geometry(self._camera):
            messages.append(f"camera changed ({self._camera!r} -> {frame.camera!r}): pipeline reset")
            reset = True
            self._camera = None
        if self._last_stamp is not None and frame.stamp_ns < self._last_stamp:
            messages.append("time jumped backwards: pipeline reset")
            reset = True
        if reset:
            self.frontend.reset()
        self._last_stamp = frame.stamp_ns
        if self._camera is None:
            self._set_camera(frame.camera)
        cam = self._work_camera
        gray = frame.gray
        if gray.shape[1] != cam.width or gray.shape[0] != cam.height:
            gray = cv2.resize(gray, (cam.width, cam.height), interpolation=cv2.INTER_AREA)
        t0 = time.perf_counter()
        tracks = self.frontend.track(gray)
        t1 = time.perf_counter()
        return Observation(frame, cam, tracks, messages, reset, (t1 - t0) * 1e3)

    def estimate(self, obs: Observation) -> FrameResult:
        """Stages 2-3 (pose stage) for an :meth:`observe` output: graph, window pose, keyframe
        decision. The window is held under ``self.lock``.

        When ``pipeline_map_lag_frames`` frames in a row needed a keyframe while the map stage
        was still inserting the last one, this waits for that commit first (up to
        ``pipeline_map_wait_s``): tracking on a map that lags further and further behind a
        moving camera loses its landmarks."""
        with self.lock:
            waited = 0.0
            if (self.window.keyframe_blocked and self.window.map_busy
                    and self.window.keyframe_blocked_frames >= int(self.cfg.pipeline_map_lag_frames)):
                t0 = time.perf_counter()
                self._map_committed.wait_for(lambda: not self.window.map_busy,
                                             float(self.cfg.pipeline_map_wait_s))
                waited = (time.perf_counter() - t0) * 1e3
            result = self._estimate(obs)
            if waited:
                result.timings_ms["map_wait"] = waited
            return result

    def _estimate(self, obs: Observation) -> FrameResult:
        t_start = time.perf_counter()
        frame, cam, tracks = obs.frame, obs.cam, obs.tracks
        messages, reset, new_world = list(obs.messages), obs.reset, obs.reset
        if obs.reset:
            self._reset_pose_state()
        sx = frame.camera.width / cam.width
        sy = frame.camera.height / cam.height
        timings = {"frontend": obs.frontend_ms}

        # 2a. graph prior, 3a. pose
        t0 = time.perf_counter()
        xn = cam.undistort_points(tracks.px.astype(np.float64))
        ok = np.all(np.isfinite(xn), axis=1)      # outside the lens model's valid region
        ids, px, xn = tracks.ids[ok], tracks.px[ok], xn[ok]
        p_prior = self.graph.prior(ids)
        t_graph = time.perf_counter() - t0
        t0 = time.perf_counter()
        est = self.window.estimate_pose(frame.stamp_ns, ids, xn, p_prior, 0.5 * (cam.fx + cam.fy))
        t_window = time.perf_counter() - t0
        # 2b. dynamic probability from the static-model residuals
        t0 = time.perf_counter()
        g = self.graph.dynamic_probability(ids, px, est.residual_px)
        t_graph += time.perf_counter() - t0
        # 3b. keyframes and map
        t0 = time.perf_counter()
        wres = self.window.update_map(g.p_dynamic)
        timings["window"] = (t_window + time.perf_counter() - t0) * 1e3
        timings["graph"] = t_graph * 1e3
        if est.message:
            messages.append(est.message)
        if est.reset or wres.reset:
            # A new map (possibly at a new scale): dense state built on the old one is stale.
            self._new_dense_world()
            reset = True

        px_full = np.stack([(px[:, 0] + 0.5) * sx - 0.5, (px[:, 1] + 0.5) * sy - 0.5], axis=1)
        result = FrameResult(
            stamp_ns=frame.stamp_ns, state=wres.state, T_world_cam=wres.T_world_cam,
            covariance=wres.covariance, velocity_world=wres.velocity_world,
            is_keyframe=wres.is_keyframe, keypoints=px_full, keypoint_ids=ids.copy(),
            dynamic_prob=g.p_dynamic.copy(), keypoint_depth=wres.landmark_depth.copy(),
            reset=reset, new_world=new_world, message="; ".join(messages), timings_ms=timings)
        if wres.state == TrackingState.TRACKING:
            self._tracked_count += 1
        due = wres.is_keyframe or (self._tracked_count - 1) % int(self.cfg.pipeline_dense_every) == 0
        self._dense_ctx = dict(result=result, frame=frame, cam=cam, xn=xn, p_dyn=g.p_dynamic, ids=ids,
                               wres=wres, graph=g, world=self._world, dense_due=due)
        timings["total"] = (time.perf_counter() - t_start) * 1e3
        return result

    def _refine_window(self, g, ids: np.ndarray, cam) -> None:
        """SirenPose joint refinement of the window (keyframes only): poses, landmarks and the
        dynamic keypoints' positions under the geometric loss, with the field; keeps the
        dynamic tracks' velocities for the cloud.

        The snapshot is taken and the result written back under the lock; the solve runs
        without it. If a keyframe was inserted meanwhile the result no longer fits the window
        and is dropped (``apply_to_window`` checks): the refinement never holds up mapping."""
        with self.lock:
            snap = snapshot_from_window(self.window, g, ids, cam, self.cfg)
        if snap is None:
            return
        if self._joint_prev is not None:
            warm_start(snap, *self._joint_prev)
        if self._map_worker is not None and not uses_field(self.cfg):
            res = self._map_worker.refine(snap)
        else:
            res = self.joint.refine(snap, self.field)
        with self.lock:
            apply_to_window(self.window, snap, res)
    def densify(self, result: FrameResult) -> FrameResult:
        """Stages 4-5 (field fit and cloud) for the frame of the latest :meth:`track` call.

        Fills ``depth``, ``cloud``, ``map_cloud`` and the field/cloud timings of ``result`` (in
        place; it is also returned). Skipped, with empty outputs, when the frame has no pose, on
        tracked frames between every ``pipeline_dense_every``-th one (keyframes always run), and
        while there is no landmark depth to fit (rotation-only tracking before initialisation).
        """
        return self.densify_job(self.take_dense_job(result))

    def take_dense_job(self, result: FrameResult) -> dict:
        """What :meth:`densify_job` needs for ``result`` (the latest :meth:`track` /
        :meth:`estimate` output, taken once)."""
        ctx = self._dense_ctx
        if ctx is None or ctx["result"] is not result:
            raise ValueError("densify() takes the FrameResult of the latest track() call, once")
        self._dense_ctx = None
        return ctx

    def densify_job(self, ctx: dict, map_work: bool = True) -> FrameResult:
        """Map work (keyframe insertion, joint refinement; unless ``map_work`` is False because
        :meth:`map_job` runs it elsewhere) and stages 4-5 for one job of
        :meth:`take_dense_job`; returns its FrameResult, filled in place."""
        result = ctx["result"]
        t_start = time.perf_counter()
        timings = result.timings_ms
        wres = ctx["wres"]
        if ctx["world"] != self._dense_world:
            self._reset_dense()
        if map_work:
            self.map_job(ctx)

        # 4. field and 5. cloud (only with a pose)
        timings["field"] = 0.0
        timings["cloud"] = 0.0
        has_depth = bool(np.any(np.isfinite(wres.landmark_depth)))
        if (wres.state == TrackingState.TRACKING and self.field is not None and ctx["dense_due"]
                and (has_depth or self.field.fitted)):
            self._dense(ctx["frame"], ctx["cam"], ctx["xn"], ctx["p_dyn"], ctx["ids"], wres, result,
                        timings)
        elif (wres.state == TrackingState.TRACKING and self.field is None and has_depth
              and self.cfg.cloud_enabled):
            t0 = time.perf_counter()
            result.cloud = self._sparse_cloud(ctx["frame"], ctx["xn"], ctx["p_dyn"], ctx["ids"], wres,
                                              result.keypoints)
            timings["cloud"] = (time.perf_counter() - t0) * 1e3
        timings["total"] = timings.get("total", 0.0) + (time.perf_counter() - t_start) * 1e3
        return result

    def map_job(self, ctx: dict) -> None:
        """Keyframe insertion (triangulation, bundle adjustment) and the joint refinement improve
        the window for the frames to come, not this frame's pose: they run after the caller
        published that pose, on a copy of the map (a MapJob), and are committed under the lock,
        so that the pose stage can keep tracking meanwhile."""
        if ctx["world"] != self._map_world:
            self._joint_prev = None
            self._vel_ids = np.zeros(0, np.int64)
            self._vel = np.zeros((0, 3), np.float32)
            self._map_world = ctx["world"]
        timings = ctx["result"].timings_ms
        wres = ctx["wres"]
        with self.lock:
            job = self.window.begin_map_job()
        if job is not None:
            done = False
            try:
                t0 = time.perf_counter()
                if self._map_worker is not None:
                    self._map_worker.run_map_job(job)
                else:
                    job.run()
                timings["window"] = timings.get("window", 0.0) + (time.perf_counter() - t0) * 1e3
                done = True
            finally:
                with self.lock:
                    if done:
                        self.window.commit_map_job(job)
                    else:               # a failed job leaves the map as it was
                        self.window.abandon_map_job(job)
                    self._map_committed.notify_all()
        if self.joint is not None and wres.is_keyframe and wres.state == TrackingState.TRACKING:
            t0 = time.perf_counter()
            self._refine_window(ctx["graph"], ctx["ids"], ctx["cam"])
            timings["joint"] = (time.perf_counter() - t0) * 1e3

    def _keypoint_velocity(self, ids: np.ndarray) -> np.ndarray:
        """World velocity per keypoint: from the joint refinement for dynamic tracks, else 0."""
        vel = np.zeros((len(ids), 3), np.float32)
        if len(self._vel_ids):
            pos = np.clip(np.searchsorted(self._vel_ids, ids), 0, len(self._vel_ids) - 1)
            hit = self._vel_ids[pos] == ids
            vel[hit] = self._vel[pos[hit]]
        return vel

    def _sparse_cloud(self, frame, xn, p_dyn, ids, wres, px_input) -> Cloud:
        """Without the field (field_enabled false): the tracked keypoints that have a landmark,
        at their landmark depth, with colour, dynamic probability and velocity."""
        z = wres.landmark_depth
        ok = np.isfinite(z) & (z > 0) & (z < self.cfg.cloud_max_depth)
        Xc = np.column_stack([xn[ok] * z[ok, None], z[ok]])
        T = wres.T_world_cam
        xyz = (Xc @ T[:3, :3].T + T[:3, 3]).astype(np.float32)
        px = px_input[ok]
        if frame.rgb is not None:
            h, w = frame.rgb.shape[:2]
            u = np.clip(np.round(px[:, 0]).astype(int), 0, w - 1)
            v = np.clip(np.round(px[:, 1]).astype(int), 0, h - 1)
            rgb = cloud_mod.pack_rgb(frame.rgb[v, u])
        else:
            rgb = np.full(len(xyz), 0x808080, np.uint32)
        return Cloud(xyz, rgb, p_dyn[ok].astype(np.float32), self._keypoint_velocity(ids[ok]))

    def _dense_keypoint_values(self, cam, xn, p_dyn, ids, h, w):
        """Dense (h, w) dynamic probability and (h, w, 4) [p, velocity] on the field's corner-
        aligned grid: per keypoint its dynamic probability and world velocity (from the joint
        refinement for dynamic tracks, zero for static ones), spread by nearest keypoint."""
        W, H = cam.width, cam.height
        u = (cam.fx * xn[:, 0] + cam.cx) * (w - 1) / (W - 1)
        v = (cam.fy * xn[:, 1] + cam.cy) * (h - 1) / (H - 1)
        radius = self.cfg.pipeline_dynamic_radius_px * (w - 1) / (W - 1)
        values = np.column_stack([p_dyn.astype(np.float32), self._keypoint_velocity(ids)])
        dense_kp = cloud_mod.densify_keypoint_values(np.stack([u, v], axis=1), values, h, w, radius)
        dyn = np.where(np.isfinite(dense_kp[..., 0]), dense_kp[..., 0],
                       self.cfg.graph_prior).astype(np.float32)
        return dyn, dense_kp

    def _dense(self, frame, cam, xn, p_dyn, ids, wres, result, timings) -> None:
        cfg = self.cfg
        W, H = cam.width, cam.height
        t0 = time.perf_counter()
        time_s = frame.stamp_ns * 1e-9
        depth = wres.landmark_depth
        have = np.isfinite(depth) & (depth > 0)
        # Undistorted pixel positions (pinhole) in the working image, normalised to [-1, 1].
        u = cam.fx * xn[have, 0] + cam.cx
        v = cam.fy * xn[have, 1] + cam.cy
        uv_norm = np.stack([2.0 * u / (W - 1) - 1.0, 2.0 * v / (H - 1) - 1.0], axis=1).astype(np.float32)
        self.field.update(time_s, uv_norm, (1.0 / depth[have]).astype(np.float32),
                          np.clip(1.0 - p_dyn[have], 0.0, 1.0).astype(np.float32))
        ds = int(cfg.cloud_downsample)
        h, w = max(2, H // ds), max(2, W // ds)
        inv = self.field.render(time_s, h, w)
        with np.errstate(divide="ignore", invalid="ignore"):
            dense_depth = np.where(inv > 0, 1.0 / inv, np.nan).astype(np.float32)
        dense_kp = None
        if cfg.field_occluder_bound:
            # Moving objects have no keypoint depth: the field shows the background behind
            # them. They occlude that background, so cap them at the depth around them.
            dyn, dense_kp = self._dense_keypoint_values(cam, xn, p_dyn, ids, h, w)
            dense_depth = field_mod.occluder_depth_bound(
                dense_depth, dyn > cfg.cloud_dynamic_threshold, cfg.field_occluder_percentile,
                cfg.field_occluder_rim_px * (w - 1) / (W - 1))
        timings["field"] = (time.perf_counter() - t0) * 1e3
        result.depth = dense_depth
        result.depth_scale = frame.camera.width / w

        if not cfg.cloud_enabled:
            return
        t0 = time.perf_counter()
        # The field's grid is corner-aligned (small pixel j at working pixel j (W-1)/(w-1)) and
        # lives in undistorted pinhole coordinates: back-project with the matching pinhole K.
        K_small = cloud_mod.scale_intrinsics(cam.K, (H, W), (h, w))
        rgb_small = None
        if frame.rgb is not None:
            # Area averaging (cv2.resize grid); it differs from the corner-aligned grid by under
            # half a small pixel, which only matters for colour at depth edges.
            rgb_small = cv2.resize(frame.rgb, (w, h), interpolation=cv2.INTER_AREA)
        if dense_kp is None:
            dyn, dense_kp = self._dense_keypoint_values(cam, xn, p_dyn, ids, h, w)
        result.dynamic_map = dyn
        # backproject() turns the NaN velocity of pixels far from every keypoint into 0.
        cloud = cloud_mod.backproject(dense_depth, K_small, wres.T_world_cam, rgb_small, dyn,
                                      dense_kp[..., 1:], max_depth=cfg.cloud_max_depth)
        result.cloud = cloud
        if wres.is_keyframe:
            self.voxels.insert(cloud)          # fuses only points below cloud_dynamic_threshold
            result.map_cloud = self.voxels.cloud()
        timings["cloud"] = (time.perf_counter() - t0) * 1e3
