"""Accuracy metrics: trajectory (ATE, RPE, tracking), depth, dynamic masks. Vectorised NumPy.

Poses are T_world_cam (camera-to-world, 4x4); positions are their translation columns. The
estimate and ground truth passed to ATE/RPE must already be associated (same length, row i of
one matches row i of the other): see :func:`associate`.
"""
from __future__ import annotations

import numpy as np

# Relative tolerance below which a singular value counts as zero (degenerate point sets).
_RANK_TOL = 1e-9


# ---------------------------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------------------------

def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True
            ) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (s, R, t) minimising sum ||dst_i - (s R src_i + t)||^2.

    Umeyama (1991). R is always a proper rotation (det +1): when the best orthogonal fit is a
    reflection, the axis of smallest singular value is flipped. With ``with_scale=False`` s = 1
    (SE(3) fit). Needs N >= 3 points, not all collinear (in src, and not collapsed in the
    cross-covariance), else ValueError, since the rotation about that line is undetermined.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape:
        raise ValueError(f"src and dst must both be (N, 3), got {src.shape} and {dst.shape}")
    n = src.shape[0]
    if n < 3:
        raise ValueError(f"umeyama needs at least 3 points, got {n}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise ValueError("umeyama got non-finite points")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    sv_src = np.linalg.svd(xs, compute_uv=False)
    if sv_src[1] <= _RANK_TOL * max(sv_src[0], np.finfo(float).tiny):
        raise ValueError("umeyama: source points are collinear (or coincident)")
    cov = xd.T @ xs / n                                      # 3x3 cross-covariance
    U, D, Vt = np.linalg.svd(cov)
    if D[1] <= _RANK_TOL * max(D[0], np.finfo(float).tiny):
        raise ValueError("umeyama: degenerate correspondence (destination collinear/coincident)")
    S = np.ones(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2] = -1.0                                          # reflection -> proper rotation
    R = (U * S) @ Vt
    if with_scale:
        var_src = np.mean(np.sum(xs * xs, axis=1))
        s = float(np.sum(D * S) / var_src)
    else:
        s = 1.0
    t = mu_d - s * R @ mu_s
    return s, R, t


def fit_alignment(est_T: np.ndarray, gt_T: np.ndarray, align: str = "sim3"
                  ) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) mapping estimated positions onto ground truth: 'sim3', 'se3' or 'none'."""
    est_T, gt_T = _check_pair(est_T, gt_T)
    if align == "none":
        return 1.0, np.eye(3), np.zeros(3)
    if align not in ("sim3", "se3"):
        raise ValueError(f"align must be 'sim3', 'se3' or 'none', got {align!r}")
    return umeyama(est_T[:, :3, 3], gt_T[:, :3, 3], with_scale=(align == "sim3"))


def apply_alignment(T: np.ndarray, s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Poses (N,4,4) mapped by the similarity x -> s R x + t (rotation R, position scaled)."""
    T = np.asarray(T, dtype=np.float64)
    out = T.copy()
    out[:, :3, :3] = R @ T[:, :3, :3]
    out[:, :3, 3] = s * T[:, :3, 3] @ R.T + t
    return out


# ---------------------------------------------------------------------------------------------
# Association
# ---------------------------------------------------------------------------------------------

def _nearest(sorted_ref: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index into sorted_ref of the nearest value for each query (ties -> lower index)."""
    j = np.searchsorted(sorted_ref, query)
    lo = np.clip(j - 1, 0, len(sorted_ref) - 1)
    hi = np.clip(j, 0, len(sorted_ref) - 1)
    # int64 differences: stamps are ns since the epoch, far from overflow.
    take_hi = np.abs(sorted_ref[hi] - query) < np.abs(query - sorted_ref[lo])
    return np.where(take_hi, hi, lo)


def associate(stamps_a: np.ndarray, stamps_b: np.ndarray, max_dt_ns: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Match stamps one-to-one -> (idx_a, idx_b), sorted by idx_a.

    A pair (i, j) is kept when b[j] is a's nearest stamp in b, a[i] is b[j]'s nearest stamp in
    a (mutual nearest neighbours, hence one-to-one) and |a[i] - b[j]| <= max_dt_ns.
    Stamps need not be sorted.
    """
    a = np.asarray(stamps_a, dtype=np.int64)
    b = np.asarray(stamps_b, dtype=np.int64)
    if a.size == 0 or b.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    oa, ob = np.argsort(a, kind="stable"), np.argsort(b, kind="stable")
    sa, sb = a[oa], b[ob]
    a_to_b = _nearest(sb, sa)            # in sorted index space
    b_to_a = _nearest(sa, sb)
    ia = np.arange(len(sa))
    keep = (b_to_a[a_to_b] == ia) & (np.abs(sa - sb[a_to_b]) <= max_dt_ns)
    idx_a, idx_b = oa[ia[keep]], ob[a_to_b[keep]]
    order = np.argsort(idx_a, kind="stable")
    return idx_a[order], idx_b[order]


# ---------------------------------------------------------------------------------------------
# Trajectory errors
# ---------------------------------------------------------------------------------------------

def _check_pair(est_T: np.ndarray, gt_T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    est_T = np.asarray(est_T, dtype=np.float64)
    gt_T = np.asarray(gt_T, dtype=np.float64)
    if est_T.ndim != 3 or est_T.shape[1:] != (4, 4) or est_T.shape != gt_T.shape:
        raise ValueError(f"est_T and gt_T must both be (N, 4, 4), got {est_T.shape} "
                         f"and {gt_T.shape}")
    return est_T, gt_T


def _stats(err: np.ndarray) -> dict:
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mean": float(np.mean(err)),
            "median": float(np.median(err)), "max": float(np.max(err))}


def ate(est_T: np.ndarray, gt_T: np.ndarray, align: str = "sim3") -> dict:
    """Absolute trajectory error on positions after alignment.

    align: 'sim3' (Umeyama with scale: the standard for monocular, whose scale is arbitrary),
    'se3' (rigid, for metric estimates) or 'none'.
    Returns dict(rmse, mean, median, max, scale, n), distances in ground-truth units.
    """
    est_T, gt_T = _check_pair(est_T, gt_T)
    if est_T.shape[0] == 0:
        raise ValueError("ate needs at least one pose pair")
    s, R, t = fit_alignment(est_T, gt_T, align)
    p = s * est_T[:, :3, 3] @ R.T + t
    err = np.linalg.norm(gt_T[:, :3, 3] - p, axis=1)
    return {**_stats(err), "scale": float(s), "n": int(err.shape[0])}


def rotation_angle(R: np.ndarray) -> np.ndarray:
    """Rotation angle in radians of (..., 3, 3) rotations, accurate near 0 and near pi.

    atan2(|sin|, cos) instead of arccos((trace - 1) / 2), which loses half the digits at
    small angles (exactly the regime of per-frame errors).
    """
    R = np.asarray(R, dtype=np.float64)
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    w = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                  R[..., 1, 0] - R[..., 0, 1]], -1) / 2.0
    return np.arctan2(np.linalg.norm(w, axis=-1), cos)


def _invert(T: np.ndarray) -> np.ndarray:
    Rt = np.swapaxes(T[..., :3, :3], -1, -2)
    out = np.zeros_like(T)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -(Rt @ T[..., :3, 3, None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def rpe(est_T: np.ndarray, gt_T: np.ndarray, delta: int = 1,
        scale: float | None = None) -> dict:
    """Relative pose error between frames i and i + delta.

    E_i = (G_i^-1 G_{i+d})^-1 (P_i^-1 P_{i+d}); translation error = |trans(E_i)|, rotation
    error = angle(E_i). Monocular estimates have an arbitrary scale, so before measuring
    translation the estimate's positions are multiplied by ``scale``; by default (None) that is
    the Sim(3) scale of the ATE Umeyama alignment (1.0 when fewer than 3 non-collinear
    positions make it undefined). Pass scale=1.0 for metric estimates. Rotation error does not
    depend on scale, nor on any rigid alignment (relative poses are invariant to it).
    Returns dict(trans_rmse, rot_rmse_deg, trans_mean, rot_mean_deg, trans_max, rot_max_deg,
    scale, n).
    """
    est_T, gt_T = _check_pair(est_T, gt_T)
    if delta < 1:
        raise ValueError(f"delta must be >= 1, got {delta}")
    n = est_T.shape[0] - delta
    if n < 1:
        raise ValueError(f"rpe needs more than delta={delta} poses, got {est_T.shape[0]}")
    if scale is None:
        try:
            scale = umeyama(est_T[:, :3, 3], gt_T[:, :3, 3], with_scale=True)[0]
        except ValueError:
            scale = 1.0
    P = est_T.copy()
    P[:, :3, 3] *= scale
    rel_est = _invert(P[:-delta]) @ P[delta:]
    rel_gt = _invert(gt_T[:-delta]) @ gt_T[delta:]
    E = _invert(rel_gt) @ rel_est
    et = np.linalg.norm(E[:, :3, 3], axis=1)
    er = np.degrees(rotation_angle(E[:, :3, :3]))
    return {"trans_rmse": float(np.sqrt(np.mean(et ** 2))),
            "rot_rmse_deg": float(np.sqrt(np.mean(er ** 2))),
            "trans_mean": float(et.mean()), "rot_mean_deg": float(er.mean()),
            "trans_max": float(et.max()), "rot_max_deg": float(er.max()),
            "scale": float(scale), "n": int(n)}


def trajectory_length(T: np.ndarray) -> float:
    """Path length: sum of distances between consecutive positions."""
    p = np.asarray(T, dtype=np.float64)[:, :3, 3]
    return float(np.sum(np.linalg.norm(np.diff(p, axis=0), axis=1)))


# ---------------------------------------------------------------------------------------------
# Tracking robustness
# ---------------------------------------------------------------------------------------------

def tracked_share(n_tracked: int, n_frames: int) -> float:
    """Fraction of input frames with a valid pose."""
    if n_frames <= 0 or n_tracked < 0 or n_tracked > n_frames:
        raise ValueError(f"need 0 <= n_tracked <= n_frames and n_frames > 0, "
                         f"got {n_tracked} / {n_frames}")
    return n_tracked / n_frames


def longest_lost_run(tracked: np.ndarray) -> int:
    """Length of the longest run of consecutive frames without a pose (tracked[i] False)."""
    lost = ~np.asarray(tracked, dtype=bool)
    if lost.size == 0:
        return 0
    edges = np.diff(np.concatenate([[0], lost.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int(np.max(ends - starts, initial=0))


# ---------------------------------------------------------------------------------------------
# Depth
# ---------------------------------------------------------------------------------------------

def depth_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None,
                  median_scale: bool = True) -> dict:
    """Standard monocular depth errors on one frame.

    Valid pixels: ``valid`` (if given) and gt finite > 0 and pred finite > 0 (NaN marks
    "unknown" in our depth maps; such pixels are excluded, and ``coverage`` reports the share
    of gt-valid pixels that had a prediction). With ``median_scale`` pred is multiplied by
    median(gt) / median(pred) over valid pixels first (monocular depth is up to scale).
    Returns dict(abs_rel, sq_rel, rmse, delta1 (max(p/g, g/p) < 1.25), scale, coverage, n);
    metrics are NaN when no pixel is valid.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape")
    gt_ok = np.isfinite(gt) & (gt > 0)
    if valid is not None:
        gt_ok &= np.asarray(valid, dtype=bool)
    # NaN > 0 is False, so this also drops NaN; inf is dropped by isfinite.
    ok = gt_ok & np.isfinite(pred) & (pred > 0)
    n = int(ok.sum())
    n_gt = int(gt_ok.sum())
    coverage = n / n_gt if n_gt else 0.0
    if n == 0:
        nan = float("nan")
        return {"abs_rel": nan, "sq_rel": nan, "rmse": nan, "delta1": nan, "scale": nan,
                "coverage": coverage, "n": 0}
    p, g = pred[ok], gt[ok]
    scale = float(np.median(g) / np.median(p)) if median_scale else 1.0
    p = p * scale
    d = p - g
    return {"abs_rel": float(np.mean(np.abs(d) / g)),
            "sq_rel": float(np.mean(d * d / g)),
            "rmse": float(np.sqrt(np.mean(d * d))),
            "delta1": float(np.mean(np.maximum(p / g, g / p) < 1.25)),
            "scale": scale, "coverage": coverage, "n": n}


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------

def _mask_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape")
    return pred, gt


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty (agreement)."""
    pred, gt = _mask_pair(pred, gt)
    union = int(np.count_nonzero(pred | gt))
    return 1.0 if union == 0 else int(np.count_nonzero(pred & gt)) / union


def binary_f1(pred: np.ndarray, gt: np.ndarray) -> dict:
    """Precision, recall and F1 of a boolean prediction.

    Empty denominators count as vacuously perfect (no predicted positives -> precision 1; no
    true positives to find -> recall 1), so F1 is 1 only when both masks agree and is 0
    whenever one of precision/recall is 0.
    """
    pred, gt = _mask_pair(pred, gt)
    tp = int(np.count_nonzero(pred & gt))
    n_pred, n_gt = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    precision = tp / n_pred if n_pred else 1.0
    recall = tp / n_gt if n_gt else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
