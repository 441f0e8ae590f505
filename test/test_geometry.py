"""SO(3)/SE(3) maps, triangulation, parallax and epipolar helpers."""
import numpy as np
import pytest

from sirenpose_ros.core import geometry as geo


def _random_rotvecs(rng, n, max_angle=np.pi):
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    return axis * rng.uniform(0, max_angle, n)[:, None]


def test_so3_exp_is_a_rotation_and_log_inverts_it():
    rng = np.random.default_rng(0)
    phi = _random_rotvecs(rng, 2000)
    R = geo.so3_exp(phi)
    assert np.allclose(R @ np.swapaxes(R, 1, 2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(R), 1.0)
    assert np.abs(geo.so3_log(R) - phi).max() < 1e-9


@pytest.mark.parametrize("angle", [0.0, 1e-12, 1e-8, 1e-5, 1e-3, 0.5, np.pi - 1e-3, np.pi - 1e-8, np.pi])
def test_so3_log_stable_near_zero_and_pi(angle):
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.normal(size=3)
        a /= np.linalg.norm(a)
        R = geo.so3_exp(a * angle)
        phi = geo.so3_log(R)
        # Near pi, phi and -phi are the same rotation: compare rotations and the angle.
        assert np.abs(geo.so3_exp(phi) - R).max() < 1e-12
        assert abs(np.linalg.norm(phi) - angle) < 1e-9
        if angle < 3.0:
            assert np.abs(phi - a * angle).max() < 1e-9 * max(angle, 1.0) + 1e-15


def test_so3_exp_matches_first_order_near_zero():
    w = np.array([1e-9, -2e-9, 3e-9])
    assert np.allclose(geo.so3_exp(w), np.eye(3) + geo.skew(w), atol=1e-20)


def test_se3_round_trip_and_inverse_compose():
    rng = np.random.default_rng(2)
    xi = np.concatenate([rng.normal(size=(500, 3)) * 3, _random_rotvecs(rng, 500, 3.0)], axis=1)
    T = geo.se3_exp(xi)
    assert np.abs(geo.se3_log(T) - xi).max() < 1e-8
    eye = geo.compose(T, geo.invert(T))
    assert np.abs(eye - np.eye(4)).max() < 1e-12
    small = rng.normal(size=(10, 6)) * 1e-9
    assert np.abs(geo.se3_log(geo.se3_exp(small)) - small).max() < 1e-20
    # se3_exp of a pure translation is that translation.
    assert np.allclose(geo.se3_exp(np.array([1.0, 2, 3, 0, 0, 0]))[:3, 3], [1, 2, 3])


def test_skew_is_cross_product():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 50, 3))
    assert np.allclose(np.einsum("nij,nj->ni", geo.skew(a), b), np.cross(a, b))


def _two_views(rng, n=200):
    X = np.c_[rng.uniform(-2, 2, n), rng.uniform(-1.5, 1.5, n), rng.uniform(3, 8, n)]
    T1 = np.eye(4)
    T2 = geo.se3_exp(np.array([-0.4, 0.05, 0.1, 0.02, -0.05, 0.01]))   # T_cam2_world
    x1, _ = geo.project(T1, X)
    x2, _ = geo.project(T2, X)
    return X, T1, T2, x1, x2


def test_triangulation_exact_on_noiseless_data():
    X, T1, T2, x1, x2 = _two_views(np.random.default_rng(4))
    Xt = geo.triangulate(T1[:3], T2[:3], x1, x2)
    assert np.abs(Xt - X).max() < 1e-9
    # Reprojection of the triangulated points is exact too.
    assert np.abs(geo.reprojection_error(T2, Xt, x2)).max() < 1e-12


def test_triangulation_of_point_at_infinity_is_nan_and_parallax():
    T1, T2 = np.eye(4), geo.se3_exp(np.array([-1.0, 0, 0, 0, 0, 0]))
    x = np.array([[0.1, 0.2]])
    assert np.isnan(geo.triangulate(T1[:3], T2[:3], x, x)).all()     # no parallax at all
    # A point 1 unit in front of two centres 2 units apart: rays at 90 degrees.
    ang = geo.parallax_deg(np.array([-1.0, 0, 0]), np.array([1.0, 0, 0]), np.array([[0.0, 0, 1.0]]))
    assert np.allclose(ang, 90.0)
    assert np.allclose(geo.ray_angle_deg(np.eye(3), x, x), 0.0, atol=1e-12)


def test_reprojection_error_flags_points_behind_camera():
    X = np.array([[0.0, 0.0, -1.0], [0.1, 0.0, 2.0]])
    r = geo.reprojection_error(np.eye(4), X, np.array([[0.0, 0.0], [0.05, 0.0]]))
    assert np.isinf(r[0]).all() and np.allclose(r[1], 0.0)


def test_epipolar_offset_zero_for_static_points_and_measures_motion():
    X, T1, T2, x1, x2 = _two_views(np.random.default_rng(5))
    E = geo.essential_from_pose(T2 @ geo.invert(T1))
    assert np.abs(geo.epipolar_offset(E, x1, x2)).max() < 1e-12
    # Move the observations off their epipolar lines by a known perpendicular amount.
    off = geo.epipolar_offset(E, x1, x2 + 0.0)
    line = np.c_[x1, np.ones(len(x1))] @ E.T
    n = line[:, :2] / np.linalg.norm(line[:, :2], axis=1, keepdims=True)
    moved = geo.epipolar_offset(E, x1, x2 + 0.01 * n)
    assert np.allclose(np.linalg.norm(moved - off, axis=1), 0.01, atol=1e-9)


@pytest.mark.parametrize("angle", [0.0, 1e-9, 5e-5, 1.5e-4, 0.3, 2.0, np.pi - 1e-7, np.pi])
def test_single_pose_paths_equal_the_batched_ones(angle):
    """se3_exp of one twist and rotation_to_quaternion / so3_log / se3_log of one matrix take
    scalar fast paths; they give the batched results to round-off, on both sides of the series
    switch and near pi (where the quaternion case changes)."""
    rng = np.random.default_rng(int(angle * 1000) + 3)
    for _ in range(20):
        phi = rng.normal(size=3)
        phi *= angle / np.linalg.norm(phi)
        xi = np.r_[rng.normal(size=3), phi]
        T1, Tb = geo.se3_exp(xi), geo.se3_exp(xi[None])[0]
        np.testing.assert_allclose(T1, Tb, rtol=0, atol=1e-14)
        R = T1[:3, :3]
        np.testing.assert_allclose(geo.rotation_to_quaternion(R), geo.rotation_to_quaternion(R[None])[0],
                                   rtol=0, atol=1e-14)
        np.testing.assert_allclose(geo.so3_log(R), geo.so3_log(R[None])[0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(geo.se3_log(T1), geo.se3_log(T1[None])[0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(geo.so3_exp(phi), geo.so3_exp(phi[None])[0], rtol=0, atol=1e-14)
