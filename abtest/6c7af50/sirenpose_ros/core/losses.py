"""The SirenPose loss: one differentiable torch function per term, and their weighted sum.

Every term is written twice over, on purpose: as a *residual* function (what a Gauss-Newton
solver linearises; :mod:`sirenpose_ros.core.joint` uses them) and as the scalar cost built from
it (what autograd, logging and the tests use). All costs follow the least-squares convention
``cost = 1/2 sum_i w_i rho(|r_i|^2)``: for a plain quadratic term (rho(s) = s) the Gauss-Newton
Hessian is ``J^T W J`` and a term weight is an inverse variance (1 / sigma^2) in the residual's
unit. Everything is batched over points, frames and edges; there is no Python loop over points.

Terms (units of the residual r in brackets; "scene units" = the map's monocular scale):
- reprojection [pixels]: r = f (pi(R_cw X + t_cw) - x_obs), pi(x, y, z) = (x/z, y/z), robust
  (Cauchy or Huber of scale ``loss_robust_scale_px``), weighted per observation (1 - p_dynamic).
- depth consistency [log inverse depth ~ relative depth error]: r = log(1/z_landmark) -
  log F(u, v, t), Huber of scale ``loss_depth_scale``.
- velocity consistency [scene units]: change of velocity between consecutive intervals times the
  mean of the two intervals, r_k = (v_k - v_{k-1}) (dt_{k-1} + dt_k) / 2. For equal intervals it
  is the second difference P_{k+1} - 2 P_k + P_{k-1}: the offset from a constant-velocity path.
- acceleration consistency [scene units]: change of acceleration (jerk) scaled back to a
  position, r_k = (a_{k+1} - a_k) tau^2, tau = mean of the three intervals; third difference for
  equal intervals: the offset from a constant-acceleration path.
- camera motion [scene units; radians x ``rot_scale``]: the same two consistencies on the
  camera centre and on its angular velocity (world frame).
- rigidity [scene units]: r_{e,f} = sqrt(p_rigid_e) (l_{e,f} - mean_f l_{e,f}), l = distance of
  the edge's endpoints in frame f: the edge length's spread over the window.
- field temporal smoothness [log inverse depth]: r = log F(u, v, t1) - log F(u, v, t0), robust,
  *mean* over the sampled points (not a sum: the sample count is arbitrary).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sirenpose_ros.core.params import ParamSpec

PARAMS = [
    ParamSpec("loss_reprojection_weight", 1.0,
              "Weight of the robust reprojection term (per pixel^2). 0 switches it off.", 0.0, 1e9),
    ParamSpec("loss_robust_scale_px", 1.0,
              "Scale of the robust reprojection loss (pixels): residuals well above it barely pull.",
              0.05, 100.0),
    ParamSpec("loss_robust", "cauchy",
              "Robust function of the reprojection term: 'cauchy' (redescending: outliers fade "
              "out), 'huber' (outliers count linearly) or 'l2' (not robust).",
              choices=("cauchy", "huber", "l2")),
    ParamSpec("loss_depth_weight", 0.0,
              "Weight of the depth consistency between landmarks and the SIREN field (per squared "
              "log inverse depth, i.e. relative depth error). 0 switches it off. Default 0: with "
              "the field fitted online from few keypoints, coupling it into the window raised ATE "
              "on 3 of 4 dynamic synthetic sequences (docs/accuracy.md); 1.0 is the paper-style "
              "setting to try with denser fields.", 0.0, 1e9),
    ParamSpec("loss_depth_scale", 0.05,
              "Huber threshold of the depth consistency (log inverse depth ~ relative depth error).",
              1e-4, 10.0),
    ParamSpec("loss_velocity_weight", 1000.0,
              "Weight of the velocity consistency of dynamic keypoints (1/sigma^2, sigma = offset "
              "from a constant-velocity path per keyframe interval, scene units). 0 switches it off.",
              0.0, 1e12),
    ParamSpec("loss_acceleration_weight", 1000.0,
              "Weight of the acceleration consistency (jerk) of dynamic keypoints (1/sigma^2, "
              "scene units). 0 switches it off.", 0.0, 1e12),
    ParamSpec("loss_camera_motion_weight", 10.0,
              "Weight of the camera's velocity and acceleration consistency (1/sigma^2 in scene "
              "units; rotation in radians). Small: a hand-held camera does accelerate. 0 = off.",
              0.0, 1e12),
    ParamSpec("loss_rigidity_weight", 1000.0,
              "Weight of the rigidity term: spread of the length of GNN edges called rigid "
              "(1/sigma^2, scene units), times each edge's rigidity probability. 0 = off.",
              0.0, 1e12),
    ParamSpec("loss_field_smoothness_weight", 100.0,
              "Weight of the SIREN field's temporal smoothness (mean over sampled points, so it "
              "compares with the depth term summed over ~this many keypoints). 0 = off.",
              0.0, 1e9),
    ParamSpec("loss_field_smoothness_scale", 0.05,
              "Huber threshold of the field smoothness (log inverse depth).", 1e-4, 10.0),
]

TERMS = ("reprojection", "depth", "velocity", "acceleration", "camera_motion", "rigidity",
         "field_smoothness")


# ---------------------------------------------------------------------------- robust functions
def robust_rho(sq: torch.Tensor, scale: float, kind: str) -> torch.Tensor:
    """rho(s) of squared residual norms ``s`` (unit of ``scale`` squared); rho(s) ~ s near 0.

    cauchy: c^2 log(1 + s / c^2); huber: s below c^2, else 2 c |r| - c^2; l2: s.
    """
    if kind == "l2":
        return sq
    c2 = float(scale) ** 2
    if kind == "cauchy":
        return c2 * torch.log1p(sq / c2)
    if kind == "huber":
        big = sq > c2
        r = torch.sqrt(torch.where(big, sq, torch.ones_like(sq)))   # safe sqrt: no NaN gradient
        return torch.where(big, 2.0 * float(scale) * r - c2, sq)
    raise ValueError(f"unknown robust loss {kind!r}: expected 'cauchy', 'huber' or 'l2'")


def robust_weight(sq: torch.Tensor, scale: float, kind: str) -> torch.Tensor:
    """IRLS weight rho'(s) (1 for a small residual): the Gauss-Newton weight of the residual."""
    if kind == "l2":
        return torch.ones_like(sq)
    c2 = float(scale) ** 2
    if kind == "cauchy":
        return 1.0 / (1.0 + sq / c2)
    if kind == "huber":
        return torch.where(sq > c2, float(scale) / torch.sqrt(sq.clamp_min(c2)), torch.ones_like(sq))
    raise ValueError(f"unknown robust loss {kind!r}: expected 'cauchy', 'huber' or 'l2'")


# ---------------------------------------------------------------------------- SE(3) in torch
def skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) with skew(a) @ b = a x b."""
    z = torch.zeros_like(v[..., 0])
    return torch.stack([torch.stack([z, -v[..., 2], v[..., 1]], -1),
                        torch.stack([v[..., 2], z, -v[..., 0]], -1),
                        torch.stack([-v[..., 1], v[..., 0], z], -1)], -2)


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """Twists (..., 6) = (rho, phi) -> (..., 4, 4); same convention as geometry.se3_exp.

    Differentiable at 0 (Taylor series below 1e-4 rad, where the closed form loses precision).
    """
    rho, phi = xi[..., :3], xi[..., 3:]
    t2 = (phi * phi).sum(-1)
    small = t2 < 1e-8
    t2s = torch.where(small, torch.ones_like(t2), t2)
    th = torch.sqrt(t2s)
    A = torch.where(small, 1.0 - t2 / 6.0, torch.sin(th) / th)
    B = torch.where(small, 0.5 - t2 / 24.0, (1.0 - torch.cos(th)) / t2s)
    C = torch.where(small, 1.0 / 6.0 - t2 / 120.0, (th - torch.sin(th)) / (t2s * th))
    K = skew(phi)
    KK = K @ K
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device)
    R = eye + A[..., None, None] * K + B[..., None, None] * KK
    V = eye + B[..., None, None] * K + C[..., None, None] * KK
    t = (V @ rho.unsqueeze(-1)).squeeze(-1)
    bottom = torch.zeros(xi.shape[:-1] + (1, 4), dtype=xi.dtype, device=xi.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([torch.cat([R, t.unsqueeze(-1)], -1), bottom], -2)


def invert(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms (..., 4, 4)."""
    Rt = T[..., :3, :3].transpose(-1, -2)
    t = -(Rt @ T[..., :3, 3:4])
    bottom = T[..., 3:4, :]
    return torch.cat([torch.cat([Rt, t], -1), bottom], -2)


def as_matrices(T: torch.Tensor) -> torch.Tensor:
    """Poses given as (F, 4, 4) matrices or (F, 6) twists -> (F, 4, 4)."""
    return se3_exp(T) if T.shape[-1] == 6 and T.dim() == 2 else T


# ---------------------------------------------------------------------------- reprojection
def camera_points(T_cw: torch.Tensor, X_w: torch.Tensor, obs_frame: torch.Tensor,
                  obs_lm: torch.Tensor) -> torch.Tensor:
    """(M, 3) camera-frame coordinates of landmark ``obs_lm`` in keyframe ``obs_frame``."""
    T = as_matrices(T_cw)
    R, t = T[obs_frame, :3, :3], T[obs_frame, :3, 3]
    return (R @ X_w[obs_lm].unsqueeze(-1)).squeeze(-1) + t


def reprojection_residuals(T_cw, X_w, obs_frame, obs_lm, obs_xn, focal_px: float = 1.0,
                           min_depth: float = 1e-6) -> torch.Tensor:
    """(M, 2) reprojection residual in pixels (``focal_px`` times normalized units).

    A point at or behind the camera is projected from ``min_depth``: a huge residual that the
    robust loss then all but ignores (cleaner than a discontinuous constant).
    """
    Xc = camera_points(T_cw, X_w, obs_frame, obs_lm)
    z = Xc[:, 2:3].clamp_min(min_depth)
    return (Xc[:, :2] / z - obs_xn) * focal_px


def reprojection(T_cw, X_w, obs_frame, obs_lm, obs_xn, weight, robust: str = "cauchy",
                 scale: float = 1.0, focal_px: float = 1.0) -> torch.Tensor:
    """Robust reprojection cost 1/2 sum_i w_i rho(|r_i|^2), r in pixels, ``scale`` in pixels.

    ``T_cw`` (F, 4, 4) world->camera, or (F, 6) twists of it; ``X_w`` (L, 3); ``obs_frame``,
    ``obs_lm`` (M,) indices; ``obs_xn`` (M, 2) normalized coordinates; ``weight`` (M,), for
    static keypoints 1 - p_dynamic.
    """
    r = reprojection_residuals(T_cw, X_w, obs_frame, obs_lm, obs_xn, focal_px)
    return 0.5 * (weight * robust_rho((r * r).sum(-1), scale, robust)).sum()


# ---------------------------------------------------------------------------- depth consistency
def depth_residuals(inv_depth_landmark: torch.Tensor, inv_depth_field: torch.Tensor):
    """(M,) log inverse-depth difference and a (M,) mask of usable pairs (both finite and > 0)."""
    ok = (torch.isfinite(inv_depth_landmark) & torch.isfinite(inv_depth_field)
          & (inv_depth_landmark > 0) & (inv_depth_field > 0))
    one = torch.ones_like(inv_depth_landmark)
    a = torch.where(ok, inv_depth_landmark, one)       # safe log: no NaN in the gradient
    b = torch.where(ok, inv_depth_field, one)
    return torch.log(a) - torch.log(b), ok


def depth_consistency(inv_depth_landmark, inv_depth_field, weight, scale: float = 0.05,
                      robust: str = "huber") -> torch.Tensor:
    """1/2 sum_i w_i rho((log rho_lm,i - log F_i)^2): landmark inverse depth in its keyframe vs
    the field's value at the observation. Log residuals are relative depth errors, so the term
    means the same at any range and does not depend on the monocular scale. Pairs with a
    non-finite or non-positive value are ignored."""
    r, ok = depth_residuals(inv_depth_landmark, inv_depth_field)
    w = torch.where(ok, weight, torch.zeros_like(weight))
    return 0.5 * (w * robust_rho(r * r, scale, robust)).sum()


# ---------------------------------------------------------------------------- motion consistency
def consistency_residuals(vel: torch.Tensor, dt: torch.Tensor):
    """Velocity- and acceleration-consistency residuals from interval velocities.

    ``vel`` (F-1, ...) velocity over each interval (unit / s), ``dt`` (F-1,) seconds. Returns
    r_vel (F-2, ...) = (v_k - v_{k-1}) tau_k, tau_k = (dt_{k-1} + dt_k) / 2, and
    r_acc (F-3, ...) = (a_k - a_{k-1}) tau'^2 with a_k = (v_k - v_{k-1}) / tau_k and tau' the mean
    of the three intervals involved. Both in the unit of position (see module doc).
    """
    shape = (-1,) + (1,) * (vel.dim() - 1)
    tau = (0.5 * (dt[1:] + dt[:-1])).reshape(shape)
    dv = vel[1:] - vel[:-1]
    r_vel = dv * tau
    acc = dv / tau
    tau3 = ((dt[2:] + dt[1:-1] + dt[:-2]) / 3.0).reshape(shape)
    r_acc = (acc[1:] - acc[:-1]) * tau3 * tau3
    return r_vel, r_acc


def dynamic_motion_residuals(P: torch.Tensor, valid: torch.Tensor, dt: torch.Tensor):
    """Consistency residuals of per-frame positions ``P`` (F, D, 3) with ``valid`` (F, D).

    Returns (r_vel (F-2, D, 3), m_vel (F-2, D), r_acc (F-3, D, 3), m_acc (F-3, D)): a residual
    counts (mask True) only when every frame it spans is valid. Invalid positions may hold
    anything (NaN included): they are replaced before use.
    """
    valid = valid.bool()
    Pz = torch.where(valid.unsqueeze(-1), P, torch.zeros_like(P))
    vel = (Pz[1:] - Pz[:-1]) / dt.reshape(-1, 1, 1)
    r_vel, r_acc = consistency_residuals(vel, dt)
    m_int = valid[1:] & valid[:-1]
    m_vel = m_int[1:] & m_int[:-1]
    m_acc = m_vel[1:] & m_vel[:-1]
    return r_vel, m_vel, r_acc, m_acc


def dynamic_motion(P: torch.Tensor, valid: torch.Tensor, dt: torch.Tensor):
    """(velocity consistency, acceleration consistency) costs of dynamic keypoints, each
    1/2 sum |r|^2 over the valid residuals (scene units^2). ``P`` (F, D, 3) world positions,
    ``valid`` (F, D), ``dt`` (F-1,) seconds between consecutive keyframes."""
    r_vel, m_vel, r_acc, m_acc = dynamic_motion_residuals(P, valid, dt)
    vel_cost = 0.5 * ((r_vel * r_vel).sum(-1) * m_vel).sum()
    acc_cost = 0.5 * ((r_acc * r_acc).sum(-1) * m_acc).sum()
    return vel_cost, acc_cost


def camera_motion_residuals(T_wc: torch.Tensor, dt: torch.Tensor, rot_scale: float = 1.0):
    """(r_vel (F-2, ..., 6), r_acc (F-3, ..., 6)): consistency residuals of the camera centre
    (3, scene units) and of its angular velocity (3, radians x ``rot_scale``), world frame.
    ``T_wc`` (F, ..., 4, 4): time first, any batch dimensions after it.

    The angular velocity over an interval is vee(asym(R_{k+1} R_k^T)) / dt_k, i.e. sin(angle) x
    axis / dt: smooth everywhere (no log singularity at zero rotation), and within 2 % of the
    angle up to 20 degrees between keyframes.
    """
    c = T_wc[..., :3, 3]
    R = T_wc[..., :3, :3]
    dR = R[1:] @ R[:-1].transpose(-1, -2)
    w = 0.5 * torch.stack([dR[..., 2, 1] - dR[..., 1, 2], dR[..., 0, 2] - dR[..., 2, 0],
                           dR[..., 1, 0] - dR[..., 0, 1]], -1)
    d = dt.reshape((-1,) + (1,) * (c.dim() - 1))
    vel = torch.cat([(c[1:] - c[:-1]) / d, float(rot_scale) * w / d], -1)
    return consistency_residuals(vel, dt)


def camera_motion(T_wc: torch.Tensor, dt: torch.Tensor, rot_scale: float = 1.0):
    """(velocity consistency, acceleration consistency) costs of the camera trajectory ``T_wc``
    (F, 4, 4) camera->world, each 1/2 sum |r|^2 (translation and rotation together)."""
    r_vel, r_acc = camera_motion_residuals(T_wc, dt, rot_scale)
    return 0.5 * (r_vel * r_vel).sum(), 0.5 * (r_acc * r_acc).sum()


# ---------------------------------------------------------------------------- rigidity
def edge_lengths(P: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """(F, E) distance between the endpoints of each edge in each frame (smooth at 0)."""
    d = P[:, edges[:, 0]] - P[:, edges[:, 1]]
    return torch.sqrt((d * d).sum(-1) + 1e-18)


def rigidity_residuals(P: torch.Tensor, edges: torch.Tensor, edge_rigid_prob: torch.Tensor,
                       valid: torch.Tensor | None = None):
    """(F, E) residual sqrt(p_e) (l_{e,f} - mean over valid f of l_{e,f}) and its (F, E) mask."""
    F = P.shape[0]
    if valid is None:
        valid = torch.ones(P.shape[:2], dtype=torch.bool, device=P.device)
    valid = valid.bool()
    m = valid[:, edges[:, 0]] & valid[:, edges[:, 1]]                  # (F, E)
    Pz = torch.where(valid.unsqueeze(-1), P, torch.zeros_like(P))
    L = edge_lengths(Pz, edges) * m
    n = m.sum(0).clamp_min(1)
    mean = L.sum(0) / n
    r = (L - mean) * m * torch.sqrt(edge_rigid_prob.clamp(0.0, 1.0))
    # An edge seen in a single frame has no spread: mask it (its residual is 0 anyway).
    m = m & (n > 1)
    return r.reshape(F, -1), m


def rigidity(P: torch.Tensor, edges: torch.Tensor, edge_rigid_prob: torch.Tensor,
             valid: torch.Tensor | None = None) -> torch.Tensor:
    """1/2 sum_e p_e sum_f (l_{e,f} - mean_f l_{e,f})^2 (scene units^2): edges the GNN calls
    rigid keep their length over the window. ``P`` (F, D, 3), ``edges`` (E, 2) into D,
    ``edge_rigid_prob`` (E,) in [0, 1], ``valid`` (F, D) (default: all)."""
    r, m = rigidity_residuals(P, edges, edge_rigid_prob, valid)
    return 0.5 * (r * r * m).sum()


# ---------------------------------------------------------------------------- field smoothness
def log_inverse_depth(field, x: torch.Tensor) -> torch.Tensor:
    """log F(x) for a SirenField (its ``log_inv_depth``) or any callable returning F(x) > 0."""
    fn = getattr(field, "log_inv_depth", None)
    return fn(x) if fn is not None else torch.log(field(x))


def field_temporal_smoothness(field, uv: torch.Tensor, t0, t1, scale: float = 0.05,
                              robust: str = "huber") -> torch.Tensor:
    """1/2 mean_s rho((log F(u_s, v_s, t1) - log F(u_s, v_s, t0))^2) over sampled points
    ``uv`` (S, 2) in the field's [-1, 1] image coordinates; ``t0``, ``t1`` floats or (S,) in the
    field's time coordinate. Log inverse depth: a relative change, the same at every range."""
    S = uv.shape[0]
    t0 = torch.as_tensor(t0, dtype=uv.dtype, device=uv.device).expand(S)
    t1 = torch.as_tensor(t1, dtype=uv.dtype, device=uv.device).expand(S)
    x = torch.cat([torch.cat([uv, t0.unsqueeze(-1)], -1), torch.cat([uv, t1.unsqueeze(-1)], -1)])
    z = log_inverse_depth(field, x)
    d = z[S:] - z[:S]
    return 0.5 * robust_rho(d * d, scale, robust).mean()


# ---------------------------------------------------------------------------- the sum
def _cfg_get(cfg, name: str):
    if cfg is not None and name in cfg:
        return cfg[name]
    return next(s.default for s in PARAMS if s.name == name)


@dataclass
class SirenPoseLoss:
    """Weighted sum of the terms; a weight of 0 switches a term off (not even evaluated, so it
    contributes no gradient). Each call returns ``(total, terms)`` where ``terms`` maps every
    evaluated term's name (see ``TERMS``) to its *weighted* value as a float."""
    reprojection_weight: float = 1.0
    robust: str = "cauchy"
    robust_scale_px: float = 1.0
    depth_weight: float = 1.0
    depth_scale: float = 0.05
    velocity_weight: float = 1000.0
    acceleration_weight: float = 1000.0
    camera_motion_weight: float = 10.0
    rigidity_weight: float = 1000.0
    field_smoothness_weight: float = 100.0
    field_smoothness_scale: float = 0.05
    rot_scale: float = 1.0

    @staticmethod
    def from_config(cfg=None) -> "SirenPoseLoss":
        g = lambda n: _cfg_get(cfg, "loss_" + n)  # noqa: E731
        return SirenPoseLoss(
            reprojection_weight=float(g("reprojection_weight")), robust=str(g("robust")),
            robust_scale_px=float(g("robust_scale_px")), depth_weight=float(g("depth_weight")),
            depth_scale=float(g("depth_scale")), velocity_weight=float(g("velocity_weight")),
            acceleration_weight=float(g("acceleration_weight")),
            camera_motion_weight=float(g("camera_motion_weight")),
            rigidity_weight=float(g("rigidity_weight")),
            field_smoothness_weight=float(g("field_smoothness_weight")),
            field_smoothness_scale=float(g("field_smoothness_scale")))

    def __call__(self, *, T_cw=None, X=None, obs_frame=None, obs_lm=None, obs_xn=None,
                 obs_weight=None, focal_px: float = 1.0,
                 inv_depth_landmark=None, inv_depth_field=None, depth_weight=None,
                 P=None, valid=None, dt=None, T_wc=None, edges=None, edge_rigid_prob=None,
                 field=None, field_uv=None, field_t0=None, field_t1=None):
        """Terms whose inputs are given and whose weight is > 0 are summed:
        reprojection (T_cw, X, obs_*), depth (inv_depth_landmark, inv_depth_field, depth_weight),
        velocity / acceleration (P, valid, dt), camera_motion (T_wc or T_cw, dt),
        rigidity (P, edges, edge_rigid_prob, valid), field_smoothness (field, field_uv, t0, t1).
        """
        parts: dict[str, torch.Tensor] = {}
        if self.reprojection_weight > 0 and X is not None and obs_frame is not None:
            parts["reprojection"] = self.reprojection_weight * reprojection(
                T_cw, X, obs_frame, obs_lm, obs_xn, obs_weight, self.robust, self.robust_scale_px,
                focal_px)
        if self.depth_weight > 0 and inv_depth_landmark is not None:
            parts["depth"] = self.depth_weight * depth_consistency(
                inv_depth_landmark, inv_depth_field, depth_weight, self.depth_scale)
        if P is not None and dt is not None and P.shape[0] >= 3 and (
                self.velocity_weight > 0 or self.acceleration_weight > 0):
            vel, acc = dynamic_motion(P, valid, dt)
            if self.velocity_weight > 0:
                parts["velocity"] = self.velocity_weight * vel
            if self.acceleration_weight > 0:
                parts["acceleration"] = self.acceleration_weight * acc
        if self.camera_motion_weight > 0 and dt is not None and (T_wc is not None or T_cw is not None):
            Twc = T_wc if T_wc is not None else invert(as_matrices(T_cw))
            if Twc.shape[0] >= 3:
                vel, acc = camera_motion(Twc, dt, self.rot_scale)
                parts["camera_motion"] = self.camera_motion_weight * (vel + acc)
        if self.rigidity_weight > 0 and P is not None and edges is not None and edges.shape[0]:
            parts["rigidity"] = self.rigidity_weight * rigidity(P, edges, edge_rigid_prob, valid)
        if self.field_smoothness_weight > 0 and field is not None and field_uv is not None:
            parts["field_smoothness"] = self.field_smoothness_weight * field_temporal_smoothness(
                field, field_uv, field_t0, field_t1, self.field_smoothness_scale)
        total = sum(parts.values()) if parts else torch.zeros(())
        return total, {k: float(v.detach()) for k, v in parts.items()}
