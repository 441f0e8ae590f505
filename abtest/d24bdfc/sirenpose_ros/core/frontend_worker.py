"""The keypoint frontend in a child process (ROS-free).

With the learned frontend on a GPU most of its time is Python issuing ~100 small kernel launches
per frame (XFeat's pre- and post-processing; LighterGlue runs as one CUDA graph): CPU time that
holds the GIL against the pose and dense stages. The frontend's state (the previous frame's
keypoints and descriptors, track ids) is its own, and what crosses the boundary is small (a grey
image in, ``Tracks`` out), so it can run in a child process (``core/child.py``) with its own
CUDA context: the caller's thread only waits on a pipe, without the GIL.
"""
from __future__ import annotations

from types import SimpleNamespace

from sirenpose_ros.core.child import ChildWorker, serve


def _make_handler(cfg_values: dict):
    from sirenpose_ros.core.config import make_config
    from sirenpose_ros.core.pipeline import apply_thread_limits, make_frontend

    cfg = make_config(cfg_values)
    apply_thread_limits(cfg)
    frontend = make_frontend(cfg)

    def handle(msg):
        if msg[0] == "track":
            return frontend.track(msg[1])
        if msg[0] == "reset":
            return frontend.reset()
        raise ValueError(f"unknown request {msg[0]!r}")
    return handle, [getattr(r, "backend", "?") for r in getattr(frontend, "runners", [])]


class FrontendProcess:
    """The frontend chosen by ``pipeline_frontend`` (``make_frontend``), run in a child process
    behind the same interface: ``track(gray) -> Tracks``, ``reset()``, ``runners``."""

    def __init__(self, cfg_values: dict, start_timeout_s: float = 180.0):
        self._child = ChildWorker("sirenpose_ros.core.frontend_worker", dict(cfg_values),
                                  "frontend worker", start_timeout_s)
        self.runners = [SimpleNamespace(backend=b) for b in self._child.info]
        self.pid = self._child.pid

    def track(self, gray):
        return self._child.call("track", gray)

    def reset(self) -> None:
        self._child.call("reset")

    def close(self, timeout: float = 5.0) -> None:
        self._child.close(timeout)


if __name__ == "__main__":
    # The handler of the importable module, not of ``__main__``: what it returns is pickled by
    # class path, and the parent knows these classes as sirenpose_ros.core.frontend_worker.*.
    from sirenpose_ros.core.frontend_worker import _make_handler as handler
    serve(handler)
