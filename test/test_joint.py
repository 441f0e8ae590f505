"""Joint SirenPose window refinement on a synthetic window built from exact geometry.

The scene: static points around a centre, and a rigid cluster of points moving at constant
velocity, seen by keyframes on an arc (a curved camera path: with a straight constant-velocity
camera the depth of a constant-velocity point is not observable from a monocular track at all).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sirenpose_ros.core import geometry as geo
from sirenpose_ros.core import losses as L
from sirenpose_ros.core.joint import (JointWindowRefiner, WindowSnapshot, apply_to_window,
                                      snapshot_from_window, warm_start)

FOCAL = 500.0


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small tensors: one thread (OpenMP hand-offs are very slow on a loaded 2-core CPU)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
VEL = np.array([0.8, 0.0, 0.3])     # dynamic cluster velocity, scene units / s


def look_at(c: np.ndarray, target: np.ndarray) -> np.ndarray:
    """T_cw of an optical-frame camera at c looking at target (y down)."""
    z = target - c
    z /= np.linalg.norm(z)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R_wc = np.stack([x, y, z], 1)
    return geo.invert(geo.make_T(R_wc, c))


def synthetic_window(seed=0, F=6, n_static=150, n_dyn=20, noise_px=0.3, pose_noise=(0.03, 0.01),
                     lm_noise=0.05, edge_rigidity=0.9):
    """(truth dict, perturbed WindowSnapshot)."""
    rng = np.random.default_rng(seed)
    centre = np.array([0.0, 0.0, 4.0])
    times = np.cumsum(np.r_[0.0, rng.uniform(0.18, 0.24, F - 1)])
    theta = 0.6 * times                                   # arc around the centre, 0.6 rad/s
    cams = np.stack([centre + 4.0 * np.array([-np.sin(a), 0.05 * np.sin(3 * a), -np.cos(a)])
                     for a in theta])
    T_cw = np.stack([look_at(c, centre) for c in cams])
    X = centre + rng.uniform([-1.5, -1.0, -1.0], [1.5, 1.0, 1.0], (n_static, 3))
    q0 = np.array([-0.5, 0.3, 3.2])
    local = rng.uniform(-0.25, 0.25, (n_dyn, 3))
    P = q0 + local[None] + times[:, None, None] * VEL          # (F, D, 3)

    def proj(T, pts):
        c = pts @ T[:3, :3].T + T[:3, 3]
        return c[:, :2] / c[:, 2:3]

    fr, lm, xn = [], [], []
    for f in range(F):
        x = proj(T_cw[f], X) + rng.normal(0, noise_px / FOCAL, (n_static, 2))
        fr.append(np.full(n_static, f))
        lm.append(np.arange(n_static))
        xn.append(x)
    dxn = np.stack([proj(T_cw[f], P[f]) for f in range(F)]) + rng.normal(0, noise_px / FOCAL, (F, n_dyn, 2))
    # Edges: each dynamic point to its 3 nearest neighbours in the cluster.
    d2 = ((local[:, None] - local[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    nn = np.argsort(d2, 1)[:, :3]
    e = np.sort(np.stack([np.repeat(np.arange(n_dyn), 3), nn.ravel()], 1), 1)
    e = np.unique(e, axis=0)
    T_pert = T_cw.copy()
    for f in range(2, F):
        xi = np.r_[rng.normal(0, pose_noise[0], 3), rng.normal(0, pose_noise[1], 3)]
        T_pert[f] = geo.se3_exp(xi) @ T_cw[f]
    snap = WindowSnapshot(
        times_s=times, T_cw=T_pert, n_fixed=2, X=X + rng.normal(0, lm_noise, X.shape),
        obs_frame=np.concatenate(fr), obs_lm=np.concatenate(lm), obs_xn=np.concatenate(xn),
        obs_weight=np.ones(F * n_static), dyn_xn=dxn, dyn_valid=np.ones((F, n_dyn), bool),
        dyn_weight=np.full(n_dyn, 0.9), edges=e, edge_rigidity=np.full(e.shape[0], edge_rigidity),
        focal_px=FOCAL, dyn_depth0=np.full((F, n_dyn), np.nan))
    return dict(T_cw=T_cw, X=X, P=P, times=times), snap


def pose_error(T_a, T_b) -> float:
    """Mean camera-centre distance."""
    return float(np.mean(np.linalg.norm(geo.invert(T_a)[:, :3, 3] - geo.invert(T_b)[:, :3, 3], axis=1)))


# Every term on (the product's defaults switch the field coupling off: see the parameters).
ALL_TERMS = {"loss_depth_weight": 1.0, "joint_field_steps": 2}


def refiner(**over):
    """The refiner with every term on, overridden by ``over``."""
    return JointWindowRefiner({**ALL_TERMS, **over})


def test_refinement_reduces_pose_and_landmark_error_and_recovers_velocity():
    truth, snap = synthetic_window(seed=1)
    res = refiner().refine(snap)
    e_pose0, e_pose1 = pose_error(snap.T_cw, truth["T_cw"]), pose_error(res.T_cw, truth["T_cw"])
    e_lm0 = np.mean(np.linalg.norm(snap.X - truth["X"], axis=1))
    e_lm1 = np.mean(np.linalg.norm(res.X - truth["X"], axis=1))
    assert e_pose1 < 0.3 * e_pose0, (e_pose0, e_pose1)
    assert e_lm1 < 0.3 * e_lm0, (e_lm0, e_lm1)
    # Velocity of the dynamic cluster at the newest keyframe, world frame.
    v = np.nanmedian(res.velocity, axis=0)
    assert np.linalg.norm(v - VEL) < 0.15 * np.linalg.norm(VEL), v
    assert np.all(res.velocity_frame == snap.n_frames - 1)
    e_dyn = np.mean(np.linalg.norm(res.P - truth["P"], axis=-1))
    assert e_dyn < 0.1, e_dyn
    assert res.losses["reprojection"] < res.losses_initial["reprojection"]
    assert set(res.losses) >= {"reprojection", "velocity", "acceleration", "camera_motion", "rigidity"}


def test_physics_terms_off_do_worse_on_dynamic_positions():
    truth, snap = synthetic_window(seed=2)
    full = refiner().refine(snap)
    ablated = refiner(loss_velocity_weight=0.0, loss_acceleration_weight=0.0,
                      loss_rigidity_weight=0.0).refine(snap)
    no_rigid = refiner(loss_rigidity_weight=0.0).refine(snap)

    def err(r):
        return float(np.mean(np.linalg.norm(r.P - truth["P"], axis=-1)))

    assert "velocity" not in ablated.losses and "rigidity" not in ablated.losses
    # Without physics a monocular track's depth is not observable: it stays near its guess.
    assert err(ablated) > 4.0 * err(full), (err(ablated), err(full))
    assert err(no_rigid) > err(full), (err(no_rigid), err(full))


def test_analytic_gradient_matches_autograd_of_the_loss():
    """The Gauss-Newton gradient is the gradient of the SirenPose loss (same residuals)."""
    truth, snap = synthetic_window(seed=3, n_static=30, n_dyn=6)
    snap.obs_weight = np.random.default_rng(0).uniform(0.2, 1.0, snap.obs_weight.size)
    ref = refiner(loss_robust="cauchy")
    pb = ref._problem(snap, None)
    T = torch.as_tensor(snap.T_cw)
    X = torch.as_tensor(snap.X)
    P = torch.as_tensor(truth["P"]) + 0.05 * torch.randn(truth["P"].shape, dtype=torch.float64)
    inv_F = 1.0 / L.camera_points(T, X, pb.o_frame[:pb.n_static], pb.o_pt[:pb.n_static])[:, 2] * 1.1
    lin = ref._linearise(pb, T, X, P, inv_F)
    d = torch.zeros((pb.free.numel(), 6), dtype=torch.float64, requires_grad=True)
    Xv = X.clone().requires_grad_(True)
    Pv = P.clone().requires_grad_(True)
    Tn = torch.cat([T[:2], L.se3_exp(d) @ T[2:]])
    cost, terms = ref._cost(pb, Tn, Xv, Pv, inv_F)
    assert {"depth", "velocity", "acceleration", "camera_motion", "rigidity"} <= set(terms)
    cost.backward()
    torch.testing.assert_close(lin["g_p"], d.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lin["g_l"], Xv.grad, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(lin["g_q"], Pv.grad.permute(1, 0, 2), rtol=1e-6, atol=1e-8)


def test_field_is_coupled_and_trained():
    """With a fitted field the depth term enters the geometry, and the field steps (geometry
    fixed) move the field towards the refined depths: of the dynamic keypoints too, which the
    field had only seen as background."""
    from sirenpose_ros.core.field import DepthFieldEstimator
    truth, snap = synthetic_window(seed=4, n_dyn=12)
    snap.uv_scale = np.array([2 * FOCAL / 639, 2 * FOCAL / 479])
    snap.uv_offset = np.array([2 * 320 / 639 - 1, 2 * 240 / 479 - 1])
    field = DepthFieldEstimator({"field_device": "cpu", "field_steps_per_frame": 15,
                                 "field_lr": 1e-3, "field_time_horizon_s": 4.0})
    for f in range(snap.n_frames):          # fed with the static landmarks' true depths
        z = geo.transform(truth["T_cw"][f], truth["X"])[:, 2]
        uv = snap.obs_xn[snap.obs_frame == f] * snap.uv_scale + snap.uv_offset
        field.update(snap.times_s[f], uv, 1.0 / z, np.ones_like(z))
    assert field.fitted
    F = snap.n_frames

    def field_error(points, xn):
        z = geo.transform(truth["T_cw"][F - 1], points)[:, 2]
        return np.mean(np.abs(np.log(field.query(snap.times_s[-1], xn * snap.uv_scale + snap.uv_offset) * z)))

    xn_static = snap.obs_xn[snap.obs_frame == F - 1]
    before = field_error(truth["P"][F - 1], snap.dyn_xn[F - 1]), field_error(truth["X"], xn_static)
    res = refiner(joint_alternations=2, joint_field_steps=10).refine(snap, field)
    after = field_error(truth["P"][F - 1], snap.dyn_xn[F - 1]), field_error(truth["X"], xn_static)
    assert "depth" in res.losses and "field_depth" in res.losses and "field_smoothness" in res.losses
    assert after[0] < 0.5 * before[0], (before, after)
    assert after[1] < before[1], (before, after)
    assert pose_error(res.T_cw, truth["T_cw"]) < 0.2 * pose_error(snap.T_cw, truth["T_cw"])


def test_snapshot_from_window_state_and_write_back():
    from sirenpose_ros.core.config import make_config
    from sirenpose_ros.core.camera import CameraModel
    from sirenpose_ros.core.graph import GraphResult
    from sirenpose_ros.core.window import Keyframe, SlidingWindowEstimator
    truth, snap = synthetic_window(seed=5, n_static=60, n_dyn=10)
    F, Ls, D = snap.n_frames, 60, 10
    win = SlidingWindowEstimator(make_config())
    lm_track_ids = np.arange(Ls) * 2            # even ids: landmarks; odd ids: dynamic tracks
    dyn_track_ids = 1001 + 2 * np.arange(D)
    for f in range(F):
        ids = np.concatenate([lm_track_ids, dyn_track_ids])
        xn = np.concatenate([snap.obs_xn[snap.obs_frame == f], snap.dyn_xn[f]])
        if f == 0:                             # track 1003 starts late: seen in F - 1 keyframes
            keep = ids != 1003
            ids, xn = ids[keep], xn[keep]
        o = np.argsort(ids)
        win.keyframes.append(Keyframe(int(snap.times_s[f] * 1e9), snap.T_cw[f].copy(), ids[o], xn[o]))
    win.lm_ids = lm_track_ids.copy()
    win.lm_X = snap.X.copy()
    win.lm_p = np.full(Ls, 0.2)
    cur = win.keyframes[-1]
    p = np.where(cur.ids > 1000, 0.9, 0.1)
    dyn_nodes = np.flatnonzero(cur.ids > 1000)
    edges = np.stack([dyn_nodes[:-1], dyn_nodes[1:]], 1)
    edges = np.concatenate([edges, [[0, dyn_nodes[0]]]])        # a static-dynamic edge: dropped
    g = GraphResult(p, p, edges, np.full(edges.shape[0], 0.8))
    cam = CameraModel.pinhole(640, 480, FOCAL, FOCAL, 320.0, 240.0)
    # Two fixed: the synthetic window perturbs the keyframes from the third on.
    s = snapshot_from_window(win, g, cur.ids, cam, make_config({"joint_fixed_keyframes": 2}))
    assert s.n_frames == F and s.X.shape == (Ls, 3) and s.obs_frame.size == F * Ls
    np.testing.assert_allclose(s.obs_weight, 0.8)
    assert s.n_dynamic == D and np.array_equal(s.dyn_ids, dyn_track_ids)
    assert s.dyn_valid.sum() == F * D - 1 and not s.dyn_valid[0, 1]
    np.testing.assert_allclose(s.dyn_xn[1:], snap.dyn_xn[1:])
    assert s.edges.shape == (D - 1, 2) and np.all(s.edges[:, 1] == s.edges[:, 0] + 1)
    assert s.n_fixed == 2 and s.focal_px == FOCAL
    # uv mapping equals the field's pixel normalisation.
    px = snap.obs_xn[:5] * FOCAL + [320.0, 240.0]
    np.testing.assert_allclose(snap.obs_xn[:5] * s.uv_scale + s.uv_offset,
                               2 * px / [639, 479] - 1, atol=1e-12)
    res = refiner().refine(s)
    assert apply_to_window(win, s, res)
    assert pose_error(np.stack([k.T_cw for k in win.keyframes]), truth["T_cw"]) < \
        0.3 * pose_error(snap.T_cw, truth["T_cw"])
    np.testing.assert_allclose(win.lm_X, res.X)
    win.keyframes.pop(0)                        # the window moved on: nothing is written
    assert not apply_to_window(win, s, res)


def test_warm_start_from_previous_refinement():
    """The next keyframe's refinement starts its dynamic depths from the previous result: with
    a small budget it then does much better than from the flat guess."""
    truth, snap = synthetic_window(seed=7, F=7)
    snap.kf_stamps_ns = (snap.times_s * 1e9).astype(np.int64)
    snap.dyn_ids = np.arange(snap.n_dynamic) + 100
    prev = refiner().refine(snap)
    # The window slides by one keyframe: drop the oldest (the new newest is not needed here).
    sl = slice(1, None)
    keep = snap.obs_frame >= 1
    nxt = WindowSnapshot(
        times_s=snap.times_s[sl], T_cw=prev.T_cw[sl].copy(), n_fixed=2, X=prev.X.copy(),
        obs_frame=snap.obs_frame[keep] - 1, obs_lm=snap.obs_lm[keep], obs_xn=snap.obs_xn[keep],
        obs_weight=snap.obs_weight[keep], dyn_xn=snap.dyn_xn[sl, ::-1], dyn_valid=snap.dyn_valid[sl],
        dyn_weight=snap.dyn_weight, edges=snap.n_dynamic - 1 - snap.edges,
        edge_rigidity=snap.edge_rigidity, focal_px=FOCAL, kf_stamps_ns=snap.kf_stamps_ns[sl],
        dyn_ids=snap.dyn_ids[::-1].copy())            # tracks in another order: matched by id
    assert warm_start(nxt, snap, prev) == nxt.dyn_valid.sum()
    P_true = truth["P"][sl, ::-1]
    budget = dict(joint_warmup_iterations=0, joint_iterations=1)
    warm = refiner(**budget).refine(nxt)
    nxt.dyn_depth0 = None
    cold = refiner(**budget).refine(nxt)

    def err(r):
        return float(np.mean(np.linalg.norm(r.P - P_true, axis=-1)))

    assert err(warm) < 0.1 and err(warm) < 0.6 * err(cold), (err(warm), err(cold))


@pytest.mark.parametrize("F", [2, 3])
def test_short_windows_run(F):
    truth, snap = synthetic_window(seed=6, F=F, n_static=40, n_dyn=5)
    res = refiner().refine(snap)
    assert np.all(np.isfinite(res.T_cw)) and np.all(np.isfinite(res.X))
    assert res.losses["reprojection"] <= res.losses_initial["reprojection"]
