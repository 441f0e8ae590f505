"""Far bounds: static tracks too far to triangulate still say "at least this far".

Early in a sequence only the near structure has enough parallax to become landmarks; fitted to
those alone the field filled the far wall with the depth of floor and ceiling (easy, frames
4-21: delta<1.25 about 0.3). The window turns each untriangulated track's small parallax over
the known baseline into an upper bound on its inverse depth, and the field takes it as a
one-sided sample.
"""
import numpy as np
import torch

from sirenpose_ros.core import geometry as geo
from sirenpose_ros.core import window
from sirenpose_ros.core.config import make_config
from sirenpose_ros.core.field import DepthFieldEstimator


def _inv_truth(u, v):
    """Near bands at the top and bottom (inverse depth 0.5), a far middle band (0.1)."""
    return np.where(np.abs(v) > 0.5, 0.5, 0.1)


def _fit(with_bounds: bool) -> np.ndarray:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    f = DepthFieldEstimator(make_config({"field_device": "cpu"}))
    for k in range(12):
        uv = rng.uniform(-1, 1, (200, 2)).astype(np.float32)
        inv = _inv_truth(uv[:, 0], uv[:, 1]).astype(np.float32)
        near = np.abs(uv[:, 1]) > 0.5          # only the near bands have landmarks
        bound = ~near
        # The far band's bound is loose (1.3x the truth), as from parallax plus an allowance.
        inv = np.where(bound, 1.3 * inv, inv).astype(np.float32)
        keep = near | (bound & with_bounds)
        f.update(k / 30, uv[keep], inv[keep], np.ones(int(keep.sum()), np.float32),
                 bound=bound[keep], steps=40)
    return f.render(11 / 30, 30, 40)


def test_far_bounds_keep_the_untriangulated_band_far():
    mid = slice(12, 18)                         # rows with |v| < 0.2
    with_b = _fit(True)[mid]
    without = _fit(False)[mid]
    # Without bounds the middle band interpolates the near bands (inverse depth ~0.5); with them
    # it stays at or beyond the bound (0.13).
    assert np.median(without) > 0.3
    assert np.median(with_b) < 0.16


def _window_with_keyframe(T_cw1, ids, xn1, f=300.0):
    est = window.SlidingWindowEstimator(make_config({}))
    est.keyframes = [window.Keyframe(0, T_cw1, ids, xn1)]
    est.lm_ids = np.zeros(0, np.int64)
    est._f = f
    return est


def test_window_far_bound_is_valid_and_respects_the_aperture():
    rng = np.random.default_rng(1)
    n = 200
    # World points 3 .. 40 m in front of a camera that then moves 0.2 m sideways.
    z = rng.uniform(3.0, 40.0, n)
    X = np.column_stack([rng.uniform(-0.5, 0.5, n) * z, rng.uniform(-0.4, 0.4, n) * z, z])
    T_cw1 = np.eye(4)
    T_wc2 = np.eye(4)
    T_wc2[:3, 3] = [0.2, 0.0, 0.0]
    T_cw2 = geo.invert(T_wc2)
    noise = 0.2 / 300.0                         # 0.2 px track noise per view
    xn1 = X[:, :2] / X[:, 2:] + rng.normal(0, noise, (n, 2))
    Xc2 = geo.transform(T_cw2, X)
    xn2 = Xc2[:, :2] / Xc2[:, 2:] + rng.normal(0, noise, (n, 2))
    ids = np.arange(n)
    est = _window_with_keyframe(T_cw1, ids, xn1)
    inv_true = 1.0 / Xc2[:, 2]
    b = est.far_bounds(ids, xn2, T_wc2, allowance_px=1.0)
    ok = np.isfinite(b)
    assert ok.mean() > 0.9
    # Valid: nearer than the truth only where the noise exceeds the 1 px allowance, and then
    # by little.
    assert np.mean(b[ok] < inv_true[ok]) < 0.02
    assert np.all(b[ok] > 0.9 * inv_true[ok])
    far = ok & (Xc2[:, 2] > 20)
    assert np.median(b[far]) < 0.1                  # and informative: > 10 m for far points
    # A track on a horizontal edge (gradient only in y) cannot measure horizontal parallax:
    # no bound. A corner (gradient in x and y) keeps it.
    edge = np.tile([0.0, 0.0, 1.0], (n, 1))
    corner = np.tile([1.0, 0.0, 1.0], (n, 1))
    assert np.isnan(est.far_bounds(ids, xn2, T_wc2, 1.0, edge, 0.2)).all()
    assert np.isfinite(est.far_bounds(ids, xn2, T_wc2, 1.0, corner, 0.2)).sum() == ok.sum()
    # Landmarks get no bound (they have a depth), nor does a camera that has not moved.
    est.lm_ids = ids[:50]
    assert np.isnan(est.far_bounds(ids, xn2, T_wc2, 1.0)[:50]).all()
    assert np.isnan(est.far_bounds(ids, xn1, np.eye(4), 1.0)).all()


def test_a_satisfied_far_bound_costs_nothing():
    torch.set_num_threads(1)
    rng = np.random.default_rng(2)
    f = DepthFieldEstimator(make_config({"field_device": "cpu"}))
    for k in range(6):
        uv = rng.uniform(-1, 1, (100, 2)).astype(np.float32)
        # Depth samples at inverse depth 0.2 and, at the same pixels, bounds "at most 0.5":
        # as ordinary samples the bounds would pull the field to ~0.32.
        f.update(k / 30, np.concatenate([uv, uv]), np.r_[np.full(100, 0.2), np.full(100, 0.5)]
                 .astype(np.float32), np.ones(200, np.float32),
                 bound=np.r_[np.zeros(100, bool), np.ones(100, bool)], steps=30)
    assert abs(np.median(f.render(5 / 30, 10, 10)) / 0.2 - 1) < 0.05
