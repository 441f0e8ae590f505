"""Back-projection, colour packing, keypoint densification and the bounded static voxel map."""
import cv2
import numpy as np
import pytest

from sirenpose_ros.core import cloud as cl
from sirenpose_ros.core.params import ParamError, validate
from sirenpose_ros.core.types import Cloud


def _rot(axis, ang):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * k @ k


def _plane_depth(K, h, w, n_cam, d_cam):
    """z-depth of the plane n . X = d (camera frame) at every pixel centre."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    return (d_cam / (rays @ n_cam)).astype(np.float32)


def test_backproject_plane_lands_on_plane_in_world():
    h, w = 48, 64
    K = np.array([[60.0, 0, 31.5], [0, 58.0, 23.5], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3] = _rot([0.3, -1.0, 0.2], 0.4)
    T[:3, 3] = [1.0, -2.0, 0.5]
    # World plane n_w . X = d_w, seen by the camera: n_c = R^T n_w, d_c = d_w - n_w . t.
    n_w = np.array([0.2, 0.3, 1.0])
    n_w /= np.linalg.norm(n_w)
    d_w = 4.0
    n_c = T[:3, :3].T @ n_w
    d_c = d_w - n_w @ T[:3, 3]
    depth = _plane_depth(K, h, w, n_c, d_c)
    assert np.all(depth > 0)
    c = cl.backproject(depth, K, T)
    assert len(c) == h * w and c.xyz.dtype == np.float32
    np.testing.assert_allclose(c.xyz.astype(np.float64) @ n_w, d_w, atol=1e-5)
    # The first pixel's point projects back to pixel (0, 0).
    p_cam = T[:3, :3].T @ (c.xyz[0] - T[:3, 3])
    np.testing.assert_allclose((K @ p_cam)[:2] / p_cam[2], [0.0, 0.0], atol=1e-4)


def test_backproject_accepts_object_with_K_and_scale_intrinsics():
    class Cam:
        K = cl.scale_intrinsics(np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]]),
                                (480, 640), (120, 160))
    depth = np.full((120, 160), 2.0, np.float32)
    c = cl.backproject(depth, Cam(), np.eye(4))
    xyz = c.xyz.reshape(120, 160, 3)
    # Corner-aligned grid: the principal point (centre of the full image) is the grid centre.
    np.testing.assert_allclose(xyz[:, :, 0].mean(), 0.0, atol=1e-5)
    # Last column is full-res u = 639: x = (639 - 319.5) / 500 * z.
    np.testing.assert_allclose(xyz[0, -1, 0], (639 - 319.5) / 500 * 2.0, rtol=1e-5)

    class FullSizeCam:                      # a camera model of another resolution is refused
        K, width, height = Cam.K, 640, 480
    with pytest.raises(ValueError):
        cl.backproject(depth, FullSizeCam(), np.eye(4))


def test_invalid_depth_dropped_and_columns_carried():
    h, w = 4, 5
    K = np.array([[10.0, 0, 2.0], [0, 10.0, 1.5], [0, 0, 1]])
    depth = np.full((h, w), 3.0, np.float32)
    depth[0, 0] = np.nan
    depth[1, 1] = -1.0
    depth[2, 2] = 0.0
    depth[3, 3] = np.inf
    depth[3, 4] = 50.0                   # beyond max_depth
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = 255                     # pure red
    rgb[0, 1] = (0x12, 0x34, 0x56)
    dyn = np.arange(h * w, dtype=np.float32).reshape(h, w) / (h * w)
    vel = np.arange(h * w * 3, dtype=np.float32).reshape(h, w, 3)
    c = cl.backproject(depth, K, np.eye(4), rgb, dyn, vel, max_depth=20.0)
    valid = np.ones((h, w), bool)
    valid[0, 0] = valid[1, 1] = valid[2, 2] = valid[3, 3] = valid[3, 4] = False
    assert len(c) == valid.sum()
    np.testing.assert_array_equal(c.dynamic, dyn[valid])
    np.testing.assert_array_equal(c.velocity, vel[valid])
    assert c.rgb.dtype == np.uint32
    assert c.rgb[0] == 0x00123456                  # pixel (0, 1) is the first valid one
    assert np.all(c.rgb[1:] == 0x00FF0000)
    assert np.all(np.isfinite(c.xyz))
    # Unknown dynamic probability (NaN from densify) becomes 0 (static); an unknown velocity
    # stays NaN (a moving point must not read as standing still).
    dyn[0, 1] = np.nan
    vel[0, 1] = np.nan
    c3 = cl.backproject(depth, K, np.eye(4), rgb, dyn, vel, max_depth=20.0)
    assert c3.dynamic[0] == 0 and c3.dynamic[1] == dyn[0, 2]
    assert np.isnan(c3.velocity[0]).all() and np.isfinite(c3.velocity[1:]).all()
    # Without colour / dynamic / velocity: grey, 0, 0.
    c2 = cl.backproject(depth, K, np.eye(4))
    assert np.all(c2.rgb == 0x00808080) and not c2.dynamic.any() and not c2.velocity.any()


def test_pack_unpack_rgb():
    assert cl.pack_rgb(np.array([255, 0, 0], np.uint8)) == 0x00FF0000
    assert cl.pack_rgb(np.array([0, 255, 0], np.uint8)) == 0x0000FF00
    assert cl.pack_rgb(np.array([0, 0, 255], np.uint8)) == 0x000000FF
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (7, 3, 3), dtype=np.uint8)
    packed = cl.pack_rgb(rgb)
    assert packed.dtype == np.uint32 and packed.shape == (7, 3) and packed.max() < 2**24
    np.testing.assert_array_equal(cl.unpack_rgb(packed), rgb)


def test_densify_nearest_and_far_nan():
    h, w = 30, 40
    px = np.array([[5.0, 5.0], [30.2, 8.7], [20.0, 25.0]])
    vals = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]], np.float32)
    out = cl.densify_keypoint_values(px, vals, h, w, max_dist_px=8.0)
    assert out.shape == (h, w, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[5, 5], [1, 10])
    np.testing.assert_array_equal(out[9, 31], [2, 20])
    np.testing.assert_array_equal(out[22, 18], [3, 30])
    assert np.isnan(out[29, 0]).all()          # > 8 px from every keypoint
    # Against brute force wherever the nearest keypoint is clearly nearest (> 1.5 px margin).
    rng = np.random.default_rng(1)
    px = rng.uniform(-2, [w + 1, h + 1], (25, 2))
    vals = rng.random(25).astype(np.float32)
    out = cl.densify_keypoint_values(px, vals, h, w, max_dist_px=5.0)[..., 0]
    v, u = np.mgrid[0:h, 0:w]
    d = np.hypot(u[..., None] - px[:, 0], v[..., None] - px[:, 1])
    srt = np.sort(d, -1)
    clear = srt[..., 1] - srt[..., 0] > 1.5
    ref = vals[d.argmin(-1)]
    inside = clear & (srt[..., 0] < 4.9)
    outside = srt[..., 0] > 5.1
    assert inside.sum() > 200 and outside.sum() > 20
    np.testing.assert_array_equal(out[inside], ref[inside])
    assert np.isnan(out[outside]).all()


def test_densify_no_keypoints():
    out = cl.densify_keypoint_values(np.zeros((0, 2)), np.zeros((0, 3), np.float32), 6, 8, 5.0)
    assert out.shape == (6, 8, 3) and np.isnan(out).all()
    out = cl.densify_keypoint_values(np.zeros((0, 2)), np.zeros(0, np.float32), 6, 8, 5.0)
    assert out.shape == (6, 8, 1)


def _cloud(xyz, rgb=None, dyn=None):
    xyz = np.asarray(xyz, np.float32).reshape(-1, 3)
    n = len(xyz)
    rgb = np.full(n, 0x00FF0000, np.uint32) if rgb is None else np.asarray(rgb, np.uint32)
    dyn = np.zeros(n, np.float32) if dyn is None else np.asarray(dyn, np.float32)
    return Cloud(xyz, rgb, dyn, np.zeros((n, 3), np.float32))


def test_voxel_map_fuses_repeated_inserts():
    m = cl.VoxelMap(validate(cl.PARAMS, {"cloud_voxel_size": 0.1}))
    m.insert(_cloud([[0.01, 0.02, 0.03], [0.55, 0.55, 0.55]], rgb=[0x00FF0000, 0x000000FF]))
    m.insert(_cloud([[0.03, 0.04, 0.05]], rgb=[0x000000FF]))
    m.insert(_cloud([[0.05, 0.06, 0.07], [0.05, 0.06, 0.07]], rgb=[0x000000FF, 0x000000FF]))
    assert len(m) == 2
    c = m.cloud()
    order = np.argsort(c.xyz[:, 0])
    np.testing.assert_array_equal(m.counts[order], [4, 1])
    np.testing.assert_allclose(c.xyz[order[0]], [0.035, 0.045, 0.055], atol=1e-6)
    np.testing.assert_allclose(c.xyz[order[1]], [0.55, 0.55, 0.55], atol=1e-6)
    # Colour mean of 1 red + 3 blue: (64, 0, 191) after rounding.
    np.testing.assert_array_equal(cl.unpack_rgb(c.rgb[order[0]]), [64, 0, 191])
    assert not c.dynamic.any() and not c.velocity.any()
    m.clear()
    assert len(m) == 0 and len(m.cloud()) == 0


def test_voxel_map_skips_dynamic_and_nan():
    m = cl.VoxelMap(validate(cl.PARAMS, {"cloud_voxel_size": 0.1, "cloud_dynamic_threshold": 0.5}))
    n = m.insert(_cloud([[0, 0, 0], [1, 1, 1], [2, 2, 2], [np.nan, 0, 0]],
                        dyn=[0.1, 0.9, 0.5, 0.0]))
    assert n == 2 and len(m) == 2
    assert not np.any(np.all(np.abs(m.cloud().xyz - 1.05) < 0.1, axis=1))


def test_voxel_map_bounded_evicts_oldest():
    m = cl.VoxelMap(validate(cl.PARAMS, {"cloud_voxel_size": 1.0, "cloud_map_max_points": 1000}))
    grid = np.stack(np.meshgrid(np.arange(10), np.arange(10), np.arange(6), indexing="ij"), -1)
    a = grid.reshape(-1, 3) + 0.5                 # 600 voxels
    b = a + [20, 0, 0]                            # 600 other voxels
    m.insert(_cloud(a[:300]))                     # stamp 1
    m.insert(_cloud(a[300:]))                     # stamp 2
    m.insert(_cloud(a[:300]))                     # stamp 3: the first half refreshed
    m.insert(_cloud(b))                           # 1200 > 1000: 200 oldest (stamp 2) go
    assert len(m) == 1000
    xyz = m.cloud().xyz
    in_a = xyz[:, 0] < 15
    assert in_a.sum() == 400 and (~in_a).sum() == 600
    kept = {tuple(p) for p in np.floor(xyz[in_a]).astype(int)}
    assert all(tuple(p) in kept for p in np.floor(a[:300]).astype(int))   # refreshed survive
    np.testing.assert_array_equal(np.sort(np.unique(m.stamps)), [2, 3, 4])
    # Re-inserting evicted voxels works (slots are reused), bound still holds.
    m.insert(_cloud(a[300:]))
    assert len(m) == 1000
    assert m.counts.min() >= 1 and np.isfinite(m.cloud().xyz).all()
    # A single insert larger than the bound keeps the bound.
    m.insert(_cloud(np.random.default_rng(0).uniform(100, 200, (3000, 3))))
    assert len(m) == 1000


def test_params_validation():
    cfg = validate(cl.PARAMS, {"cloud_downsample": 2})
    assert cfg["cloud_downsample"] == 2 and cfg["cloud_voxel_size"] == 0.05
    with pytest.raises(ParamError):
        validate(cl.PARAMS, {"cloud_downsample": 0})
    with pytest.raises(ParamError):
        validate(cl.PARAMS, {"cloud_dynamic_threshold": 1.5})
    assert all(s.name.startswith("cloud_") and len(s.description) > 20 for s in cl.PARAMS)


def test_backproject_equals_the_plain_formula():
    """The fast paths (no gathers when every pixel is kept, OpenCV transform and colour packing)
    give what the textbook formula gives: X = R (d K^-1 [u v 1]) + t, rgb packed by pack_rgb,
    NaN dynamic -> 0, NaN velocity kept (unknown), with and without dropped pixels."""
    rng = np.random.default_rng(4)
    h, w = 30, 40
    K = np.array([[35.0, 0.0, 19.5], [0.0, 34.0, 14.5], [0.0, 0.0, 1.0]])
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.array([0.3, -0.2, 0.5]))[0]
    T[:3, 3] = [1.0, -2.0, 0.5]
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    dyn = rng.random((h, w)).astype(np.float32)
    dyn[0, :5] = np.nan
    vel = rng.normal(size=(h, w, 3)).astype(np.float32)
    vel[1, :3] = np.nan
    for drop in (False, True):
        depth = rng.uniform(0.5, 10.0, (h, w)).astype(np.float32)
        if drop:
            depth[rng.random((h, w)) < 0.3] = np.nan
            depth[2, 2], depth[3, 3] = -1.0, 50.0
        c = cl.backproject(depth, K, T, rgb, dyn, vel, max_depth=20.0)
        keep = np.isfinite(depth) & (depth > 0) & (depth <= 20.0)
        v, u = np.nonzero(keep)
        d = depth[v, u].astype(np.float64)
        Xc = np.stack([(u - K[0, 2]) / K[0, 0] * d, (v - K[1, 2]) / K[1, 1] * d, d], 1)
        np.testing.assert_allclose(c.xyz, Xc @ T[:3, :3].T + T[:3, 3], rtol=0, atol=2e-5)
        assert c.xyz.dtype == np.float32 and c.rgb.dtype == np.uint32
        np.testing.assert_array_equal(c.rgb, cl.pack_rgb(rgb[v, u]))
        np.testing.assert_array_equal(c.dynamic, np.nan_to_num(dyn[v, u]))
        np.testing.assert_array_equal(c.velocity, vel[v, u])     # NaN == NaN here
        assert len(c) == keep.sum() and (len(c) < h * w) == drop
