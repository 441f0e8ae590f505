"""KLT frontend at a moving object's edge: tracks whose window straddles the edge are dropped.

A 21 px KLT window centred on background a few pixels from a textured object follows the object
(its texture dominates the window) while the keypoint's own pixel is background: the track then
measures neither surface, and the benchmark counted it as a static keypoint wrongly flagged
dynamic. The centre check (frontend_center_window_px) re-tracks each keypoint with a small window
and drops it when the two answers disagree.
"""
import cv2
import numpy as np
import pytest

from sirenpose_ros.core import frontend
from sirenpose_ros.core.config import Config
from sirenpose_ros.core.params import validate

H, W = 240, 320
X0, Y0, SIDE = 110, 70, 100        # the square in the first frame (pixels)


def _texture(h, w, seed, sigma, lo, hi):
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), sigma)
    return (t - t.min()) / (t.max() - t.min()) * (hi - lo) + lo


def _frame(bg, square, x):
    """Static background with the (stronger-textured) square pasted at column x."""
    img = bg.copy()
    img[Y0:Y0 + SIDE, x:x + SIDE] = square
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _one_step(seed, dx, **overrides):
    """Track one frame in which the square moves dx pixels right. -> (first px, tracking error
    against the motion of the keypoint's own pixel, window on one surface only) of the tracks
    that survived."""
    bg = _texture(H, W, seed, 2.0, 60, 190)
    square = _texture(SIDE, SIDE, seed + 10, 1.5, 0, 255)
    fe = frontend.KLTFrontend(Config(validate(frontend.PARAMS, overrides)))
    t0 = fe.track(_frame(bg, square, X0))
    t1 = fe.track(_frame(bg, square, X0 + dx))
    _, i0, i1 = np.intersect1d(t0.ids, t1.ids, return_indices=True)
    p0, p1 = t0.px[i0], t1.px[i1]
    u, v = p0[:, 0], p0[:, 1]
    on_square = (u >= X0 - 0.5) & (u < X0 + SIDE - 0.5) & (v >= Y0 - 0.5) & (v < Y0 + SIDE - 0.5)
    truth = np.where(on_square[:, None], np.float32([dx, 0]), np.float32([0, 0]))
    err = np.linalg.norm(p1 - p0 - truth, axis=1)
    half = 15     # more than half the KLT window plus the motion: the window sees one surface
    near_edge = ((u > X0 - half) & (u < X0 + SIDE + half) & (v > Y0 - half) & (v < Y0 + SIDE + half)
                 & ~((u > X0 + half) & (u < X0 + SIDE - half) & (v > Y0 + half) & (v < Y0 + SIDE - half)))
    return p0, err, ~near_edge


@pytest.mark.parametrize("seed, dx", [(1, 3), (0, 5)])
def test_tracks_straddling_a_moving_edge_are_dropped(seed, dx):
    # Without the check the scene does produce tracks that follow the wrong surface.
    _, err_off, one_off = _one_step(seed, dx, frontend_center_window_px=0)
    assert np.count_nonzero(err_off > 1.0) >= 5
    _, err_on, one_on = _one_step(seed, dx)
    # With it, (almost) every surviving track follows its own pixel's surface...
    assert np.count_nonzero(err_on > 1.0) <= 1
    # ...and tracks whose window sees one surface are not touched: same survivors, same error.
    assert np.count_nonzero(one_on) == np.count_nonzero(one_off)
    assert np.max(err_on[one_on]) < 0.05
