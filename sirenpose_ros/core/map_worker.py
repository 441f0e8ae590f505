"""Keyframe mapping in a child process (ROS-free).

Keyframe triangulation + bundle adjustment (``window.MapJob``) and the SirenPose joint refinement
are NumPy/torch code made of many small operations: on threads they hold Python's GIL most of
the time and slow the pose stage down by as much as they take (measured on the H100 host with the
staged runner: pose-stage times doubled). Both already work on copies (a MapJob's map copy, a
``WindowSnapshot``), so they can run in another process instead: the copies go through a pipe,
the results come back, and the caller commits them under its lock exactly as with a thread.

The child is started with ``spawn`` (never ``fork``: the parent has threads and possibly a CUDA
context) and builds its own estimator and refiner from the same parameter values. One request at
a time; the map stage is a single thread, so no request queue is needed.
"""
from __future__ import annotations

import multiprocessing as mp

# Attributes of a window's map that a MapJob reads and writes.
MAP_STATE = ("keyframes", "lm_ids", "lm_X", "lm_p", "_f", "_kf_landmarks_seen")


def _serve(conn, values: dict) -> None:
    """Child process: answer ("map", state, keyframe_args) and ("joint", snapshot) requests."""
    import torch

    from sirenpose_ros.core.config import make_config
    from sirenpose_ros.core.joint import JointWindowRefiner
    from sirenpose_ros.core.window import SlidingWindowEstimator

    torch.set_num_threads(1)
    cfg = make_config(values)
    window = SlidingWindowEstimator(cfg)
    refiner = JointWindowRefiner(cfg) if cfg.joint_enabled else None
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        try:
            if msg[0] == "map":
                _, state, args = msg
                for k, v in state.items():
                    setattr(window, k, v)
                window._add_keyframe(*args)
                conn.send(("ok", {k: getattr(window, k) for k in MAP_STATE}))
            elif msg[0] == "joint":
                conn.send(("ok", refiner.refine(msg[1], None)))
            else:
                conn.send(("error", f"unknown request {msg[0]!r}"))
        except Exception as exc:          # noqa: BLE001 - the parent raises it
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class MapWorker:
    """A child process that runs MapJobs and joint refinements for one pipeline."""

    def __init__(self, cfg_values: dict, start_timeout_s: float = 120.0):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, dict(cfg_values)),
                                 name="sirenpose-map-worker", daemon=True)
        self._proc.start()
        child.close()
        # The child imports NumPy, OpenCV and torch (seconds on a busy machine): wait for it
        # here, at start-up, not in the first keyframe while the camera is already moving.
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise RuntimeError(f"map worker process did not start within {start_timeout_s:.0f} s")
        try:
            status, _ = self._conn.recv()
        except EOFError:
            status = "exited"
        if status != "ready":
            self.close()
            raise RuntimeError("map worker process failed to start")

    def _call(self, *msg):
        if not self._proc.is_alive():
            raise RuntimeError(f"map worker process exited (code {self._proc.exitcode})")
        self._conn.send(msg)
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"map worker: {value}")
        return value

    def run_map_job(self, job) -> None:
        """``job.run()`` in the child: the job's map copy receives the result."""
        state = {k: getattr(job.map, k) for k in MAP_STATE}
        for k, v in self._call("map", state, job.keyframe_args).items():
            setattr(job.map, k, v)

    def refine(self, snap):
        """``JointWindowRefiner.refine(snap, None)`` in the child (the field stays here: only
        usable when the joint loss does not read or train it)."""
        return self._call("joint", snap)

    def close(self, timeout: float = 5.0) -> None:
        try:
            self._conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
        self._conn.close()


def uses_field(cfg) -> bool:
    """Whether the joint refinement reads or trains the field (then it cannot leave the process
    that owns the field)."""
    return float(cfg.loss_depth_weight) > 0 or int(cfg.joint_field_steps) > 0

