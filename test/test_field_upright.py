"""Upright-occluder bound: a moving object is in front of the floor hidden behind its lowest
pixels, for its whole column.

The field has no keypoint depth on moving objects and renders the background they hide; for a
person close to the camera that is the far wall (close_object: dynamic pixels 3.5x too far).
"""
import numpy as np

from sirenpose_ros.core.field import upright_occluder_bound


def _room(h=40, w=50):
    """Rendered background: wall at 8 m in the upper half, floor coming nearer towards the
    bottom row (8 m at the horizon -> 2 m)."""
    rows = np.arange(h, dtype=np.float32)[:, None]
    floor = 8.0 / (1.0 + 3.0 * np.clip(rows - h / 2, 0, None) / (h / 2))
    return np.broadcast_to(np.where(rows < h / 2, 8.0, floor), (h, w)).astype(np.float32)


def test_object_takes_the_floor_depth_behind_its_lowest_pixels():
    bg = _room()
    dyn = np.zeros_like(bg, bool)
    dyn[8:30, 10:20] = True                   # a standing object: top over the wall, foot on the floor
    out = upright_occluder_bound(bg, dyn)
    np.testing.assert_allclose(out[8:30, 10:20], np.broadcast_to(bg[29, 10:20], (22, 10)))
    assert out[10, 15] < 0.7 * bg[10, 15]      # the wall behind its top is no longer its depth
    np.testing.assert_array_equal(out[~dyn], bg[~dyn])     # static pixels untouched
    assert np.all(out <= bg)                   # a bound: never farther


def test_runs_and_columns_are_separate_and_only_lower_pixels_bound():
    bg = _room()
    dyn = np.zeros_like(bg, bool)
    dyn[2:6, 5] = True                         # a run on the wall ...
    dyn[25:35, 5] = True                       # ... and one on the floor, same column
    dyn[30:39, 6] = True                       # neighbouring column, lower foot
    out = upright_occluder_bound(bg, dyn)
    np.testing.assert_array_equal(out[2:6, 5], bg[2:6, 5])           # wall run keeps 8 m
    np.testing.assert_allclose(out[25:35, 5], bg[34, 5])
    np.testing.assert_allclose(out[30:39, 6], bg[38, 6])
    # A run is bounded by what lies below each pixel, not above: a near value at the top of a
    # run does not pull the rest in.
    d = bg.copy()
    d[25, 5] = 1.0
    out2 = upright_occluder_bound(d, dyn)
    assert out2[25, 5] == 1.0 and np.allclose(out2[26:35, 5], bg[34, 5])


def test_nothing_dynamic_or_nan_depth():
    bg = _room()
    np.testing.assert_array_equal(upright_occluder_bound(bg, np.zeros_like(bg, bool)), bg)
    d = bg.copy()
    d[30:, 7] = np.nan
    dyn = np.zeros_like(bg, bool)
    dyn[20:, 7] = True
    out = upright_occluder_bound(d, dyn)
    assert np.isnan(out[30:, 7]).all()                          # unknown stays unknown
    np.testing.assert_allclose(out[20:30, 7], bg[29, 7])        # bounded by the known part
