"""Overlapped stages (core/staged.py) and the window's map jobs they rely on."""
import time

import cv2
import numpy as np
import pytest

from sirenpose_ros.core.camera import CameraModel
from sirenpose_ros.core.config import make_config
from sirenpose_ros.core.pipeline import Pipeline
from sirenpose_ros.core.staged import StagedRunner
from sirenpose_ros.core.types import Frame, TrackingState
from sirenpose_ros.eval.metrics import ate
from sirenpose_ros.synth.sequence import render_sequence

N = 40
FAST = {"field_steps_per_frame": 2, "graph_scorer": "geometric"}
THREAD_MAP = {**FAST, "field_enabled": False, "pipeline_map_process": False}


@pytest.fixture(scope="module")
def fast_seq():
    return render_sequence("fast", seed=0, n_frames=N, width=320, height=240)


def _frames(seq):
    K = seq.K
    cam = CameraModel.pinhole(seq.width, seq.height, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
    return [Frame(int(seq.stamps_ns[i]), cv2.cvtColor(seq.rgb[i], cv2.COLOR_RGB2GRAY), seq.rgb[i], cam)
            for i in range(len(seq.rgb))]


def _run_staged(pipe, frames, slow_map_s=0.0, rate_hz=None):
    poses, dense, errors = [], [], []
    if slow_map_s:
        inner = pipe.insert_keyframe

        def slow(ctx):
            time.sleep(slow_map_s)
            inner(ctx)
        pipe.insert_keyframe = slow
    early = []
    runner = StagedRunner(pipe, poses.append, dense.append, lambda stage, exc: errors.append((stage, exc)),
                          on_pose=early.append)
    try:
        for f in frames:
            runner.submit(f)
            if rate_hz:
                time.sleep(1.0 / rate_hz)
        assert runner.drain(timeout=120)
    finally:
        runner.close()
    # Each frame's pose went out once, before its complete result, with the same values.
    assert [p.stamp_ns for p in early] == [r.stamp_ns for r in poses]
    assert all(p.T_world_cam is r.T_world_cam and p.state == r.state for p, r in zip(early, poses))
    return poses, dense, errors, runner


def _ate(results, seq):
    idx = {int(s): i for i, s in enumerate(seq.stamps_ns)}
    got = [(idx[r.stamp_ns], r.T_world_cam) for r in results if r.T_world_cam is not None]
    est = np.stack([T for _, T in got])
    gt = seq.T_world_cam[[i for i, _ in got]]
    return ate(est, gt)["rmse"], len(got)


@pytest.fixture(scope="module")
def sequential(fast_seq):
    """Frame-after-frame processing of the same frames: the reference."""
    pipe = Pipeline(make_config(FAST))
    return [pipe.process(f) for f in _frames(fast_seq)]


@pytest.mark.parametrize("overlap,async_init", [("true", True), ("false", True), ("true", False)])
def test_staged_poses_match_the_sequential_pipeline(fast_seq, sequential, overlap, async_init):
    """Same frames through the overlapped stages: one pose callback per frame, in order, clouds
    for some of them, and the trajectory as accurate as frame-after-frame processing. With the
    initialisation in the map stage (window_async_init) the frames before the map have no
    provisional two-view poses, and the pose stage never spends the analysis's time."""
    frames = _frames(fast_seq)
    ate_seq, n_seq = _ate(sequential, fast_seq)
    cfg = make_config({**FAST, "pipeline_overlap_frontend": overlap, "window_async_init": async_init})
    pipe = Pipeline(cfg, async_mapping=True)
    assert pipe.overlaps_frontend == (overlap == "true")
    # With the initialisation in the map stage, frames come at about a camera's rate: submitted
    # as fast as the pose stage takes them, most of them would pass while the map stage's first
    # analysis runs (on a loaded 2-core machine: up to 0.8 s, measured).
    poses, dense, errors, runner = _run_staged(pipe, frames, rate_hz=30 if async_init else None)
    assert not errors
    assert [r.stamp_ns for r in poses] == [f.stamp_ns for f in frames]
    assert len(dense) >= 5 and all(r.cloud is not None for r in dense if r.depth is not None)
    assert len(dense) + runner.dense_dropped == sum(1 for _ in poses)
    ate_staged, n_staged = _ate(poses, fast_seq)
    assert ate_staged <= max(1.5 * ate_seq, ate_seq + 0.01), (ate_staged, ate_seq)
    init = next(i for i, r in enumerate(poses) if "initialised" in r.message)
    if not async_init:
        assert n_staged >= n_seq - 2
        return
    # The map stage initialised; every frame from then on has a pose, and the pose stage
    # handed the two-view analyses over (its window time stays that of a tracked frame).
    assert "by the map stage" in poses[init].message and init <= N - 10
    assert all(r.T_world_cam is not None for r in poses[init:])
    handed = [r for r in poses[:init] if "map stage" in r.message]
    assert handed and max(r.timings_ms["window"] for r in handed) < 30
    assert any("init" in r.timings_ms for r in poses[:init])


def test_a_slow_map_stage_makes_the_pose_wait_instead_of_drifting(fast_seq, sequential):
    """With bundle adjustment slower than the frame rate, a frame that needs a keyframe while the
    previous one is still being inserted waits for it (map_wait), so keyframes keep coming as
    often as in sequential processing (without the wait: 6 instead of 17 on these frames, and
    the camera outruns its map on longer runs) and the trajectory stays as accurate."""
    frames = _frames(fast_seq)
    # The initialisation inline, as in the sequential run: this is about keyframes (a slow map
    # stage delays an initialisation it runs, and then these short runs have fewer keyframes).
    pipe = Pipeline(make_config({**FAST, "window_async_init": False}), async_mapping=True)
    poses, _, errors, _ = _run_staged(pipe, frames, slow_map_s=0.15)
    assert not errors
    waits = [r.timings_ms["map_wait"] for r in poses if "map_wait" in r.timings_ms]
    assert waits and max(waits) > 50
    n_kf, n_kf_seq = sum(r.is_keyframe for r in poses), sum(r.is_keyframe for r in sequential)
    assert n_kf >= 0.7 * n_kf_seq, (n_kf, n_kf_seq)
    (err, n), (err_seq, _) = _ate(poses, fast_seq), _ate(sequential, fast_seq)
    assert n >= N - 3 and err <= max(1.5 * err_seq, err_seq + 0.01)


def test_a_slow_joint_refinement_does_not_hold_up_keyframe_insertion(fast_seq, sequential):
    """The joint refinement has a thread of its own: one slower than the frame rate delays no
    keyframe insertion (no pose waits for the map), and refinements still run."""
    frames = _frames(fast_seq)
    # The initialisation inline, as in the sequential run (see the slow map stage's test).
    pipe = Pipeline(make_config({**FAST, "window_async_init": False}), async_mapping=True)
    inner, refined = pipe.refine_window, []

    def slow(ctx):
        time.sleep(0.3)
        inner(ctx)
        refined.append(ctx["result"].stamp_ns)
    pipe.refine_window = slow
    poses, _, errors, _ = _run_staged(pipe, frames)
    assert not errors
    assert not any(r.timings_ms.get("map_wait", 0.0) > 100 for r in poses)
    n_kf, n_kf_seq = sum(r.is_keyframe for r in poses), sum(r.is_keyframe for r in sequential)
    assert n_kf >= 0.7 * n_kf_seq, (n_kf, n_kf_seq)
    assert 1 <= len(refined) < n_kf        # the newest keyframe's refinement replaces a waiting one


@pytest.mark.parametrize("failing", ["on_pose", "on_frame"])
def test_a_failing_pose_callback_is_reported_and_keyframes_still_reach_the_map(fast_seq, failing):
    frames = _frames(fast_seq)[:25]
    pipe = Pipeline(make_config(THREAD_MAP), async_mapping=True)
    errors, done = [], []

    def fail(r):
        raise RuntimeError("publisher gone")
    callbacks = {"on_pose": done.append, "on_frame": done.append, failing: fail}
    runner = StagedRunner(pipe, callbacks["on_frame"], None, lambda stage, exc: errors.append(stage),
                          on_pose=callbacks["on_pose"])
    for f in frames:
        runner.submit(f)
    assert runner.drain(timeout=60)
    runner.close()
    assert len(errors) == len(frames) and set(errors) == {"pose"}
    if failing == "on_pose":          # the frame still completes
        assert [r.stamp_ns for r in done] == [f.stamp_ns for f in frames]
    assert len(pipe.window.keyframes) >= 3 and not pipe.window.map_busy


def test_reset_drains_then_restarts(fast_seq):
    frames = _frames(fast_seq)
    pipe = Pipeline(make_config(THREAD_MAP), async_mapping=True)
    poses = []
    runner = StagedRunner(pipe, poses.append)
    for f in frames[:12]:
        runner.submit(f)
    runner.reset()
    assert pipe.window.state == TrackingState.INITIALIZING and not pipe.window.keyframes
    # At about a camera's rate: the new map is built in the map stage (window_async_init) while
    # the frames go on.
    for f in frames[12:]:
        runner.submit(f)
        time.sleep(1 / 30)
    assert runner.drain(timeout=60)
    runner.close()
    assert len(poses) == N
    assert poses[-1].state == TrackingState.TRACKING
    assert any("initialised" in r.message for r in poses[12:])


def test_runner_needs_async_mapping():
    with pytest.raises(ValueError, match="async_mapping"):
        StagedRunner(Pipeline(make_config(FAST)), lambda r: None)


# ----------------------------------------------------------------------------- map jobs
def _window_with_pending_keyframe(seq):
    """A tracking window whose newest keyframe was decided but not inserted yet."""
    pipe = Pipeline(make_config(THREAD_MAP), async_mapping=True)
    for f in _frames(seq):
        r = pipe.track(f)
        ctx = pipe.take_dense_job(r)
        if pipe.window.map_busy and len(pipe.window.keyframes) >= 2:
            return pipe.window
        pipe.map_job(ctx)
    pytest.fail("no keyframe was decided")


def test_map_job_is_not_committed_into_a_map_cleared_meanwhile(fast_seq):
    w = _window_with_pending_keyframe(fast_seq)
    job = w.begin_map_job()
    job.run()
    w.reset()                                  # e.g. tracking lost while BA ran
    assert w.commit_map_job(job) is False
    assert w.n_landmarks == 0 and not w.keyframes and not w.map_busy


def test_map_job_keeps_probabilities_set_by_frames_tracked_meanwhile(fast_seq):
    w = _window_with_pending_keyframe(fast_seq)
    n_kf = len(w.keyframes)
    job = w.begin_map_job()
    ids_before = w.lm_ids.copy()
    w.lm_p[:] = 0.7                            # the pose stage updated them during the job
    job.map.lm_p[:] = 0.1
    job.run()
    assert w.commit_map_job(job)
    k = np.searchsorted(w.lm_ids, ids_before)
    kept = (k < w.lm_ids.size) & (w.lm_ids[np.minimum(k, w.lm_ids.size - 1)] == ids_before)
    assert kept.any() and np.allclose(w.lm_p[k[kept]], 0.7)
    new = ~np.isin(w.lm_ids, ids_before)       # triangulated by the job: the job's values
    assert new.any() and np.allclose(w.lm_p[new], 0.0)
    assert len(w.keyframes) == min(n_kf + 1, w.cfg.window_size_keyframes) and not w.map_busy


def test_keyframe_wanted_while_map_busy_is_reported_not_decided(fast_seq):
    """While a keyframe waits for the map stage no second one is decided (it would be measured
    against a keyframe not in the window); the window says it wants one, and the next pose
    waits for the map stage, at most pipeline_map_wait_s."""
    frames = _frames(fast_seq)
    # (The initialisation inline: no map stage runs here to take it.)
    pipe = Pipeline(make_config({**THREAD_MAP, "pipeline_map_wait_s": 0.05, "pipeline_map_lag_s": 0.0,
                                 "window_async_init": False}), async_mapping=True)
    for i, f in enumerate(frames[:-1]):
        r = pipe.track(f)
        pipe.take_dense_job(r)     # no map stage runs: the first deferred keyframe stays pending
        if pipe.window.keyframe_blocked:
            assert not r.is_keyframe and pipe.window.map_busy
            break
    else:
        pytest.fail("no keyframe was wanted while the map was busy")
    t0 = time.perf_counter()
    r = pipe.track(frames[i + 1])
    assert time.perf_counter() - t0 >= 0.05
    assert r.timings_ms["map_wait"] >= 45


def test_map_worker_process_computes_what_the_thread_computes(fast_seq):
    """The child process runs the same keyframe insertion and joint refinement as the thread
    would: identical map and refined poses (same code, same inputs, one torch thread each)."""
    import copy

    from sirenpose_ros.core.joint import JointWindowRefiner, snapshot_from_window
    from sirenpose_ros.core.map_worker import MapWorker
    w = _window_with_pending_keyframe(fast_seq)
    job = w.begin_map_job()
    local = copy.deepcopy(job.map.__dict__)
    # The depth-consistency term on: the refinement reads the field (second part below).
    cfg = make_config({**dict(w.cfg), "loss_depth_weight": 1.0})
    worker = MapWorker(dict(cfg))
    try:
        worker.run_map_job(job)
        here = type(job)(w, job.keyframe_args)
        here.map.__dict__.update({k: copy.deepcopy(local[k]) for k in ("keyframes", "lm_ids", "lm_X", "lm_p")})
        here.run()
        assert np.array_equal(job.map.lm_ids, here.map.lm_ids)
        assert np.allclose(job.map.lm_X, here.map.lm_X, atol=1e-12)
        assert [kf.stamp_ns for kf in job.map.keyframes] == [kf.stamp_ns for kf in here.map.keyframes]
        assert all(np.allclose(a.T_cw, b.T_cw, atol=1e-12)
                   for a, b in zip(job.map.keyframes, here.map.keyframes))
        assert w.commit_map_job(job)

        class G:             # graph output the snapshot reads: no dynamic tracks
            p_dynamic = np.zeros(len(w.keyframes[-1].ids))
            edges = np.zeros((0, 2), np.int64)
            rigidity = np.zeros(0)
        cam = CameraModel.pinhole(320, 240, fast_seq.K[0, 0], fast_seq.K[1, 1], fast_seq.K[0, 2], fast_seq.K[1, 2])
        snap = snapshot_from_window(w, G(), w.keyframes[-1].ids, cam, w.cfg)
        remote = worker.refine(snap)
        local_res = JointWindowRefiner(cfg).refine(snap, None)
        assert remote.iterations == local_res.iterations
        assert np.allclose(remote.T_cw, local_res.T_cw, atol=1e-9)
        assert np.allclose(remote.X, local_res.X, atol=1e-9)

        # With a fitted field: the child reads a frozen copy of it and computes what the
        # refinement computes here with the field itself.
        from sirenpose_ros.core.field import DepthFieldEstimator, FrozenField
        field = DepthFieldEstimator(w.cfg)
        rng = np.random.default_rng(0)
        for t in snap.times_s:
            uv = rng.uniform(-1, 1, (200, 2)).astype(np.float32)
            field.update(float(t), uv, (0.3 + 0.1 * uv[:, 0]).astype(np.float32),
                         np.ones(200, np.float32))
        assert field.fitted
        remote_f = worker.refine(snap, FrozenField(field))
        local_f = JointWindowRefiner(cfg).refine(snap, field)
        assert local_f.losses.get("depth", 0.0) > 0
        assert np.allclose(remote_f.T_cw, local_f.T_cw, atol=1e-9)
        assert np.allclose(remote_f.X, local_f.X, atol=1e-9)
        assert not np.allclose(local_f.X, local_res.X, atol=1e-6)   # the field took part
    finally:
        worker.close()
    with pytest.raises(RuntimeError, match="exited"):
        worker.refine(snap)
