"""The keypoint frontend in a child process (ROS-free).

With the learned frontend on a GPU most of its time is Python issuing ~100 small kernel launches
per frame (XFeat's pre- and post-processing; LighterGlue runs as one CUDA graph): CPU time that
holds the GIL against the pose and dense stages. The frontend's state (the previous frame's
keypoints and descriptors, track ids) is its own, and what crosses the boundary is small (a grey
image in, ``Tracks`` out), so it can run in a child process (``core/child.py``) with its own
CUDA context: the caller's thread only waits on a pipe, without the GIL.
"""
from __future__ import annotations

from sirenpose_ros.core.child import ChildStage, ChildWorker, serve


def _make_stage(cfg):
    from sirenpose_ros.core.pipeline import make_frontend
    frontend = make_frontend(cfg)
    return frontend, frontend.describe() if hasattr(frontend, "describe") else []


class FrontendProcess(ChildStage):
    """The frontend chosen by ``pipeline_frontend`` (``make_frontend``), run in a child process
    behind the same interface: ``track(gray) -> Tracks``, ``reset()``, ``describe()``."""

    def __init__(self, cfg_values: dict, start_timeout_s: float = 180.0):
        self._child = ChildWorker("sirenpose_ros.core.frontend_worker", dict(cfg_values),
                                  "frontend worker", start_timeout_s)
        self._description = list(self._child.info)

    def describe(self) -> list[str]:
        return list(self._description)

    def track(self, gray):
        return self._child.call("track", gray)

    def reset(self) -> None:
        self._child.call("reset")


if __name__ == "__main__":
    # The stage of the importable module, not of ``__main__``: what it returns is pickled by
    # class path, and the parent knows these classes as sirenpose_ros.core.frontend_worker.*.
    from sirenpose_ros.core.frontend_worker import _make_stage
    serve(_make_stage)
