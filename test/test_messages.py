"""ROS message conversions (no DDS: message objects only) and the DDS confinement helpers."""
import numpy as np
import pytest

pytest.importorskip("rclpy")

from sirenpose_ros.core.types import Cloud  # noqa: E402
from sirenpose_ros.io.tum import quat_to_matrix  # noqa: E402
from sirenpose_ros.ros import dds  # noqa: E402
from sirenpose_ros.ros import messages as M  # noqa: E402
from sirenpose_ros.ros.node import R_BODY_OPTICAL, rpy_matrix  # noqa: E402


def _random_pose(rng):
    from scipy.spatial.transform import Rotation
    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=rng.integers(1 << 30)).as_matrix()
    T[:3, 3] = rng.normal(size=3)
    return T


def test_stamp_round_trip():
    for ns in (0, 1, 999_999_999, 1_000_000_000, 1_700_000_000_123_456_789):
        assert M.stamp_to_ns(M.ns_to_stamp(ns)) == ns


def test_transform_and_odometry_messages_carry_the_pose():
    rng = np.random.default_rng(0)
    T = _random_pose(rng)
    stamp = M.ns_to_stamp(123)
    tf = M.transform_msg(T, stamp, "odom", "base_link")
    q = tf.transform.rotation
    assert np.allclose(quat_to_matrix(np.array([q.x, q.y, q.z, q.w])), T[:3, :3], atol=1e-12)
    assert (tf.header.frame_id, tf.child_frame_id) == ("odom", "base_link")
    cov = np.diag(np.arange(1, 7, dtype=float))
    odom = M.odometry_msg(T, stamp, "odom", "base_link", cov, np.arange(6.0), None)
    assert odom.pose.pose.position.x == pytest.approx(T[0, 3])
    assert np.allclose(np.array(odom.pose.covariance).reshape(6, 6), cov)
    assert odom.twist.twist.angular.z == 5.0
    assert M.stamp_to_ns(odom.header.stamp) == 123


def test_cloud2_round_trip_and_transform():
    rng = np.random.default_rng(1)
    n = 1000
    cloud = Cloud(rng.normal(size=(n, 3)).astype(np.float32),
                  rng.integers(0, 1 << 24, n).astype(np.uint32),
                  rng.random(n).astype(np.float32), rng.normal(size=(n, 3)).astype(np.float32))
    cloud.velocity[::7] = np.nan       # unknown velocity (moving point, depth not observable)
    T = _random_pose(rng)
    msg = M.cloud2_msg(M.cloud_to_array(cloud, T), M.ns_to_stamp(5), "odom")
    assert msg.width == n and msg.point_step == 32 and msg.row_step == 32 * n
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb", "dynamic", "vx", "vy", "vz"]
    rgb_field = next(f for f in msg.fields if f.name == "rgb")
    assert rgb_field.datatype == 6 and rgb_field.offset == 12          # UINT32, so RViz colours it
    arr = M.cloud2_to_array(msg)
    xyz = np.stack([arr["x"], arr["y"], arr["z"]], 1)
    expect = cloud.xyz.astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    assert np.allclose(xyz, expect, atol=1e-4)
    assert (arr["rgb"] == cloud.rgb).all() and np.allclose(arr["dynamic"], cloud.dynamic)
    vel = np.stack([arr["vx"], arr["vy"], arr["vz"]], 1)
    assert np.allclose(vel, cloud.velocity @ T[:3, :3].T, atol=1e-4, equal_nan=True)  # only rotate
    unknown = np.zeros(n, bool)
    unknown[::7] = True
    assert np.isnan(vel[unknown]).all() and np.isfinite(vel[~unknown]).all()   # NaN stays NaN
    assert not msg.is_dense                                  # NaN fields: "invalid" points
    cloud.velocity[::7] = 0.0
    assert M.cloud2_msg(M.cloud_to_array(cloud, T), M.ns_to_stamp(5), "odom").is_dense


def test_optical_frame_convention():
    # Optical z (forward) is body x; optical x (right) is body -y; optical y (down) is body -z.
    assert np.allclose(R_BODY_OPTICAL @ [0, 0, 1], [1, 0, 0])
    assert np.allclose(R_BODY_OPTICAL @ [1, 0, 0], [0, -1, 0])
    assert np.allclose(R_BODY_OPTICAL @ [0, 1, 0], [0, 0, -1])
    assert np.isclose(np.linalg.det(R_BODY_OPTICAL), 1.0)
    assert np.allclose(rpy_matrix(0, 0, np.pi / 2) @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_dds_env_is_confined_to_this_host():
    env = dds.local_dds_env(42, base={"ROS_STATIC_PEERS": "10.0.0.1", "ROS_LOCALHOST_ONLY": "1"})
    assert env["ROS_DOMAIN_ID"] == "42" and "ROS_STATIC_PEERS" not in env
    assert dds.is_confined(env)
    profile = open(env["FASTDDS_DEFAULT_PROFILES_FILE"]).read()
    assert "<useBuiltinTransports>false</useBuiltinTransports>" in profile
    assert "<address>127.0.0.1</address>" in profile and "SHM" in profile
    assert not dds.is_confined({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})
    assert not dds.is_confined({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT"})
    assert 20 <= dds.private_domain_id(12345) < 100


def test_this_test_session_is_confined():
    assert dds.is_confined()
