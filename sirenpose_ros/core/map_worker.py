"""Keyframe mapping in a child process (ROS-free).

Keyframe triangulation + bundle adjustment (``window.MapJob``) and the SirenPose joint refinement
already work on copies (a MapJob's map copy, a ``WindowSnapshot``), so they run in a child
process (``core/child.py``: why, and how) instead of on a thread that holds the GIL against the
pose stage: the copies go through a pipe, the results come back, and the caller commits them
under its lock exactly as with a thread. The child builds its own estimator and refiner from the
parent's parameter values.

The joint refinement reads the SIREN field (depth consistency), which lives with the dense stage
in the parent. With ``joint_field_steps`` 0 it only reads it, so the request carries a frozen
copy (:class:`~sirenpose_ros.core.field.FrozenField`: the small network's weights and its time
frame); a refinement that trains the field stays in the parent (:func:`refines_in_child`).
"""
from __future__ import annotations

from sirenpose_ros.core.child import ChildStage, ChildWorker, serve

# Attributes of a window's map that a MapJob reads and writes (_sigma2: the tracking noise that
# the triangulation's depth-uncertainty gate reads).
MAP_STATE = ("keyframes", "lm_ids", "lm_X", "lm_p", "_f", "_sigma2", "_kf_landmarks_seen")
# What an InitJob reads: it builds the map from its own arguments.
INIT_STATE = ("_f", "state")


class _MapStage:
    """Child process: an estimator and a refiner for the parent's map jobs and refinements."""

    def __init__(self, cfg):
        from sirenpose_ros.core.joint import JointWindowRefiner
        from sirenpose_ros.core.window import SlidingWindowEstimator
        self.window = SlidingWindowEstimator(cfg)
        self.refiner = JointWindowRefiner(cfg) if cfg.joint_enabled else None

    def map(self, state: dict, keyframe_args: tuple) -> dict:
        for k, v in state.items():
            setattr(self.window, k, v)
        self.window._add_keyframe(*keyframe_args)
        return {k: getattr(self.window, k) for k in MAP_STATE}

    def init(self, state: dict, init_args: tuple):
        for k, v in state.items():
            setattr(self.window, k, v)
        result = self.window.initial_map(*init_args)
        return {k: getattr(self.window, k) for k in MAP_STATE}, result

    def joint(self, snap, frozen):
        return self.refiner.refine(snap, frozen.module() if frozen is not None else None)


def _make_stage(cfg):
    return _MapStage(cfg), None


def refines_in_child(cfg) -> bool:
    """Whether the joint refinement can leave the process that owns the field: it may read the
    field (a frozen copy travels with the request) but not train it."""
    return int(cfg.joint_field_steps) == 0


class MapWorker(ChildStage):
    """A child process that runs MapJobs and joint refinements for one pipeline."""

    def __init__(self, cfg_values: dict, start_timeout_s: float = 120.0):
        self._child = ChildWorker("sirenpose_ros.core.map_worker", dict(cfg_values), "map worker",
                                  start_timeout_s)

    def run_map_job(self, job) -> None:
        """``job.run()`` in the child: the job's map copy receives the result (a MapJob's
        keyframe insertion, or an InitJob's initial map and outcome)."""
        from sirenpose_ros.core.window import InitJob
        if isinstance(job, InitJob):
            state = {k: getattr(job.map, k) for k in INIT_STATE}
            new_map, (job.why, job.outcome) = self._child.call("init", state, job.init_args)
        else:
            state = {k: getattr(job.map, k) for k in MAP_STATE}
            new_map = self._child.call("map", state, job.keyframe_args)
        for k, v in new_map.items():
            setattr(job.map, k, v)

    def refine(self, snap, frozen_field=None):
        """``JointWindowRefiner.refine(snap, field)`` in the child, with ``field`` rebuilt from
        ``frozen_field`` (a :class:`~sirenpose_ros.core.field.FrozenField`, or None)."""
        return self._child.call("joint", snap, frozen_field)


if __name__ == "__main__":
    # The stage of the importable module, not of ``__main__``: what it returns is pickled by
    # class path, and the parent knows these classes as sirenpose_ros.core.map_worker.*.
    from sirenpose_ros.core.map_worker import _make_stage
    serve(_make_stage)
