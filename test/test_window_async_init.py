"""Two-view initialisation in the map stage (window_async_init): the pose call hands the analysis
over instead of running it, the map stage builds the same initial map the frame-after-frame path
builds, and the frames after it are tracked on that map."""
import numpy as np

from sirenpose_ros.core import geometry as geo
from sirenpose_ros.core import graph, window
from sirenpose_ros.core.types import TrackingState

from test_window import DT_NS, F, _cfg, _observe, _sim3_errors, _trajectory, _world

N = 30


def _frame(est, g, T, X, i):
    ids, x = _observe(T, X)
    pe = est.estimate_pose(i * DT_NS, ids, x, g.prior(ids), F)
    gr = g.dynamic_probability(ids, x * F, pe.residual_px)
    return pe, est.update_map(gr.p_dynamic)


def _sync_run(Ts, X):
    cfg = _cfg()
    est, g = window.SlidingWindowEstimator(cfg), graph.KeypointGraph(cfg)
    out = []
    for i, T in enumerate(Ts):
        out.append(_frame(est, g, T, X, i)[1])
        if "initialised" in out[-1].message:
            snapshot = (est.lm_ids.copy(), est.lm_X.copy(), [kf.T_cw.copy() for kf in est.keyframes])
    return out, snapshot


def _async_run(Ts, X, lag):
    """The map stage takes a job ``lag`` frames after it was offered (0: before the next frame)."""
    cfg = _cfg()
    est = window.SlidingWindowEstimator(cfg, async_mapping=True)
    g = graph.KeypointGraph(cfg)
    assert est.init_async
    out, running, init_map = [], None, None
    for i, T in enumerate(Ts):
        pe, wr = _frame(est, g, T, X, i)
        wr.message = wr.message or pe.message      # a frame without a pose says why in pe only
        out.append(wr)
        if running is None:
            running = est.begin_map_job()
            if running is not None:
                running.run()
                due = i + lag
        if running is not None and i >= due:
            if est.commit_map_job(running) and isinstance(running, window.InitJob):
                init_map = (i, running.init_args[1], est.lm_ids.copy(), est.lm_X.copy(),
                            [kf.T_cw.copy() for kf in est.keyframes])
            running = None
    return out, init_map


def test_the_map_stage_builds_the_initial_map_of_the_sequential_path():
    Ts, X = _trajectory(N), _world()
    sync, (lm_ids, lm_X, kf_T) = _sync_run(Ts, X)
    i0 = next(i for i, r in enumerate(sync) if "initialised" in r.message)
    res, init_map = _async_run(Ts, X, lag=0)
    # The pose call never analyses the two views: it hands the frame over...
    assert "handed to the map stage" in res[i0].message and res[i0].init_pending
    assert res[i0].state != TrackingState.TRACKING or "rotation-only" in res[i0].message
    # ... and the map stage builds, from that frame, the map the sequential path built inline.
    committed_at, stamp, ids, Xa, kfa = init_map
    assert committed_at == i0 and stamp == i0 * DT_NS
    np.testing.assert_array_equal(ids, lm_ids)
    np.testing.assert_allclose(Xa, lm_X, atol=1e-9)
    assert len(kfa) == len(kf_T) == 2 and all(np.allclose(a, b, atol=1e-9) for a, b in zip(kfa, kf_T))
    # The next frame is tracked on it, says so, and has the sequential path's pose.
    nxt = res[i0 + 1]
    assert nxt.state == TrackingState.TRACKING and "by the map stage from the frame 33 ms before" in nxt.message
    assert not nxt.reset and nxt.is_keyframe           # as the inline initialisation frame
    assert np.allclose(nxt.T_world_cam, sync[i0 + 1].T_world_cam, atol=1e-7)
    assert all(r.state == TrackingState.TRACKING for r in res[i0 + 1:])


def test_frames_go_on_while_the_map_stage_analyses_and_are_tracked_after():
    Ts, X = _trajectory(N), _world()
    sync, _ = _sync_run(Ts, X)
    res, init_map = _async_run(Ts, X, lag=4)
    committed_at, stamp = init_map[:2]
    job_frame = stamp // DT_NS
    assert committed_at == job_frame + 4
    # While the job runs, no second one is started: those frames wait, without a map.
    for r in res[job_frame + 1:committed_at + 1]:
        assert "being analysed" in r.message and not r.init_pending

    # After the commit every frame is tracked, in the world frame of the rotation-only poses
    # before (the first camera's) and, noiseless, exactly up to one similarity, as the
    # sequential path.
    after = list(range(committed_at + 1, N))
    assert all(res[i].state == TrackingState.TRACKING for i in after)
    est = np.stack([res[i].T_world_cam for i in after])
    gt = np.stack([geo.invert(Ts[0]) @ Ts[i] for i in after])
    err, length = _sim3_errors(est, gt)
    err_sync, _ = _sim3_errors(np.stack([sync[i].T_world_cam for i in after]), gt)
    assert err.max() < 1e-3 * length and err.max() <= 2 * err_sync.max() + 1e-9
    assert np.abs(geo.so3_log(np.swapaxes(est[:, :3, :3], 1, 2) @ gt[:, :3, :3])).max() < 1e-6


def test_a_reset_discards_a_running_initialisation_and_a_newer_frame_replaces_a_waiting_one():
    Ts, X = _trajectory(N), _world()
    cfg = _cfg()
    est = window.SlidingWindowEstimator(cfg, async_mapping=True)
    g = graph.KeypointGraph(cfg)
    i = 0
    while not est.init_pending:
        assert i < N
        _frame(est, g, Ts[i], X, i)
        i += 1
    first = i - 1
    _frame(est, g, Ts[i], X, i)           # the map stage has not taken the job yet
    job = est.begin_map_job()
    assert isinstance(job, window.InitJob) and job.init_args[1] == i * DT_NS     # the newest frame
    assert est.begin_map_job() is None and est.map_busy
    job.run()
    assert job.outcome is not None and job.why is None and i > first
    est.reset()
    assert not est.commit_map_job(job)
    assert est.state == TrackingState.INITIALIZING and est.n_landmarks == 0 and not est.map_busy


def test_frame_after_frame_processing_keeps_the_inline_initialisation():
    cfg = _cfg()
    assert not window.SlidingWindowEstimator(cfg).init_async
    assert not window.SlidingWindowEstimator(_cfg(window_async_init=False), async_mapping=True).init_async
    est = window.SlidingWindowEstimator(cfg)
    Ts, X, g = _trajectory(N), _world(), graph.KeypointGraph(cfg)
    res = [_frame(est, g, T, X, i)[1] for i, T in enumerate(Ts)]
    init = next(i for i, r in enumerate(res) if "initialised" in r.message)
    assert "map stage" not in res[init].message and res[init].is_keyframe
    assert not any(r.init_pending for r in res)


def test_an_analysis_that_builds_no_map_says_why_and_the_next_frame_is_analysed():
    """A camera that only turns: every analysis finds no translation to build a map on; the
    frames keep their rotation-only poses and report the map stage's reason."""
    cfg = _cfg()
    est = window.SlidingWindowEstimator(cfg, async_mapping=True)
    g = graph.KeypointGraph(cfg)
    X = _world()
    Ts = [geo.make_T(geo.so3_exp(np.array([0.0, 0.01 * i, 0.0])), np.zeros(3)) for i in range(12)]
    jobs, msgs = 0, []
    for i, T in enumerate(Ts):
        pe, wr = _frame(est, g, T, X, i)
        msgs.append(pe.message)
        job = est.begin_map_job()
        if job is not None:
            job.run()
            assert job.outcome is None and job.why
            assert not est.commit_map_job(job)
            jobs += 1
    assert jobs >= 3 and est.state != TrackingState.TRACKING and est.n_landmarks == 0
    told = [m for m in msgs if "last analysis: " in m]
    assert told and all("rotation-only" in m for m in told)
