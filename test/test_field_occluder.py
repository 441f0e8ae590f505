"""Dense depth of moving objects: the occluder bound (field.occluder_depth_bound) and its use in
the dense stage (core/dense.py). Moving objects have no keypoint depth, so the field renders the background behind
them; an object occludes that background, so its depth must not exceed the depth around it."""
import types

import cv2
import numpy as np

from sirenpose_ros.core.camera import CameraModel
from sirenpose_ros.core.config import make_config
from sirenpose_ros.core.dense import DenseInput, DenseStage
from sirenpose_ros.core.field import occluder_depth_bound


def _reference_bound(depth, dyn, q, rim_px):
    """Per-component loop with an exact Euclidean rim: what the vectorised version must match."""
    n, lab = cv2.connectedComponents(dyn.astype(np.uint8), connectivity=8)
    yy, xx = np.mgrid[: depth.shape[0], : depth.shape[1]]
    out = depth.copy()
    for c in range(1, n):
        py, px = np.nonzero(lab == c)
        others = np.nonzero(dyn & (lab != c))
        d_self = np.min((yy[..., None] - py) ** 2 + (xx[..., None] - px) ** 2, axis=-1)
        d_other = (np.min((yy[..., None] - others[0]) ** 2 + (xx[..., None] - others[1]) ** 2,
                          axis=-1) if others[0].size else np.full(depth.shape, np.inf))
        rim = ~dyn & (d_self <= rim_px ** 2) & (d_self < d_other) & np.isfinite(depth)
        if rim.any():
            v = np.sort(depth[rim])
            out[lab == c] = np.minimum(depth[lab == c], v[int(np.floor(q / 100 * (v.size - 1)))])
    return out


def test_each_dynamic_region_is_capped_by_its_own_rim():
    h, w = 40, 60
    depth = np.full((h, w), 6.0, np.float32)            # far wall
    depth[30:] = np.linspace(4.0, 2.0, 10)[:, None]       # floor, nearer towards the bottom
    depth[5:28, 40:50] = 3.0                              # a static box next to region b
    dyn = np.zeros((h, w), bool)
    dyn[10:30, 5:20] = True                               # region a: wall around it, floor below
    dyn[14:22, 36:40] = True                              # region b: wall and the static box
    out = occluder_depth_bound(depth, dyn, percentile=10.0, rim_px=3.0)
    ref = _reference_bound(depth, dyn, 10.0, 3.0)
    # Static pixels never change; dynamic ones only get nearer.
    assert np.array_equal(out[~dyn], depth[~dyn])
    assert np.all(out[dyn] <= depth[dyn])
    # Region a touches the floor's top rows (4 m): capped below the 6 m wall behind it.
    a = out[10:30, 5:20]
    assert np.allclose(a, a[0, 0]) and 3.5 <= a[0, 0] <= 4.0
    # Region b is bounded by its own rim (the 3 m box within reach), not by region a's floor.
    assert np.allclose(out[14:22, 36:40], 3.0)
    # The vectorised labelling agrees with a per-region loop (up to the distance metric).
    assert np.allclose(out, ref, atol=1e-5)


def test_no_rim_no_dynamic_or_nan_leaves_depth_unchanged():
    depth = np.full((10, 12), 5.0, np.float32)
    assert np.array_equal(occluder_depth_bound(depth, np.zeros_like(depth, bool), 10, 2), depth)
    assert np.array_equal(occluder_depth_bound(depth, np.ones_like(depth, bool), 10, 2), depth)
    nan = np.full_like(depth, np.nan)
    dyn = np.zeros_like(depth, bool)
    dyn[3:6, 3:6] = True
    assert np.all(np.isnan(occluder_depth_bound(nan, dyn, 10, 2)))


class _FlatField:
    """A field that renders one depth everywhere: what the SIREN gives over a moving object
    with no keypoint depth in front of a background (the wall)."""
    device = types.SimpleNamespace(type="cpu")
    fitted = True

    def __init__(self, rows_depth):
        self.rows_depth = rows_depth

    def update(self, *a, **k):
        return {}

    def render(self, time_s, h, w):
        return (1.0 / np.repeat(np.interp(np.arange(h), [0, h - 1], self.rows_depth)[:, None],
                                w, 1)).astype(np.float32)


def _dense_once(bound: bool, upright: bool = False):
    cfg = make_config({"field_occluder_bound": bound, "field_upright_occluder": upright,
                       "cloud_enabled": False})
    stage = DenseStage(cfg)
    stage.field = _FlatField([6.0, 2.0])                  # depth 6 m at the top, 2 m at the bottom
    stage.world = 0
    W, H = 160, 120
    cam = CameraModel.pinhole(W, H, 128.0, 128.0, 79.5, 59.5)
    # Keypoints on a grid; those in the upper middle are dynamic (a moving object).
    gx, gy = np.meshgrid(np.arange(4, W, 8), np.arange(4, H, 8))
    px = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64)
    dynamic = (px[:, 0] > 50) & (px[:, 0] < 110) & (px[:, 1] > 20) & (px[:, 1] < 70)
    p_dyn = np.where(dynamic, 0.95, 0.05)
    xn = np.stack([(px[:, 0] - 79.5) / 128.0, (px[:, 1] - 59.5) / 128.0], 1)
    result = stage.run(DenseInput(0, 0, cam, W, xn, p_dyn, np.arange(len(px)),
                                  np.where(dynamic, np.nan, 4.0), np.eye(4), False, None))
    h, w = result.depth.shape
    rows = ((np.arange(h) * (H - 1) / (h - 1))[:, None] > 30) & ((np.arange(h) * (H - 1) / (h - 1))[:, None] < 60)
    cols = ((np.arange(w) * (W - 1) / (w - 1))[None, :] > 60) & ((np.arange(w) * (W - 1) / (w - 1))[None, :] < 100)
    inside = rows & cols                                  # well inside the dynamic region
    below = np.broadcast_to(((np.arange(h) * (H - 1) / (h - 1)) > 95)[:, None], (h, w))
    return result.depth, inside, below


def test_pipeline_caps_moving_objects_at_their_surroundings():
    old, inside, below = _dense_once(bound=False)
    new, _, _ = _dense_once(bound=True)
    # Without the bound the object shows the field's background (the wall's depth at each
    # row); with it, the whole object sits at the nearest part of its surroundings (the floor
    # rows just below it), i.e. nearer than any background pixel it was showing.
    assert np.all(new <= old + 1e-6)
    assert np.nanmax(new[inside]) < np.nanmin(old[inside]) - 0.3
    assert np.array_equal(new[below], old[below])


def test_pipeline_upright_bound_caps_moving_objects_by_the_floor_below():
    old, inside, below = _dense_once(bound=False)
    new, _, _ = _dense_once(bound=False, upright=True)
    # The field's background comes nearer towards the bottom (floor): each object column takes
    # the depth at the object's lowest pixel, nearer than anything it showed higher up.
    assert np.all(new <= old + 1e-6)
    assert np.nanmax(new[inside]) < np.nanmin(old[inside]) - 0.3
    assert np.array_equal(new[below], old[below])
