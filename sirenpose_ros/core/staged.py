"""Overlapped pipeline stages on threads (ROS-free).

One frame passes three stages, plus map work on keyframes; each runs on its own thread, so that
frame k+1's keypoints are computed while frame k's pose is solved and frame k-1's cloud is built:

1. frontend (the caller's thread, :meth:`StagedRunner.submit`): ``Pipeline.observe``: resize,
   keypoint tracking (KLT in OpenCV, or XFeat + LighterGlue on the GPU).
2. pose (thread ``sirenpose-pose``): ``Pipeline.estimate``: window pose, then ``on_pose(pose)``
   at once (the caller publishes TF / odometry there), then the keypoint graph (motion GNN) and
   the keyframe decision, then ``on_frame(result)``.
3. dense (thread ``sirenpose-dense``): ``Pipeline.densify_job``: field fit and cloud; then
   ``on_dense(result)``.
4. map (thread ``sirenpose-map``, keyframes only): ``Pipeline.insert_keyframe``: keyframe
   triangulation and bundle adjustment on a copy of the map, committed under the pipeline's
   lock; the computation itself runs in a child process (``core/map_worker.py``,
   ``pipeline_map_process``) so that it does not compete for the GIL with the pose stage. It has
   its own thread so that a new keyframe enters the window as soon as possible (tracking on a
   map that lags behind a fast camera loses landmarks, and the pose stage waits for a map that
   lags too far), not after the field fit of an earlier frame. Before a map exists it also runs
   the two-view initialisation (``window_async_init``): an analysis of 80-190 ms that would
   otherwise hold the pose stage (and drop the camera frames behind it) at every attempt.
5. refine (thread ``sirenpose-refine``, after each keyframe insertion): ``Pipeline.refine_window``:
   the SirenPose joint refinement of the window (in a second child process). On its own thread
   so that a refinement (tens of milliseconds to 0.1 s) never delays the next keyframe's
   insertion: on an H100 with a 60 Hz camera, sharing the map thread made the pose stage wait
   up to 64 ms for the map. A refinement that finds a newer keyframe inserted meanwhile is
   dropped (``joint.apply_to_window``); a waiting one is replaced by the newer keyframe's.

Back-pressure: ``submit`` blocks while the pose stage still has a frame waiting, so a caller that
keeps only the newest camera image (the node's one-slot buffer) drops frames there, before any
work is spent on them. The dense stage keeps one waiting job and replaces it by newer ones
(clouds of skipped frames are not produced), except that a waiting keyframe job is never
replaced by a non-keyframe one: keyframes carry the map and voxel-map updates.

The pose stage never waits for keyframe bundle adjustment or the field: it holds the lock only
while it reads and updates the window, and the dense stage only to copy and commit the map.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from typing import Callable

from sirenpose_ros.core.types import Frame, FrameResult, PoseOutput

log = logging.getLogger(__name__)


class StagedRunner:
    """Runs a ``Pipeline`` built with ``async_mapping=True`` as overlapped stages.

    On the pose thread, once per submitted frame that was estimated (whatever its tracking
    state): ``on_pose(pose)`` with its :class:`PoseOutput` as soon as the pose is solved (under
    the pipeline's lock: keep it short), then ``on_frame(result)`` with the complete
    :class:`FrameResult` (keypoints, dynamic probability, keypoint depth, timings).
    ``on_dense(result)`` on the dense thread for the frames whose dense job ran (same result
    object, now with depth/cloud). ``on_error(stage, exc)`` is called on the failing thread (a
    failing ``on_pose`` is reported as stage "pose" and the frame still completes); the runner
    keeps going (the caller decides whether to reset).
    ``gil_switch_interval_s``: Python's thread switch interval is process-wide; the default 5 ms
    lets a busy dense thread delay the pose thread by that much at each switch, so a runner sets
    it lower (None leaves it alone).
    """

    def __init__(self, pipeline, on_frame: Callable[[FrameResult], None],
                 on_dense: Callable[[FrameResult], None] | None = None,
                 on_error: Callable[[str, BaseException], None] | None = None,
                 on_pose: Callable[[PoseOutput], None] | None = None,
                 gil_switch_interval_s: float | None = 0.001):
        if not getattr(pipeline.window, "async_mapping", False):
            raise ValueError("StagedRunner needs a Pipeline built with async_mapping=True")
        self.pipeline = pipeline
        self.on_frame = on_frame
        self.on_pose = on_pose
        self.on_dense = on_dense
        self.on_error = on_error
        if gil_switch_interval_s is not None:
            sys.setswitchinterval(gil_switch_interval_s)
        self._cond = threading.Condition()
        self._pose_in = None            # Observation waiting for the pose stage
        self._dense_in = None           # dense job waiting for the dense stage
        self._map_in = None             # keyframe job waiting for the map stage
        self._refine_in = None          # inserted keyframe waiting for the joint refinement
        self._pose_busy = False
        self._dense_busy = False
        self._map_busy = False
        self._refine_busy = False
        self._stop = False
        self.dense_dropped = 0          # dense jobs replaced by newer ones (no cloud for them)
        self._threads = [threading.Thread(target=self._pose_loop, name="sirenpose-pose", daemon=True),
                         threading.Thread(target=self._dense_loop, name="sirenpose-dense", daemon=True),
                         threading.Thread(target=self._map_loop, name="sirenpose-map", daemon=True),
                         threading.Thread(target=self._refine_loop, name="sirenpose-refine", daemon=True)]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ caller side
    def _ready(self) -> bool:
        overlap = self.pipeline.overlaps_frontend
        return self._stop or (self._pose_in is None and (overlap or not self._pose_busy))

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until :meth:`submit` would start at once. A caller with a newest-frame buffer
        takes its frame only after this, so that the frame does not age while it waits."""
        with self._cond:
            return self._cond.wait_for(self._ready, timeout)

    def submit(self, frame: Frame) -> None:
        """Frontend stage of ``frame`` on this thread, then hand it to the pose stage.

        Waits first until no earlier frame is waiting for the pose stage (the caller's
        newest-frame buffer drops the stale ones meanwhile). With ``pipeline_overlap_frontend``
        the frontend then works on this frame while the pose stage solves the previous one
        (throughput: the slower of the two stages sets the frame rate; latency: a frame may
        wait for the previous pose); without it, it also waits until the pose stage is idle
        (latency: frontend + pose; frame rate: 1 / (frontend + pose))."""
        with self._cond:
            self._cond.wait_for(self._ready)
            if self._stop:
                return
        obs = self.pipeline.observe(frame)
        with self._cond:
            self._cond.wait_for(lambda: self._pose_in is None or self._stop)
            if self._stop:
                return
            self._pose_in = obs
            self._cond.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted frame went through all stages. Returns False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._stop or not (self._pose_in or self._pose_busy or self._dense_in
                                           or self._dense_busy or self._map_in or self._map_busy
                                           or self._refine_in or self._refine_busy),
                timeout)

    def reset(self) -> None:
        """Drain, then reset the pipeline (no stage is running while it resets)."""
        self.drain()
        self.pipeline.reset()

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the stage threads (waiting at most ``timeout`` seconds for all of them, e.g.
        while one is inside a long field fit), then the pipeline's map worker process. Returns
        False when a stage thread is still running (it is a daemon thread)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.pipeline.close()
        return not any(t.is_alive() for t in self._threads)

    # ------------------------------------------------------------------ stages
    def _fail(self, stage: str, exc: BaseException) -> None:
        if self.on_error is not None:
            self.on_error(stage, exc)
        else:
            log.error("%s stage failed: %s\n%s", stage, exc, traceback.format_exc())

    def _pose_loop(self) -> None:
        p = self.pipeline
        while True:
            with self._cond:
                while self._pose_in is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                obs, self._pose_in = self._pose_in, None
                self._pose_busy = True
                self._cond.notify_all()       # the frontend may hand over the next frame
            try:
                result = p.estimate(obs, self._publish_pose)
                job = p.take_dense_job(result)
                try:
                    self.on_frame(result)
                finally:                      # a keyframe must reach the map stage regardless
                    self._offer_dense(job)
            except Exception as exc:          # noqa: BLE001 - reported, the stage goes on
                self._fail("pose", exc)
            finally:
                with self._cond:
                    self._pose_busy = False
                    self._cond.notify_all()

    def _publish_pose(self, pose: PoseOutput) -> None:
        if self.on_pose is None:
            return
        try:
            self.on_pose(pose)
        except Exception as exc:              # noqa: BLE001 - reported; the frame must complete
            self._fail("pose", exc)

    def _offer_dense(self, job: dict) -> None:
        with self._cond:
            if job["wres"].is_keyframe or job["wres"].init_pending:
                # The window decides no new keyframe until the last one is committed, so a job
                # still waiting here can only be a keyframe whose insertion is done or not needed
                # (initialisation); the newer job takes its place (map_job inserts whatever
                # keyframe, or runs whatever two-view initialisation, is pending, and refines
                # the window as it is then).
                self._map_in = job
            waiting = self._dense_in
            if waiting is not None and waiting["wres"].is_keyframe and not job["wres"].is_keyframe:
                self.dense_dropped += 1       # keep the waiting keyframe, skip this frame's cloud
                return
            if waiting is not None:
                self.dense_dropped += 1
            self._dense_in = job
            self._cond.notify_all()

    def _dense_loop(self) -> None:
        def work(job):
            result = self.pipeline.densify_job(job, map_work=False)
            if self.on_dense is not None:
                self.on_dense(result)
        self._serve("dense", work)

    def _map_loop(self) -> None:
        def work(job):
            try:
                self.pipeline.insert_keyframe(job)
            finally:           # refine what the window holds now, even if this insertion failed
                with self._cond:
                    self._refine_in = job
                    self._cond.notify_all()
        self._serve("map", work)

    def _refine_loop(self) -> None:
        self._serve("refine", self.pipeline.refine_window)

    def _serve(self, stage: str, work: Callable[[dict], None]) -> None:
        """Loop of the ``stage`` thread: take the job in ``self._<stage>_in``, run ``work`` on
        it with ``self._<stage>_busy`` set, until :meth:`close`."""
        slot, busy = f"_{stage}_in", f"_{stage}_busy"
        while True:
            with self._cond:
                self._cond.wait_for(lambda: getattr(self, slot) is not None or self._stop)
                if self._stop:
                    return
                job = getattr(self, slot)
                setattr(self, slot, None)
                setattr(self, busy, True)
            try:
                work(job)
            except Exception as exc:          # noqa: BLE001 - reported, the stage goes on
                self._fail(stage, exc)
            finally:
                with self._cond:
                    setattr(self, busy, False)
                    self._cond.notify_all()
