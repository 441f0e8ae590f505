"""SirenPose loss terms: each is zero (or minimal) at the truth, positive when perturbed, its
gradient moves the perturbed variable back towards the truth, and a weight of 0 switches it off.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sirenpose_ros.core import geometry as geo
from sirenpose_ros.core import losses as L
from sirenpose_ros.core.field import SirenField
from sirenpose_ros.core.params import validate

DT = torch.float64


@pytest.fixture(autouse=True)
def one_torch_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def grad_step(x_true: torch.Tensor, x: torch.Tensor, loss_fn, frac: float = 0.2) -> tuple[float, float]:
    """Distance to the truth before and after one normalised gradient step of length
    ``frac`` x (that distance) on ``x``: shorter only if -grad points towards the truth."""
    x = x.detach().clone().requires_grad_(True)
    loss_fn(x).backward()
    g = x.grad
    d0 = float((x.detach() - x_true).norm())
    x2 = x.detach() - frac * d0 * g / g.norm()
    return d0, float((x2 - x_true).norm())


# ---------------------------------------------------------------------------- scene
def scene(seed=0, F=4, n=30):
    rng = np.random.default_rng(seed)
    T_cw = np.stack([geo.se3_exp(np.r_[rng.normal(0, 0.2, 3), rng.normal(0, 0.05, 3)]) for _ in range(F)])
    X = rng.uniform([-1, -1, 3], [1, 1, 5], (n, 3))
    fr = np.repeat(np.arange(F), n)
    lm = np.tile(np.arange(n), F)
    Xc = np.einsum("nij,nj->ni", T_cw[fr, :3, :3], X[lm]) + T_cw[fr, :3, 3]
    xn = Xc[:, :2] / Xc[:, 2:]
    t = lambda a, d=DT: torch.as_tensor(a, dtype=d)  # noqa: E731
    return t(T_cw), t(X), torch.as_tensor(fr), torch.as_tensor(lm), t(xn)


# ---------------------------------------------------------------------------- reprojection
def test_reprojection_zero_at_truth_positive_perturbed_and_gradient_on_landmarks():
    T, X, fr, lm, xn = scene()
    w = torch.ones(fr.shape[0], dtype=DT)
    f = lambda Xv: L.reprojection(T, Xv, fr, lm, xn, w, "cauchy", 1.0, 500.0)  # noqa: E731
    assert float(f(X)) < 1e-18
    Xp = X + 0.05 * torch.randn(X.shape, dtype=DT, generator=torch.Generator().manual_seed(1))
    assert float(f(Xp)) > 1.0
    d0, d1 = grad_step(X, Xp, f, frac=0.05)
    assert d1 < d0


def test_reprojection_gradient_on_pose_twists():
    T, X, fr, lm, xn = scene()
    xi_true = torch.as_tensor(geo.se3_log(T.numpy()), dtype=DT)            # (F, 6) twists
    w = torch.ones(fr.shape[0], dtype=DT)
    f = lambda xi: L.reprojection(xi, X, fr, lm, xn, w, "l2", 1.0, 500.0)  # noqa: E731
    assert float(f(xi_true)) < 1e-16
    xi = xi_true.clone()
    xi[2] += torch.tensor([0.02, -0.01, 0.015, 0.004, -0.003, 0.005], dtype=DT)
    assert float(f(xi)) > 1.0
    d0, d1 = grad_step(xi_true, xi, f, frac=0.05)
    assert d1 < d0


def test_reprojection_weights_and_robust_outlier():
    T, X, fr, lm, xn = scene(F=6, n=1)
    xn_bad = xn.clone()
    xn_bad[0] += 30.0 / 500.0                                   # one 30 px outlier
    # A zero weight removes the outlier entirely.
    w = torch.ones(6, dtype=DT)
    w0 = w.clone()
    w0[0] = 0.0
    assert float(L.reprojection(T, X, fr, lm, xn_bad, w0, "l2", 1.0, 500.0)) < 1e-16
    # The point minimising each loss: Cauchy stays near the truth, least squares does not.

    def solve(kind):
        Xv = X.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([Xv], max_iter=30, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            c = L.reprojection(T, Xv, fr, lm, xn_bad, w, kind, 1.0, 500.0)
            c.backward()
            return c
        opt.step(closure)
        return float((Xv.detach() - X).norm())

    e_cauchy, e_l2 = solve("cauchy"), solve("l2")
    assert e_cauchy < 0.2 * e_l2, (e_cauchy, e_l2)
    # Per residual, the Cauchy gradient of a 30 px residual is smaller than that of a 2 px one.
    r = torch.tensor([2.0, 30.0], dtype=DT, requires_grad=True)
    L.robust_rho(r * r, 1.0, "cauchy").sum().backward()
    assert abs(float(r.grad[1])) < abs(float(r.grad[0]))


def test_se3_exp_matches_numpy_and_is_smooth_at_zero():
    rng = np.random.default_rng(0)
    xi = np.r_[rng.normal(size=(5, 6)), np.zeros((1, 6))]
    np.testing.assert_allclose(L.se3_exp(torch.as_tensor(xi)).numpy(), geo.se3_exp(xi), atol=1e-12)
    z = torch.zeros(6, dtype=DT, requires_grad=True)
    L.se3_exp(z).sum().backward()
    assert torch.all(torch.isfinite(z.grad))
    T = torch.as_tensor(geo.se3_exp(xi))
    np.testing.assert_allclose((L.invert(T) @ T).numpy(), np.broadcast_to(np.eye(4), (6, 4, 4)), atol=1e-12)


# ---------------------------------------------------------------------------- depth consistency
def test_depth_consistency_moves_landmark_depth_and_field_towards_each_other():
    T, X, fr, lm, xn = scene(F=1, n=20)
    z_true = L.camera_points(T, X, fr, lm)[:, 2]
    inv_field = 1.0 / z_true                                    # the field agrees with the truth
    w = torch.ones(20, dtype=DT)

    def f(Xv):
        z = L.camera_points(T, Xv, fr, lm)[:, 2]
        return L.depth_consistency(1.0 / z, inv_field, w, 0.05)

    assert float(f(X)) < 1e-20
    # Move the landmarks along their rays (depth off by 10 %): reprojection unchanged, depth not.
    Xp = X * 1.1 - 0.1 * T[0, :3, :3].T @ T[0, :3, 3]           # scale about the camera centre
    assert float(f(Xp)) > 1e-4
    d0, d1 = grad_step(X, Xp, f)
    assert d1 < d0
    # Invalid pairs (NaN, <= 0) are ignored and leave finite gradients.
    bad = inv_field.clone()
    bad[0], bad[1] = float("nan"), -1.0
    Xv = Xp.clone().requires_grad_(True)
    z = L.camera_points(T, Xv, fr, lm)[:, 2]
    c = L.depth_consistency(1.0 / z, bad, w)
    c.backward()
    assert torch.isfinite(c.detach()) and torch.all(torch.isfinite(Xv.grad))
    assert float(Xv.grad[0].norm()) == 0.0 and float(Xv.grad[1].norm()) == 0.0


def test_depth_consistency_gradient_fits_the_field():
    torch.manual_seed(0)
    net = SirenField(hidden=32, layers=2, seed=0)
    uv = torch.rand((64, 2)) * 2 - 1
    x = torch.cat([uv, torch.ones(64, 1)], 1)
    target = 1.0 / (2.0 + uv[:, 0])                              # a tilted plane, inverse depth
    w = torch.ones(64)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def err():
        with torch.no_grad():
            return float(torch.mean(torch.abs(torch.log(net(x)) - torch.log(target))))

    e0 = err()
    for _ in range(30):
        opt.zero_grad()
        L.depth_consistency(target, net(x), w, 0.05).backward()
        opt.step()
    assert err() < 0.5 * e0


# ---------------------------------------------------------------------------- dynamic motion
def trajectory(F=6, D=5, acc=0.0, seed=0):
    rng = np.random.default_rng(seed)
    dt = rng.uniform(0.1, 0.3, F - 1)                           # uneven keyframe intervals
    t = np.r_[0.0, np.cumsum(dt)]
    p0, v = rng.normal(size=(D, 3)), rng.normal(size=(D, 3))
    P = p0 + t[:, None, None] * v + 0.5 * acc * t[:, None, None] ** 2
    return torch.as_tensor(P), torch.as_tensor(dt)


def test_dynamic_motion_terms():
    P, dt = trajectory()
    valid = torch.ones(P.shape[:2], dtype=torch.bool)
    vel, acc = L.dynamic_motion(P, valid, dt)
    assert float(vel) < 1e-24 and float(acc) < 1e-24          # constant velocity: both zero
    Pa, _ = trajectory(acc=2.0)
    vel, acc = L.dynamic_motion(Pa, valid, dt)
    assert float(vel) > 1e-4 and float(acc) < 1e-20            # constant acceleration: no jerk
    Pp = P.clone()
    Pp[3, 2] += torch.tensor([0.05, -0.03, 0.04], dtype=DT)
    for k in (0, 1):                                            # each term on its own
        f = lambda Pv, k=k: L.dynamic_motion(Pv, valid, dt)[k]  # noqa: E731
        assert float(f(Pp)) > 1e-5
        d0, d1 = grad_step(P, Pp, f)
        assert d1 < d0


def test_dynamic_motion_ignores_invalid_entries():
    P, dt = trajectory()
    valid = torch.ones(P.shape[:2], dtype=torch.bool)
    valid[2, 1] = False
    Pn = P.clone()
    Pn[2, 1] = float("nan")
    Pv = Pn.clone().requires_grad_(True)
    vel, acc = L.dynamic_motion(Pv, valid, dt)
    (vel + acc).backward()
    assert float(vel.detach()) < 1e-24 and torch.all(torch.isfinite(Pv.grad))
    # The residual masks: every residual touching frame 2 of track 1 is dropped.
    _, m_vel, _, m_acc = L.dynamic_motion_residuals(P, valid, dt)
    assert not m_vel[:, 1][[0, 1, 2]].any() and m_vel[3, 1] and not m_acc[:, 1].any()


def test_camera_motion_terms():
    F = 6
    dt = torch.full((F - 1,), 0.2, dtype=DT)
    w, v = np.array([0.1, -0.3, 0.2]), np.array([0.5, 0.1, -0.2])
    t = np.arange(F) * 0.2
    T_wc = geo.make_T(geo.so3_exp(t[:, None] * w), t[:, None] * v)   # constant (v, w), world
    T = torch.as_tensor(T_wc)
    vel, acc = L.camera_motion(T, dt)
    assert float(vel) < 1e-24 and float(acc) < 1e-24
    xi_true = torch.as_tensor(geo.se3_log(T_wc))
    xi = xi_true.clone()
    xi[3] += torch.tensor([0.03, -0.02, 0.01, 0.02, 0.0, -0.01], dtype=DT)
    for k in (0, 1):
        f = lambda x, k=k: L.camera_motion(L.se3_exp(x), dt)[k]  # noqa: E731
        assert float(f(xi)) > 1e-6
        d0, d1 = grad_step(xi_true, xi, f, frac=0.05)
        assert d1 < d0


# ---------------------------------------------------------------------------- rigidity
def test_rigidity_term():
    rng = np.random.default_rng(0)
    F, D = 5, 6
    body = rng.normal(size=(D, 3))
    Rs = geo.so3_exp(rng.normal(0, 0.3, (F, 3)))
    P = torch.as_tensor(np.einsum("fij,dj->fdi", Rs, body) + rng.normal(size=(F, 1, 3)))
    edges = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [0, 5]])
    prob = torch.full((6,), 0.9, dtype=DT)
    f = lambda Pv: L.rigidity(Pv, edges, prob)  # noqa: E731
    assert float(f(P)) < 1e-24
    Pp = P.clone()
    Pp[2, 3] += torch.tensor([0.1, 0.05, -0.08], dtype=DT)
    assert float(f(Pp)) > 1e-4
    d0, d1 = grad_step(P, Pp, f)
    assert d1 < d0
    # Probability 0: the edges do not count; invalid frames do not count.
    assert float(L.rigidity(Pp, edges, torch.zeros(6, dtype=DT))) == 0.0
    valid = torch.ones((F, D), dtype=torch.bool)
    valid[2, 3] = False
    assert float(L.rigidity(Pp, edges, prob, valid)) < 1e-24


# ---------------------------------------------------------------------------- field smoothness
def test_field_temporal_smoothness():
    uv = torch.rand((128, 2)) * 2 - 1
    static = lambda x: 1.0 / (2.0 + x[:, 0] + 0.5 * x[:, 1])    # noqa: E731  no time dependence
    assert float(L.field_temporal_smoothness(static, uv, -0.5, 0.5)) == 0.0
    net = SirenField(hidden=32, layers=2, seed=3)
    s0 = float(L.field_temporal_smoothness(net, uv, -0.5, 0.5).detach())
    assert s0 > 0.0
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(20):
        opt.zero_grad()
        L.field_temporal_smoothness(net, uv, -0.5, 0.5).backward()
        opt.step()
    assert float(L.field_temporal_smoothness(net, uv, -0.5, 0.5).detach()) < 0.5 * s0


# ---------------------------------------------------------------------------- the sum
def test_siren_pose_loss_weights_switch_terms_off():
    T, X, fr, lm, xn = scene()
    P, dt = trajectory(F=4, D=3)
    valid = torch.ones((4, 3), dtype=torch.bool)
    edges = torch.tensor([[0, 1], [1, 2]])
    w = torch.ones(fr.shape[0], dtype=DT)
    net = SirenField(hidden=16, layers=2, seed=0)
    uv = torch.rand((16, 2)) * 2 - 1

    def run(loss):
        Xv = (X + 0.01).requires_grad_(True)
        Pv = (P + 0.01 * torch.arange(12, dtype=DT).reshape(4, 3, 1)).requires_grad_(True)
        inv_lm = 1.0 / L.camera_points(T, Xv, fr, lm)[:, 2]
        total, terms = loss(T_cw=T, X=Xv, obs_frame=fr, obs_lm=lm, obs_xn=xn, obs_weight=w,
                            focal_px=500.0, inv_depth_landmark=inv_lm,
                            inv_depth_field=inv_lm.detach() * 1.1, depth_weight=w, P=Pv,
                            valid=valid, dt=dt, edges=edges, edge_rigid_prob=torch.ones(2, dtype=DT),
                            field=net, field_uv=uv, field_t0=0.0, field_t1=0.5)
        if total.requires_grad:
            total.backward()
        return total.detach(), terms, Xv.grad, Pv.grad

    full = L.SirenPoseLoss.from_config({"loss_depth_weight": 1.0})   # every term on
    total, terms, gX, gP = run(full)
    assert set(terms) == set(L.TERMS)
    assert abs(float(total) - sum(terms.values())) < 1e-6 * float(total)
    assert all(v > 0 for v in terms.values()), terms
    # Dynamic terms off: P gets no gradient and those terms are not reported.
    off = L.SirenPoseLoss.from_config({"loss_depth_weight": 1.0,
                                       "loss_velocity_weight": 0.0, "loss_acceleration_weight": 0.0,
                                       "loss_rigidity_weight": 0.0})
    _, terms, gX, gP = run(off)
    assert gP is None and gX is not None
    assert not {"velocity", "acceleration", "rigidity"} & set(terms)
    # Everything off: zero, no gradient anywhere.
    zero = L.SirenPoseLoss.from_config({s.name: 0.0 for s in L.PARAMS if s.name.endswith("_weight")})
    total, terms, gX, gP = run(zero)
    assert float(total) == 0.0 and terms == {} and gX is None and gP is None
    # Weights scale their term linearly.
    two = L.SirenPoseLoss.from_config({"loss_rigidity_weight": 2000.0})
    assert abs(run(two)[1]["rigidity"] - 2.0 * run(full)[1]["rigidity"]) < 1e-9


def test_params_are_prefixed_and_valid():
    names = [s.name for s in L.PARAMS]
    assert all(n.startswith("loss_") for n in names) and len(set(names)) == len(names)
    for n in ("loss_reprojection_weight", "loss_depth_weight", "loss_velocity_weight",
              "loss_acceleration_weight", "loss_camera_motion_weight", "loss_rigidity_weight",
              "loss_field_smoothness_weight", "loss_robust_scale_px"):
        assert n in names
    validate(L.PARAMS, {})
    from sirenpose_ros.core import joint
    assert all(s.name.startswith("joint_") for s in joint.PARAMS)
    validate(joint.PARAMS, {})
