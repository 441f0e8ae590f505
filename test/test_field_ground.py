"""Floor plane for the dense depth of moving objects (field.fit_ground_plane, plane_depth and
their use in core/dense.py).

A moving object has no keypoint depth and the floor under it has no keypoints either, so the
field renders there what it extrapolates from elsewhere (in large_dynamic the wall: moving
pixels ~2x too far). The floor plane fitted to the static keypoints gives the floor hidden
behind the object's lowest pixels, which bounds the object (it stands in front of it).
"""
import types

import numpy as np

from sirenpose_ros.core.camera import CameraModel
from sirenpose_ros.core.config import make_config
from sirenpose_ros.core.dense import DenseInput, DenseStage
from sirenpose_ros.core.field import fit_ground_plane, plane_depth

W, H, F = 160, 120, 128.0
CX, CY = 79.5, 59.5


def _rot_x(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _floor(pitch, roll, height):
    """Floor normal (camera frame, pointing down) and offset of a camera ``height`` above it,
    pitched down by ``pitch`` and rolled by ``roll``."""
    R = _rot_z(roll) @ _rot_x(-pitch)          # camera axes expressed in the level frame ...
    n = R.T @ np.array([0.0, 1.0, 0.0])        # ... so the level "down" seen from the camera
    return n, height


def _points_on(n, c, rng, k, u_lo=0, u_hi=W, v_lo=0, v_hi=H):
    """k points of the plane n.X = c seen at random pixels of a box, in the camera frame."""
    u = rng.uniform(u_lo, u_hi, k)
    v = rng.uniform(v_lo, v_hi, k)
    r = np.stack([(u - CX) / F, (v - CY) / F, np.ones(k)], 1)
    d = c / (r @ n)
    ok = d > 0
    return r[ok] * d[ok, None]


def test_fit_recovers_the_floor_among_walls_ceiling_and_a_table():
    rng = np.random.default_rng(3)
    n_true, c_true = _floor(np.radians(8.0), np.radians(3.0), 1.4)
    floor = _points_on(n_true, c_true, rng, 80, v_lo=75)
    wall = _points_on(np.array([0.0, 0.0, 1.0]), 6.0, rng, 150)           # far wall, 6 m
    side = _points_on(np.array([0.8, 0.0, 0.6]), 2.0, rng, 60, u_lo=100)   # right wall
    ceiling = _points_on(-n_true, 1.5, rng, 40, v_hi=40)
    table = _points_on(n_true, 0.7, rng, 12, u_hi=40, v_lo=70)             # smaller, higher
    X = np.concatenate([floor, wall, side, ceiling, table])
    X *= np.exp(rng.normal(0, 0.01, (len(X), 1)))                          # 1 % depth noise
    out = fit_ground_plane(X, 30.0, 0.05, 15, np.random.default_rng(0))
    assert out is not None
    n, c = out
    assert np.degrees(np.arccos(np.clip(n @ n_true, -1, 1))) < 1.5
    assert abs(c / c_true - 1) < 0.03
    # Depth of the plane along the rays of the floor points: their depths.
    pd = plane_depth(n, c, floor[:, 0] / floor[:, 2], floor[:, 1] / floor[:, 2])
    np.testing.assert_allclose(pd, floor[:, 2], rtol=0.04)
    # Rays at or above the horizon never reach the floor.
    assert np.isinf(plane_depth(n, c, np.array([0.0]), np.array([-0.5])))[0]


def test_no_floor_no_plane():
    rng = np.random.default_rng(4)
    X = np.concatenate([_points_on(np.array([0.0, 0.0, 1.0]), 6.0, rng, 150),
                        _points_on(np.array([0.8, 0.0, 0.6]), 2.0, rng, 60, u_lo=100)])
    assert fit_ground_plane(X, 30.0, 0.05, 15, np.random.default_rng(0)) is None
    # A floor seen from a camera tilted beyond the allowed angle is not taken for one.
    n, c = _floor(np.radians(50.0), 0.0, 1.4)
    X = _points_on(n, c, rng, 100, v_lo=40)
    assert fit_ground_plane(X, 30.0, 0.05, 15, np.random.default_rng(0)) is None
    assert fit_ground_plane(X, 60.0, 0.05, 15, np.random.default_rng(0)) is not None


class _WallField:
    """Renders 6 m everywhere: the field extrapolating the wall over a moving object and the
    floor it hides (no keypoints there)."""
    device = types.SimpleNamespace(type="cpu")
    fitted = True

    def update(self, *a, **k):
        return {}

    def render(self, time_s, h, w):
        return np.full((h, w), 1.0 / 6.0, np.float32)


def _job(T_world_cam, with_floor=True):
    """Keypoints on a grid; static ones on the floor (depth from the plane) in the lower part,
    at the wall's 6 m above; a moving object covers the lower middle down to the image bottom."""
    cam = CameraModel.pinhole(W, H, F, F, CX, CY)
    gx, gy = np.meshgrid(np.arange(4, W, 6), np.arange(4, H, 6))
    px = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64)
    xn = np.stack([(px[:, 0] - CX) / F, (px[:, 1] - CY) / F], 1)
    moving = (px[:, 0] > 60) & (px[:, 0] < 100) & (px[:, 1] > 30)
    floor_d = plane_depth(np.array([0.0, 1.0, 0.0]), 1.5, xn[:, 0], xn[:, 1])
    depth = np.where(np.isfinite(floor_d) & (floor_d < 6.0), floor_d, 6.0)
    if not with_floor:
        depth = np.where(depth < 6.0, np.nan, depth)
    depth = np.where(moving, np.nan, depth)
    return DenseInput(0, 0, cam, W, xn, np.where(moving, 0.95, 0.05),
                      np.arange(len(px)), depth, T_world_cam, False, None)


def _stage(ground):
    stage = DenseStage(make_config({"field_ground_plane": ground, "cloud_enabled": False}))
    stage.field = _WallField()
    stage.world = 0
    return stage


def test_moving_object_reaching_the_image_bottom_is_bounded_by_the_floor_plane():
    old = _stage(False).run(_job(np.eye(4))).depth
    stage = _stage(True)
    new = stage.run(_job(np.eye(4))).depth
    h, w = new.shape
    u = np.arange(w) * (W - 1) / (w - 1)
    v = np.arange(h) * (H - 1) / (h - 1)
    inside = (v[:, None] > 45) & (u[None, :] > 70) & (u[None, :] < 90)
    # Without the plane the upright bound only has the field's wall (6 m) to go by.
    assert np.allclose(old[inside], 6.0)
    # With it, each object column takes the floor hidden behind its lowest pixel, the bottom
    # row: camera height 1.5 m / ray slope 59.5 / 128 = 3.23 m.
    bottom = 1.5 / ((H - 1 - CY) / F)
    np.testing.assert_allclose(new[inside], bottom, rtol=0.03)
    # Static pixels keep the field's depth: the plane only bounds moving ones.
    static = ~(inside | (u[None, :] > 55) & (u[None, :] < 105) & (v[:, None] > 25))
    np.testing.assert_array_equal(new[static], old[static])

    # Next frame: the floor has no keypoints any more (hidden, untextured) and the camera moved
    # up by 0.3 m (world y is down here, as the camera's): the plane kept in world coordinates
    # follows the camera, now 1.8 m above the floor.
    T = np.eye(4)
    T[1, 3] = -0.3
    moved = stage.run(_job(T, with_floor=False)).depth
    np.testing.assert_allclose(moved[inside], 1.8 / ((H - 1 - CY) / F), rtol=0.03)


def _floating_job():
    """As _job, plus a second moving object that ends above the image bottom (its lower edge,
    and the floor behind it, in view)."""
    job = _job(np.eye(4))
    px = np.column_stack([job.xn[:, 0] * F + CX, job.xn[:, 1] * F + CY])
    floating = (px[:, 0] > 120) & (px[:, 0] < 150) & (px[:, 1] > 20) & (px[:, 1] < 70)
    job.p_dyn = np.where(floating, 0.95, job.p_dyn)
    job.landmark_depth = np.where(floating, np.nan, job.landmark_depth)
    return job


def test_moving_region_cut_off_at_the_image_bottom_can_be_left_unknown():
    # Default: the object reaching the bottom gets the floor at the bottom row, an upper bound
    # (where it stands is out of view).
    bound = _stage(True).run(_floating_job()).depth
    stage = _stage(True)
    stage.cfg = make_config({"field_ground_plane": True, "cloud_enabled": False,
                             "field_upright_cutoff": "unknown"})
    new = stage.run(_floating_job()).depth
    h, w = new.shape
    u = np.arange(w) * (W - 1) / (w - 1)
    v = np.arange(h) * (H - 1) / (h - 1)
    inside = (v[:, None] > 45) & (u[None, :] > 70) & (u[None, :] < 90)
    assert np.isfinite(bound[inside]).all()
    assert np.isnan(new[inside]).all()
    # The object whose lower edge is in view keeps its bound (the field's wall, nearer floor
    # than nothing), and static pixels keep the field's depth.
    floating = (v[:, None] > 30) & (v[:, None] < 60) & (u[None, :] > 128) & (u[None, :] < 142)
    assert np.isfinite(new[floating]).all()
    np.testing.assert_array_equal(new[floating], bound[floating])
    static = np.isfinite(new) & ~floating
    np.testing.assert_array_equal(new[static], bound[static])
    assert static.mean() > 0.6


def test_regions_touching_bottom():
    from sirenpose_ros.core.field import regions_touching_bottom
    m = np.zeros((6, 8), bool)
    m[2:6, 1:3] = True          # reaches the last row
    m[0:3, 5:7] = True          # does not
    m[1, 3] = True              # touches the first region diagonally: same region
    out = regions_touching_bottom(m)
    expect = np.zeros_like(m)
    expect[2:6, 1:3] = True
    expect[1, 3] = True
    np.testing.assert_array_equal(out, expect)
    assert not regions_touching_bottom(np.zeros((4, 4), bool)).any()
