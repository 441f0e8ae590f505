"""SIREN depth field: F(u, v, t) -> inverse depth over the recent window, fitted online.

The pipeline gives, per frame, sparse keypoints with an inverse depth (from the landmarks) and a
confidence weight. :class:`DepthFieldEstimator` keeps the last ``field_window_frames`` frames of
samples in preallocated ring buffers and runs a few warm-started Adam steps per frame (network
and optimiser persist across frames), so the field follows the scene instead of being refitted.
:meth:`DepthFieldEstimator.render` then evaluates the field on a dense reduced-resolution grid:
the dense depth that the point cloud is built from.

Coordinates
- ``u_n = 2 u / (W - 1) - 1`` and ``v_n = 2 v / (H - 1) - 1`` for pixel centres u in [0, W-1] and
  v in [0, H-1] of the (undistorted) image, so -1 / +1 are the centres of the first / last pixel.
  ``render(t, h, w)`` uses the same mapping on its h x w grid ("corner-aligned": small pixel j
  sits at full-resolution u = j (W - 1) / (w - 1));
  :func:`sirenpose_ros.core.cloud.scale_intrinsics` gives the matching intrinsics.
- Time: ``t_n = 1 - 2 (t_newest - t) / field_time_horizon_s``. See ``_time_to_tn`` for why.

Output: the last linear layer predicts ``z = log(inverse depth)`` and the field returns ``exp(z)``.
Why exp rather than softplus: inverse depth spans orders of magnitude (0.3 m .. 100 m is 3.3 ..
0.01), and with exp a constant step in z is a constant *relative* change of depth at any range,
residuals ``z - log(d)`` are relative errors (the loss means the same at 1 m and at 50 m, and is
invariant to the unknown monocular scale), and the gradient never vanishes for far points, which
sit in softplus's flat tail. The loss is computed on z directly, so training never evaluates exp.
"""
from __future__ import annotations

import math
import time
from types import SimpleNamespace

import cv2
import numpy as np
import torch
import torch.nn.functional as nnf

from sirenpose_ros.core.params import ParamSpec

PARAMS: list[ParamSpec] = [
    ParamSpec("field_enabled", True,
              "Fit the SIREN depth field and produce dense depth / point clouds. Off: only sparse "
              "keypoint depth is available (saves most of the per-frame compute)."),
    ParamSpec("field_hidden", 64,
              "Width of each SIREN layer. Wider fits finer depth detail but costs ~quadratically "
              "more per step; 64 keeps a CPU update under ~10 ms.", min=8, max=512),
    ParamSpec("field_layers", 3,
              "Number of sine layers (the input layer included) before the linear output layer.",
              min=1, max=8),
    ParamSpec("field_omega0", 30.0,
              "SIREN frequency scale omega_0 (Sitzmann et al. 2020 use 30). Higher lets the field "
              "represent sharper depth edges but makes it noisier between keypoints.",
              min=1.0, max=200.0),
    ParamSpec("field_steps_per_frame", 10,
              "Adam steps run on each new frame (warm-started). 0 stores samples but does not fit. "
              "More steps: better depth, proportionally more time.", min=0, max=200),
    ParamSpec("field_lr", 3e-4,
              "Adam learning rate of the field.", min=1e-6, max=1e-1),
    ParamSpec("field_window_frames", 8,
              "How many recent frames of keypoint samples the field is fitted to.", min=1, max=64),
    ParamSpec("field_time_horizon_s", 2.0,
              "Time span (s) mapped onto the field's time axis: the newest frame is at t=+1 and a "
              "frame this many seconds older at t=-1; older samples are ignored. Keep it longer "
              "than the window (field_window_frames / frame rate).", min=0.05, max=600.0),
    ParamSpec("field_max_samples_per_frame", 1024,
              "Sample buffer size per frame (buffers are preallocated). Extra keypoints of a frame "
              "are randomly subsampled.", min=16, max=65536),
    ParamSpec("field_min_samples", 30,
              "Valid samples needed in the window before the field counts as fitted and render() "
              "returns depth instead of NaN.", min=1, max=100000),
    ParamSpec("field_batch_size", 256,
              "Samples per Adam step. When the window holds fewer, every step uses all of them; "
              "otherwise a random minibatch (keeps the step cost bounded).", min=16, max=1000000),
    ParamSpec("field_newest_fraction", 0.25,
              "Share of each random minibatch drawn from the newest frame (the time that is "
              "rendered); the rest is drawn uniformly over the window.", min=0.0, max=1.0),
    ParamSpec("field_huber_delta", 0.05,
              "Huber threshold on the log inverse-depth residual (~relative depth error): "
              "keypoint depths off by more than this count linearly (robust to bad "
              "triangulations).",
              min=1e-4, max=10.0),
    ParamSpec("field_smoothness_weight", 0.5,
              "Temporal smoothness: weight of (log F(u,v,t) - log F(u,v,t-dt))^2 at random points. "
              "Higher gives steadier depth over time but lags behind fast motion.",
              min=0.0, max=1000.0),
    ParamSpec("field_spatial_weight", 2.0,
              "Spatial regulariser: weight of the squared second difference of log F in u and v "
              "at random points, so the field interpolates smoothly (planar-like) between "
              "keypoints. Higher blurs depth edges. At 0.1 the SIREN fitted a bump around each "
              "keypoint (ring artefacts) instead of interpolating; 2.0 measured on the synthetic "
              "presets (seeds 0 and 1): Abs Rel lower on 9 of 10 runs (close_object 0.48 -> "
              "0.47, multi_object 0.16 -> 0.14, large_dynamic seed 1 0.81 -> 0.63), "
              "large_dynamic seed 0 0.60 -> 0.62; 4.0 starts to hurt low_texture.",
              min=0.0, max=1000.0),
    ParamSpec("field_spatial_step", 0.03,
              "Finite-difference step of the spatial regulariser, in normalised image units "
              "(2 = full image width).", min=1e-4, max=1.0),
    ParamSpec("field_reg_points", 16,
              "Random points per step for the smoothness terms.", min=0, max=100000),
    ParamSpec("field_occluder_bound", False,
              "Moving objects get no keypoint depth (their tracks have no static landmark), so "
              "the field fills them with the depth of the background around them. An object "
              "that occludes that background is in front of it: with this on, each connected "
              "dynamic region of the rendered depth (dynamic probability above "
              "cloud_dynamic_threshold) is capped at a low percentile of the depth on its rim. "
              "Off by default: it relies on the dense dynamic map. Measured (synthetic presets, "
              "with field_spatial_weight 2): Abs Rel close_object 0.47 -> 0.39 (seed 0) and "
              "0.41 -> 0.37 (seed 1), large_dynamic seed 0 0.62 -> 0.58 (delta<1.25 0.11 -> "
              "0.39), but large_dynamic seed 1 0.63 -> 1.27: there background next to the near "
              "panel is flagged dynamic and gets capped at the panel's depth."),
    ParamSpec("field_occluder_percentile", 10.0,
              "Percentile of the rim depth that caps a dynamic region (0 = the nearest rim "
              "pixel: most sensitive to one bad pixel; 50 = the median: objects standing on a "
              "floor stay too far).", min=0.0, max=100.0),
    ParamSpec("field_occluder_rim_px", 12.0,
              "Width of the rim around a dynamic region whose depth bounds it (working-"
              "resolution pixels).", min=1.0, max=1000.0),
    ParamSpec("field_upright_occluder", True,
              "Cap each confidently dynamic pixel of the rendered depth at the smallest depth at "
              "or below it in its column's dynamic run (upright_occluder_bound): a moving object "
              "is in front of the background it hides, and an upright object's depth changes "
              "little along a column, so the floor hidden behind its lowest pixels bounds it. "
              "Measured (synthetic presets, seeds 0 and 1): Abs Rel close_object 0.46 -> 0.38 "
              "and 0.41 -> 0.35, large_dynamic 0.62 -> 0.59 and 0.91 -> 0.76, multi_object s1 "
              "0.16 -> 0.14; others within +-0.01."),
    ParamSpec("field_upright_threshold", 0.7,
              "Dynamic probability (dense map) above which field_upright_occluder caps a pixel. "
              "Higher than cloud_dynamic_threshold on purpose: a static floor wrongly flagged "
              "dynamic would be pulled in, while a missed object pixel only keeps the field's "
              "depth (at 0.5 low_texture seed 1 lost 0.015 in delta<1.25).", min=0.0, max=1.0),
    ParamSpec("field_upright_cutoff", "bound",
              "What field_upright_occluder gives a moving region that reaches the image bottom "
              "(its floor contact is out of view, so its depth is unobservable: the floor at the "
              "bottom row is only an upper bound). 'bound': that upper bound, carried up the "
              "column (a close object comes out too far: 1.9-2.6x on large_dynamic and "
              "close_object). 'unknown': NaN (no dense depth and no cloud points there; the "
              "region keeps its dynamic probability), for consumers that must not take a near "
              "obstacle for a far one.", choices=("bound", "unknown")),
    ParamSpec("field_ground_plane", True,
              "Fit the floor plane to the frame's static keypoint depths (RANSAC, "
              "fit_ground_plane) and let field_upright_occluder bound moving pixels by the "
              "plane's depth as well as the rendered one: under a moving object the field has "
              "no floor keypoints and renders what it extrapolates from elsewhere (in "
              "large_dynamic the wall, 1.6x too far), while the plane gives the floor hidden "
              "behind the object's lowest pixels, where an object standing on the floor is. "
              "Static pixels keep the field's depth (as a bound there a plane a degree or two "
              "off pulled the far floor in: easy 0.055 -> 0.057). Measured (synthetic presets, "
              "seeds 0 and 1): Abs Rel large_dynamic 0.572 -> 0.395 and 0.750 -> 0.647 "
              "(delta<1.25 0.235 -> 0.548, 0.157 -> 0.361), close_object 0.372 -> 0.350 and "
              "0.351 (no floor keypoints while the person fills the lower image), multi_object "
              "0.123 -> 0.120 and 0.138 -> 0.130; others within 0.005."),
    ParamSpec("field_ground_max_tilt_deg", 30.0,
              "field_ground_plane: largest angle between the plane's normal and the image's "
              "down axis (optical y). The floor is found only while the camera is within this "
              "of level; walls (90 deg) never qualify.", min=0.0, max=80.0),
    ParamSpec("field_ground_inlier", 0.05,
              "field_ground_plane: a keypoint is on the plane when its depth is within this "
              "relative error of the plane's depth along its ray (|log(n.X / c)|).",
              min=1e-3, max=1.0),
    ParamSpec("field_ground_min_inliers", 15,
              "field_ground_plane: keypoints the plane needs on it; with fewer the last plane "
              "found (kept in world coordinates) is used, or none.", min=3, max=100000),
    ParamSpec("field_far_bound_weight", 1.0,
              "Weight of the far bounds (one-sided samples: inverse depth at most the value, see "
              "DepthFieldEstimator.update) relative to the keypoint depths. The pipeline derives "
              "them from static tracks that have no landmark yet because their parallax is too "
              "small to triangulate: small parallax over a known baseline means the point is far. "
              "Without them the field fills the untriangulated (far) part of the image with the "
              "depth of the triangulated (near) part; 0 turns them off.", min=0.0, max=100.0),
    ParamSpec("field_far_bound_px", 1.0,
              "Allowance (pixels) added to a track's measured parallax before it is turned into a "
              "far bound (track noise in both views and pose error): larger gives weaker, safer "
              "bounds.", min=0.0, max=100.0),
    ParamSpec("field_far_bound_min_texture", 0.2,
              "A far bound needs at least this share of the track's image gradient energy along "
              "its epipolar direction: on an edge parallel to the epipolar line a track slides "
              "(aperture problem) and its parallax reads too small. 0 keeps every track.",
              min=0.0, max=1.0),
    ParamSpec("field_seed", 0,
              "Seed of the field's initialisation and minibatch sampling (reproducible runs).",
              min=0, max=2**31 - 1),
    ParamSpec("field_cuda_graph", True,
              "On CUDA, replay each training step as a captured CUDA graph (the small network is "
              "launch-bound: ~10x faster per step). Turn off only to debug.",),
    ParamSpec("field_device", "auto",
              "Where the field runs: 'cpu', 'cuda', or 'auto' (cuda when available).",
              choices=("cpu", "cuda", "auto")),
]


def _cfg_get(cfg, name: str):
    """Read a parameter from a Config/dict, falling back to the spec default."""
    if cfg is not None and name in cfg:
        return cfg[name]
    for spec in PARAMS:
        if spec.name == name:
            return spec.default
    raise KeyError(name)


def normalize_pixels(px: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 2) pixel (u, v) of a width x height image -> (N, 2) float32 field coordinates in
    [-1, 1]: u_n = 2 u / (W - 1) - 1 (pixel centres 0 and W-1 map to -1 and +1)."""
    px = np.asarray(px, np.float64).reshape(-1, 2)
    scale = np.array([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
    return (px * scale - 1.0).astype(np.float32)


def occluder_depth_bound(depth: np.ndarray, dynamic: np.ndarray, percentile: float,
                         rim_px: float) -> np.ndarray:
    """Cap each connected dynamic region of ``depth`` at the ``percentile`` of the static depth on
    its rim (pixels within ``rim_px`` of the region, not dynamic, finite). Returns a new array.

    Why: a moving object has no keypoint depth, so the field renders the background behind it
    there; but where the object is visible it occludes that background, so its depth is at most
    the depth around it. The cap only ever brings a pixel nearer (min with the field's value),
    regions with no valid rim are left as they are. Vectorised: every rim pixel gets the label of
    its nearest dynamic pixel from one labelled distance transform, the per-region percentile
    comes from one sort by (label, depth).
    """
    depth = np.asarray(depth, np.float32)
    dyn = np.asarray(dynamic, bool)
    out = depth.copy()
    if not dyn.any() or dyn.all():
        return out
    n, lab = cv2.connectedComponents(dyn.astype(np.uint8), connectivity=8)
    # Distance and nearest dynamic pixel for every pixel (zeros of the source are the dynamic
    # pixels; DIST_LABEL_PIXEL numbers each zero pixel, in row-major order).
    dist, near = cv2.distanceTransformWithLabels((~dyn).astype(np.uint8), cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    zero_lab = lab[dyn]                     # component of each zero pixel, row-major = label order
    rim = (~dyn) & (dist <= rim_px) & np.isfinite(depth) & (depth > 0)
    if not rim.any():
        return out
    comp = zero_lab[near[rim] - 1]          # labels of DIST_LABEL_PIXEL start at 1
    val = depth[rim]
    order = np.lexsort((val, comp))
    comp, val = comp[order], val[order]
    starts = np.searchsorted(comp, np.arange(1, n))
    ends = np.searchsorted(comp, np.arange(1, n), side="right")
    cnt = ends - starts
    has = cnt > 0
    k = starts + np.floor(np.clip(percentile, 0.0, 100.0) / 100.0 * (cnt - 1)).astype(np.int64)
    bound = np.full(n, np.inf, np.float32)
    bound[1:][has] = val[k[has]]
    return np.minimum(out, bound[lab]).astype(np.float32)


def upright_occluder_bound(depth: np.ndarray, dynamic: np.ndarray) -> np.ndarray:
    """Cap each dynamic pixel at the smallest ``depth`` at or below it in its vertical run of
    dynamic pixels (same image column). Returns a new array.

    Why: a moving object has no keypoint depth, so the field renders the background it hides;
    the object is in front of that background at each of its pixels. Objects that move (people,
    carts, boxes) are upright: their visible faces are about vertical, so their depth changes
    little along an image column, and the bound from the nearest background hidden lower in
    the column (the floor behind the object's lowest pixels, much nearer than the wall behind
    its top) carries up the column. Only upwards: hidden background above a pixel rarely bounds
    a real object better, while on a static surface wrongly flagged dynamic (a ceiling) it
    would pull the depth in (measured on multi_object). Unlike the rim bound
    (``occluder_depth_bound``) no depth from outside the region is used. Vectorised: a
    cumulative minimum running bottom-up, kept inside each run by offsetting the runs apart.
    """
    depth = np.asarray(depth, np.float32)
    dyn = np.asarray(dynamic, bool) & np.isfinite(depth)
    if not dyn.any():
        return depth.copy()
    h, w = depth.shape
    m = dyn[::-1].T.ravel()                  # column by column, bottom-up: runs are contiguous
    d = depth[::-1].T.ravel().astype(np.float64)
    first = (np.arange(m.size) % h) == 0
    prev = np.concatenate([[False], m[:-1]]) & ~first
    run = np.cumsum(m & ~prev)               # increases along the scan; constant within a run
    big = 2.0 * float(np.abs(d[m]).max()) + 1.0
    # Later runs sit lower by `big` than every earlier value: the running minimum never carries
    # over from one run into the next. Non-dynamic pixels are +inf and never win.
    shifted = np.where(m, d - run * big, np.inf)
    cum = np.minimum.accumulate(shifted) + run * big
    capped = np.where(m, np.minimum(d, cum), d)
    return capped.reshape(w, h).T[::-1].astype(np.float32)


def regions_touching_bottom(mask: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """(h, w) bool: the pixels of ``mask`` whose 8-connected region reaches the last row.
    ``labels``: the mask's 8-connected component labels, if the caller has them already.

    Such a region continues below the image, so where it meets the floor is not seen."""
    m = np.asarray(mask, bool)
    if not m[-1].any():
        return np.zeros_like(m)
    lab = labels if labels is not None else cv2.connectedComponents(m.astype(np.uint8), connectivity=8)[1]
    touching = np.unique(lab[-1][m[-1]])
    return np.isin(lab, touching) & m


def fit_ground_plane(points: np.ndarray, max_tilt_deg: float, inlier: float, min_inliers: int,
                     rng: np.random.Generator, iterations: int = 64):
    """Floor plane ``n . X = c`` (unit n, c > 0: the plane is below the camera) fitted to camera-
    frame static points (N, 3) by RANSAC, or None.

    Candidates are planes through three points below the optical axis whose normal is within
    ``max_tilt_deg`` of the image's down axis (optical +y) and that pass below the camera (not
    the ceiling). A point is an inlier when ``|log(n . X / c)| < inlier``: its depth along its
    ray is within that relative error of the plane's, the scale-free test that matches how
    keypoint depth errors grow with distance. The candidate with the most inliers is refined by
    least squares on its inliers. Vectorised over all candidates at once.
    """
    X = np.asarray(points, np.float64).reshape(-1, 3)
    X = X[np.isfinite(X).all(1) & (X[:, 2] > 0)]
    low = X[X[:, 1] > 0]
    if low.shape[0] < max(3, min_inliers):
        return None
    idx = rng.integers(0, low.shape[0], size=(iterations, 3))
    a, b, c3 = low[idx[:, 0]], low[idx[:, 1]], low[idx[:, 2]]
    n = np.cross(b - a, c3 - a)
    norm = np.linalg.norm(n, axis=1)
    good = norm > 1e-12
    n = n[good] / norm[good, None]
    n *= np.where(n[:, 1] < 0, -1.0, 1.0)[:, None]            # normals point down (+y)
    c = np.sum(n * a[good], axis=1)
    keep = (n[:, 1] > np.cos(np.radians(max_tilt_deg))) & (c > 0)
    if not keep.any():
        return None
    n, c = n[keep], c[keep]
    res = _plane_residual(X, n, c)                             # (N, H)
    # MSAC score (truncated quadratic) rather than an inlier count: a plane tilted across the
    # floor and the foot of a wall can hold as many points within the tolerance as the floor,
    # but not as close to it.
    score = np.clip(1.0 - (res / inlier) ** 2, 0.0, None).sum(0)
    best = int(np.argmax(score))
    inl = res[:, best] < inlier
    if inl.sum() < min_inliers:
        return None
    normal, off = n[best], float(c[best])
    for _ in range(2):                     # least squares on the inliers, then on the new ones
        P = X[inl]
        centre = P.mean(0)
        nr = np.linalg.svd(P - centre, full_matrices=False)[2][-1]
        nr *= -1.0 if nr[1] < 0 else 1.0
        cr = float(nr @ centre)
        if cr <= 0 or nr[1] <= np.cos(np.radians(max_tilt_deg)):
            break                                              # refinement left the prior
        normal, off = nr, cr
        inl = _plane_residual(X, normal[None, :], np.array([off]))[:, 0] < inlier
        if inl.sum() < min_inliers:
            break
    return normal, off


def _plane_residual(X: np.ndarray, n: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(N, H) |log(n . X / c)| of points X (N, 3) for planes n (H, 3), c (H,): the relative
    depth error of each point along its ray; inf where the ray does not meet the plane."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (X @ n.T) / c
        return np.where(ratio > 0, np.abs(np.log(np.where(ratio > 0, ratio, 1.0))), np.inf)


def plane_depth(normal: np.ndarray, offset: float, xn: np.ndarray, yn: np.ndarray) -> np.ndarray:
    """Depth (optical z) where the rays of normalised image points (xn, yn) meet the plane
    ``normal . X = offset``; +inf where a ray does not reach it (at or above the horizon)."""
    dot = normal[0] * xn + normal[1] * yn + normal[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(dot > 1e-9, offset / dot, np.inf).astype(np.float32)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("field_device='cuda' but torch reports no CUDA device; "
                           "use 'cpu' or 'auto'")
    return torch.device(name)


class SineLayer(torch.nn.Module):
    """y = sin(omega_0 (W x + b)) with the SIREN initialisation (Sitzmann et al. 2020)."""

    def __init__(self, n_in: int, n_out: int, omega0: float, first: bool, gen: torch.Generator):
        super().__init__()
        self.omega0 = float(omega0)
        self.linear = torch.nn.Linear(n_in, n_out)
        # First layer U(-1/in, 1/in): with omega_0 = 30 its frequencies span the input domain a
        # few times. Hidden U(-sqrt(6/in)/omega_0, +): keeps pre-activations ~ arcsine distributed
        # layer after layer. Biases keep torch's U(-1/sqrt(in), 1/sqrt(in)) as in the paper.
        bound = 1.0 / n_in if first else math.sqrt(6.0 / n_in) / self.omega0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound, generator=gen)
            b = 1.0 / math.sqrt(n_in)
            self.linear.bias.uniform_(-b, b, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # omega_0 (W x + b) in one addmm (beta, alpha scale both terms): one kernel fewer
        # forward and backward than linear() followed by a multiply.
        lead = x.shape[:-1]
        y = torch.addmm(self.linear.bias, x.reshape(-1, x.shape[-1]), self.linear.weight.t(),
                        beta=self.omega0, alpha=self.omega0)
        return torch.sin(y).reshape(*lead, -1)


class SirenField(torch.nn.Module):
    """SIREN over (u_n, v_n, t_n) in [-1, 1]^3 -> inverse depth > 0 (as exp of the last layer)."""

    def __init__(self, hidden: int = 64, layers: int = 3, omega0: float = 30.0, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(int(seed))
        sines = [SineLayer(3, hidden, omega0, True, gen)]
        sines += [SineLayer(hidden, hidden, omega0, False, gen) for _ in range(layers - 1)]
        self.sines = torch.nn.Sequential(*sines)
        self.out = torch.nn.Linear(hidden, 1)
        bound = math.sqrt(6.0 / hidden) / omega0   # small output: the field starts ~constant
        with torch.no_grad():
            self.out.weight.uniform_(-bound, bound, generator=gen)
            self.out.bias.zero_()

    def log_inv_depth(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 3) -> (...) log inverse depth (what the loss works on)."""
        return self.out(self.sines(x)).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The clamp only guards exp against overflow (|z| = 30 is a 1e13 depth ratio).
        return torch.exp(self.log_inv_depth(x).clamp(-30.0, 30.0))


class FrozenField:
    """A read-only copy of a fitted field for another process (the joint refinement in the map
    worker, ``core/map_worker.py``): the network's weights as NumPy arrays (plain pickle, see
    ``core/child.py``) and what maps a frame time to the field's time axis.

    :meth:`module` rebuilds an object with the attributes the joint refinement reads from a
    :class:`DepthFieldEstimator`: ``net``, ``device``, ``fitted``, ``newest_time``,
    ``horizon_s``, all on the CPU (a few thousand points through a 64-wide network)."""

    def __init__(self, field: "DepthFieldEstimator"):
        self.hidden, self.layers, self.omega0 = field.hidden, field.layers, field.omega0
        self.horizon_s = field.horizon_s
        self.newest_time = field.newest_time
        self.fitted = field.fitted
        with torch.no_grad():
            self.weights = {k: v.detach().to("cpu").numpy().copy()
                            for k, v in field.net.state_dict().items()}

    def module(self) -> SimpleNamespace:
        net = SirenField(self.hidden, self.layers, self.omega0)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in self.weights.items()})
        return SimpleNamespace(net=net.eval(), device=torch.device("cpu"), fitted=self.fitted,
                               newest_time=self.newest_time, horizon_s=self.horizon_s)


class DepthFieldEstimator:
    """Online fit of a :class:`SirenField` to keypoint inverse depths of the recent frames."""

    def __init__(self, cfg=None):
        g = lambda n: _cfg_get(cfg, n)  # noqa: E731
        self.hidden = int(g("field_hidden"))
        self.layers = int(g("field_layers"))
        self.omega0 = float(g("field_omega0"))
        self.steps_per_frame = int(g("field_steps_per_frame"))
        self.lr = float(g("field_lr"))
        self.window = int(g("field_window_frames"))
        self.horizon_s = float(g("field_time_horizon_s"))
        self.max_per_frame = int(g("field_max_samples_per_frame"))
        self.min_samples = int(g("field_min_samples"))
        self.batch = int(g("field_batch_size"))
        self.newest_fraction = float(g("field_newest_fraction"))
        self.huber_delta = float(g("field_huber_delta"))
        self.w_time = float(g("field_smoothness_weight"))
        self.w_space = float(g("field_spatial_weight"))
        self.space_step = float(g("field_spatial_step"))
        self.reg_points = int(g("field_reg_points"))
        self.w_bound = float(g("field_far_bound_weight"))
        self.seed = int(g("field_seed"))
        self.device = resolve_device(str(g("field_device")))
        self._use_graph = bool(g("field_cuda_graph")) and self.device.type == "cuda"

        # Smoothness residuals as one small matrix product over the (6, M) stencil values
        # (centre, +du, -du, +dv, -dv, -dt): rows = temporal first difference and the two
        # spatial second differences, pre-scaled by sqrt(weight / M) so that the squared sum is
        # the weighted mean. Fewer autograd nodes per step than separate terms, which matters
        # at this size (per-op overhead dominates on a CPU).
        M = self.reg_points
        a = math.sqrt(self.w_time / max(M, 1))
        b = math.sqrt(self.w_space / max(M, 1))
        self._stencil = torch.tensor([[a, 0, 0, 0, 0, -a],
                                      [-2 * b, b, b, 0, 0, 0],
                                      [-2 * b, 0, 0, b, b, 0]], dtype=torch.float32,
                                     device=self.device)
        self._use_reg = M > 0 and (a > 0 or b > 0)

        F, N = self.window, self.max_per_frame
        # Ring buffers, allocated once: per slot (= frame) up to N samples.
        self._uv = torch.zeros((F, N, 2), dtype=torch.float32, device=self.device)
        self._z = torch.zeros((F, N), dtype=torch.float32, device=self.device)   # log inv depth
        self._w = torch.zeros((F, N), dtype=torch.float32, device=self.device)
        # 1 where the sample is a far bound (the field's inverse depth must not exceed it), 0 for
        # an ordinary depth sample.
        self._b = torch.zeros((F, N), dtype=torch.float32, device=self.device)
        self._grid_cache: dict[tuple[int, int], torch.Tensor] = {}
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget all samples and re-initialise network and optimiser (same seed)."""
        self.net = SirenField(self.hidden, self.layers, self.omega0, self.seed).to(self.device)
        # capturable: the optimiser's step counter lives on the device (needed in a CUDA graph).
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, fused=True,
                                    capturable=self._use_graph)
        self._graph = None                        # captured for this network; rebuilt on reset
        self._static_in = self._static_out = None
        self._gen = torch.Generator(device=self.device).manual_seed(self.seed)
        self._rng = np.random.default_rng(self.seed)            # host-side subsampling only
        self._w.zero_()
        self._count = [0] * self.window           # valid rows per slot (known on the host)
        self._times: list[float | None] = [None] * self.window
        self._next_slot = 0
        self._newest_slot = -1
        self._t_newest: float | None = None
        self._bias_set = False
        self._steps_done = 0

    @property
    def fitted(self) -> bool:
        """True once the window holds ``field_min_samples`` valid samples and steps have run."""
        return self._steps_done > 0 and self._window_valid_samples() >= self.min_samples

    @property
    def newest_time(self) -> float | None:
        return self._t_newest

    def _active_slots(self) -> list[int]:
        """Slots holding samples within the time horizon of the newest frame."""
        if self._t_newest is None:
            return []
        return [s for s in range(self.window)
                if self._times[s] is not None and self._count[s] > 0
                and self._t_newest - self._times[s] <= self.horizon_s]

    def _window_valid_samples(self) -> int:
        return sum(self._count[s] for s in self._active_slots())

    def _time_to_tn(self, time_s: float) -> float:
        # The window slides, so an absolute time axis would drift out of [-1, 1] and need
        # re-anchoring (a jump that would invalidate the warm start). Instead time is measured
        # back from the newest frame with a *fixed* scale: t_n = +1 is always "now", which is
        # what render() asks for, and between consecutive frames the present scene changes
        # little, so the warm-started field is already close at t_n = 1. Older samples shift by
        # a constant 2 dt / horizon per frame; the field follows that shift smoothly because the
        # scale never changes (a scale tied to the window span would rescale the whole time axis
        # whenever frames drop or the rate changes).
        return 1.0 - 2.0 * (self._t_newest - time_s) / self.horizon_s

    # ------------------------------------------------------------------ update
    def update(self, time_s: float, uv_norm: np.ndarray, inv_depth: np.ndarray,
               weight: np.ndarray, steps: int | None = None,
               bound: np.ndarray | None = None) -> dict:
        """Store this frame's samples, then run ``steps`` Adam steps (``field_steps_per_frame``).

        ``uv_norm`` (N,2) in [-1, 1] (see module doc), ``inv_depth`` (N,) > 0, ``weight`` (N,) >= 0.
        ``bound`` (N,) bool, optional: True marks a far bound, a one-sided sample that only says
        the inverse depth there is at most ``inv_depth`` (the point is at least that far); it
        costs nothing while the field is farther, and its weight is scaled by
        ``field_far_bound_weight``. Samples with non-finite values, inv_depth <= 0 or weight <= 0
        are ignored. A time earlier than the newest stored frame (bag loop, clock reset) resets
        the field first. Returns ``dict(loss, data_loss, steps, ms)``.
        """
        t0 = time.perf_counter()
        time_s = float(time_s)
        if self._t_newest is not None and time_s < self._t_newest:
            self.reset()
        self._store(time_s, uv_norm, inv_depth, weight, bound)
        out = self.step(self.steps_per_frame if steps is None else int(steps))
        out["ms"] = (time.perf_counter() - t0) * 1e3
        return out

    def _store(self, time_s: float, uv_norm, inv_depth, weight, bound=None) -> None:
        uv = np.asarray(uv_norm, np.float32).reshape(-1, 2)
        inv = np.asarray(inv_depth, np.float32).reshape(-1)
        w = np.asarray(weight, np.float32).reshape(-1)
        b = (np.zeros(inv.shape[0], bool) if bound is None
             else np.asarray(bound, bool).reshape(-1))
        if not (uv.shape[0] == inv.shape[0] == w.shape[0] == b.shape[0]):
            raise ValueError(f"update(): uv_norm {uv.shape}, inv_depth {inv.shape}, weight "
                             f"{w.shape}, bound {b.shape} must have the same length")
        w = np.where(b, w * self.w_bound, w)
        ok = np.isfinite(uv).all(1) & np.isfinite(inv) & (inv > 0) & np.isfinite(w) & (w > 0)
        uv, inv, w, b = uv[ok], inv[ok], w[ok], b[ok]
        if uv.shape[0] > self.max_per_frame:
            keep = self._rng.choice(uv.shape[0], self.max_per_frame, replace=False)
            uv, inv, w, b = uv[keep], inv[keep], w[keep], b[keep]
        n = uv.shape[0]
        s = self._next_slot
        self._next_slot = (s + 1) % self.window
        self._newest_slot = s
        self._t_newest = time_s
        self._times[s] = time_s
        self._count[s] = n
        z = np.log(inv)
        if n:
            self._uv[s, :n].copy_(torch.from_numpy(np.clip(uv, -1.0, 1.0)))
            self._z[s, :n].copy_(torch.from_numpy(z))
            self._w[s, :n].copy_(torch.from_numpy(w))
            self._b[s, :n].copy_(torch.from_numpy(b.astype(np.float32)))
        self._w[s, n:].zero_()   # stale rows of the slot's previous frame must not count
        if n and not self._bias_set and (~b).any():
            # Start the field at the weighted median depth of the first samples: the fit then only
            # has to learn the shape, not a scale that may be many log-units away. Bounds are no
            # depth estimates and do not count.
            z, w = z[~b], w[~b]
            order = np.argsort(z)
            cw = np.cumsum(w[order])
            med = float(z[order][np.searchsorted(cw, 0.5 * cw[-1])])
            with torch.no_grad():
                self.net.out.bias.fill_(med)
            self._bias_set = True

    # ------------------------------------------------------------------ fitting
    def step(self, n_steps: int) -> dict:
        """Run ``n_steps`` Adam steps on the stored window (no new samples)."""
        slots = self._active_slots()
        total = sum(self._count[s] for s in slots)
        if n_steps <= 0 or total == 0:
            return {"loss": float("nan"), "data_loss": float("nan"), "steps": 0, "ms": 0.0}
        t0 = time.perf_counter()
        # Everything random is drawn for all steps up front, so the loop below only runs the
        # network: no host work and no host-device sync per step.
        tn = {s: self._time_to_tn(self._times[s]) for s in slots}
        tn_of_slot = torch.tensor([tn.get(s, 0.0) for s in range(self.window)]).to(self.device)
        pad_to = self.batch if self._use_graph else None    # a CUDA graph needs fixed shapes
        slot_idx, row_idx, valid = self._draw_batch(slots, total, n_steps, pad_to)  # (S, B)
        uv = self._uv[slot_idx, row_idx]                                    # (S, B, 2)
        x_data = torch.cat([uv, tn_of_slot[slot_idx].unsqueeze(-1)], -1)    # (S, B, 3)
        z_data = self._z[slot_idx, row_idx]
        w_data = self._w[slot_idx, row_idx]
        b_data = self._b[slot_idx, row_idx]
        if valid is not None:
            w_data = w_data * valid
        w_data = w_data / w_data.sum(-1, keepdim=True).clamp_min(1e-12)  # weighted mean below
        x_all = torch.cat([x_data, self._reg_points(n_steps, min(tn.values()))], 1)  # (S, B+6M, 3)

        if self._use_graph:
            last = self._run_graph(x_all, z_data, w_data, b_data)
        else:
            for k in range(n_steps):           # no host syncs in here (no .item(), no bool())
                last = self._eager_step(x_all[k], z_data[k], w_data[k], b_data[k])
        self._steps_done += n_steps
        loss_v, data_v = torch.stack(last).tolist()   # the one sync per call
        return {"loss": loss_v, "data_loss": data_v, "steps": n_steps,
                "ms": (time.perf_counter() - t0) * 1e3}

    def _loss(self, x: torch.Tensor, z_t: torch.Tensor, w_t: torch.Tensor, b_t: torch.Tensor):
        """Robust data term on the first len(z_t) rows of x, smoothness on the remaining 6M.
        Rows with b_t = 1 are far bounds: only a field nearer than the bound (z > z_t) costs."""
        B, M = z_t.shape[0], self.reg_points
        z = self.net.log_inv_depth(x)
        r = z[:B] - z_t
        r = torch.where(b_t > 0, r.clamp_min(0.0), r)
        data = (w_t * nnf.huber_loss(r, torch.zeros_like(r), reduction="none",
                                     delta=self.huber_delta)).sum()
        loss = data
        if self._use_reg:
            loss = loss + (self._stencil @ z[B:].view(6, M)).square().sum()
        return loss, data

    def _eager_step(self, x, z_t, w_t, b_t):
        """One Adam step; returns detached (loss, data loss). The autograd graph dies on
        return (keeping it alive across steps would pin AccumulateGrad nodes to a stream)."""
        self.opt.zero_grad(set_to_none=True)
        loss, data = self._loss(x, z_t, w_t, b_t)
        loss.backward()
        self.opt.step()
        return loss.detach(), data.detach()

    # -------------------------------------------------------------- CUDA graph
    def _run_graph(self, x_all, z_data, w_data, b_data):
        """Replay one captured training step per row: on a GPU this small network is bound by
        kernel-launch overhead (~100 launches per step), which a graph replay removes."""
        if self._graph is None:
            self._capture(x_all[0], z_data[0], w_data[0], b_data[0])
        sx, sz, sw, sb = self._static_in
        for k in range(x_all.shape[0]):
            sx.copy_(x_all[k])
            sz.copy_(z_data[k])
            sw.copy_(w_data[k])
            sb.copy_(b_data[k])
            self._graph.replay()
        return tuple(t.detach().clone() for t in self._static_out)

    def _capture(self, x, z_t, w_t, b_t) -> None:
        self._static_in = (x.clone(), z_t.clone(), w_t.clone(), b_t.clone())
        # Warm-up iterations (required before capture) must not change the field: snapshot
        # parameters and optimiser state, restore them in place afterwards.
        params = list(self.net.parameters())
        saved_p = [p.detach().clone() for p in params]
        saved_s = {id(t): t.clone() for st in self.opt.state.values() for t in st.values()
                   if torch.is_tensor(t)}
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self._eager_step(*self._static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        # thread_local: with the staged runner other threads (the GNN, the frontend) keep
        # launching CUDA work during this capture; "global" mode would make their calls fail.
        with torch.cuda.graph(self._graph, capture_error_mode="thread_local"):
            loss, data = self._eager_step(*self._static_in)
        self._static_out = (loss, data)   # detached views of the graph's memory
        with torch.no_grad():
            for p, v in zip(params, saved_p):
                p.copy_(v)
            for st in self.opt.state.values():
                for t in st.values():
                    if torch.is_tensor(t):
                        t.copy_(saved_s[id(t)]) if id(t) in saved_s else t.zero_()

    def _draw_batch(self, slots: list[int], total: int, n_steps: int, pad_to: int | None):
        """(slot, row) indices of each step's samples, drawn for all steps at once, and a
        (S, B) 0/1 validity mask when the batch is padded to ``pad_to`` rows (else None)."""
        dev = self.device
        if total <= self.batch:
            # Small window: every step sees every sample (deterministic, full-batch Adam).
            s_idx = np.concatenate([np.full(self._count[s], s) for s in slots])
            r_idx = np.concatenate([np.arange(self._count[s]) for s in slots])
            valid = None
            if pad_to is not None and total < pad_to:
                pad = pad_to - total           # row 0 of a used slot, weight 0
                s_idx = np.concatenate([s_idx, np.full(pad, slots[0])])
                r_idx = np.concatenate([r_idx, np.zeros(pad, np.int64)])
                valid = torch.cat([torch.ones(total), torch.zeros(pad)]).to(dev)
            s_idx = torch.from_numpy(s_idx).to(dev).expand(n_steps, -1)
            r_idx = torch.from_numpy(r_idx).to(dev).expand(n_steps, -1)
            return s_idx, r_idx, valid
        # Random minibatch: a share from the newest frame (the rendered time), the rest uniform
        # over all stored samples via the cumulative counts (no Python loop over samples).
        counts = torch.tensor([self._count[s] for s in slots], device=dev)
        slot_ids = torch.tensor(slots, device=dev)
        ends = counts.cumsum(0)
        n_new = int(round(self.batch * self.newest_fraction))
        if self._count[self._newest_slot] == 0:
            n_new = 0
        j = torch.randint(total, (n_steps, self.batch - n_new), device=dev, generator=self._gen)
        pos = torch.searchsorted(ends, j, right=True)
        r_all = j - (ends - counts)[pos]
        s_all = slot_ids[pos]
        if n_new == 0:
            return s_all, r_all, None
        r_new = torch.randint(self._count[self._newest_slot], (n_steps, n_new), device=dev,
                              generator=self._gen)
        s_new = torch.full_like(r_new, self._newest_slot)
        return torch.cat([s_new, s_all], 1), torch.cat([r_new, r_all], 1), None

    def _reg_points(self, n_steps: int, t_lo: float) -> torch.Tensor:
        """(S, 6M, 3): centre, +-du, +-dv and one frame back in time, for the smoothness terms."""
        M = self.reg_points
        if M == 0:
            return torch.zeros((n_steps, 0, 3), device=self.device)
        p = torch.rand((n_steps, M, 3), device=self.device, generator=self._gen)
        lo = torch.tensor([-1.0, -1.0, t_lo], device=self.device)
        p = lo + p * (1.0 - lo)           # u, v in [-1, 1]; t over the span holding samples
        d = self.space_step
        off = torch.tensor([[0, 0, 0], [d, 0, 0], [-d, 0, 0], [0, d, 0], [0, -d, 0],
                            [0, 0, -self._dt_n()]], dtype=torch.float32, device=self.device)
        return (p.unsqueeze(1) + off[None, :, None, :]).reshape(n_steps, 6 * M, 3)

    def _dt_n(self) -> float:
        """Typical frame interval in t_n units (median over the window; 1/30 s if unknown)."""
        ts = sorted(t for t in self._times if t is not None)
        dts = np.diff(ts)
        dt = float(np.median(dts)) if dts.size else 1.0 / 30.0
        return 2.0 * max(dt, 1e-4) / self.horizon_s

    # ------------------------------------------------------------------ rendering
    def _grid(self, h: int, w: int) -> torch.Tensor:
        key = (h, w)
        g = self._grid_cache.get(key)
        if g is None:
            u = torch.linspace(-1.0, 1.0, w) if w > 1 else torch.zeros(1)
            v = torch.linspace(-1.0, 1.0, h) if h > 1 else torch.zeros(1)
            vv, uu = torch.meshgrid(v, u, indexing="ij")
            g = torch.stack([uu, vv, torch.zeros_like(uu)], -1).reshape(-1, 3).to(self.device)
            self._grid_cache[key] = g
        return g

    def _clamped_tn(self, time_s: float) -> float:
        # The field is only trained on [-1, 1] in time: no extrapolation.
        return min(max(self._time_to_tn(float(time_s)), -1.0), 1.0)

    @torch.no_grad()
    def render(self, time_s: float, h: int, w: int) -> np.ndarray:
        """(h, w) float32 inverse depth at ``time_s`` on the corner-aligned pixel-centre grid.

        All NaN while not :attr:`fitted`. Times outside the window's time span are clamped to
        it (the field is not trained to extrapolate).
        """
        if not self.fitted:
            return np.full((h, w), np.nan, np.float32)
        g = self._grid(int(h), int(w))
        x = g.clone()
        x[:, 2] = self._clamped_tn(time_s)
        inv = self.net(x)
        return inv.reshape(h, w).cpu().numpy().astype(np.float32, copy=False)

    @torch.no_grad()
    def query(self, time_s: float, uv_norm: np.ndarray) -> np.ndarray:
        """Inverse depth at arbitrary normalised points (N,2) (e.g. keypoint depth consistency)."""
        uv = torch.from_numpy(np.asarray(uv_norm, np.float32).reshape(-1, 2)).to(self.device)
        if not self.fitted:
            return np.full(uv.shape[0], np.nan, np.float32)
        t = torch.full((uv.shape[0], 1), self._clamped_tn(time_s), device=self.device)
        return self.net(torch.cat([uv, t], 1)).cpu().numpy()
