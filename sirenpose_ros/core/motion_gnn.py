"""Motion GNN: a learned :class:`~sirenpose_ros.core.graph.MotionScorer` over the keypoint graph.

Per keypoint it predicts the probability of being dynamic, per graph edge the probability that
both ends move as one rigid body. It plugs into ``KeypointGraph(cfg, scorer=GNNScorer(cfg))``;
the graph's rigidity-weighted smoothing and per-track temporal filter stay as they are.

Inputs per node (see :class:`MotionFeatures`), all in working-resolution pixels, compressed with
asinh / log1p so that a few large values do not dominate:
- the pipeline's static-model residual (reprojection or epipolar offset), when the pose exists;
- pose-free evidence from the track history kept here (keyed by track id): for several frame
  gaps, the offset from a homography and the Sampson distance to a fundamental matrix fitted on
  all tracks, so the scorer also works while the pipeline initialises. The fits are robust
  reweighted least squares seeded with the graph's own belief from earlier frames (which is
  built on the pipeline's pose-based residuals), all gaps solved at once: no RANSAC;
- the static-model residual and the pose-free offsets also relative to the frame's median, so
  that a frontend's keypoint noise (KLT sub-pixel, XFeat about a pixel) cancels out; the
  network is trained on tracks of both frontends;
- frame-level context per gap (median flow, inlier shares): tells the network when a motion
  model is degenerate (camera standing still: F is meaningless; camera translating: the
  homography leaves parallax on static points).
No absolute image position is used: the synthetic presets put the moving objects near the image
centre, and a position feature would learn that instead of motion.

The network is a small edge-conditioned message-passing net in plain torch (``scatter_add``,
no data-dependent control flow) so it exports to ONNX with dynamic node/edge counts.
Weights are a safetensors file (no pickle); the shipped one is ``models/motion_gnn.safetensors``,
trained by ``python -m sirenpose_ros.tools.train_motion_gnn`` (see ``models/MOTION_GNN.md``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from sirenpose_ros.core.ids import lookup
from sirenpose_ros.core.params import ParamSpec

PARAMS = [
    ParamSpec("gnn_weights", "", "Motion GNN weight file (safetensors); '' = the shipped models/motion_gnn.safetensors."),
    ParamSpec("gnn_device", "cpu", "Torch device of the motion GNN ('cpu', 'cuda', 'cuda:1', ...)."),
]

WEIGHTS_NAME = "motion_gnn.safetensors"
FEATURE_VERSION = 3          # bump when the features change: old weight files are refused
GAPS = (1, 4, 12)            # frame gaps of the pose-free motion models
MIN_FIT_POINTS = 12          # fewer tracks than this: no motion model for that gap
FIT_ITERATIONS = 3           # reweighted least-squares solves per motion model and gap
HOMOGRAPHY_INLIER_PX = 1.0   # inlier share context feature, and the floor of the robust scale
FUNDAMENTAL_INLIER_PX = 1.0
EPIPOLAR_SCALE = 1.0         # Cauchy scale of the F reweighting, in robust sigmas of the Sampson distance
MEMORY_RATE = 0.3           # per-frame rate of each track's running mean of its own evidence
NODE_FEATURES = 6 + 10 * len(GAPS) + 1 + len(GAPS)
EDGE_FEATURES = 3 + 2 * len(GAPS)


def _param_default(name: str):
    return next(s.default for s in PARAMS if s.name == name)


def default_weights_path() -> Path:
    """The shipped weight file (source tree, pip install or ROS install share folder)."""
    from sirenpose_ros.resources import share_dir
    return share_dir() / "models" / WEIGHTS_NAME


# ----------------------------------------------------------------------------- features

def _sampson_px(F: np.ndarray, h1: np.ndarray, h2: np.ndarray, with_gradient: bool = False):
    """Sampson distance of homogeneous correspondences h1 -> h2 (..., M, 3) to F (..., 3, 3), in
    the units of the coordinates; optionally also the squared gradient norm of the epipolar
    constraint (the factor between algebraic and geometric error)."""
    Fx1 = h1 @ np.swapaxes(F, -1, -2)
    Ftx2 = h2 @ F
    num = np.sum(h2 * Fx1, axis=-1)
    den = np.maximum(Fx1[..., 0] ** 2 + Fx1[..., 1] ** 2 + Ftx2[..., 0] ** 2 + Ftx2[..., 1] ** 2, 1e-18)
    d = np.abs(num) / np.sqrt(den)
    return (d, den) if with_gradient else d


def _h_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """DLT rows of x' ~ H x for homogeneous a -> b (..., M, 3): (..., 2M, 9)."""
    z = np.zeros_like(a)
    r1 = np.concatenate([z, -b[..., 2:3] * a, b[..., 1:2] * a], axis=-1)
    r2 = np.concatenate([b[..., 2:3] * a, z, -b[..., 0:1] * a], axis=-1)
    return np.concatenate([r1, r2], axis=-2)


def _f_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Eight-point rows of b^T F a = 0 for homogeneous a, b (..., M, 3): (..., M, 9)."""
    return (b[..., :, None] * a[..., None, :]).reshape(*a.shape[:-1], 9)


def _null_vectors(A: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Unit vector v minimising sum_r w_r (A_r v)^2 for each stack entry: A (..., R, 9), w (..., R)
    -> (..., 9). The 9x9 normal matrix is well conditioned after the Hartley normalisation."""
    _, v = np.linalg.eigh(np.swapaxes(A * w[..., None], -1, -2) @ A)
    return v[..., :, 0]


def _rank2(F: np.ndarray) -> np.ndarray:
    u, s, vt = np.linalg.svd(F)
    s[..., 2] = 0.0
    return (u * s[..., None, :]) @ vt


def _h_residual(H: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """b - H a in inhomogeneous coordinates, (..., M, 2); points H sends to infinity get 1e3."""
    q = a @ np.swapaxes(H, -1, -2)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = b[..., :2] - q[..., :2] / q[..., 2:3]
    return np.where(np.isfinite(d), d, 1e3)


def _weighted_median(r: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted median of each row of r (R, M) with weights w (R, M) >= 0; (R,)."""
    rows = np.arange(r.shape[0])[:, None]
    order = np.argsort(r, axis=1)
    cw = np.cumsum(w[rows, order], axis=1)
    k = np.argmax(cw >= 0.5 * cw[:, -1:], axis=1)
    return r[rows[:, 0], order[rows[:, 0], k]]


def _robust_scale(r: np.ndarray, w: np.ndarray, floor: float) -> np.ndarray:
    """Per row of r (G, M): weighted median of |r| as a Gaussian sigma (1.4826 x MAD), at least
    ``floor``; (G, 1). Zero-weight entries do not count."""
    return np.maximum(1.4826 * _weighted_median(r, w), floor)[:, None]


def _cauchy(r: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + (r / scale) ** 2)


def _motion_models(p0: np.ndarray, p1: np.ndarray, have: np.ndarray, w_static: np.ndarray):
    """Pose-free motion models of every gap at once. ``p0`` (G, M, 2): positions g frames ago
    (rows of tracks without one are ignored), ``p1`` (M, 2) now, ``have`` (G, M) bool,
    ``w_static`` (M,) in [0, 1].

    -> homography offset (G, M, 2) and Sampson distance to a fundamental matrix (G, M), pixels;
    homography and F inlier shares (G,); ``ok`` (G,): the gap had enough tracks for a fit.

    No RANSAC: each model is a weighted least-squares fit (normalised DLT / eight-point) with
    iteratively reweighted robust (Cauchy) weights, started from what is already known: the
    graph's belief that a track is static (``w_static`` = 1 - its filtered dynamic probability,
    from the pose-based residuals of earlier frames) and the offset from the median flow (robust
    to nearly half the tracks moving). All gaps are solved together as stacked 9x9 eigen-problems,
    a fixed cost that replaces OpenCV's sequential RANSAC, whose cost grows with the share of
    moving points.
    """
    G, m = have.shape
    ok = have.sum(axis=1) >= MIN_FIT_POINTS
    hv = have & ok[:, None]
    hvf = hv.astype(np.float64)
    cnt = np.maximum(hvf.sum(axis=1, keepdims=True), 1.0)                 # (G, 1)
    q0 = np.where(hv[..., None], p0, 0.0)
    q1 = np.where(hv[..., None], p1[None], 0.0)
    # Hartley normalisation, one transform per gap for both images (same camera).
    c = 0.5 * (q0.sum(axis=1) + q1.sum(axis=1)) / cnt                     # (G, 2)
    d = np.linalg.norm(q0 - c[:, None], axis=2) * hvf
    s = (np.sqrt(2.0) / np.maximum(d.sum(axis=1) / cnt[:, 0], 1e-6))[:, None]   # (G, 1)
    one = np.ones((G, m, 1))
    a = np.concatenate([(q0 - c[:, None]) * s[..., None], one], axis=2)
    b = np.concatenate([(q1 - c[:, None]) * s[..., None], one], axis=2)
    prior = (np.clip(w_static, 0.0, 1.0) ** 2 + 1e-3)[None] * hvf           # (G, M); 0 = not in
    flow = q1 - q0                                                         # 0 where not in
    med = _weighted_median(np.concatenate([flow[..., 0], flow[..., 1]]), np.concatenate([prior, prior]))
    r = np.where(hv, np.linalg.norm(flow - np.stack([med[:G], med[G:]], axis=1)[:, None], axis=2), 0.0)
    w = prior * _cauchy(r, 3.0 * _robust_scale(r, prior, 0.5))
    rows = _h_rows(a, b)                                                   # (G, 2M, 9)
    for _ in range(FIT_ITERATIONS):
        H = _null_vectors(rows, np.concatenate([w, w], axis=1)).reshape(G, 3, 3)
        hres = _h_residual(H, a, b) / s[..., None]
        r = np.linalg.norm(hres, axis=2)
        w = prior * _cauchy(r, 2.0 * _robust_scale(r, prior, 0.5 * HOMOGRAPHY_INLIER_PX))
    hres = np.where(hv[..., None] & (np.abs(hres) < 1e3), hres, np.where(hv[..., None], 1e3, 0.0))
    h_share = (hvf * (r < HOMOGRAPHY_INLIER_PX)).sum(axis=1) / cnt[:, 0]
    # F: static points off the homography (parallax) must stay in, so start from softer
    # homography weights and let the epipolar residual reweight.
    w = prior * _cauchy(r, 3.0 * _robust_scale(r, prior, 0.5 * HOMOGRAPHY_INLIER_PX) + 2.0)
    rows = _f_rows(a, b)                                                   # (G, M, 9)
    grad = np.ones((G, m))
    for _ in range(FIT_ITERATIONS):
        # Dividing by the epipolar gradient turns the algebraic eight-point error into the
        # Sampson (geometric) one, as the robust weights assume.
        Fm = _rank2(_null_vectors(rows, w / grad).reshape(G, 3, 3))
        epi, grad = _sampson_px(Fm, a, b, with_gradient=True)
        grad = grad / np.maximum(np.sum(prior * grad, axis=1, keepdims=True) / np.maximum(prior.sum(axis=1, keepdims=True), 1e-9), 1e-18)
        epi = epi / s
        w = prior * _cauchy(epi, EPIPOLAR_SCALE * _robust_scale(epi, prior, 0.5 * FUNDAMENTAL_INLIER_PX))
    epi = np.where(hv, epi, 0.0)
    f_share = (hvf * (epi < FUNDAMENTAL_INLIER_PX)).sum(axis=1) / cnt[:, 0]
    return hres, epi, h_share, f_share, ok


def _masked_medians(v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """np.median of each row of v (R, M) over its entries where mask is set (0 for an empty row),
    in one sort: the per-frame medians are many, and np.median costs ~0.1 ms per call."""
    k = mask.sum(axis=1)
    srt = np.sort(np.where(mask, v, np.inf), axis=1)
    rows = np.arange(v.shape[0])
    lo, hi = np.maximum((k - 1) // 2, 0), np.maximum(k // 2, 0)
    if v.shape[1] == 0:
        return np.zeros(v.shape[0])
    med = 0.5 * (srt[rows, np.minimum(lo, v.shape[1] - 1)] + srt[rows, np.minimum(hi, v.shape[1] - 1)])
    return np.where(k > 0, med, 0.0)


def _signed_log(x: np.ndarray) -> np.ndarray:
    return np.arcsinh(x)            # ~x near 0 (sub-pixel detail kept), ~log for large offsets


class MotionFeatures:
    """Per-frame node and edge features; keeps each track's recent positions keyed by track id.

    Call once per frame, in order. ``reset()`` forgets the history (new stream).
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._ids = np.zeros(0, np.int64)                    # sorted track ids of the last frame
        self._hist = np.zeros((0, max(GAPS), 2))             # positions 1..max(GAPS) frames ago
        self._age = np.zeros(0, np.int64)                    # frames seen before this one
        # Running mean per track of [static-model residual, offset per gap] (log1p pixels), NaN
        # until the first value: one frame of evidence is noisy, a track's record is not.
        self._mem = np.zeros((0, 1 + len(GAPS)))
        self._max_id = -1

    def _ids_reissued(self, ids: np.ndarray) -> bool:
        # The frontend numbers tracks with a counter and never revives an id, so a track that was
        # not alive in the last frame always has a new, larger id. An unseen id at or below the
        # largest one seen means the ids restarted: the pipeline reset its frontend (camera change,
        # time jump), and the history kept here belongs to other tracks. A majority is required:
        # the pipeline may skip a few tracks for a frame (outside the lens model's valid region).
        if self._ids.size == 0 or ids.size == 0:
            return False
        unseen = ~lookup(self._ids, ids)[1]
        return bool(np.mean(unseen & (ids <= self._max_id)) > 0.5)

    def __call__(self, obs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> node features (N, NODE_FEATURES), edge features (E, EDGE_FEATURES) float32,
        and ``informed`` (N,) bool: the node has a residual or a track history."""
        ids = np.asarray(obs.ids, np.int64)
        if self._ids_reissued(ids):
            self.reset()
        px = np.asarray(obs.px, np.float64).reshape(-1, 2)
        n = ids.shape[0]
        # History of the current nodes: row j of hist = position j+1 frames ago (NaN = unknown).
        hist = np.full((n, max(GAPS), 2), np.nan)
        age = np.zeros(n, np.int64)
        mem = np.full((n, 1 + len(GAPS)), np.nan)
        k, hit = lookup(self._ids, ids)
        if hit.any():
            hist[hit] = self._hist[k[hit]]
            age[hit] = self._age[k[hit]] + 1
            mem[hit] = self._mem[k[hit]]

        res = np.asarray(obs.residual_px, np.float64).reshape(-1, 2)
        known = np.all(np.isfinite(res), axis=1)
        res0 = np.where(known[:, None], res, 0.0)
        rmag = np.log1p(np.linalg.norm(res0, axis=1))
        w_static = 1.0 - np.clip(np.asarray(obs.previous, np.float64).reshape(-1), 0.0, 1.0)
        now = [np.where(known, rmag, np.nan)]                              # memory inputs
        informed = known.copy()
        prev = np.stack([hist[:, g - 1] for g in GAPS])                   # (G, N, 2)
        have_all = np.all(np.isfinite(prev), axis=2)
        if n:
            H_off, E_dist, h_share, f_share, ok = _motion_models(prev, px, have_all, w_static)
        else:
            H_off, E_dist = np.zeros((len(GAPS), 0, 2)), np.zeros((len(GAPS), 0))
            h_share = f_share = np.zeros(len(GAPS)); ok = np.zeros(len(GAPS), bool)
        have_all = have_all & ok[:, None]
        mag = np.log1p(np.linalg.norm(H_off, axis=2))                      # (G, N)
        emag = np.log1p(E_dist)
        flow = np.linalg.norm(px[None] - np.where(have_all[..., None], prev, 0.0), axis=2)
        # All per-frame medians in one go: residual, and per gap flow, offset and Sampson distance.
        meds = _masked_medians(np.concatenate([rmag[None], flow, mag, emag]),
                               np.concatenate([known[None], have_all, have_all, have_all]))
        G = len(GAPS)
        m_flow, m_mag, m_emag = meds[1:1 + G], meds[1 + G:1 + 2 * G], meds[1 + 2 * G:]
        # Relative to the frame's median: the frontends differ in keypoint noise (KLT sub-pixel,
        # XFeat about a pixel), and that noise scales every static residual alike.
        rrel = np.where(known, rmag - meds[0], 0.0)
        cols = [known.astype(np.float64), *_signed_log(res0).T, rmag, rrel,
                np.log1p(np.minimum(age, 30)) / np.log(31.0)]
        for k in range(G):
            have = have_all[k]
            ctx = np.array([np.log1p(m_flow[k]), h_share[k], f_share[k]]) if have.any() else np.zeros(3)
            informed |= have
            now.append(np.where(have, mag[k], np.nan))
            # Offsets relative to the frame's typical one: fast camera motion inflates everyone's.
            cols += [have.astype(np.float64), *_signed_log(H_off[k]).T, mag[k],
                     np.where(have, mag[k] - m_mag[k], 0.0), emag[k], np.where(have, emag[k] - m_emag[k], 0.0),
                     *np.broadcast_to(ctx[:, None], (3, n))]
        now = np.stack(now, axis=1)
        with np.errstate(invalid="ignore"):
            upd = np.where(np.isnan(mem), now, mem + MEMORY_RATE * (now - mem))
        mem = np.where(np.isnan(now), mem, upd)          # no value this frame: keep the record
        cols += list(np.nan_to_num(mem).T)
        x = np.stack(cols, axis=1) if n else np.zeros((0, NODE_FEATURES))

        # Edge features are symmetric in the two ends (the graph's edges are undirected).
        # Columns: both ends have a residual, their residual difference, their distance, then
        # per gap: both ends have the offset, their offset difference (all gaps at once).
        e = np.asarray(obs.edges, np.int64).reshape(-1, 2)
        i, j = e[:, 0], e[:, 1]
        both = (known[i] & known[j]).astype(np.float64)
        ea = np.empty((e.shape[0], EDGE_FEATURES), np.float32)
        ea[:, 0] = both
        ea[:, 1] = np.log1p(np.linalg.norm(res0[i] - res0[j], axis=1)) * both
        ea[:, 2] = np.log1p(np.linalg.norm(px[i] - px[j], axis=1))
        b = (have_all[:, i] & have_all[:, j]).astype(np.float64)                 # (G, E)
        ea[:, 3::2] = b.T
        ea[:, 4::2] = (np.log1p(np.linalg.norm(H_off[:, i] - H_off[:, j], axis=2)) * b).T

        # Keep this frame's positions as the next frame's history (lost tracks are dropped:
        # the frontend never revives an id).
        order = np.argsort(ids)
        new_hist = np.concatenate([px[:, None], hist[:, :-1]], axis=1)
        self._ids, self._hist, self._age, self._mem = ids[order], new_hist[order], age[order], mem[order]
        if n:
            self._max_id = max(self._max_id, int(ids.max()))
        return x.astype(np.float32), ea, informed


# ----------------------------------------------------------------------------- network

def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class MotionGNN(nn.Module):
    """Edge-conditioned message passing: per-node dynamic logit and per-edge rigidity logit.

    ``forward(x (N, F), edges (E, 2) undirected, edge_attr (E, Fe)) -> (node (N,), edge (E,))``
    logits. Messages flow both ways along every edge and are averaged per receiving node, so the
    output is equivariant to node order and does not depend on how many neighbours a node has.
    """

    def __init__(self, node_features: int = NODE_FEATURES, edge_features: int = EDGE_FEATURES,
                 hidden: int = 32, layers: int = 2):
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.node_in = _mlp(node_features, hidden, hidden)
        self.edge_in = nn.Sequential(nn.Linear(edge_features, hidden), nn.ReLU())
        self.message = nn.ModuleList([_mlp(3 * hidden, hidden, hidden) for _ in range(layers)])
        self.update = nn.ModuleList([_mlp(2 * hidden, hidden, hidden) for _ in range(layers)])
        self.node_out = _mlp(hidden, hidden, 1)
        self.edge_out = _mlp(3 * hidden, hidden, 1)

    def forward(self, x: torch.Tensor, edges: torch.Tensor, edge_attr: torch.Tensor):
        n = x.shape[0]
        h = self.node_in(x)
        ea = self.edge_in(edge_attr)
        src = torch.cat([edges[:, 0], edges[:, 1]])
        dst = torch.cat([edges[:, 1], edges[:, 0]])
        ea2 = torch.cat([ea, ea])
        # Sum over incoming edges with scatter_add (exports to ONNX ScatterElements with
        # reduction "add"; index_add_ exported without the reduction, i.e. wrong, in torch 2.13).
        dst_h = dst.unsqueeze(1).expand(-1, self.hidden)
        deg = torch.zeros(n, 1, dtype=x.dtype, device=x.device).scatter_add(
            0, dst.unsqueeze(1), torch.ones(dst.shape[0], 1, dtype=x.dtype, device=x.device))
        inv_deg = 1.0 / deg.clamp(min=1.0)
        for msg_mlp, upd_mlp in zip(self.message, self.update):
            hs, hd = h[src], h[dst]
            m = msg_mlp(torch.cat([hd, hs - hd, ea2], dim=1))
            agg = torch.zeros(n, self.hidden, dtype=x.dtype, device=x.device).scatter_add(0, dst_h, m) * inv_deg
            h = h + upd_mlp(torch.cat([h, agg], dim=1))
        node = self.node_out(h).squeeze(1)
        hi, hj = h[edges[:, 0]], h[edges[:, 1]]
        edge = self.edge_out(torch.cat([hi + hj, (hi - hj).abs(), ea], dim=1)).squeeze(1)
        return node, edge


def save_weights(model: MotionGNN, path: str | Path, extra_meta: dict | None = None) -> None:
    """Write the model as safetensors with its architecture in the metadata."""
    from safetensors.torch import save_file
    meta = {"feature_version": str(FEATURE_VERSION), "hidden": str(model.hidden),
            "layers": str(model.layers), "node_features": str(NODE_FEATURES),
            "edge_features": str(EDGE_FEATURES), "gaps": json.dumps(list(GAPS))}
    meta.update({k: str(v) for k, v in (extra_meta or {}).items()})
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)


def load_model(path: str | Path = "", device: str = "cpu") -> MotionGNN:
    """MotionGNN from a safetensors file ('' = the shipped weights). Clear errors if the file is
    missing, not safetensors, or made for other features/architecture."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    p = Path(path) if str(path) else default_weights_path()
    hint = ("train it with `python -m sirenpose_ros.tools.train_motion_gnn --out "
            f"models/{WEIGHTS_NAME}` (see models/MOTION_GNN.md)")
    if not p.is_file():
        raise FileNotFoundError(f"motion GNN weights not found: {p}; {hint}")
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(p))
    except Exception as exc:  # safetensors raises its own error types for bad headers/data
        raise ValueError(f"motion GNN weights {p} are not a valid safetensors file ({exc}); {hint}") from exc
    if meta.get("feature_version") != str(FEATURE_VERSION):
        raise ValueError(f"motion GNN weights {p} were trained for feature version "
                         f"{meta.get('feature_version')!r}, this code computes {FEATURE_VERSION}; {hint}")
    try:
        model = MotionGNN(hidden=int(meta["hidden"]), layers=int(meta["layers"]))
        model.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ValueError(f"motion GNN weights {p} do not match the network ({exc}); {hint}") from exc
    return model.to(device).eval()


class NumpyMotionGNN:
    """The forward pass of a :class:`MotionGNN` in NumPy float32, for the CPU.

    Same function as the torch module up to float round-off (tested against it), but a frame's
    graph is small (~350 nodes, ~1000 edges, hidden 32): torch spends most of its time in per-op
    dispatch (~60 ops, 1.5 ms per frame on a 2-core CPU) and NumPy several times less. Two
    rewrites keep the work per edge small, both exact in real arithmetic:
    - the first linear layer of the message MLP acts on ``[h_dst, h_src - h_dst, e]``; its
      weight splits into blocks, so the node parts are projected once per node and gathered per
      edge instead of multiplying a (2E, 3H) matrix;
    - the mean over incoming messages commutes with the message MLP's last (linear) layer, so
      the ReLU outputs are summed per receiving node first (sorted by receiver, ``add.reduceat``)
      and the last layer runs per node.
    """

    def __init__(self, model: MotionGNN):
        sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
        H = self.hidden = model.hidden
        self.layers = model.layers

        def lin(name):          # y = x @ W + b with W (in, out)
            return np.ascontiguousarray(sd[name + ".weight"].T), sd[name + ".bias"]

        self.node_in = (lin("node_in.0"), lin("node_in.2"))
        self.edge_in = lin("edge_in.0")
        self.msg, self.upd = [], []
        for k in range(self.layers):
            (W1, b1), W2b2 = lin(f"message.{k}.0"), lin(f"message.{k}.2")
            Wd, Ws, We = W1[:H], W1[H:2 * H], W1[2 * H:]      # blocks of [h_dst, h_src - h_dst, e]
            # Node projections in one product: columns [h (Wd - Ws) | h Ws].
            Wnode = np.ascontiguousarray(np.concatenate([Wd - Ws, Ws], axis=1))
            self.msg.append((Wnode, We, b1, W2b2))
            (U1, c1), U2c2 = lin(f"update.{k}.0"), lin(f"update.{k}.2")
            self.upd.append((U1[:H], U1[H:], c1, U2c2))
        self.node_out = (lin("node_out.0"), lin("node_out.2"))
        (V1, d1), self.edge_out2 = lin("edge_out.0"), lin("edge_out.2")
        self.edge_out1 = (V1[:H], V1[H:2 * H], V1[2 * H:], d1)

    def __call__(self, x: np.ndarray, edges: np.ndarray, edge_attr: np.ndarray):
        """(N, F) float32, (E, 2) int, (E, Fe) float32 -> node (N,), edge (E,) float32 logits."""
        H = self.hidden
        n = x.shape[0]
        relu = lambda a: np.maximum(a, 0.0, out=a)      # noqa: E731 (in place)
        (A0, a0), (A1, a1) = self.node_in
        h = relu(x @ A0 + a0) @ A1 + a1
        Ee, be = self.edge_in
        ea = relu(edge_attr @ Ee + be)
        src = np.concatenate([edges[:, 0], edges[:, 1]])
        dst = np.concatenate([edges[:, 1], edges[:, 0]])
        # Sum of messages per receiving node as a sparse (N, 2E) 0/1 matrix product (CSR built
        # directly: rows = receivers, ~15 us; np.add.at or reduceat take ~0.3-0.5 ms here).
        deg = np.bincount(dst, minlength=n)
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(deg, out=indptr[1:])
        S = sp.csr_matrix((np.ones(dst.size, np.float32), np.argsort(dst, kind="stable"), indptr),
                          shape=(n, dst.size))
        inv_deg = (1.0 / np.maximum(deg, 1)).astype(np.float32)[:, None]
        has = (deg > 0)[:, None]
        for (Wnode, We, b1, (W2, b2)), (Uh, Ua, c1, (U2, c2)) in zip(self.msg, self.upd):
            P = h @ Wnode                                   # (N, 2H): [h (Wd - Ws) | h Ws]
            C = ea @ We + b1                                # (E, H), same for both directions
            pre = relu(np.take(P[:, :H], dst, axis=0) + np.take(P[:, H:], src, axis=0)
                       + np.concatenate([C, C]))
            # mean over incoming messages of (relu(.) W2 + b2); nodes without any get 0
            agg = ((S @ pre) @ W2) * inv_deg + np.where(has, b2, np.float32(0.0))
            h = h + relu(h @ Uh + agg @ Ua + c1) @ U2 + c2
        (O0, o0), (O1, o1) = self.node_out
        node = (relu(h @ O0 + o0) @ O1 + o1)[:, 0]
        Vs, Vd, Ve, d1 = self.edge_out1
        V2, d2 = self.edge_out2
        hi, hj = np.take(h, edges[:, 0], axis=0), np.take(h, edges[:, 1], axis=0)
        edge = (relu((hi + hj) @ Vs + np.abs(hi - hj) @ Vd + ea @ Ve + d1) @ V2 + d2)[:, 0]
        return node, edge


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z.astype(np.float64)))


# ----------------------------------------------------------------------------- scorer

class GNNScorer:
    """MotionScorer backed by the motion GNN. Stateful (track history): call once per frame in
    order, ``reset()`` on a new stream.

    On the CPU the network runs as :class:`NumpyMotionGNN` (same outputs up to float round-off,
    several times faster on these small graphs); on other devices the torch module runs."""

    def __init__(self, cfg=None, weights: str | Path | None = None, device: str | None = None):
        # cfg may come from make_config() before the gnn_ parameters are gathered there: defaults.
        get = (lambda name: cfg.get(name, _param_default(name))) if cfg is not None else _param_default
        weights = get("gnn_weights") if weights is None else weights
        self.device = torch.device(get("gnn_device") if device is None else device)
        self.model = load_model(weights, self.device)
        self.net = NumpyMotionGNN(self.model) if self.device.type == "cpu" else None
        self.features = MotionFeatures()

    def reset(self) -> None:
        self.features.reset()

    def __call__(self, obs) -> tuple[np.ndarray, np.ndarray]:
        x, ea, _ = self.features(obs)
        if x.shape[0] == 0:
            return np.zeros(0), np.zeros(obs.edges.shape[0])
        edges = np.asarray(obs.edges, np.int64).reshape(-1, 2)
        if self.net is not None:
            node, edge = self.net(x, edges, ea)
            return _sigmoid(node), _sigmoid(edge)
        return self._run(edges, x, ea)

    # no_grad, not inference_mode: leaving inference mode cost ~2 ms per call on the H100 host
    # (an ad-hoc timing of the scorer call: 8.2 vs 10.0 ms), for nothing here.
    @torch.no_grad()
    def _run(self, edges, x, ea) -> tuple[np.ndarray, np.ndarray]:
        dev = self.device
        node, edge = self.model(torch.from_numpy(x).to(dev), torch.from_numpy(edges).to(dev),
                                torch.from_numpy(ea).to(dev))
        return (torch.sigmoid(node).double().cpu().numpy(), torch.sigmoid(edge).double().cpu().numpy())
