"""Velocities of the dense clouds' moving points (cloud.TrackVelocity and its use in
core/dense.py): from where the published depth puts a keypoint, with its image scale for the
depth change; NaN (unknown) where the depth is not observable; 0 for static points.

They used to be the joint refinement's keypoint velocities, whose depth of a moving point is not
observable: 1.4-2.5x off in size (scripts/velocity_check.py)."""
import numpy as np

from sirenpose_ros.core.camera import CameraModel
from sirenpose_ros.core.cloud import TrackVelocity
from sirenpose_ros.core.config import make_config
from sirenpose_ros.core.dense import DenseInput, DenseStage

from test_field_ground import _WallField     # the field extrapolating a wall over everything

DT = 1.0 / 30.0


def _square(centre, half=0.3, n=5):
    """(n*n, 3) points of an upright square facing the camera (z const) around ``centre``."""
    g = np.linspace(-half, half, n)
    gx, gy = np.meshgrid(g, g)
    return np.asarray(centre) + np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], 1)


def _observe(tv, k, X, depth_noise, ok=None, ids=None, region=None, C=np.zeros(3)):
    """One frame of points X (world = camera orientation, camera at C) into ``tv``."""
    Xc = X - C
    xn = Xc[:, :2] / Xc[:, 2:]
    z = Xc[:, 2] * depth_noise
    n = len(X)
    return tv.update(k * DT, np.arange(n) if ids is None else ids, xn, C,
                     np.column_stack([xn, np.ones(n)]), z,
                     np.ones(n, bool) if ok is None else ok,
                     np.zeros(n, np.int64) if region is None else region)


def test_a_rigid_object_gets_its_velocity_despite_depth_noise():
    """A square approaching the camera and moving sideways, seen by a camera that moves too,
    with the published depth wandering by +-8 % from frame to frame: the velocity is right to a
    few percent, where a slope of the noisy positions over the same window is off by ~100 %."""
    rng = np.random.default_rng(0)
    v_true = np.array([0.5, 0.0, -0.8])
    cam_v = np.array([0.2, 0.0, 0.3])
    tv = TrackVelocity(window_s=0.3, depth_window_s=1.0, min_frames=4)
    P0 = _square([0.0, 0.2, 5.0])
    raw = []
    for k in range(30):
        X = P0 + v_true * k * DT
        C = cam_v * k * DT
        noise = np.exp(rng.normal(0.0, 0.08, len(X)))
        vel = _observe(tv, k, X, noise, C=C)
        raw.append(C + (X - C) * noise[:, None])
    assert np.isfinite(vel).all()
    np.testing.assert_allclose(np.median(vel, 0), v_true, atol=0.06)
    assert np.linalg.norm(vel - v_true, axis=1).max() < 0.15 * np.linalg.norm(v_true)
    # What the noisy positions alone give over the same window (the old way's best case).
    t = np.arange(21, 30) * DT
    P = np.stack(raw[21:30])
    slope = ((t - t.mean())[:, None, None] * (P - P.mean(0))).sum(0) / ((t - t.mean()) ** 2).sum()
    assert np.median(np.linalg.norm(slope - v_true, axis=1)) > 0.5 * np.linalg.norm(v_true)


def test_unknown_where_depth_is_not_observable_or_history_too_short():
    tv = TrackVelocity(window_s=0.3, depth_window_s=1.0, min_frames=4)
    v_true = np.array([0.4, 0.0, 0.0])
    P0 = np.concatenate([_square([-1.0, 0.0, 4.0]), _square([1.0, 0.0, 4.0])])
    region = np.repeat([0, 1], 25)
    ok = np.ones(50, bool)
    ok[3] = False                      # its pixel's depth is not observable: unknown
    ids = np.arange(50)
    for k in range(12):
        if k == 11:
            # Object 1's tracks are all renamed (a slip / reset): no history of their own, no
            # known neighbour in their region -> unknown; on object 0 one track is renamed and
            # takes its region's velocity.
            ids = ids.copy()
            ids[25:] += 1000
            ids[7] = 5000
        vel = _observe(tv, k, P0 + v_true * k * DT, np.ones(50), ok=ok, ids=ids, region=region)
    assert np.isnan(vel[3]).all()
    assert np.isnan(vel[25:]).all()
    known = np.setdiff1d(np.arange(25), [3])
    np.testing.assert_allclose(vel[known], np.broadcast_to(v_true, (24, 3)), atol=0.02)
    # Time going backwards (a bag loop) starts over: nothing known.
    assert np.isnan(_observe(tv, 3, P0, np.ones(50), region=region)).all()


# ---------------------------------------------------------------------------- dense stage
W, H, F = 160, 120, 128.0
CX, CY = 79.5, 59.5
CAM_HEIGHT = 1.5          # camera above the floor (world y is down, as the camera's)


def _box_points(x0, z, width, top):
    """World points of an upright box face at depth z standing on the floor: a grid from its
    bottom edge (floor) up to height ``top`` above the floor, x in [x0, x0 + width]."""
    gx, gy = np.meshgrid(np.linspace(x0, x0 + width, 7), np.linspace(CAM_HEIGHT - 0.02, CAM_HEIGHT - top, 9))
    return np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, z)], 1)


def _job(k, v):
    """Frame k: static floor keypoints (landmark depth from the plane) and wall keypoints (6 m);
    a box on the floor at 4 m moving with velocity v, its base in view; a second box close to
    the camera reaching below the image bottom (where it stands is not seen)."""
    cam = CameraModel.pinhole(W, H, F, F, CX, CY)
    gx, gy = np.meshgrid(np.arange(4, W, 10), np.arange(4, H, 10))
    px = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64)
    xn_s = np.stack([(px[:, 0] - CX) / F, (px[:, 1] - CY) / F], 1)
    floor = np.where(xn_s[:, 1] > 0, CAM_HEIGHT / np.maximum(xn_s[:, 1], 1e-9), np.inf)
    depth_s = np.minimum(floor, 6.0)
    box = _box_points(-0.6, 4.0, 0.6, 1.0) + v * k * DT
    near = _box_points(0.3, 1.6, 0.5, 1.0)
    near[:, 0] += 0.3 * k * DT
    X = np.concatenate([box, near])
    xn_d = X[:, :2] / X[:, 2:]
    keep_s = np.ones(len(px), bool)
    for xd in (xn_d[: len(box)], xn_d[len(box):]):    # no static keypoints on the objects
        lo, hi = xd.min(0) - 6 / F, xd.max(0) + 6 / F
        keep_s &= ~((xn_s[:, 0] > lo[0]) & (xn_s[:, 0] < hi[0]) & (xn_s[:, 1] > lo[1]) & (xn_s[:, 1] < hi[1]))
    xn = np.concatenate([xn_s[keep_s], xn_d])
    ns, nd = int(keep_s.sum()), len(xn_d)
    p_dyn = np.concatenate([np.full(ns, 0.05), np.full(nd, 0.95)])
    depth = np.concatenate([depth_s[keep_s], np.full(nd, np.nan)])
    ids = np.concatenate([np.flatnonzero(keep_s), 10000 + np.arange(nd)])
    job = DenseInput(int(round(k * DT * 1e9)), 0, cam, W, xn, p_dyn, ids, depth, np.eye(4),
                     False, None)
    return job, ns, len(box)


def test_dense_stage_publishes_the_moving_objects_velocity_and_unknown_where_unobservable():
    cfg = make_config({"pipeline_dynamic_radius_px": 8.0, "cloud_downsample": 2})
    stage = DenseStage(cfg)
    stage.field = _WallField()
    stage.world = 0
    v = np.array([0.6, 0.0, -0.4])
    for k in range(15):
        job, ns, nb = _job(k, v)
        out = stage.run(job)
    kv = out.keypoint_velocity
    assert kv.shape == (len(job.xn), 3)
    assert np.all(kv[:ns] == 0)                       # static keypoints: 0
    box = kv[ns:ns + nb]
    assert np.isfinite(box).all(1).mean() > 0.8
    # Depth comes from the floor behind the box's lowest pixels, a few percent off.
    np.testing.assert_allclose(np.nanmedian(box, 0), v, atol=0.12)
    assert np.isnan(kv[ns + nb:]).all()               # the box cut off at the image bottom
    # The cloud: points around the moving box carry its velocity, those of the cut-off box are
    # NaN (unknown), static points 0.
    c = out.cloud
    dyn = c.dynamic > cfg.cloud_dynamic_threshold
    known = np.isfinite(c.velocity).all(1)
    assert (dyn & known).sum() > 20 and (dyn & ~known).sum() > 20
    np.testing.assert_allclose(np.median(c.velocity[dyn & known], 0), v, atol=0.12)
    assert np.all(c.velocity[~dyn & known] == 0) and (~dyn & ~known).sum() == 0


def test_nanmedian_matches_numpy():
    import warnings
    from sirenpose_ros.core.cloud import _nanmedian
    rng = np.random.default_rng(1)
    for shape, axis in (((7, 9, 5), -1), ((7, 9), 0), ((4, 1), 0), ((3, 4), 1)):
        x = rng.normal(size=shape)
        x[rng.random(shape) < 0.4] = np.nan
        x[0] = np.nan                                     # an all-NaN slice along axis 1/-1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expect = np.nanmedian(x, axis=axis)
        np.testing.assert_allclose(_nanmedian(x, axis), expect, equal_nan=True)
