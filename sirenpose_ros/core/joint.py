"""Joint sliding-window refinement under the SirenPose loss (DESIGN.md, method step 4).

Variables: keyframe poses T_cw (the oldest ``n_fixed`` held for the gauge and the scale), static
landmarks X, and per-keyframe world positions P of dynamic keypoints (a monocular track gives a
ray per keyframe; where along it the point is, only the physics terms and rigidity decide). The
SIREN depth field couples in through the depth-consistency term.

Each refinement:
0. warm-up: ``joint_warmup_iterations`` Levenberg-Marquardt steps without the rigidity term.
   Edge lengths are not convex in the positions: from a flat depth guess rigidity alone can lock
   a cluster into a mirrored or tilted shape, while the velocity / acceleration terms are
   quadratic in the positions and bring each track near its trajectory first.
Then ``joint_alternations`` rounds of:
1. geometry, field fixed: ``joint_iterations`` Levenberg-Marquardt steps on all geometric terms
   (reprojection of static and dynamic keypoints, depth consistency, velocity / acceleration
   consistency of dynamic keypoints and of the camera, rigidity). Analytic Jacobians (checked
   against autograd of :mod:`losses` in the tests); each step solves poses and landmarks by a
   Schur complement over the landmarks, then the dynamic positions given the pose step
   (block Gauss-Seidel; see :meth:`JointWindowRefiner._solve`).
2. field, geometry fixed: ``joint_field_steps`` warm-started Adam steps of the pipeline's own
   :class:`~sirenpose_ros.core.field.DepthFieldEstimator` network and optimiser on the refined
   keypoint depths (static: weight 1 - p_dynamic; dynamic: ``joint_field_dynamic_weight`` x
   p_dynamic) plus its temporal smoothness between consecutive keyframes.

Velocities of dynamic keypoints (world frame, scene units / s) are finite differences of the
refined positions between their two newest keyframes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field as dc_field

import numpy as np
import torch

from sirenpose_ros.core.ids import lookup
from sirenpose_ros.core import losses as L
from sirenpose_ros.core.params import ParamSpec

PARAMS = [
    ParamSpec("joint_enabled", True,
              "Run the joint SirenPose refinement of the window (poses, landmarks, dynamic "
              "keypoints, field) on each keyframe."),
    ParamSpec("joint_iterations", 3,
              "Levenberg-Marquardt iterations of the geometry per alternation.", 0, 100),
    ParamSpec("joint_warmup_iterations", 3,
              "Levenberg-Marquardt iterations without the rigidity term first (it is not convex "
              "in the positions: from a flat depth guess it can lock a cluster into a wrong "
              "shape). 0: rigidity from the start.", 0, 100),
    ParamSpec("joint_cg_iterations", 4,
              "Conjugate-gradient iterations per Levenberg-Marquardt step that restore the "
              "rigidity coupling between tracks (see _solve).", 0, 1000),
    ParamSpec("joint_torch_threads", 1,
              "Torch CPU threads during the refinement (restored afterwards). These matrices are "
              "small: one thread avoids OpenMP hand-offs that cost 100x on a loaded CPU. "
              "0 leaves torch's setting.", 0, 256),
    ParamSpec("joint_alternations", 1,
              "Rounds of (geometry with the field fixed, then field with the geometry fixed).",
              1, 20),
    ParamSpec("joint_field_steps", 0,
              "Adam steps of the SIREN field per alternation (0: the field is only read). Default "
              "0: measured on the synthetic sequences, these steps raised depth Abs Rel on 'easy' "
              "from 0.14 to 0.31 (docs/accuracy.md); the field's own online fit is better.", 0, 100),
    ParamSpec("joint_field_batch", 512,
              "Keypoint samples per field step (random subset when there are more).", 16, 1000000),
    ParamSpec("joint_field_points", 64,
              "Random points per field step for the temporal smoothness term.", 0, 100000),
    ParamSpec("joint_field_dynamic_weight", 1.0,
              "Weight (times p_dynamic) of dynamic keypoints' refined depths when fitting the "
              "field, so that moving objects get their own depth in the dense output.", 0.0, 100.0),
    ParamSpec("joint_fixed_keyframes", 4,
              "Oldest keyframes held fixed (gauge and monocular scale); as window_fixed_keyframes "
              "(two a short baseline apart let the scale wander).", 1, 10),
    ParamSpec("joint_dynamic_threshold", 0.5,
              "Tracks at or above this dynamic probability (and without a landmark) become "
              "dynamic keypoints with per-keyframe positions.", 0.0, 1.0),
    ParamSpec("joint_min_track_keyframes", 3,
              "Dynamic tracks seen in fewer keyframes are left out (three are needed for a "
              "velocity-consistency residual).", 2, 50),
    ParamSpec("joint_max_dynamic", 200,
              "At most this many dynamic tracks (the longest ones) per refinement.", 0, 10000),
    ParamSpec("joint_seed", 0, "Seed of the field-smoothness sample points.", 0, 2**31 - 1),
]

_DT = torch.float64


@contextlib.contextmanager
def _torch_threads(n: int):
    """Run with ``n`` torch CPU threads (0: unchanged), restoring the previous count."""
    prev = torch.get_num_threads()
    if n > 0 and n != prev:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n > 0 and n != prev:
            torch.set_num_threads(prev)


def _tmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A^T @ B for stacks (N, k, a) x (N, k, b)."""
    return A.transpose(-1, -2) @ B


def _bmv(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A @ x for a stack of matrices (N, a, b) and vectors (N, b): broadcast and sum, several
    times faster on a CPU than batched matmul over thousands of matrix-vector products."""
    return (A * x.unsqueeze(-2)).sum(-1)


def _cfg_get(cfg, name: str):
    if cfg is not None and name in cfg:
        return cfg[name]
    return next(s.default for s in PARAMS if s.name == name)


@dataclass
class WindowSnapshot:
    """What the joint refinement needs from the window, as plain arrays.

    F keyframes, L landmarks, M static observations, D dynamic tracks, E edges among them.
    """
    times_s: np.ndarray          # (F,) keyframe times, seconds, increasing
    T_cw: np.ndarray             # (F, 4, 4) world -> camera
    n_fixed: int                 # oldest keyframes held fixed (>= 1)
    X: np.ndarray                # (L, 3) static landmarks, world
    obs_frame: np.ndarray        # (M,) int keyframe index
    obs_lm: np.ndarray           # (M,) int landmark index into X
    obs_xn: np.ndarray           # (M, 2) normalized coordinates (undistorted x/z, y/z)
    obs_weight: np.ndarray       # (M,) 1 - p_dynamic of the landmark
    dyn_xn: np.ndarray           # (F, D, 2) normalized observation of each dynamic track
    dyn_valid: np.ndarray        # (F, D) bool, observed in that keyframe
    dyn_weight: np.ndarray       # (D,) p_dynamic of each dynamic track
    edges: np.ndarray            # (E, 2) int into D
    edge_rigidity: np.ndarray    # (E,) probability that the edge is rigid
    focal_px: float              # pixels per normalized unit (residuals in pixels)
    uv_scale: np.ndarray = dc_field(default_factory=lambda: np.ones(2))   # field coordinates:
    uv_offset: np.ndarray = dc_field(default_factory=lambda: np.zeros(2))  # uv = xn*scale+offset
    dyn_depth0: np.ndarray | None = None   # (F, D) initial depth guess, NaN = unknown
    lm_ids: np.ndarray | None = None       # (L,) landmark ids (to write results back)
    lm_index: np.ndarray | None = None     # (L,) row of each landmark in window.lm_X
    dyn_ids: np.ndarray | None = None      # (D,) track ids of the dynamic keypoints
    kf_stamps_ns: np.ndarray | None = None  # (F,) keyframe stamps (to write results back)

    @property
    def n_frames(self) -> int:
        return int(self.T_cw.shape[0])

    @property
    def n_dynamic(self) -> int:
        return int(self.dyn_valid.shape[1])


@dataclass
class JointResult:
    T_cw: np.ndarray             # (F, 4, 4) refined
    X: np.ndarray                # (L, 3) refined
    P: np.ndarray                # (F, D, 3) dynamic keypoint positions, world; NaN where unobserved
    velocity: np.ndarray         # (D, 3) world velocity at each track's newest keyframe, NaN unknown
    velocity_frame: np.ndarray   # (D,) keyframe index that velocity refers to (-1 unknown)
    losses_initial: dict         # weighted per-term values before
    losses: dict                 # ... and after
    iterations: int              # accepted LM steps
    timings_ms: dict


# ---------------------------------------------------------------------------- builder
def snapshot_from_window(window, graph_result, ids: np.ndarray, camera, cfg=None) -> WindowSnapshot | None:
    """Build a :class:`WindowSnapshot` from a ``SlidingWindowEstimator`` after ``update_map``.

    ``graph_result``: the frame's ``GraphResult``; ``ids`` (N,) the track ids of its nodes (the
    ids passed to ``KeypointGraph.dynamic_probability``: GraphResult itself carries none);
    ``camera``: the working-resolution ``CameraModel`` (focal length for pixel residuals and the
    field's image coordinates). Returns None while the window holds fewer than two keyframes.

    Reads from the window: ``keyframes`` (each ``stamp_ns``, ``T_cw``, ``ids`` sorted,
    ``xn``), ``lm_ids`` (sorted), ``lm_X``, ``lm_p``.
    """
    g = lambda n: _cfg_get(cfg, n)  # noqa: E731
    kfs = list(window.keyframes)
    F = len(kfs)
    if F < 2:
        return None
    lm_ids, lm_X, lm_p = window.lm_ids, window.lm_X, window.lm_p
    # Static observations: every keyframe's tracks that have a landmark (F <= window size).
    fr, lm, xn = [], [], []
    for i, kf in enumerate(kfs):
        k, hit = lookup(lm_ids, kf.ids)
        fr.append(np.full(int(hit.sum()), i))
        lm.append(k[hit])
        xn.append(kf.xn[hit])
    fr, lm, xn = np.concatenate(fr), np.concatenate(lm), np.concatenate(xn)
    # Only landmarks seen twice are constrained by the window.
    cnt = np.bincount(lm, minlength=lm_ids.size)
    keep = cnt[lm] >= 2
    fr, lm, xn = fr[keep], lm[keep], xn[keep]
    used, lmc = np.unique(lm, return_inverse=True)
    # Dynamic tracks: this frame's tracks flagged dynamic that have no landmark.
    ids = np.asarray(ids, np.int64)
    p = np.asarray(graph_result.p_dynamic, np.float64)
    _, is_lm = lookup(lm_ids, ids)
    cand = np.flatnonzero((p >= float(g("joint_dynamic_threshold"))) & ~is_lm)
    dxn = np.full((F, cand.size, 2), np.nan)
    dval = np.zeros((F, cand.size), bool)
    for i, kf in enumerate(kfs):
        k, hit = lookup(kf.ids, ids[cand])
        dval[i] = hit
        dxn[i, hit] = kf.xn[k[hit]]
    n_obs = dval.sum(0)
    ok = np.flatnonzero(n_obs >= int(g("joint_min_track_keyframes")))
    ok = ok[np.argsort(-n_obs[ok], kind="stable")][: int(g("joint_max_dynamic"))]
    ok.sort()
    nodes = cand[ok]
    node_to_dyn = np.full(ids.size, -1, np.int64)
    node_to_dyn[nodes] = np.arange(nodes.size)
    e = np.asarray(graph_result.edges, np.int64).reshape(-1, 2)
    rig = np.asarray(graph_result.rigidity, np.float64).reshape(-1)
    de = node_to_dyn[e] if e.size else np.zeros((0, 2), np.int64)
    ek = np.all(de >= 0, axis=1) if de.size else np.zeros(0, bool)
    W, H = camera.width, camera.height
    return WindowSnapshot(
        times_s=np.array([kf.stamp_ns for kf in kfs], np.float64) * 1e-9,
        T_cw=np.stack([kf.T_cw for kf in kfs]).astype(np.float64),
        n_fixed=int(min(int(g("joint_fixed_keyframes")), F - 1)),
        X=lm_X[used].astype(np.float64), obs_frame=fr.astype(np.int64),
        obs_lm=lmc.astype(np.int64), obs_xn=xn.astype(np.float64),
        obs_weight=np.clip(1.0 - lm_p[used][lmc], 0.0, 1.0),
        dyn_xn=dxn[:, ok], dyn_valid=dval[:, ok], dyn_weight=p[nodes],
        edges=de[ek], edge_rigidity=rig[ek] if rig.size else np.zeros(0),
        focal_px=0.5 * (camera.fx + camera.fy),
        uv_scale=np.array([2.0 * camera.fx / max(W - 1, 1), 2.0 * camera.fy / max(H - 1, 1)]),
        uv_offset=np.array([2.0 * camera.cx / max(W - 1, 1) - 1.0, 2.0 * camera.cy / max(H - 1, 1) - 1.0]),
        dyn_depth0=np.full((F, ok.size), np.nan), lm_ids=lm_ids[used].copy(), lm_index=used,
        dyn_ids=ids[nodes].copy(), kf_stamps_ns=np.array([kf.stamp_ns for kf in kfs], np.int64))


def apply_to_window(window, snap: WindowSnapshot, result: JointResult) -> bool:
    """Write refined keyframe poses and landmarks back into the window, if it still holds the
    snapshot's keyframes and landmarks (same stamps, same ids at the same rows). Writes
    ``keyframes[i].T_cw`` and ``lm_X[rows]``. Returns False (and writes nothing) otherwise."""
    kfs = window.keyframes
    if len(kfs) != snap.n_frames or snap.lm_index is None:
        return False
    if not np.array_equal([kf.stamp_ns for kf in kfs], snap.kf_stamps_ns):
        return False
    rows = snap.lm_index
    if rows.size and (rows.max() >= window.lm_ids.size
                      or not np.array_equal(window.lm_ids[rows], snap.lm_ids)):
        return False
    for i, kf in enumerate(kfs):
        kf.T_cw = result.T_cw[i].copy()
    window.lm_X[rows] = result.X
    return True


def warm_start(snap: WindowSnapshot, prev: WindowSnapshot, prev_result: JointResult) -> int:
    """Fill ``snap.dyn_depth0`` from the previous refinement: the depth, in each keyframe the
    two snapshots share (same stamp), of each dynamic track they share (same id). From a warm
    start the dynamic positions need a step or two instead of a full warm-up. Returns how many
    entries were filled."""
    if prev.dyn_ids is None or snap.dyn_ids is None or prev.kf_stamps_ns is None:
        return 0
    if snap.dyn_depth0 is None:
        snap.dyn_depth0 = np.full(snap.dyn_valid.shape, np.nan)
    fo = np.argsort(prev.kf_stamps_ns)
    fk, fhit = lookup(prev.kf_stamps_ns[fo], snap.kf_stamps_ns)
    do = np.argsort(prev.dyn_ids)
    dk, dhit = lookup(prev.dyn_ids[do], snap.dyn_ids)
    if not fhit.any() or not dhit.any():
        return 0
    f_new, f_old = np.flatnonzero(fhit), fo[fk[fhit]]
    d_new, d_old = np.flatnonzero(dhit), do[dk[dhit]]
    P = prev_result.P[f_old][:, d_old]                                    # (f, d, 3) world
    T = snap.T_cw[f_new]
    z = np.einsum("fj,fdj->fd", T[:, 2, :3], P) + T[:, 2, 3][:, None]
    ok = np.isfinite(z) & (z > 0)
    block = snap.dyn_depth0[np.ix_(f_new, d_new)]
    block[ok] = z[ok]
    snap.dyn_depth0[np.ix_(f_new, d_new)] = block
    return int(ok.sum())


# ---------------------------------------------------------------------------- refinement
@dataclass
class _Problem:
    """Tensors of one refinement that do not change during it."""
    F: int
    D: int
    L: int
    free: torch.Tensor          # (Fp,) free keyframe indices
    slot: torch.Tensor          # (F,) slot of each keyframe among the free ones, -1 fixed
    dt: torch.Tensor            # (F-1,)
    # all reprojection observations: static first, then dynamic (point index L + f * D + d)
    o_frame: torch.Tensor
    o_pt: torch.Tensor
    o_xn: torch.Tensor
    o_w: torch.Tensor
    n_static: int
    dyn_f: torch.Tensor         # (K,) frame of each dynamic observation
    dyn_d: torch.Tensor         # (K,) track of each dynamic observation
    valid: torch.Tensor         # (F, D) bool
    edges: torch.Tensor         # (E, 2)
    rig: torch.Tensor           # (E,)
    C_vel: torch.Tensor         # (F-2, F) velocity-consistency operator on one coordinate
    C_acc: torch.Tensor         # (F-3, F)
    focal: float
    tn: torch.Tensor | None     # (F,) field time of each keyframe (NaN outside the field)
    uv_st: torch.Tensor         # (M, 2) field image coordinates of static observations
    uv_dyn: torch.Tensor        # (K, 2) ... of dynamic observations


class JointWindowRefiner:
    """Joint SirenPose refinement of a :class:`WindowSnapshot` (see module doc)."""

    def __init__(self, cfg=None):
        g = lambda n: _cfg_get(cfg, n)  # noqa: E731
        self.enabled = bool(g("joint_enabled"))
        self.iterations = int(g("joint_iterations"))
        self.alternations = int(g("joint_alternations"))
        self.field_steps = int(g("joint_field_steps"))
        self.field_points = int(g("joint_field_points"))
        self.field_batch = int(g("joint_field_batch"))
        self.field_dynamic_weight = float(g("joint_field_dynamic_weight"))
        self.warmup = int(g("joint_warmup_iterations"))
        self.cg_iterations = int(g("joint_cg_iterations"))
        self.threads = int(g("joint_torch_threads"))
        self.loss = L.SirenPoseLoss.from_config(cfg)
        self._gen = torch.Generator().manual_seed(int(g("joint_seed")))

    # ------------------------------------------------------------------ public
    def refine(self, snap: WindowSnapshot, field=None) -> JointResult:
        """Run the alternation on ``snap``; ``field`` is the pipeline's DepthFieldEstimator (or
        None): read for depth consistency, and trained in place by the field steps."""
        with _torch_threads(self.threads):
            return self._refine(snap, field)

    def _refine(self, snap: WindowSnapshot, field) -> JointResult:
        t_start = time.perf_counter()
        pb = self._problem(snap, field)
        T = torch.as_tensor(snap.T_cw, dtype=_DT).clone()
        X = torch.as_tensor(snap.X, dtype=_DT).clone()
        use_field = pb.tn is not None
        inv_F = self._field_at_static(field, pb) if use_field else None
        P = self._initial_dynamic(snap, pb, T, X, field)
        _, initial = self._cost(pb, T, X, P, inv_F)
        ms_geo = ms_field = 0.0
        accepted = 0
        lam = 1e-6
        field_terms: dict = {}
        t0 = time.perf_counter()
        if self.warmup > 0 and pb.D and pb.edges.shape[0] and self.loss.rigidity_weight > 0:
            # Warm-up without rigidity (see module doc): looser stop, it only has to get near.
            lo = dataclasses.replace(self.loss, rigidity_weight=0.0)
            T, X, P, lam, n = self._levenberg_marquardt(pb, T, X, P, inv_F, lam, self.warmup, lo,
                                                        tol=1e-3)
            accepted += n
        ms_geo += (time.perf_counter() - t0) * 1e3
        for _ in range(max(self.alternations, 1)):
            t0 = time.perf_counter()
            T, X, P, lam, n = self._levenberg_marquardt(pb, T, X, P, inv_F, lam, self.iterations,
                                                        self.loss)
            accepted += n
            ms_geo += (time.perf_counter() - t0) * 1e3
            if use_field and self.field_steps > 0:
                t0 = time.perf_counter()
                field_terms = self._field_steps(pb, field, snap, T, X, P)
                inv_F = self._field_at_static(field, pb)
                ms_field += (time.perf_counter() - t0) * 1e3
        _, final = self._cost(pb, T, X, P, inv_F)
        final.update(field_terms)
        Pn = P.numpy().copy()
        Pn[~snap.dyn_valid] = np.nan
        vel, vframe = self._velocities(Pn, snap.dyn_valid, snap.times_s)
        return JointResult(T.numpy(), X.numpy(), Pn, vel, vframe, initial, final, accepted,
                           {"geometry": ms_geo, "field": ms_field,
                            "total": (time.perf_counter() - t_start) * 1e3})

    # ------------------------------------------------------------------ set-up
    def _problem(self, snap: WindowSnapshot, field) -> _Problem:
        F, D, Lm = snap.n_frames, snap.n_dynamic, int(snap.X.shape[0])
        n_fixed = int(min(max(snap.n_fixed, 1), F))
        free = torch.arange(n_fixed, F)
        slot = torch.full((F,), -1, dtype=torch.long)
        slot[free] = torch.arange(free.numel())
        times = torch.as_tensor(snap.times_s, dtype=_DT)
        dt = (times[1:] - times[:-1]).clamp_min(1e-6)
        valid = torch.as_tensor(snap.dyn_valid, dtype=torch.bool)
        dyn_f, dyn_d = torch.nonzero(valid, as_tuple=True)
        dyn_xn = torch.as_tensor(np.nan_to_num(snap.dyn_xn), dtype=_DT)[dyn_f, dyn_d]
        o_frame = torch.cat([torch.as_tensor(snap.obs_frame, dtype=torch.long), dyn_f])
        o_pt = torch.cat([torch.as_tensor(snap.obs_lm, dtype=torch.long), Lm + dyn_f * D + dyn_d])
        o_xn = torch.cat([torch.as_tensor(snap.obs_xn, dtype=_DT), dyn_xn])
        # A dynamic keypoint's observation is a measurement of that keypoint: full weight.
        o_w = torch.cat([torch.as_tensor(snap.obs_weight, dtype=_DT),
                         torch.ones(dyn_f.numel(), dtype=_DT)])
        # The consistency residuals are linear in the positions: their operator on one
        # coordinate is what the residual function gives on the identity.
        if F >= 3:
            eye = torch.eye(F, dtype=_DT)
            C_vel, C_acc = L.consistency_residuals((eye[1:] - eye[:-1]) / dt[:, None], dt)
        else:
            C_vel, C_acc = torch.zeros((0, F), dtype=_DT), torch.zeros((0, F), dtype=_DT)
        tn = None
        if (field is not None and getattr(field, "fitted", False) and field.newest_time is not None
                and self.loss.depth_weight > 0):
            tn = 1.0 - 2.0 * (float(field.newest_time) - times) / float(field.horizon_s)
            tn = torch.where((tn >= -1.0) & (tn <= 1.0 + 1e-6), tn.clamp(max=1.0),
                             torch.full_like(tn, float("nan")))
            if not torch.isfinite(tn).any():
                tn = None
        sc = torch.as_tensor(snap.uv_scale, dtype=_DT)
        of = torch.as_tensor(snap.uv_offset, dtype=_DT)
        return _Problem(
            F=F, D=D, L=Lm, free=free, slot=slot, dt=dt, o_frame=o_frame, o_pt=o_pt, o_xn=o_xn,
            o_w=o_w, n_static=int(snap.obs_frame.size), dyn_f=dyn_f, dyn_d=dyn_d, valid=valid,
            edges=torch.as_tensor(snap.edges, dtype=torch.long).reshape(-1, 2),
            rig=torch.as_tensor(snap.edge_rigidity, dtype=_DT).reshape(-1),
            C_vel=C_vel, C_acc=C_acc, focal=float(snap.focal_px), tn=tn,
            uv_st=(o_xn[: snap.obs_frame.size] * sc + of).clamp(-1.0, 1.0),
            uv_dyn=(dyn_xn * sc + of).clamp(-1.0, 1.0))

    def _initial_dynamic(self, snap, pb: _Problem, T, X, field) -> torch.Tensor:
        """Each dynamic observation starts on its ray at a guessed depth: the snapshot's, else
        the field's (mostly the background's: a start, not an answer), else the median depth of
        the keyframe's landmarks."""
        F, D = pb.F, pb.D
        depth = torch.full((F, D), float("nan"), dtype=_DT)
        if snap.dyn_depth0 is not None:
            depth = torch.as_tensor(snap.dyn_depth0, dtype=_DT).clone()
        if pb.tn is not None and pb.dyn_f.numel():
            tn = pb.tn[pb.dyn_f]
            ok = torch.isfinite(tn)
            x = torch.cat([pb.uv_dyn, tn.unsqueeze(-1)], -1)[ok]
            with torch.no_grad():
                inv = field.net(x.to(field.device, torch.float32)).to("cpu", _DT)
            fill = torch.full((pb.dyn_f.numel(),), float("nan"), dtype=_DT)
            fill[ok] = 1.0 / inv
            cur = depth[pb.dyn_f, pb.dyn_d]
            depth[pb.dyn_f, pb.dyn_d] = torch.where(torch.isfinite(cur), cur, fill)
        # Median landmark depth per keyframe as the last resort.
        z = L.camera_points(T, X, torch.as_tensor(snap.obs_frame), torch.as_tensor(snap.obs_lm))[:, 2]
        med = torch.ones(F, dtype=_DT)
        fr = torch.as_tensor(snap.obs_frame)
        for f in range(F):                      # F <= window size
            zf = z[(fr == f) & (z > 0)]
            if zf.numel():
                med[f] = zf.median()
        depth = torch.where(torch.isfinite(depth) & (depth > 0), depth, med[:, None].expand(F, D))
        xn = torch.as_tensor(np.nan_to_num(snap.dyn_xn), dtype=_DT)
        Pc = torch.cat([xn, torch.ones((F, D, 1), dtype=_DT)], -1) * depth.unsqueeze(-1)
        T_wc = L.invert(T)
        return (T_wc[:, None, :3, :3] @ Pc.unsqueeze(-1)).squeeze(-1) + T_wc[:, None, :3, 3]

    def _field_at_static(self, field, pb: _Problem) -> torch.Tensor:
        """(M,) field inverse depth at each static observation (NaN outside the field's time)."""
        tn = pb.tn[pb.o_frame[: pb.n_static]]
        ok = torch.isfinite(tn)
        out = torch.full((pb.n_static,), float("nan"), dtype=_DT)
        if ok.any():
            x = torch.cat([pb.uv_st, tn.unsqueeze(-1)], -1)[ok]
            with torch.no_grad():
                out[ok] = field.net(x.to(field.device, torch.float32)).to("cpu", _DT)
        return out

    # ------------------------------------------------------------------ cost
    def _cost(self, pb: _Problem, T, X, P, inv_F, lo: L.SirenPoseLoss | None = None):
        """Geometric part of the SirenPose loss (field fixed): total tensor and per-term dict."""
        lo = self.loss if lo is None else lo
        pts = torch.cat([X, P.reshape(-1, 3)])
        kw = {}
        if inv_F is not None:
            z = L.camera_points(T, X, pb.o_frame[: pb.n_static], pb.o_pt[: pb.n_static])[:, 2]
            kw = dict(inv_depth_landmark=1.0 / z, inv_depth_field=inv_F,
                      depth_weight=pb.o_w[: pb.n_static])
        return lo(T_cw=T, X=pts, obs_frame=pb.o_frame, obs_lm=pb.o_pt, obs_xn=pb.o_xn,
                         obs_weight=pb.o_w, focal_px=pb.focal, P=P if pb.D else None,
                         valid=pb.valid, dt=pb.dt, edges=pb.edges if pb.D else None,
                         edge_rigid_prob=pb.rig, **kw)

    # ------------------------------------------------------------------ Gauss-Newton
    def _linearise(self, pb: _Problem, T, X, P, inv_F, lo: L.SirenPoseLoss | None = None):
        """Gradient and Gauss-Newton Hessian blocks of the geometric cost at (T, X, P).

        Pose increments are left perturbations T_cw <- exp(d) T_cw of the free keyframes.
        Returns a dict: g_p (Fp, 6), g_l (L, 3), g_q (D, F, 3), H_pp (6Fp, 6Fp), H_ll (L, 3, 3),
        H_qq (D, 3F, 3F) own-track blocks, H_pl (Fp, L, 6, 3), H_pq_obs (K, 6, 3) the
        pose-position block of each dynamic observation with slot_dyn (K,) its pose slot, and with
        rigidity edges rig_C (E, F, F), rig_u (E, F, 3): the cross-track blocks -K_e (see below).
        """
        lo = self.loss if lo is None else lo
        F, D, Lm = pb.F, pb.D, pb.L
        Fp = int(pb.free.numel())
        pts = torch.cat([X, P.reshape(-1, 3)])
        R, t = T[pb.o_frame, :3, :3], T[pb.o_frame, :3, 3]
        Xc = (R @ pts[pb.o_pt].unsqueeze(-1)).squeeze(-1) + t
        z_raw = Xc[:, 2]
        front = z_raw > 1e-6
        z = z_raw.clamp_min(1e-6)
        f = pb.focal
        r = (Xc[:, :2] / z[:, None] - pb.o_xn) * f                                 # (N, 2)
        N = r.shape[0]
        Jc = torch.zeros((N, 2, 3), dtype=_DT)                                      # d r / d Xc
        Jc[:, 0, 0] = f / z
        Jc[:, 1, 1] = f / z
        Jc[:, 0, 2] = -f * Xc[:, 0] / (z * z)
        Jc[:, 1, 2] = -f * Xc[:, 1] / (z * z)
        Jc = Jc * front[:, None, None]
        w = (lo.reprojection_weight * pb.o_w
             * L.robust_weight((r * r).sum(-1), lo.robust_scale_px, lo.robust))
        # Depth consistency on static observations: r_d = -log z - log F, dr/dXc = (0, 0, -1/z).
        if inv_F is not None and lo.depth_weight > 0:
            M = pb.n_static
            rd, ok = L.depth_residuals(1.0 / z_raw[:M], inv_F)
            ok = ok & front[:M]
            wd = (lo.depth_weight * pb.o_w[:M] * ok
                  * L.robust_weight(rd * rd, lo.depth_scale, "huber"))
            Jd = torch.zeros((M, 1, 3), dtype=_DT)
            Jd[:, 0, 2] = -1.0 / z[:M]
            pad = torch.zeros((N - M, 1, 3), dtype=_DT)
            Jc = torch.cat([Jc, torch.cat([Jd, pad])], 1)                           # (N, 3, 3)
            r = torch.cat([r, torch.cat([rd, torch.zeros(N - M, dtype=_DT)])[:, None]], 1)
            w = torch.stack([w, w, torch.cat([wd, torch.zeros(N - M, dtype=_DT)])], 1)
        else:
            w = torch.stack([w, w], 1)
        Jx = Jc @ R                                                                 # d r / d point
        # row a of -Jc [Xc]x is Xc x Jc[a]: d r / d pose for a left increment (rho, phi)
        Jp = torch.cat([Jc, torch.linalg.cross(Xc[:, None, :].expand_as(Jc), Jc)], -1)
        WJx = Jx * w[:, :, None]
        WJp = Jp * w[:, :, None]
        Hxx = _tmul(WJx, Jx)                                                        # (N, 3, 3)
        gx = (WJx * r[:, :, None]).sum(1)                                           # (N, 3)
        ns = pb.n_static
        out = {}
        out["H_ll"] = torch.zeros((Lm, 3, 3), dtype=_DT).index_add_(0, pb.o_pt[:ns], Hxx[:ns])
        out["g_l"] = torch.zeros((Lm, 3), dtype=_DT).index_add_(0, pb.o_pt[:ns], gx[:ns])

        # Dynamic tracks: reprojection blocks on the diagonal, motion and rigidity over frames.
        H_qq = torch.zeros((D, F, 3, F, 3), dtype=_DT)
        g_q = torch.zeros((D, F, 3), dtype=_DT)
        if D:
            blocks = torch.zeros((D, F, 3, 3), dtype=_DT)
            blocks.index_put_((pb.dyn_d, pb.dyn_f), Hxx[ns:], accumulate=True)
            ar = torch.arange(F)
            H_qq[:, ar, :, ar, :] += blocks.permute(1, 0, 2, 3)
            g_q.index_put_((pb.dyn_d, pb.dyn_f), gx[ns:], accumulate=True)
            if F >= 3 and (lo.velocity_weight > 0 or lo.acceleration_weight > 0):
                r_vel, m_vel, r_acc, m_acc = L.dynamic_motion_residuals(P, pb.valid, pb.dt)
                Hm = torch.zeros((D, F, F), dtype=_DT)
                gm = torch.zeros((F, D, 3), dtype=_DT)
                for wgt, C, m, rr in ((lo.velocity_weight, pb.C_vel, m_vel, r_vel),
                                      (lo.acceleration_weight, pb.C_acc, m_acc, r_acc)):
                    if wgt > 0 and C.shape[0]:
                        mf = m.to(_DT)
                        CC = (C[:, :, None] * C[:, None, :]).reshape(C.shape[0], F * F)
                        Hm += wgt * (mf.T @ CC).reshape(D, F, F)
                        gm += wgt * (C.T @ (rr * mf[..., None]).reshape(C.shape[0], -1)).reshape(F, D, 3)
                H_qq += Hm[:, :, None, :, None] * torch.eye(3, dtype=_DT)[None, None, :, None, :]
                g_q += gm.permute(1, 0, 2)
            if lo.rigidity_weight > 0 and pb.edges.shape[0]:
                e = pb.edges
                rr, m = L.rigidity_residuals(P, e, pb.rig, pb.valid)                # (F, E)
                mf = m.to(_DT)
                d = P[:, e[:, 0]] - P[:, e[:, 1]]
                u = d / torch.sqrt((d * d).sum(-1, keepdim=True) + 1e-18)            # (F, E, 3)
                n = mf.sum(0).clamp_min(1.0)
                # Per edge, the Gauss-Newton block of d(r)/d(P_i) is K_e = w p_e (C (x) u u^T)
                # over frames, C = diag(m) - m m^T / n (centring over the valid frames); the
                # block of P_j is the same and the (i, j) block is -K_e.
                Ce = (torch.diag_embed(mf.T) - mf.T[:, :, None] * mf.T[:, None, :] / n[:, None, None])
                Ce = Ce * (lo.rigidity_weight * pb.rig)[:, None, None]             # (E, F, F)
                ue = u.permute(1, 0, 2)                                              # (E, F, 3)
                K = Ce[:, :, None, :, None] * ue[:, :, :, None, None] * ue[:, None, None, :, :]
                H_qq.index_add_(0, e[:, 0], K)
                H_qq.index_add_(0, e[:, 1], K)
                out["rig_C"], out["rig_u"] = Ce, ue
                out["rig_K"] = K.reshape(-1, 3 * F, 3 * F)
                ge = (lo.rigidity_weight * torch.sqrt(pb.rig.clamp(0, 1))[None, :, None]
                      * (rr * mf)[..., None] * u)                                   # (F, E, 3)
                g_q.index_add_(0, e[:, 0], ge.permute(1, 0, 2))
                g_q.index_add_(0, e[:, 1], -ge.permute(1, 0, 2))
        out["H_qq"] = H_qq.reshape(D, 3 * F, 3 * F)
        out["g_q"] = g_q

        # Poses (free keyframes only).
        sl = pb.slot[pb.o_frame]
        fo = sl >= 0
        st = fo.clone()
        st[ns:] = False                         # static observations of free keyframes
        dy = fo.clone()
        dy[:ns] = False                         # dynamic observations of free keyframes
        # The pose system (for the solver) takes the static observations only: a dynamic
        # keypoint's own free position absorbs its observation, which alone carries no pose
        # information (see _solve). The gradient g_p is the full one.
        H_pp = torch.zeros((Fp, 6, 6), dtype=_DT).index_add_(0, sl[st], _tmul(WJp[st], Jp[st]))
        gJ = (WJp * r[:, :, None]).sum(1)                                           # (N, 6)
        g_ps = torch.zeros((Fp, 6), dtype=_DT).index_add_(0, sl[st], gJ[st])
        g_p = g_ps.index_add(0, sl[dy], gJ[dy])
        Hpx = _tmul(WJp, Jx)                                                        # (N, 6, 3)
        H_pl = torch.zeros((Fp, Lm, 6, 3), dtype=_DT)
        H_pl.index_put_((sl[st], pb.o_pt[st]), Hpx[st], accumulate=True)
        # Pose-dynamic coupling, one 6x3 block per dynamic observation (see _solve).
        out["H_pq_obs"] = Hpx[ns:]                                                  # (K, 6, 3)
        out["slot_dyn"] = sl[ns:]
        out["H_pl"] = H_pl
        Hp = torch.block_diag(*H_pp) if Fp else torch.zeros((0, 0), dtype=_DT)
        if Fp and F >= 3 and lo.camera_motion_weight > 0:
            Jcam, rcam = self._camera_jacobian(pb, T)
            Hp = Hp + lo.camera_motion_weight * Jcam.T @ Jcam
            gcam = lo.camera_motion_weight * (Jcam.T @ rcam).reshape(Fp, 6)
            g_p, g_ps = g_p + gcam, g_ps + gcam
        out["H_pp"] = Hp
        out["g_p"] = g_p
        out["g_p_solve"] = g_ps
        return out

    def _camera_jacobian(self, pb: _Problem, T, h: float = 1e-6):
        """Camera-motion residuals (stacked) and their Jacobian w.r.t. the free pose increments,
        by central differences of the loss module's own residual function, all 2 x 6 Fp
        perturbed trajectories in one batched call (a few dozen residuals: cheaper than
        autodiff's per-call overhead, and accurate to ~1e-9 in float64)."""
        free = pb.free
        n = 6 * free.numel()
        d = torch.zeros((2 * n, free.numel(), 6), dtype=_DT)
        ar = torch.arange(n)
        d.view(2 * n, n)[ar, ar] = h
        d.view(2 * n, n)[n + ar, ar] = -h
        Tb = T.unsqueeze(1).repeat(1, 2 * n + 1, 1, 1)                  # (F, B, 4, 4); last: d = 0
        Tb[free, : 2 * n] = L.se3_exp(d.transpose(0, 1)) @ T[free].unsqueeze(1)
        rv, ra = L.camera_motion_residuals(L.invert(Tb), pb.dt, self.loss.rot_scale)
        r = torch.cat([rv.transpose(0, 1).reshape(2 * n + 1, -1),
                       ra.transpose(0, 1).reshape(2 * n + 1, -1)], 1)    # (B, K)
        J = ((r[:n] - r[n: 2 * n]) / (2 * h)).T                        # (K, 6 Fp)
        return J, r[-1]

    @staticmethod
    def _edge_apply(lin: dict, x: torch.Tensor) -> torch.Tensor:
        """K_e x for every edge: x (E, F, 3) -> (E, F, 3), without forming K_e."""
        u = lin["rig_u"]
        s = (u * x).sum(-1)                                                  # (E, F)
        return u * (lin["rig_C"] @ s.unsqueeze(-1))

    def _solve(self, pb: _Problem, lin: dict, lam: float, cg_iterations: int = 4,
               cg_tol: float = 1e-3):
        """One damped Gauss-Newton step; returns increments (d_pose (Fp, 6), d_landmark (L, 3),
        d_dynamic (F, D, 3)).

        Poses and landmarks: exact Schur complement over the landmarks (3x3 blocks), with the
        dynamic positions held (their observations still count for the poses). Dynamic
        positions: then solved given the pose step (one block Gauss-Seidel sweep: a dynamic
        keypoint has its own free position, so it tells the poses little, and the dense
        pose-track coupling would cost more than everything else together). The dynamic system
        is solved by conjugate gradients preconditioned with its own-track blocks, in which the
        rigidity blocks are doubled: an SPD upper bound of the term, since (a - b)^2 <= 2 a^2 +
        2 b^2. On its own that bound would damp the common motion of a rigid cluster like a
        huge LM damping; CG restores the cross-track coupling. Without edges the first iterate
        is exact. The LM acceptance test uses the exact cost either way.
        """
        F, D, Lm = pb.F, pb.D, pb.L
        Fp = int(pb.free.numel())
        eye3 = torch.eye(3, dtype=_DT)

        def damp(H):
            return H + torch.diag_embed(lam * torch.diagonal(H, dim1=-2, dim2=-1) + 1e-9)

        H_ll = lin["H_ll"]
        unseen = torch.diagonal(H_ll, dim1=-2, dim2=-1).sum(-1) == 0
        Hll_inv = torch.linalg.inv(damp(H_ll) + unseen[:, None, None] * eye3)
        g_l = lin["g_l"]
        if Fp:
            H_pl = lin["H_pl"]                                                   # (Fp, L, 6, 3)
            Hpl_l = H_pl.permute(1, 0, 2, 3).reshape(Lm, 6 * Fp, 3)
            Hpl_flat = Hpl_l.permute(1, 0, 2).reshape(6 * Fp, 3 * Lm)
            Yl_flat = (Hpl_l @ Hll_inv).permute(1, 0, 2).reshape(6 * Fp, 3 * Lm)
            S = damp(lin["H_pp"]) - Yl_flat @ Hpl_flat.T
            b_p = -lin["g_p_solve"].reshape(-1) + Yl_flat @ g_l.reshape(-1)
            dp = torch.cholesky_solve(b_p.unsqueeze(-1), torch.linalg.cholesky(S)).squeeze(-1)
            dl = _bmv(Hll_inv, -g_l - (Hpl_flat.T @ dp).reshape(Lm, 3))
        else:
            dp = torch.zeros(0, dtype=_DT)
            dl = _bmv(Hll_inv, -g_l)
        if D == 0:
            return dp.reshape(Fp, 6), dl, torch.zeros((F, 0, 3), dtype=_DT)

        # Dynamic positions given the pose step.
        rhs = -lin["g_q"].clone()                                                # (D, F, 3)
        if Fp:
            sl = lin["slot_dyn"]
            moved = sl >= 0
            coupling = (lin["H_pq_obs"][moved] * dp.reshape(Fp, 6)[sl[moved]][:, :, None]).sum(1)
            rhs.index_put_((pb.dyn_d[moved], pb.dyn_f[moved]), -coupling, accumulate=True)
        b = rhs.reshape(D, 3 * F)
        H_qq = lin["H_qq"]
        # Entries of unobserved frames have an empty row: make them identity (their step is 0).
        empty = torch.diag_embed((torch.diagonal(H_qq, dim1=-2, dim2=-1) == 0).to(_DT))
        Q = damp(H_qq) + empty                                                   # own blocks
        has_edges = "rig_K" in lin
        if has_edges:
            e, Kown = pb.edges, lin["rig_K"]
            Q2 = Q.index_add(0, e[:, 0], Kown).index_add(0, e[:, 1], Kown)       # upper bound
        else:
            Q2 = Q
        Q2_chol = torch.linalg.cholesky(Q2)

        def precond(r):
            return torch.cholesky_solve(r.unsqueeze(-1), Q2_chol).squeeze(-1)

        x = precond(b)
        if has_edges and cg_iterations > 0:
            def apply_Q(v):
                y = _bmv(Q, v)
                ve, ye = v.reshape(D, F, 3), y.view(D, F, 3)
                ye.index_add_(0, e[:, 0], -self._edge_apply(lin, ve[e[:, 1]]))
                ye.index_add_(0, e[:, 1], -self._edge_apply(lin, ve[e[:, 0]]))
                return y

            r = b - apply_Q(x)
            z = precond(r)
            d = z
            rz = (r * z).sum()
            rz0 = float(rz)
            for _ in range(cg_iterations):
                if float(rz) <= cg_tol * cg_tol * max(rz0, 1e-300):
                    break
                Ad = apply_Q(d)
                alpha = rz / (d * Ad).sum()
                x = x + alpha * d
                r = r - alpha * Ad
                z = precond(r)
                rz_new = (r * z).sum()
                d = z + (rz_new / rz) * d
                rz = rz_new
        return dp.reshape(Fp, 6), dl, x.reshape(D, F, 3).permute(1, 0, 2)

    def _levenberg_marquardt(self, pb: _Problem, T, X, P, inv_F, lam: float, iterations: int,
                             lo: L.SirenPoseLoss, tol: float = 1e-4):
        """Levenberg-Marquardt on the geometry; stops early once a step gains less than ``tol``
        of the cost. Returns (T, X, P, damping, accepted steps)."""
        cost, _ = self._cost(pb, T, X, P, inv_F, lo)
        cost = float(cost)
        accepted = 0
        free = pb.free
        for _ in range(iterations):
            lin = self._linearise(pb, T, X, P, inv_F, lo)
            improved = False
            for _retry in range(5):
                try:
                    dp, dl, dq = self._solve(pb, lin, lam, self.cg_iterations)
                except RuntimeError:            # singular: more damping
                    lam *= 10.0
                    continue
                Tn = T.clone()
                if free.numel():
                    Tn[free] = L.se3_exp(dp) @ T[free]
                Xn, Pn = X + dl, P + dq
                c_new = float(self._cost(pb, Tn, Xn, Pn, inv_F, lo)[0])
                if np.isfinite(c_new) and c_new < cost:
                    gain = cost - c_new
                    T, X, P, cost = Tn, Xn, Pn, c_new
                    lam = max(lam / 10.0, 1e-9)
                    improved = True
                    accepted += 1
                    break
                lam *= 10.0
            if not improved or gain < tol * cost:
                break
        return T, X, P, lam, accepted

    # ------------------------------------------------------------------ field
    def _field_steps(self, pb: _Problem, field, snap, T, X, P) -> dict:
        """Adam steps of the field on the refined keypoint depths (geometry fixed)."""
        lo = self.loss
        dev, f32 = field.device, torch.float32
        ns = pb.n_static
        with torch.no_grad():
            z_st = L.camera_points(T, X, pb.o_frame[:ns], pb.o_pt[:ns])[:, 2]
            Pd = P[pb.dyn_f, pb.dyn_d]
            Td = T[pb.dyn_f]
            z_dy = ((Td[:, 2, :3] * Pd).sum(-1) + Td[:, 2, 3])
        tn_st, tn_dy = pb.tn[pb.o_frame[:ns]], pb.tn[pb.dyn_f]
        x = torch.cat([torch.cat([pb.uv_st, tn_st[:, None]], -1),
                       torch.cat([pb.uv_dyn, tn_dy[:, None]], -1)])
        inv_t = torch.cat([1.0 / z_st, 1.0 / z_dy])
        wdyn = self.field_dynamic_weight * torch.as_tensor(snap.dyn_weight, dtype=_DT)[pb.dyn_d]
        w = torch.cat([pb.o_w[:ns], wdyn])
        ok = torch.isfinite(x[:, 2]) & (inv_t > 0) & (w > 0)
        x, inv_t, w = x[ok].to(dev, f32), inv_t[ok].to(dev, f32), w[ok].to(dev, f32)
        tn_ok = pb.tn[torch.isfinite(pb.tn)]
        S = self.field_points if (lo.field_smoothness_weight > 0 and tn_ok.numel() >= 2) else 0
        terms = {}
        n, B = x.shape[0], self.field_batch
        for _ in range(self.field_steps):
            field.opt.zero_grad(set_to_none=True)
            total = torch.zeros((), device=dev)
            if n:
                # A random minibatch keeps the step cost bounded; the sum is rescaled to the
                # whole set so that the balance with the smoothness term does not depend on B.
                k = torch.randperm(n, generator=self._gen)[:B].to(dev) if n > B else slice(None)
                scale = n / min(n, B)
                dc = scale * lo.depth_weight * L.depth_consistency(
                    inv_t[k], torch.exp(field.net.log_inv_depth(x[k])), w[k], lo.depth_scale)
                total = total + dc
                terms["field_depth"] = float(dc.detach())
            if S:
                uv = (torch.rand((S, 2), generator=self._gen, dtype=f32) * 2 - 1).to(dev)
                k = torch.randint(tn_ok.numel() - 1, (S,), generator=self._gen)
                sm = lo.field_smoothness_weight * L.field_temporal_smoothness(
                    field.net, uv, tn_ok[k].to(dev, f32), tn_ok[k + 1].to(dev, f32),
                    lo.field_smoothness_scale)
                total = total + sm
                terms["field_smoothness"] = float(sm.detach())
            if total.requires_grad:
                total.backward()
                field.opt.step()
        return terms

    # ------------------------------------------------------------------ output
    @staticmethod
    def _velocities(P: np.ndarray, valid: np.ndarray, times: np.ndarray):
        """(D, 3) velocity between each track's two newest observed keyframes, and the frame."""
        F, D = valid.shape
        idx = np.arange(F)[:, None]
        last = np.where(valid, idx, -1).max(0)
        prev = np.where(valid & (idx < last[None, :]), idx, -1).max(0)
        ok = (last >= 0) & (prev >= 0)
        vel = np.full((D, 3), np.nan)
        if ok.any():
            d = np.flatnonzero(ok)
            dt = times[last[d]] - times[prev[d]]
            vel[d] = (P[last[d], d] - P[prev[d], d]) / dt[:, None]
        return vel, np.where(ok, last, -1)
