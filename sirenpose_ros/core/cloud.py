"""Dense point clouds: back-projection of reduced-resolution depth, per-pixel keypoint values, and
a bounded voxel map of the static scene.

Depth is z-depth along the optical axis (not range along the ray), in scene units. The reduced
depth grid of :meth:`DepthFieldEstimator.render` is corner-aligned with the full image (small
pixel j sits at full-resolution u = j (W - 1) / (w - 1)); :func:`scale_intrinsics` gives the
pinhole K of that grid. Back-projection takes a pinhole K of the grid it is given: the field is
fitted on undistorted keypoints, so its depth image is an undistorted pinhole image.
"""
from __future__ import annotations

from collections import deque
from functools import lru_cache

import cv2
import numpy as np

from sirenpose_ros.core.ids import lookup
from sirenpose_ros.core.params import ParamSpec
from sirenpose_ros.core.types import Cloud

PARAMS: list[ParamSpec] = [
    ParamSpec("cloud_enabled", True,
              "Publish dense point clouds (current frame and fused static map)."),
    ParamSpec("cloud_downsample", 4,
              "Dense depth and cloud resolution = image size / this factor (4: 640x480 -> "
              "160x120, 19k points per frame). Lower: denser clouds, more CPU and bandwidth.",
              min=1, max=16),
    ParamSpec("cloud_max_depth", 20.0,
              "Points farther than this (scene units; metres only with a metric scale source) "
              "are dropped: far depth from a monocular field is the least reliable.",
              min=0.01, max=1e6),
    ParamSpec("cloud_voxel_size", 0.05,
              "Edge of the static map's voxels (scene units). Points in one voxel are averaged.",
              min=1e-4, max=100.0),
    ParamSpec("cloud_map_max_points", 200000,
              "Most voxels kept in the static map; beyond it the voxels updated longest ago are "
              "evicted, so memory and message size stay bounded.", min=1000, max=20000000),
    ParamSpec("cloud_dynamic_threshold", 0.5,
              "Points with a dynamic probability above this go to the dynamic layer (current "
              "cloud only) and are never fused into the static map.", min=0.0, max=1.0),
    ParamSpec("cloud_velocity_window_s", 0.3,
              "Time base of a moving point's velocity (seconds of camera time): the least-squares "
              "slope of where the cloud put its keypoint over this long (TrackVelocity). Longer: "
              "less noise, more lag behind accelerations.", min=0.01, max=10.0),
    ParamSpec("cloud_velocity_depth_window_s", 1.0,
              "Time base of a moving keypoint's depth level for its velocity (seconds): the "
              "median of its published depths over this long, each carried to the current frame "
              "by the keypoint's image scale change (TrackVelocity). At least "
              "cloud_velocity_window_s.", min=0.01, max=10.0),
    ParamSpec("cloud_velocity_min_frames", 4,
              "Dense frames a moving keypoint needs within cloud_velocity_window_s (and they must "
              "span half of it) for a velocity of its own; younger ones take their moving "
              "region's median, and without one their velocity is NaN (unknown).", min=2, max=100),
]

_DEFAULT_RGB = 0x00808080   # grey for clouds without colour (mono cameras)


def _cfg_get(cfg, name: str):
    if cfg is not None and name in cfg:
        return cfg[name]
    return next(s.default for s in PARAMS if s.name == name)


# ---------------------------------------------------------------------------- colours
def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) uint32 0x00RRGGBB (the PointCloud2 'rgb' field RViz reads)."""
    c = np.asarray(rgb).astype(np.uint32)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """(...) uint32 0x00RRGGBB -> (..., 3) uint8."""
    p = np.asarray(packed, np.uint32)
    return np.stack([(p >> 16) & 0xFF, (p >> 8) & 0xFF, p & 0xFF], -1).astype(np.uint8)


# ---------------------------------------------------------------------------- geometry
def scale_intrinsics(K: np.ndarray, full_hw: tuple[int, int],
                     small_hw: tuple[int, int]) -> np.ndarray:
    """Pinhole K of a corner-aligned h x w grid over a H x W image (the field's render grid).

    Small pixel j maps to full-resolution u = j s with s = (W - 1) / (w - 1), so
    fx' = fx / s and cx' = cx / s (same for y).
    """
    (H, W), (h, w) = full_hw, small_hw
    sx = (W - 1) / max(w - 1, 1)
    sy = (H - 1) / max(h - 1, 1)
    Ks = np.array(K, np.float64).copy()
    Ks[0, :] /= sx
    Ks[1, :] /= sy
    Ks[2, :] = (0.0, 0.0, 1.0)
    return Ks


def _as_K(camera) -> np.ndarray:
    """A 3x3 pinhole K, or any object with a 3x3 ``K`` attribute (e.g. a scaled CameraModel)."""
    K = getattr(camera, "K", camera)
    K = np.asarray(K, np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"camera must be a 3x3 K or have a 3x3 .K attribute, got shape {K.shape}")
    return K


@lru_cache(maxsize=16)
def _rays_cached(k: tuple, h: int, w: int) -> np.ndarray:
    fx, s, cx, fy, cy = k
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    y = (v - cy) / fy
    x = (u - cx - s * y) / fx
    rays = np.stack([x, y, np.ones_like(x)], -1).reshape(-1, 3).astype(np.float32)
    rays.setflags(write=False)   # shared by every caller of the cache
    return rays


def pixel_rays(K: np.ndarray, h: int, w: int) -> np.ndarray:
    """(h*w, 3) float32 rays with z = 1 for the pixel centres of an h x w pinhole image (cached)."""
    K = _as_K(K)
    return _rays_cached((K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]), int(h), int(w))


def backproject(depth: np.ndarray, camera, T_world_cam: np.ndarray,
                rgb: np.ndarray | None = None, dynamic: np.ndarray | None = None,
                velocity: np.ndarray | None = None, max_depth: float | None = None) -> Cloud:
    """Depth image -> world-frame :class:`Cloud`.

    ``depth`` (h, w) z-depth; NaN, inf, <= 0 and > ``max_depth`` are dropped. ``camera``: pinhole
    K (3x3) of this h x w grid, or an object with a ``.K`` attribute. ``rgb`` (h, w, 3) uint8
    (grey when None), ``dynamic`` (h, w) in [0, 1] (0 when None or NaN), ``velocity`` (h, w, 3)
    world frame (0 when None; NaN stays NaN: unknown), all on the same grid as ``depth``.
    """
    depth = np.asarray(depth, np.float32)
    h, w = depth.shape
    size = (getattr(camera, "width", w), getattr(camera, "height", h))
    if size != (w, h):
        # A camera model of another resolution (e.g. the full-size one) would silently give a
        # wrongly scaled cloud; pass scale_intrinsics(...) for the reduced grid instead.
        raise ValueError(f"camera is {size[0]}x{size[1]} but depth is {w}x{h}")
    d = depth.reshape(-1)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(d) & (d > 0)
        if max_depth is not None:
            ok &= d <= max_depth
    # Usually every pixel of the field's depth is kept: then no gathers at all (a row gather of
    # 19k points costs ~0.2 ms per array, most of this function's time).
    idx = slice(None) if ok.all() else np.flatnonzero(ok)

    def pick(a, width):
        a = np.asarray(a).reshape(-1, width) if width > 1 else np.asarray(a).reshape(-1)
        return a if isinstance(idx, slice) else np.take(a, idx, axis=0)

    p_cam = pick(pixel_rays(camera, h, w), 3) * pick(d, 1)[:, None]
    # Rigid transform by OpenCV (one SIMD pass, ~10x faster than a float32 (N, 3) @ (3, 3) in
    # NumPy; same float32 result up to an ulp).
    T = np.asarray(T_world_cam, np.float64)
    xyz = cv2.transform(p_cam.reshape(-1, 1, 3), T[:3, :4]).reshape(-1, 3)
    n = xyz.shape[0]
    if rgb is not None:
        col = pick(_pack_rgb_image(np.asarray(rgb)), 1)
    else:
        col = np.full(n, _DEFAULT_RGB, np.uint32)
    # Unknown dynamic probability (NaN, e.g. far from every keypoint after densify) means
    # static: most of a scene is static. An unknown velocity stays NaN: a moving point whose
    # velocity cannot be observed must not read as standing still.
    if dynamic is not None:
        dyn = np.nan_to_num(pick(np.asarray(dynamic, np.float32), 1), nan=0.0)
    else:
        dyn = np.zeros(n, np.float32)
    if velocity is not None:
        vel = pick(np.asarray(velocity, np.float32), 3)
    else:
        vel = np.zeros((n, 3), np.float32)
    return Cloud(xyz, col, dyn, vel)


def _pack_rgb_image(rgb: np.ndarray) -> np.ndarray:
    """:func:`pack_rgb` of a whole image: an 8-bit RGB image through OpenCV's RGB -> BGRA
    (bytes B, G, R, A = one little-endian 0xAARRGGBB word per pixel, A cleared), ~30x faster
    than the shifts over a (N, 3) array."""
    if rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3:
        bgra = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGRA)
        return bgra.view("<u4").reshape(-1) & np.uint32(0x00FFFFFF)
    return pack_rgb(rgb.reshape(-1, 3))


# ---------------------------------------------------------------------------- densify
@lru_cache(maxsize=8)
def _grid_uv(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    u.setflags(write=False)
    v.setflags(write=False)
    return u.ravel(), v.ravel()


def densify_keypoint_values(px: np.ndarray, values: np.ndarray, h: int, w: int,
                            max_dist_px: float) -> np.ndarray:
    """(h, w, C) float32: per pixel the value of the nearest keypoint, NaN beyond ``max_dist_px``.

    ``px`` (N, 2) keypoints (u, v) in this h x w grid's pixel coordinates, ``values`` (N, C) or
    (N,) (then C = 1). Spreads per-keypoint dynamic probability and velocity over the grid.

    The nearest keypoint comes from OpenCV's labelled distance transform (~0.2 ms at 160x120,
    ~20x faster than a k-d tree query of every pixel): keypoints are rounded to their pixel and
    the transform's metric approximates Euclidean, so where two keypoints are nearly
    equidistant (measured: distances within 1.2 px) either may win, i.e. region borders can
    shift by about a pixel. The ``max_dist_px`` cut uses the exact distance to the chosen
    keypoint.
    """
    px = np.asarray(px, np.float64).reshape(-1, 2)
    vals = np.asarray(values, np.float32)
    if vals.ndim == 1:
        vals = vals[:, None]
    if vals.shape[0] != px.shape[0]:
        raise ValueError(f"densify_keypoint_values: {px.shape[0]} keypoints, "
                         f"{vals.shape[0]} values")
    # Run the transform on a grid padded by the cut-off distance, so keypoints just outside the
    # image still compete with their true position; farther ones cannot be within the cut-off
    # of any pixel and are dropped (beyond a pad of max(h, w) they are clamped to its border).
    pad = int(min(np.ceil(max_dist_px) + 1, max(h, w)))
    H, W = h + 2 * pad, w + 2 * pad
    reach = pad + max_dist_px
    ok = (np.isfinite(px).all(1) & (px[:, 0] > -reach) & (px[:, 0] < w - 1 + reach)
          & (px[:, 1] > -reach) & (px[:, 1] < h - 1 + reach))
    px, vals = px[ok], vals[ok]
    if px.shape[0] == 0:
        return np.full((h, w, vals.shape[1]), np.nan, np.float32)
    iu = np.clip(np.rint(px[:, 0]) + pad, 0, W - 1).astype(np.int64)
    iv = np.clip(np.rint(px[:, 1]) + pad, 0, H - 1).astype(np.int64)
    lin = iv * W + iu
    owner = np.empty(H * W, np.int64)
    owner[lin] = np.arange(px.shape[0])        # several keypoints in one pixel: one of them
    mask = np.ones((H, W), np.uint8)
    mask.reshape(-1)[lin] = 0
    _, labels = cv2.distanceTransformWithLabels(mask, cv2.DIST_L2, cv2.DIST_MASK_5,
                                                labelType=cv2.DIST_LABEL_PIXEL)
    # DIST_LABEL_PIXEL numbers the zero pixels 1.. in raster order, i.e. sorted linear index.
    zero_pixels = np.unique(lin)
    labels = labels[pad:pad + h, pad:pad + w].reshape(-1)
    nearest = owner[zero_pixels[labels - 1]]
    gu, gv = _grid_uv(h, w)
    d2 = (gu - np.take(px[:, 0], nearest)) ** 2 + (gv - np.take(px[:, 1], nearest)) ** 2
    # One gather from the values with a NaN row appended (index n = beyond the cut-off): a
    # boolean-masked assignment of the (h w, C) output cost ~3x more.
    vals_nan = np.concatenate([vals, np.full((1, vals.shape[1]), np.nan, np.float32)])
    pick = np.where(d2 <= max_dist_px * max_dist_px, nearest, px.shape[0])
    return np.take(vals_nan, pick, axis=0).reshape(h, w, -1)


# ---------------------------------------------------------------------------- velocity
class TrackVelocity:
    """World velocity of tracked points from where the dense output puts them.

    Each dense frame hands in, per keypoint, its undistorted normalised image position, the
    camera centre, its world ray (scaled to unit camera depth), the depth of its pixel in the
    published depth image, whether that depth is observable there, and the moving region it
    lies in. A keypoint's velocity is the least-squares slope of its world positions over the
    last ``window_s`` seconds, at depths that combine two cues:

    - the depth *change* from the keypoint's image scale (looming): the image distances to its
      nearest keypoints in the same moving region scale as 1 / depth on a rigid object (median
      log ratio over the neighbours against each earlier frame). KLT positions make this
      precise, while the rendered depth of a moving point wanders by 3-10 % over a few frames
      (its mask and floor contact change), which a slope turns into large speeds along the ray;
    - the depth *level* from the published depth: the median over the last ``depth_window_s``
      of each observable sample's depth carried to this frame by the scale ratio. The
      positions are then those of the published points, with their noise averaged out.

    A keypoint with fewer than ``min_frames`` frames in the window, or frames spanning less than
    half of it (a new track, or one renamed after a slip: the caller's ids restart then), takes
    the median velocity of the known keypoints in its region (a rigid object moves as one).
    NaN (unknown): this frame's depth not observable, or neither a slope of its own nor a known
    region. Kept: per dense frame its arrays, at most ``depth_window_s`` old; everything is
    computed for all keypoints at once (Python only loops over the frames of the window to
    stack them)."""

    NEIGHBOURS = 8          # neighbours per keypoint for the image scale (median of their ratios)

    def __init__(self, window_s: float, depth_window_s: float, min_frames: int,
                 min_separation: float = 0.02):
        self.window_s = float(window_s)
        self.depth_window_s = max(float(depth_window_s), self.window_s)
        self.min_frames = int(min_frames)
        self.min_separation = float(min_separation)
        self._frames: deque = deque()

    def reset(self) -> None:
        self._frames.clear()

    def _neighbours(self, xn: np.ndarray, region: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(len(rows), k) indices of the keypoints ``rows``' nearest keypoints in their region
        (-1: none); pairs closer than ``min_separation`` (normalised units) are skipped: their
        ratio is mostly track noise."""
        nb = np.full((rows.size, self.NEIGHBOURS), -1, np.int64)
        cand = np.flatnonzero(region >= 0)
        if cand.size < 2 or rows.size == 0:
            return nb
        d2 = ((xn[rows][:, None, :] - xn[cand][None, :, :]) ** 2).sum(-1)
        d2[(region[rows][:, None] != region[cand][None, :]) | (d2 < self.min_separation ** 2)] = np.inf
        k = min(self.NEIGHBOURS, cand.size)
        pick = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < cand.size else np.argsort(d2, 1)
        nb[:, :k] = np.where(np.isfinite(np.take_along_axis(d2, pick, 1)), cand[pick], -1)
        return nb

    def update(self, time_s: float, ids: np.ndarray, xn: np.ndarray, centre: np.ndarray,
               rays: np.ndarray, depth: np.ndarray, ok: np.ndarray,
               region: np.ndarray) -> np.ndarray:
        """(N, 3) float32 velocity (world units / s, NaN = unknown) at ``time_s`` of the
        keypoints ``ids`` (N,) at normalised image positions ``xn`` (N, 2), seen from the camera
        centre ``centre`` (3,) along world ``rays`` (N, 3; camera z component 1) at ``depth``
        (N,); ``ok`` (N,): the depth is observable; ``region`` (N,): label of the moving region
        each lies in (-1: none). Only keypoints that are ``ok`` and in a region can be known."""
        ids = np.asarray(ids, np.int64)
        xn = np.asarray(xn, np.float64).reshape(-1, 2)
        rays = np.asarray(rays, np.float64).reshape(-1, 3)
        depth = np.asarray(depth, np.float64).reshape(-1)
        region = np.asarray(region, np.int64).reshape(-1)
        ok = np.asarray(ok, bool) & np.isfinite(depth) & (depth > 0)
        centre = np.asarray(centre, np.float64).reshape(3)
        if self._frames and self._frames[-1][0] >= time_s:      # time went back: start over
            self._frames.clear()
        while self._frames and self._frames[0][0] < time_s - self.depth_window_s:
            self._frames.popleft()
        order = np.argsort(ids)
        self._frames.append((float(time_s), centre, ids[order], xn[order], rays[order],
                             depth[order], ok[order]))
        vel = np.full((ids.size, 3), np.nan, np.float32)
        rows = np.flatnonzero(ok & (region >= 0))
        if rows.size == 0:
            return vel
        nb = self._neighbours(xn, region, rows)                       # (M, k)
        has_nb = nb >= 0
        # Every kept frame (this one last) as one id-sorted table: key = frame * 2^40 + id.
        frames = self._frames
        t = np.array([f[0] for f in frames]) - time_s                 # (F,)
        C = np.stack([f[1] for f in frames])                          # (F, 3)
        fi = np.arange(len(frames), dtype=np.int64)[:, None]
        keys = np.concatenate([f_i * _FRAME_KEY + f[2] for f_i, f in enumerate(frames)])
        T_xn = np.concatenate([f[3] for f in frames])
        T_D = np.concatenate([f[4] for f in frames])
        T_Z = np.concatenate([np.where(f[6], f[5], np.nan) for f in frames])
        k, hit = lookup(keys, fi * _FRAME_KEY + ids[rows][None, :])              # (F, M)
        kn, hitn = lookup(keys, fi[..., None] * _FRAME_KEY + ids[np.maximum(nb, 0)][None])  # (F, M, k)
        pair = hit[..., None] & hitn & has_nb[None]
        base = np.linalg.norm(xn[rows][:, None, :] - xn[np.maximum(nb, 0)], axis=-1)   # (M, k)
        dist = np.linalg.norm(T_xn[k][:, :, None, :] - T_xn[kn], axis=-1)               # (F, M, k)
        with np.errstate(divide="ignore", invalid="ignore"):
            # log(depth then / depth now) of each keypoint from its image scale change.
            rho = _nanmedian(np.where(pair & (dist > 0), np.log(base / dist), np.nan))   # (F, M)
            # Depth level now: each observed depth carried to this frame by its scale ratio.
            Z = np.where(hit, T_Z[k], np.nan)
            z_now = _nanmedian(Z * np.exp(-rho), axis=0)                               # (M,)
            tt = np.broadcast_to(t[:, None], rho.shape)
            near = np.isfinite(rho) & (tt >= -self.window_s)
            P = C[:, None, :] + (z_now * np.exp(np.where(near, rho, 0.0)))[..., None] * T_D[k]
            v = _slope(tt[..., None], P, near[..., None])
        span = -np.min(np.where(near, tt, 0.0), axis=0)
        good = np.isfinite(z_now) & (near.sum(0) >= self.min_frames) & (span >= 0.5 * self.window_s)
        # Tracks on moving objects are short-lived (KLT loses them at the object's edges, a
        # slip renames them): many observable ones are too young for a slope. A rigid object
        # moves as one, so they take the median velocity of their region's known keypoints.
        if good.any() and not good.all():
            med, has = _group_median(region[rows][good], v[good])
            j, hit_r = lookup(has, region[rows][~good])
            fill = np.flatnonzero(~good)[hit_r]
            v[fill] = med[j[hit_r]]
            good[fill] = True
        vel[rows[good]] = v[good]
        return vel


_FRAME_KEY = np.int64(1) << 40      # frame index stride of TrackVelocity's id keys (|ids| < 2^39)


def _group_median(labels: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per label, the median of each column of ``values`` (N, C): ((G, C) medians, (G,) sorted
    labels). Vectorised: one sort by (label, value) per column."""
    has, count = np.unique(labels, return_counts=True)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    lo, hi = start + (count - 1) // 2, start + count // 2
    out = np.empty((has.size, values.shape[1]))
    for c in range(values.shape[1]):
        o = np.lexsort((values[:, c], labels))
        v = values[o, c]
        out[:, c] = 0.5 * (v[lo] + v[hi])
    return out, has


def _nanmedian(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Median along ``axis`` ignoring NaN (NaN where all are). One sort (NaN sorts last) and two
    gathers: np.nanmedian runs a Python-level loop over the slices of arrays this small."""
    s = np.sort(np.moveaxis(x, axis, -1), axis=-1)
    n = np.isfinite(s).sum(-1)
    lo = np.maximum(n - 1, 0) // 2
    hi = n // 2
    m = 0.5 * (np.take_along_axis(s, lo[..., None], -1)[..., 0]
               + np.take_along_axis(s, np.minimum(hi, s.shape[-1] - 1)[..., None], -1)[..., 0])
    return np.where(n > 0, m, np.nan)


def _mean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean over axis 0 (NaN where the weights sum to 0)."""
    return (w * x).sum(0) / w.sum(0)


def _slope(t: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares slope of ``y`` over ``t`` along axis 0 (NaN without a time spread)."""
    dt = np.where(w, t - _mean(t, w), 0.0)
    return (dt * (y - _mean(y, w))).sum(0) / (dt * dt).sum(0)


# ---------------------------------------------------------------------------- static map
_KEY_BITS = 21                     # 3 x 21 bits in one int64: +-1M voxels per axis
_KEY_OFF = 1 << (_KEY_BITS - 1)
_KEY_MASK = (1 << _KEY_BITS) - 1


def _voxel_keys(xyz: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """Packed int64 voxel keys and the mask of points inside the representable range."""
    ijk = np.floor(xyz / voxel).astype(np.int64) + _KEY_OFF
    ok = ((ijk >= 0) & (ijk <= _KEY_MASK)).all(1)
    ijk = ijk[ok]
    return (ijk[:, 0] << (2 * _KEY_BITS)) | (ijk[:, 1] << _KEY_BITS) | ijk[:, 2], ok


class VoxelMap:
    """Bounded fused map of the static scene: one averaged point (position, colour) per voxel.

    Layout (all NumPy, no Python loop over points):
    - storage ``_val`` (7, capacity) float64, rows x, y, z, r, g, b (running means) and count,
      plus ``_stamp`` (insert counter of the last update, -1 = free slot) and ``_slot_key``;
      new voxels take free slots, evicted ones give them back, so existing voxels never move;
    - index: ``_key`` sorted packed int64 voxel keys and ``_slot`` their storage slots, so an
      insert is np.unique + searchsorted, and only these two 1-D arrays are merged.
    Above ``cloud_map_max_points`` voxels the ones updated longest ago are evicted (the map keeps
    where the camera has been recently).
    """

    _COUNT = 6

    def __init__(self, cfg=None):
        self.voxel = float(_cfg_get(cfg, "cloud_voxel_size"))
        self.max_points = int(_cfg_get(cfg, "cloud_map_max_points"))
        self.dynamic_threshold = float(_cfg_get(cfg, "cloud_dynamic_threshold"))
        self.clear()

    def clear(self) -> None:
        self._val = np.zeros((7, 0), np.float64)
        self._stamp = np.zeros(0, np.int64)
        self._slot_key = np.zeros(0, np.int64)
        self._free = np.zeros(0, np.int64)          # stack of free slots
        self._key = np.zeros(0, np.int64)
        self._slot = np.zeros(0, np.int64)
        self._inserts = 0

    def __len__(self) -> int:
        return int(self._key.size)

    def insert(self, cloud: Cloud) -> int:
        """Fuse the static points of ``cloud`` (dynamic <= threshold, finite); returns how many."""
        xyz = np.asarray(cloud.xyz, np.float64)
        ok = np.isfinite(xyz).all(1) & ~(np.asarray(cloud.dynamic) > self.dynamic_threshold)
        keys, inside = _voxel_keys(xyz[ok], self.voxel)
        if keys.size == 0:
            return 0
        pts = np.concatenate([xyz[ok][inside], unpack_rgb(np.asarray(cloud.rgb)[ok][inside])], 1)
        self._inserts += 1

        # Per-voxel sums of this insert: (6, U) for x, y, z, r, g, b.
        ukey, inv, n_new = np.unique(keys, return_inverse=True, return_counts=True)
        sums = np.stack([np.bincount(inv, pts[:, i], ukey.size) for i in range(6)])

        # Voxels already in the map: running means, mean += (sum - n mean) / (count + n).
        pos = np.searchsorted(self._key, ukey)
        hit = pos < self._key.size
        hit[hit] = self._key[pos[hit]] == ukey[hit]
        if hit.any():
            s, nh = self._slot[pos[hit]], n_new[hit].astype(np.float64)
            cols = self._val[:, s]
            tot = cols[self._COUNT] + nh
            cols[:6] += (sums[:, hit] - nh * cols[:6]) / tot
            cols[self._COUNT] = tot
            self._val[:, s] = cols
            self._stamp[s] = self._inserts

        miss = np.flatnonzero(~hit)[: self.max_points]   # one insert can't exceed the bound
        if miss.size:
            excess = self._key.size + miss.size - self.max_points
            if excess > 0:
                self._evict_oldest(excess)
            self._add(ukey[miss], sums[:, miss], n_new[miss].astype(np.float64))
        return int(keys.size)

    def _add(self, keys: np.ndarray, sums: np.ndarray, n: np.ndarray) -> None:
        k = keys.size
        if self._free.size < k:
            self._grow(k - self._free.size)
        slots = self._free[-k:]
        self._free = self._free[:-k]
        self._val[:6, slots] = sums / n
        self._val[self._COUNT, slots] = n
        self._stamp[slots] = self._inserts
        self._slot_key[slots] = keys
        # Merge into the sorted index: final position of new key i is its insertion point + i.
        at = np.searchsorted(self._key, keys) + np.arange(k)
        is_new = np.zeros(self._key.size + k, bool)
        is_new[at] = True
        is_old = ~is_new
        key = np.empty(is_new.size, np.int64)
        slot = np.empty(is_new.size, np.int64)
        key[is_new], key[is_old] = keys, self._key
        slot[is_new], slot[is_old] = slots, self._slot
        self._key, self._slot = key, slot

    def _grow(self, need: int) -> None:
        """Add storage slots (geometric growth, never beyond what max_points needs)."""
        cap = self._stamp.size
        new_cap = min(max(cap + need, 2 * cap, 1024), self.max_points)
        new_cap = max(new_cap, cap + need)
        val = np.zeros((7, new_cap), np.float64)
        val[:, :cap] = self._val
        self._val = val
        self._stamp = np.concatenate([self._stamp, np.full(new_cap - cap, -1, np.int64)])
        self._slot_key = np.concatenate([self._slot_key, np.zeros(new_cap - cap, np.int64)])
        # Reversed so that slots are handed out in increasing order (pop from the end).
        self._free = np.concatenate([np.arange(new_cap - 1, cap - 1, -1), self._free])

    def _evict_oldest(self, n: int) -> None:
        """Drop the ``n`` voxels with the oldest stamps (ties: lowest slots first)."""
        live = np.flatnonzero(self._stamp >= 0)
        stamp = self._stamp[live]
        lo = int(stamp.min())
        per_stamp = np.cumsum(np.bincount(stamp - lo))
        cut = int(np.searchsorted(per_stamp, n))          # stamps < lo + cut all go
        drop = stamp < lo + cut
        short = n - (int(per_stamp[cut - 1]) if cut > 0 else 0)
        if short > 0:                                     # and part of the boundary stamp
            drop[np.flatnonzero(stamp == lo + cut)[:short]] = True
        slots = live[drop]
        gone = np.searchsorted(self._key, self._slot_key[slots])   # exact: they are present
        keep = np.ones(self._key.size, bool)
        keep[gone] = False
        self._key, self._slot = self._key[keep], self._slot[keep]
        self._stamp[slots] = -1
        self._free = np.concatenate([self._free, slots[::-1]])

    def cloud(self) -> Cloud:
        """The map as a :class:`Cloud` (dynamic = 0, velocity = 0), ordered by voxel key."""
        n = self._key.size
        xyz = np.empty((n, 3), np.float32)
        rgb = np.empty((n, 3), np.uint8)
        for r in range(3):      # row-wise 1-D gathers: much faster than one 2-D fancy index
            xyz[:, r] = self._val[r].take(self._slot)
            rgb[:, r] = np.clip(np.rint(self._val[3 + r].take(self._slot)), 0, 255)
        return Cloud(xyz, pack_rgb(rgb), np.zeros(n, np.float32), np.zeros((n, 3), np.float32))

    @property
    def counts(self) -> np.ndarray:
        """Points fused into each voxel (same order as :meth:`cloud`)."""
        return self._val[self._COUNT, self._slot].astype(np.int64)

    @property
    def stamps(self) -> np.ndarray:
        """Insert counter of each voxel's last update (same order as :meth:`cloud`)."""
        return self._stamp[self._slot].copy()
