"""The motion graph's scorer in a child process, one frame behind (ROS-free).

On a scored frame the pose stage spends most of its time in the motion GNN: Delaunay edges, the
pose-free motion fits that make its features, the network (9-16 ms per scored frame on the H100
host's CPU, against 2-3 ms for the pose itself). Its output serves the frames after this one
(the next pose's dynamic weights) more than this one, so with ``pipeline_graph_process`` the
pose stage hands the frame's keypoints to this child and goes on (keyframe decision, next frame);
the scores enter the beliefs when the next frame asks for them (``KeypointGraph.prior``), by
which time the child is normally done. The scorer's state (the GNN's per-track history) lives
here; the graph's beliefs and smoothing stay in the parent.
"""
from __future__ import annotations

from sirenpose_ros.core.child import ChildStage, ChildWorker, serve


class _ScorerStage:
    def __init__(self, cfg):
        from sirenpose_ros.core.graph import make_scorer
        self.cfg = cfg
        self.scorer = make_scorer(cfg)

    def score(self, ids, px, residual_px, previous):
        from sirenpose_ros.core.graph import GraphObservation, delaunay_edges
        edges = delaunay_edges(px, self.cfg.graph_max_edge_px)
        evidence, rigidity = self.scorer(GraphObservation(ids, px, residual_px, edges, previous))
        return edges, evidence, rigidity

    def reset(self) -> None:
        if hasattr(self.scorer, "reset"):
            self.scorer.reset()


def _make_stage(cfg):
    return _ScorerStage(cfg), None


class GraphScorerProcess(ChildStage):
    """The ``graph_scorer`` of the parameters, scoring in a child process: the ``deferred``
    scorer of :class:`~sirenpose_ros.core.graph.KeypointGraph`."""

    def __init__(self, cfg_values: dict, start_timeout_s: float = 120.0):
        self._child = ChildWorker("sirenpose_ros.core.graph_worker", dict(cfg_values),
                                  "motion graph worker", start_timeout_s)

    def submit(self, ids, px, residual_px, previous) -> None:
        self._child.submit("score", ids, px, residual_px, previous)

    def result(self):
        return self._child.result()

    def ready(self) -> bool:
        return self._child.ready()

    def reset(self) -> None:
        self._child.call("reset")


if __name__ == "__main__":
    # The stage of the importable module, not of ``__main__`` (pickled by class path).
    from sirenpose_ros.core.graph_worker import _make_stage
    serve(_make_stage)
