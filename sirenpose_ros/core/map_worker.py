"""Keyframe mapping in a child process (ROS-free).

Keyframe triangulation + bundle adjustment (``window.MapJob``) and the SirenPose joint refinement
are NumPy/torch code made of many small operations: on threads they hold Python's GIL most of
the time and slow the pose stage down by as much as they take (measured on the H100 host with the
staged runner: pose-stage times doubled). Both already work on copies (a MapJob's map copy, a
``WindowSnapshot``), so they can run in another process instead: the copies go through a pipe,
the results come back, and the caller commits them under its lock exactly as with a thread.

The child is a fresh interpreter (``python -m sirenpose_ros.core.map_worker``, never ``fork``:
the parent has threads and possibly a CUDA context; not ``multiprocessing``'s spawn either, which
re-runs the parent's main module and so breaks scripts without a ``__main__`` guard). It talks
over two pipes with ``multiprocessing.connection.Connection`` (pickled messages) and builds its
own estimator and refiner from the parent's parameter values. One request at a time; the map
stage is a single thread, so no request queue is needed.
"""
from __future__ import annotations

import os
import subprocess
import sys
from multiprocessing.connection import Connection

# Attributes of a window's map that a MapJob reads and writes.
MAP_STATE = ("keyframes", "lm_ids", "lm_X", "lm_p", "_f", "_kf_landmarks_seen")


def _serve(conn_in: Connection, conn: Connection) -> None:
    """Child process: the parameter values first, then answer ("map", state, keyframe_args) and
    ("joint", snapshot) requests until None or the parent's end closes."""
    import torch

    from sirenpose_ros.core.config import make_config
    from sirenpose_ros.core.joint import JointWindowRefiner
    from sirenpose_ros.core.window import SlidingWindowEstimator

    torch.set_num_threads(1)
    cfg = make_config(conn_in.recv())
    window = SlidingWindowEstimator(cfg)
    refiner = JointWindowRefiner(cfg) if cfg.joint_enabled else None
    conn.send(("ready", None))
    while True:
        try:
            msg = conn_in.recv()
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
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        # The child resolves imports as this process does (editable install, PYTHONPATH, cwd).
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "sirenpose_ros.core.map_worker", str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._send = Connection(to_child_w, readable=False)
        self._recv = Connection(from_child_r, writable=False)
        self._send.send(dict(cfg_values))
        # The child imports NumPy, OpenCV and torch (seconds on a busy machine): wait for it
        # here, at start-up, not in the first keyframe while the camera is already moving.
        if not self._recv.poll(start_timeout_s):
            self.close()
            raise RuntimeError(f"map worker process did not start within {start_timeout_s:.0f} s")
        try:
            status, _ = self._recv.recv()
        except EOFError:
            status = "exited"
        if status != "ready":
            self.close()
            raise RuntimeError("map worker process failed to start")

    def _call(self, *msg):
        if self._proc.poll() is not None:
            raise RuntimeError(f"map worker process exited (code {self._proc.returncode})")
        try:
            self._send.send(msg)
            status, value = self._recv.recv()
        except (EOFError, OSError) as exc:
            raise RuntimeError(f"map worker process exited ({exc})") from exc
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
        if self._proc.poll() is None:
            try:
                self._send.send(None)
            except OSError:
                pass
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for c in (self._send, self._recv):
            if not c.closed:
                c.close()


def uses_field(cfg) -> bool:
    """Whether the joint refinement reads or trains the field (then it cannot leave the process
    that owns the field)."""
    return float(cfg.loss_depth_weight) > 0 or int(cfg.joint_field_steps) > 0



if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
