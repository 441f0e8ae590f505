"""Tests for sirenpose_ros.core.camera: validation, distortion round trips, scaling."""
import cv2
import numpy as np
import pytest

from sirenpose_ros.core.camera import CameraModel, CameraModelError

W, H = 640, 480
K9 = [500.0, 0.0, 319.5, 0.0, 505.0, 241.0, 0.0, 0.0, 1.0]

DISTORTIONS = {
    "none": [],
    "plumb_bob": [-0.28, 0.07, 1e-4, -2e-4, 0.0],
    "rational_polynomial": [0.6, -0.3, 2e-4, -1e-4, 0.05, 0.9, -0.2, 0.04],
    "equidistant": [-0.01, 0.003, -0.001, 0.0002],
}


def make(model: str) -> CameraModel:
    return CameraModel.from_camera_info(W, H, K9, DISTORTIONS[model], model)


def pixel_grid(step: int = 20) -> np.ndarray:
    u, v = np.meshgrid(np.arange(0, W, step, dtype=float), np.arange(0, H, step, dtype=float))
    return np.stack([u.ravel(), v.ravel()], axis=1)


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("kwargs, match", [
    (dict(k=[np.nan] + K9[1:]), "non-finite"),
    (dict(k=[0.0] + K9[1:]), "fx"),
    (dict(k=K9[:4] + [-1.0] + K9[5:]), "fy"),
    (dict(k=[0.0] * 9), "uncalibrated"),
    (dict(k=K9[:8]), "9 numbers"),
    (dict(k=K9[:8] + [2.0]), "not an intrinsic matrix"),
    (dict(k=K9[:2] + [5000.0] + K9[3:]), "principal point"),
    (dict(width=-640), "size"),
    (dict(height=0), "size"),
    (dict(width=640.5), "size"),
    (dict(d=[0.1, 0.01, 0, 0]), "length 5"),
    (dict(d=[0.1, 0.01, 0, 0, 0, 0]), "length 5"),
    (dict(d=[0.1, np.inf, 0, 0, 0]), "non-finite"),
    (dict(model="equidistant", d=[0.1, 0.01, 0, 0, 0]), "length 4"),
    (dict(model="rational_polynomial", d=[0.1] * 6), "length 8 or 5"),
    (dict(model="kannala", d=[0.1] * 4), "unknown distortion model"),
    (dict(model="", d=[0.1] * 5), "non-zero D"),
])
def test_validation_errors(kwargs, match):
    args = dict(width=W, height=H, k=K9, d=DISTORTIONS["plumb_bob"], model="plumb_bob")
    args.update(kwargs)
    with pytest.raises(CameraModelError, match=match) as info:
        CameraModel.from_camera_info(args["width"], args["height"], args["k"], args["d"], args["model"])
    assert isinstance(info.value, ValueError)


def test_unknown_model_message_lists_allowed():
    with pytest.raises(CameraModelError) as info:
        CameraModel.from_camera_info(W, H, K9, [0.1] * 4, "fisheye62")
    for name in ("none", "plumb_bob", "rational_polynomial", "equidistant"):
        assert name in str(info.value)


def test_zero_or_empty_d_is_none_fast_path():
    for model, d in [("plumb_bob", [0.0] * 5), ("equidistant", []), ("", []), ("none", [])]:
        cam = CameraModel.from_camera_info(W, H, K9, d, model)
        assert cam.distortion_model == "none" and not cam.is_distorted and cam.D.size == 0


def test_rational_accepts_five_coefficients_as_plumb_bob():
    d5 = DISTORTIONS["plumb_bob"]
    rat = CameraModel.from_camera_info(W, H, K9, d5, "rational_polynomial")
    pb = make("plumb_bob")
    assert rat.D.tolist() == d5 + [0.0, 0.0, 0.0]
    xyz = np.array([[0.3, -0.2, 1.0], [-0.5, 0.4, 2.0]])
    np.testing.assert_allclose(rat.project(xyz), pb.project(xyz), atol=1e-12)


def test_pinhole_properties_and_immutability():
    cam = CameraModel.pinhole(W, H, 500, 505, 319.5, 241)
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == (500, 505, 319.5, 241)
    assert not cam.is_distorted
    with pytest.raises(ValueError):
        cam.K[0, 0] = 1.0
    with pytest.raises(AttributeError):
        cam.width = 3


# ------------------------------------------------------------------ projection / undistortion

@pytest.mark.parametrize("model", list(DISTORTIONS))
def test_project_matches_opencv(model):
    """Our own vectorised distortion formulas agree with OpenCV's projectPoints."""
    cam = make(model)
    rng = np.random.default_rng(1)
    xyz = np.column_stack([rng.uniform(-0.6, 0.6, 200), rng.uniform(-0.45, 0.45, 200),
                           np.ones(200)]) * rng.uniform(0.5, 5, (200, 1))
    ours = cam.project(xyz)
    if model == "equidistant":
        ref, _ = cv2.fisheye.projectPoints(xyz.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), cam.K, cam.D)
    else:
        ref, _ = cv2.projectPoints(xyz, np.zeros(3), np.zeros(3), cam.K,
                                   cam.D if cam.D.size else np.zeros(5))
    np.testing.assert_allclose(ours, ref.reshape(-1, 2), atol=1e-7)


@pytest.mark.parametrize("model", list(DISTORTIONS))
def test_undistort_project_round_trip(model):
    cam = make(model)
    px = pixel_grid()
    xy = cam.undistort_points(px)
    assert np.all(np.isfinite(xy)), "every pixel inside the image must undistort"
    # pixels -> rays -> pixels
    np.testing.assert_allclose(cam.project(np.column_stack([xy, np.ones(len(xy))])), px, atol=1e-6)
    # points -> pixels -> normalized == X/Z, at several depths
    depth = np.linspace(0.3, 30, len(xy))[:, None]
    xyz = np.column_stack([xy, np.ones(len(xy))]) * depth
    np.testing.assert_allclose(cam.undistort_points(cam.project(xyz)), xyz[:, :2] / xyz[:, 2:], atol=1e-6)


def test_distortion_is_actually_applied():
    px = np.array([[20.0, 20.0]])
    assert np.abs(make("plumb_bob").undistort_points(px) - make("none").undistort_points(px)).max() > 0.05


def test_empty_and_invalid_points():
    cam = make("plumb_bob")
    assert cam.undistort_points(np.zeros((0, 2))).shape == (0, 2)
    assert cam.project(np.zeros((0, 3))).shape == (0, 2)
    assert make("none").undistort_points([]).shape == (0, 2)
    out = cam.project(np.array([[0.1, 0.1, -1.0], [0.1, 0.1, 0.0], [0.0, 0.0, 1.0]]))
    assert np.isnan(out[:2]).all() and np.allclose(out[2], [cam.cx, cam.cy])
    with pytest.raises(ValueError):
        cam.project(np.zeros((3, 2)))


def test_unreachable_pixels_become_nan():
    """A strong barrel lens (k1 = -0.4, k2 = 0.02) folds back at r^2 = (1.2 - sqrt(1.04)) / 0.2:
    beyond that radius neither projection nor undistortion is physical -> NaN, not garbage."""
    cam = CameraModel.from_camera_info(W, H, K9, [-0.4, 0.02, 0, 0, 0], "plumb_bob")
    r_fold = np.sqrt((1.2 - np.sqrt(1.04)) / 0.2)
    assert cam.max_valid_radius == pytest.approx(r_fold, rel=1e-3)
    xyz = np.array([[0.5, 0.0, 1.0], [1.2, 0.0, 1.0], [0.0, 2.5, 2.0]])
    px = cam.project(xyz)
    assert np.isfinite(px[0]).all() and np.isnan(px[1:]).all()
    np.testing.assert_allclose(cam.undistort_points(px[:1]), [[0.5, 0.0]], atol=1e-9)
    # distorted radius 0.8 > f(r_fold) ~ 0.62: no preimage at all
    xy = cam.undistort_points(cam.normalized_to_pixels(np.array([[0.8, 0.0], [-0.3, 0.2]])))
    assert np.isnan(xy[0]).all() and np.isfinite(xy[1]).all()
    assert make("plumb_bob").max_valid_radius == np.inf     # -0.28, 0.07 never folds
    assert make("none").max_valid_radius == np.inf


def test_skew_affine_path():
    k = [500.0, 3.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]
    cam = CameraModel.from_camera_info(W, H, k, [], "none")
    xy = np.array([[0.1, -0.2], [-0.3, 0.25]])
    np.testing.assert_allclose(cam.undistort_points(cam.normalized_to_pixels(xy)), xy, atol=1e-12)
    np.testing.assert_allclose(cam.normalized_to_pixels(xy),
                               [[500 * 0.1 + 3 * -0.2 + 320, 500 * -0.2 + 240],
                                [500 * -0.3 + 3 * 0.25 + 320, 500 * 0.25 + 240]], atol=1e-9)
    # OpenCV ignores skew; our distorted path must not: round trip through plumb_bob with skew
    dist = CameraModel.from_camera_info(W, H, k, DISTORTIONS["plumb_bob"], "plumb_bob")
    px = pixel_grid(40)
    xy = dist.undistort_points(px)
    np.testing.assert_allclose(dist.project(np.column_stack([xy, np.ones(len(xy))])), px, atol=1e-6)


# ------------------------------------------------------------------ scaling, geometry changes

@pytest.mark.parametrize("model", list(DISTORTIONS))
@pytest.mark.parametrize("factor", [0.5, 0.25, 2.0])
def test_scaled_keeps_projections_consistent(model, factor):
    cam = make(model)
    small = cam.scaled(factor)
    assert (small.width, small.height) == (round(W * factor), round(H * factor))
    rng = np.random.default_rng(2)
    xyz = np.column_stack([rng.uniform(-0.5, 0.5, 50), rng.uniform(-0.4, 0.4, 50), np.ones(50)]) * 3
    # u' = (u + 0.5) * s - 0.5 for every projected point
    np.testing.assert_allclose(small.project(xyz), (cam.project(xyz) + 0.5) * factor - 0.5, atol=1e-9)
    np.testing.assert_allclose(small.undistort_points(small.project(xyz)), xyz[:, :2] / 3, atol=1e-6)


def test_scaled_matches_cv2_resize_pixel_centres():
    """A bright pixel at full-res (u, v) lands where scaled() predicts after cv2.resize (area)."""
    cam = CameraModel.pinhole(W, H, 500, 500, 319.5, 239.5)
    img = np.zeros((H, W), np.float32)
    img[100:104, 200:204] = 1.0                 # 4x4 block centred at (201.5, 101.5)
    small = cv2.resize(img, (W // 4, H // 4), interpolation=cv2.INTER_AREA)
    v, u = np.unravel_index(np.argmax(small), small.shape)
    expected = (np.array([201.5, 101.5]) + 0.5) * 0.25 - 0.5
    np.testing.assert_allclose([u, v], expected, atol=1e-9)
    s = cam.scaled(0.25)
    assert s.cx == pytest.approx((319.5 + 0.5) * 0.25 - 0.5)


def test_same_geometry():
    a = make("plumb_bob")
    assert a.same_geometry(make("plumb_bob"))
    assert not a.same_geometry(make("equidistant"))
    assert not a.same_geometry(a.scaled(0.5))
    k2 = list(K9)
    k2[0] += 0.5
    assert not a.same_geometry(CameraModel.from_camera_info(W, H, k2, DISTORTIONS["plumb_bob"], "plumb_bob"))
    d2 = list(DISTORTIONS["plumb_bob"])
    d2[0] = -0.27
    assert not a.same_geometry(CameraModel.from_camera_info(W, H, K9, d2, "plumb_bob"))


@pytest.mark.parametrize("model", ["none", "plumb_bob"])
def test_pixel_rays(model):
    cam = make(model)
    rays = cam.pixel_rays(H // 4, W // 4)
    assert rays.shape == (H // 4, W // 4, 2) and not rays.flags.writeable
    assert cam.pixel_rays(H // 4, W // 4) is rays          # cached
    # the reduced grid's pixel centres are the scaled camera's pixels
    small = cam.scaled(0.25)
    i, j = 37, 101
    np.testing.assert_allclose(rays[i, j], small.undistort_points([[j, i]])[0], atol=1e-9)
    np.testing.assert_allclose(small.project(np.append(rays[i, j], 1.0)[None])[0], [j, i], atol=1e-6)
