"""New landmarks must agree with every window keyframe that saw their track, not only with the two
(oldest, newest) they are triangulated from.

A point moving along the camera's baseline stays on its epipolar lines: two views triangulate it
cleanly, at a wrong depth (close_object seed 2: two object points became landmarks 8-14x too near
at a keyframe, and the pose traded the lateral translation for rotation: 2.7 % ATE). A keyframe in
between, off the straight line, sees it where no static point at that depth would be."""
import numpy as np

from sirenpose_ros.core import geometry as geo
from sirenpose_ros.core import window
from sirenpose_ros.core.config import Config
from sirenpose_ros.core.params import validate

F = 250.0


def _window(**kw):
    w = window.SlidingWindowEstimator(Config(validate(window.PARAMS, kw)))
    w._f = F
    return w


def _scene(seed=0, n_static=60, n_moving=20):
    rng = np.random.default_rng(seed)
    X = np.c_[rng.uniform(-2, 2, n_static + n_moving), rng.uniform(-1.5, 1.5, n_static + n_moving),
              rng.uniform(4, 6, n_static + n_moving)]
    moving = np.arange(n_static + n_moving) >= n_static
    # Camera centres: along x with the middle keyframe off the line (a real path is not straight).
    C = np.array([[0.0, 0.0, 0.0], [0.15, 0.15, 0.0], [0.3, 0.0, 0.0]])
    keyframes = []
    for k, c in enumerate(C):
        Xk = X + moving[:, None] * np.array([0.1 * k, 0.0, 0.0])    # moving points drift along x
        T_cw = geo.invert(geo.make_T(np.eye(3), c))
        xn, _ = geo.project(T_cw, Xk)
        ids = np.arange(len(X), dtype=np.int64)
        keyframes.append(window.Keyframe(k, T_cw, ids, xn))
    return keyframes, moving


def _triangulated(w, keyframes):
    w.keyframes = keyframes
    w._sigma2 = 0.05            # tracking residual variance at its floor (0.22 px), as when tracked
    last = keyframes[-1]
    w._triangulate_new(last.ids, last.xn, np.zeros(last.ids.size))
    return w.lm_ids


def test_points_moving_along_the_baseline_do_not_become_landmarks():
    keyframes, moving = _scene()
    lm = _triangulated(_window(), keyframes)
    assert np.isin(np.flatnonzero(~moving), lm).mean() > 0.95     # static points: landmarks
    assert not np.isin(np.flatnonzero(moving), lm).any()          # moving ones: none


def test_two_views_alone_accept_the_moving_points():
    """Without the check (the old behaviour) the moving points pass every two-view test: the
    test above can fail."""
    keyframes, moving = _scene()
    lm = _triangulated(_window(window_tri_check_window=False), keyframes)
    assert np.isin(np.flatnonzero(moving), lm).mean() > 0.9


def _far_views(seed=0, n=40):
    """Two keyframes 0.1 m apart along x. Clean tracks of points 8-10 m away (parallax 0.57-0.72
    degrees, 2.5-3.1 px), and drifting tracks of points 25 m away (true parallax 1 px) whose second
    observation slid by 1.5 px along the epipolar line and 1 px across it: their measured parallax
    (~0.57 degrees) passes window_tri_min_parallax_deg like the clean ones."""
    rng = np.random.default_rng(seed)
    X_clean = np.c_[rng.uniform(-3, 3, n), rng.uniform(-2, 2, n), rng.uniform(8, 10, n)]
    X_drift = np.c_[rng.uniform(-6, 6, n), rng.uniform(-4, 4, n), np.full(n, 25.0)]
    X = np.r_[X_clean, X_drift]
    drift = np.arange(2 * n) >= n
    keyframes = []
    for k, c in enumerate([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]]):
        T_cw = geo.invert(geo.make_T(np.eye(3), np.array(c)))
        xn, _ = geo.project(T_cw, X)
        if k == 1:      # the camera moved +x: image points move -x along the epipolar lines
            xn[drift] += np.array([-1.5, 1.0]) / F
        keyframes.append(window.Keyframe(k, T_cw, np.arange(2 * n, dtype=np.int64), xn))
    return keyframes, drift, X


def test_drifting_far_tracks_do_not_become_landmarks():
    keyframes, drift, _ = _far_views()
    lm = _triangulated(_window(), keyframes)
    assert np.isin(np.flatnonzero(~drift), lm).mean() > 0.95      # clean: landmarks
    assert not np.isin(np.flatnonzero(drift), lm).any()           # drifting: none


def test_parallax_gate_alone_accepts_drifting_tracks_too_near():
    """Without the depth-uncertainty gate (the old behaviour) the drifting tracks become
    landmarks at less than half their depth: the test above can fail."""
    keyframes, drift, X = _far_views()
    w = _window(window_tri_max_depth_error=100.0)
    lm = _triangulated(w, keyframes)
    got = np.isin(np.flatnonzero(drift), lm)
    assert got.mean() > 0.9
    k = np.searchsorted(w.lm_ids, np.flatnonzero(drift)[got])
    assert np.median(w.lm_X[k, 2] / X[drift][got, 2]) < 0.5
