"""The per-frame pipeline: Frame -> FrameResult (ROS-free).

Stages (each timed into ``FrameResult.timings_ms``):
1. ``frontend``: keypoints tracked with stable ids (KLT now; a learned frontend later).
2. ``graph``: keypoint graph and per-keypoint dynamic probability (prior before the pose,
   update after it).
3. ``window``: pose (PnP + Gauss-Newton), keyframes, triangulation, windowed bundle adjustment.
4. ``field``: SIREN inverse-depth field fed with landmark depths, rendered at reduced resolution.
5. ``cloud``: the rendered depth back-projected with colour, dynamic probability and velocity
   (a moving point's: from where the cloud put its keypoint over the last frames, NaN where its
   depth is not observable); static points fused into a voxel map on keyframes.

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
import logging
import threading
import time
from dataclasses import dataclass, field as dc_field
from typing import Callable

import cv2
import numpy as np

from sirenpose_ros.core.ids import lookup
from sirenpose_ros.core import cloud as cloud_mod
from sirenpose_ros.core import field as field_mod
from sirenpose_ros.core.dense import DenseInput, DenseProcess, DenseStage, small_rgb
from sirenpose_ros.core.config import Config, make_config
from sirenpose_ros.core.frontend import KLTFrontend, structure_tensor_at
from sirenpose_ros.core.graph import KeypointGraph
from sirenpose_ros.core.joint import JointWindowRefiner, apply_to_window, snapshot_from_window, warm_start
from sirenpose_ros.core.map_worker import MapWorker, refines_in_child
from sirenpose_ros.core.params import ParamSpec
from sirenpose_ros.core.types import Cloud, Frame, FrameResult, PoseOutput, TrackingState
from sirenpose_ros.core.camera import CameraModel
from sirenpose_ros.core.window import InitJob, SlidingWindowEstimator

log = logging.getLogger(__name__)

PARAMS = [
    ParamSpec("pipeline_max_image_width", 640, "Images wider than this are downscaled for processing (pixels); keypoints are still reported in input pixels.", 64, 8192),
    ParamSpec("pipeline_blas_threads", 1, "OpenBLAS threads for the estimator's small matrices (1 avoids thread contention that made 40x100 products 100x slower on a busy 2-core CPU); 0 leaves the library default.", 0, 256),
    ParamSpec("pipeline_frontend", "klt", "Keypoint frontend: 'klt' (corners + pyramidal KLT: fast on CPUs, most precise positions) or 'xfeat' (learned XFeat keypoints associated with LighterGlue or mutual nearest neighbours: robust to fast motion and blur, wants a GPU; see xfeat_* parameters).", choices=("klt", "xfeat")),
    ParamSpec("pipeline_torch_threads", 1, "Torch CPU threads (field fit, learned networks on the CPU); 1 avoids OpenMP contention with the estimator on small CPUs; 0 leaves torch's default.", 0, 256),
    ParamSpec("pipeline_dense_every", 1, "Run the dense stages (field fit, cloud) on every N-th tracked frame, and on every keyframe, so that a slow CPU keeps up with the pose stream; 1 = every frame.", 1, 1000),
    ParamSpec("pipeline_dense_max_hz", 30.0, "Run the dense stages (field fit, cloud) at most this often per second of camera time (keyframes always run): a 60 Hz camera rarely needs 60 clouds a second, and every skipped field fit leaves CPU time to the pose stage. Cameras at 30 Hz or slower get a cloud for every frame (see also pipeline_dense_every). 0 = no limit. A frame counts as due when at least 0.9/rate seconds passed since the last dense frame (camera jitter).", 0.0, 1000.0),
    ParamSpec("pipeline_overlap_frontend", "auto", "Staged mode: compute the next frame's keypoints while the pose stage solves the current one ('true': higher frame rate when both stages are busy; a frame may wait for the previous pose, adding up to one pose-stage time of latency) or only once the pose stage is idle ('false': lowest image-to-TF latency). 'auto': true when the frontend runs in its own process (pipeline_frontend_process), where it costs the pose stage no GIL time (H100, learned frontend, 60 Hz camera: 56.8 vs 33.6 poses/s, docs/benchmarks.md run 7), false otherwise (a frontend on a thread competes with the pose stage for Python's GIL).", choices=("auto", "true", "false")),
    ParamSpec("pipeline_map_process", True, "Staged mode: run keyframe triangulation + bundle adjustment and the joint refinement in a child process instead of a thread, so that they do not hold Python's GIL against the pose stage (the joint refinement reads a frozen copy of the field there; it stays in-process when it trains the field, joint_field_steps > 0).", None, None),
    ParamSpec("pipeline_frontend_process", "auto", "Staged mode: run the keypoint frontend in a child process, so that its Python work (the learned frontend issues ~100 small GPU launches per frame) does not hold the GIL against the pose and dense stages. 'auto': on for the learned frontend on a CUDA device, off otherwise (KLT spends its time inside OpenCV, which releases the GIL: a process only adds the image copy).", choices=("auto", "on", "off")),
    ParamSpec("pipeline_dense_process", "auto", "Staged mode: run the dense stage (SIREN field fit, dense depth, cloud, voxel map) in a child process, so that its Python work does not hold the GIL against the pose stage. 'auto': on when the field runs on a CUDA device and the joint refinement does not train the field (joint_field_steps 0: the field must then stay with the refinement); off otherwise (on a small CPU the two processes would share the same cores).", choices=("auto", "on", "off")),
    ParamSpec("pipeline_graph_process", "auto", "Run the motion graph's scorer (Delaunay edges, motion features, motion GNN) in a child process, one frame behind: a scored frame's keypoints go to the child and the pose stage goes on; the scores enter the dynamic probabilities when the next frame asks for them, so the next pose uses them but the scored frame's own outputs (dynamic_prob, keyframe decision, cloud labels) carry the beliefs from before it. Takes the GNN (9-16 ms per scored frame on the H100 host's CPU) off the pose stage. 'auto': on in staged mode when the frontend has its own process (a GPU machine with cores to spare), off otherwise; 'on' also applies to frame-after-frame processing (to measure its accuracy).", choices=("auto", "on", "off")),
    ParamSpec("pipeline_map_lag_s", 0.06, "Staged mode: once frames have wanted a keyframe for this long (seconds of camera time) while the map stage was still inserting the previous one, the next pose waits for the map (a map a few frames old still tracks well; one that falls further behind a fast camera does not). In time rather than frames so that a faster camera gets the same tolerance: 0.06 s is two frames at 30 Hz, four at 60 Hz; 0 = wait at the first frame after a blocked one.", 0.0, 10.0),
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


def apply_thread_limits(cfg: Config) -> None:
    """This process's BLAS and torch thread counts from ``pipeline_blas_threads`` and
    ``pipeline_torch_threads`` (the pipeline's process and each of its child processes)."""
    if cfg.pipeline_blas_threads > 0:
        limit_blas_threads(cfg.pipeline_blas_threads)
    if cfg.pipeline_torch_threads > 0:
        import torch
        torch.set_num_threads(cfg.pipeline_torch_threads)


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
        apply_thread_limits(self.cfg)
        self._async = bool(async_mapping)
        self.frontend = self._make_frontend()
        self.graph = self._make_graph()
        # async_mapping: the window never inserts keyframes inline; densify_job() does (on the
        # dense thread of core/staged.py).
        self.window = SlidingWindowEstimator(self.cfg, async_mapping=async_mapping)
        self.lock = threading.Lock()   # the window, between the pose and the map stages
        # Staged mode: keyframe insertion and the joint refinement each in a child process of
        # their own (core/staged.py runs them on two threads, so that a refinement never holds
        # up the next keyframe's insertion, which the pose stage may be waiting for).
        self._map_worker = None
        self._joint_worker = None
        if async_mapping and self.cfg.pipeline_map_process:
            self._map_worker = MapWorker(dict(self.cfg))
            if self.cfg.joint_enabled and refines_in_child(self.cfg):
                self._joint_worker = MapWorker(dict(self.cfg))
        self._map_committed = threading.Condition(self.lock)
        self.dense = self._make_dense() if self.cfg.field_enabled else None
        self.joint = JointWindowRefiner(self.cfg) if self.cfg.joint_enabled else None
        self._joint_prev = None      # (snapshot, result) of the previous refinement: warm start
        self._camera = None          # input camera of the current stream
        self._work_camera = None     # camera at the processing resolution
        self._last_stamp = None
        self._dense_ctx = None       # what densify() needs from the latest track()
        self._tracked_count = 0      # tracked frames since the dense state was reset
        self._last_dense_stamp = None  # stamp of the last frame the dense stage was due for
        # The pose stage starts a new dense world (field, voxel map, joint warm start) by bumping
        # _world; the dense stage resets its state when a job of a newer world arrives, so
        # the pose stage never touches dense state another thread may be using.
        self._world = 0
        self._map_world = 0
        # Estimator ids of tracks that slipped (Tracks.slipped): sorted frontend ids -> the id
        # the window knows them by since (negative: never a frontend id).
        self._wid_from = np.zeros(0, np.int64)
        self._wid_to = np.zeros(0, np.int64)
        self._next_wid = -1

    def _frontend_in_process(self) -> bool:
        mode = self.cfg.pipeline_frontend_process
        if not self._async or mode == "off":
            return False
        if mode == "on":
            return True
        if self.cfg.pipeline_frontend != "xfeat":
            return False
        return field_mod.resolve_device(self.cfg.xfeat_device).type == "cuda"

    def _graph_in_process(self) -> bool:
        mode = self.cfg.pipeline_graph_process
        return mode == "on" or (mode == "auto" and self._frontend_in_process())

    def _make_graph(self) -> KeypointGraph:
        if self._graph_in_process():
            from sirenpose_ros.core.graph_worker import GraphScorerProcess
            return KeypointGraph(self.cfg, deferred=GraphScorerProcess(dict(self.cfg)))
        return KeypointGraph(self.cfg)

    @property
    def overlaps_frontend(self) -> bool:
        """Whether the staged runner computes a frame's keypoints while the previous pose is
        being solved (``pipeline_overlap_frontend``)."""
        mode = self.cfg.pipeline_overlap_frontend
        return mode == "true" or (mode == "auto" and getattr(self.frontend, "pid", None) is not None)

    def _make_frontend(self):
        if self._frontend_in_process():
            from sirenpose_ros.core.frontend_worker import FrontendProcess
            return FrontendProcess(dict(self.cfg))
        return make_frontend(self.cfg)

    def _dense_in_process(self) -> bool:
        mode = self.cfg.pipeline_dense_process
        if not self._async or mode == "off" or not refines_in_child(self.cfg):
            return False
        return mode == "on" or field_mod.resolve_device(self.cfg.field_device).type == "cuda"

    def _make_dense(self):
        return DenseProcess(dict(self.cfg)) if self._dense_in_process() else DenseStage(self.cfg)

    @property
    def field(self):
        """The SIREN field when the dense stage runs in this process (else None: it lives in the
        dense worker process)."""
        return getattr(self.dense, "field", None)

    @field.setter
    def field(self, value) -> None:
        self.dense.field = value

    def close(self) -> None:
        """Stop the child processes, if any (the pipeline is unusable afterwards)."""
        for worker in (self._map_worker, self._joint_worker):
            if worker is not None:
                worker.close()
        self._map_worker = self._joint_worker = None
        for part in (self.frontend, self.dense, self.graph.deferred):
            if hasattr(part, "close"):
                part.close()

    @property
    def runtime(self) -> str:
        """What runs where, for logs and /diagnostics."""
        parts = [f"frontend {self.cfg.pipeline_frontend}"]
        details = []
        if self.cfg.pipeline_frontend == "xfeat":
            details.append(", ".join(self.frontend.describe()) or self.cfg.xfeat_backend)
        if getattr(self.frontend, "pid", None) is not None:
            details.append(f"in child process {self.frontend.pid}")
        if details:
            parts[-1] += f" ({'; '.join(details)})"
        if self.graph.deferred is not None:
            parts.append(f"motion graph {self.cfg.graph_scorer} (in child process {self.graph.deferred.pid}, one frame behind)")
        if self.dense is not None:
            parts.append(f"field {self.dense.device_type}")
            if getattr(self.dense, "pid", None) is not None:
                parts[-1] += f" (in child process {self.dense.pid})"
        return ", ".join(parts)

    def degrade(self) -> str:
        """Answer to a GPU out-of-memory error: release cached GPU memory, then move the dense
        field to the CPU; if it is there already, halve the learned frontend's keypoints.
        Returns what changed. The caller resets the pipeline afterwards."""
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.dense is not None and self.dense.device_type != "cpu":
            self.cfg = Config({**self.cfg, "field_device": "cpu"})
            if hasattr(self.dense, "close"):
                self.dense.close()
            self.dense = self._make_dense()
            return "SIREN field moved to the CPU"
        if self.cfg.pipeline_frontend == "xfeat" and self.cfg.xfeat_top_k >= 128:
            self.cfg = Config({**self.cfg, "xfeat_top_k": self.cfg.xfeat_top_k // 2})
            if hasattr(self.frontend, "close"):
                self.frontend.close()
            self.frontend = self._make_frontend()
            return f"learned frontend keypoints halved to {self.cfg.xfeat_top_k}"
        return "nothing left to reduce"

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget everything: map, tracks, field, voxel map and the camera of the stream. Child
        processes that exited (killed, crashed) are started again first, so that the reset a
        caller does after their failure recovers."""
        self._restart_dead_children()
        self._reset_estimation()
        self._camera = None
        self._work_camera = None
        self._last_stamp = None

    def _restart_dead_children(self) -> None:
        restarted = []
        if self._map_worker is not None and not self._map_worker.alive:
            self._map_worker.close()
            self._map_worker = MapWorker(dict(self.cfg))
            restarted.append("map worker")
        if self._joint_worker is not None and not self._joint_worker.alive:
            self._joint_worker.close()
            self._joint_worker = MapWorker(dict(self.cfg))
            restarted.append("joint refinement worker")
        if self.graph.deferred is not None and not self.graph.deferred.alive:
            self.graph.deferred.close()
            self.graph = self._make_graph()         # a new graph: nothing pending on the old child
            restarted.append("motion graph worker")
        if getattr(self.frontend, "alive", True) is False:
            self.frontend.close()
            self.frontend = self._make_frontend()
            restarted.append("frontend worker")
        if self.dense is not None and getattr(self.dense, "alive", True) is False:
            self.dense.close()
            self.dense = self._make_dense()
            restarted.append("dense worker")
        if restarted:
            log.warning("restarted the %s process(es), which had exited", ", ".join(restarted))

    def _reset_estimation(self) -> None:
        self.frontend.reset()
        self._reset_pose_state()
        self._reset_dense()

    def _reset_pose_state(self) -> None:
        self.graph.reset()
        self.window.reset()
        self._wid_from = np.zeros(0, np.int64)
        self._wid_to = np.zeros(0, np.int64)
        self._new_dense_world()

    def _new_dense_world(self) -> None:
        self._tracked_count = 0
        self._last_dense_stamp = None
        self._world += 1

    def _reset_dense(self) -> None:
        if self.dense is not None:
            self.dense.reset()

    def _set_camera(self, camera) -> None:
        self._camera = camera
        s = min(1.0, self.cfg.pipeline_max_image_width / camera.width)
        self._work_camera = camera if s >= 1.0 else camera.scaled(s)

    # ------------------------------------------------------------------ per frame
    def process(self, frame: Frame) -> FrameResult:
        """Pose and dense output of one frame (offline tools, tests)."""
        return self.densify(self.track(frame))

    def track(self, frame: Frame, on_pose: Callable[[PoseOutput], None] | None = None) -> FrameResult:
        """Stages 1-3: pose, keypoints, dynamic probability and keypoint depth of ``frame``.

        Depth, cloud and map are left empty; pass the result to :meth:`densify` to fill them.
        ``on_pose``: see :meth:`estimate`.
        """
        return self.estimate(self.observe(frame), on_pose)

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

    def estimate(self, obs: Observation, on_pose: Callable[[PoseOutput], None] | None = None) -> FrameResult:
        """Stages 2-3 (pose stage) for an :meth:`observe` output: graph, window pose, keyframe
        decision. The window is held under ``self.lock``.

        ``on_pose(pose)`` is called as soon as the window has solved the pose, before the motion
        graph scores this frame and before the keyframe decision: those only serve later frames
        and the dense stage, so TF need not wait for them (the motion GNN is the longest part of
        the pose stage). It runs under ``self.lock`` (keep it short) and an exception from it
        propagates with the frame half done (the caller resets the pipeline).

        When frames have needed a keyframe for ``pipeline_map_lag_s`` while the map stage was
        still inserting the last one, this waits for that commit first (up to
        ``pipeline_map_wait_s``): tracking on a map that lags further and further behind a
        moving camera loses its landmarks."""
        with self.lock:
            waited = 0.0
            since = self.window.keyframe_blocked_since_ns
            if (self.window.keyframe_blocked and self.window.map_busy and since is not None
                    and (obs.frame.stamp_ns - since) * 1e-9 >= float(self.cfg.pipeline_map_lag_s)):
                t0 = time.perf_counter()
                self._map_committed.wait_for(lambda: not self.window.map_busy,
                                             float(self.cfg.pipeline_map_wait_s))
                waited = (time.perf_counter() - t0) * 1e3
            result = self._estimate(obs, on_pose)
            if waited:
                result.timings_ms["map_wait"] = waited
            return result

    def _estimate(self, obs: Observation, on_pose) -> FrameResult:
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
        slipped = getattr(tracks, "slipped", None)
        # Before a map exists there is no landmark to protect, and the two-view initialisation
        # and its motion evidence need each track's whole history: slips count from then on.
        if slipped is not None and self.window.keyframes:
            slipped = slipped[ok]
        else:
            slipped = None
        wids = self._window_ids(ids, slipped)
        p_prior = self.graph.prior(ids, wait=False)
        t_graph = time.perf_counter() - t0
        t0 = time.perf_counter()
        est = self.window.estimate_pose(frame.stamp_ns, wids, xn, p_prior, 0.5 * (cam.fx + cam.fy))
        t_window = time.perf_counter() - t0
        if est.message:
            messages.append(est.message)
        if est.reset:
            # A new map (possibly at a new scale): dense state built on the old one is stale.
            self._new_dense_world()
            reset = True
        pose = PoseOutput(frame.stamp_ns, est.state, est.T_world_cam, est.covariance, est.velocity_world,
                          reset, new_world, "; ".join(messages))
        if on_pose is not None:
            on_pose(pose)
        # 2b. dynamic probability from the static-model residuals
        t0 = time.perf_counter()
        g = self.graph.dynamic_probability(ids, px, est.residual_px, frame.stamp_ns)
        t_graph += time.perf_counter() - t0
        # 3b. keyframes and map (the pose, its covariance and velocity stay as estimated)
        t0 = time.perf_counter()
        wres = self.window.update_map(g.p_dynamic)
        timings["window"] = (t_window + time.perf_counter() - t0) * 1e3
        timings["graph"] = t_graph * 1e3

        px_full = np.stack([(px[:, 0] + 0.5) * sx - 0.5, (px[:, 1] + 0.5) * sy - 0.5], axis=1)
        result = FrameResult(
            stamp_ns=frame.stamp_ns, state=pose.state, T_world_cam=pose.T_world_cam,
            covariance=pose.covariance, velocity_world=pose.velocity_world,
            is_keyframe=wres.is_keyframe, keypoints=px_full, keypoint_ids=ids.copy(),
            dynamic_prob=g.p_dynamic.copy(), keypoint_depth=wres.landmark_depth.copy(),
            reset=reset, new_world=new_world, message=pose.message, timings_ms=timings)
        if wres.state == TrackingState.TRACKING:
            self._tracked_count += 1
        due = wres.is_keyframe or ((self._tracked_count - 1) % int(self.cfg.pipeline_dense_every) == 0
                                   and self._dense_rate_allows(frame.stamp_ns))
        if due and wres.state == TrackingState.TRACKING:
            self._last_dense_stamp = frame.stamp_ns
        # ids: as the window knows the tracks (the map work, the joint refinement and the far
        # bounds all look them up there).
        self._dense_ctx = dict(result=result, frame=frame, cam=cam, xn=xn, p_dyn=g.p_dynamic, ids=wids,
                               wres=wres, graph=g, world=self._world, dense_due=due, px=px)
        timings["total"] = (time.perf_counter() - t_start) * 1e3
        return result

    def _window_ids(self, ids: np.ndarray, slipped: np.ndarray | None) -> np.ndarray:
        """The ids the estimator knows the tracks ``ids`` by: a track that slipped in this frame
        (its KLT window no longer matched, e.g. dragged by the edge of a moving object) goes to
        the estimator as a new track from now on, so that its landmark, built from the
        positions before, is no longer pulled towards the track's new, wrong ones, and the
        track can be triangulated afresh if it measures a static point again. The motion graph
        and the outputs keep the frontend's id (the graph needs the history of each track)."""
        wids = np.array(ids, np.int64)
        k, hit = lookup(self._wid_from, wids)
        wids[hit] = self._wid_to[k[hit]]
        renamed = hit
        if slipped is not None and slipped.any():
            n = int(slipped.sum())
            wids[slipped] = self._next_wid - np.arange(n)
            self._next_wid -= n
            renamed = hit | slipped
        # Only tracks alive in this frame keep an entry: the map stays as small as the frame.
        o = np.argsort(ids[renamed])
        self._wid_from = np.asarray(ids[renamed][o], np.int64)
        self._wid_to = wids[renamed][o]
        return wids

    def _dense_rate_allows(self, stamp_ns: int) -> bool:
        hz = float(self.cfg.pipeline_dense_max_hz)
        last = self._last_dense_stamp
        return hz <= 0 or last is None or stamp_ns < last or (stamp_ns - last) * 1e-9 >= 0.9 / hz

    def _far_bounds(self, ctx: dict) -> np.ndarray | None:
        """Far bounds of the job's tracks (SlidingWindowEstimator.far_bounds), or None. Here in
        the dense stage, not the pose stage: the image filtering stays off the pose latency and
        the window is locked only for the look-up."""
        cfg = self.cfg
        if cfg.field_far_bound_weight <= 0:
            return None
        structure = None
        if cfg.field_far_bound_min_texture > 0:
            structure = self._structure_at(ctx["frame"].gray, ctx["cam"], ctx["px"])
        with self.lock:
            if ctx["world"] != self._world:        # the map was reset since: other keyframes
                return None
            return self.window.far_bounds(ctx["ids"], ctx["xn"], ctx["wres"].T_world_cam,
                                          cfg.field_far_bound_px, structure,
                                          cfg.field_far_bound_min_texture)

    def _structure_at(self, gray: np.ndarray, cam, px: np.ndarray) -> np.ndarray:
        """(N, 3) image structure tensor (box window of about a KLT patch) of the working-size
        image at the (working-pixel) positions ``px``."""
        if gray.shape[1] != cam.width or gray.shape[0] != cam.height:
            gray = cv2.resize(gray, (cam.width, cam.height), interpolation=cv2.INTER_AREA)
        return structure_tensor_at(gray, px, (9, 9))

    def _joint_refine(self, g, ids: np.ndarray, cam) -> None:
        """SirenPose joint refinement of the window (keyframes only): poses, landmarks and the
        dynamic keypoints' positions under the geometric loss, with the field. Its velocities
        of the dynamic keypoints are not the cloud's: the refinement cannot observe a moving
        point's depth, and its velocities were off by 1.4-2.5x in size (scripts/velocity_check.py);
        the dense stage derives the cloud's from its own depth (cloud.TrackVelocity).

        The snapshot is taken and the result written back under the lock; the solve runs
        without it. If a keyframe was inserted meanwhile the result no longer fits the window
        and is dropped (``apply_to_window`` checks): the refinement never holds up mapping."""
        with self.lock:
            snap = snapshot_from_window(self.window, g, ids, cam, self.cfg)
        if snap is None:
            return
        if self._joint_prev is not None:
            warm_start(snap, *self._joint_prev)
        reads_field = self.dense is not None and float(self.cfg.loss_depth_weight) > 0
        worker = self._joint_worker if self._async else None
        if worker is not None:
            res = worker.refine(snap, self.dense.frozen_field() if reads_field else None)
        elif self.field is not None or not reads_field:
            res = self.joint.refine(snap, self.field)
        else:            # the field lives in the dense worker process: read a frozen copy of it
            frozen = self.dense.frozen_field()
            res = self.joint.refine(snap, frozen.module() if frozen is not None else None)
        with self.lock:
            apply_to_window(self.window, snap, res)
        self._joint_prev = (snap, res)

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
        if map_work:
            self.map_job(ctx)

        # 4. field and 5. cloud (only with a pose)
        timings["field"] = 0.0
        timings["cloud"] = 0.0
        has_depth = bool(np.any(np.isfinite(wres.landmark_depth)))
        if wres.state == TrackingState.TRACKING and self.dense is not None and ctx["dense_due"]:
            frame, cam = ctx["frame"], ctx["cam"]
            out = self.dense.run(DenseInput(
                frame.stamp_ns, ctx["world"], cam, frame.camera.width, ctx["xn"], ctx["p_dyn"],
                ctx["ids"], wres.landmark_depth, wres.T_world_cam,
                bool(wres.is_keyframe), small_rgb(frame.rgb, cam, self.cfg), self._far_bounds(ctx)))
            if out is not None:
                result.depth, result.depth_scale = out.depth, out.depth_scale
                result.dynamic_map, result.cloud, result.map_cloud = out.dynamic_map, out.cloud, out.map_cloud
                result.keypoint_velocity = out.keypoint_velocity
                timings.update(out.timings_ms)
        elif (wres.state == TrackingState.TRACKING and self.dense is None and has_depth
              and self.cfg.cloud_enabled):
            t0 = time.perf_counter()
            result.cloud = self._sparse_cloud(ctx["frame"], ctx["xn"], ctx["p_dyn"], wres,
                                              result.keypoints)
            timings["cloud"] = (time.perf_counter() - t0) * 1e3
        timings["total"] = timings.get("total", 0.0) + (time.perf_counter() - t_start) * 1e3
        return result

    def map_job(self, ctx: dict) -> None:
        """Keyframe insertion (triangulation, bundle adjustment) and the joint refinement improve
        the window for the frames to come, not this frame's pose: they run after the caller
        published that pose, on a copy of the map (a MapJob) and a snapshot of the window, and
        are committed under the lock, so that the pose stage can keep tracking meanwhile.
        ``insert_keyframe`` then ``refine_window``; the staged runner runs the two on threads of
        their own."""
        self.insert_keyframe(ctx)
        self.refine_window(ctx)

    def insert_keyframe(self, ctx: dict) -> None:
        """Keyframe insertion for a job of :meth:`take_dense_job` (whichever keyframe is
        pending: the window decides no new one until the last is committed), or the two-view
        initialisation pending in the window (``window_async_init``)."""
        timings = ctx["result"].timings_ms
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
                timings["init" if isinstance(job, InitJob) else "map"] = (time.perf_counter() - t0) * 1e3
                done = True
            finally:
                with self.lock:
                    if done:
                        self.window.commit_map_job(job)
                    else:               # a failed job leaves the map as it was
                        self.window.abandon_map_job(job)
                    self._map_committed.notify_all()

    def refine_window(self, ctx: dict) -> None:
        """The SirenPose joint refinement of the window after the keyframe of ``ctx`` (a job of
        :meth:`take_dense_job`) went in. Dropped when a newer keyframe went in meanwhile."""
        if ctx["world"] != self._map_world:
            self._joint_prev = None
            self._map_world = ctx["world"]
        wres = ctx["wres"]
        timings = ctx["result"].timings_ms
        if self.joint is not None and wres.is_keyframe and wres.state == TrackingState.TRACKING:
            t0 = time.perf_counter()
            self._joint_refine(ctx["graph"], ctx["ids"], ctx["cam"])
            timings["joint"] = (time.perf_counter() - t0) * 1e3

    def _sparse_cloud(self, frame, xn, p_dyn, wres, px_input) -> Cloud:
        """Without the field (field_enabled false): the tracked keypoints that have a landmark,
        at their landmark depth, with colour and dynamic probability. Velocity 0, or NaN
        (unknown) for points flagged dynamic: a landmark is a static point, and without the
        field nothing observes a moving one's depth."""
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
        dyn = p_dyn[ok].astype(np.float32)
        vel = np.zeros((len(dyn), 3), np.float32)
        vel[dyn > self.cfg.cloud_dynamic_threshold] = np.nan
        return Cloud(xyz, rgb, dyn, vel)
