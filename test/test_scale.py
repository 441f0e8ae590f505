import numpy as np

from sirenpose_ros.core.config import Config
from sirenpose_ros.core.params import validate
from sirenpose_ros.core.scale import PARAMS, ScaleEstimator


def _cfg(**kw):
    return Config(validate(PARAMS, kw))


def test_depth_scale_is_the_robust_ratio():
    rng = np.random.default_rng(0)
    est = ScaleEstimator(_cfg(scale_source="depth", scale_min_frames=3))
    assert est.scale is None
    for _ in range(3):
        z = rng.uniform(0.5, 2.0, 300)
        metric = 2.5 * z
        metric[:30] = rng.uniform(0.2, 10, 30)         # 10% outliers
        est.add_depth(z, metric)
    assert abs(est.scale - 2.5) < 0.02
    assert est.add_depth(np.ones(5), np.ones(5)) is None   # too few points: no sample


def test_ground_plane_scale_from_known_height():
    rng = np.random.default_rng(1)
    true_scale, height_m = 0.4, 1.2                    # 1 unit = 0.4 m; camera 1.2 m up
    h_units = height_m / true_scale
    up = np.array([0.0, -np.cos(0.2), -np.sin(0.2)])   # optical y points down, camera pitched
    # Ground points: a plane at distance h_units below the camera, plus clutter above it.
    e1 = np.cross(up, [1.0, 0, 0]); e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    uv = rng.uniform(-5, 5, (400, 2))
    ground = -h_units * up + uv[:, :1] * e1 + uv[:, 1:] * e2 + rng.normal(0, 0.005, (400, 3))
    clutter = rng.uniform(-3, 3, (100, 3))
    est = ScaleEstimator(_cfg(scale_source="camera_height", scale_camera_height=height_m, scale_min_frames=1))
    s = est.add_ground(np.vstack([ground, clutter]), up, rng)
    assert s is not None and abs(s - true_scale) / true_scale < 0.02
    assert est.scale == s


def test_fixed_scale_does_not_move_and_reset_clears():
    est = ScaleEstimator(_cfg(scale_min_frames=1, scale_update=False))
    est.add_depth(np.ones(50), 2 * np.ones(50))
    assert est.scale == 2.0
    est.add_depth(np.ones(50), 3 * np.ones(50))
    assert est.scale == 2.0
    est.reset()
    assert est.scale is None
